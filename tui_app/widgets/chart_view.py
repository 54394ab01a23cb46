"""ChartView: an engine.analysis.plots Chart drawn as text to fit the space the layout gives it."""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.widget import Widget

from engine.analysis.plots import Chart, render_text


class ChartView(Widget):
    """Redraws its chart with engine.analysis.plots.render_text whenever its size changes."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.chart: Chart | None = None

    def show(self, chart: Chart | None) -> None:
        self.chart = chart
        self.refresh()

    def on_resize(self, event: events.Resize) -> None:
        self.refresh()

    def render(self) -> Text:
        if self.chart is None or self.size.width < 8 or self.size.height < 3:
            return Text("")
        return Text.from_markup(render_text(self.chart, self.size.width, self.size.height, color=True))
