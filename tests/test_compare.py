"""Compare: aggregation against hand-computed numbers, grouping, exports, charts, the CLI."""

import csv
import io
import json
import math
import re

import numpy
import pytest
from typer.testing import CliRunner

from engine.analysis.charts import budget_chart, build_chart, frontier_chart, learning_curve_chart, usage_chart
from engine.analysis.export import render
from engine.analysis.metrics import metric_value
from engine.analysis.pivot import build_pivot
from engine.analysis.plots import render_text
from engine.analysis.stats import regularized_incomplete_beta, welch_t_test
from engine.config import RunConfig
from engine.errors import BadInput, NotFound
from engine.records import new_record
from engine.store import Store
from tui_app.cli import app

runner = CliRunner()

# final test accuracy per (sampler, budget): one value per seed
ACCURACIES = {
    ("unif-sgd", 0.3): [0.90, 0.92, 0.94],
    ("p-sgd", 0.3): [0.80, 0.82, 0.81],
    ("unif-sgd", 1.0): [0.95, 0.96, 0.97],
    ("p-sgd", 1.0): [0.95, 0.97, 0.96],
}


def make_run(run_id, sampler, budget, seed, accuracy, state="done", run_dir=None, **config):
    record = new_record(RunConfig(sampler=sampler, budget=budget, seed=seed, **config), "study", state=state)
    record["id"] = run_id
    record["run_dir"] = str(run_dir) if run_dir else None
    record["summary"] = {"final_test_acc": accuracy, "flops_train": 1e9 * budget * (2 if sampler == "p-sgd" else 1),
                         "time_total_s": 10 * budget} if state == "done" else None
    return record


def fixture_runs():
    runs = []
    for (sampler, budget), values in ACCURACIES.items():
        for seed, accuracy in enumerate(values):
            runs.append(make_run(len(runs) + 1, sampler, budget, seed, accuracy))
    runs.append(make_run(len(runs) + 1, "p-sgd", 0.3, 9, None, state="failed"))  # never counted
    return runs


def test_cells_equal_hand_computed_means_stds_n_and_deltas():
    pivot = build_pivot(fixture_runs(), rows=["sampler"], cols=["budget"])
    assert pivot.row_keys == [("unif-sgd",), ("p-sgd",)]  # registry order, not alphabetical
    assert pivot.col_keys == [(0.3,), (1.0,)]
    uniform = pivot.cell(("unif-sgd",), (0.3,))
    assert uniform.n == 3 and uniform.mean == pytest.approx(92.0) and uniform.std == pytest.approx(2.0)
    assert uniform.is_baseline and uniform.delta is None
    importance = pivot.cell(("p-sgd",), (0.3,))
    assert importance.mean == pytest.approx(81.0) and importance.std == pytest.approx(1.0)
    assert importance.delta == pytest.approx(-11.0)
    # Welch by hand: se^2 = 4/3 + 1/3, t = -11 / sqrt(5/3), df = (5/3)^2 / ((4/3)^2/2 + (1/3)^2/2) = 50/17;
    # the two-sided p = 2 * scipy.stats.t.sf(|t|, 50/17) with scipy 1.17.1 (see WELCH_REFERENCES)
    assert importance.p_value == pytest.approx(0.0036599555836826546, rel=1e-9)
    assert importance.significant
    # against the 100%-budget uniform reference: 81 - 96
    assert importance.delta_reference == pytest.approx(-15.0)
    full = pivot.cell(("p-sgd",), (1.0,))
    assert full.delta == pytest.approx(0.0) and full.p_value == pytest.approx(1.0) and not full.significant
    assert pivot.cell_text(("p-sgd",), (0.3,)) == "81.00±1.00 -11.00*"
    assert pivot.cell_text(("unif-sgd",), (0.3,)) == "92.00±2.00 base"
    assert pivot.cell_text(("p-sgd",), (1.0,)) == "96.00±1.00 +0.00"


def test_welch_is_not_tested_with_one_seed_or_zero_variance():
    assert welch_t_test([1.0], [1.0, 2.0]) is None
    assert welch_t_test([1.0, 1.0], [2.0, 2.0]) is None
    runs = [make_run(1, "unif-sgd", 0.3, 0, 0.9), make_run(2, "p-sgd", 0.3, 0, 0.8)]
    pivot = build_pivot(runs, cols=["budget"])
    cell = pivot.cell(("p-sgd",), (0.3,))
    assert cell.std is None and cell.p_value is None and not cell.significant
    assert pivot.cell_text(("p-sgd",), (0.3,)) == "80.00 -10.00"


