"""The series behind the compare charts, built from the history as plots.Chart
descriptions: accuracy against budget, against the compute really spent, learning curves
and usage-count histograms. Each point is a mean over distinct seeds, its error bar their
standard deviation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from engine.analysis.grouping import (distinct_runs, format_value, full_config, hashable, seed_groups, sort_value,
                                      varying_fields)
from engine.analysis.metrics import DEFAULT_METRIC, METRICS, check_choice, check_metric, finished_runs, metric_value
from engine.analysis.plots import Chart, Series
from engine.analysis.stats import mean_and_std
from engine.errors import BadInput
from engine.history import load_metrics
from engine.paths import USAGE_NAME


def _series_groups(runs: list[dict[str, Any]], exclude: Iterable[str]) -> dict[tuple, list[dict[str, Any]]]:
    """Runs split into one series per combination of the fields that differ (minus `exclude`)."""
    names = [name for name in varying_fields(runs) if name not in exclude]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in runs:
        config = full_config(record["config"])
        groups.setdefault(tuple(hashable(config.get(name)) for name in names), []).append(record)
    return dict(sorted(groups.items(), key=lambda item: tuple(
        sort_value(name, value) for name, value in zip(names, item[0]))))


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
