"""Run records and their life cycle: create, execute in this process, record the outcome.

The CLI's `run` and (later) the worker's child both go through `execute_run`, so a run's
record always ends in done, failed or interrupted with its summary or error kept.
Imports the training engine (torch) only inside `execute_run`.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import platform
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from engine import __version__
from engine.config import RunConfig
from engine.paths import PROGRESS_NAME, TRACEBACK_NAME, run_dir
from engine.store import Store

PROGRESS_MIN_INTERVAL_S = 1.0  # progress.json rewrites per run, at most this often
CONFIG_NAME = "config.json"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=source, capture_output=True,
            text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{__version__}+{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def new_record(config: RunConfig, preset: str, *, state: str = "queued", priority: int = 0) -> dict[str, Any]:
    return {
        "preset": preset,
        "config": config.to_dict(),
        "state": state,
        "priority": priority,
        "created_at": now(),
        "started_at": None,
        "finished_at": None,
        "progress": {},
        "summary": None,
        "outcome": None,
        "provenance": {"version": code_version(), "host": platform.node(), "python": platform.python_version()},
    }


def execute_run(
    store: Store,
    home: Path,
    run_id: int,
    config: RunConfig,
    *,
    data_root: Path,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    data: Any = None,
) -> dict[str, Any]:
    """Train run `run_id` in this process, keeping its record up to date; returns the summary.

    The record names this process (pid + start time) so a crash is detected; progress
    goes to <run dir>/progress.json, not to the store (a small file, rewritten often).
    A training error marks the run failed (message + traceback file) and is re-raised;
    an interrupt (Ctrl-C, SIGTERM from a worker) marks it interrupted -- it resumes
    from its last checkpoint. A cancel recorded meanwhile is never overwritten.
    """
    from engine.queue import DONE, FAILED, INTERRUPTED, finish_if_running, process_identity
    from engine.train.loop import train  # torch is imported only when a run really starts

    folder = run_dir(home, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
    store.update_run(run_id, state="running", started_at=now(), run_dir=str(folder),
                     process=process_identity(os.getpid()))
    progress = ProgressWriter(folder / PROGRESS_NAME)

    def handle(event: dict[str, Any]) -> None:
        if on_event is not None:
            on_event(event)
        progress.update(event)

    try:
        summary = train(config, folder, data_root=data_root, on_event=handle, data=data)
    except (KeyboardInterrupt, Interrupted):
        finish_if_running(store, run_id, INTERRUPTED,
                          outcome={"exit_code": 130, "message": "interrupted; resumable from its checkpoint"})
        raise
    except BaseException as error:
        trace = folder / TRACEBACK_NAME
        trace.write_text(traceback.format_exc(), encoding="utf-8")
        finish_if_running(store, run_id, FAILED, outcome={
            "exit_code": 1, "message": f"{type(error).__name__}: {error}", "traceback_file": str(trace),
        })
        raise
    finish_if_running(store, run_id, DONE, summary=compact_summary(summary),
                      outcome={"exit_code": 0, "message": "ok"})
    return summary


class Interrupted(Exception):
    """Raised in a run's process when it is asked to stop (SIGTERM); the run is resumable."""


def compact_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary kept in the store: the plan is derivable and stays in summary.json."""
    return {key: value for key, value in summary.items() if key != "plan"}


class ProgressWriter:
    """Keeps <run dir>/progress.json current (at most every PROGRESS_MIN_INTERVAL_S, and at
    every epoch end); its `updated_at` doubles as the run's heartbeat."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = time.monotonic()
        self.last_write = 0.0
        self.start_step: int | None = None  # first step seen by this process, for the rate
        self.state: dict[str, Any] = {}

    def update(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            self.state.update(steps=event["plan"]["total_steps"], epochs=event["plan"]["epochs"],
                              epoch=event["epoch"], device=event["device"])
        elif kind == "resume":
            self.state.update(step=event["step"], epoch=event["epoch"])
        elif kind == "step":
            self.state.update(step=event["step"], epoch=event["epoch"])
        elif kind == "epoch":
            self.state.update(step=event["step"], epoch=event["epoch"], test_acc=event["test_acc"],
                              train_loss=event["train_loss"], images_per_s=event["images_per_s"])
        else:
            return
        moment = time.monotonic()
        if kind == "epoch" or moment - self.last_write >= PROGRESS_MIN_INTERVAL_S:
            self.last_write = moment
            self.state["eta_s"] = self._eta(moment)
            self.state["updated_at"] = time.time()
            write_json_atomic(self.path, self.state)

    def _eta(self, moment: float) -> float | None:
        """Remaining time from the rate of steps done since this process started."""
        step, total = self.state.get("step", 0), self.state.get("steps", 0)
        if self.start_step is None:
            self.start_step = step
            return None
        done = step - self.start_step
        if done <= 0:
            return None
        return (total - step) * (moment - self.started) / done


def read_progress(record: dict[str, Any]) -> dict[str, Any]:
    """The live progress of a run (empty if it has none yet)."""
    folder = record.get("run_dir")
    if not folder:
        return {}
    try:
        return json.loads((Path(folder) / PROGRESS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_json_atomic(path: Path, value: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value), encoding="utf-8")
    os.replace(temporary, path)
