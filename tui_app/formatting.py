"""Plain-text formatting shared by the CLI and the terminal UI: a run's summary, its log
lines, durations, percentages and rates.

Pure functions returning str, so the UI need not import the CLI (typer) and the CLI need
not import rich or textual for them.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator

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


def log_line(line: str) -> str:
    """One line of the run's log as a reader wants it: the child prints its events as JSON
    (start, resume, each epoch, done); other lines (the worker's, warnings) stay as they are."""
    try:
        event = json.loads(line)
    except ValueError:
        return line
    if not isinstance(event, dict) or "event" not in event:
        return line
    kind = event["event"]
    if kind == "start" and isinstance(event.get("plan"), dict):
        plan = event["plan"]
        return (f"start on {event.get('device', '?')}: {plan.get('total_steps', '?')} steps in "
                f"{plan.get('epochs', '?')} epochs of {plan.get('steps_per_epoch', '?')}")
    if kind == "resume":
        return f"resume after epoch {event.get('epoch', '?')} (step {event.get('step', '?')})"
    if kind == "epoch":
        parts = [f"epoch {event.get('epoch', '?')}" + (f"/{event['total_epochs']}" if "total_epochs" in event else "")]
        if "step" in event:
            parts.append(f"step {event['step']}" + (f"/{event['total_steps']}" if "total_steps" in event else ""))
        if isinstance(event.get("train_loss"), (int, float)):
            parts.append(f"train loss {event['train_loss']:.4f}")
        if isinstance(event.get("test_acc"), (int, float)):
            parts.append(f"test acc {percent(event['test_acc'], 2)}")
        if isinstance(event.get("images_per_s"), (int, float)):
            parts.append(f"{rate(event['images_per_s'])} images/s")
        return " · ".join(parts)
    if kind == "done" and isinstance(event.get("summary"), dict):
        summary = event["summary"]
        return (f"done: final test acc {percent(summary.get('final_test_acc'), 2)} "
                f"after {summary.get('steps', '?')} steps")
    details = ", ".join(f"{key} {value}" for key, value in event.items() if key != "event")
    return f"{kind}: {details}" if details else str(kind)


def log_lines(chunks: Iterable[str]) -> Iterator[str]:
    """Readable lines (log_line) from a log's text as it arrives in pieces: a line is
    formatted once it is complete; a last line without its newline comes out at the end."""
    pending = ""
    for chunk in chunks:
        *complete, pending = (pending + chunk).split("\n")
        yield from (log_line(line) for line in complete)
    if pending:
        yield log_line(pending)