# Reference values computed once with scipy 1.17.1: scipy.special.betainc(a, b, x) at
# BETA_XS, and the pvalue of scipy.stats.ttest_ind(first, second, equal_var=False).
BETA_XS = (0.001, 0.05, 0.2, 0.4, 0.5, 0.6, 0.8, 0.95, 0.999)
BETA_REFERENCES = {
    (0.5, 0.5): [0.020135041633377492, 0.14356629312870628, 0.2951672353008665, 0.43590578315102513,
                 0.5000000000000001, 0.564094216848975, 0.7048327646991335, 0.8564337068712936,
                 0.9798649583666235],
    (1.5, 0.5): [1.3425151723196833e-05, 0.00481823046819855, 0.04051932635383402, 0.1240270626575546,
                 0.18169011381620936, 0.25221549635550466, 0.45018485575210104, 0.7176856442107858,
                 0.9597433418849682],
    (2.0, 3.0): [5.992003e-06, 0.014018749999999998, 0.18080000000000004, 0.5247999999999999, 0.6875, 0.8208,
                 0.9728, 0.99951875, 0.999999996003],
    (30.0, 0.5): [1.0262784370021795e-91, 9.793216739467787e-41, 1.2265219714158866e-22, 1.5108608577183522e-13,
                  1.3302059355529255e-10, 3.504353268172426e-08, 0.00026831214763073076, 0.08062942690643064,
                  0.8072373061595369],
    (0.7, 12.0): [0.04912382772968539, 0.6146636584999626, 0.9624683991091256, 0.9989934126755268,
                  0.9998933861251968, 0.9999930161077853, 0.9999999984218407, 0.9999999999999999, 1.0],
}
WELCH_REFERENCES = [
    ([90, 92, 94], [80, 82, 81], 0.0036599555836826546),
    ([80, 81], [90, 94], 0.09357356471867913),
    ([95, 96, 97], [95, 97, 96], 1.0),
    ([0.91, 0.93, 0.92, 0.95, 0.9], [0.89, 0.9, 0.92], 0.18749260086452646),
    ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [10.0, 30.0], 0.3632183364851007),
    ([93.1, 93.4, 92.8, 93.0], [93.9, 94.2, 94.0, 93.7, 94.1, 94.3], 0.0008417902159666785),
    ([50.0, 50.1], [10.0, 10.2, 9.9], 6.134871403355785e-08),
]


@pytest.mark.parametrize("a,b", list(BETA_REFERENCES))
def test_incomplete_beta_matches_reference_values(a, b):
    for x, reference in zip(BETA_XS, BETA_REFERENCES[(a, b)]):
        assert regularized_incomplete_beta(a, b, x) == pytest.approx(reference, rel=1e-9, abs=1e-13), x


@pytest.mark.parametrize("first,second,reference", WELCH_REFERENCES)
def test_welch_p_values_match_reference_values(first, second, reference):
    assert welch_t_test(first, second) == pytest.approx(reference, rel=1e-9)
    assert welch_t_test(second, first) == pytest.approx(reference, rel=1e-9)  # two-sided: symmetric


def test_grouping_ignores_seed_and_execution_but_splits_on_any_other_field():
    runs = [
        make_run(1, "unif-sgd", 0.3, 0, 0.90, threads=1),
        make_run(2, "unif-sgd", 0.3, 1, 0.92, threads=2),  # same experiment, other thread count
        make_run(3, "unif-sgd", 0.3, 0, 0.70, lr=0.5),
        make_run(4, "unif-sgd", 0.3, 1, 0.72, lr=0.5),
    ]
    pivot = build_pivot(runs, rows=["sampler"], cols=["budget"])
    assert pivot.added_fields == ["lr"]
    assert pivot.row_fields == ["sampler", "lr"]
    assert pivot.cell(("unif-sgd", 0.1), (0.3,)).run_ids == [1, 2]
    assert pivot.cell(("unif-sgd", 0.5), (0.3,)).run_ids == [3, 4]
    assert any("differ" in note and "lr" in note for note in pivot.notes)
    # the baseline is matched with the other fields equal: each lr is its own baseline
    assert pivot.cell(("unif-sgd", 0.5), (0.3,)).is_baseline


