"""Charts: the text chart's size contract and geometry, the figure files, a light import."""

import dataclasses
import math
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

from engine.analysis.plots import BLOCKS, KINDS, MARKERS, Chart, Series, render_text, write_figure
from engine.errors import BadInput

SIZES = [(40, 10), (80, 20), (120, 30), (60, 7), (25, 5), (30, 3), (12, 1)]


def chart(*series: Series, kind: str = "line", x_log: bool = False) -> Chart:
    return Chart("accuracy against budget", "budget (epochs)", "test accuracy", list(series), kind=kind, x_log=x_log)


def two_samplers(kind: str = "line") -> Chart:
    return chart(
        Series("uniform", [1, 2, 4, 8], [0.5, 0.7, 0.8, 0.9], [0.02, 0.03, 0.01, 0.01]),
        Series("p-sgd", [1, 2, 4, 8], [0.55, 0.75, 0.85, 0.92]),
        kind=kind,
    )


DEGENERATE = {
    "no series": chart(),
    "empty series": chart(Series("a", [], []), Series("b", [], [])),
    "one point": chart(Series("a", [3.0], [0.5])),
    "flat": chart(Series("a", [1, 2, 3], [0.7, 0.7, 0.7])),
    "nan": chart(Series("a", [1, 2, math.nan, 4], [0.1, math.nan, 0.3, 0.4], [0.01, math.nan, 0.0, 0.02])),
    "all nan": chart(Series("a", [math.nan], [math.nan])),
    "log with non-positive x": chart(Series("a", [-1, 0, 10, 1000], [1, 2, 3, 4]), x_log=True),
    "huge numbers": chart(Series("a", [1e9, 1e12], [1.2e9, 3.4e9])),
    "long labels": Chart("t" * 300, "x" * 300, "y" * 300, [Series(f"series {i} " + "z" * 80, [1, 2], [i, i + 1])
                                                        for i in range(12)]),
}


def plot_rows(text: str) -> list[str]:
    """The lines of the plot area, from the first y-axis line down to the x axis line."""
    lines = text.split("\n")
    axis = next(index for index, line in enumerate(lines) if "└" in line)
    gutter = lines[axis].index("└")
    first = next(index for index, line in enumerate(lines) if line[gutter : gutter + 1] in ("┤", "│"))
    return lines[first:axis]


def plot_start(rows: list[str]) -> int:
    """Column of the plot area's first cell, just right of the y axis."""
    return next(index for index, cell in enumerate(rows[0]) if cell in "┤│") + 1


def positions(rows: list[str], char: str) -> list[tuple[int, int]]:
    return [(row, column) for row, line in enumerate(rows) for column, cell in enumerate(line) if cell == char]


