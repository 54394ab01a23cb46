"""Which runs are seeds of one experiment, and the order fields and values are shown in.

Runs are deterministic, so a rerun of a config with the same seed is a copy, not evidence:
each (config, seed) counts once, as its latest finished run, and the outputs say how many
copies were folded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Iterable

from engine.config import AUGMENTATIONS, SAMPLERS, RunConfig, field_types
from engine.errors import BadInput

IGNORED_FIELDS = ("seed",)  # seeds are what a cell averages over
# Fields that describe how a run executes, not what it computes: never a reason to split cells.
EXECUTION_FIELDS = ("device", "threads", "compile", "channels_last", "download", "data_path", "keep_checkpoint")


def check_fields(names: Iterable[str], option: str) -> None:
    known = field_types()
    for name in names:
        if name not in known:
            raise BadInput(f"unknown field {name!r} in {option}; valid fields: {', '.join(known)}")


def hashable(value: Any) -> Any:
    """A config value usable in a key: lists (e.g. a milestone list) become tuples."""
    return tuple(value) if isinstance(value, list) else value


@functools.cache
def default_config() -> dict[str, Any]:
    return RunConfig().to_dict()


def full_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the fields added since it was recorded at their defaults, so a
    run from before a new field groups with the runs after it."""
    return {**default_config(), **config}


def group_key(config: dict[str, Any]) -> tuple:
    """What makes runs seeds of one experiment: the whole config except the seed (and how it
    executed)."""
    skip = (*IGNORED_FIELDS, *EXECUTION_FIELDS)
    return tuple(sorted((key, hashable(value)) for key, value in full_config(config).items() if key not in skip))


@dataclass
class SeedGroup:
    """The runs of one experiment (config minus seed): one per distinct seed."""

    by_seed: dict[Any, dict[str, Any]] = field(default_factory=dict)  # seed -> its latest finished run
    duplicates: int = 0  # runs of a seed already present, folded into the latest one

    def runs(self) -> list[dict[str, Any]]:
        return [self.by_seed[seed] for seed in sorted(self.by_seed)]


def _finish_order(record: dict[str, Any]) -> tuple:
    return (record.get("finished_at") or "", record["id"])


def seed_groups(runs: Iterable[dict[str, Any]]) -> dict[tuple, SeedGroup]:
    """Runs grouped by group_key, each seed counted once: as its latest finished run."""
    groups: dict[tuple, SeedGroup] = {}
    for record in runs:
        group = groups.setdefault(group_key(record["config"]), SeedGroup())
        seed = record["config"].get("seed", 0)
        kept = group.by_seed.get(seed)
        if kept is not None:
            group.duplicates += 1
            if _finish_order(kept) > _finish_order(record):
                continue
        group.by_seed[seed] = record
    return groups


def distinct_runs(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs with each (config, seed) kept once, as its latest finished run."""
    return [record for group in seed_groups(runs).values() for record in group.runs()]


def varying_fields(records: list[dict[str, Any]]) -> list[str]:
    """Config fields (seed and execution aside) that take more than one value, in config order."""
    return varying_in_keys({group_key(record["config"]) for record in records})


def varying_in_keys(group_keys: Iterable[tuple]) -> list[str]:
    """varying_fields from the distinct group keys: far fewer than the runs, same fields."""
    seen: dict[str, set] = {}
    for key in group_keys:
        for name, value in key:
            seen.setdefault(name, set()).add(value)
    return [name for name in field_types() if len(seen.get(name, ())) > 1]


def sort_value(name: str, value: Any) -> tuple:
    """Sampler and augmentation values in registry order, numbers by value, the rest as text."""
    order = {"sampler": SAMPLERS, "augmentation": AUGMENTATIONS}.get(name)
    if order and value in order:
        return (0, order.index(value), "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value, "")
    return (2, 0, str(value))


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(item) for item in value)
    return str(value)
