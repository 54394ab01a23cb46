"""Compare screen: the pivot of finished runs (sampler x augmentation x budget, mean ± std
over seeds, delta against the baseline) for a chosen metric, with text plots of the metric
against budget and of the learning curves. Built by engine.analysis in a thread worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from textual import on, work
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable, Select, Static

from engine.analysis.charts import budget_chart, learning_curve_chart
from engine.analysis.metrics import DEFAULT_METRIC, METRICS, finished_runs
from engine.analysis.pivot import Pivot, build_pivot
from engine.analysis.plots import Chart
from engine.errors import NotFound
from engine.history import filter_runs
from tui_app.screens.base import AppScreen, LatestOnly, Snapshot
from tui_app.widgets.chart_view import ChartView
from tui_app.widgets.filter_bar import FilterBar

NOTHING_YET = "nothing to compare yet: the pivot fills in as runs finish"


@dataclass(frozen=True)
class Comparison:
    """What the screen shows for one metric and filter; `problem` when there is nothing to show."""

    pivot: Pivot | None = None
    budget: Chart | None = None
    curves: Chart | None = None
    problem: str | None = None


def compare(runs: list[dict[str, Any]], filters: dict[str, Any], metric: str) -> Comparison:
    records = filter_runs(runs, filters)
    try:
        pivot = build_pivot(records, metric=metric)
    except NotFound as error:  # no finished run at all, or none with this metric
        return Comparison(problem=str(error) if finished_runs(records) else NOTHING_YET)
    return Comparison(pivot, budget_chart(records, metric), learning_curve_chart(records, "step"))


class CompareScreen(AppScreen):
    MODE = "compare"
    BINDINGS = [
        Binding("m", "next_metric", "metric", tooltip="Compare the next metric"),
        Binding("slash", "filter", "filter", key_display="/", tooltip="Restrict the runs compared (key=value …)"),
        Binding("escape", "focus_pivot", show=False),
    ]

    class Built(Message):
        def __init__(self, comparison: Comparison, version: int) -> None:
            self.comparison = comparison
            self.version = version
            super().__init__()

    def __init__(self) -> None:
        super().__init__()
        self.metric = DEFAULT_METRIC
        self.filters: dict[str, Any] = {}
        self._built_version = -1
        self._builds = LatestOnly(self._build)

    def compose_body(self) -> Iterable[Widget]:
        with Horizontal(id="compare-controls"):
            yield Select([(spec.label, name) for name, spec in METRICS.items()], value=self.metric,
                         allow_blank=False, compact=True, id="metric")
            yield FilterBar("key=value … then enter", id="compare-filter")
        with VerticalScroll(id="compare-body"):
            yield Static(Snapshot().hint(NOTHING_YET), id="compare-problem")
            yield DataTable(id="pivot", cursor_type="row", zebra_stripes=True)
            yield Static("", id="pivot-notes")
            with Horizontal(id="charts"):
                yield ChartView(id="budget-chart", classes="chart")
                yield ChartView(id="curve-chart", classes="chart")

    def on_mount(self) -> None:
        self.query_one("#pivot", DataTable).focus()

    def show_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.version != self._built_version or snapshot.error:
            self._builds.ask()

    @work(thread=True, exit_on_error=False, group="compare")
    def _build(self) -> None:
        snapshot = self.snapshot
        comparison = Comparison(problem=snapshot.hint(NOTHING_YET)) if snapshot.error or not snapshot.loaded \
            else compare(snapshot.runs, self.filters, self.metric)
        self.post_message(self.Built(comparison, snapshot.version))

    def on_compare_screen_built(self, message: Built) -> None:
        self._built_version = message.version
        comparison = message.comparison
        problem = self.query_one("#compare-problem", Static)
        problem.update(comparison.problem or "")
        problem.display = comparison.problem is not None
        for selector in ("#pivot", "#pivot-notes", "#charts"):
            self.query_one(selector).display = comparison.pivot is not None
        if comparison.pivot is not None:
            self._show_pivot(comparison.pivot)
            self.query_one("#budget-chart", ChartView).show(comparison.budget)
            self.query_one("#curve-chart", ChartView).show(comparison.curves)
        self._builds.finished()

    def _show_pivot(self, pivot: Pivot) -> None:
        table = self.query_one("#pivot", DataTable)
        table.clear(columns=True)
        table.add_columns(" / ".join(pivot.row_fields), *(pivot.col_label(col) for col in pivot.col_keys))
        table.add_rows([pivot.row_label(row), *(pivot.cell_text(row, col) for col in pivot.col_keys)]
                       for row in pivot.row_keys)
        self.query_one("#pivot-notes", Static).update("\n".join(pivot.notes))

    # --- metric and filter
    @on(Select.Changed, "#metric")
    def _metric_chosen(self, event: Select.Changed) -> None:
        if event.value != self.metric:
            self.metric = str(event.value)
            self._builds.ask()

    def action_next_metric(self) -> None:
        names = list(METRICS)
        self.query_one("#metric", Select).value = names[(names.index(self.metric) + 1) % len(names)]

    def on_filter_bar_applied(self, message: FilterBar.Applied) -> None:
        self.filters = message.filters
        self._builds.ask()
        self.action_focus_pivot()

    def action_filter(self) -> None:
        self.query_one(FilterBar).focus_input()

    def action_focus_pivot(self) -> None:
        self.query_one("#pivot", DataTable).focus()