def test_bad_requests_are_bad_input_and_nothing_is_not_found():
    with pytest.raises(BadInput, match="unknown metric"):
        build_pivot(fixture_runs(), metric="accuracy")
    with pytest.raises(BadInput, match="unknown field"):
        build_pivot(fixture_runs(), rows=["sampelr"])
    with pytest.raises(BadInput, match="both a row and a column"):
        build_pivot(fixture_runs(), rows=["budget"], cols=["budget"])
    with pytest.raises(NotFound):
        build_pivot([run for run in fixture_runs() if run["state"] != "done"])
    with pytest.raises(BadInput, match="unknown format"):
        render(build_pivot(fixture_runs()), "xlsx")


def _numbers(text):
    return [float(value) for value in re.findall(r"[-+]?\d+\.\d+", text)]


def test_every_format_carries_the_same_numbers():
    pivot = build_pivot(fixture_runs(), rows=["sampler"], cols=["budget"])
    cells = json.loads(render(pivot, "json"))["cells"]
    parsed_csv = list(csv.DictReader(io.StringIO(render(pivot, "csv"))))
    assert len(parsed_csv) == len(cells) == 4
    for from_json, from_csv in zip(cells, parsed_csv):
        assert (from_csv["sampler"], float(from_csv["budget"])) == (from_json["sampler"], from_json["budget"])
        assert int(from_csv["n"]) == from_json["n"]
        for key in ("mean", "std", "delta_reference"):
            assert (float(from_csv[key]) if from_csv[key] else None) == from_json[key]
        assert [int(i) for i in from_csv["run_ids"].split()] == from_json["run_ids"]
        cell = pivot.cell((from_json["sampler"],), (from_json["budget"],))
        assert from_json["mean"] == cell.mean and from_json["p_value"] == cell.p_value
    markdown_rows = [line for line in render(pivot, "md").splitlines() if line.startswith("| p-sgd")]
    assert _numbers(markdown_rows[0]) == [81.0, 1.0, -11.0, 96.0, 1.0, 0.0]
    latex = render(pivot, "latex")
    assert r"\begin{tabular}{lrr}" in latex and r"\toprule" in latex and r"unif-sgd" in latex
    latex_row = next(line for line in latex.splitlines() if line.startswith("p-sgd"))
    assert r"$81.00 \pm 1.00$ (\textbf{-11.00})" in latex_row  # significant: bold
    assert _numbers(latex_row) == [81.0, 1.0, -11.0, 96.0, 1.0, 0.0]
    table = render(pivot, "table")
    assert "81.00±1.00 -11.00*" in table and "-15.00*" in table and "Welch" in table


def test_budget_and_frontier_charts_hold_the_means_and_the_cost():
    runs = fixture_runs()
    chart = budget_chart(runs)
    by_label = {series.label: series for series in chart.series}
    assert set(by_label) == {"unif-sgd", "p-sgd"}
    assert by_label["p-sgd"].x == [0.3, 1.0]
    assert by_label["p-sgd"].y == pytest.approx([81.0, 96.0])
    assert by_label["p-sgd"].yerr == pytest.approx([1.0, 1.0])
    frontier = frontier_chart(runs, cost="flops_train")
    points = {series.label: series for series in frontier.series}
    assert points["p-sgd"].x == pytest.approx([0.6e9, 2e9])  # the extra scoring cost moves it right
    assert points["unif-sgd"].x == pytest.approx([0.3e9, 1e9])
    assert frontier.x_log and frontier.kind == "scatter"


# --- distinct seeds: a rerun of a config and seed is a copy, not another observation
def copies_of_two_seeds():
    """unif-sgd and p-sgd at b=0.3, seeds 0 and 1, each run twice (the second time later)."""
    values = {"unif-sgd": (0.90, 0.94), "p-sgd": (0.80, 0.81)}
    runs = []
    for copy in range(2):
        for sampler, accuracies in values.items():
            for seed, accuracy in enumerate(accuracies):
                record = make_run(len(runs) + 1, sampler, 0.3, seed, accuracy)
                record["finished_at"] = f"2026-01-0{copy + 1}T00:00:00+00:00"
                runs.append(record)
    return runs


