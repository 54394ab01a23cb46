"""Run records: the transition table, and the state changes that must never go wrong --
a cancel during start-up, a foreground run's records, ids that never reuse a folder, a
folder of another config, auto-resume, another host's processes, a run folder that
cannot be written."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine import child, processes, queue
from engine.config import RunConfig
from engine.errors import BadInput
from engine.paths import CHECKPOINT_NAME, METRICS_NAME
from engine.records import TRANSITIONS, RunState, TransitionRefused, change_state, new_record
from engine.runs import CONFIG_NAME, execute_run, finish_if_running, record_start
from engine.store import Store
from tui_app.cli import app

runner = CliRunner()
QUICK = RunConfig(dataset="digits", model="small_cnn", epochs=1, batch_size=64, crop_padding=1,
                  lr=0.05, device="cpu", threads=1)
OTHER_HOST = "another-host.example"


def store_of(home: Path) -> Store:
    return Store(home / "history.json")


def test_every_state_change_outside_the_table_is_refused():
    allowed = {(RunState.QUEUED, RunState.RUNNING), (RunState.QUEUED, RunState.CANCELLED),
               (RunState.RUNNING, RunState.DONE), (RunState.RUNNING, RunState.FAILED),
               (RunState.RUNNING, RunState.CANCELLED), (RunState.RUNNING, RunState.INTERRUPTED),
               (RunState.INTERRUPTED, RunState.QUEUED), (RunState.INTERRUPTED, RunState.CANCELLED),
               (RunState.FAILED, RunState.QUEUED), (RunState.CANCELLED, RunState.QUEUED)}
    assert {(source, target) for source, targets in TRANSITIONS.items() for target in targets} == allowed
    for source in RunState:
        for target in RunState:
            if (source, target) in allowed:
                assert change_state({"state": source}, target)["state"] == target
            else:
                with pytest.raises(TransitionRefused):
                    change_state({"id": 4, "state": source}, target)


def test_states_are_stored_as_their_plain_strings(tmp_path):
    store = store_of(tmp_path)
    queue.enqueue(store, "p", [QUICK])
    assert json.loads(store.path.read_text())["runs"]["1"]["state"] == "queued"
    assert store.get_run(1)["state"] == RunState.QUEUED


def test_a_run_cancelled_while_its_process_starts_never_trains(tmp_path):
    store = store_of(tmp_path)
    (run_id,) = queue.enqueue(store, "p", [QUICK])
    queue.claim_next(store, processes.process_identity(os.getpid()))  # a worker took it...
    assert queue.cancel(store, [run_id]) == {run_id: "cancelled"}  # ...and the user cancels it
    assert child.main([str(tmp_path), str(run_id)]) == 0  # the child it started comes up
    record = store.get_run(run_id)
    assert record["state"] == "cancelled" and record["outcome"]["message"] == "cancelled by the user"
    assert not (tmp_path / str(run_id) / CHECKPOINT_NAME).exists()
    assert not (tmp_path / str(run_id) / METRICS_NAME).exists()


def test_a_foreground_run_never_leaves_a_record_a_worker_can_claim(tmp_path, monkeypatch):
    import engine.runs

    store = store_of(tmp_path)
    claims = []
    real_execute_run = engine.runs.execute_run

    def a_worker_tries_to_claim_first(*args, **kwargs):
        claims.append(queue.claim_next(store, {"pid": 1, "host": OTHER_HOST}))
        return real_execute_run(*args, **kwargs)

    monkeypatch.setattr(engine.runs, "execute_run", a_worker_tries_to_claim_first)
    result = runner.invoke(app, ["run", "digits-quick", "--seeds", "2", "--set", "epochs=1", "--set", "threads=1",
                                 "--home", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert claims == [None, None]
    runs = store.list_runs()
    assert [(run["id"], run["state"], run["config"]["seed"]) for run in runs] == [(1, "done", 0), (2, "done", 1)]
    assert all(run["process"]["pid"] == os.getpid() for run in runs)


def test_a_new_id_skips_every_existing_run_folder(tmp_path):
    store = store_of(tmp_path)
    (tmp_path / "7").mkdir()
    (tmp_path / "9").write_text("a file, not a run folder")
    assert queue.enqueue(store, "p", [QUICK]) == [8]
    (tmp_path / "8").mkdir()
    store.path.rename(tmp_path / "history.moved-aside.json")  # what the corruption message suggests
    assert queue.enqueue(store, "p", [QUICK, QUICK]) == [9, 10]


def test_a_run_folder_of_another_config_is_refused_naming_the_differences(tmp_path):
    store = store_of(tmp_path)
    (run_id,) = store.add_runs([new_record(QUICK.replace(epochs=2, seed=5), "p", state=RunState.RUNNING)])
    folder = tmp_path / str(run_id)  # made by another run after this id was given
    folder.mkdir()
    (folder / CONFIG_NAME).write_text(json.dumps(QUICK.replace(epochs=4, seed=0).to_dict()))
    with pytest.raises(BadInput) as refused:
        execute_run(store, tmp_path, run_id, QUICK.replace(epochs=2, seed=5), data_root=tmp_path / "data")
    message = str(refused.value)
    assert "epochs: 4 there, 2 here" in message and "seed: 0 there, 5 here" in message
    assert str(folder / CONFIG_NAME) in message
    record = store.get_run(run_id)
    assert record["state"] == "failed" and record["outcome"]["message"] == message
    assert not (folder / CHECKPOINT_NAME).exists()


def test_auto_resume_queues_runs_interrupted_before_the_worker_started(tmp_path):
    store = store_of(tmp_path)
    first, second = queue.enqueue(store, "p", [QUICK, QUICK])
    for run_id in (first, second):
        queue.claim_next(store, processes.process_identity(os.getpid()))
        finish_if_running(store, run_id, RunState.INTERRUPTED, outcome={"exit_code": 130, "message": "x"})
    assert queue.reconcile(store) == []  # nothing stale: a plain start changes nothing
    assert queue.reconcile(store, resume=True) == [first, second]
    assert [(run["state"], run["attempts"]) for run in store.list_runs()] == [("queued", 2), ("queued", 2)]


@pytest.fixture
def bystander():
    """A local process in its own group whose pid and group another host's record names."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def test_a_run_of_another_host_is_cancelled_without_signalling_anything_here(tmp_path, bystander):
    store = store_of(tmp_path)
    (run_id,) = queue.enqueue(store, "p", [QUICK])
    queue.claim_next(store, {"pid": 1, "host": OTHER_HOST})
    remote = {**processes.process_identity(bystander.pid), "host": OTHER_HOST}
    record_start(store, run_id, remote)
    outcome = queue.cancel(store, [run_id], grace_s=1)
    assert "not signalled" in outcome[run_id] and OTHER_HOST in outcome[run_id]
    assert store.get_run(run_id)["state"] == "cancelled"
    time.sleep(0.2)
    assert bystander.poll() is None  # still running
    assert processes.terminate_group(remote, 1) is False and bystander.poll() is None


