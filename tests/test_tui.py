"""The terminal UI driven like a user: Pilot key presses on a fixture home, the store checked
after each action, and SVG snapshots of every screen at 80x24 and 120x40.

The fixture home is built in code with fixed timestamps and a frozen clock, so the
screens render the same text on every run; no worker runs, so the header is fixed too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from rich.console import Console

from engine.config import RunConfig
from engine.paths import LOG_NAME, METRICS_NAME, PROGRESS_NAME, TRACEBACK_NAME, history_path
from engine.processes import process_identity
from engine.records import new_record
from engine.store import Store, serialise

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
SIZES = {"80x24": (80, 24), "120x40": (120, 40)}


def stamp(hours_before_now: float) -> str:
    return (NOW - dt.timedelta(hours=hours_before_now)).isoformat(timespec="seconds")


def accuracy(sampler: str, augmentation: str, budget: float, seed: int) -> float:
    """A made-up but orderly final accuracy: more budget helps, p-sgd a little, mixup less."""
    return round(0.90 + 0.05 * budget + 0.004 * (sampler == "p-sgd") - 0.003 * (augmentation == "mixup")
                 + 0.002 * seed, 4)


def summary(final: float, epochs: int) -> dict[str, Any]:
    return {"final_test_acc": final, "final_test_loss": 0.2, "best_test_acc": final + 0.001,
            "best_test_epoch": epochs - 1, "epochs_run": epochs, "steps": 22 * epochs,
            "samples_backprop": 1408 * epochs, "samples_forwarded": 1408 * epochs, "samples_forwarded_scoring": 0,
            "flops_forward_per_sample": 4758016, "flops_train": 2.0e10 * epochs, "time_train_s": 0.4 * epochs,
            "time_eval_s": 0.05 * epochs, "time_overhead_s": 0.1, "time_total_s": 0.45 * epochs + 0.1,
            "images_per_s": 3520.0, "budget_used": 1.0, "device": "cpu", "fidelity": "corrected"}


def write_metrics(folder: Path, final: float, epochs: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for epoch in range(1, epochs + 1):
        share = epoch / epochs
        lines.append(json.dumps({
            "epoch": epoch, "step": 22 * epoch, "lr": 0.05 * (1 - share) + 1e-6, "train_loss": round(2.3 * (1 - share) + 0.1, 4),
            "test_acc": round(0.1 + (final - 0.1) * share ** 0.5, 4), "test_loss": 0.3,
            "samples_backprop": 1408 * epoch, "samples_forwarded": 1408 * epoch,
            "distinct_seen": min(1437, 700 * epoch), "usage_entropy": round(7.2 - 0.1 * share, 3),
            "images_per_s": 3520.0,
        }))
    (folder / METRICS_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")


USER_PRESET = """description = "Our own small sweep: two samplers x two budgets, two seeds each."
seeds = 2

[config]
dataset = "digits"
epochs = 20
device = "cpu"

[grid]
sampler = ["unif-sgd", "p-sgd"]
budget = [0.3, 1.0]
"""


def build_home(home: Path) -> Path:
    """A user preset (mini-study) and a history of 22 runs: 16 done (2 samplers x 2
    augmentations x 2 budgets x 2 seeds), one failed with a traceback, one interrupted, one
    running with progress, two queued and one cancelled; metrics files for the runs that trained."""
    (home / "presets").mkdir(parents=True, exist_ok=True)
    (home / "presets" / "mini-study.toml").write_text(USER_PRESET, encoding="utf-8")
    records: list[dict[str, Any]] = []

    def add(config: RunConfig, state: str, **fields: Any) -> tuple[int, dict[str, Any]]:
        record = new_record(config, "digits-paper", state=state)
        run_id = len(records) + 1
        record.update(created_at=stamp(30 - run_id), run_dir=str(home / str(run_id)), attempts=1, **fields)
        records.append(record)
        return run_id, record

    base = RunConfig(epochs=20, batch_size=64, lr=0.05, crop_padding=1, device="cpu", threads=1)
    epochs = 6
    for sampler in ("unif-sgd", "p-sgd"):
        for augmentation in ("standard", "mixup"):
            for budget in (0.3, 1.0):
                for seed in (0, 1):
                    final = accuracy(sampler, augmentation, budget, seed)
                    run_id, _ = add(base.replace(sampler=sampler, augmentation=augmentation, budget=budget, seed=seed),
                                    "done", started_at=stamp(10), finished_at=stamp(9 - len(records) * 0.25),
                                    summary=summary(final, epochs), outcome={"exit_code": 0, "message": "ok"})
                    write_metrics(home / str(run_id), final, epochs)

    failed_id, failed = add(base.replace(sampler="sb", budget=0.3), "failed", started_at=stamp(4), finished_at=stamp(3.5))
    trace = home / str(failed_id) / TRACEBACK_NAME
    write_metrics(trace.parent, 0.5, 2)
    trace.write_text("Traceback (most recent call last):\n  File \"loop.py\", line 300, in train\n"
                     "    loss.backward()\nRuntimeError: CUDA out of memory\n", encoding="utf-8")
    (trace.parent / LOG_NAME).write_text("--- start on cpu\n{\"event\": \"epoch\", \"epoch\": 1}\n", encoding="utf-8")
    failed["outcome"] = {"exit_code": 1, "message": "RuntimeError: CUDA out of memory", "traceback_file": str(trace)}

    interrupted_id, _ = add(base.replace(sampler="infobatch", budget=0.3), "interrupted", started_at=stamp(3),
                            finished_at=stamp(2), outcome={"exit_code": None, "message": "process gone; resumable"})
    write_metrics(home / str(interrupted_id), 0.8, 3)

    running_id, _ = add(base.replace(sampler="c-sgd", budget=0.3), "running", started_at=stamp(0.5),
                        process=process_identity(os.getpid()))
    write_metrics(home / str(running_id), 0.912, 8)
    (home / str(running_id) / PROGRESS_NAME).write_text(json.dumps({
        "steps": 500, "epochs": 20, "epoch": 8, "device": "cpu", "step": 200, "test_acc": 0.912,
        "train_loss": 0.31, "images_per_s": 5321.0, "eta_s": 330.0, "updated_at": NOW.timestamp() - 30,
    }), encoding="utf-8")
    (home / str(running_id) / LOG_NAME).write_text("--- start on cpu\n{\"event\": \"start\"}\n", encoding="utf-8")

    add(base.replace(sampler="ub", budget=0.3), "queued")
    add(base.replace(sampler="ub", budget=1.0), "queued", priority=5)
    add(base.replace(sampler="random-subset", budget=0.3), "cancelled", finished_at=stamp(1),
        outcome={"exit_code": None, "message": "cancelled by the user"})
    # Written as a history that ran these runs in these folders (adding them would number
    # them past the existing folders).
    history_path(home).write_text(serialise({"runs": {str(run_id): {**record, "id": run_id}
                                                      for run_id, record in enumerate(records, start=1)}}))
    return home


# --- driving the app
def make_app(home: Path):
    from tui_app.app import BudgetTuiApp

    # The periodic read is left to the tests (request_refresh) so nothing changes behind them.
    return BudgetTuiApp(home, now=lambda: NOW, refresh_interval_s=3600)


async def settle(pilot) -> None:
    """Wait until every background job has finished and its messages were handled (one
    result may start the next job: a history read, then its rows, then their sparklines)."""
    from textual.worker import WorkerState

    quiet = 0
    for _ in range(200):
        await pilot.pause()
        active = [worker for worker in pilot.app.workers if worker.state in (WorkerState.PENDING, WorkerState.RUNNING)]
        if active:
            quiet = 0
            await pilot.app.workers.wait_for_complete(active)
        else:
            quiet += 1
            if quiet == 3:
                return
    raise AssertionError("the app never settled")


def drive(home: Path, scenario: Callable[[Any, Any], Awaitable[None]], size: tuple[int, int] = (120, 40)) -> None:
    """Run the app on `home` and hand (app, pilot) to `scenario` once the first read settled."""
    async def main() -> None:
        app = make_app(home)
        async with app.run_test(size=size, notifications=True) as pilot:
            await settle(pilot)
            await scenario(app, pilot)

    asyncio.run(main())


def plain(renderable: Any) -> str:
    """What a widget's content reads as on a 120-column terminal, without styles."""
    console = Console(file=io.StringIO(), width=120, color_system=None, legacy_windows=False)
    console.print(renderable)
    return console.file.getvalue()


