"""History screen: every finished, failed, cancelled or interrupted run, filtered with
`key=value` terms (engine.history) and sorted by any column, with a sparkline of each
run's test accuracy.

Filtering and sorting 10,000 runs happen in a thread worker and only the rows in view are
formatted; sparklines are read from metrics.jsonl for the rows in view only, cached by run
and finish time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from textual import work
from textual.binding import Binding
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static
from textual.worker import Worker

from engine.history import filter_runs, load_metrics
from engine.queue import FINISHED
from tui_app.screens.base import AppScreen, LatestOnly, Snapshot
from tui_app.formatting import percent
from tui_app.widgets.cells import ago, sparkline, state_text
from tui_app.widgets.filter_bar import FilterBar
from tui_app.widgets.run_table import Cells, Column, RunTable

SPARK_WIDTH = 10
COLUMNS = (  # the first nine fit 80 columns
    Column("id", "id", 5, "right"), Column("state", "state", 11), Column("acc", "acc", 6, "right"),
    Column("curve", "test acc", SPARK_WIDTH), Column("sampler", "sampler", 10),
    Column("budget", "budget", 6, "right"), Column("aug", "aug", 8), Column("seed", "seed", 4, "right"),
    Column("finished", "finished", 8, "right"), Column("preset", "preset", 16),
    Column("dataset", "dataset", 9), Column("model", "model", 14),
)


def final_accuracy(record: dict[str, Any]) -> float | None:
    return (record.get("summary") or {}).get("final_test_acc")


def config_value(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda record: record.get("config", {}).get(name, "")


# Sortable columns with their sort keys, in the order `s` steps through them: the table's,
# left to right.
SORT_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "id": lambda record: record["id"],
    "state": lambda record: record.get("state", ""),
    "acc": lambda record: final_accuracy(record) if final_accuracy(record) is not None else -1.0,
    "sampler": config_value("sampler"),
    "budget": config_value("budget"),
    "aug": config_value("augmentation"),
    "seed": config_value("seed"),
    "finished": lambda record: record.get("finished_at") or "",
    "preset": lambda record: record.get("preset", ""),
    "dataset": config_value("dataset"),
    "model": config_value("model"),
}
NEWEST_FIRST = ("id", "acc", "finished")  # columns whose first sort is descending
# How each direction reads in the summary line: (descending, ascending).
SORT_WORDS = {"id": ("newest first", "oldest first"), "finished": ("latest first", "earliest first"),
              "acc": ("best first", "worst first"), "budget": ("largest first", "smallest first"),
              "seed": ("highest first", "lowest first")}
TEXT_ORDER = ("Z to A", "A to Z")
EMPTY = "no finished runs yet — pick a preset (1) and press enter"
NO_MATCH = "no run matches the filter"


@dataclass(frozen=True)
class Sort:
    column: str = "id"
    descending: bool = True

    def describe(self) -> str:
        """"sorted by acc, best first": what the header's arrow means, in words."""
        label = next(column.label for column in COLUMNS if column.key == self.column)
        descending, ascending = SORT_WORDS.get(self.column, TEXT_ORDER)
        return f"sorted by {label}, {descending if self.descending else ascending}"


def runs_word(count: int) -> str:
    return f"{count} finished run{'s' * (count != 1)}"


def history_cells(record: dict[str, Any], curve: str, now: dt.datetime) -> Cells:
    config = record.get("config", {})
    return {
        "id": str(record["id"]), "state": state_text(record.get("state")),
        "acc": percent(final_accuracy(record)), "curve": curve,
        "sampler": config.get("sampler", ""), "budget": str(config.get("budget", "")),
        "aug": config.get("augmentation", ""), "seed": str(config.get("seed", "")),
        "finished": ago(record.get("finished_at"), now), "preset": record.get("preset", ""),
        "dataset": config.get("dataset", ""), "model": config.get("model", ""),
    }


def accuracy_curve(record: dict[str, Any]) -> str:
    """The run's test accuracy per epoch as a sparkline ("-" when it has no epochs)."""
    values = [row["test_acc"] for row in load_metrics(record) if "test_acc" in row]
    return sparkline(values, SPARK_WIDTH) or "-"


