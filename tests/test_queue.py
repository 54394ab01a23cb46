"""Queue, worker and reconciliation: claims, cancel, retry, crashes, races (real processes)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from engine import processes, queue
from engine.config import RunConfig
from engine.store import Store
from engine.worker import WorkerOptions, parse_arguments
from tui_app.cli import app

runner = CliRunner()
QUICK = RunConfig(dataset="digits", model="small_cnn", epochs=1, batch_size=64, crop_padding=1,
                  lr=0.05, device="cpu", threads=1)


def cli(*args: str):
    return runner.invoke(app, list(args))


def store_of(home: Path) -> Store:
    return Store(home / "history.json")


def worker_process(home: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tui_app.cli", "worker", "--home", str(home), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(condition, timeout_s: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_grid_enqueue_is_one_write_and_prints_ids(tmp_path):
    result = cli("queue", "add", "digits-quick", "--grid", "sampler=unif-sgd,random-subset", "--grid",
                 "budget=0.2,0.3,1.0", "--seeds", "3", "--home", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    ids = json.loads(result.stdout)["ids"]
    assert ids == list(range(1, 19))
    runs = store_of(tmp_path).list_runs()
    points = sorted((r["config"]["sampler"], r["config"]["budget"], r["config"]["seed"]) for r in runs)
    assert points == sorted((s, b, seed) for s in ("unif-sgd", "random-subset") for b in (0.2, 0.3, 1.0)
                            for seed in range(3))
    assert all(r["state"] == "queued" for r in runs)


def test_claim_order_priority_then_age_and_never_twice(tmp_path):
    store = store_of(tmp_path)
    ids = queue.enqueue(store, "p", [QUICK] * 3)
    queue.set_priority(store, [ids[2]], 5)
    me = processes.process_identity(os.getpid())
    claimed = [queue.claim_next(store, me)["id"] for _ in range(3)]
    assert claimed == [ids[2], ids[0], ids[1]]
    assert queue.claim_next(store, me) is None


def test_cancel_retry_clear_and_their_json(tmp_path):
    home = str(tmp_path)
    cli("queue", "add", "digits-quick", "--seeds", "3", "--home", home)
    result = cli("queue", "cancel", "1", "--home", home, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == {"1": "cancelled"}
    assert json.loads(cli("queue", "cancel", "1", "--home", home, "--json").stdout) == {
        "1": "not cancelled: already cancelled"}
    assert json.loads(cli("queue", "retry", "1", "--home", home, "--json").stdout) == {"1": "queued"}
    assert cli("queue", "priority", "9", "3", "--home", home).exit_code == 0
    listed = json.loads(cli("queue", "ls", "--home", home, "--json").stdout)
    assert [(row["id"], row["state"], row["priority"]) for row in listed] == [
        (3, "queued", 9), (1, "queued", 0), (2, "queued", 0)]
    assert json.loads(cli("queue", "clear", "--home", home, "--json").stdout) == {"cancelled": [1, 2, 3]}
    assert json.loads(cli("queue", "ls", "--home", home, "--json").stdout) == []
    assert cli("queue", "cancel", "77", "--home", home).exit_code == 3
    assert cli("queue", "retry", "77", "--home", home).exit_code == 3


def test_a_running_record_whose_process_is_gone_becomes_interrupted(tmp_path):
    store = store_of(tmp_path)
    (run_id,) = queue.enqueue(store, "p", [QUICK])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.update_run(run_id, state="running", process={"pid": dead.pid, "pgid": dead.pid, "start_time": 1})
    assert queue.reconcile(store) == [run_id]
    assert store.get_run(run_id)["state"] == "interrupted"
    # A live process (this one) keeps its run running; a reused pid (other start time) does not.
    (alive_id,) = queue.enqueue(store, "p", [QUICK])
    store.update_run(alive_id, state="running", process=processes.process_identity(os.getpid()))
    assert queue.reconcile(store) == []
    reused = {**processes.process_identity(os.getpid()), "start_time": 12345}
    store.update_run(alive_id, process=reused)
    # Resuming queues the run just found stale and the one interrupted before alike.
    assert queue.reconcile(store, resume=True) == [run_id, alive_id]
    assert store.get_run(alive_id)["state"] == store.get_run(run_id)["state"] == "queued"


def _final_metrics(home: Path, run_id: int) -> list[tuple]:
    lines = (home / str(run_id) / "metrics.jsonl").read_text().splitlines()
    return [(row["epoch"], row["test_acc"], row["train_loss"]) for row in map(json.loads, lines)]


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["worker", "child"])
def test_kill_9_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path, victim):
    home = tmp_path / "home"
    store = store_of(home)
    config = QUICK.replace(epochs=6)
    reference, crashed = queue.enqueue(store, "p", [config, config])
    queue.set_priority(store, [crashed], 1)  # the crash run goes first
    worker = worker_process(home)
    progress = home / str(crashed) / "progress.json"
    wait_for(lambda: progress.exists() and json.loads(progress.read_text()).get("epoch", 0) >= 2,
             what="two epochs of the run")
    if victim == "worker":
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    else:
        child = store.get_run(crashed)["process"]["pid"]
        os.kill(child, signal.SIGKILL)
    wait_for(lambda: (queue.reconcile(store) or True) and store.get_run(crashed)["state"] == "interrupted",
             what="the run to be marked interrupted")
    if victim == "child":
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    assert cli("queue", "retry", str(crashed), "--home", str(home)).exit_code == 0
    subprocess.run([sys.executable, "-m", "tui_app.cli", "worker", "--once", "--home", str(home)],
                   check=True, capture_output=True, timeout=300)
    runs = {run["id"]: run for run in store.list_runs()}
    assert runs[crashed]["state"] == runs[reference]["state"] == "done"
    assert runs[crashed]["summary"]["final_test_acc"] == runs[reference]["summary"]["final_test_acc"]
    assert _final_metrics(home, crashed) == _final_metrics(home, reference)
    assert runs[crashed]["attempts"] == 2


@pytest.mark.slow
def test_two_workers_racing_execute_each_run_once(tmp_path):
    home = tmp_path / "home"
    ids = queue.enqueue(store_of(home), "p", [QUICK.replace(seed=seed) for seed in range(6)])
    workers = [worker_process(home, "--once") for _ in range(2)]
    for process in workers:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    runs = store_of(home).list_runs()
    assert sorted(run["id"] for run in runs) == ids
    assert all(run["state"] == "done" for run in runs)
    for run_id in ids:  # each run's log shows exactly one start
        starts = [line for line in (home / str(run_id) / "log.txt").read_text().splitlines()
                  if line.startswith("--- ")]
        assert len(starts) == 1, (run_id, starts)
    assert len({run["worker"]["pid"] for run in runs}) >= 1


@pytest.mark.slow
def test_cancel_of_a_running_run_leaves_no_process_of_its_group(tmp_path):
    home = tmp_path / "home"
    store = store_of(home)
    (run_id,) = queue.enqueue(store, "p", [QUICK.replace(epochs=200)])
    worker = worker_process(home)
    wait_for(lambda: (store.get_run(run_id).get("process") or {}).get("pid")
             and (home / str(run_id) / "progress.json").exists(), what="the run to start")
    group = store.get_run(run_id)["process"]["pgid"]
    result = cli("queue", "cancel", str(run_id), "--home", str(home))
    assert result.exit_code == 0 and "cancelled" in result.stdout
    assert not processes.group_alive(group)
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)
    record = store.get_run(run_id)
    assert record["state"] == "cancelled"  # not overwritten as failed or interrupted


def test_worker_status_and_stop(tmp_path):
    home = tmp_path / "home"
    assert cli("worker", "status", "--home", str(home)).stdout.strip() == "no worker running"
    worker = worker_process(home)
    wait_for(lambda: json.loads(cli("worker", "status", "--home", str(home), "--json").stdout), 30,
             what="the worker to register")
    assert json.loads(cli("worker", "status", "--home", str(home), "--json").stdout)[0]["pid"] == worker.pid
    assert "stopped 1 worker" in cli("worker", "stop", "--home", str(home)).stdout
    assert worker.wait(timeout=30) == 0
    assert cli("worker", "status", "--home", str(home)).stdout.strip() == "no worker running"


def test_detached_worker_outlives_its_terminal_and_runs_the_queue(tmp_path):
    """--detach returns at once; the worker sits in its own session (a closed SSH terminal's
    SIGHUP does not reach it), logs to <home>/worker.log, executes runs and stops on request."""
    home = tmp_path / "home"
    launcher = subprocess.run([sys.executable, "-m", "tui_app.cli", "worker", "--detach", "--home", str(home)],
                              capture_output=True, text=True, timeout=60)
    assert launcher.returncode == 0, launcher.stderr
    assert "started in the background" in launcher.stdout
    workers = wait_for(lambda: json.loads(cli("worker", "status", "--home", str(home), "--json").stdout), 30,
                       what="the detached worker to register")
    pid = workers[0]["pid"]
    assert psutil.Process(pid).cmdline()[1:3] == ["-m", "engine.worker"]  # the engine's entry point, not the CLI
    assert os.getsid(pid) != os.getsid(0)
    assert (home / "worker.log").exists()
    try:
        run_id = queue.enqueue(store_of(home), "test", [QUICK])[0]
        wait_for(lambda: store_of(home).get_run(run_id)["state"] == "done", 180, what="the run to finish")
        # The lines a foreground worker prints: the run's start and end, then the drain notice.
        log = home / "worker.log"
        wait_for(lambda: "queue drained: 1 done, 0 failed" in log.read_text(), 30, what="the drain notice")
        lines = log.read_text().splitlines()
        assert any(f"run {run_id} started on inherit: test sampler=unif-sgd" in line for line in lines), lines
        assert any(f"run {run_id} done on inherit after " in line and "final test acc" in line
                   for line in lines), lines
    finally:  # a failed check leaves no worker behind
        stopped = cli("worker", "stop", "--home", str(home)).stdout
    assert "stopped 1 worker" in stopped
    wait_for(lambda: not processes.is_alive(workers[0]), 30, what="the worker to exit")


def test_worker_options_survive_the_detached_command_line(tmp_path):
    """What `budget-tui worker --detach` asks for is what the detached `python -m engine.worker` gets."""
    slurm = {"partition": "gpu", "time": 30, "cpus": None, "gpus_per_run": 1, "mem": "8G", "account": None,
             "sbatch": ["--qos=high", "--exclusive"], "max_jobs": 3, "array": 20}
    for options in (WorkerOptions(), WorkerOptions(gpus="", once=True, data_root=tmp_path / "a data root"),
                    WorkerOptions(executor="slurm", auto_resume=True, slurm=slurm),
                    WorkerOptions(slots=2, once=True),
                    WorkerOptions(gpus="0,1", slots_per_gpu=4, pack_memory=0.9, run_memory="6G"),
                    WorkerOptions(as_json=True, once=True,
                                  on_drain='notify-send "queue drained" --urgency=low; echo "$BUDGET_TUI_DONE"=done'),
                    WorkerOptions(on_drain="--looks-like-a-flag")):
        home, parsed = parse_arguments([f"--home={tmp_path}", *options.arguments()])
        assert home == tmp_path
        assert parsed == WorkerOptions(**{**options.__dict__, "slurm": {**dict.fromkeys(slurm), **options.slurm}})


@pytest.mark.parametrize("arguments,message", [
    (["--executor", "nope"], "--executor takes local or slurm"),
    (["--partition=gpu"], "--partition is a Slurm job setting"),
    (["--gpus", "0,0"], "--gpus takes distinct GPU numbers"),
    (["--slots=2", "--executor=slurm"], "--slots places runs on this machine"),
])
def test_the_worker_entry_point_refuses_bad_options_in_one_line(tmp_path, arguments, message):
    done = subprocess.run([sys.executable, "-m", "engine.worker", "--home", str(tmp_path), *arguments],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and message in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_retry_resumes_by_default_and_fresh_starts_over(tmp_path):
    from engine.paths import CHECKPOINT_NAME, LOG_NAME, METRICS_NAME, RESULT_NAMES

    store = store_of(tmp_path)
    first, second = queue.enqueue(store, "test", [QUICK, QUICK.replace(seed=1)])
    for run_id in (first, second):
        folder = tmp_path / str(run_id)
        folder.mkdir()
        for name in (*RESULT_NAMES, LOG_NAME):
            (folder / name).write_text("x")
        store.update_run(run_id, state="failed", run_dir=str(folder), outcome={"exit_code": 1, "message": "boom"})
    result = cli("queue", "retry", str(first), "--home", str(tmp_path), "--json")
    assert json.loads(result.stdout) == {str(first): "queued"}
    assert (tmp_path / str(first) / CHECKPOINT_NAME).exists()  # resumes from here
    result = cli("queue", "retry", str(second), "--fresh", "--home", str(tmp_path), "--json")
    assert json.loads(result.stdout) == {str(second): "queued"}
    assert not any((tmp_path / str(second) / name).exists() for name in RESULT_NAMES)
    assert (tmp_path / str(second) / LOG_NAME).exists()  # the log of the failed attempt stays
    record = store.get_run(second)
    assert record["state"] == "queued" and record["outcome"] is None and record["attempts"] == 2
    assert not (tmp_path / str(second) / METRICS_NAME).exists()


def test_queue_ls_shows_a_run_that_has_its_plan_but_no_step_yet(tmp_path):
    store = store_of(tmp_path)
    (run_id,) = queue.enqueue(store, "p", [QUICK])
    folder = tmp_path / str(run_id)
    folder.mkdir()
    (folder / "progress.json").write_text(json.dumps({"steps": 44, "epochs": 2, "epoch": 0, "device": "cpu"}))
    store.update_run(run_id, state="running", run_dir=str(folder), process=processes.process_identity(os.getpid()))
    result = cli("queue", "ls", "--home", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split()[:2] == [str(run_id), "running"]
    assert result.stdout.splitlines()[1].split()[8] == "0%"