def shown(app, selector: str) -> str:
    from textual.widgets import Static

    return plain(app.screen.query_one(selector, Static).content)


def cell_text(value: Any) -> str:
    return getattr(value, "plain", value)


def runs_in(home: Path) -> list[dict[str, Any]]:
    return Store(history_path(home)).list_runs()


async def open_preset_form(app, pilot, name: str) -> None:
    from textual.widgets import OptionList

    options = app.screen.query_one("#preset-list", OptionList)
    options.highlighted = [option.id for option in options.options].index(name)
    await pilot.press("enter")
    await settle(pilot)


async def set_field(app, pilot, key: str, value: str) -> None:
    from textual.widgets import Input

    field = app.screen.query_one(f"#field-{key}", Input)
    field.focus()
    field.value = value
    await settle(pilot)


def toasts(app) -> list[str]:
    return [plain(toast.render()) for toast in app.screen.query("Toast")]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return build_home(tmp_path / "home")


# --- the flows
def test_first_screen_lists_presets_with_the_worker_state_and_the_keys(home):
    async def scenario(app, pilot):
        from textual.widgets import Footer, OptionList

        assert app.sub_title == "worker: stopped"
        options = {option.id: str(option.prompt) for option in app.screen.query_one("#preset-list", OptionList).options}
        assert {"digits-quick", "digits-paper", "cifar10-paper"} <= set(options)
        assert options["mini-study"] == "mini-study (user)"
        assert app.screen.query_one(Footer)
        await pilot.press("down", "down")
        assert "runs              108 (6 × 3 × 3 × 2 seeds)" in shown(app, "#preview")

    drive(home, scenario)


def test_a_broken_user_preset_is_listed_with_its_error_beside_the_others(tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "mine.toml").write_text('[config]\nbudget = 7\n')

    async def scenario(app, pilot):
        from textual.widgets import OptionList

        options = app.screen.query_one("#preset-list", OptionList)
        options.highlighted = [option.id for option in options.options].index("mine")
        await pilot.pause()
        assert "budget must be in (0, 1]" in shown(app, "#preview")
        await pilot.press("enter")
        await settle(pilot)
        assert type(app.screen).__name__ == "PresetsScreen"  # no form for a preset that does not load

    drive(tmp_path, scenario)


def test_queue_a_preset_from_the_form_see_it_in_the_queue_and_cancel_it(tmp_path):
    async def scenario(app, pilot):
        from tui_app.widgets.run_table import RunTable

        await open_preset_form(app, pilot, "digits-quick")
        assert shown(app, "#form-summary").startswith("1 run of digits-quick")
        await pilot.press("ctrl+s")
        await settle(pilot)
        (record,) = runs_in(tmp_path)
        assert (record["state"], record["preset"], record["config"]["epochs"]) == ("queued", "digits-quick", 15)
        assert any(f"queued 1 run (id {record['id']})" in text for text in toasts(app))

        await pilot.press("2")
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        assert table.keys == [str(record["id"])]
        assert cell_text(table.cells(str(record["id"]))["state"]) == "queued"
        await pilot.press("c")  # a queued run: no question asked
        await settle(pilot)
        assert runs_in(tmp_path)[0]["state"] == "cancelled"
        # The cancelled run stays below the queue, so r reaches it.
        assert table.keys == [str(record["id"])] and table.cursor_key == str(record["id"])
        assert cell_text(table.cells(str(record["id"]))["state"]) == "cancelled"
        assert shown(app, "#queue-summary").strip() == "0 running · 0 queued · 0 interrupted · 1 finished last"
        await pilot.press("r")
        await settle(pilot)
        assert runs_in(tmp_path)[0]["state"] == "queued"
        assert cell_text(table.cells(str(record["id"]))["state"]) == "queued"

    drive(tmp_path, scenario)


