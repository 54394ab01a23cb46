"""Run records: their states, the transitions allowed between them, and their shape on disk.

Every state change of a stored run goes through `change_state`, inside the store's
transaction, so a cancelled run can never become running again behind the user's back.
`check_history` validates a parsed history file before anyone trusts it. Must not import torch.
"""

from __future__ import annotations

import datetime as dt
import functools
import platform
import subprocess
from enum import StrEnum
from pathlib import Path
from typing import Any, Mapping

from engine import __version__
from engine.config import RunConfig, field_types
from engine.errors import WrongState


class RunState(StrEnum):
    """A run's state; stored as its plain string, so history files of every version load."""

    QUEUED = "queued"  # waiting for a worker
    RUNNING = "running"  # claimed by a worker, or trained in the foreground by `run`
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # its process stopped or died; resumable from its checkpoint


# Where each state may go. Resuming or retrying is always "back to queued", never straight
# to running: only a worker's claim starts a queued run. A finished run (done) stays done.
TRANSITIONS: Mapping[RunState, frozenset[RunState]] = {
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.CANCELLED}),
    RunState.RUNNING: frozenset({RunState.DONE, RunState.FAILED, RunState.CANCELLED, RunState.INTERRUPTED}),
    RunState.INTERRUPTED: frozenset({RunState.QUEUED, RunState.CANCELLED}),
    RunState.FAILED: frozenset({RunState.QUEUED}),
    RunState.CANCELLED: frozenset({RunState.QUEUED}),
    RunState.DONE: frozenset(),
}
FINISHED = tuple(state for state in RunState if state not in (RunState.QUEUED, RunState.RUNNING))
RETRYABLE = tuple(state for state in RunState if RunState.QUEUED in TRANSITIONS[state])


class TransitionRefused(WrongState):
    """A state change the transition table does not allow (the run moved on meanwhile)."""


def can_change(current: str | None, target: RunState) -> bool:
    return current in TRANSITIONS and target in TRANSITIONS[RunState(current)]


