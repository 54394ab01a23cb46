"""Queued runs as Slurm jobs, submitted through submitit: settings, submission, liveness, cancel.

Each claimed run becomes one job that runs the usual child entry point on a node, so the
home must be on a filesystem the nodes share (the job checks it sees the history). A Slurm
run's liveness comes from Slurm (squeue, scontrol, then sacct where accounting is on), never
from a pid: the record keeps {"job_id", "state", "reason"} under "slurm". Jobs outlive the
worker that submitted them; a later worker follows them again. Near its time limit a job is
signalled, and submitit requeues it; the requeued job resumes from the run's last checkpoint.
With `array = N` a worker submits up to N claimed runs at once as one job array, whose
tasks Slurm runs at most max_jobs at a time; each task is one run, its id `<array>_<task>`.
Must not import torch; submitit is imported only to submit or inside a job.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from engine.errors import BadInput, BudgetTuiError
from engine.paths import LOG_NAME, history_path, run_dir
from engine.records import RunState, now
from engine.runs import last_error_line
from engine.store import Store

SETTINGS_NAME = "slurm.toml"  # <home>/slurm.toml: the job settings of this home
JOB_FOLDER = "slurm"  # <run dir>/slurm: submitit's scripts, pickles and the job's own output
ARRAYS_FOLDER = "slurm-arrays"  # <home>/slurm-arrays/<array id>: the same for each job array
# Job states in which the job may still produce its run's result.
ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
    "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD",
})
SLURM_TIMEOUT_S = 30  # one squeue/scontrol/sbatch call; a busy controller answers slowly


@dataclass(frozen=True)
class SlurmSettings:
    """What each run's job asks for. Read from <home>/slurm.toml, then overridden by options."""

    partition: str | None = None
    time: int = 60  # minutes
    cpus: int = 1
    gpus_per_run: int = 0
    mem: str | None = None  # as sbatch takes it: 4G, 500M
    account: str | None = None
    sbatch: tuple[str, ...] = ()  # extra sbatch flags, e.g. "--qos=high", "--exclusive"
    max_jobs: int = 4  # jobs in flight at once (with array: tasks of the array running at once)
    array: int = 0  # up to this many runs go as one job array; 0: each run is its own job
    signal_delay_s: int = 90  # the job is signalled this long before its time limit, to checkpoint
    max_requeues: int = 3  # time limits a run may hit and be requeued before it is left interrupted

    @classmethod
    def load(cls, home: Path, overrides: dict[str, Any] | None = None) -> SlurmSettings:
        """The home's settings file (if any) with `overrides` (None values ignored) on top;
        BadInput names the file and key of a bad setting."""
        path = home / SETTINGS_NAME
        values: dict[str, Any] = {}
        if path.is_file():
            try:
                values = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise BadInput(f"cannot read the Slurm settings {path}: {error}") from None
        settings = cls._from_values(values, f"{path}: ")
        return settings._from_values({key: value for key, value in (overrides or {}).items() if value is not None},
                                     "", base=settings)

    @classmethod
    def _from_values(cls, values: dict[str, Any], where: str, base: SlurmSettings | None = None) -> SlurmSettings:
        known = {item.name: item for item in fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise BadInput(f"{where}unknown Slurm setting {key!r}; known: {', '.join(known)}")
            if name == "sbatch":
                if isinstance(value, str):
                    value = [value]
                if not isinstance(value, (list, tuple)) or not all(isinstance(flag, str) for flag in value):
                    raise BadInput(f"{where}sbatch takes a list of flags like [\"--qos=high\"], got {value!r}")
                bad = [flag for flag in value if not flag.startswith("--") or len(flag) < 3]
                if bad:
                    raise BadInput(f"{where}sbatch flags are long options like --qos=high, got {bad[0]!r}")
                value = tuple(value)
            elif name in ("partition", "mem", "account"):
                if not isinstance(value, str) or not value.strip():
                    raise BadInput(f"{where}{key} takes a non-empty string, got {value!r}")
            else:
                least = 0 if name in ("gpus_per_run", "max_requeues", "array") else 1
                if type(value) is not int or value < least:
                    raise BadInput(f"{where}{key} takes a whole number >= {least}, got {value!r}")
            changes[name] = value
        return replace(base or cls(), **changes)

    def submitit_parameters(self) -> dict[str, Any]:
        """The parameters of submitit's SlurmExecutor for one run's job."""
        extra: dict[str, Any] = {}
        for flag in self.sbatch:
            key, has_value, value = flag[2:].partition("=")
            extra[key] = value if has_value else True
        parameters: dict[str, Any] = {"time": self.time, "cpus_per_task": self.cpus, "ntasks_per_node": 1,
                                      "signal_delay_s": self.signal_delay_s, "job_name": "budget-tui"}
        optional = {"partition": self.partition, "mem": self.mem, "account": self.account,
                    "gpus_per_node": self.gpus_per_run or None, "additional_parameters": extra or None}
        return {**parameters, **{key: value for key, value in optional.items() if value is not None}}


def check_available(environment: dict[str, str] | None = None) -> None:
    """BadInput (one line) unless Slurm's commands are here and its controller answers."""
    if shutil.which("sbatch", path=(environment or os.environ).get("PATH")) is None:
        raise BadInput("--executor slurm: sbatch is not on PATH (run the worker on a Slurm login node)")
    try:
        answer = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=SLURM_TIMEOUT_S,
                                env=environment)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BadInput(f"--executor slurm: the Slurm controller does not answer ({error})") from None
    if answer.returncode != 0 or "UP" not in answer.stdout:
        said = (answer.stdout + answer.stderr).strip().splitlines()
        raise BadInput(f"--executor slurm: the Slurm controller does not answer ({said[-1] if said else 'no reply'})")