def test_the_form_sweeps_comma_lists_like_queue_add_grid(tmp_path):
    async def scenario(app, pilot):
        await open_preset_form(app, pilot, "digits-quick")
        await set_field(app, pilot, "budget", "0.2,0.3")
        await set_field(app, pilot, "seeds", "2")
        await set_field(app, pilot, "more", "lr=0.1 batch_size=32,64")
        await set_field(app, pilot, "priority", "3")
        assert shown(app, "#form-summary").startswith("8 runs of digits-quick")
        await pilot.press("enter")
        await settle(pilot)

    drive(tmp_path, scenario)
    records = runs_in(tmp_path)
    points = sorted((r["config"]["budget"], r["config"]["batch_size"], r["config"]["seed"]) for r in records)
    assert points == sorted((budget, batch, seed) for budget in (0.2, 0.3) for batch in (32, 64) for seed in (0, 1))
    assert {(r["config"]["lr"], r["priority"], r["config"]["sampler"]) for r in records} == {(0.1, 3, "unif-sgd")}


@pytest.mark.parametrize("key, value, message", [
    ("budget", "1.5", "budget must be in (0, 1]"),
    ("budget", "lots", "budget='lots' is not a valid float"),
    ("sampler", "magic", "choose one of: sgd, unif-sgd"),
    ("seeds", "0", "seeds must be >= 1"),
    ("more", "colour=red", "unknown config key 'colour'"),
    ("model", "not_a_model", "unknown model 'not_a_model'"),
    ("seeds", "\u0662", "seeds must be a whole number in ASCII digits"),
    ("priority", "\u0663", "priority must be a whole number in ASCII digits"),
    ("more", "epochs=\u0661\u0662", "epochs must be a whole number in ASCII digits"),
    ("more", "seed=" + "9" * 30, "within 64 bits"),
])
def test_an_invalid_field_shows_the_engine_message_and_queues_nothing(tmp_path, key, value, message):
    async def scenario(app, pilot):
        from textual.widgets import Button

        await open_preset_form(app, pilot, "digits-quick")
        await set_field(app, pilot, key, value)
        assert message in shown(app, f"#error-{key}")
        assert app.screen.query_one("#submit", Button).disabled
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert type(app.screen).__name__ == "QueueFormScreen"
        valid = {"budget": "0.5", "sampler": "p-sgd", "seeds": "1", "more": "", "model": "small_cnn", "priority": "0"}
        await set_field(app, pilot, key, valid[key])
        assert shown(app, f"#error-{key}").strip() == ""
        assert not app.screen.query_one("#submit", Button).disabled

    drive(tmp_path, scenario)
    assert not history_path(tmp_path).exists()


def test_a_problem_between_fields_is_shown_under_the_form(tmp_path):
    async def scenario(app, pilot):
        await open_preset_form(app, pilot, "digits-quick")
        await set_field(app, pilot, "sampler", "sgd")
        await set_field(app, pilot, "budget", "0.5")
        assert "budget_mode=scan" in shown(app, "#form-summary")
        await pilot.press("ctrl+s")
        await settle(pilot)

    drive(tmp_path, scenario)
    assert not history_path(tmp_path).exists()


@pytest.mark.parametrize("fields, message, where", [
    ({"dataset": "cifar10"}, "cifar10 files missing in", "#error-dataset"),  # under the field it names
    ({"seeds": "1000000000"}, "at most 10000 runs", "#form-summary"),
])
def test_the_form_runs_the_pre_flight_checks_of_queue_add(tmp_path, fields, message, where):
    async def scenario(app, pilot):
        await open_preset_form(app, pilot, "digits-quick")
        for key, value in fields.items():
            await set_field(app, pilot, key, value)
        assert message in shown(app, where)
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert type(app.screen).__name__ == "QueueFormScreen"

    drive(tmp_path, scenario)
    assert not history_path(tmp_path).exists()


def test_an_unreadable_preset_is_listed_with_its_error_instead_of_loading_for_ever(tmp_path):
    (tmp_path / "presets" / "folder.toml").mkdir(parents=True)
    (tmp_path / "presets" / "latin.toml").write_bytes('description = "caf\u00e9"\n'.encode("latin-1"))

    async def scenario(app, pilot):
        from textual.widgets import OptionList

        options = app.screen.query_one("#preset-list", OptionList)
        names = [option.id for option in options.options]
        assert {"digits-quick", "folder", "latin"} <= set(names)
        for name, reason in (("folder", "cannot be read"), ("latin", "not UTF-8")):
            options.highlighted = names.index(name)
            await pilot.pause()
            assert f"{name}.toml" in shown(app, "#preview") and reason in shown(app, "#preview")

    drive(tmp_path, scenario)


def test_presets_that_cannot_be_listed_show_why(tmp_path, monkeypatch):
    import tui_app.screens.presets

    def unlistable(home):
        raise PermissionError(13, "Permission denied", str(home / "presets"))

    monkeypatch.setattr(tui_app.screens.presets, "scan_presets", unlistable)

    async def scenario(app, pilot):
        assert shown(app, "#preview").strip() == f"presets could not be listed: Permission denied: {tmp_path / 'presets'}"

    drive(tmp_path, scenario)


