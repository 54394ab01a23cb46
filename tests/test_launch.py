"""The console script's launcher: a command line that only opens the UI skips the Typer CLI;
everything else (commands, bad options, shell completion) reaches the CLI unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tui_app.launch import main as launch_main
from tui_app.launch import ui_options

BUDGET_TUI = Path(sys.executable).with_name("budget-tui")


@pytest.mark.parametrize("arguments, expected", [
    ([], {}),
    (["--home", "h"], {"home": "h"}),
    (["--home=h"], {"home": "h"}),
    (["--data-root", "d", "--home", "h"], {"home": "h", "data_root": "d"}),
    (["--data-root=d"], {"data_root": "d"}),
])
def test_a_command_line_that_only_opens_the_ui(arguments, expected):
    assert ui_options(arguments) == expected


@pytest.mark.parametrize("arguments", [
    ["presets", "ls"], ["--home", "h", "presets"], ["--home"], ["--home", "--data-root", "d"], ["--home="],
    ["--hom", "h"], ["--home", "a", "--home", "b"], ["--version"], ["-h"], ["--help"], ["--json"],
])
def test_anything_else_is_the_clis(arguments):
    assert ui_options(arguments) is None


# A child that runs the launcher with the UI replaced by a print of what it was given.
OPEN_UI_PROBE = """
import sys
import tui_app.app
def run_tui(home, data_root):
    print(home, data_root, "typer" in sys.modules, "pydantic" in sys.modules)
tui_app.app.run_tui = run_tui
from tui_app.launch import main
sys.argv = ["budget-tui", *sys.argv[1:]]
main()
"""


def test_opening_the_ui_does_not_import_the_cli(tmp_path):
    home, data = tmp_path / "home", tmp_path / "data"
    child = subprocess.run([sys.executable, "-c", OPEN_UI_PROBE, "--home", str(home), "--data-root", str(data)],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "BUDGET_TUI_HOME": ""})
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == [str(home.resolve()), str(data.resolve()), "False", "False"]


def test_a_failure_before_the_ui_is_one_line_with_its_exit_code(monkeypatch, capsys):
    import tui_app.app
    from engine.errors import BadInput

    def run_tui(home, data_root):
        raise BadInput("the home is not a folder")

    monkeypatch.setattr(tui_app.app, "run_tui", run_tui)
    monkeypatch.setattr(sys, "argv", ["budget-tui", "--home", "somewhere"])
    monkeypatch.delenv("_BUDGET_TUI_COMPLETE", raising=False)
    with pytest.raises(SystemExit) as exited:
        launch_main()
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: the home is not a folder\n"


@pytest.mark.skipif(not BUDGET_TUI.exists(), reason="the budget-tui console script is not installed")
def test_the_console_script_leaves_bad_options_and_completion_to_the_cli(tmp_path):
    missing = subprocess.run([str(BUDGET_TUI), "--home"], capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        "error: Option '--home' requires an argument."]
    completion = {**os.environ, "_BUDGET_TUI_COMPLETE": "complete_bash", "COMP_WORDS": "budget-tui qu",
                  "COMP_CWORD": "1"}
    completed = subprocess.run([str(BUDGET_TUI)], env=completion, capture_output=True, text=True, timeout=120,
                               stdin=subprocess.DEVNULL)
    assert completed.returncode == 0 and "queue" in completed.stdout.split(), completed


def test_the_console_script_is_the_launcher():
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["budget-tui"] == "tui_app.launch:main"
