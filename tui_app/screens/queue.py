"""Queue screen: running, queued and interrupted runs with live progress, updated in place
every refresh; cancel, retry, priority, and starting or stopping the worker.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterable

from rich.text import Text
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import Static

from engine.queue import INTERRUPTED, QUEUED, RUNNING, queue_order, set_priority, validate_priority
from engine.slurm import display_state
from tui_app.screens.base import AppScreen, Snapshot
from tui_app.screens.run_detail import RunDetailScreen
from tui_app.formatting import duration, percent, rate
from tui_app.widgets.cells import progress_bar, remaining_seconds, state_text
from tui_app.widgets.run_table import Cells, Column, RunTable

COLUMNS = (
    Column("id", "id", 5, "right"), Column("state", "state", 11), Column("progress", "progress", 12),
    Column("acc", "acc", 6, "right"), Column("rate", "img/s", 6, "right"), Column("eta", "ETA", 7, "right"),
    Column("sampler", "sampler", 10), Column("budget", "budget", 6, "right"), Column("aug", "aug", 9),
    Column("seed", "seed", 4, "right"), Column("prio", "prio", 4, "right"), Column("preset", "preset", 16),
)
EMPTY = "the queue is empty — pick a preset (1) and press enter"


def queue_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Running runs first, then the queue in the order the worker takes it, then interrupted ones."""
    rank = {RUNNING: 0, QUEUED: 1, INTERRUPTED: 2}
    active = [record for record in runs if record.get("state") in rank]
    return sorted(active, key=lambda record: (rank[record["state"]], *queue_order(record)))


def queue_cells(record: dict[str, Any], progress: dict[str, Any], now: dt.datetime) -> Cells:
    config = record.get("config", {})
    state = record.get("state")
    if state == RUNNING:
        bar: str | Text = progress_bar(progress.get("step", 0), progress["steps"], 12) if progress.get("steps") \
            else "starting"
    else:
        bar = "resumable" if state == INTERRUPTED else ""
    return {
        "id": str(record["id"]), "state": state_text(display_state(record)), "progress": bar,
        "acc": percent(progress.get("test_acc")) if state == RUNNING else "",
        "rate": rate(progress.get("images_per_s")) if state == RUNNING else "",
        "eta": duration(remaining_seconds(progress, now)) if state == RUNNING else "",
        "sampler": config.get("sampler", ""), "budget": f"{config.get('budget', '')}",
        "aug": config.get("augmentation", ""), "seed": str(config.get("seed", "")),
        "prio": str(record.get("priority", 0)), "preset": record.get("preset", ""),
    }


class QueueScreen(AppScreen):
    MODE = "queue"
    BINDINGS = [
        Binding("c", "cancel", "cancel", tooltip="Cancel the selected run (stops it if running)"),
        Binding("r", "retry", "retry", tooltip="Retry or resume the selected run"),
        Binding("plus,equals_sign", "priority(1)", "prio+", key_display="+", tooltip="Raise the selected run's priority"),
        Binding("minus", "priority(-1)", "prio-", key_display="-", tooltip="Lower the selected run's priority"),
        Binding("w", "app.start_worker", "worker on", tooltip="Start a worker in the background"),
        Binding("W", "app.stop_worker", "worker off", tooltip="Stop the worker (running runs become interrupted)"),
    ]

    def compose_body(self) -> Iterable[Widget]:
        yield Static("", id="queue-summary", classes="summary")
        yield RunTable(COLUMNS, empty_hint=Snapshot().hint(EMPTY), id="queue-table")

    def show_snapshot(self, snapshot: Snapshot) -> None:
        table = self.query_one(RunTable)
        runs = queue_runs(snapshot.runs)
        by_key = {str(record["id"]): record for record in runs}
        now = self.budget_app.now()
        table.set_rows(list(by_key), lambda key: queue_cells(by_key[key], snapshot.progress.get(int(key), {}), now))
        table.set_empty_hint(snapshot.hint(EMPTY))
        counts = {state: sum(record["state"] == state for record in runs) for state in (RUNNING, QUEUED, INTERRUPTED)}
        self.query_one("#queue-summary", Static).update(
            " · ".join(f"{count} {state}" for state, count in counts.items()))

    def _selected(self) -> dict[str, Any] | None:
        key = self.query_one(RunTable).cursor_key
        return None if key is None else self.snapshot.run(int(key))

    def on_run_table_row_selected(self, message: RunTable.RowSelected) -> None:
        self.app.push_screen(RunDetailScreen(int(message.key), self.MODE))

    def action_cancel(self) -> None:
        record = self._selected()
        if record is not None:
            self.cancel_run(record["id"])

    def action_retry(self) -> None:
        record = self._selected()
        if record is not None:
            self.retry_run(record["id"])

    def action_priority(self, change: int) -> None:
        record = self._selected()
        if record is None:
            return
        store, run_id = self.budget_app.store, record["id"]

        def apply() -> str:
            # Read the priority now, not from the screen: quick presses each count.
            priority = validate_priority(int(store.get_run(run_id).get("priority", 0)) + change)
            set_priority(store, [run_id], priority)
            return f"run {run_id}: priority {priority}"

        self.budget_app.perform(apply)