# --- what Slurm says about jobs
@dataclass(frozen=True)
class JobInfo:
    state: str  # Slurm's job state, e.g. PENDING, RUNNING, TIMEOUT; GONE when Slurm no longer knows it
    reason: str = ""
    exit_code: str = ""  # "code:signal", once it ended

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def describe(self) -> str:
        if self.state == GONE:
            return "unknown to Slurm (no longer listed, and no accounting to ask)"
        details = [part for part in (self.reason if self.reason not in ("", "None") else "",
                                     f"exit code {self.exit_code}" if self.exit_code not in ("", "0:0") else "") if part]
        return f"{self.state} ({', '.join(details)})" if details else self.state


GONE = "GONE"


def _slurm(command: list[str]) -> subprocess.CompletedProcess | None:
    """Run a Slurm client command; None if it cannot run or times out (no answer this time)."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=SLURM_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None


def query_jobs(job_ids: list[str]) -> dict[str, JobInfo]:
    """The state of each job Slurm answers for. Jobs Slurm no longer knows are GONE; a job
    missing from the answer because the controller did not answer is left out (ask again)."""
    if not job_ids:
        return {}
    answer = _slurm(["squeue", "-h", "-r", "--states=all", "-o", "%i|%T|%r", "-j", ",".join(job_ids)])
    if answer is None or (answer.returncode != 0 and "Invalid job id" not in answer.stderr):
        return {}
    found: dict[str, JobInfo] = {}
    for line in answer.stdout.splitlines():
        job_id, state, reason = (line.split("|") + ["", ""])[:3]
        if job_id in job_ids:
            found[job_id] = JobInfo(state.strip(), reason.strip())
    for job_id in job_ids:
        if job_id not in found:
            found[job_id] = accounting_info(job_id) or JobInfo(GONE)
    return found


def job_details(job_id: str) -> JobInfo | None:
    """State, reason and exit code of one job from scontrol (it keeps ended jobs a while),
    then from accounting; None if neither knows it."""
    answer = _slurm(["scontrol", "show", "job", "-o", job_id])
    if answer is not None and answer.returncode == 0:
        words = dict(word.split("=", 1) for word in answer.stdout.split() if "=" in word)
        if "JobState" in words:
            return JobInfo(words["JobState"], words.get("Reason", ""), words.get("ExitCode", ""))
    return accounting_info(job_id)


def accounting_info(job_id: str) -> JobInfo | None:
    """The job as Slurm's accounting recorded it; None where accounting is off or silent."""
    answer = _slurm(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,Reason,ExitCode"])
    if answer is None or answer.returncode != 0:
        return None
    for line in answer.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 4 and parts[0] == job_id:
            return JobInfo(parts[1].split()[0], parts[2], parts[3])  # "CANCELLED by 0" -> CANCELLED
    return None


def cancel_job(job_id: str) -> str | None:
    """scancel the job; None if done, else why not (one line)."""
    answer = _slurm(["scancel", job_id])
    if answer is None:
        return "scancel did not answer"
    return None if answer.returncode == 0 else (answer.stderr.strip() or f"scancel exited {answer.returncode}")


def job_of(record: dict[str, Any]) -> str | None:
    """The Slurm job id of a run that was submitted as a job, else None."""
    job = record.get("slurm")
    return str(job["job_id"]) if isinstance(job, dict) and job.get("job_id") else None


def display_state(record: dict[str, Any]) -> str:
    """The state to show for a run: a running run's Slurm job that waits shows as pending."""
    state = record.get("state", "?")
    job = record.get("slurm") or {}
    if state == RunState.RUNNING and job.get("state") in ACTIVE_STATES - {"RUNNING", "COMPLETING"}:
        return job["state"].lower()
    return state


# --- the job, on the node
def this_job_id() -> str:
    """The id of the job running this process as the record holds it: `<array>_<task>` for a
    task of a job array (Slurm gives each task a job id of its own as well), else the job's."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "?")


class HomeNotShared(BudgetTuiError):
    """The node running a job cannot see the home: it is not on a filesystem the nodes share."""


@dataclass
class ChildJob:
    """What a run's job executes on its node: check the home is visible there, then the same
    child entry point a local worker starts. Checkpointable the submitit way: near the time
    limit submitit asks for `checkpoint` and requeues the job, which resumes the run."""

    home: str
    run_id: int
    data_root: str | None = None

    def __call__(self) -> int:
        home = Path(self.home)
        if not history_path(home).is_file():
            raise HomeNotShared(f"the home {home} is not visible on node {socket.gethostname()}: it must be on "
                                f"a filesystem that the cluster's nodes share")
        log = run_dir(home, self.run_id) / LOG_NAME
        with open(log, "ab") as output:  # the run's log, as with a local worker
            output.write(f"--- {now()} slurm job {this_job_id()} "
                         f"on {socket.gethostname()}\n".encode())
            output.flush()
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
                os.dup2(output.fileno(), stream.fileno())
        signal.signal(signal.SIGUSR2, _requeue_quietly(signal.getsignal(signal.SIGUSR2)))
        from engine import child

        arguments = [self.home, str(self.run_id)] + (["--data-root", self.data_root] if self.data_root else [])
        return child.main(arguments, supervised_by_scheduler=True)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeue as it is: the run itself resumes from its last checkpoint file."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _requeue_quietly(submitit_handler: Any) -> Callable[[int, Any], None]:
    """Wrap submitit's time-limit handler: it checkpoints and requeues the job, then exits.
    The run stays recorded as running (the requeued job continues it), so the exit must not
    record anything. If submitit does not requeue (out of requeues), training goes on until
    Slurm ends the job; the worker then records it interrupted with Slurm's reason."""
    def handle(signum: int, frame: Any) -> None:
        try:
            if callable(submitit_handler):
                submitit_handler(signum, frame)
        except SystemExit:
            sys.stdout.flush()
            os._exit(0)
        except Exception as error:  # not requeued: submitit says why
            print(f"not requeued: {error}", file=sys.stderr, flush=True)

    return handle


# --- the executor, in the worker
@dataclass
class SlurmExecutor:
    """Starts each claimed run as one Slurm job and follows it by its job id."""

    home: Path
    settings: SlurmSettings
    data_root: Path | None = None
    refresh_s: float = 2.0  # Slurm is asked about all jobs in flight at most this often
    runs_outlive_worker = True  # a job runs on when its worker stops; a later worker follows it
    _known: dict[str, JobInfo] = field(default_factory=dict)
    _followed: set[str] = field(default_factory=set)
    _asked_at: float = 0.0

    @property
    def store(self) -> Store:
        return Store(history_path(self.home))

    @property
    def submits_arrays(self) -> bool:
        """True: the worker hands its claimed runs over together (`start_array`)."""
        return self.settings.array > 0

    def start(self, record: dict[str, Any], slot: Any) -> SlurmRun:
        """Submit one run as one job; its files go in <run dir>/slurm."""
        return self._submit([record], run_dir(self.home, record["id"]) / JOB_FOLDER, {})[0]

    def start_array(self, records: list[dict[str, Any]]) -> list[SlurmRun]:
        """Submit the runs as one job array (one task each) that runs at most max_jobs tasks
        at once; its files go in <home>/slurm-arrays/<array id>."""
        return self._submit(records, self.home / ARRAYS_FOLDER / "%A",
                            {"array_parallelism": self.settings.max_jobs})

    def _submit(self, records: list[dict[str, Any]], folder: Path, extra: dict[str, Any]) -> list[SlurmRun]:
        """One sbatch for all `records` (an array when there are several); each job id is
        written to its run's record, and a run cancelled meanwhile has its job cancelled.
        BudgetTuiError, naming the runs, if Slurm refuses."""
        import submitit

        ids = ", ".join(str(record["id"]) for record in records)
        data_root = str(self.data_root) if self.data_root is not None else None
        try:
            for record in records:  # the job writes the run's log there from its first line
                run_dir(self.home, record["id"]).mkdir(parents=True, exist_ok=True)
            executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=self.settings.max_requeues)
            executor.update_parameters(**self.settings.submitit_parameters(), **extra)
            with executor.batch():
                jobs = [executor.submit(ChildJob(str(self.home), record["id"], data_root)) for record in records]
        except OSError as error:
            raise BudgetTuiError(f"cannot submit run {ids} to Slurm: {error}") from None
        except (subprocess.CalledProcessError, RuntimeError, ValueError) as error:
            said = getattr(error, "stderr", None) or getattr(error, "output", None) or error
            said = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
            raise BudgetTuiError(f"sbatch refused run {ids}: {said.strip().splitlines()[-1] if said.strip() else error}") from None
        runs = []
        for record, job in zip(records, jobs):
            run = SlurmRun(record["id"], str(job.job_id), self, folder=job.paths.folder)
            news = {"job_id": run.job_id, "state": "PENDING", "reason": "", "submitted_at": now()}
            if run.folder != run_dir(self.home, record["id"]) / JOB_FOLDER:
                news["folder"] = str(run.folder)  # an array's files are not in the run's folder
            if not note_job(self.store, record["id"], news):
                cancel_job(run.job_id)  # cancelled while it was submitted: the job must not wait for a node
            runs.append(run)
        return runs

    def follow(self, record: dict[str, Any]) -> SlurmRun | None:
        job_id = job_of(record)
        if not job_id:
            return None
        job = record.get("slurm") or {}
        return SlurmRun(record["id"], job_id, self, seen=job.get("state", ""),
                        folder=Path(job["folder"]) if job.get("folder") else None)

    def info(self, job_id: str) -> JobInfo | None:
        """What Slurm last said about a job (asking again, for every job followed, at most every refresh_s)."""
        self._followed.add(job_id)
        if time.monotonic() - self._asked_at >= self.refresh_s or job_id not in self._known:
            self._known = query_jobs(sorted(self._followed))
            self._asked_at = time.monotonic()
        return self._known.get(job_id)

    def forget(self, job_id: str) -> None:
        self._followed.discard(job_id)
        self._known.pop(job_id, None)