def test_copies_of_a_seed_count_once():
    pivot = build_pivot(copies_of_two_seeds(), cols=["budget"])
    uniform, importance = pivot.cell(("unif-sgd",), (0.3,)), pivot.cell(("p-sgd",), (0.3,))
    assert uniform.n == 2
    assert uniform.std == pytest.approx(math.sqrt(8.0))  # of the two distinct values, not of four
    assert uniform.values == pytest.approx([90.0, 94.0]) and uniform.duplicates == 2
    assert importance.p_value == pytest.approx(
        0.09357356471867913, rel=1e-9)  # Welch on the folded data
    assert importance.run_ids == [7, 8]  # the later copies


def test_the_latest_finished_copy_counts():
    runs = copies_of_two_seeds()
    late_first_copy = runs[0]  # unif-sgd seed 0, the lowest id
    late_first_copy["summary"]["final_test_acc"] = 0.70
    late_first_copy["finished_at"] = "2026-02-01T00:00:00+00:00"
    cell = build_pivot(runs, cols=["budget"]).cell(("unif-sgd",), (0.3,))
    assert cell.run_ids == [1, 6] and cell.values == pytest.approx([70.0, 94.0])
    for record in runs:  # the same finishing time: the later run (higher id) wins
        record["finished_at"] = None
    cell = build_pivot(runs, cols=["budget"]).cell(("unif-sgd",), (0.3,))
    assert cell.run_ids == [5, 6] and cell.values == pytest.approx([90.0, 94.0])


def test_every_format_says_how_many_copies_were_folded():
    pivot = build_pivot(copies_of_two_seeds(), cols=["budget"])
    cells = json.loads(render(pivot, "json"))["cells"]
    assert [(cell["sampler"], cell["n"], cell["duplicates"]) for cell in cells] == [
        ("unif-sgd", 2, 2), ("p-sgd", 2, 2)]
    parsed_csv = list(csv.DictReader(io.StringIO(render(pivot, "csv"))))
    assert [(row["n"], row["duplicates"]) for row in parsed_csv] == [("2", "2"), ("2", "2")]
    note = "n counts distinct seeds; 4 run(s) repeating a config and seed folded into the latest finished copy"
    for fmt in ("table", "md", "latex"):
        assert note in render(pivot, fmt), fmt
    assert "92.00±2.83 base †" in render(pivot, "table")
    assert r"$92.00 \pm 2.83$$^\dagger$" in render(pivot, "latex")
    clean = build_pivot(fixture_runs(), cols=["budget"])
    assert "folded" not in render(clean, "table") and "†" not in render(clean, "table")
    assert {cell["duplicates"] for cell in json.loads(render(clean, "json"))["cells"]} == {0}


def test_charts_count_a_copied_seed_once():
    series = {line.label: line for line in budget_chart(copies_of_two_seeds()).series}
    assert series["unif-sgd"].y == pytest.approx([92.0])
    assert series["unif-sgd"].yerr == pytest.approx([math.sqrt(8.0)])


def test_a_run_recorded_before_a_config_field_existed_groups_with_later_runs():
    old, new = make_run(1, "unif-sgd", 0.3, 0, 0.90), make_run(2, "unif-sgd", 0.3, 1, 0.94)
    del old["config"]["randaugment_scale_pixels"]  # recorded before the field was added
    pivot = build_pivot([old, new], cols=["budget"])
    assert pivot.cell(("unif-sgd",), (0.3,)).run_ids == [1, 2]
    assert pivot.added_fields == []


# --- FLOP-matched comparison
def flops_run(run_id, sampler, budget, seed, scoring_share, *, stored_key=True, plan=False):
    """A run of 200 nominal steps of 128 samples at 1,000 forward FLOPs per sample that
    backpropagated budget x nominal samples and forwarded scoring_share x as many to score."""
    record = make_run(run_id, sampler, budget, seed, 0.9)
    steps = round(200 * budget)
    flops = 3_000 * steps * 128 + 1_000 * scoring_share * steps * 128
    summary = {"final_test_acc": 0.9, "steps": steps, "budget_used": steps / 200, "flops_train": flops,
               "flops_forward_per_sample": 1_000, "time_total_s": 10 * budget}
    if stored_key:
        summary["flops_budget_used"] = flops / (3_000 * 200 * 128)
    if plan:
        summary["plan"] = {"nominal_steps": 200}
    record["summary"] = summary
    return record


