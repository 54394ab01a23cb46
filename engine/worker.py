"""The worker: claims queued runs and executes each in a child process, one per slot.

How a claimed run is executed is the small Executor interface: local child processes
here, Slurm jobs in engine.slurm; another scheduler is one more executor, with no change to
the queue or the store.
A worker registers itself in <home>/workers/<pid>.json; on start it reconciles runs whose
process is gone. It prints a line per run as it starts and ends, and a notice when the queue
drains (engine.worker_output). `python -m engine.worker` runs one (the CLI's `worker` takes
the same options). Must not import torch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from engine import processes, queue, slurm
from engine.errors import BadInput, BudgetTuiError, explain
from engine.paths import LOG_NAME, history_path, resolve_home, run_dir
from engine.processes import STOP_GRACE_S
from engine.records import RunState, now
from engine.runs import finish_if_running, last_error_line, write_json_atomic
from engine.scheduling import (GpuUse, Placement, Slot, SlotRequest, plan_placement, read_gpu_use,
                               slot_environment)
from engine.store import Store, storage_error
from engine.worker_output import WorkerReport

WORKERS_DIR = "workers"
GpuUseReader = Callable[[], tuple[list[GpuUse], str]]


class RunningRun(Protocol):
    run_id: int

    def poll(self) -> int | None:
        """The exit code once finished (negative: killed by that signal), else None."""

    def stop(self, grace_s: float) -> None:
        """SIGTERM, wait up to grace_s, then SIGKILL."""

    def ending(self) -> tuple[RunState, dict[str, Any]]:
        """Once poll says it ended: the state and outcome to record if the run did not
        record its own (it was killed or crashed)."""


class Executor(Protocol):
    # False: the worker stops its runs when it stops. True: they run on (cluster jobs), and
    # a later worker follows them again (`follow`).
    runs_outlive_worker: bool

    def start(self, record: dict[str, Any], slot: Slot) -> RunningRun:
        """Start the claimed run; a BudgetTuiError (the run then fails) if it cannot."""

    def follow(self, record: dict[str, Any]) -> RunningRun | None:
        """A run started by a worker that is gone, if this executor can still follow it."""

    # An executor whose `submits_arrays` is true also has start_array(records) -> [RunningRun]:
    # the worker then claims runs in batches and starts each batch at once (a Slurm job array).


@dataclass
class LocalRun:
    run_id: int
    process: subprocess.Popen
    log: Path

    def poll(self) -> int | None:
        return self.process.poll()

    def stop(self, grace_s: float) -> None:
        identity = {"pid": self.process.pid, "pgid": self.process.pid, "start_time": None}
        processes.terminate_group(identity, grace_s)
        self.process.wait()

    def ending(self) -> tuple[RunState, dict[str, Any]]:
        code = self.process.poll()
        if code is not None and code < 0:
            return RunState.INTERRUPTED, {"exit_code": code, "message": f"killed by signal {-code}; resumable"}
        last_words = last_error_line(self.log)
        return RunState.FAILED, {"exit_code": code, "message": f"run process exited with code {code}"
                                                              f"{': ' + last_words if last_words else ''}; see {self.log}"}


@dataclass
class LocalExecutor:
    """Each run in `python -m engine.child`, in its own process group (a new session),
    with its slot's GPU (CUDA_VISIBLE_DEVICES) and CPU threads, output in <run dir>/log.txt."""

    home: Path
    data_root: Path | None = None
    runs_outlive_worker = False  # each child dies with its worker (and is found interrupted by pid)

    def follow(self, record: dict[str, Any]) -> None:
        return None

    def start(self, record: dict[str, Any], slot: Slot) -> LocalRun:
        folder = run_dir(self.home, record["id"])
        environment = slot_environment(slot, dict(os.environ))
        command = [sys.executable, "-m", "engine.child", str(self.home), str(record["id"])]
        if self.data_root is not None:
            command += ["--data-root", str(self.data_root)]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / LOG_NAME, "ab") as log:
                log.write(f"--- {now()} start on {slot.label()}\n".encode())
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=environment, start_new_session=True)
        except OSError as error:
            raise storage_error(error, "prepare the run folder", folder) from None
        return LocalRun(record["id"], process, folder / LOG_NAME)