@pytest.mark.parametrize("width, height", SIZES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("log", [False, True])
def test_text_has_exactly_height_lines_no_wider_than_width(width, height, kind, log):
    text = render_text(two_samplers(kind) if not log else chart(*two_samplers().series, kind=kind, x_log=True),
                       width, height)
    lines = text.split("\n")
    assert len(lines) == height
    assert max(map(len, lines)) <= width


@pytest.mark.parametrize("width, height", SIZES)
@pytest.mark.parametrize("name", DEGENERATE)
@pytest.mark.parametrize("kind", KINDS)
def test_degenerate_input_still_fills_the_size(width, height, name, kind):
    degenerate = dataclasses.replace(DEGENERATE[name], kind=kind)
    lines = render_text(degenerate, width, height).split("\n")
    assert len(lines) == height
    assert max(map(len, lines)) <= width


@pytest.mark.parametrize("name", ["no series", "empty series", "all nan"])
def test_nothing_to_draw_says_no_data_in_a_box(name):
    lines = render_text(DEGENERATE[name], 40, 10).split("\n")
    assert "no data" in "\n".join(lines)
    assert lines[1].startswith("┌") and lines[-1].startswith("└")


@pytest.mark.parametrize("width, height", [size for size in SIZES if size[1] >= 5])  # tall enough for a legend
@pytest.mark.parametrize("kind", KINDS)
def test_colour_markup_keeps_the_visible_width(width, height, kind):
    text_module = pytest.importorskip("rich.text")
    markup = render_text(two_samplers(kind), width, height, color=True)
    lines = markup.split("\n")
    assert len(lines) == height
    assert "[red]" in markup
    for line in lines:
        assert text_module.Text.from_markup(line).cell_len <= width
    plain = render_text(two_samplers(kind), width, height)
    assert [text_module.Text.from_markup(line).plain for line in lines] == plain.split("\n")


def test_markup_in_labels_is_escaped_when_coloured():
    rich_text = pytest.importorskip("rich.text")
    labelled = chart(Series("[bold]lr=0.1[/bold]", [0, 1], [0, 1]))
    lines = render_text(labelled, 60, 12, color=True).split("\n")
    assert "[bold]lr=0.1[/bold]" in rich_text.Text.from_markup(lines[-1]).plain


def test_first_point_is_bottom_left_and_last_point_top_right():
    rows = plot_rows(render_text(chart(Series("diagonal", [0, 1], [0, 1])), 40, 12))
    markers = sorted(positions(rows, MARKERS[0]))
    assert len(markers) == 2
    (top_row, top_column), (bottom_row, bottom_column) = markers
    assert bottom_row == len(rows) - 1 and bottom_column == plot_start(rows)
    assert top_row == 0 and top_column == 39
    # The braille line joins them: dots lie strictly between the two markers.
    between = [line[plot_start(rows) + 1 : 39] for line in rows]
    assert any("\u2800" < cell <= "\u28ff" for line in between for cell in line)


def test_series_have_different_markers_and_both_labels_in_the_legend():
    text = render_text(two_samplers("scatter"), 80, 20)
    rows = plot_rows(text)
    assert len(positions(rows, MARKERS[0])) == 4 and len(positions(rows, MARKERS[1])) == 4
    legend = text.split("\n")[-1]
    assert f"{MARKERS[0]} uniform" in legend and f"{MARKERS[1]} p-sgd" in legend


def test_legend_that_does_not_fit_is_cut_with_an_ellipsis():
    legend = render_text(DEGENERATE["long labels"], 40, 10).split("\n")[-1]
    assert len(legend) == 40 and legend.endswith("…")


def test_error_bars_reach_above_and_below_the_point():
    spread = chart(Series("seeds", [0, 1, 2], [0.0, 0.5, 1.0], [0.0, 0.3, 0.0]), kind="scatter")
    rows = plot_rows(render_text(spread, 40, 20))
    ((row, column),) = [spot for spot in positions(rows, MARKERS[0]) if 0 < spot[0] < len(rows) - 1]
    assert rows[row - 1][column] == "│" and rows[row + 1][column] == "│"


def test_log_axis_puts_ten_halfway_between_one_and_a_hundred():
    rows = plot_rows(render_text(chart(Series("flops", [1, 10, 100], [1, 2, 3]), kind="scatter", x_log=True), 80, 20))
    columns = sorted(column for _, column in positions(rows, MARKERS[0]))
    assert len(columns) == 3
    assert abs(columns[1] - (columns[0] + columns[2]) / 2) <= 1


def test_large_ticks_are_compact():
    text = render_text(chart(Series("flops", [1e9, 2e9, 5e9], [1.2e9, 2e9, 3e9])), 80, 20)
    assert "G" in text and "e+09" not in text and "000000" not in text
    tick_rows = [line for line in plot_rows(text) if "┤" in line]
    assert 3 <= len(tick_rows) <= 5


def test_histogram_bars_grow_with_the_count():
    histogram = chart(Series("used", [0.5, 1.5, 2.5], [1, 10, 5]), kind="bar")
    rows = plot_rows(render_text(histogram, 40, 14))
    columns_of = {}
    for row, line in enumerate(rows):
        for column, cell in enumerate(line):
            if cell in "▁▂▃▄▅▆▇█":
                columns_of.setdefault(column, []).append(row)
    heights = sorted((min(column_rows), column) for column, column_rows in columns_of.items())
    # The tallest bar is the middle one (count 10), the shortest the first (count 1).
    tallest_column, shortest_column = heights[0][1], heights[-1][1]
    assert shortest_column < tallest_column < max(columns_of)
    assert all(rows[-1][column] in BLOCKS[1:] for column in columns_of)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("log", [False, True])
def test_png_figure_has_the_png_signature(tmp_path, kind, log):
    figure = chart(*two_samplers().series, kind=kind, x_log=log)
    path = write_figure(figure, tmp_path / "nested" / "figure.png")
    assert path == tmp_path / "nested" / "figure.png"
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


@pytest.mark.parametrize("kind", KINDS)
def test_svg_figure_is_xml_and_the_same_each_time(tmp_path, kind):
    first = write_figure(two_samplers(kind), tmp_path / "first.svg")
    second = write_figure(two_samplers(kind), tmp_path / "second.svg")
    assert ElementTree.parse(first).getroot().tag.endswith("svg")
    assert first.read_bytes() == second.read_bytes()


def noted_samplers() -> Chart:
    noted = [dataclasses.replace(series, note=note) for series, note in zip(two_samplers().series,
                                                                            ("0.30, 1.00", "0.61, 2.03"))]
    return dataclasses.replace(chart(*noted, kind="scatter"), legend_title="[FLOPs / full run]")


def test_series_notes_are_a_legend_column_of_the_text_chart():
    legend = render_text(noted_samplers(), 100, 20).split("\n")[-1]
    assert legend == f"[FLOPs / full run]: {MARKERS[0]} uniform [0.30, 1.00]  {MARKERS[1]} p-sgd [0.61, 2.03]"
    assert render_text(two_samplers(), 100, 20).split("\n")[-1] == f"{MARKERS[0]} uniform  {MARKERS[1]} p-sgd"


@pytest.mark.parametrize("suffix", [".svg", ".png"])
def test_series_notes_are_a_legend_column_of_the_figure(tmp_path, suffix, monkeypatch):
    # Texts of the legend as matplotlib lays it out, read back from the figure being saved.
    from matplotlib.figure import Figure

    legends = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda figure, *args, **kwargs: (
        legends.append(figure.axes[0].get_legend()), save(figure, *args, **kwargs))[1])
    path = write_figure(noted_samplers(), tmp_path / f"figure{suffix}")
    assert path.stat().st_size > 0
    (legend,) = legends
    assert legend.get_title().get_text() == "[FLOPs / full run]"
    assert [text.get_text() for text in legend.get_texts()] == ["uniform [0.30, 1.00]", "p-sgd [0.61, 2.03]"]


