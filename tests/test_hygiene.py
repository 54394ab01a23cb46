"""Contracts of the layout: a light CLI start-up, an import graph without cycles, the
engine free of the front ends, declared dependencies, presets and data in the package,
README == CI."""

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "tui_app")
# Never imported by the CLI, the TUI or the engine outside engine.train (torch, timm and
# torchvision train; scipy, PIL and numpy read datasets; matplotlib draws figure files;
# submitit submits Slurm jobs): each costs the start-up from a fraction of a second to seconds.
HEAVY = ("torch", "timm", "torchvision", "scipy", "numpy", "PIL", "matplotlib", "submitit", "textual")
TERMINAL_UI = ("tui_app.app", "tui_app.screens", "tui_app.widgets")  # the Textual app: textual is its job
# Import cycles known and allowed, each as the set of modules of one cycle: none.
ALLOWED_CYCLES: list[set[str]] = []


def module_files() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(name: str, path: Path) -> set[str]:
    """Every module name an import statement of the module names, at any depth (a function's
    lazy import counts), except under `if TYPE_CHECKING:`; `from a import b` gives a and a.b."""
    names: set[str] = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    modules = module_files()
    return {name: {imported for imported in imported_names(name, path) if imported in modules and imported != name}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def connect(module: str) -> None:
        index[module] = lowest[module] = len(index)
        stack.append(module)
        for imported in graph[module]:
            if imported not in index:
                connect(imported)
                lowest[module] = min(lowest[module], lowest[imported])
            elif imported in stack:
                lowest[module] = min(lowest[module], index[imported])
        if lowest[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(component)

    for module in sorted(graph):
        if module not in index:
            connect(module)
    return found


def test_the_import_graph_has_no_cycle():
    """A cycle means two modules share one job or a layer reaches back up (the engine into a
    front end, a screen into the CLI); a lazy import inside a function counts too."""
    graph = import_graph()
    assert {"engine.worker", "engine.train.loop", "tui_app.cli", "tui_app.screens.base"} <= set(graph)  # the walk found the packages
    unexpected = [component for component in cycles(graph) if component not in ALLOWED_CYCLES]
    described = ["; ".join(f"{module} -> {', '.join(sorted(graph[module] & component))}"
                           for module in sorted(component)) for component in unexpected]
    assert not unexpected, f"import cycles: {described}"


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [{"a", "b", "c"}]


def test_the_engine_neither_imports_nor_names_the_front_ends():
    """The engine is the core the CLI and the TUI are built on: it must run without them, and
    start no process through them (a command line naming tui_app, say)."""
    modules = module_files()
    offenders = []
    for name, path in modules.items():
        if not name.startswith("engine"):
            continue
        imports = [imported for imported in imported_names(name, path) if imported.split(".")[0] == "tui_app"]
        mentions = [number for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
                    if re.search(r"\btui_app\b", line)]
        if imports or mentions:
            offenders.append(f"{path.relative_to(ROOT)}: imports {imports}, names tui_app on lines {mentions}")
    assert not offenders, offenders


def light_modules() -> list[str]:
    """Every module of the engine outside engine.train, and of tui_app outside the Textual app."""
    return [name for name in module_files() if not name.startswith("engine.train")
            and not any(name == ui or name.startswith(ui + ".") for ui in TERMINAL_UI)]


@pytest.mark.parametrize("module", light_modules())
def test_front_end_and_core_modules_do_not_import_heavy_packages(module):
    code = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"importing {module} loads {loaded}"


def test_every_third_party_package_imported_is_a_declared_dependency():
    """An import served only by another package's dependency breaks when that package leaves."""
    declared = {re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")
                for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    project = set(PACKAGES) | {"budget_tui_presets"}
    missing = {}
    for name, path in module_files().items():
        for imported in imported_names(name, path):
            top = imported.split(".")[0]
            if not top or top in project or top in sys.stdlib_module_names:
                continue
            providers = {distribution.lower().replace("_", "-") for distribution in distributions.get(top, [])}
            if not providers & declared:
                missing.setdefault(top, set()).add(name)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


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
    assert "engine/analysis/pivot.py" in names and "engine/analysis/plots.py" in names
    # The embedded default dataset and its licence: `budget-tui run digits-quick` needs no download.
    assert {"engine/train/digits.npz", "engine/train/digits_LICENSE.txt"} <= set(names)


@pytest.mark.parametrize(
    "module", ["engine.train.samplers.difficulty", "engine.train.samplers.selective_backprop",
               "engine.train.samplers.upper_bound", "engine.train.samplers.infobatch", "engine.train.samplers",
               "engine.train.augment.mixing", "engine.train.augment", "engine.train.loop", "engine.child",
               "engine.worker"]
)
def test_every_module_imports_first_in_a_fresh_process(module):
    """Samplers register across modules; whichever a script imports first must work."""
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True)
