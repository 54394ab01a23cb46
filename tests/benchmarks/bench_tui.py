"""TUI start-up and refresh cost as the history grows (100 and 10,000 runs).

Per size, median of several repeats, in seconds:
  first frame           App.run_test until the first screen is mounted and drawn
  first data            ... until the first read of the history was handed to the screen
  process first frame   `budget-tui --home H` in an 80x24 tmux pane until the screen shows
                        (Python start-up and imports included; skipped without tmux)
  queue refresh         one refresh after the history file changed: read + queue table update
  queue refresh idle    one refresh with the history unchanged (stat + progress files)
  history refresh       one refresh after the history file changed: read, rows rebuilt in a
                        thread, table update and the sparklines of the rows in view
  history page down     one page further down the history: sparklines of the new rows read

Targets: first frame < 1 s, refresh < 0.2 s. Each home holds 2 running runs (with
progress files), 20 queued ones and finished runs with 20-epoch metrics files.

Start-up (--startup-only skips the table above), min and median over --processes fresh
processes, beside the goal:
  import tui_app.app    seconds to import the app module (interpreter start-up excluded)
  first frame, N runs   `budget-tui --home H` in an 80x24 tmux pane until the first screen
                        shows, interpreter start-up included (polled every 10 ms)
With --against REF (a git commit, e.g. main) the same is measured on a checkout of REF in
a temporary git worktree, in the same run, and shown beside this code's numbers.

    python tests/benchmarks/bench_tui.py [--sizes 100,10000] [--repeats 5]
    python tests/benchmarks/bench_tui.py --startup-only --processes 9 --against main
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' helpers

from engine.config import RunConfig  # noqa: E402
from engine.paths import METRICS_NAME, PROGRESS_NAME, history_path  # noqa: E402
from engine.processes import process_identity  # noqa: E402
from engine.records import new_record  # noqa: E402
from engine.store import Store  # noqa: E402
from test_tui import settle  # noqa: E402
from tui_app.app import BudgetTuiApp  # noqa: E402
from tui_app.widgets.run_table import RunTable  # noqa: E402

SAMPLERS = ("unif-sgd", "p-sgd", "c-sgd", "sb", "ub", "infobatch")
RUNNING, QUEUED = 2, 20


def build_home(home: Path, size: int) -> Store:
    records = []
    for index in range(size):
        run_id = index + 1
        config = RunConfig(sampler=SAMPLERS[index % len(SAMPLERS)], budget=(0.2, 0.3, 1.0)[index % 3], seed=index % 5)
        state = "running" if index < RUNNING else "queued" if index < RUNNING + QUEUED else "done"
        record = new_record(config, "bench", state=state)
        folder = home / str(run_id)
        record["run_dir"] = str(folder)
        folder.mkdir(parents=True)
        final = 0.9 + 0.0001 * (index % 500)
        if state == "running":
            record["process"] = process_identity(os.getpid())
            (folder / PROGRESS_NAME).write_text(json.dumps({
                "steps": 1000, "epochs": 20, "epoch": 5, "step": 250, "test_acc": 0.8, "images_per_s": 9000.0,
                "eta_s": 120.0, "updated_at": time.time()}))
        if state == "done":
            record.update(finished_at=record["created_at"], outcome={"exit_code": 0, "message": "ok"},
                          summary={"final_test_acc": final, "best_test_acc": final})
            rows = [{"epoch": epoch, "step": 50 * epoch, "test_acc": final * epoch / 20, "train_loss": 2 / epoch,
                     "usage_entropy": 7.2, "distinct_seen": 1000} for epoch in range(1, 21)]
            (folder / METRICS_NAME).write_text("".join(json.dumps(row) + "\n" for row in rows))
        records.append(record)
    store = Store(history_path(home))
    store.add_runs(records)
    return store


def median(values: list[float]) -> float:
    return statistics.median(values)


async def until(condition: Callable[[], bool], timeout_s: float = 60.0) -> float:
    """Seconds until `condition` holds, checked every millisecond between the app's messages."""
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError("the app did not get there")
        await asyncio.sleep(0.001)
    return time.perf_counter() - start