def test_queue_shows_live_progress_and_updates_rows_in_place(home):
    async def scenario(app, pilot):
        from tui_app.widgets.run_table import RunTable

        await pilot.press("2")
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        # Running, queue order (priority first), interrupted, then the last five finished, latest first.
        assert table.keys == ["19", "21", "20", "18", "22", "17", "16", "15", "14"]
        running = {key: cell_text(value) for key, value in table.cells("19").items()}
        assert (running["acc"], running["rate"], running["eta"]) == ("91.2%", "5,321", "0:05:00")
        assert running["state"].endswith("40%")  # a running run's state is its progress bar
        assert cell_text(table.cells("18")["state"]) == "interrupted"
        assert shown(app, "#queue-summary").strip() == "1 running · 2 queued · 1 interrupted · 5 finished last"

        table.move_to("20")
        progress = json.loads((home / "19" / PROGRESS_NAME).read_text())
        progress.update(step=400, test_acc=0.95, eta_s=60.0, updated_at=NOW.timestamp())
        (home / "19" / PROGRESS_NAME).write_text(json.dumps(progress))
        app.request_refresh()
        await settle(pilot)
        assert table.keys[:4] == ["19", "21", "20", "18"] and table.cursor_key == "20"
        assert (cell_text(table.cells("19")["acc"]), cell_text(table.cells("19")["eta"])) == ("95.0%", "0:01:00")

    drive(home, scenario)


def test_queue_priority_and_retry_write_the_store(home):
    async def scenario(app, pilot):
        from tui_app.widgets.run_table import RunTable

        await pilot.press("2")
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        table.move_to("21")  # priority 5, ahead of run 20
        for _ in range(6):
            await pilot.press("minus")
            await settle(pilot)
        assert Store(history_path(home)).get_run(21)["priority"] == -1
        assert table.keys[:4] == ["19", "20", "21", "18"] and table.cursor_key == "21"
        await pilot.press("plus")
        await settle(pilot)
        assert Store(history_path(home)).get_run(21)["priority"] == 0
        table.move_to("18")
        await pilot.press("r")
        await settle(pilot)
        assert Store(history_path(home)).get_run(18)["state"] == "queued"
        assert any("run 18: queued" in text for text in toasts(app))

    drive(home, scenario)


def test_open_a_finished_run_from_the_history_shows_its_config_and_final_accuracy(home):
    async def scenario(app, pilot):
        from tui_app.widgets.run_table import RunTable

        await pilot.press("3")
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        assert table.keys[:4] == ["22", "18", "17", "16"]  # newest first
        await pilot.press("down", "down", "down", "enter")
        await settle(pilot)
        assert type(app.screen).__name__ == "RunDetailScreen"
        state = shown(app, "#detail-state")
        assert "run 16 done · p-sgd · mixup · budget 1.0 · seed 1" in state
        assert "final test acc 95.30%" in state
        config = shown(app, "#detail-config")
        assert "*sampler" in config and "p-sgd" in config and "*epochs" in config
        curves = shown(app, "#detail-curves")
        assert "usage H(c)" in curves and "7.100 → 7.100" not in curves and "95.30%" in curves
        await pilot.press("escape")
        await settle(pilot)
        assert type(app.screen).__name__ == "HistoryScreen"

    drive(home, scenario)


def test_a_failed_run_shows_its_outcome_and_traceback(home):
    async def scenario(app, pilot):
        from tui_app.screens.run_detail import RunDetailScreen

        await app.push_screen(RunDetailScreen(17, "history"))
        await settle(pilot)
        assert "failed: RuntimeError: CUDA out of memory (exit code 1)" in shown(app, "#detail-state")
        assert "loss.backward()" in shown(app, "#detail-traceback")
        log = shown(app, "#detail-log")
        assert "--- start on cpu\nepoch 1\n" in log and '"event"' not in log  # events read as words, not JSON

    drive(home, scenario)


def test_an_interrupted_run_resumes_with_one_key(home):
    async def scenario(app, pilot):
        from tui_app.screens.run_detail import RunDetailScreen

        await app.push_screen(RunDetailScreen(18, "queue"))
        await settle(pilot)
        assert "R: resume it from its last checkpoint" in shown(app, "#detail-state")
        await pilot.press("R")
        await settle(pilot)
        assert "queued" in shown(app, "#detail-state")

    drive(home, scenario)
    record = Store(history_path(home)).get_run(18)
    assert (record["state"], record["attempts"]) == ("queued", 2)


def test_history_filters_sorts_and_draws_sparklines(home):
    async def scenario(app, pilot):
        from tui_app.widgets.run_table import RunTable

        await pilot.press("3")
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        assert len(table.keys) == 19
        assert set(cell_text(table.cells("16")["curve"]).strip()) <= set("▁▂▃▄▅▆▇█")
        assert cell_text(table.cells("16")["curve"]).strip().endswith("█")
        assert cell_text(table.cells("22")["curve"]).strip() == "-"  # cancelled before its first epoch

        await pilot.press("slash", *"colour=red")
        await settle(pilot)
        assert "unknown filter key 'colour'" in shown(app, ".filter-bar .field-error")
        app.screen.query_one(".filter-bar Input").value = "sampler=p-sgd budget=1.0"
        await pilot.press("enter")
        await settle(pilot)
        assert shown(app, ".filter-bar .field-error").strip() == ""
        assert sorted(table.keys, key=int) == ["11", "12", "15", "16"]
        assert shown(app, "#history-summary").strip() == (
            "4 of 19 finished runs · sorted by id, newest first (s: next column, S: reverse)")
        assert table.has_focus

        await pilot.press("s", "s")  # the columns left to right: id -> state -> final accuracy, best first
        await settle(pilot)
        assert table.keys == ["12", "11", "16", "15"]
        assert "sorted by acc, best first" in shown(app, "#history-summary")
        await pilot.press("S")
        await settle(pilot)
        assert table.keys == ["15", "16", "11", "12"]
        assert "sorted by acc, worst first" in shown(app, "#history-summary")

    drive(home, scenario)