@pytest.mark.parametrize("stored_key, plan", [(True, False), (False, True), (False, False)])
def test_flops_budget_used_is_a_metric_also_for_runs_without_the_key(stored_key, plan):
    runs = [flops_run(1, "unif-sgd", 0.3, 0, 0.0, stored_key=stored_key, plan=plan),
            flops_run(2, "ub", 0.3, 0, 3.0, stored_key=stored_key, plan=plan),
            flops_run(3, "unif-sgd", 1.0, 0, 0.0, stored_key=stored_key, plan=plan)]
    pivot = build_pivot(runs, cols=["budget"], metric="flops_budget_used")
    assert pivot.cell(("unif-sgd",), (0.3,)).mean == pytest.approx(0.3)
    assert pivot.cell(("ub",), (0.3,)).mean == pytest.approx(0.6)  # 3 scoring forwards = 1 backprop
    assert pivot.cell(("unif-sgd",), (1.0,)).mean == pytest.approx(1.0)
    lacking = flops_run(4, "unif-sgd", 0.3, 0, 0.0, stored_key=False)
    del lacking["summary"]["flops_forward_per_sample"]
    assert metric_value(lacking, "flops_budget_used") is None


def test_frontier_legend_gives_each_points_flop_budget_used():
    runs = [flops_run(index + 1, sampler, budget, seed, share)
            for index, (sampler, share, budget, seed) in enumerate(
                (sampler, share, budget, seed) for sampler, share in (("unif-sgd", 0.0), ("ub", 3.0))
                for budget in (1.0, 0.3) for seed in (0, 1))]
    chart = frontier_chart(runs)
    assert chart.legend_title == "[FLOPs / full-budget unif-sgd run]"
    assert {series.label: series.note for series in chart.series} == {"unif-sgd": "0.30, 1.00",
                                                                       "ub": "0.60, 2.00"}
    legend = render_text(chart, 100, 20).split("\n")[-1]
    assert "● unif-sgd [0.30, 1.00]" in legend and "■ ub [0.60, 2.00]" in legend
    time_chart = build_chart("frontier-time", runs)
    assert [series.note for series in time_chart.series] == ["0.30, 1.00", "0.60, 2.00"]