def plain(cell: object) -> str:
    return getattr(cell, "plain", cell)


async def in_app(home: Path, store: Store, repeats: int) -> dict[str, float]:
    frames, data = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        app = BudgetTuiApp(home)
        async with app.run_test(size=(80, 24)) as pilot:
            frames.append(time.perf_counter() - start)
            await until(lambda: app.snapshot.loaded)
            data.append(time.perf_counter() - start)

    app = BudgetTuiApp(home, refresh_interval_s=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        queued, changed, idle = str(RUNNING + 1), [], []
        for repeat in range(1, repeats + 1):
            store.update_run(int(queued), priority=repeat)  # the history file is rewritten
            app.request_refresh()
            changed.append(await until(lambda: plain(table.cells(queued)["prio"]) == str(repeat)))
            await settle(pilot)
        for _ in range(repeats):
            before = app.snapshot
            app.request_refresh()
            idle.append(await until(lambda: app.snapshot is not before))
            await settle(pilot)
        results = {"queue refresh": median(changed), "queue refresh idle": median(idle)}

        await pilot.press("3")
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        done, changed, pages = table.keys[0], [], []
        for repeat in range(1, repeats + 1):
            store.update_run(int(done), summary={"final_test_acc": repeat / 100})
            app.request_refresh()
            changed.append(await until(lambda: plain(table.cells(done)["acc"]) == f"{repeat / 100:.1%}"))
            await settle(pilot)
        for _ in range(repeats):
            start = time.perf_counter()
            await pilot.press("pagedown")
            await until(lambda: all(plain(table.cells(key)["curve"]).strip() for key in table.visible_keys()))
            pages.append(time.perf_counter() - start)
        results.update({"history refresh": median(changed), "history page down": median(pages)})
    return {"first frame": median(frames), "first data": median(data), **results}


def process_first_frame(home: Path, repeats: int) -> float | None:
    if shutil.which("tmux") is None:
        return None
    from test_tui_pty import BUDGET_TUI, Pane

    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            pane = Pane(Path(folder), f"env TERM=xterm-256color {BUDGET_TUI} --home {home}")
            try:
                pane.wait_for("1 Presets", "quit")
                times.append(time.perf_counter() - start)
            finally:
                pane.close()
    return median(times)


STARTUP_GOAL_S = 0.5  # first frame of a fresh process, on an idle machine
REPOSITORY = Path(__file__).resolve().parents[2]
IMPORT_APP = "import time; start = time.perf_counter(); import tui_app.app; print(time.perf_counter() - start)"
# The console script's entry point (a checkout from before tui_app.launch used the CLI's).
RUN_CLI = "import sys; from {module} import main; sys.argv[0] = 'budget-tui'; sys.exit(main())"


def entry_point(root: Path) -> str:
    """The module of the console script's `main` in checkout `root`. Looked up by file: an
    editable install would find a module missing from `root` in the installed tree."""
    return "tui_app.launch" if (root / "tui_app" / "launch.py").exists() else "tui_app.cli"


def code_env(root: Path) -> dict[str, str]:
    """The environment that makes this interpreter import the project from `root`."""
    return {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "0"}


def import_times(root: Path, processes: int) -> list[float]:
    return [float(subprocess.run([sys.executable, "-c", IMPORT_APP], env=code_env(root), cwd=root, check=True,
                                 capture_output=True, text=True).stdout) for _ in range(processes)]


def first_frames(root: Path, home: Path, processes: int) -> list[float]:
    """Seconds from launching a fresh `budget-tui --home H` until its first screen shows."""
    from test_tui_pty import Pane

    command = f"env TERM=xterm-256color PYTHONPATH={root} {sys.executable} -c \"{RUN_CLI.format(module=entry_point(root))}\" --home {home}"
    times = []
    for _ in range(processes):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            pane = Pane(Path(folder), command)
            try:
                while not all(text in pane.screen() for text in ("1 Presets", "quit")):
                    if time.perf_counter() - start > 30:
                        raise TimeoutError(f"no first frame; the pane reads:\n{pane.screen()}")
                    time.sleep(0.01)
                times.append(time.perf_counter() - start)
            finally:
                pane.close()
    return times


def startup(roots: dict[str, Path], sizes: list[int], processes: int) -> None:
    """Print min / median of each start-up measure for each checkout, beside the goal."""
    rows: dict[str, dict[str, list[float]]] = {"import tui_app.app": {}}
    for name, root in roots.items():
        import_times(root, 1)  # compiles the checkout's bytecode once, outside the timing
        rows["import tui_app.app"][name] = import_times(root, processes)
    for size in sizes:
        with tempfile.TemporaryDirectory() as folder:
            home = Path(folder)
            build_home(home, size)
            rows[f"first frame, {size} runs"] = {name: first_frames(root, home, processes)
                                                 for name, root in roots.items()}
    print(f"start-up, seconds over {processes} fresh processes (load before: {os.getloadavg()[0]:.2f})")
    print(f"{'':<24}" + "".join(f"{f'{name} min / median':>24}" for name in roots) + f"{'goal':>8}")
    for measure, by_code in rows.items():
        goal = f"{STARTUP_GOAL_S:>8.2f}" if measure.startswith("first frame") else f"{'-':>8}"
        print(f"{measure:<24}" + "".join(
            f"{f'{min(values):.3f} / {median(values):.3f}':>24}" for values in by_code.values()) + goal)


def checkout(ref: str, folder: Path) -> Path:
    """A checkout of `ref` in a temporary git worktree under `folder`."""
    root = folder / "checkout"
    subprocess.run(["git", "-C", str(REPOSITORY), "worktree", "add", "--detach", str(root), ref], check=True,
                   capture_output=True)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,10000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--processes", type=int, default=7, help="fresh processes per start-up measure")
    parser.add_argument("--against", metavar="REF", help="also measure the start-up of git commit REF")
    parser.add_argument("--startup-only", action="store_true", help="measure the start-up only")
    arguments = parser.parse_args()
    sizes = [int(value) for value in arguments.sizes.split(",")]
    if shutil.which("tmux") is None:
        print("start-up: skipped (tmux is not installed)")
    else:
        with tempfile.TemporaryDirectory() as folder:
            roots = {"this code": REPOSITORY}
            if arguments.against:
                roots = {arguments.against: checkout(arguments.against, Path(folder)), **roots}
            try:
                startup(roots, sizes, arguments.processes)
            finally:
                if arguments.against:
                    subprocess.run(["git", "-C", str(REPOSITORY), "worktree", "remove", "--force",
                                    str(roots[arguments.against])], capture_output=True)
    if arguments.startup_only:
        return
    columns: dict[int, dict[str, float | None]] = {}
    for size in sizes:
        with tempfile.TemporaryDirectory() as name:
            home = Path(name)
            store = build_home(home, size)
            columns[size] = {**asyncio.run(in_app(home, store, arguments.repeats)),
                             "process first frame": process_first_frame(home, arguments.repeats)}
    names = list(columns[sizes[0]])
    print(f"{'seconds (median)':<22}" + "".join(f"{f'{size} runs':>13}" for size in sizes)
          + (f"{'ratio':>8}" if len(sizes) > 1 else ""))
    for measure in names:
        values = [columns[size][measure] for size in sizes]
        line = f"{measure:<22}" + "".join(f"{value:>13.3f}" if value is not None else f"{'-':>13}" for value in values)
        if len(sizes) > 1 and None not in values and values[0]:
            line += f"{values[-1] / values[0]:>8.1f}"
        print(line)


if __name__ == "__main__":
    main()
