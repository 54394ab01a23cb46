"""FilterBar: a `key=value …` filter over runs (engine.history.parse_filters), its error
shown under it as it is typed; enter posts Applied with the parsed filters."""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Label, Static

from engine.errors import BadInput
from engine.history import parse_filters


class FilterBar(Vertical):
    class Applied(Message):
        def __init__(self, filters: dict[str, Any]) -> None:
            self.filters = filters
            super().__init__()

    def __init__(self, placeholder: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="filter-bar")
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Horizontal(classes="filter-row"):
            yield Label("filter", classes="filter-label")
            yield Input(placeholder=self.placeholder, compact=True)
        yield Static("", classes="field-error")

    def focus_input(self) -> None:
        self.query_one(Input).focus()

    def _parse(self, text: str) -> dict[str, Any] | None:
        """The filters, or None with the reason shown under the field."""
        error = self.query_one(".field-error", Static)
        try:
            filters = parse_filters(text.split())
        except BadInput as problem:
            error.update(str(problem))
            error.add_class("shown")
            return None
        error.update("")
        error.remove_class("shown")
        return filters

    @on(Input.Changed)
    def _typed(self, event: Input.Changed) -> None:
        event.stop()
        self._parse(event.value)

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        filters = self._parse(event.value)
        if filters is not None:
            self.post_message(self.Applied(filters))
