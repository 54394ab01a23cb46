"""What a worker tells its user: a line per run as it starts and ends, the drain notice
(line, bell, --on-drain command), and this host's GPUs in `worker status`."""

import io
import json
import os
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

import engine.worker
import engine.worker_output
from engine import queue
from engine.config import RunConfig
from engine.processes import process_identity
from engine.records import RunState
from engine.runs import finish_if_running
from engine.scheduling import MIB, NO_NVIDIA_SMI, GpuUse, Slot, parse_gpu_use, read_gpu_use
from engine.store import Store
from engine.worker import Worker, describe_workers
from engine.worker_output import WorkerReport
from tui_app.cli import app

runner = CliRunner()
QUICK = RunConfig(dataset="digits", model="small_cnn", epochs=1, batch_size=64, crop_padding=1,
                  lr=0.05, device="cpu", threads=1)
# Captured from `nvidia-smi --query-gpu=index,utilization.gpu,memory.used,memory.total
# --format=csv,noheader,nounits` on two H100s, the first busy; a MIG GPU reports "[N/A]".
H100_X2_USE = "0, 87, 12034, 81559\n1, 0, 4, 81559\n"
MIG_USE = "0, [N/A], 2048, 81559\n"


class Terminal(io.StringIO):
    """stderr as a terminal, to see the bell."""

    def isatty(self) -> bool:
        return True


@dataclass
class EndedRun:
    """A run process that has already exited with `code`; the worker records it as failed
    unless the run recorded its own end (as a real child does when it finishes)."""

    run_id: int
    code: int

    def poll(self):
        return self.code

    def stop(self, grace_s):
        pass

    def ending(self):
        return RunState.FAILED, {"exit_code": self.code, "message": f"Traceback ...\nValueError: run {self.run_id}"}


@dataclass
class FinishingExecutor:
    """Runs whose id is in `succeed` record done with an accuracy at once; others crash."""

    store: Store
    succeed: set = field(default_factory=set)
    runs_outlive_worker = False

    def start(self, record, slot):
        if record["id"] in self.succeed:
            finish_if_running(self.store, record["id"], RunState.DONE, summary={"final_test_acc": 0.9125},
                              outcome={"exit_code": 0, "message": "ok"})
            return EndedRun(record["id"], 0)
        return EndedRun(record["id"], 1)

    def follow(self, record):
        return None


@pytest.fixture
def signals_restored():
    """Worker.run takes SIGTERM and SIGINT; give them back to pytest afterwards."""
    saved = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def drain_once(home: Path, succeed: set, **report) -> tuple[list[int], str, str]:
    """Queue two runs (the first with sampler random-subset), run a --once worker with a fake
    executor on one CPU slot; the run ids, its stdout and stderr."""
    store = Store(home / "history.json")
    ids = queue.enqueue(store, "digits-quick", [QUICK.replace(sampler="random-subset", budget=0.3),
                                                QUICK.replace(seed=4)])
    out, err = io.StringIO(), Terminal()
    worker = Worker(home, [Slot("")], FinishingExecutor(store, {ids[index] for index in succeed}), once=True,
                    poll_s=0.01, report=WorkerReport(home, out=out, err=err, **report))
    worker.run()
    return ids, out.getvalue(), err.getvalue()


def test_the_worker_prints_each_run_as_it_starts_and_ends_then_the_drain(tmp_path, signals_restored):
    (done, failed), out, err = drain_once(tmp_path, succeed={0})
    lines = out.splitlines()
    assert len(lines) == 5, out
    assert lines[0].endswith(f"run {done} started on cpu: digits-quick sampler=random-subset "
                             f"augmentation=standard budget=0.3 seed=0")
    assert f"run {done} done on cpu after 0:00:00: final test acc 91.25% (digits-quick sampler=random-subset" \
           in lines[1]
    assert lines[2].endswith(f"run {failed} started on cpu: digits-quick sampler=unif-sgd augmentation=standard "
                             f"budget=1.0 seed=4")
    assert f"run {failed} failed on cpu after 0:00:00: ValueError: run {failed} (digits-quick" in lines[3]
    assert lines[4].endswith("queue drained: 1 done, 1 failed")
    assert err.endswith("\a")  # a bell, as stderr is a terminal