def test_history_stays_sorted_by_a_clicked_header(home):
    async def scenario(app, pilot):
        from tui_app.widgets.run_table import RunTable

        await pilot.press("3")
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        await pilot.click(RunTable, offset=(40, 0))  # the "sampler" header: ascending
        await settle(pilot)
        samplers = [table.cells(key)["sampler"] for key in table.keys]
        assert samplers == sorted(samplers) and table.sorted_by == ("sampler", False)

    drive(home, scenario)


def test_compare_shows_the_pivot_of_the_fixture_history(home):
    async def scenario(app, pilot):
        from textual.widgets import DataTable

        await pilot.press("4")
        await settle(pilot)
        pivot = app.screen.query_one("#pivot", DataTable)
        rows = {str(pivot.get_row_at(index)[0]): [str(cell) for cell in pivot.get_row_at(index)[1:]]
                for index in range(pivot.row_count)}
        assert rows == {
            "unif-sgd": ["91.60±0.14 base", "95.10±0.14 base", "91.30±0.14 -0.30", "94.80±0.14 -0.30"],
            "p-sgd": ["92.00±0.14 +0.40", "95.50±0.14 +0.40", "91.70±0.14 +0.10", "95.20±0.14 +0.10"],
        }
        assert [str(column.label) for column in pivot.ordered_columns][1:] == [
            "standard b=0.3", "standard b=1", "mixup b=0.3", "mixup b=1"]
        assert "mean ± sample std over seeds (n = 2 per cell)" in shown(app, "#pivot-notes")
        assert app.screen.query_one("#budget-chart").chart.series

        await pilot.press("m")  # the next metric: best test accuracy
        await settle(pilot)
        assert str(pivot.get_row_at(0)[1]) == "91.70±0.14 base"

    drive(home, scenario)


def test_compare_without_finished_runs_says_so(tmp_path):
    async def scenario(app, pilot):
        await pilot.press("4")
        await settle(pilot)
        assert "nothing to compare yet" in shown(app, "#compare-problem")
        assert not app.screen.query_one("#pivot").display

    drive(tmp_path, scenario)


def test_a_corrupted_history_is_explained_on_every_screen_without_crashing(tmp_path):
    history_path(tmp_path).write_text('{"runs": {"1": {"state": "done"', encoding="utf-8")

    async def scenario(app, pilot):
        from tui_app.widgets.run_table import RunTable

        await pilot.press("2")
        await settle(pilot)
        hint = app.screen.query_one(RunTable).empty_hint
        assert f"history file {history_path(tmp_path)} is corrupted" in hint and "Move the file aside" in hint
        await pilot.press("3")
        await settle(pilot)
        assert "is corrupted" in app.screen.query_one(RunTable).empty_hint
        await pilot.press("4")
        await settle(pilot)
        assert "is corrupted" in shown(app, "#compare-problem")

        history_path(tmp_path).unlink()  # moved aside: the next read recovers
        app.request_refresh()
        await settle(pilot)
        assert "nothing to compare yet" in shown(app, "#compare-problem")

    drive(tmp_path, scenario)


def test_a_missing_history_gives_empty_tables_with_a_hint(tmp_path):
    async def scenario(app, pilot):
        from tui_app.widgets.run_table import RunTable

        await pilot.press("2")
        await settle(pilot)
        assert app.screen.query_one(RunTable).empty_hint == "the queue is empty — pick a preset (1) and press enter"
        await pilot.press("3")
        await settle(pilot)
        assert app.screen.query_one(RunTable).empty_hint.startswith("no finished runs yet — pick a preset")

    drive(tmp_path, scenario)


def test_a_run_whose_process_died_shows_as_interrupted(home):
    store = Store(history_path(home))
    store.update_run(19, process={"pid": 2**22 + 1, "pgid": 2**22 + 1, "start_time": 1, "host": None})

    async def scenario(app, pilot):
        from tui_app.widgets.run_table import RunTable

        await pilot.press("2")
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        assert cell_text(table.cells("19")["state"]) == "interrupted"

    drive(home, scenario)
    assert store.get_run(19)["state"] == "interrupted"


def test_help_lists_the_keys_and_the_palette_runs_actions(home):
    async def scenario(app, pilot):
        await pilot.press("question_mark")
        await settle(pilot)
        assert type(app.screen).__name__ == "HelpScreen"
        text = plain(app.screen.query_one("#help Static").content)
        for expected in ("Cancel the selected run", "Resume or retry this run", "Sort by the next column",
                         "Queue the runs of this form", "Go to history"):
            assert expected in text
        await pilot.press("escape")
        await pilot.press("ctrl+p")
        await settle(pilot)
        await pilot.press(*"go to history")
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert type(app.screen).__name__ == "HistoryScreen"
        await pilot.press("q")
        await settle(pilot)

    drive(home, scenario)


def test_start_and_stop_the_worker_from_the_queue_screen(tmp_path):
    from engine.worker import live_workers, stop_workers

    async def scenario(app, pilot):
        await pilot.press("2", "w")
        await settle(pilot)
        for _ in range(100):
            if live_workers(tmp_path):
                break
            await asyncio.sleep(0.1)
        (worker,) = live_workers(tmp_path)
        app.request_refresh()
        await settle(pilot)
        assert app.sub_title == f"worker: running (pid {worker['pid']}, CUDA_VISIBLE_DEVICES inherited)"
        await pilot.press("W")  # a worker runs: asked first, and n leaves it running
        await settle(pilot)
        assert type(app.screen).__name__ == "ConfirmScreen"
        assert f"Stop the worker (pid {worker['pid']})?" in shown(app, "#confirm-question")
        await pilot.press("n")
        await settle(pilot)
        assert live_workers(tmp_path) and type(app.screen).__name__ == "QueueScreen"
        await pilot.press("W", "y")
        await settle(pilot)
        assert not live_workers(tmp_path)
        assert app.sub_title == "worker: stopped"

    try:
        drive(tmp_path, scenario)
    finally:
        stop_workers(tmp_path)  # never leave a worker behind when the test fails halfway


