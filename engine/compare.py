"""Compare runs of the history: pivot tables (mean +- std over distinct seeds, deltas against
a baseline, Welch's t-test), their exports, and the series behind the compare charts.

Runs are deterministic, so a rerun of a config with the same seed is a copy, not evidence:
each (config, seed) counts once, as its latest finished run, and the outputs say how many
copies were folded.

Must not import torch, numpy or scipy at module level: the CLI and the TUI import this.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from engine.config import AUGMENTATIONS, SAMPLERS, RunConfig, field_types
from engine.errors import BadInput, NotFound
from engine.history import load_metrics
from engine.paths import USAGE_NAME
from engine.plots import Chart, Series

FORMATS = ("table", "csv", "md", "latex", "json")
ALPHA = 0.05
TEST_NAME = "Welch's t-test (two-sided, unequal variances)"
FOLDED_MARK = "†"  # after a cell that had copies (same config and seed) folded
DEFAULT_BASELINE = {"sampler": "unif-sgd", "augmentation": "standard"}
DEFAULT_REFERENCE = {"sampler": "unif-sgd", "augmentation": "standard", "budget": 1.0}
ALWAYS_NAMED = ("dataset", "model", "epochs")  # named under the table even when at their default
IGNORED_FIELDS = ("seed",)  # seeds are what a cell averages over
# Fields that describe how a run executes, not what it computes: never a reason to split cells.
EXECUTION_FIELDS = ("device", "threads", "compile", "download", "data_path")


def flops_budget_used(record: dict[str, Any]) -> float | None:
    """Training FLOPs over those of the nominal full-budget unif-sgd run of the same config,
    3 x forward FLOPs x nominal steps x batch size, for runs whose summary predates the key.
    The stored summary leaves out the plan; its nominal steps are steps / budget_used then."""
    summary = record["summary"]
    flops, forward = summary.get("flops_train"), summary.get("flops_forward_per_sample")
    nominal = (summary.get("plan") or {}).get("nominal_steps")
    if nominal is None and summary.get("budget_used") and summary.get("steps"):
        nominal = round(summary["steps"] / summary["budget_used"])
    batch = record["config"].get("batch_size")
    if flops is None or not forward or not nominal or not batch:
        return None
    return flops / (3 * forward * nominal * batch)


@dataclass(frozen=True)
class Metric:
    label: str
    percent: bool = False  # stored as a fraction, shown (and exported) in %
    digits: int = 2  # decimals shown in tables
    from_curve: bool = False  # older runs keep it only in metrics.jsonl (last epoch)
    # Computes the value of older runs that lack it from the rest of their record.
    fallback: Callable[[dict[str, Any]], float | None] | None = None


METRICS: dict[str, Metric] = {
    "final_test_acc": Metric("final test accuracy (%)", percent=True),
    "best_test_acc": Metric("best test accuracy (%, epoch chosen on test)", percent=True),
    "test_acc_at_best_val": Metric("test accuracy at the best validation epoch (%)", percent=True),
    "final_val_acc": Metric("final validation accuracy (%)", percent=True),
    "best_val_acc": Metric("best validation accuracy (%)", percent=True),
    "time_total_s": Metric("wall time (s)", digits=1),
    "time_train_s": Metric("training time (s)", digits=1),
    "images_per_s": Metric("images/s (training)", digits=0),
    "samples_backprop": Metric("samples backpropagated", digits=0),
    "samples_forwarded": Metric("samples forwarded", digits=0),
    "flops_train": Metric("training FLOPs", digits=0),
    "budget_used": Metric("fraction of the nominal steps", digits=3),
    "flops_budget_used": Metric("training FLOPs / those of the full-budget unif-sgd run", digits=3,
                                fallback=flops_budget_used),
    "usage_entropy": Metric("usage entropy H(c) (nats)", digits=3, from_curve=True),
    "distinct_seen": Metric("distinct samples seen", digits=0, from_curve=True),
}
DEFAULT_METRIC = "final_test_acc"


# --- statistics
@dataclass
class Cell:
    values: list[float]  # one per distinct seed
    run_ids: list[int]
    mean: float
    std: float | None  # sample standard deviation (n - 1); None for a single seed
    duplicates: int = 0  # runs repeating a seed of this cell, folded into its latest finished run
    delta: float | None = None  # mean - the baseline cell's mean
    p_value: float | None = None
    is_baseline: bool = False
    delta_reference: float | None = None  # mean - the reference (100% budget) cell's mean
    p_value_reference: float | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA

    @property
    def significant_reference(self) -> bool:
        return self.p_value_reference is not None and self.p_value_reference < ALPHA


def mean_and_std(values: list[float]) -> tuple[float, float | None]:
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((value - mean) ** 2 for value in values) / (len(values) - 1))


def welch_t_test(first: list[float], second: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test; None when a side has under 2 values or both
    sides have zero variance (the test is undefined there)."""
    if len(first) < 2 or len(second) < 2:
        return None
    mean_1, std_1 = mean_and_std(first)
    mean_2, std_2 = mean_and_std(second)
    share_1, share_2 = std_1**2 / len(first), std_2**2 / len(second)
    if share_1 + share_2 == 0.0:
        return None
    t = (mean_1 - mean_2) / math.sqrt(share_1 + share_2)
    freedom = (share_1 + share_2) ** 2 / (
        share_1**2 / (len(first) - 1) + share_2**2 / (len(second) - 1))
    # P(|T| > |t|) for Student's t with `freedom` degrees: I_x(freedom/2, 1/2), x = v/(v+t^2)
    return regularized_incomplete_beta(freedom / 2, 0.5, freedom / (freedom + t * t))


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) by its continued fraction (modified Lentz), accurate to ~1e-12. Written
    here because importing scipy costs the CLI half a second for one function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below this point
        return 1.0 - regularized_incomplete_beta(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


# --- reading values out of records
def finished_runs(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [record for record in records if record.get("state") == "done" and record.get("summary")]


def metric_value(record: dict[str, Any], metric: str) -> float | None:
    """The metric of one run in its display unit; None when the run lacks it."""
    spec = METRICS[metric]
    value = record["summary"].get(metric)
    if value is None and spec.fallback is not None:
        value = spec.fallback(record)
    if value is None and spec.from_curve:
        curve = load_metrics(record)
        value = curve[-1].get(metric) if curve else None
    if value is None:
        return None
    return float(value) * (100.0 if spec.percent else 1.0)


def check_choice(value: str, choices: Iterable[str], what: str) -> None:
    if value not in choices:
        raise BadInput(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def check_metric(metric: str) -> None:
    check_choice(metric, METRICS, "metric")


def check_fields(names: Iterable[str], option: str) -> None:
    known = field_types()
    for name in names:
        if name not in known:
            raise BadInput(f"unknown field {name!r} in {option}; valid fields: {', '.join(known)}")


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@functools.cache
def _default_config() -> dict[str, Any]:
    return RunConfig().to_dict()


def full_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the fields added since it was recorded at their defaults, so a
    run from before a new field groups with the runs after it."""
    return {**_default_config(), **config}


def group_key(config: dict[str, Any]) -> tuple:
    """What makes runs seeds of one experiment: the whole config except the seed (and how it
    executed)."""
    skip = (*IGNORED_FIELDS, *EXECUTION_FIELDS)
    return tuple(sorted((key, _hashable(value)) for key, value in full_config(config).items() if key not in skip))


@dataclass
class SeedGroup:
    """The runs of one experiment (config minus seed): one per distinct seed."""

    by_seed: dict[Any, dict[str, Any]] = field(default_factory=dict)  # seed -> its latest finished run
    duplicates: int = 0  # runs of a seed already present, folded into the latest one

    def runs(self) -> list[dict[str, Any]]:
        return [self.by_seed[seed] for seed in sorted(self.by_seed)]


def _finish_order(record: dict[str, Any]) -> tuple:
    return (record.get("finished_at") or "", record["id"])


def seed_groups(runs: Iterable[dict[str, Any]]) -> dict[tuple, SeedGroup]:
    """Runs grouped by group_key, each seed counted once: as its latest finished run."""
    groups: dict[tuple, SeedGroup] = {}
    for record in runs:
        group = groups.setdefault(group_key(record["config"]), SeedGroup())
        seed = record["config"].get("seed", 0)
        kept = group.by_seed.get(seed)
        if kept is not None:
            group.duplicates += 1
            if _finish_order(kept) > _finish_order(record):
                continue
        group.by_seed[seed] = record
    return groups


def distinct_runs(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs with each (config, seed) kept once, as its latest finished run."""
    return [record for group in seed_groups(runs).values() for record in group.runs()]


def varying_fields(records: list[dict[str, Any]]) -> list[str]:
    """Config fields (seed and execution aside) that take more than one value, in config order."""
    return _varying({group_key(record["config"]) for record in records})


def _varying(group_keys: Iterable[tuple]) -> list[str]:
    """varying_fields from the distinct group keys: far fewer than the runs, same fields."""
    seen: dict[str, set] = {}
    for key in group_keys:
        for name, value in key:
            seen.setdefault(name, set()).add(value)
    return [name for name in field_types() if len(seen.get(name, ())) > 1]


def _sort_value(name: str, value: Any) -> tuple:
    order = {"sampler": SAMPLERS, "augmentation": AUGMENTATIONS}.get(name)
    if order and value in order:
        return (0, order.index(value), "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value, "")
    return (2, 0, str(value))


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(item) for item in value)
    return str(value)


# --- the pivot
@dataclass
class Pivot:
    metric: str
    row_fields: list[str]  # asked for, plus the fields that differ between runs otherwise
    col_fields: list[str]
    added_fields: list[str]  # the "only what differs" part of row_fields
    row_keys: list[tuple]
    col_keys: list[tuple]
    cells: dict[tuple[tuple, tuple], Cell]
    baseline: dict[str, Any]
    reference: dict[str, Any]
    constant: dict[str, Any] = field(default_factory=dict)  # fields shared by every run compared

    def cell(self, row_key: tuple, col_key: tuple) -> Cell | None:
        return self.cells.get((row_key, col_key))

    def row_label(self, row_key: tuple) -> str:
        return " / ".join(format_value(value) for value in row_key)

    def col_label(self, col_key: tuple) -> str:
        return " ".join(f"b={format_value(value)}" if name == "budget" else format_value(value)
                        for name, value in zip(self.col_fields, col_key)) or self.metric

    @property
    def common_n(self) -> int | None:
        sizes = {cell.n for cell in self.cells.values()}
        return sizes.pop() if len(sizes) == 1 else None

    @property
    def duplicates(self) -> int:
        return sum(cell.duplicates for cell in self.cells.values())

    def number(self, value: float | None) -> str:
        return "" if value is None else f"{value:.{METRICS[self.metric].digits}f}"

    def signed(self, value: float | None) -> str:
        return "" if value is None else f"{value:+.{METRICS[self.metric].digits}f}"

    def cell_text(self, row_key: tuple, col_key: tuple) -> str:
        """"94.20 ± 0.81 +1.30*": mean ± std, seeds in brackets when cells differ in n, then
        the delta against the baseline cell ("base" on the baseline itself)."""
        cell = self.cell(row_key, col_key)
        if cell is None:
            return ""
        text = self.number(cell.mean)
        if cell.std is not None:
            text += f"±{self.number(cell.std)}"
        if self.common_n is None:
            text += f" ({cell.n})"
        if cell.is_baseline:
            text += " base"
        elif cell.delta is not None:
            text += f" {self.signed(cell.delta)}{'*' if cell.significant else ''}"
        return text + (f" {FOLDED_MARK}" if cell.duplicates else "")

    def reference_text(self, row_key: tuple, col_key: tuple) -> str:
        cell = self.cell(row_key, col_key)
        if cell is None or cell.delta_reference is None:
            return ""
        return f"{self.signed(cell.delta_reference)}{'*' if cell.significant_reference else ''}"

    @property
    def notes(self) -> list[str]:
        n = self.common_n
        lines = [
            f"cell: {METRICS[self.metric].label}, mean ± sample std over seeds"
            + (f" (n = {n} per cell)" if n else " (n in brackets)"),
            f"delta: against {describe(self.baseline)} with the other fields equal",
            f"*: {TEST_NAME} p < {ALPHA}; not tested where a cell has under 2 seeds",
        ]
        if self.duplicates:
            cells = sum(1 for cell in self.cells.values() if cell.duplicates)
            lines.append(f"{FOLDED_MARK}: n counts distinct seeds; {self.duplicates} run(s) repeating a config and "
                         f"seed folded into the latest finished copy, in {cells} cell(s)")
        if self.added_fields:
            lines.append(f"rows also split by {', '.join(self.added_fields)}: these differ between the runs")
        if self.constant:
            lines.append("all runs (defaults aside): " + ", ".join(f"{key}={format_value(value)}"
                                                  for key, value in self.constant.items()))
        return lines

    def to_rows(self) -> list[dict[str, Any]]:
        """One flat dict per filled cell: what the csv and json exports hold."""
        rows = []
        for row_key in self.row_keys:
            for col_key in self.col_keys:
                cell = self.cell(row_key, col_key)
                if cell is None:
                    continue
                rows.append({
                    **dict(zip(self.row_fields, row_key)),
                    **dict(zip(self.col_fields, col_key)),
                    "metric": self.metric, "n": cell.n, "duplicates": cell.duplicates,
                    "mean": cell.mean, "std": cell.std,
                    "is_baseline": cell.is_baseline, "delta": cell.delta, "p_value": cell.p_value,
                    "significant": cell.significant, "delta_reference": cell.delta_reference,
                    "p_value_reference": cell.p_value_reference,
                    "significant_reference": cell.significant_reference,
                    "values": cell.values, "run_ids": cell.run_ids,
                })
        return rows


def describe(assignments: dict[str, Any]) -> str:
    return ", ".join(f"{key}={format_value(value)}" for key, value in assignments.items())


def build_pivot(
    records: Iterable[dict[str, Any]],
    rows: Iterable[str] = ("sampler",),
    cols: Iterable[str] = ("augmentation", "budget"),
    metric: str = DEFAULT_METRIC,
    baseline: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None,
) -> Pivot:
    """Seeds grouped by config-minus-seed, one cell per group, every group its own cell:
    fields that differ between runs but are neither rows nor columns are added to the rows.
    A cell holds one value per distinct seed (see seed_groups)."""
    rows, cols = list(rows), list(cols)
    check_metric(metric)
    check_fields([*rows, *cols], "--rows/--cols")
    if set(rows) & set(cols):
        raise BadInput(f"a field cannot be both a row and a column: {', '.join(set(rows) & set(cols))}")
    baseline = dict(DEFAULT_BASELINE if baseline is None else baseline)
    reference = dict(DEFAULT_REFERENCE if reference is None else reference)
    check_fields([*baseline, *reference], "--baseline")

    finished = finished_runs(records)
    value_of = {record["id"]: metric_value(record, metric) for record in finished}
    runs = [record for record in finished if value_of[record["id"]] is not None]
    if not runs:
        raise NotFound(f"no finished run has the metric {metric!r}")
    groups = seed_groups(runs)
    varying = _varying(groups)
    added = [name for name in varying if name not in rows and name not in cols]
    row_fields = rows + added
    shown = set(row_fields) | set(cols)
    defaults = _default_config()
    constant = {key: value for key, value in full_config(runs[0]["config"]).items()
                if key not in varying and key not in shown and key not in IGNORED_FIELDS
                and key not in EXECUTION_FIELDS and (key in ALWAYS_NAMED or value != defaults.get(key))}

    cells: dict[tuple[tuple, tuple], Cell] = {}
    cell_of_group: dict[tuple, Cell] = {}
    for key, group in groups.items():
        members = group.runs()
        values = [value_of[record["id"]] for record in members]
        mean, std = mean_and_std(values)
        cell = Cell(values=values, run_ids=[record["id"] for record in members], mean=mean, std=std,
                    duplicates=group.duplicates)
        config = full_config(members[0]["config"])
        position = (tuple(_hashable(config.get(name)) for name in row_fields),
                    tuple(_hashable(config.get(name)) for name in cols))
        cells[position] = cell
        cell_of_group[key] = cell

    for key, cell in cell_of_group.items():
        config = dict(key)
        base = cell_of_group.get(group_key({**config, **baseline}))
        if base is cell:
            cell.is_baseline = True
        elif base is not None:
            cell.delta, cell.p_value = cell.mean - base.mean, welch_t_test(cell.values, base.values)
        ref = cell_of_group.get(group_key({**config, **reference}))
        if ref is not None and ref is not cell:
            cell.delta_reference = cell.mean - ref.mean
            cell.p_value_reference = welch_t_test(cell.values, ref.values)

    def ordered(index: int, names: list[str]) -> list[tuple]:
        keys = {position[index] for position in cells}
        return sorted(keys, key=lambda key: tuple(_sort_value(n, v) for n, v in zip(names, key)))

    return Pivot(metric=metric, row_fields=row_fields, col_fields=cols, added_fields=added,
                 row_keys=ordered(0, row_fields), col_keys=ordered(1, cols), cells=cells,
                 baseline=baseline, reference=reference, constant=constant)


# --- exports: one set of numbers, five formats
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


# --- charts
def _series_groups(runs: list[dict[str, Any]], exclude: Iterable[str]) -> dict[tuple, list[dict[str, Any]]]:
    """Runs split into one series per combination of the fields that differ (minus `exclude`)."""
    names = [name for name in varying_fields(runs) if name not in exclude]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in runs:
        config = full_config(record["config"])
        groups.setdefault(tuple(_hashable(config.get(name)) for name in names), []).append(record)
    return dict(sorted(groups.items(), key=lambda item: tuple(
        _sort_value(name, value) for name, value in zip(names, item[0]))))


def _label(values: tuple) -> str:
    return " / ".join(format_value(value) for value in values) or "all runs"


def _present(values: Iterable[float | None]) -> list[float]:
    return [value for value in values if value is not None]


def _points(label: str, runs: list[dict[str, Any]], x_of, y_metric: str, note_metric: str | None = None) -> Series:
    """Mean and std over seeds of y at each distinct x-group (the config minus seed); the
    note lists the mean of `note_metric` at each point, left to right."""
    points = []
    for group in seed_groups(runs).values():
        members = group.runs()
        ys = _present(metric_value(record, y_metric) for record in members)
        xs = _present(x_of(record) for record in members)
        if ys and xs:
            notes = _present(metric_value(record, note_metric) for record in members) if note_metric else []
            points.append((math.fsum(xs) / len(xs), *mean_and_std(ys), math.fsum(notes) / len(notes) if notes else None))
    points.sort(key=lambda point: point[0])
    note = ", ".join("?" if point[3] is None else f"{point[3]:.2f}" for point in points) if note_metric else ""
    return Series(label, [p[0] for p in points], [p[1] for p in points], [p[2] or 0.0 for p in points], note=note)


def budget_chart(records: Iterable[dict[str, Any]], metric: str = DEFAULT_METRIC) -> Chart:
    """Accuracy (or any metric) against budget: one line per sampler (and per any other field
    that differs), error bars = std over seeds."""
    check_metric(metric)
    runs = distinct_runs(finished_runs(records))
    groups = _series_groups(runs, exclude=("budget",))
    series = [_points(_label(values), members, lambda record: record["config"]["budget"], metric)
              for values, members in groups.items()]
    return Chart(title=f"{METRICS[metric].label} against budget", x_label="budget (fraction of the schedule)",
                 y_label=METRICS[metric].label, series=series)


FLOP_BUDGET_LEGEND = "[FLOPs / full-budget unif-sgd run]"
COSTS = {"flops_train": "training FLOPs (incl. scoring forwards)", "time_total_s": "wall time (s)",
         "samples_forwarded": "samples forwarded"}


def frontier_chart(records: Iterable[dict[str, Any]], metric: str = DEFAULT_METRIC,
                   cost: str = "flops_train") -> Chart:
    """Accuracy against the compute a run really spent, so samplers with extra forward passes
    are not flattered by an iteration budget: one point per budget, one series per sampler.
    The legend gives each point's FLOP budget used (FLOPs over the full-budget unif-sgd run's)."""
    check_metric(metric)
    if cost not in COSTS:
        raise BadInput(f"unknown cost {cost!r}; choose one of: {', '.join(COSTS)}")
    runs = distinct_runs(finished_runs(records))
    groups = _series_groups(runs, exclude=("budget",))
    series = [_points(_label(values), members, lambda record: record["summary"].get(cost), metric,
                      note_metric="flops_budget_used")
              for values, members in groups.items()]
    return Chart(title=f"{METRICS[metric].label} against compute", x_label=COSTS[cost],
                 y_label=METRICS[metric].label, series=series, kind="scatter", x_log=cost == "flops_train",
                 legend_title=FLOP_BUDGET_LEGEND)


CURVE_AXES = {"step": "optimiser steps", "samples_forwarded": "samples forwarded", "epoch": "epoch"}


def learning_curve_chart(records: Iterable[dict[str, Any]], x: str = "step") -> Chart:
    """Test accuracy per epoch against steps (or samples forwarded), averaged over seeds."""
    if x not in CURVE_AXES:
        raise BadInput(f"unknown curve axis {x!r}; choose one of: {', '.join(CURVE_AXES)}")
    runs = distinct_runs(finished_runs(records))
    groups = _series_groups(runs, exclude=())
    series = []
    for values, members in groups.items():
        curves = [load_metrics(record) for record in members]
        length = min((len(curve) for curve in curves), default=0)
        xs, ys, errors = [], [], []
        for epoch in range(length):
            xs.append(math.fsum(curve[epoch][x] for curve in curves) / len(curves))
            mean, std = mean_and_std([100.0 * curve[epoch]["test_acc"] for curve in curves])
            ys.append(mean)
            errors.append(std or 0.0)
        series.append(Series(_label(values), xs, ys, errors))
    return Chart(title="test accuracy during training", x_label=CURVE_AXES[x], y_label="test accuracy (%)",
                 series=series)


def usage_chart(records: Iterable[dict[str, Any]], bins: int = 12) -> Chart:
    """How often each training sample was backpropagated: a histogram of the usage counts
    (share of samples per count bin), averaged over seeds, one series per group."""
    import numpy  # only here: usage counts are arrays saved by the engine

    runs = distinct_runs(finished_runs(records))
    groups = _series_groups(runs, exclude=())
    loaded: dict[tuple, list] = {}
    for values, members in groups.items():
        arrays = []
        for record in members:
            if not record.get("run_dir"):
                continue
            try:
                arrays.append(numpy.load(Path(record["run_dir"]) / USAGE_NAME))
            except (OSError, ValueError):
                continue  # older runs have no usage file
        if arrays:
            loaded[values] = arrays
    if not loaded:
        return Chart(title="usage counts", x_label="times a sample was used", y_label="share of samples (%)",
                     series=[], kind="bar")
    top = max(int(array.max()) for arrays in loaded.values() for array in arrays)
    width = max(1, math.ceil((top + 1) / bins))  # whole counts per bin: a count never straddles two
    edges = numpy.arange(0, top + 1 + width, width)
    centres = (edges[:-1] + (width - 1) / 2).tolist()
    series = []
    for values, arrays in loaded.items():
        shares = [numpy.histogram(array, bins=edges)[0] / len(array) * 100 for array in arrays]
        series.append(Series(_label(values), centres, numpy.mean(shares, axis=0).tolist()))
    return Chart(title="usage counts per training sample", x_label="times a sample was used",
                 y_label="share of samples (%)", series=series, kind="bar")


CHARTS = ("budget", "frontier", "frontier-time", "curves", "curves-forwarded", "usage")


def build_chart(name: str, records: list[dict[str, Any]], metric: str = DEFAULT_METRIC) -> Chart:
    check_choice(name, CHARTS, "chart")
    return {
        "budget": lambda: budget_chart(records, metric),
        "frontier": lambda: frontier_chart(records, metric, "flops_train"),
        "frontier-time": lambda: frontier_chart(records, metric, "time_total_s"),
        "curves": lambda: learning_curve_chart(records, "step"),
        "curves-forwarded": lambda: learning_curve_chart(records, "samples_forwarded"),
        "usage": lambda: usage_chart(records),
    }[name]()
