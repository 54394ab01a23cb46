"""Reading the history: filters over run records and the per-epoch metrics of a run.

Must not import torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.config import CHOICES, convert_value, field_types
from engine.errors import BadInput
from engine.paths import METRICS_NAME

RECORD_FILTER_KEYS = ("state", "preset")


def parse_filters(pairs: list[str]) -> dict[str, Any]:
    """`["dataset=cifar10", "state=done"]` -> {key: value}, values typed like the config field."""
    filters: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadInput(f"expected key=value in --where, got {pair!r}")
        if key in RECORD_FILTER_KEYS:
            filters[key] = value.strip()
        elif key in CHOICES and value.strip() not in CHOICES[key]:
            # A value no run can have is a typo: name the valid ones rather than match nothing.
            raise BadInput(f"--where {key}={value.strip()!r} is not valid; choose one of: {', '.join(CHOICES[key])}")
        elif key in field_types():
            filters[key] = convert_value(key, value.strip())
        else:
            valid = ", ".join((*RECORD_FILTER_KEYS, *field_types()))
            raise BadInput(f"unknown filter key {key!r}; valid keys: {valid}")
    return filters


def filter_runs(runs: list[dict[str, Any]], filters: dict[str, Any]) -> list[dict[str, Any]]:
    def matches(record: dict[str, Any]) -> bool:
        for key, wanted in filters.items():
            value = record.get(key) if key in RECORD_FILTER_KEYS else record.get("config", {}).get(key)
            if isinstance(wanted, tuple):
                value = tuple(value or ())
            if value != wanted:
                return False
        return True

    return [record for record in runs if matches(record)]


def load_metrics(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-epoch metrics of a run from runs/<id>/metrics.jsonl (empty if none yet)."""
    folder = record.get("run_dir")
    if not folder:
        return []
    path = Path(folder) / METRICS_NAME
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a crash ends the readable curve
    return rows
