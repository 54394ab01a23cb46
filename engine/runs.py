"""Executing a run in this process and keeping its record true: started, done, failed.

The CLI's `run` and the worker's child both go through `execute_run`, so a run's record
always ends in done, failed or interrupted with its summary or error kept -- or, if it
was cancelled before it started, the run does not train at all. Imports the training
engine (torch) only inside `execute_run`.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import IO, Any

from engine.atomic import write_atomic
from engine.config import RunConfig
from engine.errors import BadInput, BudgetTuiError, NotFound
from engine.events import EventHandler, RunSummary, TrainingEvent
from engine.paths import CHECKPOINT_NAME, LOG_NAME, PROGRESS_NAME, TRACEBACK_NAME, run_dir
from engine.processes import process_identity
from engine.records import RunState, TransitionRefused, change_state, now, parse_time
from engine.store import Store, storage_error

PROGRESS_MIN_INTERVAL_S = 1.0  # progress.json rewrites per run, at most this often
CONFIG_NAME = "config.json"  # the run's config, written when it first starts


def execute_run(
    store: Store,
    home: Path,
    run_id: int,
    config: RunConfig,
    *,
    data_root: Path,
    on_event: EventHandler | None = None,
    data: Any = None,
    log_as: str | None = None,
) -> RunSummary:
    """Train run `run_id` (recorded as running: claimed by a worker or inserted by `run`)
    in this process, keeping its record up to date; returns the summary.

    The record names this process (pid + start time) so a crash is detected -- unless the
    run was cancelled meanwhile: then TransitionRefused, and nothing trains. Progress goes
    to <run dir>/progress.json, not to the store. A failure, including one writing the run
    folder (full disk), marks the run failed with its cause, removes half-written files
    and is re-raised; an interrupt (Ctrl-C, SIGTERM from a worker) marks it interrupted --
    it resumes from its last checkpoint. A cancel recorded meanwhile is never overwritten.

    `log_as` (say, "in the foreground"): this process's output is not a log already (as a
    worker's child's is), so the events and the end go to <run dir>/log.txt, as a child
    prints them, under a start line saying where the run trains.
    """
    folder = run_dir(home, run_id)
    record_start(store, run_id, process_identity(os.getpid()), run_dir=str(folder))
    log = RunLog(None)
    try:
        prepare_run_folder(folder, config)
        if log_as is not None:
            log = RunLog.start(folder / LOG_NAME, f"{log_as} (pid {os.getpid()})")
        from engine.train.loop import train  # torch is imported only when a run really starts

        progress = ProgressWriter(folder / PROGRESS_NAME)

        def handle(event: TrainingEvent) -> None:
            if on_event is not None:
                on_event(event)
            progress.update(event)
            log.event(event)

        summary = train(config, folder, data_root=data_root, on_event=handle, data=data)
    except (KeyboardInterrupt, Interrupted):
        finish_if_running(store, run_id, RunState.INTERRUPTED,
                          outcome={"exit_code": 130, "message": "interrupted; resumable from its checkpoint"})
        log.close("interrupted; resumable from its checkpoint")
        raise
    except BaseException as error:
        remove_temporary_files(folder)  # first: on a full disk this frees the room to record the failure
        cause = str(error) if isinstance(error, BudgetTuiError) else f"{type(error).__name__}: {error}"
        finish_if_running(store, run_id, RunState.FAILED, outcome={
            "exit_code": getattr(error, "exit_code", 1), "message": cause,
            "traceback_file": write_traceback(folder)})
        log.close(f"error: {cause}")
        raise
    if finish_if_running(store, run_id, RunState.DONE, summary=compact_summary(summary),
                         outcome={"exit_code": 0, "message": "ok"}) and not config.keep_checkpoint:
        remove_checkpoint(folder)
    log.close()
    return summary


def record_start(store: Store, run_id: int, process: dict[str, Any], **fields: Any) -> None:
    """Name the process that trains a claimed run. TransitionRefused if the run stopped
    being running meanwhile (cancelled while its process started): it must not train."""
    with store.transaction() as table:
        record = table.get(doc_id=run_id)
        if record is None:
            raise NotFound(f"no run with id {run_id} in {store.path}")
        if record.get("state") != RunState.RUNNING:
            raise TransitionRefused(f"run {run_id} is {record.get('state')}, not started")
        table.update({**fields, "process": process}, doc_ids=[run_id])


def finish_if_running(store: Store, run_id: int, state: RunState, **fields: Any) -> bool:
    """Move a run out of `running` unless something else (a cancel) already did."""
    with store.transaction() as table:
        record = table.get(doc_id=run_id)
        if record is None or record.get("state") != RunState.RUNNING:
            return False
        table.update(change_state(record, state, finished_at=now(), **fields), doc_ids=[run_id])
        return True


def event_line(event: TrainingEvent) -> str | None:
    """The line a run's log keeps for an event: the event as JSON, but none for steps (they
    only feed progress.json, and would make the log as long as the run)."""
    return None if event["event"] == "step" else json.dumps(event, default=str)


class RunLog:
    """<run dir>/log.txt of a run trained in this process, appended to line by line (a run
    resumed after an interrupt continues the same log). RunLog(None) writes nothing."""

    def __init__(self, file: IO[str] | None) -> None:
        self.file = file

    @classmethod
    def start(cls, path: Path, where: str) -> RunLog:
        try:
            log = cls(open(path, "a", encoding="utf-8"))
        except OSError as error:
            raise storage_error(error, "write the run log", path) from None
        log.write(f"--- {now()} start {where}")
        return log

    def write(self, line: str) -> None:
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()  # `budget-tui log -f` shows it as it happens

    def event(self, event: TrainingEvent) -> None:
        line = event_line(event)
        if line is not None:
            self.write(line)

    def close(self, last_line: str | None = None) -> None:
        """Close the log, with `last_line` (why the run stopped) if given. A log that cannot
        take it (full disk) must not hide the run's own outcome, which is recorded already."""
        if self.file is None:
            return
        try:
            if last_line is not None:
                self.write(last_line)
            self.file.close()
        except OSError:
            pass
        self.file = None


