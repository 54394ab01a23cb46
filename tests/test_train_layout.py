"""The training engine's layout: short functions, one registry helper for samplers and
augmentations, registries that match the config's names, and no import cycles."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import engine.config
from engine.errors import BadInput
from engine.train.augment import AUGMENTATIONS, register_augmentation
from engine.train.registry import Registry
from engine.train.samplers import SAMPLERS, register_sampler

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "engine" / "train"
MAX_FUNCTION_LINES = 100


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the training engine."""
    modules = {}
    for path in sorted(TRAIN.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _functions(path: Path) -> list[tuple[str, int]]:
    """(name, length in lines) of every function and method in a file, nested ones too."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_in_the_training_engine_is_longer_than_a_screen():
    lengths = {f"{path.relative_to(ROOT)}:{name}": length
               for path in _modules().values() for name, length in _functions(path)}
    longest = max(lengths, key=lengths.get)
    assert lengths[longest] <= MAX_FUNCTION_LINES, f"{longest} has {lengths[longest]} lines"


def test_both_registries_are_the_one_registry_helper():
    assert isinstance(SAMPLERS, Registry) and isinstance(AUGMENTATIONS, Registry)
    assert register_sampler.__self__ is SAMPLERS
    assert register_augmentation.__self__ is AUGMENTATIONS
    # No module keeps a registry of its own: no module-level register function but the
    # Registry's bound methods.
    hand_made = [f"{path.relative_to(ROOT)}:{node.name}" for path in _modules().values()
                 for node in ast.parse(path.read_text(encoding="utf-8")).body
                 if isinstance(node, ast.FunctionDef) and node.name.startswith("register")]
    assert hand_made == [], hand_made


def test_the_registries_hold_exactly_the_names_the_config_accepts():
    assert sorted(SAMPLERS.names()) == sorted(engine.config.SAMPLERS)
    assert sorted(AUGMENTATIONS.names()) == sorted(engine.config.AUGMENTATIONS)
    for registry in (SAMPLERS, AUGMENTATIONS):
        for name, cls in registry.items():
            assert cls.name == name and registry.lookup(name) is cls


def test_a_registry_names_its_entries_and_refuses_unknown_or_duplicate_names():
    shapes = Registry("shape")

    @shapes.register("square")
    class Square:
        pass

    assert Square.name == "square" and shapes.names() == ("square",) and "square" in shapes
    with pytest.raises(BadInput, match="unknown shape 'circle'; choose one of: square"):
        shapes.lookup("circle")
    with pytest.raises(ValueError, match="already registered"):
        shapes.register("square")(type("Other", (), {}))
    shapes.unregister("square")
    assert len(shapes) == 0


def _module_level_imports(module: str, path: Path, modules: set[str]) -> set[str]:
    """The engine.train modules that `module` imports when it is imported (its top-level
    import statements; a package's own __init__ only where it is named)."""
    imported = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                imported.add(submodule if submodule in modules else node.module)
    return (imported & modules) - {module}


def test_the_training_engine_has_no_import_cycle():
    modules = _modules()
    graph = {module: _module_level_imports(module, path, set(modules)) for module, path in modules.items()}
    finished: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            cycle = trail[trail.index(module):] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module not in finished:
            for target in sorted(graph[module]):
                visit(target, trail + [module])
            finished.add(module)

    for module in sorted(graph):
        visit(module, [])


FIRST_IMPORTS = """
import importlib, sys
for module in sys.argv[1:]:
    for loaded in [name for name in sys.modules if name.startswith("engine.train")]:
        del sys.modules[loaded]
    importlib.import_module(module)
    samplers = importlib.import_module("engine.train.samplers")
    augment = importlib.import_module("engine.train.augment")
    print(module, len(samplers.SAMPLERS), len(augment.AUGMENTATIONS))
"""


def test_every_family_module_imports_first_with_both_registries_complete():
    """Whichever module of a family a script imports first, both registries are complete.
    One process (torch loads once) forgets the engine's modules before each import."""
    families = sorted(module for module in _modules()
                      if module.startswith(("engine.train.samplers.", "engine.train.augment.")))
    output = subprocess.run([sys.executable, "-c", FIRST_IMPORTS, *families], check=True,
                            capture_output=True, text=True).stdout
    expected = f"{len(engine.config.SAMPLERS)} {len(engine.config.AUGMENTATIONS)}"
    assert output.splitlines() == [f"{module} {expected}" for module in families]
