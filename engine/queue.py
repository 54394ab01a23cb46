"""The run queue over the history store: enqueue, claim, cancel, retry, reconcile.

Every state change here is checked against engine.records' transition table inside one
store transaction, so two workers never claim the same run and a cancelled run never
starts. Process liveness and signals live in engine.processes; a run submitted as a Slurm
job is followed and cancelled through Slurm instead (engine.slurm). Must not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from engine.config import RunConfig
from engine.errors import BadInput, NotFound
from engine.paths import RESULT_NAMES
from engine.processes import STOP_GRACE_S, is_alive, is_remote, terminate_group
from engine.records import FINISHED, RETRYABLE, RunState, can_change, change_state, new_record, now
from engine.slurm import cancel_job, job_of
from engine.store import Store

# The state names (and FINISHED, RETRYABLE) the screens import from here.
QUEUED, RUNNING, INTERRUPTED = RunState.QUEUED, RunState.RUNNING, RunState.INTERRUPTED
# How the outcome of a cancel or retry says that a run's state refused it.
REFUSED_PREFIX = "not "


def refused(outcome: dict[int, str]) -> list[int]:
    """The runs of a cancel or retry outcome that their state refused."""
    return [run_id for run_id, result in outcome.items() if result.startswith(REFUSED_PREFIX)]


def enqueue(store: Store, preset: str, configs: list[RunConfig], priority: int = 0) -> list[int]:
    """Queue every config as one store write; returns the new run ids."""
    return store.add_runs([new_record(config, preset, priority=priority) for config in configs])


def rerun(store: Store, run_id: int, assignments: dict[str, Any], *, priority: int = 0,
          check: Callable[[RunConfig], None] | None = None) -> int:
    """Queue a new run with the config of run `run_id` and `assignments` on top; it keeps
    that run's preset name and records which run it reruns. `check(config)` sees the new
    config before anything is written (the checks `queue add` makes). Returns its id."""
    record = store.get_run(run_id)
    config = RunConfig.from_dict(record["config"]).replace(**assignments)
    if check is not None:
        check(config)
    (new_id,) = store.add_runs([new_record(config, record.get("preset"), priority=validate_priority(priority),
                                           rerun_of=run_id)])
    return new_id


def queue_order(record: dict[str, Any]) -> tuple[int, int]:
    """Higher priority first, then first come first served."""
    return (-int(record.get("priority", 0)), int(record["id"]))


def claim_next(store: Store, worker: dict[str, Any],
               accept: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
    """Atomically take the next queued run and mark it running for `worker`. With `accept`,
    only if accept(run) says it has room to start now; the order is kept: a later run
    never overtakes the one that waits for room."""
    with store.transaction() as table:
        queued = [record for record in table.all() if record.get("state") == RunState.QUEUED]
        if not queued:
            return None
        chosen = min(queued, key=lambda record: queue_order({**record, "id": record.doc_id}))
        if accept is not None and not accept({**chosen, "id": chosen.doc_id}):
            return None
        fields = change_state(chosen, RunState.RUNNING, started_at=now(), worker=worker, process=None)
        table.update(fields, doc_ids=[chosen.doc_id])
        return {**chosen, **fields, "id": chosen.doc_id}


def adopt_orphans(store: Store, worker: dict[str, Any], limit: int,
                  followable: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Atomically make `worker` the worker of up to `limit` running runs whose worker is
    gone and which it can follow (a cluster job that outlived its worker). Returns them."""
    def orphaned(record: dict[str, Any]) -> bool:
        return record.get("state") == RunState.RUNNING and not is_alive(record.get("worker")) and followable(record)

    if limit <= 0 or not any(orphaned(record) for record in store.list_runs()):
        return []  # the common case takes no lock and writes nothing
    adopted = []
    with store.transaction() as table:
        for record in table.all():
            if len(adopted) < limit and orphaned(record):
                table.update({"worker": worker}, doc_ids=[record.doc_id])
                adopted.append({**record, "worker": worker, "id": record.doc_id})
    return adopted


