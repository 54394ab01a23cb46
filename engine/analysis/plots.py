"""Charts: one Chart description, drawn as terminal text or written as PNG/SVG.

Owns the text layout (braille lines, markers, bars, ticks, legend) and the matplotlib figures.
Must not import torch, timm or textual; matplotlib is imported only inside write_figure,
so the CLI and TUI start fast.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.errors import BadInput

KINDS = ("line", "scatter", "bar")
FIGURE_SUFFIXES = (".png", ".svg")
MARKERS = "●■▲◆✚○□△◇"
FIGURE_MARKERS = "os^DPpv<>"
LEGEND_INSIDE_MAX = 8  # a figure with more series puts its legend outside the axes  # the first five are MARKERS' shapes, so a figure reads like its text chart
COLORS = ("red", "blue", "green", "magenta", "cyan", "yellow", "bright_red", "bright_blue", "bright_green")
BLOCKS = " ▁▂▃▄▅▆▇█"  # index = eighths of a cell filled from the bottom
BRAILLE_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [dot row][dot column] of a cell
ERROR_BAR, BAR, MARKER = 1, 2, 3  # layer ranks: a higher rank hides what lies below it; braille is lowest

Segments = list[tuple[str, int | None]]  # (text, series index that colours it)
Points = list[list[tuple[float, float, float]]]  # per series, its drawable (x, y, yerr)


@dataclass
class Series:
    label: str
    x: list[float]
    y: list[float]
    yerr: list[float] | None = None  # error bars (std over seeds); None = none
    note: str = ""  # a legend column after the label, in [ ]; Chart.legend_title says what it holds

    @property
    def legend_label(self) -> str:
        return f"{self.label} [{self.note}]" if self.note else self.label


@dataclass
class Chart:
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    kind: str = "line"  # "line" (points joined), "scatter" (points only), "bar" (x = bin centres)
    x_log: bool = False  # log-scale x axis (used for FLOPs)
    legend_title: str = ""  # heads the legend: what the series notes are


@dataclass
class _Axis:
    """Maps data values to dot positions along one axis; the y axis counts dots from the top."""

    low: float  # in drawing units: log10 of the value on a log axis
    high: float
    dots: int
    log: bool = False
    downward: bool = False

    def fraction(self, value: float) -> float:
        return (_to_unit(value, self.log) - self.low) / (self.high - self.low)

    def dot(self, value: float) -> int:
        position = min(max(round(self.fraction(value) * (self.dots - 1)), 0), self.dots - 1)
        return self.dots - 1 - position if self.downward else position


class _Canvas:
    """The plot area's cells; braille dots show only in cells no layer has written."""

    def __init__(self, columns: int, rows: int) -> None:
        self.columns, self.rows = columns, rows
        self.cells: list[list[tuple[str, int | None, int]]] = [[(" ", None, 0)] * columns for _ in range(rows)]
        self.braille: dict[tuple[int, int], tuple[int, int]] = {}

    def put(self, row: int, column: int, char: str, series: int, rank: int) -> None:
        if 0 <= row < self.rows and 0 <= column < self.columns and rank >= self.cells[row][column][2]:
            self.cells[row][column] = (char, series, rank)

    def dot(self, column: int, row: int, series: int) -> None:
        bits, _ = self.braille.get((row // 4, column // 2), (0, series))
        self.braille[(row // 4, column // 2)] = (bits | BRAILLE_BITS[row % 4][column % 2], series)

    def row_segments(self, row: int) -> Segments:
        segments: Segments = []
        for column, (char, series, rank) in enumerate(self.cells[row]):
            if rank == 0 and (row, column) in self.braille:
                bits, series = self.braille[(row, column)]
                char = chr(0x2800 + bits)
            if segments and segments[-1][1] == series:
                segments[-1] = (segments[-1][0] + char, series)
            else:
                segments.append((char, series))
        return segments


def render_text(chart: Chart, width: int = 80, height: int = 20, *, color: bool = False) -> str:
    """The chart drawn with characters for a terminal: exactly `height` lines of at most `width` cells.

    Lines are braille dots, each series has its own marker (and colour, as Rich markup, when
    `color`); points that cannot be drawn (NaN, x <= 0 on a log axis) are left out.
    """
    points = _drawable_points(chart)
    title: Segments = [(chart.title.center(width), None)]
    if not any(points):
        return _join([title, *([(line, None)] for line in _no_data_box(width, height - 1))][:height], width, color)

    x_low, x_high, y_low, y_high = _ranges(chart, points)
    legend = _legend_lines(chart, width, most=max(1, height - 6))  # wrapped, leaving three plot rows
    rows = height - 3 - len(legend) - bool(chart.y_label) - bool(chart.x_label)
    show_axis_labels = rows >= 3  # a short chart keeps its plot and legend rather than its axis labels
    if not show_axis_labels:
        rows = max(1, height - 3 - len(legend))
    # Ticks at least two rows apart, so each label names the row it sits on.
    y_values = _axis_ticks(y_low, y_high, log=False, most=max(3, min(5, rows // 2 + 1)))
    y_labels = _tick_labels(y_values)
    gutter = min(max(map(len, y_labels)) + 1, max(1, width // 3))
    columns = max(1, width - gutter)
    x_axis = _Axis(x_low, x_high, columns * 2, log=chart.x_log)
    y_axis = _Axis(y_low, y_high, rows * 4, downward=True)

    canvas = _Canvas(columns, rows)
    if chart.kind == "bar":
        _draw_bars(canvas, points, x_axis, y_axis)
    else:
        _draw_points(canvas, chart.kind, points, x_axis, y_axis)

    y_ticks: dict[int, str] = {}
    for value, label in zip(y_values, y_labels):
        y_ticks.setdefault(y_axis.dot(value) // 4, label)
    plot = [[(y_ticks.get(row, "").rjust(gutter - 1) + ("┤" if row in y_ticks else "│"), None),
             *canvas.row_segments(row)] for row in range(rows)]
    x_values = _axis_ticks(x_low, x_high, log=chart.x_log)
    x_ticks = {x_axis.dot(value) // 2: label for value, label in zip(x_values, _tick_labels(x_values))}
    axis_line = "".join("┬" if column in x_ticks else "─" for column in range(columns))

    lines = [title]
    if show_axis_labels and chart.y_label:
        lines.append([(chart.y_label, None)])
    lines += [*plot, [(" " * (gutter - 1) + "└" + axis_line, None)], [(_tick_line(x_ticks, gutter, width), None)]]
    if show_axis_labels and chart.x_label:
        lines.append([(" " * gutter + chart.x_label.center(columns), None)])
    lines += legend
    return _join(lines[:height], width, color)


def write_figure(chart: Chart, path: Path) -> Path:
    """PNG or SVG (chosen by the suffix) via matplotlib's Agg/SVG canvases; returns the path.

    Any other suffix raises BadInput before anything is written. The parent folder is created.
    The SVG carries no date, so the same chart gives the same file.
    """
    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise BadInput(f"cannot write a figure to {path.name!r}: use one of the suffixes {', '.join(FIGURE_SUFFIXES)}")
    figure = build_figure(chart)
    import matplotlib

    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.hashsalt": "budget-tui"}):  # stable SVG ids instead of random ones
        figure.savefig(path, metadata={"Date": None})
    return path


def build_figure(chart: Chart):  # -> matplotlib.figure.Figure, not named here to keep matplotlib out of start-up
    """The matplotlib figure of a chart; beyond LEGEND_INSIDE_MAX series the legend sits beside the axes."""
    points = _drawable_points(chart)
    # Imported here, not at the top: matplotlib would cost the CLI and TUI their fast start.
    # A bare Figure (no pyplot) keeps no global state and picks its canvas from the suffix.
    from matplotlib.figure import Figure

    crowded = len(chart.series) > LEGEND_INSIDE_MAX  # its legend would cover the lines: put it beside them
    figure = Figure(figsize=(11, 6) if crowded else (8, 5), layout="constrained")
    axes = figure.add_subplot()
    if chart.x_log:
        axes.set_xscale("log")
    spacing = _bin_spacing([_to_unit(x, chart.x_log) for drawable in points for x, _, _ in drawable])
    for index, (series, drawable) in enumerate(zip(chart.series, points)):
        if not drawable:
            continue
        xs, ys, errors = (list(column) for column in zip(*drawable))
        yerr = errors if series.yerr is not None else None
        # Ten colours and nine markers: every pair differs up to 90 series.
        style = {"label": series.legend_label, "color": f"C{index % 10}"}
        if chart.kind == "bar":
            # Bars of a bin sit side by side; widths are set in drawing units so log axes work too.
            bar_width = spacing * 0.8 / len(points)
            starts = [_to_unit(x, chart.x_log) + (index - len(points) / 2) * bar_width for x in xs]
            lefts = [_from_unit(start, chart.x_log) for start in starts]
            widths = [_from_unit(start + bar_width, chart.x_log) - left for start, left in zip(starts, lefts)]
            axes.bar(lefts, ys, width=widths, align="edge", yerr=yerr, capsize=3, **style)
        else:
            axes.errorbar(xs, ys, yerr=yerr, capsize=3, marker=FIGURE_MARKERS[index % len(FIGURE_MARKERS)],
                          linestyle="-" if chart.kind == "line" else "none", **style)
    if not any(points):
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    elif any(series.label for series in chart.series) and crowded:
        figure.legend(title=chart.legend_title or None, loc="outside right upper", fontsize="small")
    elif any(series.label for series in chart.series):
        axes.legend(title=chart.legend_title or None)
    axes.set_title(chart.title)
    axes.set_xlabel(chart.x_label)
    axes.set_ylabel(chart.y_label)
    axes.grid(True, alpha=0.3)
    return figure


def _drawable_points(chart: Chart) -> Points:
    """Per series, its (x, y, yerr) points that can be drawn: not NaN or inf, x > 0 on a log axis."""
    if chart.kind not in KINDS:
        raise BadInput(f"unknown chart kind {chart.kind!r}; valid kinds: {', '.join(KINDS)}")
    drawable = []
    for series in chart.series:
        errors = series.yerr if series.yerr is not None else [0.0] * len(series.y)
        if not len(series.x) == len(series.y) == len(errors):
            raise BadInput(f"series {series.label!r} has {len(series.x)} x, {len(series.y)} y "
                           f"and {len(errors)} yerr values; they must match")
        drawable.append([(float(x), float(y), abs(float(error)) if math.isfinite(error) else 0.0)
                         for x, y, error in zip(series.x, series.y, errors)
                         if math.isfinite(x) and math.isfinite(y) and (x > 0 or not chart.x_log)])
    return drawable


def _ranges(chart: Chart, points: Points) -> tuple[float, float, float, float]:
    """x range (drawing units) from the points' extremes; y range with error bars and 5% padding."""
    units = [_to_unit(x, chart.x_log) for drawable in points for x, _, _ in drawable]
    x_low, x_high = _widen(min(units), max(units), 0.0)
    lows = [y - error for drawable in points for _, y, error in drawable]
    highs = [y + error for drawable in points for _, y, error in drawable]
    if chart.kind != "bar":
        return (x_low, x_high, *_widen(min(lows), max(highs), 0.05))
    half_bin = _bin_spacing(units) / 2  # so the outermost bars are drawn whole
    data_low, data_high = min(0.0, *lows), max(0.0, *highs)
    y_low, y_high = _widen(data_low, data_high, 0.05)
    if data_low < data_high:  # bars grow from zero: no padding past it
        y_low, y_high = (0.0 if data_low == 0 else y_low), (0.0 if data_high == 0 else y_high)
    return x_low - half_bin, x_high + half_bin, y_low, y_high


def _to_unit(value: float, log: bool) -> float:
    """Data value -> drawing unit: positions along a log axis are decades."""
    return math.log10(value) if log else value


def _from_unit(unit: float, log: bool) -> float:
    return 10.0**unit if log else unit


def _widen(low: float, high: float, padding: float) -> tuple[float, float]:
    if low == high:  # a single value still needs a range; it lands in the middle
        margin = abs(low) * 0.1 or 1.0
        return low - margin, high + margin
    margin = (high - low) * padding
    return low - margin, high + margin


def _bin_spacing(units: list[float]) -> float:
    """Smallest gap between distinct bin centres in drawing units; 1 when there is a single bin."""
    distinct = sorted(set(units))
    return min((right - left for left, right in zip(distinct, distinct[1:])), default=1.0)


def _draw_points(canvas: _Canvas, kind: str, points: Points, x_axis: _Axis, y_axis: _Axis) -> None:
    for series, drawable in enumerate(points):
        spots = [(x_axis.dot(x), y_axis.dot(y)) for x, y, _ in drawable]
        if kind == "line":
            for start, end in zip(spots, spots[1:]):
                for column, row in _segment(start, end):
                    canvas.dot(column, row, series)
        for (column, _), (_, y, error) in zip(spots, drawable):
            _draw_error_bar(canvas, column // 2, y, error, y_axis, series)
        # A long curve gets a marker every few cells, or the markers would hide the line.
        step = 1 if kind == "scatter" else max(1, math.ceil(len(spots) / max(1, canvas.columns // 4)))
        for index, (column, row) in enumerate(spots):
            if index % step == 0 or index == len(spots) - 1:
                canvas.put(row // 4, column // 2, MARKERS[series % len(MARKERS)], series, MARKER)


def _draw_bars(canvas: _Canvas, points: Points, x_axis: _Axis, y_axis: _Axis) -> None:
    """Bars of one bin side by side; with several series a marker above each bar tells them apart."""
    units = [_to_unit(x, x_axis.log) for drawable in points for x, _, _ in drawable]
    bin_cells = _bin_spacing(units) / (x_axis.high - x_axis.low) * canvas.columns
    bar_cells = max(1, (int(bin_cells) - 1) // len(points))  # one free column between bins
    eighths = canvas.rows * 8
    base = y_axis.fraction(0.0) * eighths  # bars grow from zero, which the y range always holds
    for series, drawable in enumerate(points):
        for x, y, error in drawable:
            low, high = sorted((base, y_axis.fraction(y) * eighths))
            first = x_axis.dot(x) // 2 - bar_cells * len(points) // 2 + series * bar_cells
            for level in range(canvas.rows):
                filled = min(high, 8 * level + 8) - max(low, 8 * level)
                if filled <= 0:
                    continue
                # Partial blocks fill from the bottom, so only a cell the bar enters from below can use them.
                char = BLOCKS[round(filled)] if low <= 8 * level + 1e-9 else ("█" if filled >= 4 else " ")
                for column in range(first, first + bar_cells):
                    if char != " ":
                        canvas.put(canvas.rows - 1 - level, column, char, series, BAR)
            _draw_error_bar(canvas, first + bar_cells // 2, y, error, y_axis, series)
            if len(points) > 1:
                level = min(math.ceil(high / 8 - 1e-9), canvas.rows - 1)
                canvas.put(canvas.rows - 1 - level, first + bar_cells // 2, MARKERS[series % len(MARKERS)],
                           series, MARKER)


def _draw_error_bar(canvas: _Canvas, column: int, y: float, error: float, y_axis: _Axis, series: int) -> None:
    """A vertical line over y +- error, under the marker (and, on a bar chart, under the bar)."""
    if error > 0:
        for row in range(y_axis.dot(y + error) // 4, y_axis.dot(y - error) // 4 + 1):
            canvas.put(row, column, "│", series, ERROR_BAR)


def _segment(start: tuple[int, int], end: tuple[int, int]) -> Iterator[tuple[int, int]]:
    """The dots of a straight line from start to end (Bresenham), both ends included."""
    (column, row), (end_column, end_row) = start, end
    step_column, step_row = (1 if column < end_column else -1), (1 if row < end_row else -1)
    across, down = abs(end_column - column), -abs(end_row - row)
    error = across + down
    while True:
        yield column, row
        if (column, row) == (end_column, end_row):
            return
        doubled = 2 * error
        if doubled >= down:
            error, column = error + down, column + step_column
        if doubled <= across:
            error, row = error + across, row + step_row


def _axis_ticks(low: float, high: float, *, log: bool, most: int = 5) -> list[float]:
    """Three to `most` round values inside [low, high] (drawing units), returned as data values."""
    if log:
        decades = [10.0**power for power in range(math.ceil(low - 1e-9), math.floor(high + 1e-9) + 1)]
        if len(decades) >= 2:
            return decades[:: math.ceil(len(decades) / most)]
        low, high = _from_unit(low, log), _from_unit(high, log)
    if not high > low:  # a range lost to float rounding has one value to show
        return [low]
    magnitude = math.floor(math.log10(high - low))
    for mantissas in ((1, 2, 2.5, 5), (1.5, 3, 4)):  # the rounder steps first
        for power in range(magnitude - 1, magnitude + 2):
            for mantissa in mantissas:
                step = mantissa * 10.0**power
                first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
                if 3 <= last - first + 1 <= most:
                    return [index * step for index in range(first, last + 1)]
    return [low, (low + high) / 2, high]


def compact_number(value: float, digits: int = 3, unit: str = "") -> str:
    """1.2e9 -> "1.2G", 0.95 -> "0.95"; with a unit, 5.48e10 -> "54.8 GFLOP". Tick labels,
    the compare table's FLOPs and a run's summary all use it, so a number reads the same
    everywhere."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            number = f"{value / scale:.{digits}g}"
            break
    else:
        number, suffix = f"{value:.{digits}g}", ""
    return f"{number} {suffix}{unit}" if unit else f"{number}{suffix}"


def _tick_labels(values: list[float]) -> list[str]:
    """As few digits as keep neighbouring ticks apart."""
    for digits in range(3, 10):
        labels = [compact_number(value, digits) for value in values]
        if len(set(labels)) == len(labels):
            break
    return labels


def _tick_line(ticks: dict[int, str], gutter: int, width: int) -> str:
    """Labels centred under their tick marks; one that would touch its left neighbour is left out."""
    text = [" "] * width
    end = -1
    for column, label in sorted(ticks.items()):
        start = min(max(gutter + column - len(label) // 2, 0), width - len(label))
        if start > end and start >= 0:
            text[start : start + len(label)] = label
            end = start + len(label)
    return "".join(text).rstrip()


def _legend_lines(chart: Chart, width: int, most: int) -> list[Segments]:
    """The legend wrapped between its entries onto at most `most` lines of `width` cells; an
    entry too long for a line is cut, and entries left out end the last line with an ellipsis."""
    # A lone bar series has no markers on its bars, so its legend shows the bar itself.
    lone_bars = chart.kind == "bar" and len(chart.series) == 1
    symbols = ["█"] if lone_bars else [MARKERS[index % len(MARKERS)] for index in range(len(chart.series))]
    lines: list[Segments] = [[(f"{chart.legend_title}: ", None)] if chart.legend_title else []]
    entries_on_line = 0
    for index, (symbol, series) in enumerate(zip(symbols, chart.series)):
        entry = f"{symbol} {series.legend_label}"
        used = sum(len(text) for text, _ in lines[-1])
        if entries_on_line and used + 2 + len(entry) > width:
            if len(lines) == most:
                lines[-1].append((" …", None))
                break
            lines.append([])
            entries_on_line = 0
        lines[-1].append((("  " if entries_on_line else "") + entry, index))
        entries_on_line += 1
    return lines


def _no_data_box(width: int, rows: int) -> list[str]:
    if rows < 3 or width < 2:
        return (["no data"] + [""] * rows)[: max(rows, 0)]
    inner = width - 2
    box = ["┌" + "─" * inner + "┐", *["│" + " " * inner + "│"] * (rows - 2), "└" + "─" * inner + "┘"]
    box[rows // 2] = "│" + "no data".center(inner)[:inner] + "│"
    return box


def _join(lines: list[Segments], width: int, color: bool) -> str:
    """Lines cut to `width` visible cells (an ellipsis marks a cut), as plain text or Rich markup."""
    rendered = []
    for segments in lines:
        room, parts = width, []
        if sum(len(text) for text, _ in segments) > width:
            room -= 1
        for text, series in segments:
            text, room = text[: max(room, 0)], room - len(text)
            if color:
                text = _escape_markup(text)
                if series is not None and text.strip():
                    text = f"[{COLORS[series % len(COLORS)]}]{text}[/]"
            parts.append(text)
        if room < 0 and width > 0:
            parts.append("…")
        rendered.append("".join(parts))
    return "\n".join(rendered)


def _escape_markup(text: str) -> str:
    """Rich's markup escaping (rich.markup.escape), kept here so this module imports no Rich."""
    text = re.sub(r"(\\*)(\[[a-z#/@][^[]*?])", lambda match: f"{match[1]}{match[1]}\\{match[2]}", text)
    return text + "\\" if text.endswith("\\") and not text.endswith("\\\\") else text
