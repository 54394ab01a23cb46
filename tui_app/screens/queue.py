"""Queue screen: running, queued and interrupted runs with live progress, updated in place
every refresh, and below them the runs that finished last, so a run just cancelled or
failed stays in reach of retry; cancel, retry, priority, and starting or stopping the worker.
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
from tui_app.formatting import percent, rate
from tui_app.screens.base import STARTING_HINT, AppScreen, Snapshot, is_starting
from tui_app.widgets.cells import eta_text, progress_bar, state_text
from tui_app.widgets.run_table import Cells, Column, RunTable

# At 80 columns the accuracy and the rate (hide_rank) make way for seed, priority and
# preset, which + and - change; a running run's state cell is its progress bar.
COLUMNS = (
    Column("id", "id", 5, "right"), Column("state", "state", 12),
    Column("acc", "acc", 6, "right", hide_rank=1), Column("rate", "img/s", 6, "right", hide_rank=2),
    Column("eta", "ETA", 7, "right"), Column("sampler", "sampler", 10), Column("budget", "budget", 6, "right"),
    Column("aug", "aug", 8), Column("seed", "seed", 4, "right"), Column("prio", "prio", 4, "right"),
    Column("preset", "preset", 13),
)
EMPTY = "the queue is empty — pick a preset (1) and press enter"
RECENT_FINISHED = 5  # finished runs kept below the queue, the latest first


def queue_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Running runs first, then the queue in the order the worker takes it, then interrupted
    ones, then the RECENT_FINISHED runs that finished last."""
    rank = {RUNNING: 0, QUEUED: 1, INTERRUPTED: 2}
    active = sorted((record for record in runs if record.get("state") in rank),
                    key=lambda record: (rank[record["state"]], *queue_order(record)))
    finished = sorted((record for record in runs if record.get("state") not in rank),
                      key=lambda record: (record.get("finished_at") or "", record["id"]), reverse=True)
    return active + finished[:RECENT_FINISHED]


def queue_cells(record: dict[str, Any], progress: dict[str, Any], now: dt.datetime) -> Cells:
    config = record.get("config", {})
    state = display_state(record)
    running = record.get("state") == RUNNING
    status: str | Text = state_text(state)
    if is_starting(record, progress):
        status = Text("starting…", style="yellow")
    elif state == RUNNING:  # (a Slurm job still waiting shows its own state instead)
        status = progress_bar(progress.get("step", 0), progress["steps"], 12)
    return {
        "id": str(record["id"]), "state": status,
        "acc": percent(progress.get("test_acc")) if running else "",
        "rate": rate(progress.get("images_per_s")) if running else "",
        "eta": eta_text(progress, now) if running else "",
        "sampler": config.get("sampler", ""), "budget": f"{config.get('budget', '')}",
        "aug": config.get("augmentation", ""), "seed": str(config.get("seed", "")),
        "prio": str(record.get("priority", 0)), "preset": record.get("preset", ""),
    }


def queue_summary(runs: list[dict[str, Any]], progress: dict[int, dict[str, Any]]) -> str:
    """`1 running · 2 queued · 1 interrupted · 5 finished last`, runs still starting named as such."""
    starting = sum(is_starting(record, progress.get(record["id"], {})) for record in runs)
    counts = {state: sum(record["state"] == state for record in runs) for state in (RUNNING, QUEUED, INTERRUPTED)}
    counts[RUNNING] -= starting
    parts = [f"{count} {state}" for state, count in counts.items()]
    if starting:
        parts.insert(1, f"{starting} {STARTING_HINT}")
    finished = len(runs) - sum(counts.values()) - starting
    if finished:
        parts.append(f"{finished} finished last")
    return " · ".join(parts)


class QueueScreen(AppScreen):
    MODE = "queue"
    BINDINGS = [
        Binding("c", "cancel", "cancel", tooltip="Cancel the selected run (asks first if it is running)"),
        Binding("r", "retry", "retry", tooltip="Retry or resume the selected run"),
        Binding("plus,equals_sign", "priority(1)", "prio+", key_display="+", tooltip="Raise the selected run's priority"),
        Binding("minus", "priority(-1)", "prio-", key_display="-", tooltip="Lower the selected run's priority"),
        Binding("w", "app.start_worker", "worker on", tooltip="Start a worker in the background"),
        Binding("W", "app.stop_worker", "worker off", tooltip="Stop the worker (asks first; running runs become interrupted)"),
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
        self.query_one("#queue-summary", Static).update(queue_summary(runs, snapshot.progress))

    def _selected(self) -> dict[str, Any] | None:
        key = self.query_one(RunTable).cursor_key
        return None if key is None else self.snapshot.run(int(key))

    def on_run_table_row_selected(self, message: RunTable.RowSelected) -> None:
        from tui_app.screens.run_detail import RunDetailScreen  # imported on first use: start-up

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