def test_workers_of_another_host_are_shown_as_remote_and_never_stopped(tmp_path, bystander):
    workers = tmp_path / "workers"
    workers.mkdir()
    registration = {**processes.process_identity(bystander.pid), "host": OTHER_HOST,
                    "slots": ["cpu"], "started_at": "2026-12-01T10:00:00+00:00"}
    (workers / f"{bystander.pid}.json").write_text(json.dumps(registration))
    status = runner.invoke(app, ["worker", "status", "--home", str(tmp_path)])
    assert f"remote on host {OTHER_HOST}" in status.stdout
    assert json.loads(runner.invoke(app, ["worker", "status", "--home", str(tmp_path), "--json"]).stdout)[0][
        "remote"] is True
    stop = runner.invoke(app, ["worker", "stop", "--home", str(tmp_path)])
    assert stop.exit_code == 0 and "no worker running" in stop.stdout
    time.sleep(0.2)
    assert bystander.poll() is None


def test_liveness_needs_the_same_start_time_and_not_a_zombie():
    me = processes.process_identity(os.getpid())
    assert processes.is_alive(me)
    assert not processes.is_alive({**me, "start_time": me["start_time"] - 3600})  # a reused pid
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = processes.process_identity(zombie.pid)
    deadline = time.monotonic() + 30
    while processes.is_alive(identity) and time.monotonic() < deadline:
        time.sleep(0.05)  # exited but not reaped: a zombie
    assert not processes.is_alive(identity)
    zombie.wait()


def test_a_run_whose_folder_cannot_be_written_fails_with_its_cause_and_the_worker_goes_on(tmp_path):
    store = store_of(tmp_path)
    blocked, fine = queue.enqueue(store, "p", [QUICK, QUICK.replace(seed=1)])
    (tmp_path / str(blocked)).write_text("a file where the run folder should be")
    worker = subprocess.run([sys.executable, "-m", "tui_app.cli", "worker", "--once", "--home", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stderr
    assert "Traceback" not in worker.stderr
    runs = {run["id"]: run for run in store.list_runs()}
    assert runs[blocked]["state"] == "failed"
    assert f"{tmp_path / str(blocked)} is not a directory" in runs[blocked]["outcome"]["message"]
    assert runs[fine]["state"] == "done"


def test_a_full_disk_while_saving_a_checkpoint_fails_the_run_with_its_cause_and_no_temporary_file(
        tmp_path, monkeypatch):
    import errno

    import engine.train.loop as loop

    def disk_fills_up(path, state):
        path.with_suffix(".tmp").write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path.with_suffix(".tmp")))

    monkeypatch.setattr(loop, "save_checkpoint", disk_fills_up)
    store = store_of(tmp_path)
    (run_id,) = store.add_runs([new_record(QUICK, "p", state=RunState.RUNNING)])
    with pytest.raises(OSError):
        execute_run(store, tmp_path, run_id, QUICK, data_root=tmp_path / "data")
    record = store.get_run(run_id)
    assert record["state"] == "failed" and "No space left on device" in record["outcome"]["message"]
    assert not list((tmp_path / str(run_id)).glob("*.tmp"))


def test_a_child_stopped_by_sigterm_records_interrupted(tmp_path):
    """The signal path still ends in a record: SIGTERM during training means resumable."""
    store = store_of(tmp_path)
    (run_id,) = queue.enqueue(store, "p", [QUICK.replace(epochs=200)])
    queue.claim_next(store, processes.process_identity(os.getpid()))
    process = subprocess.Popen([sys.executable, "-m", "engine.child", str(tmp_path), str(run_id)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / str(run_id) / "progress.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    assert store.get_run(run_id)["state"] == "interrupted"
