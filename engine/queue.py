"""The run queue over the history store: enqueue, claim, cancel, retry, reconcile.

Run states (DESIGN.md): queued -> running -> done | failed | cancelled; running ->
interrupted when its process is gone (pid + process start time), and interrupted ->
queued again on retry, resuming from the last checkpoint. Every state change is one
store transaction, so two workers never claim the same run. Must not import torch.
"""

from __future__ import annotations

import os
import platform
import signal
import time
from pathlib import Path
from typing import Any

from engine.config import RunConfig
from engine.errors import BadInput, NotFound
from engine.paths import RESULT_NAMES
from engine.runs import new_record, now
from engine.store import Store

QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "done", "failed", "cancelled", "interrupted")
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED)
FINISHED = (DONE, FAILED, CANCELLED, INTERRUPTED)
RETRYABLE = (FAILED, CANCELLED, INTERRUPTED)
CANCEL_GRACE_S = 10.0


def enqueue(store: Store, preset: str, configs: list[RunConfig], priority: int = 0) -> list[int]:
    """Queue every config as one store write; returns the new run ids."""
    return store.add_runs([new_record(config, preset, state=QUEUED, priority=priority) for config in configs])


def queue_order(record: dict[str, Any]) -> tuple[int, int]:
    """Higher priority first, then first come first served."""
    return (-int(record.get("priority", 0)), int(record["id"]))


def claim_next(store: Store, worker: dict[str, Any]) -> dict[str, Any] | None:
    """Atomically take the next queued run and mark it running for `worker`."""
    with store.transaction() as table:
        queued = [record for record in table.all() if record.get("state") == QUEUED]
        if not queued:
            return None
        chosen = min(queued, key=lambda record: queue_order({**record, "id": record.doc_id}))
        fields = {"state": RUNNING, "started_at": now(), "worker": worker, "process": None}
        table.update(fields, doc_ids=[chosen.doc_id])
        return {**chosen, **fields, "id": chosen.doc_id}


def finish_if_running(store: Store, run_id: int, state: str, **fields: Any) -> bool:
    """Move a run out of `running` unless something else (a cancel) already did."""
    with store.transaction() as table:
        record = table.get(doc_id=run_id)
        if record is None or record.get("state") != RUNNING:
            return False
        table.update({"state": state, "finished_at": now(), **fields}, doc_ids=[run_id])
        return True


def cancel(store: Store, run_ids: list[int], grace_s: float = CANCEL_GRACE_S) -> dict[int, str]:
    """Cancel queued runs at once; stop running ones (SIGTERM to the process group, a
    grace period, then SIGKILL). Returns id -> what happened."""
    outcome: dict[int, str] = {}
    to_stop: list[dict[str, Any]] = []
    with store.transaction() as table:
        for run_id in run_ids:
            record = table.get(doc_id=run_id)
            if record is None:
                raise NotFound(f"no run with id {run_id} in {store.path}")
            state = record.get("state")
            if state in (QUEUED, RUNNING, INTERRUPTED):
                table.update({"state": CANCELLED, "finished_at": now(),
                              "outcome": {"exit_code": None, "message": "cancelled by the user"}},
                             doc_ids=[run_id])
                outcome[run_id] = CANCELLED
                if state == RUNNING and record.get("process"):
                    to_stop.append(record["process"])
            else:
                outcome[run_id] = f"not cancelled: already {state}"
    for process in to_stop:
        terminate_group(process, grace_s)
    return outcome


