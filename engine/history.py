"""Reading the history: filters over run records, the differences between two runs and
the per-epoch metrics of a run; removing finished runs, and the checkpoints of finished
runs. Must not import torch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from engine.annotations import annotations, check_tag
from engine.config import CHOICES, convert_value, field_types
from engine.errors import BadInput, WrongState
from engine.paths import CHECKPOINT_NAME, METRICS_NAME, run_dir
from engine.queue import FINISHED, reconcile
from engine.records import RunState
from engine.store import Store, storage_error

RECORD_FILTER_KEYS = ("state", "preset")
# `tag=a,b`: runs that carry every tag named; `note=text`: runs whose note holds the text
# (any case). Repeated tag filters add up; a repeated note filter replaces the earlier one.
ANNOTATION_FILTER_KEYS = ("tag", "note")


def parse_filters(pairs: list[str]) -> dict[str, Any]:
    """`["dataset=cifar10", "state=done"]` -> {key: value}, values typed like the config field."""
    filters: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadInput(f"expected key=value, got {pair!r}")
        if key in RECORD_FILTER_KEYS or key == "note":
            filters[key] = value.strip()
        elif key == "tag":
            earlier = [tag for tag in filters.get(key, "").split(",") if tag]
            named = [check_tag(tag.strip()) for tag in value.split(",")]
            filters[key] = ",".join(dict.fromkeys([*earlier, *named]))
        elif key in CHOICES and value.strip() not in CHOICES[key]:
            # A value no run can have is a typo: name the valid ones rather than match nothing.
            raise BadInput(f"{key}={value.strip()!r} is not valid; choose one of: {', '.join(CHOICES[key])}")
        elif key in field_types():
            filters[key] = convert_value(key, value.strip())
        else:
            valid = ", ".join((*RECORD_FILTER_KEYS, *ANNOTATION_FILTER_KEYS, *field_types()))
            raise BadInput(f"unknown filter key {key!r}; valid keys: {valid}")
    return filters


def filter_runs(runs: list[dict[str, Any]], filters: dict[str, Any]) -> list[dict[str, Any]]:
    return [record for record in runs if all(_matches(record, key, wanted) for key, wanted in filters.items())]


def _matches(record: dict[str, Any], key: str, wanted: Any) -> bool:
    if key == "tag":
        return set(wanted.split(",")) <= set(record.get("tags", ()))
    if key == "note":
        return wanted.casefold() in (record.get("note") or "").casefold()
    value = record.get(key) if key in RECORD_FILTER_KEYS else record.get("config", {}).get(key)
    if isinstance(wanted, tuple):
        value = tuple(value or ())
    return value == wanted


# What `diff` compares besides config and summary: what the user and the queue say of a run.
DIFF_RECORD_FIELDS = ("preset", "state", "tags", "note")


def diff_runs(first: dict[str, Any], second: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """The fields whose values differ between two run records, by section (config, summary,
    run): {section: {field: [value in first, value in second]}}; a field one run lacks is None."""
    first, second = annotations(first), annotations(second)  # no tags and [] are the same
    sections = {
        "config": (first.get("config") or {}, second.get("config") or {}),
        "summary": (first.get("summary") or {}, second.get("summary") or {}),
        "run": ({key: first.get(key) for key in DIFF_RECORD_FIELDS},
                {key: second.get(key) for key in DIFF_RECORD_FIELDS}),
    }
    return {section: {key: [left.get(key), right.get(key)] for key in dict.fromkeys([*left, *right])
                      if left.get(key) != right.get(key)}
            for section, (left, right) in sections.items()}


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


def removable(store: Store, run_ids: list[int]) -> list[dict[str, Any]]:
    """The records of runs that may be removed, or NotFound / WrongState for the first that
    may not. A run whose process is gone counts as interrupted, as in `queue ls`."""
    reconcile(store)
    records = [store.get_run(run_id) for run_id in run_ids]
    for record in records:
        check_removable(record)
    return records


def check_removable(record: dict[str, Any]) -> None:
    """Only a finished run may be removed: nothing a worker may be training disappears under it."""
    if record.get("state") not in FINISHED:
        raise WrongState(f"run {record['id']} is {record.get('state')}: cancel it first "
                         f"(budget-tui queue cancel {record['id']}); nothing was removed")


def remove_runs(store: Store, home: Path, run_ids: list[int]) -> list[int]:
    """Remove finished runs from the history, then their folders <home>/<id>/, all or none
    (checked again under the store's lock). Returns the ids removed."""
    removed = [record["id"] for record in store.remove_runs(run_ids, check_removable)]
    for run_id in removed:
        folder = run_dir(home, run_id)
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            pass  # a run cancelled before it started has no folder
        except OSError as error:
            raise storage_error(error, f"delete the folder of removed run {run_id}:", folder) from None
    return removed


# Runs whose checkpoint no longer serves: done for good, or stopped by the user (retrying a
# cancelled run whose checkpoint was pruned starts it over).
PRUNABLE = (RunState.DONE, RunState.CANCELLED)


def checkpoints_to_prune(store: Store, home: Path) -> list[dict[str, Any]]:
    """The checkpoints that finished runs (PRUNABLE) still keep: {"id", "state", "path",
    "bytes"} each, in id order. Runs that may still resume (running, interrupted, failed,
    queued) are never listed."""
    found = (_prunable(home, record) for record in store.list_runs())
    return sorted((entry for entry in found if entry is not None), key=lambda entry: entry["id"])


def prune_checkpoints(store: Store, home: Path, run_ids: list[int]) -> list[dict[str, Any]]:
    """Delete the checkpoints of runs `run_ids` that are still PRUNABLE, checked under the
    store's lock so that no retry or claim can make one resumable meanwhile; returns those
    deleted, as checkpoints_to_prune lists them (their bytes are what was freed)."""
    pruned = []
    with store.transaction() as table:  # read only: the lock is what it is held for
        for run_id in dict.fromkeys(run_ids):
            record = table.get(doc_id=run_id)
            entry = None if record is None else _prunable(home, {**record, "id": run_id})
            if entry is None:
                continue
            try:
                Path(entry["path"]).unlink()
            except FileNotFoundError:
                continue
            except OSError as error:
                raise storage_error(error, f"delete the checkpoint of run {run_id}:", Path(entry["path"])) from None
            pruned.append(entry)
    return pruned


def _prunable(home: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    if record.get("state") not in PRUNABLE:
        return None
    path = run_dir(home, record["id"]) / CHECKPOINT_NAME
    try:
        size = path.stat().st_size
    except OSError:
        return None
    return {"id": record["id"], "state": record["state"], "path": str(path), "bytes": size}
