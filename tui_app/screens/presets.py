"""Presets screen: shipped and user presets with a preview of what each would queue;
enter opens the queue form. A preset file that does not load is listed with its error.
"""

from __future__ import annotations

from typing import Iterable

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState

from engine.errors import explain
from engine.presets import PresetListing, scan_presets
from tui_app.screens.base import AppScreen


def preview(entry: PresetListing) -> Text:
    text = Text()
    text.append(entry.name, style="bold")
    text.append(f"  ({entry.source})\n", style="dim")
    if entry.preset is None:
        text.append(f"\n{entry.error}\n", style="red")
        return text
    preset = entry.preset
    text.append(f"{preset.description}\n\n")
    sizes = " × ".join([*(str(len(values)) for values in preset.grid.values()), f"{preset.seeds} seeds"])
    text.append(f"{'runs':<17} {preset.run_count()}", style="bold")
    text.append(f" ({sizes})\n" if preset.grid else "\n")
    text.append(f"{'seeds':<17} {preset.seeds}\n", style="bold")
    if preset.grid:
        text.append("grid\n", style="bold")
        for key, values in preset.grid.items():
            text.append(f"  {key:<15} {', '.join(map(str, values))}\n")
    text.append("settings\n", style="bold")
    for key, value in preset.overrides.items():
        text.append(f"  {key:<15} {value}\n")
    return text


class PresetsScreen(AppScreen):
    MODE = "presets"
    # A priority binding: the list's own enter would otherwise hide it from the footer.
    BINDINGS = [Binding("enter", "open_form", "queue…", priority=True,
                        tooltip="Open the queue form for the selected preset")]

    class Loaded(Message):
        def __init__(self, entries: list[PresetListing]) -> None:
            self.entries = entries
            super().__init__()

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[PresetListing] = []

    def compose_body(self) -> Iterable[Widget]:
        with Horizontal(id="presets-body"):
            yield OptionList(id="preset-list")
            with VerticalScroll(id="preset-preview"):
                yield Static("loading presets…", id="preview")

    def on_mount(self) -> None:
        self._load()

    @work(thread=True, exit_on_error=False, group="presets-load")
    def _load(self) -> None:
        self.post_message(self.Loaded(scan_presets(self.budget_app.home)))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        super().on_worker_state_changed(event)
        if event.state == WorkerState.ERROR and event.worker.group == "presets-load":
            message, _ = explain(event.worker.error)  # instead of "loading presets…" for ever
            self.query_one("#preview", Static).update(Text(f"presets could not be listed: {message}", style="red"))

    def on_presets_screen_loaded(self, message: Loaded) -> None:
        self.entries = message.entries
        options = self.query_one("#preset-list", OptionList)
        options.clear_options()
        options.add_options(Option(self._label(entry), id=entry.name) for entry in self.entries)
        if self.entries:
            options.highlighted = 0
        else:
            self.query_one("#preview", Static).update("no presets found")
        options.focus()

    @staticmethod
    def _label(entry: PresetListing) -> Text:
        label = Text(entry.name)
        if entry.error:
            label.append(" (broken)", style="red")
        elif entry.source == "user":
            label.append(" (user)", style="dim")
        return label

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self.query_one("#preview", Static).update(preview(self.entries[event.option_index]))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.action_open_form()  # a click on a preset

    def action_open_form(self) -> None:
        index = self.query_one("#preset-list", OptionList).highlighted
        if index is None:
            return
        entry = self.entries[index]
        if entry.preset is None:
            self.notify(entry.error or "this preset does not load", severity="error")
            return
        from tui_app.screens.queue_form import QueueFormScreen  # imported on first use: start-up

        self.app.push_screen(QueueFormScreen(entry.preset))
