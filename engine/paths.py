"""Where things live: the home (history, run folders, user presets) and the data root.

Precedence (DESIGN.md): an explicit option, then the environment, then the default.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "BUDGET_TUI_HOME"
DATA_ENV = "BUDGET_TUI_DATA"

# The files of a run folder <home>/<id>/.
CHECKPOINT_NAME = "checkpoint.pt"  # resume point, rewritten every epoch
METRICS_NAME = "metrics.jsonl"  # one line per epoch
SUMMARY_NAME = "summary.json"
USAGE_NAME = "usage.npy"  # per-sample usage counts; numpy, so the analysis reads it without torch
PROGRESS_NAME = "progress.json"  # live progress, its time stamp is the heartbeat
TRACEBACK_NAME = "traceback.txt"
LOG_NAME = "log.txt"  # the run process's stdout and stderr
# What a run computed: removed when it is retried from scratch (the log is kept, appended to).
RESULT_NAMES = (CHECKPOINT_NAME, METRICS_NAME, SUMMARY_NAME, USAGE_NAME, PROGRESS_NAME, TRACEBACK_NAME)


def resolve_home(option: str | Path | None = None) -> Path:
    """--home > $BUDGET_TUI_HOME > ./runs, made absolute so child processes agree."""
    chosen = option or os.environ.get(HOME_ENV) or "runs"
    return Path(chosen).expanduser().resolve()


def resolve_data_root(option: str | Path | None, home: Path) -> Path:
    """--data-root > $BUDGET_TUI_DATA > <home>/data."""
    chosen = option or os.environ.get(DATA_ENV)
    return Path(chosen).expanduser().resolve() if chosen else home / "data"


def history_path(home: Path) -> Path:
    return home / "history.json"


def run_dir(home: Path, run_id: int) -> Path:
    return home / str(run_id)


def user_presets_dir(home: Path) -> Path:
    return home / "presets"
