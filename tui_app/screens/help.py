"""Help: the keys of every screen, listed from the bindings themselves so it never drifts."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

Section = tuple[str, Sequence[Binding]]  # (title, bindings)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "close", tooltip="Close the help")]

    def __init__(self, sections: Sequence[Section]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(self._keys())

    def _keys(self) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", justify="right")
        table.add_column()
        table.add_row("", Text("budget-tui keys — escape closes; ctrl+p lists every action", style="bold"))
        for title, bindings in self.sections:
            table.add_row("", "")
            table.add_row("", Text(title, style="bold underline"))
            for binding in bindings:
                if binding.description:
                    table.add_row(self._keys_of(binding), binding.tooltip or binding.description)
        return table

    def _keys_of(self, binding: Binding) -> str:
        if binding.key_display:
            return binding.key_display
        return " ".join(self.app.get_key_display(replace(binding, key=key.strip()))
                        for key in binding.key.split(","))

    def on_mount(self) -> None:
        self.query_one("#help").focus()

    def action_close(self) -> None:
        self.dismiss()