class HistoryScreen(AppScreen):
    MODE = "history"
    BINDINGS = [
        Binding("slash", "filter", "filter", key_display="/", tooltip="Filter the history (key=value …)"),
        Binding("s", "sort", "sort", tooltip="Sort by the next column"),
        Binding("S", "reverse", "reverse", tooltip="Reverse the sort order"),
        Binding("r", "retry", "retry", tooltip="Queue the selected run again (resumes from its checkpoint)"),
        Binding("escape", "focus_table", show=False),
    ]

    class RowsBuilt(Message):
        def __init__(self, records: dict[str, dict[str, Any]], finished: int, version: int) -> None:
            self.records = records  # row key -> record, in the order shown
            self.finished = finished  # finished runs before filtering
            self.version = version  # of the snapshot they were built from
            super().__init__()

    class CurvesLoaded(Message):
        def __init__(self, curves: dict[str, tuple[str | None, str]]) -> None:
            self.curves = curves  # row key -> (finished_at, sparkline)
            super().__init__()

    def __init__(self) -> None:
        super().__init__()
        self.filters: dict[str, Any] = {}
        self.sort = Sort()
        self.records: dict[str, dict[str, Any]] = {}
        self._finished_count = 0  # finished runs before filtering, at the last build
        self.curves: dict[str, tuple[str | None, str]] = {}  # row key -> (finished_at it belongs to, sparkline)
        self._built_version = -1
        self._builds = LatestOnly(self._build_rows)
        self._curve_loads = LatestOnly(self._load_curves)

    def compose_body(self) -> Iterable[Widget]:
        yield FilterBar("key=value … then enter (e.g. sampler=p-sgd state=failed)")
        yield Static("", id="history-summary", classes="summary")
        table = RunTable(COLUMNS, empty_hint=Snapshot().hint(EMPTY), id="history-table")
        table.sorted_by = (self.sort.column, self.sort.descending)
        yield table

    def on_mount(self) -> None:
        self.query_one(RunTable).focus()

    # --- data
    def show_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.version != self._built_version or snapshot.error:
            self._builds.ask()
        else:
            self.query_one(RunTable).refresh_rows()  # the "ago" times move on

    @work(thread=True, exit_on_error=False, group="history-rows")
    def _build_rows(self) -> None:
        snapshot, filters, sort = self.snapshot, self.filters, self.sort
        finished = [record for record in snapshot.runs if record.get("state") in FINISHED]
        shown = sorted(filter_runs(finished, filters), key=SORT_KEYS[sort.column], reverse=sort.descending)
        self.post_message(self.RowsBuilt({str(record["id"]): record for record in shown}, len(finished),
                                         snapshot.version))

    def on_history_screen_rows_built(self, message: RowsBuilt) -> None:
        self.records = message.records
        self._built_version = message.version
        table = self.query_one(RunTable)
        table.set_rows(list(self.records), self._cells)
        table.set_empty_hint(self.snapshot.hint(NO_MATCH if message.finished else EMPTY))
        self._finished_count = message.finished
        self._show_summary()
        self._builds.finished()
        self._curve_loads.ask()

    def _show_summary(self) -> None:
        """`4 of 19 finished runs · sorted by acc, best first (s: next column, S: reverse)`."""
        shown, finished = len(self.records), self._finished_count
        count = f"{shown} of {runs_word(finished)}" if self.filters else runs_word(shown)
        self.query_one("#history-summary", Static).update(
            f"{count} · {self.sort.describe()} (s: next column, S: reverse)")

    def _cells(self, key: str) -> Cells:
        record = self.records[key]
        return history_cells(record, self._cached_curve(record), self.budget_app.now())

    def _cached_curve(self, record: dict[str, Any]) -> str:
        finished_at, curve = self.curves.get(str(record["id"]), (None, ""))
        return curve if finished_at == record.get("finished_at") else ""

    def on_run_table_visible_rows_changed(self) -> None:
        self._curve_loads.ask()

    def _load_curves(self) -> Worker | None:
        table = self.query_one(RunTable)
        missing = [self.records[key] for key in table.visible_keys() if not self._cached_curve(self.records[key])]
        return self._read_curves(missing) if missing else None

    @work(thread=True, exit_on_error=False, group="history-curves")
    def _read_curves(self, records: list[dict[str, Any]]) -> None:
        self.post_message(self.CurvesLoaded(
            {str(record["id"]): (record.get("finished_at"), accuracy_curve(record)) for record in records}))

    def on_history_screen_curves_loaded(self, message: CurvesLoaded) -> None:
        self.curves.update(message.curves)
        self.query_one(RunTable).refresh_rows()
        self._curve_loads.finished()

    # --- filter and sort
    def on_filter_bar_applied(self, message: FilterBar.Applied) -> None:
        self.filters = message.filters
        self._builds.ask()
        self.action_focus_table()

    def action_filter(self) -> None:
        self.query_one(FilterBar).focus_input()

    def action_focus_table(self) -> None:
        self.query_one(RunTable).focus()

    def _sort_by(self, sort: Sort) -> None:
        self.sort = sort
        self.query_one(RunTable).mark_sorted(sort.column, sort.descending)
        self._show_summary()
        self._builds.ask()

    def action_sort(self) -> None:
        columns = list(SORT_KEYS)
        column = columns[(columns.index(self.sort.column) + 1) % len(columns)]
        self._sort_by(Sort(column, column in NEWEST_FIRST))

    def action_reverse(self) -> None:
        self._sort_by(Sort(self.sort.column, not self.sort.descending))

    def on_run_table_header_selected(self, message: RunTable.HeaderSelected) -> None:
        if message.column not in SORT_KEYS:
            return
        if message.column == self.sort.column:
            self.action_reverse()
        else:
            self._sort_by(Sort(message.column, message.column in NEWEST_FIRST))

    # --- runs
    def on_run_table_row_selected(self, message: RunTable.RowSelected) -> None:
        from tui_app.screens.run_detail import RunDetailScreen  # imported on first use: start-up

        self.app.push_screen(RunDetailScreen(int(message.key), self.MODE))

    def action_retry(self) -> None:
        key = self.query_one(RunTable).cursor_key
        if key is not None:
            self.retry_run(int(key))