def test_json_lines_carry_the_same_events(tmp_path, signals_restored):
    (done, failed), out, _ = drain_once(tmp_path, succeed={0}, as_json=True)
    events = [json.loads(line) for line in out.splitlines()]
    assert [(event["event"], event.get("run"), event.get("state")) for event in events] == [
        ("start", done, None), ("end", done, "done"), ("start", failed, None), ("end", failed, "failed"),
        ("drained", None, None)]
    start, end, _, crash, drained = events
    assert {key: start[key] for key in ("preset", "sampler", "augmentation", "budget", "seed", "slot")} == {
        "preset": "digits-quick", "sampler": "random-subset", "augmentation": "standard", "budget": 0.3,
        "seed": 0, "slot": "cpu"}
    assert end["final_test_acc"] == 0.9125 and end["error"] is None and end["wall_s"] >= 0
    assert crash["final_test_acc"] is None and crash["error"] == f"ValueError: run {failed}"  # the last line
    assert {key: drained[key] for key in ("done", "failed", "cancelled", "interrupted")} == {
        "done": 1, "failed": 1, "cancelled": 0, "interrupted": 0}


def test_the_drain_command_gets_the_counts_and_its_failure_is_only_reported(tmp_path, signals_restored):
    seen = tmp_path / "seen"
    command = (f'echo "$BUDGET_TUI_DONE $BUDGET_TUI_FAILED $BUDGET_TUI_CANCELLED $BUDGET_TUI_HOME" > "{seen}"; '
               f'echo said so; exit 3')
    _, out, err = drain_once(tmp_path / "home", succeed={0, 1}, on_drain=command)
    assert seen.read_text() == f"2 0 0 {tmp_path / 'home'}\n"
    assert out.splitlines()[-1].endswith("queue drained: 2 done, 0 failed")
    assert "said so\n" in err and "warning: --on-drain command failed with exit code 3" in err
    assert "said so" not in out  # stdout holds the events only


def test_a_drain_command_that_hangs_is_stopped(tmp_path, signals_restored, monkeypatch):
    monkeypatch.setattr(engine.worker_output, "ON_DRAIN_TIMEOUT_S", 0.5)
    _, _, err = drain_once(tmp_path, succeed={0, 1}, on_drain="sleep 60")
    assert "did not finish in 0.5 s and was stopped" in err


def test_no_notice_without_a_run_and_one_per_drain(tmp_path, signals_restored):
    out, err = io.StringIO(), Terminal()
    report = WorkerReport(tmp_path, out=out, err=err)
    Worker(tmp_path, [Slot("")], FinishingExecutor(Store(tmp_path / "history.json")), once=True, poll_s=0.01,
           report=report).run()
    assert out.getvalue() == "" and err.getvalue() == ""  # an empty queue at the start is no drain
    report.finished({"id": 1, "state": "done", "summary": {"final_test_acc": 0.5}}, "cpu")
    report.queue_empty()
    report.queue_empty()  # still empty: no second notice
    report.finished({"id": 2, "state": "cancelled", "outcome": {"message": "cancelled by the user"}}, "cpu")
    report.queue_empty()
    drains = [line for line in out.getvalue().splitlines() if "queue drained" in line]
    assert [line.split("queue drained: ")[1] for line in drains] == ["1 done, 0 failed", "0 done, 0 failed, 1 cancelled"]
    assert err.getvalue() == "\a\a"


