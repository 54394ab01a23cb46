"""Compare screen: the pivot of finished runs (sampler x augmentation x budget, mean ± std
over seeds, delta against the baseline) for a chosen metric, with text plots of the metric
against budget and of the learning curves. Built by engine.analysis in a thread worker.

The body scrolls as one page (it has the focus: arrows, page keys, home and end move it),
and the learning curves are split over charts of a few curves each, drawn without error
bars, so each curve can be followed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterable

from textual import on, work
from textual.binding import Binding
from textual.containers import Grid, Horizontal, ScrollableContainer
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable, Select, Static

from engine.analysis.charts import budget_chart, learning_curve_chart
from engine.analysis.metrics import DEFAULT_METRIC, METRICS, finished_runs
from engine.analysis.pivot import Pivot, build_pivot
from engine.analysis.plots import Chart, Series
from engine.errors import NotFound
from engine.history import filter_runs
from tui_app.screens.base import AppScreen, LatestOnly, Snapshot
from tui_app.widgets.chart_view import ChartView
from tui_app.widgets.filter_bar import FilterBar

NOTHING_YET = "nothing to compare yet: the pivot fills in as runs finish"
COMPUTING = "computing the comparison…"
CURVES_PER_CHART = 4  # more overlapping curves cannot be told apart in a text chart


@dataclass(frozen=True)
class Comparison:
    """What the screen shows for one metric and filter; `problem` when there is nothing to show."""

    pivot: Pivot | None = None
    budget: Chart | None = None
    curves: tuple[Chart, ...] = ()
    problem: str | None = None


def split_curves(chart: Chart, most: int = CURVES_PER_CHART) -> list[Chart]:
    """The learning curves over as few charts as hold at most `most` curves each (as evenly
    as they split, in the order given), without error bars: on a text chart the bars of
    several curves cover one another."""
    series = [Series(curve.label, curve.x, curve.y) for curve in chart.series]
    count = max(1, math.ceil(len(series) / most))
    bounds = [round(index * len(series) / count) for index in range(count + 1)]
    return [replace(chart, series=series[start:end],
                    title=chart.title + (f" ({index + 1} of {count})" if count > 1 else ""))
            for index, (start, end) in enumerate(zip(bounds, bounds[1:]))]


def compare(runs: list[dict[str, Any]], filters: dict[str, Any], metric: str) -> Comparison:
    records = filter_runs(runs, filters)
    try:
        pivot = build_pivot(records, metric=metric)
    except NotFound as error:  # no finished run at all, or none with this metric
        return Comparison(problem=str(error) if finished_runs(records) else NOTHING_YET)
    return Comparison(pivot, budget_chart(records, metric), tuple(split_curves(learning_curve_chart(records, "step"))))


class CompareScreen(AppScreen):
    MODE = "compare"
    BINDINGS = [
        Binding("m", "next_metric", "metric", tooltip="Compare the next metric"),
        Binding("slash", "filter", "filter", key_display="/", tooltip="Restrict the runs compared (key=value …)"),
        Binding("escape", "focus_body", show=False),
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
        with ScrollableContainer(id="compare-body"):
            yield Static(Snapshot().hint(NOTHING_YET), id="compare-problem")
            pivot = DataTable(id="pivot", cursor_type="none", zebra_stripes=True)
            pivot.can_focus = False  # the body scrolls, the pivot with it
            yield pivot
            yield Static("", id="pivot-notes")
            with Grid(id="charts"):
                yield ChartView(id="budget-chart", classes="chart")

    def on_mount(self) -> None:
        self.action_focus_body()

    def show_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.version != self._built_version or snapshot.error:
            self._ask_build()

    def _ask_build(self) -> None:
        """Build the comparison again, after the screen has drawn its "computing" state: the
        build holds the interpreter for a while, and the screen switched to must show at once."""
        if self._built_version < 0 and self.snapshot.loaded and not self.snapshot.error:
            self.query_one("#compare-problem", Static).update(COMPUTING)
        self.call_after_refresh(self._builds.ask)

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
            self._show_curves(comparison.curves)
        self._builds.finished()

    def _show_curves(self, charts: tuple[Chart, ...]) -> None:
        """One ChartView per curve chart, added or removed as their number changes."""
        views = list(self.query(".curve-chart").results(ChartView))
        for view in views[len(charts):]:
            view.remove()
        grid = self.query_one("#charts", Grid)
        for index in range(len(views), len(charts)):
            view = ChartView(id=f"curve-chart-{index + 1}", classes="chart curve-chart")
            views.append(view)
            grid.mount(view)
        for view, chart in zip(views, charts):
            view.show(chart)

    def _show_pivot(self, pivot: Pivot) -> None:
        table = self.query_one("#pivot", DataTable)
        table.clear(columns=True)
        header = [" / ".join(pivot.row_fields), *(pivot.col_label(col) for col in pivot.col_keys)]
        rows = [[pivot.row_label(row), *(pivot.cell_text(row, col) for col in pivot.col_keys)]
                for row in pivot.row_keys]
        # Widths given, not measured later: the table is as wide as its cells from the first
        # frame, and the body scrolls sideways to the columns past the edge.
        for index, label in enumerate(header):
            table.add_column(label, width=max(len(text) for text in [label, *(row[index] for row in rows)]))
        table.add_rows(rows)
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
        self.action_focus_body()

    def action_filter(self) -> None:
        self.query_one(FilterBar).focus_input()

    def action_focus_body(self) -> None:
        self.query_one("#compare-body").focus()
