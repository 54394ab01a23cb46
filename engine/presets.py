"""Presets: named TOML diffs over RunConfig's defaults, shipped and per-user.

A preset file holds `description`, a `[config]` table of overrides, and optionally
`seeds` (how many seeds a study runs) and a `[grid]` table (key -> list of values).
Shipped presets come with the package; user presets in <home>/presets sit beside them
and win on a name clash. Must not import torch.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import RunConfig, convert_value, field_types
from engine.errors import BadInput
from engine.paths import user_presets_dir

# Runs one request may queue or start. A typo such as `--seeds 1000000000` must be refused at
# once rather than expanded: building the configs alone would run for minutes.
MAX_RUNS = 10_000


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    source: str  # "shipped" or "user"
    path: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: int = 1

    def config(self, assignments: dict[str, Any] | None = None) -> RunConfig:
        """The preset's config with `assignments` (key -> value) applied on top."""
        return RunConfig.from_dict({**self.overrides, **(assignments or {})})

    def grid_configs(
        self,
        assignments: dict[str, Any] | None = None,
        grid: dict[str, list[Any]] | None = None,
        seeds: int | None = None,
    ) -> list[RunConfig]:
        """Every config of the study: the grid's cross product times the seeds."""
        combined = {**self.grid, **(grid or {})}
        seed_count = self.seeds if seeds is None else seeds
        if seed_count < 1:
            raise BadInput("seeds must be >= 1")
        check_run_count(combined, seed_count)
        base = self.config(assignments)
        keys = list(combined)
        configs = []
        for values in itertools.product(*(combined[key] for key in keys)):
            point = base.replace(**dict(zip(keys, values)))
            configs.extend(point.replace(seed=point.seed + offset) for offset in range(seed_count))
        return configs

    def run_count(self) -> int:
        """How many runs the preset queues as it stands, without building their configs."""
        return count_runs(self.grid, self.seeds)


def count_runs(grid: dict[str, list[Any]], seeds: int) -> int:
    return math.prod(len(values) for values in grid.values()) * seeds


def check_run_count(grid: dict[str, list[Any]], seeds: int) -> None:
    """BadInput, before any config is built, when a study has more than MAX_RUNS runs."""
    points = count_runs(grid, 1)
    if points * seeds > MAX_RUNS:
        raise BadInput(f"{points} grid point(s) x {seeds} seed(s) = {points * seeds} runs; "
                       f"at most {MAX_RUNS} runs can be queued or run at once")


@dataclass(frozen=True)
class PresetListing:
    """One preset file as listed: loaded, or the reason it does not load."""

    name: str
    source: str  # "shipped" or "user"
    path: Path
    preset: Preset | None  # None when the file does not load
    error: str | None


def shipped_presets_dir() -> Path:
    """The packaged presets folder (installed as budget_tui_presets), or the source tree's."""
    try:
        import budget_tui_presets

        return Path(budget_tui_presets.__file__).parent
    except ImportError:
        return Path(__file__).resolve().parent.parent / "presets"


def load_preset_file(path: Path, source: str) -> Preset:
    """Read and validate one preset file; any fault is BadInput naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise BadInput(f"preset {path} is not UTF-8 text: {error.reason} at byte {error.start}") from None
    except OSError as error:
        raise BadInput(f"preset {path} cannot be read: {error.strerror or error}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise BadInput(f"malformed preset {path}: {error}") from error
    try:
        return _preset_from_table(data, path, source)
    except BadInput as error:
        raise BadInput(f"preset {path}: {error}") from None


def _preset_from_table(data: dict[str, Any], path: Path, source: str) -> Preset:
    allowed = {"description", "config", "grid", "seeds"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadInput(f"unknown top-level key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    overrides = data.get("config", {})
    grid = data.get("grid", {})
    seeds = data.get("seeds", 1)
    if not isinstance(overrides, dict) or not isinstance(grid, dict):
        raise BadInput("[config] and [grid] must be tables")
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise BadInput("seeds must be an integer >= 1")
    preset = Preset(
        name=path.stem,
        description=str(data.get("description", "")),
        source=source,
        path=path,
        overrides=dict(overrides),
        grid={key: parse_grid_values(key, values) for key, values in grid.items()},
        seeds=seeds,
    )
    # An invalid preset is reported when loaded, not when run: its settings, each grid value
    # on top of them, and its size.
    preset.config()
    for key, values in preset.grid.items():
        for value in values:
            preset.config({key: value})
    check_run_count(preset.grid, preset.seeds)
    return preset


def parse_grid_values(key: str, values: Any) -> list[Any]:
    """Grid values from TOML (a list) or the command line ("a,b,c"), each converted."""
    if key not in field_types():
        raise BadInput(f"unknown grid key {key!r}; valid keys: {', '.join(field_types())}")
    items = values if isinstance(values, list) else [v for v in str(values).split(",") if v.strip()]
    if not items:
        raise BadInput(f"grid {key} has no values")
    return [convert_value(key, item.strip() if isinstance(item, str) else item) for item in items]


def preset_paths(home: Path | None) -> dict[str, tuple[Path, str]]:
    """name -> (file, source); a user preset replaces a shipped one of the same name."""
    found: dict[str, tuple[Path, str]] = {}
    folders = [(shipped_presets_dir(), "shipped")]
    if home is not None:
        folders.append((user_presets_dir(home), "user"))
    for folder, source in folders:
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                found[path.stem] = (path, source)
    return dict(sorted(found.items()))


def list_presets(home: Path | None) -> list[Preset]:
    """Every preset, loaded; the first that does not load raises (see scan_presets)."""
    return [load_preset_file(path, source) for path, source in preset_paths(home).values()]


def scan_presets(home: Path | None) -> list[PresetListing]:
    """Every preset file, each loaded on its own so a broken one does not hide the others."""
    listings = []
    for name, (path, source) in preset_paths(home).items():
        try:
            listings.append(PresetListing(name, source, path, load_preset_file(path, source), None))
        except BadInput as error:
            listings.append(PresetListing(name, source, path, None, str(error)))
    return listings


def get_preset(name: str, home: Path | None) -> Preset:
    """Load one preset by name; only that file is read, so a broken neighbour does not matter."""
    paths = preset_paths(home)
    if name not in paths:
        raise BadInput(f"unknown preset {name!r}; available: {', '.join(paths) or '(none)'}")
    return load_preset_file(*paths[name])