@dataclass
class Worker:
    home: Path
    slots: list[Slot]
    executor: Executor
    once: bool = False  # drain the queue, then exit
    auto_resume: bool = False  # queue interrupted runs again on start (they resume)
    poll_s: float = 0.5
    placement: Placement | None = None  # where the next run goes (engine.scheduling); default: a free slot
    report: WorkerReport | None = None  # its run lines and drain notice; default: plain lines on stdout
    running: dict[Slot, RunningRun] = field(default_factory=dict)
    stopping: bool = False
    history_seen: tuple[int, int, int] | None = None  # the history file the memory estimates came from

    def __post_init__(self) -> None:
        if self.placement is None:
            self.placement = Placement(self.slots)
        if self.report is None:
            self.report = WorkerReport(self.home)

    @property
    def store(self) -> Store:
        return Store(history_path(self.home))

    def run(self) -> None:
        """Execute queued runs until stopped (SIGTERM/SIGINT) or, with once, until drained."""
        signal.signal(signal.SIGTERM, self._ask_to_stop)
        signal.signal(signal.SIGINT, self._ask_to_stop)
        started_at = now()
        registration = register_worker(self.home, self.placement, started_at)
        print(f"worker {os.getpid()} on {', '.join(self.placement.labels())}; home {self.home}",
              file=sys.stderr, flush=True)  # after registering: a home it cannot write is the only line
        try:
            queue.reconcile(self.store, resume=self.auto_resume)
            while not self.stopping:
                held = dict(self.placement.held)
                self._reap()
                self._follow_orphans()
                claimed = self._fill_slots()
                if self.placement.held != held:
                    republish_worker(registration, self.placement, started_at)
                if not self.running and not claimed and not self.stopping:
                    self.report.queue_empty()  # the drain notice, if it ran something since the last one
                    if self.once:
                        break
                time.sleep(self.poll_s)
        finally:
            for slot, run in list(self.running.items()):
                if self.executor.runs_outlive_worker:
                    continue  # a later worker follows it
                run.stop(STOP_GRACE_S)  # the child records "interrupted" itself
                self._record_exit(run, slot)
            self.running.clear()
            self.placement.held.clear()
            registration.unlink(missing_ok=True)

    def _ask_to_stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _fill_slots(self) -> bool:
        """Claim queued runs, in queue order, while the next one has room to start."""
        if getattr(self.executor, "submits_arrays", False):
            return self._fill_as_array()
        claimed = False
        while not self.stopping and self.placement.has_room():
            self._learn_memory()
            record = queue.claim_next(self.store, worker_identity(),
                                      accept=self.placement.fits if self.placement.packing else None)
            if record is None:
                break
            claimed = True
            slot = self.placement.take(record)
            try:
                self.running[slot] = self.executor.start(record, slot)
            except BudgetTuiError as error:  # its folder or log cannot be written: that run fails, the queue goes on
                self._fail_to_start(record, slot, error)
                continue
            self.report.started(record, self._where(slot, self.running[slot]))
        return claimed

    def _fill_as_array(self) -> bool:
        """Claim the queued runs there is room for and start them together (one Slurm job
        array), once every run of the previous array has ended: the array's own limit on
        the tasks running at once is then the only limit."""
        if self.running or self.stopping:
            return False
        claims: list[tuple[dict[str, Any], Slot]] = []
        while self.placement.has_room():
            record = queue.claim_next(self.store, worker_identity())
            if record is None:
                break
            claims.append((record, self.placement.take(record)))
        if not claims:
            return False
        try:
            runs = self.executor.start_array([record for record, _ in claims])  # type: ignore[attr-defined]
        except BudgetTuiError as error:  # refused as a whole: each of its runs fails, the queue goes on
            for record, slot in claims:
                self._fail_to_start(record, slot, error)
            return True
        for (record, slot), run in zip(claims, runs):
            self.running[slot] = run
            self.report.started(record, self._where(slot, run))
        return True

    def _fail_to_start(self, record: dict[str, Any], slot: Slot, error: BudgetTuiError) -> None:
        """A claimed run that could not be started fails with the cause; its slot is free again."""
        self.placement.release(slot)
        self._record_failure(record["id"], None, f"cannot start: {error}")
        self.report.finished(self._as_recorded(record), slot.label())

    @staticmethod
    def _where(slot: Slot, run: RunningRun) -> str:
        """Where a run runs, for its start and end lines: its Slurm job, else its slot."""
        job_id = getattr(run, "job_id", None)
        return f"slurm job {job_id}" if job_id else slot.label()

    def _learn_memory(self) -> None:
        """When packing, read the peaks that finished runs recorded, whenever the history changed."""
        if self.placement.estimates is None or self.store.file_signature() == self.history_seen:
            return
        self.history_seen = self.store.file_signature()
        self.placement.estimates.learn(self.store.list_runs())

    def _follow_orphans(self) -> None:
        """Take over, into free slots, runs whose worker is gone but whose job runs on."""
        free = self.placement.free_slots()
        if not free or self.stopping or not self.executor.runs_outlive_worker:
            return
        for record in queue.adopt_orphans(self.store, worker_identity(), len(free),
                                          followable=lambda record: self.executor.follow(record) is not None):
            run = self.executor.follow(record)
            if run is not None:
                slot = self.placement.take(record, free.pop(0))
                self.running[slot] = run
                self.report.started(record, self._where(slot, run), followed=True)

    def _reap(self) -> None:
        for slot, run in list(self.running.items()):
            if run.poll() is not None:
                del self.running[slot]
                self.placement.release(slot)
                self._record_exit(run, slot)

    def _record_exit(self, run: RunningRun, slot: Slot) -> None:
        """A child that died without recording its outcome (killed, crashed) is recorded
        here; either way, its end is reported as the history holds it."""
        self._record(run.run_id, *run.ending())
        self.report.finished(self._as_recorded({"id": run.run_id}), self._where(slot, run))

    def _as_recorded(self, claimed: dict[str, Any]) -> dict[str, Any]:
        """The run's record now, or what the worker knew of it if the history cannot be
        read (the end is still reported)."""
        try:
            return self.store.get_run(claimed["id"])
        except BudgetTuiError:
            return claimed

    def _record_failure(self, run_id: int, code: int | None, message: str) -> None:
        self._record(run_id, RunState.FAILED, {"exit_code": code, "message": message})

    def _record(self, run_id: int, state: RunState, outcome: dict[str, Any]) -> None:
        """Record a run's end unless it recorded it itself. If the history cannot be written
        either (full disk), say so and keep serving: the run is found stale later."""
        try:
            finish_if_running(self.store, run_id, state, outcome=outcome)
        except BudgetTuiError as error:
            print(f"error: run {run_id} ended ({outcome['message']}) but was not recorded: {error}",
                  file=sys.stderr, flush=True)