def test_importing_the_app_loads_no_training_or_plotting_stack():
    heavy = ("torch", "timm", "scipy", "matplotlib", "numpy")
    code = f"import sys, tui_app.app; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


# --- what a user trial found (one test or more per finding)
def test_the_form_checks_a_typed_model_as_queue_add_does_and_queues_nothing(tmp_path):
    """The trial's keys: presets, the fourth preset (digits-quick), its form, the model field."""
    async def scenario(app, pilot):
        from textual.widgets import Input

        await pilot.press("1", "down", "down", "down", "enter")
        await settle(pilot)
        await pilot.press("tab", "tab", "tab", "tab")
        assert app.focused is app.screen.query_one("#field-model", Input)
        await pilot.press(*"foo_net", "ctrl+s")
        await settle(pilot)
        assert type(app.screen).__name__ == "QueueFormScreen"
        assert "unknown model 'foo_net'" in shown(app, "#error-model")
        assert shown(app, "#form-summary").startswith("fix the field marked above")

    drive(tmp_path, scenario)
    assert not history_path(tmp_path).exists()


def test_the_form_queues_nothing_while_its_check_is_still_running(tmp_path, monkeypatch):
    import threading

    import tui_app.screens.queue_form
    from engine.errors import BadInput

    looked_up = threading.Event()
    release = threading.Event()

    def slow_lookup(name: str) -> None:  # timm's model list takes seconds to load
        if name != "small_cnn":
            looked_up.set()
            release.wait(10)
            raise BadInput(f"unknown model {name!r}")

    monkeypatch.setattr(tui_app.screens.queue_form, "check_model_known", slow_lookup)

    async def scenario(app, pilot):
        from textual.widgets import Button, Input

        await open_preset_form(app, pilot, "digits-quick")
        app.screen.query_one("#field-model", Input).value = "slow_net"
        await pilot.pause(0.5)
        assert looked_up.is_set()
        assert shown(app, "#form-summary").startswith("checking…")
        assert app.screen.query_one("#submit", Button).disabled
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
        release.set()
        await settle(pilot)
        assert "unknown model 'slow_net'" in shown(app, "#error-model")
        assert type(app.screen).__name__ == "QueueFormScreen"

    try:
        drive(tmp_path, scenario)
    finally:
        release.set()
    assert not history_path(tmp_path).exists()


def test_more_refuses_a_field_set_above_and_names_every_error(tmp_path):
    async def scenario(app, pilot):
        await open_preset_form(app, pilot, "digits-quick")
        await set_field(app, pilot, "more", "lr=0.1 sampler=p-sgd,unif-sgd")
        assert "sampler has its own field above: set it there" in shown(app, "#error-more")
        await set_field(app, pilot, "more", "colour=red epochs=many lr=0.1 budget=0.2")
        errors = shown(app, "#error-more")
        assert "unknown config key 'colour'" in errors and "epochs" in errors and "budget has its own field" in errors
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert type(app.screen).__name__ == "QueueFormScreen"

    drive(tmp_path, scenario)
    assert not history_path(tmp_path).exists()


@pytest.mark.parametrize("size", SIZES)
def test_the_queue_button_shows_its_whole_label(tmp_path, size):
    async def scenario(app, pilot):
        from textual.widgets import Button

        await open_preset_form(app, pilot, "digits-quick")
        await set_field(app, pilot, "seeds", "")
        for digit in "1000":  # typed: the label grows a character at a time, each one checked
            await pilot.press(digit)
            await settle(pilot)
        button = app.screen.query_one("#submit", Button)
        assert str(button.label) == "Queue 1000 runs"
        await pilot.pause()
        assert button.content_region.width >= len("Queue 1000 runs")

    drive(tmp_path, scenario, SIZES[size])


def test_cancelling_a_running_run_or_stopping_the_worker_asks_first(home, monkeypatch):
    import engine.queue

    stopped = []
    monkeypatch.setattr(engine.queue, "terminate_group", lambda process, grace_s: stopped.append(process["pid"]))

    async def scenario(app, pilot):
        from tui_app.widgets.run_table import RunTable

        await pilot.press("2")
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        assert table.cursor_key == "19"
        await pilot.press("c")
        await settle(pilot)
        assert type(app.screen).__name__ == "ConfirmScreen"
        assert shown(app, "#confirm-question").startswith("Cancel run 19? It is running")
        await pilot.press("n")
        await settle(pilot)
        assert Store(history_path(home)).get_run(19)["state"] == "running" and not stopped
        await pilot.press("c", "y")
        await settle(pilot)
        assert Store(history_path(home)).get_run(19)["state"] == "cancelled" and stopped == [os.getpid()]
        assert cell_text(table.cells("19")["state"]) == "cancelled"  # still listed, so r reaches it
        await pilot.press("W")  # no worker runs: nothing to ask
        await settle(pilot)
        assert type(app.screen).__name__ == "QueueScreen"
        assert any("no worker running" in text for text in toasts(app))

    drive(home, scenario)


