"""The `budget-tui` console script: the terminal UI at once when no command is given, the
Typer CLI (tui_app.cli) for everything else.

Opening the UI through Typer costs about a tenth of a second before the first frame: typer
and click are imported and the options are coerced through pydantic. A command line that can
only mean "open the UI" -- nothing, or just --home/--data-root with their values -- skips all
of that and does what the CLI's callback does. Anything else, shell completion included, goes
to the CLI unchanged, so its parsing and messages stay the only ones.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

UI_OPTIONS = {"--home": "home", "--data-root": "data_root"}
COMPLETION_ENV = "_BUDGET_TUI_COMPLETE"  # set by the shell's completion script: the CLI answers


def ui_options(arguments: list[str]) -> dict[str, str] | None:
    """{'home': ..., 'data_root': ...} (those given) when `arguments` only open the UI, else
    None. Only plain, unrepeated `--home X`, `--home=X` (and the same for --data-root) count;
    an empty value, an abbreviation or a second copy is the CLI's to judge."""
    options: dict[str, str] = {}
    rest = list(arguments)
    while rest:
        name, equals, value = rest.pop(0).partition("=")
        if name not in UI_OPTIONS or UI_OPTIONS[name] in options:
            return None
        if not equals:
            if not rest or rest[0].startswith("-"):
                return None
            value = rest.pop(0)
        if not value:
            return None
        options[UI_OPTIONS[name]] = value
    return options


def open_ui(home: str | None, data_root: str | None) -> None:
    """What the CLI's callback does without a command, with its one-line errors."""
    from engine.errors import TRACEBACK_ENV, BudgetTuiError, explain
    from engine.paths import DATA_ENV, HOME_ENV, resolve_home

    try:
        # Given here, --home/--data-root apply to the UI and to any worker it starts.
        if home is not None:
            os.environ[HOME_ENV] = str(Path(home).expanduser().resolve())
        data_path = Path(data_root).expanduser().resolve() if data_root is not None else None
        if data_path is not None:
            os.environ[DATA_ENV] = str(data_path)
        from tui_app.app import run_tui

        run_tui(resolve_home(home), data_path)
    except Exception as error:
        if os.environ.get(TRACEBACK_ENV) and not isinstance(error, BudgetTuiError):
            raise
        message, exit_code = explain(error)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(exit_code)


def main() -> None:
    """Console-script entry point."""
    options = None if os.environ.get(COMPLETION_ENV) else ui_options(sys.argv[1:])
    if options is None:
        from tui_app.cli import main as cli_main

        cli_main()
        return
    open_ui(options.get("home"), options.get("data_root"))


if __name__ == "__main__":
    main()