def worker_identity() -> dict[str, Any]:
    return processes.process_identity(os.getpid())


def register_worker(home: Path, placement: Placement, started_at: str) -> Path:
    folder = home / WORKERS_DIR
    path = folder / f"{os.getpid()}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, registration(placement, started_at))
    except OSError as error:
        raise storage_error(error, "register the worker in", folder) from None
    return path


def registration(placement: Placement, started_at: str) -> dict[str, Any]:
    """What `worker status` shows: one label per device, and (--json) each slot and its run."""
    return {**worker_identity(), "slots": placement.labels(), "placement": placement.describe(),
            "started_at": started_at}


def republish_worker(path: Path, placement: Placement, started_at: str) -> None:
    """Rewrite the registration after runs started or ended; a home that refuses it (full
    disk) only leaves `worker status` behind, so the worker serves on."""
    try:
        write_json_atomic(path, registration(placement, started_at), sync=False)
    except OSError:
        pass


def live_workers(home: Path) -> list[dict[str, Any]]:
    """Registered workers whose process still runs, and those of other hosts (marked
    "remote": they cannot be checked from here); stale local registrations are removed."""
    found = []
    folder = home / WORKERS_DIR
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict):
            continue
        if processes.is_remote(info):
            found.append({**info, "remote": True})
        elif processes.is_alive(info):
            found.append({**info, "remote": False})
        else:
            path.unlink(missing_ok=True)
    return found