def test_compare_at_80x24_scrolls_its_body_and_draws_a_few_curves_a_chart(home):
    async def scenario(app, pilot):
        from textual.containers import ScrollableContainer

        from tui_app.widgets.chart_view import ChartView

        await pilot.press("4")
        await settle(pilot)
        body = app.screen.query_one("#compare-body", ScrollableContainer)
        assert app.focused is body
        await pilot.press("pagedown")
        assert body.scroll_y > 0
        await pilot.press("end")
        await pilot.pause()
        assert body.scroll_y == body.max_scroll_y > 0
        await pilot.press("right")
        await pilot.pause()
        assert body.scroll_x > 0  # the pivot is wider than 80 columns
        curves = list(app.screen.query(".curve-chart").results(ChartView))
        assert len(curves) == 2  # eight curves: two charts of four
        for view in curves:
            assert len(view.chart.series) == 4 and all(series.yerr is None for series in view.chart.series)
        legend = plain(app.screen.query_one("#budget-chart", ChartView).render())
        for label in ("unif-sgd / standard", "unif-sgd / mixup", "p-sgd / standard", "p-sgd / mixup"):
            assert label in legend
        assert "…" not in legend

    drive(home, scenario, (80, 24))


def test_split_curves_keeps_every_curve_and_at_most_four_a_chart():
    from engine.analysis.plots import Chart, Series
    from tui_app.screens.compare import split_curves

    curves = Chart("curves", "steps", "acc", [Series(f"c{index}", [1, 2], [3, 4], [0.1, 0.2]) for index in range(6)])
    charts = split_curves(curves)
    assert [[series.label for series in chart.series] for chart in charts] == [["c0", "c1", "c2"], ["c3", "c4", "c5"]]
    assert [chart.title for chart in charts] == ["curves (1 of 2)", "curves (2 of 2)"]
    assert split_curves(Chart("one", "x", "y", curves.series[:2]))[0].title == "one"


def test_the_queue_at_80_columns_keeps_seed_priority_and_preset_and_scrolls_by_column(home):
    async def scenario(app, pilot):
        from tui_app.widgets.run_table import RunTable

        await pilot.press("2")
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        assert [column.key for column in table.shown_columns] == [
            "id", "state", "eta", "sampler", "budget", "aug", "seed", "prio", "preset"]
        assert table.virtual_size.width <= table.scrollable_content_region.width  # nothing past the edge

        await pilot.press("3")
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        await pilot.press("right")
        await pilot.pause()
        assert table.scroll_offset.x == 6  # the id column and its space
        await pilot.press("right")
        await pilot.pause()
        assert table.scroll_offset.x == 6 + 12
        await pilot.press("left")
        await pilot.pause()
        assert table.scroll_offset.x == 6

    drive(home, scenario, (80, 24))


def test_a_resumed_run_shows_no_stale_progress_and_a_starting_run_says_why(home):
    Store(history_path(home)).update_run(19, started_at=(NOW - dt.timedelta(seconds=12)).isoformat())

    async def scenario(app, pilot):
        from tui_app.screens.run_detail import RunDetailScreen
        from tui_app.widgets.run_table import RunTable

        await pilot.press("2")
        await settle(pilot)
        cells = {key: cell_text(value) for key, value in app.screen.query_one(RunTable).cells("19").items()}
        # progress.json is the last attempt's (written before this one started): not shown.
        assert (cells["state"], cells["acc"], cells["eta"]) == ("starting…", "-", "~")
        assert "1 starting: loading torch…" in shown(app, "#queue-summary")
        await app.push_screen(RunDetailScreen(19, "queue"))
        await settle(pilot)
        assert "starting: loading torch… (12 s so far)" in shown(app, "#detail-state")

    drive(home, scenario)


def test_the_eta_shows_a_tilde_until_the_engine_has_an_estimate(home):
    progress = json.loads((home / "19" / PROGRESS_NAME).read_text())
    (home / "19" / PROGRESS_NAME).write_text(json.dumps({**progress, "eta_s": None}))

    async def scenario(app, pilot):
        from tui_app.widgets.run_table import RunTable

        await pilot.press("2")
        await settle(pilot)
        assert cell_text(app.screen.query_one(RunTable).cells("19")["eta"]) == "~"

    drive(home, scenario)


def test_the_eta_comes_from_the_average_rate_since_training_began(tmp_path, monkeypatch):
    import engine.runs

    now = [0.0]
    monkeypatch.setattr(engine.runs.time, "monotonic", lambda: now[0])
    writer = engine.runs.ProgressWriter(tmp_path / PROGRESS_NAME)
    now[0] = 6.0  # the data took 6 s to load
    writer.update({"event": "start", "plan": {"total_steps": 100, "epochs": 2}, "epoch": 0, "device": "cpu"})
    etas = []
    for step in (10, 20, 30, 40):
        now[0] += 1.0
        writer.update({"event": "step", "epoch": 1, "step": step, "total_steps": 100})
        etas.append(writer.state["eta_s"])
    # Nothing for the first reports (warm-up), then the remaining steps at the average rate:
    # ten steps a second since training began, not counting the data loading.
    assert etas == [None, None, 7.0, 6.0]


def test_the_run_commands_progress_bar_uses_the_same_steady_eta(monkeypatch):
    import tui_app.progress

    clock = iter(float(second) for second in range(100))
    monkeypatch.setattr(tui_app.progress.time, "monotonic", lambda: next(clock))
    bar = tui_app.progress.RunProgress("run 1")
    bar.update({"event": "start", "plan": {"total_steps": 100, "epochs": 1}, "device": "cpu"})
    shown_etas = []
    for step in (10, 20, 30):
        bar.update({"event": "step", "epoch": 1, "step": step, "total_steps": 100})
        shown_etas.append(bar.progress.tasks[0].fields["eta"])
    assert shown_etas == ["~", "~", "0:00:07"]