def change_state(record: Mapping[str, Any], target: RunState, **fields: Any) -> dict[str, Any]:
    """The fields to write to move `record` to `target`, or TransitionRefused. Callers apply
    them in the same store transaction in which they read `record`."""
    current = record.get("state")
    if not can_change(current, target):
        raise TransitionRefused(f"run {record.get('id', '?')} cannot go from {current} to {target}")
    return {**fields, "state": target}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def parse_time(stamp: str | None) -> dt.datetime | None:
    """A record's ISO timestamp (`now`) as an aware datetime, or None."""
    if not stamp:
        return None
    try:
        moment = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=source, capture_output=True,
            text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{__version__}+{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def new_record(config: RunConfig, preset: str, *, state: RunState = RunState.QUEUED, priority: int = 0,
               **fields: Any) -> dict[str, Any]:
    return {
        "preset": preset,
        "config": config.to_dict(),
        "state": state,
        "priority": priority,
        "created_at": now(),
        "started_at": None,
        "finished_at": None,
        "progress": {},
        "summary": None,
        "outcome": None,
        "provenance": {"version": code_version(), "host": platform.node(), "python": platform.python_version()},
        **fields,
    }


# --- the shape of a history file
# Parsed JSON has exact types (int, float, str, bool, dict, list, None), so a type check is
# one set lookup: 15 us a record (22 with isinstance), against 35-50 us to parse it.
_TEXT, _NUMBER, _COUNT, _MAPPING, _FLAG, _LIST = {str}, {int, float}, {int}, {dict}, {bool}, {list}
_NULL = {type(None)}
# The fields the engine reads, with the JSON types they may hold. Missing fields are fine
# (older files lack some); extra fields are kept as they are.
RECORD_FIELDS: Mapping[str, frozenset[type]] = {name: frozenset(types) for name, types in {
    "id": _COUNT,
    "preset": _TEXT | _NULL,
    "config": _MAPPING,
    "priority": _COUNT,
    "attempts": _COUNT,
    "created_at": _TEXT | _NULL,
    "started_at": _TEXT | _NULL,
    "finished_at": _TEXT | _NULL,
    "run_dir": _TEXT | _NULL,
    "progress": _MAPPING | _NULL,
    "summary": _MAPPING | _NULL,
    "outcome": _MAPPING | _NULL,
    "process": _MAPPING | _NULL,
    "worker": _MAPPING | _NULL,
    "slurm": _MAPPING | _NULL,  # the Slurm job of a run submitted to a cluster: job_id, state, reason
    "tags": _LIST,  # the user's labels, strings (engine.annotations)
    "note": _TEXT | _NULL,  # the user's free text about the run
    "rerun_of": _COUNT | _NULL,  # the run whose config this one was queued from (`rerun`)
}.items()}
_CONFIG_JSON_TYPES = {int: _COUNT, float: _NUMBER, str: _TEXT, bool: _FLAG}
# Summary numbers that the front ends format as numbers (a string there stops every listing).
SUMMARY_NUMBERS = (
    "final_test_acc", "best_test_acc", "best_test_epoch", "final_val_acc", "best_val_acc", "best_val_epoch",
    "test_acc_at_best_val", "steps", "samples_backprop", "samples_forwarded", "flops_train", "budget_used",
    "time_train_s", "time_eval_s", "time_overhead_s", "time_total_s", "images_per_s", "usage_entropy",
)
_STATE_NAMES = frozenset(state.value for state in RunState)


def check_history(data: Any) -> None:
    """Raise ValueError naming the first thing in a parsed history file that is not the
    shape the engine writes: {"_meta": {...}, "runs": {"<id>": {record}}}."""
    if type(data) is not dict:
        raise ValueError(f"the top level is {_json_type(data)}, not an object")
    for name, table in data.items():
        if type(table) is not dict:
            raise ValueError(f"table {name!r} is {_json_type(table)}, not an object")
    schema = data.get("_meta", {}).get("1", {"schema": 1})
    if type(schema) is not dict or type(schema.get("schema", 1)) is not int:
        raise ValueError("the schema version is not a number")
    if type(schema.get("last_id", 0)) is not int:
        raise ValueError("the highest run id given is not a number")
    for run_id, record in data.get("runs", {}).items():
        check_record(run_id, record)


def check_record(run_id: str, record: Any) -> None:
    """Raise ValueError if one run record of a history file is not the shape the engine writes."""
    if type(run_id) is not str or not run_id.isascii() or not run_id.isdigit():
        raise ValueError(f"run id {run_id!r} is not a number")
    if type(record) is not dict:
        raise ValueError(f"run {run_id} is {_json_type(record)}, not an object")
    if record.get("state") not in _STATE_NAMES:
        raise ValueError(f"run {run_id} has state {record.get('state')!r}; valid: {', '.join(RunState)}")
    for name, value in record.items():
        allowed = RECORD_FIELDS.get(name)
        if allowed is not None and type(value) not in allowed:
            raise ValueError(f"run {run_id} field {name!r} is {_json_type(value)}")
    if any(type(tag) is not str for tag in record.get("tags", ())):
        raise ValueError(f"run {run_id} has a tag that is not a string")
    config_types = _config_json_types()
    for key, value in record.get("config", {}).items():
        allowed = config_types.get(key)
        if allowed is not None and type(value) not in allowed:
            raise ValueError(f"run {run_id} config {key!r} is {_json_type(value)}")
    summary = record.get("summary") or {}
    for key in SUMMARY_NUMBERS:
        if key in summary and type(summary[key]) not in _NUMBER:
            raise ValueError(f"run {run_id} summary {key!r} is {_json_type(summary[key])}, not a number")


@functools.cache
def _config_json_types() -> dict[str, set[type]]:
    """Config field -> the JSON types its value may have (fields of other types are not checked)."""
    return {key: _CONFIG_JSON_TYPES[kind] for key, kind in field_types().items() if kind in _CONFIG_JSON_TYPES}


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
