"""The compare pivot: one cell per experiment (config minus seed) holding mean +- std over
its distinct seeds, with deltas and Welch's t-test against a baseline cell and against the
full-budget reference cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from engine.analysis.grouping import (EXECUTION_FIELDS, IGNORED_FIELDS, check_fields, default_config,
                                      format_value, full_config, group_key, hashable, seed_groups, sort_value,
                                      varying_in_keys)
from engine.analysis.metrics import DEFAULT_METRIC, METRICS, check_metric, finished_runs, metric_value
from engine.analysis.plots import compact_number
from engine.analysis.stats import ALPHA, TEST_NAME, mean_and_std, welch_t_test
from engine.errors import BadInput, NotFound

FOLDED_MARK = "†"  # after a cell that had copies (same config and seed) folded
DEFAULT_BASELINE = {"sampler": "unif-sgd", "augmentation": "standard"}
DEFAULT_REFERENCE = {"sampler": "unif-sgd", "augmentation": "standard", "budget": 1.0}
ALWAYS_NAMED = ("dataset", "model", "epochs")  # named under the table even when at their default


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
        if value is None:
            return ""
        metric = METRICS[self.metric]
        return compact_number(value) if metric.compact else f"{value:.{metric.digits}f}"

    def signed(self, value: float | None) -> str:
        if value is None:
            return ""
        metric = METRICS[self.metric]
        return ("+" if value >= 0 else "") + compact_number(value) if metric.compact else f"{value:+.{metric.digits}f}"

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
    varying = varying_in_keys(groups)
    added = [name for name in varying if name not in rows and name not in cols]
    row_fields = rows + added
    shown = set(row_fields) | set(cols)
    defaults = default_config()
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
        position = (tuple(hashable(config.get(name)) for name in row_fields),
                    tuple(hashable(config.get(name)) for name in cols))
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
        return sorted(keys, key=lambda key: tuple(sort_value(n, v) for n, v in zip(names, key)))

    return Pivot(metric=metric, row_fields=row_fields, col_fields=cols, added_fields=added,
                 row_keys=ordered(0, row_fields), col_keys=ordered(1, cols), cells=cells,
                 baseline=baseline, reference=reference, constant=constant)
