"""Small text renderings shared by the tables and the run detail: progress bars,
sparklines, "ago" times and coloured run states (plain numbers: tui_app.formatting).

Pure functions of their arguments (the clock is passed in), so screens render the same
text in snapshots. Must not import torch.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Sequence

from rich.text import Text

from engine.records import parse_time
from tui_app.formatting import duration

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
STATE_STYLES = {
    "queued": "cyan",
    "running": "bold yellow",
    "done": "green",
    "failed": "bold red",
    "cancelled": "dim",
    "interrupted": "magenta",
}


def state_text(state: str | None) -> Text:
    return Text(state or "?", style=STATE_STYLES.get(state or "", ""))


def sparkline(values: Sequence[float], width: int) -> str:
    """`values` resampled to at most `width` points and drawn with ▁▂▃▄▅▆▇█, scaled between
    their own minimum and maximum, so the shape of a curve reads at a glance."""
    if not values:
        return ""
    if len(values) > width:
        # Keep the last value of each of `width` equal buckets: the curve's end stays exact.
        values = [values[min(len(values) - 1, (index + 1) * len(values) // width - 1)] for index in range(width)]
    low, high = min(values), max(values)
    if high == low:
        return SPARK_BLOCKS[len(SPARK_BLOCKS) // 2 - 1] * len(values)
    top = len(SPARK_BLOCKS) - 1
    return "".join(SPARK_BLOCKS[round((value - low) / (high - low) * top)] for value in values)


def progress_bar(done: int, total: int, width: int) -> Text:
    """`███▌░░░ 45%` in `width` cells: a bar of eighths and the percentage."""
    fraction = min(max(done / total, 0.0), 1.0) if total else 0.0
    label = f"{fraction:4.0%}"
    cells = max(width - len(label) - 1, 1)
    eighths = round(fraction * cells * 8)
    full, partial = divmod(eighths, 8)
    bar = "█" * full + ("▏▎▍▌▋▊▉"[partial - 1] if partial else "")
    text = Text(bar, style="green")
    text.append("░" * (cells - len(bar)), style="dim")
    text.append(" " + label)
    return text


def ago(stamp: str | None, now: dt.datetime) -> str:
    """"42s ago", "5m ago", "3h ago", "12d ago" relative to `now`; "-" when unknown."""
    moment = parse_time(stamp)
    if moment is None:
        return "-"
    seconds = max((now - moment).total_seconds(), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def remaining_seconds(progress: dict[str, Any], now: dt.datetime) -> float | None:
    """The progress file's ETA minus the time since it was written."""
    eta, updated = progress.get("eta_s"), progress.get("updated_at")
    if eta is None:
        return None
    if updated is None:
        return eta
    return max(eta - (now.timestamp() - updated), 0.0)


def eta_text(progress: dict[str, Any], now: dt.datetime) -> str:
    """A running run's ETA as h:mm:ss, or "~" while too few steps are in to estimate it (the
    engine gives one from the average rate since training started, so it does not jump)."""
    seconds = remaining_seconds(progress, now)
    return "~" if seconds is None else duration(seconds)
