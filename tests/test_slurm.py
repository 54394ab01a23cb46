"""The Slurm executor against a real single-node Slurm (tests/slurm/cluster.sh): grids drained
as jobs, cancel by scancel, killed jobs resumed, time limits requeued, workers that stop and
race. Without root, slurm-wlm and munge these skip with the reason (the unit tests still run)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine import queue
from engine.config import RunConfig
from engine.errors import BadInput, BudgetTuiError
from engine.scheduling import Slot
from engine.slurm import ChildJob, HomeNotShared, SlurmSettings
from engine.store import Store
from engine.worker import Worker
from tests.slurm_cluster import slurm_cluster  # noqa: F401  (fixture)

QUICK = RunConfig(dataset="digits", model="small_cnn", epochs=2, batch_size=64, crop_padding=1,
                  lr=0.05, device="cpu", threads=1)


def budget_tui(environment: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "tui_app.cli", *args], capture_output=True, text=True,
                          env=environment, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def queue_digits_grid(environment: dict[str, str], home: Path, budgets: str) -> list[int]:
    """`queue add` of a 2-epoch digits grid over `budgets` x 2 seeds; the ids, in queue order."""
    added = budget_tui(environment, "queue", "add", "digits-quick", "--set", "epochs=2", "--set", "threads=1",
                       "--grid", f"budget={budgets}", "--seeds", "2", "--home", str(home), "--json")
    return json.loads(added.stdout)["ids"]


def slurm_worker(environment: dict[str, str], home: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tui_app.cli", "worker", "--executor", "slurm",
                             "--home", str(home), *extra], env=environment,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout_s: float = 180.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def job_state(environment: dict[str, str], job_id: str) -> str:
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                           env=environment).stdout
    return next((word.split("=", 1)[1] for word in shown.split() if word.startswith("JobState=")), "?")


def starts_in_log(home: Path, run_id: int) -> list[str]:
    return [line for line in (home / str(run_id) / "log.txt").read_text().splitlines() if line.startswith("--- ")]


def submissions(home: Path, run_id: int) -> list[Path]:
    return sorted((home / str(run_id) / "slurm").glob("*_submission.sh"))


def metrics(home: Path, run_id: int) -> list[tuple]:
    lines = (home / str(run_id) / "metrics.jsonl").read_text().splitlines()
    return [(row["epoch"], row["test_acc"], row["train_loss"]) for row in map(json.loads, lines)]


def stop(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)


# --- without a cluster
def test_settings_file_then_options_and_bad_settings_exit_2(tmp_path):
    (tmp_path / "slurm.toml").write_text('partition = "gpu"\ntime = 30\nsbatch = ["--qos=high", "--exclusive"]\n')
    settings = SlurmSettings.load(tmp_path, {"time": 5, "max_jobs": 2, "mem": None})
    assert (settings.partition, settings.time, settings.max_jobs, settings.array) == ("gpu", 5, 2, 0)
    assert SlurmSettings.load(tmp_path, {"array": 50}).array == 50
    parameters = settings.submitit_parameters()
    assert parameters["additional_parameters"] == {"qos": "high", "exclusive": True}
    assert parameters["partition"] == "gpu" and parameters["time"] == 5 and "mem" not in parameters
    (tmp_path / "slurm.toml").write_text("partitoin = 'gpu'\n")
    with pytest.raises(BadInput, match="unknown Slurm setting 'partitoin'"):
        SlurmSettings.load(tmp_path)
    done = budget_tui(dict(os.environ), "worker", "--executor", "slurm", "--home", str(tmp_path), check=False)
    assert done.returncode == 2 and "partitoin" in done.stderr and len(done.stderr.splitlines()) == 1


def test_without_slurm_the_slurm_executor_exits_2_with_one_line(tmp_path):
    environment = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no sbatch there
    queue.enqueue(Store(tmp_path / "history.json"), "p", [QUICK])
    done = budget_tui(environment, "worker", "--executor", "slurm", "--once", "--home", str(tmp_path), check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --executor slurm: sbatch is not on PATH (run the worker on a Slurm login node)"
    assert Store(tmp_path / "history.json").list_runs()[0]["state"] == "queued"


def test_a_job_that_cannot_see_the_home_fails_saying_it_must_be_shared(tmp_path):
    with pytest.raises(HomeNotShared, match="must be on a filesystem that the cluster's nodes share"):
        ChildJob(str(tmp_path / "not-mounted-here"), 1)()


def test_reconcile_never_judges_a_slurm_run_by_its_pid(tmp_path):
    store = Store(tmp_path / "history.json")
    slurm_run, local_run = queue.enqueue(store, "p", [QUICK, QUICK])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = {"pid": dead.pid, "pgid": dead.pid, "start_time": 1}
    store.update_run(slurm_run, state="running", process=gone, worker=gone, slurm={"job_id": "7", "state": "RUNNING"})
    store.update_run(local_run, state="running", process=gone, worker=gone)
    assert queue.reconcile(store) == [local_run]
    assert store.get_run(slurm_run)["state"] == "running"


class ArrayExecutor:
    """Takes claimed runs in batches, as the Slurm executor does with --array."""

    submits_arrays = True
    runs_outlive_worker = True

    def __init__(self, refuse: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.refuse = refuse

    def follow(self, record):
        return None

    def start_array(self, records):
        if self.refuse:
            raise BudgetTuiError("sbatch refused run 1, 2, 3: QOSMaxSubmitJobPerUserLimit")
        self.batches.append([record["id"] for record in records])
        return [SimpleNamespace(run_id=record["id"], job_id=f"{len(self.batches)}_{task}")
                for task, record in enumerate(records)]


def array_worker(home: Path, runs: int, executor: ArrayExecutor) -> tuple[Store, list[int], Worker]:
    """`runs` queued digits runs and a worker of three job slots over `executor`."""
    store = Store(home / "history.json")
    ids = queue.enqueue(store, "p", [QUICK.replace(seed=seed) for seed in range(runs)])
    return store, ids, Worker(home, [Slot(None, job=index) for index in (1, 2, 3)], executor)


def test_an_array_worker_submits_what_fits_then_waits_for_the_array_to_end(tmp_path, capsys):
    executor = ArrayExecutor()
    store, ids, worker = array_worker(tmp_path, 5, executor)
    assert worker._fill_slots()
    assert executor.batches == [ids[:3]]
    assert not worker._fill_slots() and executor.batches == [ids[:3]]  # two tasks still queued, none submitted
    for slot in list(worker.running)[:2]:  # two tasks end: the array is still in flight
        del worker.running[slot]
        worker.placement.release(slot)
    assert not worker._fill_slots() and executor.batches == [ids[:3]]
    for slot in list(worker.running):
        del worker.running[slot]
        worker.placement.release(slot)
    assert worker._fill_slots()
    assert executor.batches == [ids[:3], ids[3:]]
    assert [store.get_run(run_id)["state"] for run_id in ids] == ["running"] * 5
    started = [line for line in capsys.readouterr().out.splitlines() if " started on " in line]
    assert [line.split(" started on ")[1].split(":")[0] for line in started] == [
        "slurm job 1_0", "slurm job 1_1", "slurm job 1_2", "slurm job 2_0", "slurm job 2_1"]


def test_an_array_slurm_refuses_fails_each_of_its_runs_and_the_queue_goes_on(tmp_path):
    store, ids, worker = array_worker(tmp_path, 3, ArrayExecutor(refuse=True))
    assert worker._fill_slots()
    assert not worker.running and worker.placement.has_room()
    for run_id in ids:
        record = store.get_run(run_id)
        assert record["state"] == "failed"
        assert record["outcome"]["message"] == ("cannot start: sbatch refused run 1, 2, 3: "
                                                "QOSMaxSubmitJobPerUserLimit")


# --- against the test cluster
@pytest.mark.slow
def test_a_grid_drains_through_slurm_with_job_ids_recorded(slurm_cluster, tmp_path):  # noqa: F811
    home = tmp_path / "home"
    ids = queue_digits_grid(slurm_cluster, home, "0.3,0.6,1.0")
    assert len(ids) == 6
    worker = slurm_worker(slurm_cluster, home, "--once", "--max-jobs", "3", "--time", "10")
    shown = set()  # what `queue ls` showed while the grid drained: 3 jobs on 2 CPUs, so one waits
    try:
        while worker.poll() is None:
            listed = json.loads(budget_tui(slurm_cluster, "queue", "ls", "--home", str(home), "--json").stdout)
            shown |= {(row["state"], (row.get("slurm") or {}).get("state")) for row in listed}
            table = budget_tui(slurm_cluster, "queue", "ls", "--home", str(home)).stdout
            shown |= {("table", line.split()[1]) for line in table.splitlines()[1:]}
            time.sleep(0.5)
    finally:
        if worker.poll() is None:
            stop(worker)
    assert worker.returncode == 0, worker.stderr.read()
    runs = Store(home / "history.json").list_runs()
    assert [run["state"] for run in runs] == ["done"] * 6
    job_ids = [run["slurm"]["job_id"] for run in runs]
    assert len(set(job_ids)) == 6 and all(job_id.isdigit() for job_id in job_ids)
    assert all(run["slurm"]["state"] == "COMPLETED" for run in runs)
    assert ("running", "PENDING") in shown and ("running", "RUNNING") in shown and ("table", "pending") in shown
    for run in runs:
        assert starts_in_log(home, run["id"]) == [starts_in_log(home, run["id"])[0]]
        assert f"slurm job {run['slurm']['job_id']}" in starts_in_log(home, run["id"])[0]


@pytest.mark.slow
def test_a_grid_goes_as_one_job_array_that_runs_max_jobs_tasks_at_once(slurm_cluster, tmp_path):  # noqa: F811
    home = tmp_path / "home"
    ids = queue_digits_grid(slurm_cluster, home, "0.3,0.6")
    store = Store(home / "history.json")
    # The node has two CPUs and each task asks for one: --max-jobs 1 must hold them to one at a time.
    worker = slurm_worker(slurm_cluster, home, "--once", "--array", "10", "--max-jobs", "1", "--time", "10")
    most_running, cancelled = 0, ids[-1]
    try:
        job_id = lambda run_id: (store.get_run(run_id).get("slurm") or {}).get("job_id")  # noqa: E731
        wait_for(lambda: job_id(cancelled), what="the array to be submitted")
        assert budget_tui(slurm_cluster, "queue", "cancel", str(cancelled), "--home", str(home)).stdout.strip() \
            == f"{cancelled}: cancelled"
        listed = lambda: subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True,  # noqa: E731
                                        text=True, env=slurm_cluster).stdout.split()
        # scancel took that task alone out of the array: the others are still listed.
        left = wait_for(lambda: (lambda tasks: tasks if not any(task.startswith(f"{job_id(cancelled)}|")
                                                                for task in tasks) else None)(listed()),
                        what="the cancelled task to leave the queue")
        assert len(left) >= 2, left  # 3 unless the first task already ended
        while worker.poll() is None:
            tasks = listed()
            most_running = max(most_running, sum(task.endswith("|RUNNING") for task in tasks))
            time.sleep(0.2)
    finally:
        if worker.poll() is None:
            stop(worker)
    assert worker.returncode == 0, worker.stderr.read()
    runs = {run["id"]: run for run in store.list_runs()}
    assert [runs[run_id]["state"] for run_id in ids] == ["done"] * 3 + ["cancelled"], [(runs[run_id].get("outcome"), runs[run_id].get("slurm")) for run_id in ids]
    arrays = {runs[run_id]["slurm"]["job_id"].partition("_")[0] for run_id in ids}
    tasks = sorted(int(runs[run_id]["slurm"]["job_id"].partition("_")[2]) for run_id in ids)
    assert len(arrays) == 1 and tasks == [0, 1, 2, 3], [runs[run_id]["slurm"] for run_id in ids]
    (array,) = arrays
    assert most_running == 1
    assert [path.name for path in (home / "slurm-arrays" / array).glob("*_submission.sh")] == [f"{array}_submission.sh"]
    for run_id in ids[:3]:
        assert runs[run_id]["slurm"]["folder"] == str(home / "slurm-arrays" / array)
        assert f"slurm job {runs[run_id]['slurm']['job_id']} " in starts_in_log(home, run_id)[0]
        assert not submissions(home, run_id)  # no job of its own


def test_cancel_is_scancel_and_a_job_killed_outside_is_interrupted_then_resumes_to_the_same_result(
        slurm_cluster, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SLURM_CONF", slurm_cluster["SLURM_CONF"])
    home = tmp_path / "home"
    store = Store(home / "history.json")
    config = QUICK.replace(epochs=6)
    reference, killed, cancelled = queue.enqueue(store, "p", [config, config, QUICK.replace(epochs=200)])
    queue.set_priority(store, [killed, cancelled], 1)  # these two take the node's two CPUs first
    worker = slurm_worker(slurm_cluster, home, "--max-jobs", "2", "--time", "10")
    try:
        for run_id, epochs in ((killed, 2), (cancelled, 1)):
            progress = home / str(run_id) / "progress.json"
            wait_for(lambda: progress.exists() and json.loads(progress.read_text()).get("epoch", 0) >= epochs,
                     what=f"run {run_id} to train")
        cancelled_job = store.get_run(cancelled)["slurm"]["job_id"]
        assert budget_tui(slurm_cluster, "queue", "cancel", str(cancelled), "--home", str(home)).stdout.strip() \
            == f"{cancelled}: cancelled"
        wait_for(lambda: job_state(slurm_cluster, cancelled_job) == "CANCELLED", what="scancel")

        killed_job = store.get_run(killed)["slurm"]["job_id"]
        subprocess.run(["scancel", "--signal=KILL", killed_job], env=slurm_cluster, check=True)
        record = wait_for(lambda: (lambda r: r if r["state"] != "running" else None)(store.get_run(killed)),
                          what="the killed run to be recorded")
        assert record["state"] == "interrupted"
        assert record["outcome"]["message"].startswith(f"slurm job {killed_job} ended CANCELLED")
        assert record["outcome"]["message"].endswith("resumable")
        assert store.get_run(cancelled)["state"] == "cancelled"  # not overwritten by the job's end
        assert budget_tui(slurm_cluster, "queue", "retry", str(killed), "--home", str(home)).returncode == 0
        wait_for(lambda: all(store.get_run(run_id)["state"] == "done" for run_id in (killed, reference)),
                 what="the resumed run and the reference to finish")
    finally:
        stop(worker)
    runs = {run["id"]: run for run in store.list_runs()}
    assert runs[killed]["summary"]["final_test_acc"] == runs[reference]["summary"]["final_test_acc"]
    assert metrics(home, killed) == metrics(home, reference)
    assert runs[killed]["attempts"] == 2 and runs[killed]["slurm"]["job_id"] != killed_job
    assert any(line.startswith('{"event": "resume"') for line in (home / str(killed) / "log.txt").read_text().splitlines())
    assert runs[cancelled]["state"] == "cancelled"


@pytest.mark.slow
def test_worker_stop_leaves_jobs_running_and_two_later_workers_follow_them_never_submitting_twice(
        slurm_cluster, tmp_path):  # noqa: F811
    home = tmp_path / "home"
    store = Store(home / "history.json")
    ids = queue.enqueue(store, "p", [QUICK.replace(seed=seed) for seed in range(6)])
    first = slurm_worker(slurm_cluster, home, "--max-jobs", "2", "--time", "10")
    submitted = wait_for(lambda: [run for run in store.list_runs() if run.get("slurm")]
                         if len([run for run in store.list_runs() if run.get("slurm")]) == 2 else None,
                         what="two jobs submitted")
    stop(first)  # as `worker stop` does
    for run in submitted:  # its jobs run on, and their runs stay running
        assert store.get_run(run["id"])["state"] in ("running", "done")
        assert job_state(slurm_cluster, run["slurm"]["job_id"]) in ("PENDING", "RUNNING", "COMPLETING", "COMPLETED")
    racing = [slurm_worker(slurm_cluster, home, "--once", "--max-jobs", "2", "--time", "10") for _ in range(2)]
    try:
        for worker in racing:
            assert worker.wait(timeout=400) == 0, worker.stderr.read()
    finally:
        for worker in racing:
            if worker.poll() is None:
                stop(worker)
    runs = store.list_runs()
    assert sorted(run["id"] for run in runs) == ids
    assert all(run["state"] == "done" for run in runs)
    assert len({run["slurm"]["job_id"] for run in runs}) == 6
    for run_id in ids:  # each run submitted and started exactly once
        assert len(submissions(home, run_id)) == 1, run_id
        assert len(starts_in_log(home, run_id)) == 1, run_id


def seconds_per_epoch(config: RunConfig, tmp_path: Path) -> float:
    """Wall seconds of one epoch of `config` here and now (evaluation included), from a short run."""
    from engine.train.loop import train

    folder = tmp_path / "calibration"
    folder.mkdir()
    summary = train(config.replace(epochs=4), folder, data_root=tmp_path / "data")
    return summary["time_total_s"] / 4


@pytest.mark.slow
def test_a_run_longer_than_its_time_limit_is_requeued_and_finishes(slurm_cluster, tmp_path):  # noqa: F811
    home = tmp_path / "home"
    home.mkdir()
    # Slurm signals the job 20-40 s before its 1-minute limit (its timer ticks every ~30 s), so
    # a job trains for at most ~35 s after its start-up; the requeued job is eligible 2 minutes
    # later. The run is sized from this machine's own speed to need about 40 s of training:
    # longer than one such job, on a fast machine too, and mostly done by the second. Requeues
    # are not capped at the default 3 here: a loaded machine may need a third job or a fourth.
    (home / "slurm.toml").write_text("time = 1\nsignal_delay_s = 20\nmax_requeues = 8\n")
    epochs = max(20, math.ceil(40 / seconds_per_epoch(QUICK, tmp_path)))
    store = Store(home / "history.json")
    (run_id,) = queue.enqueue(store, "p", [QUICK.replace(epochs=epochs)])
    worker = slurm_worker(slurm_cluster, home, "--once")
    try:
        assert worker.wait(timeout=590) == 0, worker.stderr.read()
    finally:
        if worker.poll() is None:
            stop(worker)
    record = store.get_run(run_id)
    assert record["state"] == "done", record.get("outcome")
    starts = starts_in_log(home, run_id)
    assert len(starts) >= 2 and len({line.split()[4] for line in starts}) == 1  # one job, requeued
    assert [row[0] for row in metrics(home, run_id)] == list(range(1, epochs + 1))
    assert record["summary"]["epochs_run"] == epochs