def test_history_sort_keeps_narrow_labels_says_its_order_and_filters_speak_plainly(home):
    async def scenario(app, pilot):
        from tui_app.widgets.run_table import RunTable

        await pilot.press("3")
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        for _ in range(6):  # id -> state -> acc -> sampler -> budget -> aug -> seed, as the columns run
            await pilot.press("s")
        await settle(pilot)
        assert table.sorted_by == ("seed", False)
        header = table._header_text().plain
        assert "▲seed" in header  # the label whole, the arrow in the space before it
        assert "sorted by seed, lowest first" in shown(app, "#history-summary")

        await pilot.press("slash", *"sampler=magic")
        await settle(pilot)
        error = shown(app, ".filter-bar .field-error")
        assert "sampler='magic' is not valid; choose one of" in error and "--where" not in error
        app.screen.query_one(".filter-bar Input").value = "oops"
        await settle(pilot)
        assert shown(app, ".filter-bar .field-error").strip() == "expected key=value, got 'oops'"
        app.screen.query_one(".filter-bar Input").value = "sampler=sb"
        await pilot.press("enter")
        await settle(pilot)
        assert shown(app, "#history-summary").startswith("1 of 19 finished runs ·")

    drive(home, scenario)


def test_the_palette_lists_every_screens_actions_before_textuals_own(home):
    async def scenario(app, pilot):
        from textual.command import CommandList

        await pilot.press("ctrl+p")
        await settle(pilot)
        await pilot.pause(0.5)
        titles = [str(option.prompt).split("\n")[0] for option in app.screen.query_one(CommandList).options]
        assert titles[:4] == ["Go to compare", "Go to history", "Go to presets", "Go to queue"]
        for action in ("Queue: Cancel the selected run (asks first if it is running)", "History: Sort by the next column",
                       "Compare: Compare the next metric", "Start a worker in the background"):
            assert action in titles
        ours = max(titles.index(title) for title in titles if title.startswith(("Queue:", "History:", "Compare:")))
        assert all(titles.index(generic) > ours for generic in ("Theme", "Keys", "Copy selected text"))
        await pilot.press(*"sort by the next column", "enter")
        await settle(pilot)
        assert type(app.screen).__name__ == "HistoryScreen" and app.screen.sort.column == "state"

    drive(home, scenario)


def test_worker_slots_and_counts_read_as_words():
    from tui_app.app import worker_status
    from tui_app.screens.history import runs_word

    assert worker_status([{"pid": 7, "slots": ["inherit"]}]) == "worker: running (pid 7, CUDA_VISIBLE_DEVICES inherited)"
    assert worker_status([{"pid": 7, "slots": ["gpu 0", "gpu 1"]}]) == "worker: running (pid 7, gpu 0, gpu 1)"
    assert (runs_word(1), runs_word(2)) == ("1 finished run", "2 finished runs")


def test_the_log_tail_reads_as_words():
    from tui_app.formatting import log_line

    start = {"event": "start", "plan": {"total_steps": 279, "epochs": 3, "steps_per_epoch": 93}, "device": "cpu",
             "epoch": 0}
    epoch = {"event": "epoch", "total_epochs": 3, "total_steps": 279, "epoch": 1, "step": 93, "train_loss": 0.93008,
             "test_acc": 0.7684, "images_per_s": 2262.28}
    assert log_line(json.dumps(start)) == "start on cpu: 279 steps in 3 epochs of 93"
    assert log_line(json.dumps(epoch)) == "epoch 1/3 · step 93/279 · train loss 0.9301 · test acc 76.84% · 2,262 images/s"
    assert log_line(json.dumps({"event": "resume", "epoch": 2, "step": 186})) == "resume after epoch 2 (step 186)"
    assert log_line(json.dumps({"event": "done", "summary": {"final_test_acc": 0.8542, "steps": 279}})) == (
        "done: final test acc 85.42% after 279 steps")
    assert log_line("--- 2025-03-01T12:00:00+00:00 start on cpu") == "--- 2025-03-01T12:00:00+00:00 start on cpu"
    assert log_line('["not", "an", "event"]') == '["not", "an", "event"]'


def test_flops_read_the_same_in_compare_and_in_a_runs_detail(home):
    async def scenario(app, pilot):
        from textual.widgets import DataTable, Select

        from tui_app.screens.run_detail import RunDetailScreen

        await pilot.press("4")
        await settle(pilot)
        app.screen.query_one("#metric", Select).value = "flops_train"
        await settle(pilot)
        pivot = app.screen.query_one("#pivot", DataTable)
        assert str(pivot.get_row_at(0)[1]) == "120G±0 base"  # 6 epochs x 2e10 FLOPs
        await app.push_screen(RunDetailScreen(16, "history"))
        await settle(pilot)
        assert "120 GFLOP" in shown(app, "#detail-state")
        assert app.screen.query_one("#detail-chart").chart.x_label == "optimiser steps"

    drive(home, scenario)


# --- snapshots: every screen at 80x24 and 120x40
SNAPSHOT_KEYS = {
    "presets": ["end", "up"],  # mini-study: the user preset with a grid
    "queue_form": ["end", "up", "enter"],
    "queue_form_invalid": ["end", "up", "enter", "down", "down", "ctrl+u", *"1.5"],
    "queue": ["2"],
    "history": ["3"],
    "compare": ["4"],
    "run_detail_done": ["3", "down", "down", "down", "enter"],
    "run_detail_failed": ["3", "down", "down", "enter"],
    "help": ["question_mark"],
    "confirm_cancel": ["2", "c"],  # run 19 is running: asked first
    "compare_end": ["4", "end"],  # the body scrolled to its last chart
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("screen", SNAPSHOT_KEYS)
def test_screen_snapshots(snap_compare, tmp_path, screen, size):
    from textual.widgets import Input

    async def run_before(pilot) -> None:
        await settle(pilot)
        for key in SNAPSHOT_KEYS[screen]:
            await pilot.press(key)
            await settle(pilot)
        for field in pilot.app.screen.query(Input):
            field.cursor_blink = False  # a blinking cursor would make the picture depend on timing
        await pilot.pause()

    assert snap_compare(make_app(build_home(tmp_path / "home")), terminal_size=SIZES[size], run_before=run_before)
