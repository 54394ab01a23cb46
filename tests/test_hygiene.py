"""Contracts of the layout: a light CLI start-up, presets in the package, README == CI."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "timm", "sklearn", "textual")


@pytest.mark.parametrize(
    "module", ["tui_app.cli", "engine.config", "engine.presets", "engine.store", "engine.runs", "engine.history",
               "engine.logs", "engine.annotations"]
)
def test_front_end_and_core_modules_do_not_import_heavy_packages(module):
    code = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"importing {module} loads {loaded}"


def test_cli_help_runs_without_torch():
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom tui_app.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'])\nassert result.exit_code == 0, result.output\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registries_match_the_names_the_cli_validates_against():
    from engine import config
    from engine.train.augment import AUGMENTATIONS
    from engine.train.data import DATASET_NAMES
    from engine.train.samplers import SAMPLERS

    assert sorted(SAMPLERS) == sorted(config.SAMPLERS)
    assert sorted(AUGMENTATIONS) == sorted(config.AUGMENTATIONS)
    assert tuple(DATASET_NAMES) == config.DATASETS


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines()
                if line.startswith(("python3 -m venv", "bash tests/system-packages.sh"))]
    assert len(commands) == 2, commands
    assert "budget-tui run digits-quick" in commands[0]
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_shipped_preset_loads_and_validates():
    from engine.presets import list_presets, shipped_presets_dir

    presets = [preset for preset in list_presets(None) if preset.source == "shipped"]
    assert {preset.name for preset in presets} == {path.stem for path in shipped_presets_dir().glob("*.toml")}
    for preset in presets:
        preset.config()


def test_presets_ship_inside_the_wheel(tmp_path):
    """A non-editable `pip install .` must find the presets: they are package data."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("budget_tui-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {path.name for path in (ROOT / "presets").glob("*.toml")}
    assert shipped and {f"budget_tui_presets/{name}" for name in shipped} <= set(names)
    assert "engine/train/loop.py" in names and "tui_app/cli.py" in names
    styles = {f"tui_app/{path.name}" for path in (ROOT / "tui_app").glob("*.tcss")}
    assert styles and styles <= set(names)  # the TUI's styles ship with it
    assert "tui_app/screens/queue.py" in names and "tui_app/widgets/run_table.py" in names


@pytest.mark.parametrize(
    "module", ["engine.train.importance", "engine.train.selection", "engine.train.samplers",
               "engine.train.augment", "engine.train.loop", "engine.child", "engine.worker"]
)
def test_every_module_imports_first_in_a_fresh_process(module):
    """Samplers register across modules; whichever a script imports first must work."""
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True)