def test_figure_of_nothing_is_still_written(tmp_path):
    assert write_figure(DEGENERATE["no series"], tmp_path / "empty.png").stat().st_size > 0


def test_unknown_suffix_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(BadInput, match=r"\.png.*\.svg"):
        write_figure(two_samplers(), tmp_path / "out" / "figure.gif")
    assert list(tmp_path.iterdir()) == []


def test_unknown_kind_and_mismatched_lengths_are_bad_input():
    with pytest.raises(BadInput, match="kind"):
        render_text(chart(Series("a", [1], [1]), kind="pie"))
    with pytest.raises(BadInput, match="must match"):
        render_text(chart(Series("a", [1, 2], [1])))


def test_importing_plots_loads_no_matplotlib_or_heavy_package():
    heavy = ("matplotlib", "torch", "timm", "textual")
    code = f"import sys, engine.analysis.plots; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"importing engine.analysis.plots loads {loaded}"


def test_a_crowded_figure_puts_its_legend_beside_the_axes_and_keeps_series_apart():
    from engine.analysis.plots import LEGEND_INSIDE_MAX, build_figure

    many = chart(*(Series(f"sampler {index}", [0.2, 1.0], [80.0 + index / 10, 90.0 + index / 10], yerr=[0.1, 0.1])
                   for index in range(21)))
    assert len(many.series) > LEGEND_INSIDE_MAX
    figure = build_figure(many)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)  # the canvas a .png gets
    canvas.draw()  # lays it out, so the extents below are where the pixels go
    (axes,) = figure.axes
    legend = figure.legends[0]
    renderer = canvas.get_renderer()
    assert legend.get_window_extent(renderer).x0 >= axes.get_window_extent(renderer).x1  # beside, not over, the lines
    data_lines = [container.lines[0] for container in axes.containers]  # one errorbar container per series
    styles = {(line.get_color(), line.get_marker()) for line in data_lines}
    assert len(styles) == 21  # no two series share both colour and marker

    few = build_figure(chart(*many.series[:2]))
    assert not few.legends and few.axes[0].get_legend() is not None