def retry(store: Store, run_ids: list[int], *, fresh: bool = False) -> dict[int, str]:
    """Queue failed, cancelled or interrupted runs again. They resume from their last
    checkpoint; with `fresh` their results so far are deleted and they start over (for a
    failure that the checkpoint would repeat, such as a diverged loss)."""
    outcome: dict[int, str] = {}
    with store.transaction() as table:
        for run_id in run_ids:
            record = table.get(doc_id=run_id)
            if record is None:
                raise NotFound(f"no run with id {run_id} in {store.path}")
            if record.get("state") in RETRYABLE:
                if fresh and record.get("run_dir"):
                    for name in RESULT_NAMES:
                        (Path(record["run_dir"]) / name).unlink(missing_ok=True)
                table.update({"state": QUEUED, "finished_at": None, "outcome": None, "process": None,
                              "progress": {}, "summary": None,
                              "attempts": int(record.get("attempts", 1)) + 1}, doc_ids=[run_id])
                outcome[run_id] = QUEUED
            else:
                outcome[run_id] = f"not retried: {record.get('state')}"
    return outcome


def set_priority(store: Store, run_ids: list[int], priority: int) -> None:
    with store.transaction() as table:
        for run_id in run_ids:
            if not table.contains(doc_id=run_id):
                raise NotFound(f"no run with id {run_id} in {store.path}")
        table.update({"priority": priority}, doc_ids=run_ids)


def clear_queued(store: Store) -> list[int]:
    """Cancel every run still waiting in the queue (running ones are left alone)."""
    with store.transaction() as table:
        ids = [record.doc_id for record in table.all() if record.get("state") == QUEUED]
        if ids:
            table.update({"state": CANCELLED, "finished_at": now(),
                          "outcome": {"exit_code": None, "message": "cleared from the queue"}}, doc_ids=ids)
    return ids


# --- liveness
def process_identity(pid: int) -> dict[str, Any]:
    """What identifies a live process beyond its pid (which the OS reuses)."""
    return {"pid": pid, "pgid": os.getpgid(pid), "start_time": process_start_time(pid), "host": platform.node()}


def process_start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot (Linux /proc), or None where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return int(text[text.rindex(")") + 2 :].split()[19])


def is_alive(process: dict[str, Any] | None) -> bool:
    """True if the recorded process still runs (same pid AND same start time)."""
    if not process or process.get("host") not in (None, platform.node()):
        return process is not None  # another machine's run: we cannot tell, so trust it
    pid = process.get("pid")
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    recorded, current = process.get("start_time"), process_start_time(pid)
    if recorded is not None and current is not None and recorded != current:
        return False  # the pid was reused by another process
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return text[text.rindex(")") + 2] != "Z"


def reconcile(store: Store, *, resume: bool = False) -> list[int]:
    """Mark running runs whose process (or, before it started, whose worker) is gone as
    interrupted -- or queue them again when `resume`. Returns the ids changed."""
    stale = [
        record for record in store.list_runs()
        if record.get("state") == RUNNING and not is_alive(record.get("process") or record.get("worker"))
    ]
    if not stale:
        return []
    changed = []
    with store.transaction() as table:
        for record in stale:
            current = table.get(doc_id=record["id"])
            if current is None or current.get("state") != RUNNING:
                continue
            if is_alive(current.get("process") or current.get("worker")):
                continue  # it started meanwhile
            fields: dict[str, Any] = {"state": INTERRUPTED, "finished_at": now(),
                                      "outcome": {"exit_code": None, "message": "process gone; resumable"}}
            if resume:
                fields = {"state": QUEUED, "finished_at": None, "process": None,
                          "attempts": int(current.get("attempts", 1)) + 1}
            table.update(fields, doc_ids=[record["id"]])
            changed.append(record["id"])
    return changed


def terminate_group(process: dict[str, Any], grace_s: float = CANCEL_GRACE_S) -> None:
    """SIGTERM the run's process group, wait up to grace_s, then SIGKILL what is left."""
    if not is_alive(process):
        return
    group = process["pgid"]
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _group_alive(group):
            return
        time.sleep(0.05)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    # Zombies of the group keep it "alive" for killpg; look for a live member.
    if not Path("/proc").is_dir():
        return True
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            if int(fields[2]) == group and fields[0] != "Z":
                return True
    return False


def validate_priority(priority: int) -> int:
    if not -1000 <= priority <= 1000:
        raise BadInput("priority must be between -1000 and 1000")
    return priority