def test_learning_curves_and_usage_read_the_run_folders(tmp_path):
    runs = []
    for seed, offset in enumerate([0.0, 0.02]):
        folder = tmp_path / f"run{seed}"
        folder.mkdir()
        rows = [{"epoch": epoch, "step": 10 * epoch, "samples_forwarded": 640 * epoch,
                 "test_acc": 0.5 + 0.1 * epoch + offset} for epoch in (1, 2, 3)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        numpy.save(folder / "usage.npy", numpy.array([0, 1, 1, 2, 2, 2, 3, 3], dtype=numpy.int64))
        runs.append(make_run(seed + 1, "unif-sgd", 0.3, seed, 0.8, run_dir=folder))
    curves = learning_curve_chart(runs, x="samples_forwarded")
    (series,) = curves.series
    assert series.x == [640, 1280, 1920]
    assert series.y == pytest.approx([61.0, 71.0, 81.0])
    usage = usage_chart(runs, bins=4)
    (bars,) = usage.series
    assert sum(bars.y) == pytest.approx(100.0)
    assert bars.y == pytest.approx([12.5, 25.0, 37.5, 25.0])  # counts 0 | 1,1 | 2,2,2 | 3,3


# --- the command
def _home_with_fixture(tmp_path):
    home = tmp_path / "home"
    records = fixture_runs()
    for record in records:
        record.pop("id")
    Store(home / "history.json").add_runs(records)
    return home


def test_cli_compare_json_table_and_exit_codes(tmp_path):
    home = _home_with_fixture(tmp_path)
    result = runner.invoke(app, ["compare", "--home", str(home), "--cols", "budget", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["test"].startswith("Welch") and data["rows"] == ["sampler"]
    assert {(cell["sampler"], cell["budget"]): round(cell["mean"], 9) for cell in data["cells"]} == {
        ("unif-sgd", 0.3): 92.0, ("p-sgd", 0.3): 81.0, ("unif-sgd", 1.0): 96.0, ("p-sgd", 1.0): 96.0}
    table = runner.invoke(app, ["compare", "--home", str(home), "--cols", "budget", "--where", "budget=0.3"])
    assert table.exit_code == 0 and "81.00±1.00 -11.00*" in table.stdout
    baseline = runner.invoke(app, ["compare", "--home", str(home), "--cols", "budget", "--json",
                                   "--baseline", "sampler=p-sgd"])
    cells = json.loads(baseline.stdout)["cells"]
    assert next(c for c in cells if c["sampler"] == "unif-sgd" and c["budget"] == 0.3)["delta"] == pytest.approx(11.0)
    for args, code in [(["--metric", "acc"], 2), (["--format", "xls"], 2), (["--rows", "nope"], 2),
                       (["--baseline", "sampler"], 2), (["--where", "dataset=cifar10"], 3)]:
        result = runner.invoke(app, ["compare", "--home", str(home), *args])
        assert result.exit_code == code, (args, result.output)


def test_cli_compare_writes_png_and_svg_and_refuses_other_files(tmp_path):
    home = _home_with_fixture(tmp_path)
    png, svg = tmp_path / "out" / "budget.png", tmp_path / "frontier.svg"
    assert runner.invoke(app, ["compare", "--home", str(home), "--plot", str(png)]).exit_code == 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert runner.invoke(app, ["compare", "--home", str(home), "--chart", "frontier", "--plot", str(svg)]).exit_code == 0
    assert "<svg" in svg.read_text()
    gif = tmp_path / "x.gif"
    result = runner.invoke(app, ["compare", "--home", str(home), "--plot", str(gif)])
    assert result.exit_code == 2 and not gif.exists()
    terminal = runner.invoke(app, ["compare", "--home", str(home), "--chart", "budget"])
    assert terminal.exit_code == 0 and "against budget" in terminal.stdout


def _home_with(tmp_path, records):
    home = tmp_path / "home"
    for record in records:
        record.pop("id")
    Store(home / "history.json").add_runs(records)
    return home


def test_cli_compare_counts_two_copies_of_two_seeds_as_n_2(tmp_path):
    home = _home_with(tmp_path, copies_of_two_seeds())
    result = runner.invoke(app, ["compare", "--home", str(home), "--cols", "budget", "--json"])
    assert result.exit_code == 0, result.output
    cells = {cell["sampler"]: cell for cell in json.loads(result.stdout)["cells"]}
    assert cells["unif-sgd"]["n"] == 2 and cells["unif-sgd"]["std"] == pytest.approx(math.sqrt(8.0))
    assert cells["unif-sgd"]["duplicates"] == 2
    table = runner.invoke(app, ["compare", "--home", str(home), "--cols", "budget"])
    assert table.exit_code == 0 and "92.00±2.83 base †" in table.stdout
    assert "4 run(s) repeating a config and seed folded" in table.stdout


def test_cli_compare_flops_budget_used_metric_and_frontier_legend(tmp_path):
    runs = [flops_run(index + 1, sampler, budget, 0, share)
            for index, (sampler, share, budget) in enumerate(
                (sampler, share, budget) for sampler, share in (("unif-sgd", 0.0), ("ub", 3.0)) for budget in (0.3, 1.0))]
    for record in runs[::2]:  # runs recorded before the key existed
        del record["summary"]["flops_budget_used"]
    home = _home_with(tmp_path, runs)
    result = runner.invoke(app, ["compare", "--home", str(home), "--cols", "budget", "--metric",
                                 "flops_budget_used", "--json"])
    assert result.exit_code == 0, result.output
    assert {(cell["sampler"], cell["budget"]): round(cell["mean"], 9) for cell in json.loads(result.stdout)["cells"]} == {
        ("unif-sgd", 0.3): 0.3, ("unif-sgd", 1.0): 1.0, ("ub", 0.3): 0.6, ("ub", 1.0): 2.0}
    chart = runner.invoke(app, ["compare", "--home", str(home), "--cols", "budget", "--chart", "frontier"],
                          env={"COLUMNS": "120"})  # the chart is as wide as the terminal
    assert chart.exit_code == 0, chart.output
    assert "[FLOPs / full-budget unif-sgd run]: ● unif-sgd [0.30, 1.00]  ■ ub [0.60, 2.00]" in chart.stdout
    svg = tmp_path / "frontier.svg"
    written = runner.invoke(app, ["compare", "--home", str(home), "--chart", "frontier", "--plot", str(svg)])
    assert written.exit_code == 0 and "<svg" in svg.read_text()