@dataclass
class SlurmRun:
    run_id: int
    job_id: str
    executor: SlurmExecutor
    seen: str = ""  # the job state last written to the record
    ended: JobInfo | None = None
    folder: Path | None = None  # submitit's files of the job; None: <run dir>/slurm

    def poll(self) -> int | None:
        """0 once the job ended (what it left is read by `ending`), else None."""
        if self.ended is not None:
            return 0
        info = self.executor.info(self.job_id)
        if info is None:
            return None  # no answer from Slurm this time
        if info.active:
            if info.state != self.seen:
                self.seen = info.state
                self._note({"state": info.state, "reason": info.reason})
            return None
        self.ended = job_details(self.job_id) or info
        self.executor.forget(self.job_id)
        self._note({"state": self.ended.state, "reason": self.ended.reason, "exit_code": self.ended.exit_code})
        return 0

    def _note(self, news: dict[str, Any]) -> None:
        """Keep the record's job state current; a history that cannot be written now (full
        disk) only delays that news, so the worker says so and goes on."""
        try:
            note_job(self.executor.store, self.run_id, {"job_id": self.job_id, **news})
        except BudgetTuiError as error:
            print(f"error: run {self.run_id}: slurm job {self.job_id} is {news['state']} but was not recorded: "
                  f"{error}", file=sys.stderr, flush=True)

    def stop(self, grace_s: float) -> None:
        cancel_job(self.job_id)

    def ending(self) -> tuple[RunState, dict[str, Any]]:
        """What to record if the job ended while its run was still recorded as running (the
        run's process records done and failed itself; a cancel from budget-tui is recorded
        before its scancel): a failure the job reported, or -- killed or cancelled from
        outside, time limit, node failure, preemption, out of memory -- interrupted with
        Slurm's reason, resumable from the last checkpoint."""
        ended = self.ended or JobInfo(GONE)
        job = f"slurm job {self.job_id}"
        folder = self.folder or run_dir(self.executor.home, self.run_id) / JOB_FOLDER
        result = _job_result(folder, self.job_id)
        if result is not None and result[0] == "error":
            last = [line for line in str(result[1]).strip().splitlines() if line.strip()]
            return RunState.FAILED, {"exit_code": None, "message": f"{job} failed: {last[-1] if last else '?'}"}
        if result is not None and result[1] not in (0, None):
            said = last_error_line(run_dir(self.executor.home, self.run_id) / LOG_NAME)
            return RunState.FAILED, {"exit_code": result[1],
                                     "message": f"{job}: run process exited with code {result[1]}"
                                                f"{': ' + said if said else ''}"}
        if ended.state == "FAILED" and not any(folder.glob(f"{self.job_id}_*_log.*")):
            return RunState.FAILED, {"exit_code": None, "message": (
                f"{job} ended {ended.describe()} without writing to {folder}: the home must be on a "
                f"filesystem that the cluster's nodes share")}
        return RunState.INTERRUPTED, {"exit_code": None, "message": f"{job} ended {ended.describe()}; resumable"}


def _job_result(folder: Path, job_id: str) -> tuple[str, Any] | None:
    """What submitit pickled when the job's callable returned or raised; None if nothing."""
    path = folder / f"{job_id}_0_result.pkl"
    if not path.is_file():
        return None
    try:
        from submitit.core.utils import pickle_load

        return pickle_load(path)
    except Exception:  # a half-written pickle: the job died while writing it
        return None


def note_job(store: Store, run_id: int, job: dict[str, Any]) -> bool:
    """Merge what is known of a run's Slurm job into its record: a new job only while the
    run is running, news of a job only to the record that still names it. False if nothing
    was written."""
    with store.transaction() as table:
        record = table.get(doc_id=run_id)
        if record is None or job["job_id"] != ((record.get("slurm") or {}).get("job_id") or job["job_id"]):
            return False
        if not record.get("slurm") and record.get("state") != RunState.RUNNING:
            return False
        table.update({"slurm": {**(record.get("slurm") or {}), **job}}, doc_ids=[run_id])
        return True
