"""Plain-text formatting shared by the CLI and the terminal UI: a run's summary, durations,
percentages and rates.

Pure functions returning str, so the UI need not import the CLI (typer) and the CLI need
not import rich or textual for them.
"""

from __future__ import annotations

from typing import Any

from engine.analysis.plots import compact_number  # the compare table's formatter: FLOPs read the same in both


def format_summary(run_id: int, summary: dict[str, Any]) -> str:
    """A finished run's summary in three or four lines: accuracy, what it cost, where the time went."""
    lines = [
        f"run {run_id}: final test acc {summary['final_test_acc']:.2%} "
        f"(best epoch {summary['best_test_epoch']}: {summary['best_test_acc']:.2%}, chosen on test)",
        f"  {summary['steps']} steps, {summary['samples_backprop']:,} samples backpropagated, "
        f"{summary['samples_forwarded']:,} forwarded, {compact_number(summary['flops_train'], unit='FLOP')}, "
        f"{summary['budget_used']:.0%} of the nominal steps",
        f"  time: train {summary['time_train_s']:.1f}s, eval {summary['time_eval_s']:.1f}s, "
        f"overhead {summary['time_overhead_s']:.1f}s; {summary['images_per_s']:,.0f} images/s",
    ]
    if "test_acc_at_best_val" in summary:
        lines.insert(1, f"  test acc at best validation epoch {summary['best_val_epoch']}: "
                        f"{summary['test_acc_at_best_val']:.2%}")
    return "\n".join(lines)


def percent(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}%}"


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def duration(seconds: float | None) -> str:
    """h:mm:ss, or "-" when unknown."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
