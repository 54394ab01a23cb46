"""Where things live: the home (history, run folders, user presets) and the data root.

Precedence (DESIGN.md): an explicit option, then the environment, then the default.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "BUDGET_TUI_HOME"
DATA_ENV = "BUDGET_TUI_DATA"


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
