"""The pivot in five formats from one set of numbers: the terminal table, csv, markdown,
LaTeX (booktabs) and json. csv and json keep full precision, so parsing them back gives
the same floats.
"""

from __future__ import annotations

import csv
import io
import json

from engine.analysis.grouping import format_value
from engine.analysis.metrics import METRICS, check_choice
from engine.analysis.pivot import Pivot, describe
from engine.analysis.stats import ALPHA, TEST_NAME

FORMATS = ("table", "csv", "md", "latex", "json")


def render(pivot: Pivot, fmt: str = "table") -> str:
    check_choice(fmt, FORMATS, "format")
    return {"table": render_table, "csv": render_csv, "md": render_markdown,
            "latex": render_latex, "json": render_json}[fmt](pivot)


def _grid(pivot: Pivot, text) -> tuple[list[str], list[list[str]]]:
    header = [" / ".join(pivot.row_fields) or "", *(pivot.col_label(key) for key in pivot.col_keys)]
    body = [[pivot.row_label(row_key), *(text(row_key, col_key) for col_key in pivot.col_keys)]
            for row_key in pivot.row_keys]
    return header, body


def _aligned(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(line[index]) for line in [header, *body]) for index in range(len(header))]
    return ["  ".join(value.ljust(width) if index == 0 else value.rjust(width)
                      for index, (value, width) in enumerate(zip(line, widths))).rstrip()
            for line in [header, *body]]


def render_table(pivot: Pivot) -> str:
    header, body = _grid(pivot, pivot.cell_text)
    lines = [METRICS[pivot.metric].label, *_aligned(header, body)]
    if any(cell.delta_reference is not None for cell in pivot.cells.values()):
        header, body = _grid(pivot, pivot.reference_text)
        lines += ["", f"delta against {describe(pivot.reference)} (same other fields)", *_aligned(header, body)]
    return "\n".join([*lines, "", *pivot.notes]) + "\n"


def render_markdown(pivot: Pivot) -> str:
    header, body = _grid(pivot, pivot.cell_text)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join([*lines, "", *(f"- {note}" for note in pivot.notes)]) + "\n"


def _latex_escape(text: str) -> str:
    for plain, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
                           ("#", r"\#"), ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(plain, escaped)
    return text


def render_latex(pivot: Pivot) -> str:
    """A booktabs tabular: $mean \\pm std$ and the delta, significant deltas in bold."""

    def cell_tex(row_key: tuple, col_key: tuple) -> str:
        cell = pivot.cell(row_key, col_key)
        if cell is None:
            return "--"
        text = f"${pivot.number(cell.mean)}" + (rf" \pm {pivot.number(cell.std)}" if cell.std is not None else "") + "$"
        if cell.delta is not None:
            delta = pivot.signed(cell.delta)
            text += rf" (\textbf{{{delta}}})" if cell.significant else f" ({delta})"
        return text + (r"$^\dagger$" if cell.duplicates else "")

    header, body = _grid(pivot, cell_tex)
    lines = [
        rf"\begin{{tabular}}{{l{'r' * len(pivot.col_keys)}}}", r"\toprule",
        " & ".join(_latex_escape(value) for value in header) + r" \\", r"\midrule",
        *(" & ".join([_latex_escape(line[0]), *line[1:]]) + r" \\" for line in body),
        r"\bottomrule", r"\end{tabular}",
    ]
    return "\n".join([*lines, *(f"% {_latex_escape(note)}" for note in pivot.notes)]) + "\n"


CSV_VALUE_COLUMNS = ("metric", "n", "duplicates", "mean", "std", "is_baseline", "delta", "p_value", "significant",
                     "delta_reference", "p_value_reference", "significant_reference", "run_ids")


def render_csv(pivot: Pivot) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*pivot.row_fields, *pivot.col_fields, *CSV_VALUE_COLUMNS])
    for row in pivot.to_rows():
        values = [format_value(row[name]) for name in (*pivot.row_fields, *pivot.col_fields)]
        for column in CSV_VALUE_COLUMNS:
            value = row[column]
            if column == "run_ids":
                value = " ".join(str(run_id) for run_id in value)
            elif isinstance(value, float):
                value = repr(value)  # full precision: parsing it back gives the same float
            values.append("" if value is None else value)
        writer.writerow(values)
    return buffer.getvalue()


def render_json(pivot: Pivot) -> str:
    return json.dumps({
        "metric": pivot.metric, "metric_label": METRICS[pivot.metric].label,
        "rows": pivot.row_fields, "cols": pivot.col_fields, "added_fields": pivot.added_fields,
        "baseline": pivot.baseline, "reference": pivot.reference, "test": TEST_NAME, "alpha": ALPHA,
        "constant": pivot.constant, "cells": pivot.to_rows(),
    }, indent=2) + "\n"
