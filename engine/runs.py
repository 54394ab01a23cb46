"""Run records and their life cycle: create, execute in this process, record the outcome.

The CLI's `run` and (later) the worker's child both go through `execute_run`, so a run's
record always ends in done, failed or interrupted with its summary or error kept.
Imports the training engine (torch) only inside `execute_run`.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from engine import __version__
from engine.config import RunConfig
from engine.paths import run_dir
from engine.store import Store

PROGRESS_MIN_INTERVAL_S = 2.0  # the store is rewritten whole; don't do it every step
TRACEBACK_NAME = "traceback.txt"
CONFIG_NAME = "config.json"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


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
    """Train run `run_id` here and now, keeping its record up to date; returns the summary.

    A training error marks the run failed (message + traceback file) and is re-raised;
    Ctrl-C marks it interrupted (it resumes from its last checkpoint).
    """
    from engine.train.loop import train  # torch is imported only when a run really starts

    folder = run_dir(home, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
    store.update_run(run_id, state="running", started_at=now(), run_dir=str(folder))
    last_write = 0.0
    started = time.monotonic()

    def handle(event: dict[str, Any]) -> None:
        nonlocal last_write
        if on_event is not None:
            on_event(event)
        if event["event"] == "epoch":
            moment = time.monotonic()
            final = event["epoch"] == event["total_epochs"]
            if moment - last_write >= PROGRESS_MIN_INTERVAL_S or final:
                last_write = moment
                store.update_run(run_id, progress=progress_from_event(event, moment - started))

    try:
        summary = train(config, folder, data_root=data_root, on_event=handle, data=data)
    except KeyboardInterrupt:
        store.update_run(run_id, state="interrupted", finished_at=now(),
                         outcome={"exit_code": 130, "message": "interrupted by the user"})
        raise
    except BaseException as error:
        trace = folder / TRACEBACK_NAME
        trace.write_text(traceback.format_exc(), encoding="utf-8")
        store.update_run(run_id, state="failed", finished_at=now(), outcome={
            "exit_code": 1, "message": f"{type(error).__name__}: {error}", "traceback_file": str(trace),
        })
        raise
    store.update_run(run_id, state="done", finished_at=now(), summary=summary,
                     outcome={"exit_code": 0, "message": "ok"})
    return summary


def progress_from_event(event: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
    """The compact progress a queue view shows, from an epoch event."""
    done_fraction = event["step"] / max(1, event["total_steps"])
    remaining = elapsed_s * (1 - done_fraction) / done_fraction if done_fraction > 0 else None
    return {
        "epoch": event["epoch"],
        "epochs": event["total_epochs"],
        "step": event["step"],
        "steps": event["total_steps"],
        "test_acc": event["test_acc"],
        "images_per_s": event["images_per_s"],
        "eta_s": remaining,
    }