def prepare_run_folder(folder: Path, config: RunConfig) -> None:
    """Create the run folder and record the run's config in it. A folder that already holds
    another config belongs to another run: its checkpoint must never be resumed as this
    run's (BadInput naming the keys that differ). A key the saved config lacks (a field
    added since) counts as its default."""
    wanted = json.loads(json.dumps(config.to_dict()))  # as it reads back: tuples become lists
    path = folder / CONFIG_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        saved = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
        if saved is None:
            write_json_atomic(path, wanted)
            return
    except ValueError as error:
        raise BadInput(f"the run folder's config {path} is unreadable ({error}); "
                       f"it may belong to another run") from None
    except OSError as error:
        raise storage_error(error, "prepare the run folder", folder) from None
    # A folder written before a field existed ran with that field's default.
    saved = {**json.loads(json.dumps(RunConfig().to_dict())), **saved}
    differing = sorted(key for key in wanted.keys() | saved.keys() if wanted.get(key) != saved.get(key))
    if differing:
        changes = "; ".join(f"{key}: {saved.get(key)!r} there, {wanted.get(key)!r} here" for key in differing)
        raise BadInput(f"run folder {folder} holds a run of another config ({path}), refusing to resume "
                       f"its checkpoint: {changes}")


def remove_checkpoint(folder: Path) -> int:
    """Delete a done run's checkpoint.pt; the bytes freed. Only once the record says done: a
    crash before that leaves the run resumable (it is found interrupted and its checkpoint
    finishes it again). A checkpoint that cannot be deleted costs room, not the run's
    outcome: `history prune-checkpoints` removes it later."""
    path = folder / CHECKPOINT_NAME
    try:
        size = path.stat().st_size
        path.unlink()
    except OSError:
        return 0
    return size


def remove_temporary_files(folder: Path) -> None:
    """Half-written files (checkpoint.tmp and the like) left by a failed write."""
    for temporary in folder.glob("*.tmp"):
        temporary.unlink(missing_ok=True)


def write_traceback(folder: Path) -> str | None:
    """The current exception's traceback in the run folder; None if the folder refuses it."""
    path = folder / TRACEBACK_NAME
    try:
        path.write_text(traceback.format_exc(), encoding="utf-8")
    except OSError:
        remove_temporary_files(folder)
        try:
            path.unlink(missing_ok=True)  # a part written before the disk filled up
        except OSError:
            pass
        return None
    return str(path)