def test_a_foreground_worker_prints_json_lines_and_runs_the_drain_command(tmp_path):
    """A real worker: one digits run that trains, one whose folder cannot be made."""
    home, seen = tmp_path / "home", tmp_path / "seen"
    trained, blocked = queue.enqueue(Store(home / "history.json"), "digits-quick", [QUICK, QUICK.replace(seed=1)])
    (home / str(blocked)).write_text("a file where the run folder should be")
    worker = subprocess.run([sys.executable, "-m", "tui_app.cli", "worker", "--once", "--json", "--home", str(home),
                             "--on-drain", f'env > "{seen}"'], capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stderr
    events = [json.loads(line) for line in worker.stdout.splitlines()]
    assert [(event["event"], event.get("run"), event.get("state")) for event in events] == [
        ("start", trained, None), ("end", trained, "done"), ("end", blocked, "failed"), ("drained", None, None)]
    assert 0 < events[1]["final_test_acc"] <= 1 and events[1]["wall_s"] > 0
    assert "is not a directory" in events[2]["error"]
    variables = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert (variables["BUDGET_TUI_DONE"], variables["BUDGET_TUI_FAILED"]) == ("1", "1")
    assert variables["BUDGET_TUI_HOME"] == str(home.resolve())
    assert "\a" not in worker.stderr  # no bell where stderr is not a terminal


# --- GPUs in `worker status`
def test_gpu_use_is_read_from_nvidia_smi_output():
    assert parse_gpu_use(H100_X2_USE) == [GpuUse("0", 87, 12034 * MIB, 81559 * MIB),
                                          GpuUse("1", 0, 4 * MIB, 81559 * MIB)]
    assert parse_gpu_use(MIG_USE) == [GpuUse("0", None, 2048 * MIB, 81559 * MIB)]
    assert parse_gpu_use("") == []


def fake_nvidia_smi(folder: Path, output: str, code: int = 0) -> str:
    """A PATH whose nvidia-smi prints `output` if asked for the status fields."""
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(f'#!/bin/sh\n[ "$1" = "--query-gpu=index,utilization.gpu,memory.used,memory.total" ] '
                      f'&& [ "$2" = "--format=csv,noheader,nounits" ] || exit 9\nprintf "{output}"\nexit {code}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(folder)


def test_reading_gpu_use_asks_nvidia_smi_and_says_why_there_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "smi", H100_X2_USE.replace("\n", "\\n")))
    assert [gpu.index for gpu in read_gpu_use()[0]] == ["0", "1"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert read_gpu_use() == ([], NO_NVIDIA_SMI)
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "broken", "No devices were found\\n"))
    gpus, problem = read_gpu_use()
    assert gpus == [] and "unexpected line" in problem


def register_this_process(home: Path) -> None:
    """A worker registration naming this (live) process."""
    (home / "workers").mkdir(parents=True)
    (home / "workers" / f"{os.getpid()}.json").write_text(json.dumps(
        {**process_identity(os.getpid()), "slots": ["gpu 0", "gpu 1"], "started_at": "2026-12-01T10:00:00+00:00"}))


def test_worker_status_shows_this_hosts_gpus(tmp_path, monkeypatch):
    reads = []

    def two_gpus():
        reads.append(1)
        return parse_gpu_use(H100_X2_USE), ""

    assert describe_workers(tmp_path, two_gpus) == [] and not reads  # no worker: nvidia-smi is not asked
    register_this_process(tmp_path)
    (described,) = describe_workers(tmp_path, two_gpus)
    assert described["gpus"][0] == {"gpu": "0", "utilization_percent": 87, "memory_used_bytes": 12034 * MIB,
                                    "memory_total_bytes": 81559 * MIB}
    monkeypatch.setattr(engine.worker, "read_gpu_use", two_gpus)
    shown = runner.invoke(app, ["worker", "status", "--home", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.splitlines()[1:] == ["gpu 0: 87% busy, 11.8 of 79.6 GiB used",
                                             "gpu 1: 0% busy, 0.0 of 79.6 GiB used"]
    as_json = json.loads(runner.invoke(app, ["worker", "status", "--home", str(tmp_path), "--json"]).stdout)
    assert [gpu["utilization_percent"] for gpu in as_json[0]["gpus"]] == [87, 0]
    monkeypatch.setattr(engine.worker, "read_gpu_use", lambda: ([], NO_NVIDIA_SMI))
    shown = runner.invoke(app, ["worker", "status", "--home", str(tmp_path)])
    assert shown.exit_code == 0 and shown.stdout.splitlines()[1:] == ["no GPU found"]
    assert json.loads(runner.invoke(app, ["worker", "status", "--home", str(tmp_path), "--json"]).stdout)[0][
        "gpus"] == []


def test_a_followed_cluster_job_is_not_said_to_start():
    out = io.StringIO()
    WorkerReport(Path("."), out=out).started({"id": 7, "preset": "p", "config": {"seed": 2}}, "job 1", followed=True)
    assert out.getvalue().rstrip().endswith("run 7 followed (started by an earlier worker) on job 1: p seed=2")
