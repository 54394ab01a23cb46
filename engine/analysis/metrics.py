"""What `compare` can put in a cell: the metrics, their units, and how to read one from a
run record (older records lack some keys: those are computed or read from metrics.jsonl).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from engine.errors import BadInput
from engine.history import load_metrics


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
    compact: bool = False  # shown with an SI prefix (54.8G), as runs' summaries show it
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
    "flops_train": Metric("training FLOPs", digits=0, compact=True),
    "budget_used": Metric("fraction of the nominal steps", digits=3),
    "flops_budget_used": Metric("training FLOPs / those of the full-budget unif-sgd run", digits=3,
                                fallback=flops_budget_used),
    "usage_entropy": Metric("usage entropy H(c) (nats)", digits=3, from_curve=True),
    "distinct_seen": Metric("distinct samples seen", digits=0, from_curve=True),
}
DEFAULT_METRIC = "final_test_acc"


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