def describe_workers(home: Path, read: GpuUseReader | None = None) -> list[dict[str, Any]]:
    """What `worker status` shows: the live workers, each of this host with this host's GPUs
    as busy as they are now (`read`, default nvidia-smi; read once, and only when a worker
    runs here). A worker of another host gets none: its GPUs cannot be read from here."""
    workers = live_workers(home)
    if not any(not info["remote"] for info in workers):
        return workers
    gpus, problem = (read or read_gpu_use)()
    here = {"gpus": [gpu.to_dict() for gpu in gpus], "gpus_problem": problem or None}
    return [info if info["remote"] else {**info, **here} for info in workers]


def stop_workers(home: Path, grace_s: float = STOP_GRACE_S + 5) -> list[int]:
    """SIGTERM every live worker of this host and home and wait for them to exit. Workers
    of other hosts are never signalled (their pids mean nothing here)."""
    workers = [info for info in live_workers(home) if processes.terminate(info)]
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(processes.is_alive(info) for info in workers):
        time.sleep(0.1)
    return [info["pid"] for info in workers]


# --- the worker's options, shared by `budget-tui worker` and `python -m engine.worker`
SLURM_OPTIONS: dict[str, type] = {  # Slurm job settings (engine.slurm.SlurmSettings) as options
    "partition": str, "time": int, "cpus": int, "gpus_per_run": int, "mem": str, "account": str,
    "sbatch": list, "max_jobs": int, "array": int,
}


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs: where its runs execute and when it stops."""

    gpus: str | None = None  # local slots, see engine.scheduling.parse_gpus
    slots: int | None = None  # runs side by side on the CPU (engine.scheduling)
    slots_per_gpu: int | None = None  # runs side by side on each GPU
    pack_memory: float | None = None  # pack runs onto a GPU while their peaks stay under this fraction
    run_memory: str | None = None  # when packing, the memory of a run whose peak is unknown, e.g. "6G"
    once: bool = False  # drain the queue, then exit
    auto_resume: bool = False  # queue interrupted runs again on start
    executor: str = "local"  # local (child processes) or slurm (one job per run)
    slurm: dict[str, Any] = field(default_factory=dict)  # SLURM_OPTIONS given; None or absent: not given
    data_root: Path | None = None  # None: the child's default (env, then <home>/data)
    as_json: bool = False  # the run lines and drain notice as one JSON object per line
    on_drain: str | None = None  # a shell command run each time the queue drains

    def slot_request(self) -> SlotRequest:
        return SlotRequest(self.gpus, self.slots, self.slots_per_gpu, self.pack_memory, self.run_memory)

    def given_slurm_options(self) -> dict[str, Any]:
        return {name: value for name, value in self.slurm.items() if value is not None}

    def arguments(self) -> list[str]:
        """The options on a command line, as `python -m engine.worker` parses them back."""
        arguments = [f"--executor={self.executor}"]
        for name, value in self.given_slurm_options().items():
            values = value if isinstance(value, list) else [value]
            arguments += [f"--{name.replace('_', '-')}={item}" for item in values]
        arguments += [f"--gpus={self.gpus}"] if self.gpus is not None else []
        arguments += self.slot_request().arguments()
        arguments += ["--once"] * self.once + ["--auto-resume"] * self.auto_resume + ["--json"] * self.as_json
        arguments += [f"--on-drain={self.on_drain}"] if self.on_drain is not None else []
        return arguments + ([f"--data-root={self.data_root}"] if self.data_root is not None else [])


def build_executor(home: Path, options: WorkerOptions) -> tuple[Placement, Executor]:
    """Where runs go (the slots) and the executor the options ask for; BadInput for options
    that do not go together, and (slurm) when Slurm is not there to take jobs."""
    request = options.slot_request()
    if options.executor == "slurm":
        if options.gpus is not None:
            raise BadInput("--gpus picks this machine's GPUs; with --executor slurm use --gpus-per-run")
        if request.several_per_device():
            raise BadInput(f"{next(iter(request.given()))} places runs on this machine; "
                           f"with --executor slurm each run is a job (see --max-jobs)")
        settings = slurm.SlurmSettings.load(home, options.slurm)
        slurm.check_available()
        followed = settings.array or settings.max_jobs  # runs in flight: an array's tasks wait in Slurm
        return Placement([Slot(None, job=index) for index in range(1, followed + 1)]), \
            slurm.SlurmExecutor(home, settings, options.data_root)
    if options.executor == "local":
        given = [f"--{name.replace('_', '-')}" for name in options.given_slurm_options()]
        if given:
            raise BadInput(f"{given[0]} is a Slurm job setting: add --executor slurm")
        return plan_placement(request), LocalExecutor(home, options.data_root)
    raise BadInput(f"--executor takes local or slurm, got {options.executor!r}")


def prepare_worker(home: Path, options: WorkerOptions) -> Worker:
    """A worker ready to run, every option checked; the history is read first, so a
    corrupted one is reported now rather than from the background."""
    Store(history_path(home)).list_runs()
    placement, executor = build_executor(home, options)
    return Worker(home, placement.slots, executor, once=options.once, auto_resume=options.auto_resume,
                  placement=placement, report=WorkerReport(home, options.as_json, options.on_drain))


def start_detached_worker(home: Path, options: WorkerOptions | None = None) -> tuple[int, Path]:
    """Start `python -m engine.worker` in a new session, so it outlives the terminal (SSH
    logout); its output goes to <home>/worker.log. Returns (pid, log path)."""
    command = [sys.executable, "-m", "engine.worker", f"--home={home}", *(options or WorkerOptions()).arguments()]
    log_path = home / "worker.log"
    try:
        home.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
    except OSError as error:
        raise storage_error(error, "write the worker log", log_path) from None
    return process.pid, log_path


def parse_arguments(argv: list[str] | None = None) -> tuple[Path, WorkerOptions]:
    parser = argparse.ArgumentParser(prog="python -m engine.worker",
                                     description="Execute queued runs (what `budget-tui worker` runs).")
    parser.add_argument("--home", type=Path, default=None, help="history and run folders (default: as budget-tui)")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--gpus", default=None, help="one slot per GPU, e.g. 0,1; cpu for a CPU slot")
    parser.add_argument("--slots", type=int, default=None, help="N runs side by side on the CPU")
    parser.add_argument("--slots-per-gpu", type=int, default=None, help="N runs side by side on each GPU")
    parser.add_argument("--pack-memory", type=float, default=None, help="pack runs onto each GPU under this fraction")
    parser.add_argument("--run-memory", default=None, help="with --pack-memory: a run of unknown peak, e.g. 6G")
    parser.add_argument("--once", action="store_true", help="drain the queue, then exit")
    parser.add_argument("--auto-resume", action="store_true", help="queue interrupted runs again on start")
    parser.add_argument("--executor", default="local", help="local or slurm")
    parser.add_argument("--json", action="store_true", help="each run's start and end as a JSON line")
    parser.add_argument("--on-drain", default=None, help="a shell command run when the queue drains")
    for name, kind in SLURM_OPTIONS.items():
        flag = f"--{name.replace('_', '-')}"
        if kind is list:
            parser.add_argument(flag, action="append", default=None, help="a Slurm job setting (repeatable)")
        else:
            parser.add_argument(flag, type=kind, default=None, help="a Slurm job setting")
    arguments = parser.parse_args(argv)
    return resolve_home(arguments.home), WorkerOptions(
        gpus=arguments.gpus, slots=arguments.slots, slots_per_gpu=arguments.slots_per_gpu,
        pack_memory=arguments.pack_memory, run_memory=arguments.run_memory, once=arguments.once,
        auto_resume=arguments.auto_resume, executor=arguments.executor,
        slurm={name: getattr(arguments, name) for name in SLURM_OPTIONS}, data_root=arguments.data_root,
        as_json=arguments.json, on_drain=arguments.on_drain)


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.worker [options]`: a worker in the foreground, without the CLI (a
    detached worker runs this). An error is one line on stderr and the CLI's exit code."""
    home, options = parse_arguments(argv)
    try:
        prepare_worker(home, options).run()
    except Exception as error:
        message, exit_code = explain(error)
        print(f"error: {message}", file=sys.stderr, flush=True)
        return exit_code
    return 0


if __name__ == "__main__":
    # Run as a script, this file is __main__; no module it imports imports engine.worker back
    # (tests/test_hygiene.py forbids import cycles), so no second copy of it is ever made.
    sys.exit(main())
