"""ScreenBar: the main screens with the keys that open them, the current one highlighted."""

from __future__ import annotations

from typing import Sequence

from rich.text import Text
from textual.widget import Widget


class ScreenBar(Widget):
    """One line: `1 Presets  2 Queue  3 History  4 Compare`, then where we are inside a screen."""

    COMPONENT_CLASSES = {"screen-bar--current", "screen-bar--key", "screen-bar--trail"}

    def __init__(self, screens: Sequence[tuple[str, str, str]], current: str, trail: str = "") -> None:
        """`screens`: (key, mode name, label) of each main screen; `current`: a mode name."""
        super().__init__()
        self.screens = list(screens)
        self.current = current
        self.trail = trail

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        for key, mode, label in self.screens:
            text.append(f" {key}", style=self.get_component_rich_style("screen-bar--key"))
            style = self.get_component_rich_style("screen-bar--current") if mode == self.current else ""
            text.append(f" {label} ", style=style)
        if self.trail:
            text.append(f" › {self.trail}", style=self.get_component_rich_style("screen-bar--trail"))
        return text