def cancel(store: Store, run_ids: list[int], grace_s: float = STOP_GRACE_S) -> dict[int, str]:
    """Cancel queued runs at once; stop running ones (SIGTERM to the process group, a
    grace period, then SIGKILL); a run submitted as a Slurm job by scancel. A run whose
    process is on another host is marked cancelled but its process is not signalled.
    Returns id -> what happened."""
    outcome: dict[int, str] = {}
    to_stop: list[dict[str, Any]] = []
    jobs: dict[int, str] = {}
    with store.transaction() as table:
        for run_id in run_ids:
            record = table.get(doc_id=run_id)
            if record is None:
                raise NotFound(f"no run with id {run_id} in {store.path}")
            state = record.get("state")
            if not can_change(state, RunState.CANCELLED):
                outcome[run_id] = f"{REFUSED_PREFIX}cancelled: already {state}"
                continue
            table.update(change_state(record, RunState.CANCELLED, finished_at=now(),
                                      outcome={"exit_code": None, "message": "cancelled by the user"}),
                         doc_ids=[run_id])
            outcome[run_id] = RunState.CANCELLED
            process = record.get("process") if state == RunState.RUNNING else None
            job_id = job_of(record) if state == RunState.RUNNING else None
            if job_id:
                jobs[run_id] = job_id
            elif process and is_remote(process):
                outcome[run_id] = (f"cancelled; its process runs on host {process['host']} "
                                   f"and was not signalled from here")
            elif process:
                to_stop.append(process)
    for process in to_stop:
        terminate_group(process, grace_s)
    for run_id, job_id in jobs.items():
        refused = cancel_job(job_id)
        if refused:
            outcome[run_id] = f"cancelled; scancel of slurm job {job_id} failed: {refused}"
    return outcome


def _requeue(record: dict[str, Any]) -> dict[str, Any]:
    """The fields that queue a run again: it resumes from its checkpoint as a new attempt."""
    return change_state(record, RunState.QUEUED, finished_at=None, outcome=None, process=None, progress={},
                        summary=None, slurm=None, attempts=int(record.get("attempts", 1)) + 1)


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
            if not can_change(record.get("state"), RunState.QUEUED):
                outcome[run_id] = f"{REFUSED_PREFIX}retried: {record.get('state')}"
                continue
            if fresh and record.get("run_dir"):
                for name in RESULT_NAMES:
                    (Path(record["run_dir"]) / name).unlink(missing_ok=True)
            table.update(_requeue(record), doc_ids=[run_id])
            outcome[run_id] = RunState.QUEUED
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
        waiting = [record for record in table.all() if record.get("state") == RunState.QUEUED]
        for record in waiting:
            table.update(change_state(record, RunState.CANCELLED, finished_at=now(), outcome={
                "exit_code": None, "message": "cleared from the queue"}), doc_ids=[record.doc_id])
    return [record.doc_id for record in waiting]


# --- reconciliation
def is_stale(record: dict[str, Any]) -> bool:
    """Recorded as running, but its process (or, before it started, its worker) is gone. A
    Slurm job's process is not judged by its pid (a requeued job restarts it, perhaps on
    another node): the worker that follows the job records its end from Slurm's state."""
    if job_of(record):
        return False
    return record.get("state") == RunState.RUNNING and not is_alive(record.get("process") or record.get("worker"))


def reconcile(store: Store, *, resume: bool = False) -> list[int]:
    """Mark running runs whose process is gone as interrupted; with `resume`, queue every
    interrupted run again (those just found and those interrupted before). Returns the ids
    changed."""
    def needs_change(record: dict[str, Any]) -> bool:
        return is_stale(record) or (resume and record.get("state") == RunState.INTERRUPTED)

    if not any(needs_change(record) for record in store.list_runs()):
        return []  # the common case takes no lock and writes nothing
    changed = []
    with store.transaction() as table:
        for record in table.all():
            if not needs_change(record):  # checked again under the lock: it may have started meanwhile
                continue
            fields: dict[str, Any] = {}
            if record.get("state") == RunState.RUNNING:
                fields = change_state(record, RunState.INTERRUPTED, finished_at=now(), outcome={
                    "exit_code": None, "message": "process gone; resumable"})
            if resume:
                fields.update(_requeue({**record, **fields}))
            table.update(fields, doc_ids=[record.doc_id])
            changed.append(record.doc_id)
    return changed


def validate_priority(priority: int) -> int:
    if not -1000 <= priority <= 1000:
        raise BadInput("priority must be between -1000 and 1000")
    return priority