class Interrupted(Exception):
    """Raised in a run's process when it is asked to stop (SIGTERM); the run is resumable."""


def compact_summary(summary: RunSummary) -> dict[str, Any]:
    """The summary kept in the store: the plan is derivable and stays in summary.json."""
    return {key: value for key, value in summary.items() if key != "plan"}


ETA_MIN_REPORTS = 3  # step reports before an ETA is given: the first steps carry the warm-up


class EtaClock:
    """Remaining time from the average rate since training began in this process (after the
    data loaded; a resumed run counts from its checkpoint's step). It moves steadily, where a
    rate over the last few steps jumps with warm-up and evaluations; None until
    ETA_MIN_REPORTS step reports are in. `run`'s progress bar and progress.json both use it."""

    def __init__(self) -> None:
        self.start: tuple[int, float] | None = None  # (step, moment) when training began
        self.reports = 0

    def begin(self, step: int, moment: float) -> None:
        self.start, self.reports = (step, moment), 0

    def observe(self, step: int, total: int, moment: float) -> float | None:
        """One more report of the step reached; the ETA in seconds, or None as yet."""
        self.reports += 1
        if self.start is None or not total or self.reports < ETA_MIN_REPORTS:
            return None
        first_step, first_moment = self.start
        done = step - first_step
        return max(total - step, 0) * (moment - first_moment) / done if done > 0 else None


class ProgressWriter:
    """Keeps <run dir>/progress.json current (at most every PROGRESS_MIN_INTERVAL_S, and at
    every epoch end); its `updated_at` doubles as the run's heartbeat."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_write = 0.0
        self.eta = EtaClock()
        self.state: dict[str, Any] = {}

    def update(self, event: TrainingEvent) -> None:
        kind = event["event"]
        moment = time.monotonic()
        if kind == "start":
            self.state.update(steps=event["plan"]["total_steps"], epochs=event["plan"]["epochs"],
                              epoch=event["epoch"], device=event["device"], eta_s=None)
            self.eta.begin(self.state.get("step", 0), moment)
        elif kind == "resume":
            self.state.update(step=event["step"], epoch=event["epoch"])
        elif kind == "step":
            self.state.update(step=event["step"], epoch=event["epoch"])
        elif kind == "epoch":
            self.state.update(step=event["step"], epoch=event["epoch"], test_acc=event["test_acc"],
                              train_loss=event["train_loss"], images_per_s=event["images_per_s"])
        else:
            return
        if kind in ("step", "epoch"):
            self.state["eta_s"] = self.eta.observe(self.state["step"], self.state.get("steps", 0), moment)
        if kind == "epoch" or moment - self.last_write >= PROGRESS_MIN_INTERVAL_S:
            self.last_write = moment
            self.state["updated_at"] = time.time()
            write_json_atomic(self.path, self.state, sync=False)  # a progress note, cheap to lose


def read_progress(record: dict[str, Any]) -> dict[str, Any]:
    """The live progress of a run's current attempt (empty if it has none yet). `queue ls`
    and the terminal UI both read it here, so they agree on what a run has done."""
    folder = record.get("run_dir")
    if not folder:
        return {}
    try:
        progress = json.loads((Path(folder) / PROGRESS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return current_progress(record, progress) if isinstance(progress, dict) else {}


def current_progress(record: dict[str, Any], progress: dict[str, Any]) -> dict[str, Any]:
    """`progress` unless it was written before the run's current attempt started (a resumed
    run keeps the last attempt's file until its new process writes): then none yet."""
    started, updated = parse_time(record.get("started_at")), progress.get("updated_at")
    if started is not None and isinstance(updated, (int, float)) and updated < started.timestamp():
        return {}
    return progress


def last_error_line(log: Path) -> str:
    """The last line a run process wrote (its one-line error, if it printed one)."""
    try:
        with open(log, "rb") as file:
            file.seek(max(0, os.fstat(file.fileno()).st_size - 4096))
            lines = file.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip() and not line.startswith("--- ")), "")


def write_json_atomic(path: Path, value: Any, *, sync: bool = True) -> None:
    write_atomic(path, json.dumps(value), sync=sync)
