"""RunTable: a keyboard-driven table of runs that formats and draws only the rows in view.

Textual's DataTable measures every cell when rows are added (about two seconds for
10,000 runs), so the run lists use this line-API table: columns have fixed widths, rows
are keys whose cells are asked for when they come into view, and a refresh compares the
rows in view and redraws only those that changed, so it costs the same for 10 runs or
10,000.
Columns that matter less carry a hide rank: a table too narrow for every column hides
them (the highest rank first), so the columns that identify a run stay in view at 80
columns; ← and → scroll by whole columns through the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

from rich.console import JustifyMethod
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

CellValue = Union[str, Text]
Cells = dict[str, CellValue]  # by column key


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int  # cells
    justify: JustifyMethod = "left"
    hide_rank: int = 0  # 0: always shown; otherwise hidden when the table is too narrow, highest first


class RunTable(ScrollView, can_focus=True):
    """Rows of runs under a fixed header; enter or a double click selects a row."""

    BINDINGS = [
        Binding("up,k", "cursor_up", show=False),
        Binding("down,j", "cursor_down", show=False),
        Binding("pageup", "page_up", show=False),
        Binding("pagedown", "page_down", show=False),
        Binding("home", "first", show=False),
        Binding("end", "last", show=False),
        Binding("left", "scroll_left", show=False),
        Binding("right", "scroll_right", show=False),
        Binding("enter", "select", "open", show=False, tooltip="Open the selected run"),
    ]
    COMPONENT_CLASSES = {"run-table--header", "run-table--cursor", "run-table--hint"}

    cursor_row: reactive[int] = reactive(0, init=False)

    class RowSelected(Message):
        """A row was chosen (enter or double click)."""

        def __init__(self, table: RunTable, key: str) -> None:
            self.table = table
            self.key = key
            super().__init__()

        @property
        def control(self) -> RunTable:
            return self.table

    class HeaderSelected(Message):
        """A column header was clicked."""

        def __init__(self, table: RunTable, column: str) -> None:
            self.table = table
            self.column = column
            super().__init__()

        @property
        def control(self) -> RunTable:
            return self.table

    class VisibleRowsChanged(Message):
        """Other rows came into view (scrolled, resized or replaced); ask `visible_keys()`."""

        def __init__(self, table: RunTable) -> None:
            self.table = table
            super().__init__()

        @property
        def control(self) -> RunTable:
            return self.table

    def __init__(self, columns: Sequence[Column], *, empty_hint: str = "", id: str | None = None) -> None:
        super().__init__(id=id)
        self.columns = list(columns)
        self.shown_columns = list(columns)  # what fits the width (see _fit_columns)
        self.empty_hint = empty_hint
        self.sorted_by: tuple[str, bool] | None = None  # (column key, descending) marked in the header
        self._keys: list[str] = []
        self._positions: dict[str, int] = {}
        self._cells_of: Callable[[str], Cells] = lambda key: {}
        self._drawn: dict[str, Cells] = {}  # the cells of the rows drawn since the last refresh
        self._update_virtual_size()

    # --- data
    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    @property
    def cursor_key(self) -> str | None:
        return self._keys[self.cursor_row] if self._keys else None

    def cells(self, key: str) -> Cells:
        return self._cells_of(key)

    def set_rows(self, keys: Sequence[str], cells_of: Callable[[str], Cells]) -> None:
        """Show the rows `keys` in this order, asking `cells_of(key)` for a row's cells when it
        is drawn. With the same keys in the same order only the rows in view whose cells
        changed are redrawn; otherwise the cursor follows its row (or keeps its place)."""
        keys = list(keys)
        self._cells_of = cells_of
        if keys == self._keys:
            self.refresh_rows()
            return
        current = self.cursor_key
        self._keys = keys
        self._positions = {key: index for index, key in enumerate(keys)}
        self._drawn = {}
        self._update_virtual_size()
        self.refresh()
        self.cursor_row = self._positions.get(current, self.cursor_row) if current is not None else 0
        self._scroll_to_cursor()
        self.post_message(self.VisibleRowsChanged(self))

    def refresh_rows(self) -> None:
        """Ask for the cells of the rows in view again and redraw those that changed; rows out
        of view are asked again when they scroll in."""
        drawn, self._drawn = self._drawn, {}
        top = round(self.scroll_offset.y)
        for index in range(top, min(top + self._page_rows(), len(self._keys))):
            key = self._keys[index]
            cells = self._drawn[key] = self._cells_of(key)
            if drawn.get(key) != cells:
                self.refresh_line(index + 1)

    def set_empty_hint(self, hint: str) -> None:
        if hint != self.empty_hint:
            self.empty_hint = hint
            self.refresh()

    def mark_sorted(self, column: str, descending: bool) -> None:
        self.sorted_by = (column, descending)
        self.refresh()

    def move_to(self, key: str) -> None:
        if key in self._positions:
            self.cursor_row = self._positions[key]

    def visible_keys(self) -> list[str]:
        top = round(self.scroll_offset.y)
        return self._keys[top : top + self._page_rows()]

    # --- geometry
    def _page_rows(self) -> int:
        return max(self.scrollable_content_region.height - 1, 1)  # one line is the header

    def _fit_columns(self) -> None:
        """Hide the columns with the highest hide rank until the rest fit the width (less the
        vertical scrollbar, which comes and goes with the rows without a resize)."""
        room = self.size.width - self.styles.scrollbar_size_vertical
        shown = list(self.columns)
        for column in sorted((column for column in self.columns if column.hide_rank), key=lambda c: -c.hide_rank):
            if _line_width(shown) <= room:
                break
            shown.remove(column)
        if shown != self.shown_columns:
            self.shown_columns = shown
            self._drawn = {}
            self._update_virtual_size()
            self.refresh()

    def _column_edges(self) -> list[int]:
        """Where each shown column starts (its separating space included)."""
        edges, x = [], 0
        for column in self.shown_columns:
            edges.append(x)
            x += column.width + 1
        return edges

    def _update_virtual_size(self) -> None:
        width = _line_width(self.shown_columns)
        self.virtual_size = Size(width, len(self._keys) + 1 + (not self._keys))

    def _refresh_row(self, index: int) -> None:
        """Redraw the row at `index` if it is in view (its line is index + 1: the header is 0)."""
        top = round(self.scroll_offset.y)
        if top <= index < top + self._page_rows():
            self.refresh_line(index + 1)

    def _scroll_to_cursor(self) -> None:
        top, page = round(self.scroll_offset.y), self._page_rows()
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False)
        elif self.cursor_row >= top + page:
            self.scroll_to(y=self.cursor_row - page + 1, animate=False)

    def validate_cursor_row(self, row: int) -> int:
        return max(0, min(row, len(self._keys) - 1))

    def watch_cursor_row(self, old: int, new: int) -> None:
        self._refresh_row(old)
        self._refresh_row(new)
        self._scroll_to_cursor()

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if round(old) != round(new):
            self.post_message(self.VisibleRowsChanged(self))

    def on_resize(self, event: events.Resize) -> None:
        self._fit_columns()
        self.post_message(self.VisibleRowsChanged(self))

    def on_focus(self, event: events.Focus) -> None:
        self.refresh()

    def on_blur(self, event: events.Blur) -> None:
        self.refresh()

    # --- drawing
    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        base = self.rich_style
        if y == 0:
            line = self._strip(self._header_text(), base + self.get_component_rich_style("run-table--header"))
        elif self._keys:
            index = scroll_y + y - 1
            if index >= len(self._keys):
                return Strip.blank(width, base)
            style = base
            if index == self.cursor_row and self.has_focus:
                style = base + self.get_component_rich_style("run-table--cursor")
            key = self._keys[index]
            if key not in self._drawn:
                self._drawn[key] = self._cells_of(key)
            line = self._strip(self._row_text(self._drawn[key]), style)
        elif y == 1:
            line = self._strip(Text(" " + self.empty_hint), base + self.get_component_rich_style("run-table--hint"))
        else:
            return Strip.blank(width, base)
        return line.crop_extend(scroll_x, scroll_x + width, base)

    def _strip(self, text: Text, style: Style) -> Strip:
        return Strip(text.render(self.app.console), text.cell_len).apply_style(style)

    def _header_text(self) -> Text:
        """The column labels; the sorted column's arrow follows its label, or takes the space
        before a column too narrow for both, so the label is never cut."""
        labels: Cells = {column.key: column.label for column in self.columns}
        separators: dict[str, str] = {}
        if self.sorted_by:
            key, descending = self.sorted_by
            arrow = "▼" if descending else "▲"
            column = next((column for column in self.columns if column.key == key), None)
            if column is not None and len(column.label) + 2 <= column.width:
                labels[key] = f"{column.label} {arrow}"
            elif column is not None:
                separators[key] = arrow
        return self._row_text(labels, separators)

    def _row_text(self, cells: Cells, separators: dict[str, str] | None = None) -> Text:
        line = Text(no_wrap=True, end="")
        for column in self.shown_columns:
            value = cells.get(column.key, "")
            cell = value.copy() if isinstance(value, Text) else Text(str(value))
            cell.truncate(column.width, overflow="ellipsis")
            cell.align(column.justify, column.width)
            line.append((separators or {}).get(column.key, " "))
            line.append_text(cell)
        return line

    # --- input
    def action_cursor_up(self) -> None:
        self.cursor_row -= 1

    def action_cursor_down(self) -> None:
        self.cursor_row += 1

    def action_page_up(self) -> None:
        self.cursor_row -= self._page_rows()

    def action_page_down(self) -> None:
        self.cursor_row += self._page_rows()

    def action_first(self) -> None:
        self.cursor_row = 0

    def action_last(self) -> None:
        self.cursor_row = len(self._keys) - 1

    def action_scroll_left(self) -> None:
        """Back to the start of the column left of the first one in view."""
        x = round(self.scroll_offset.x)
        self.scroll_to(x=max((edge for edge in self._column_edges() if edge < x), default=0), animate=False)

    def action_scroll_right(self) -> None:
        """On to the start of the next column (one column per press, not one character)."""
        x = round(self.scroll_offset.x)
        later = [edge for edge in self._column_edges() if edge > x]
        if later and x < self.max_scroll_x:
            self.scroll_to(x=min(later[0], self.max_scroll_x), animate=False)

    def action_select(self) -> None:
        if self.cursor_key is not None:
            self.post_message(self.RowSelected(self, self.cursor_key))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            x = offset.x + round(self.scroll_offset.x)
            edge = 0
            for column in self.shown_columns:
                edge += column.width + 1
                if x < edge + 1:
                    self.post_message(self.HeaderSelected(self, column.key))
                    return
            return
        index = round(self.scroll_offset.y) + offset.y - 1
        if index < len(self._keys):
            self.cursor_row = index
            if event.chain >= 2:
                self.action_select()


def _line_width(columns: Sequence[Column]) -> int:
    """Cells a row of `columns` takes: each column after one separating space, and a last space."""
    return 1 + sum(column.width + 1 for column in columns)
