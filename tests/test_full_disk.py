"""A home on a real, small file system (tmpfs) that fills up or turns read-only: every
command ends with one line and its exit code, nothing recorded is lost, no half-written
file stays behind, and the worker keeps serving the queue. Needs root to mount."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.store import Store
from tui_app.cli import app

runner = CliRunner()
FS_SIZE = "2m"  # a checkpoint of the quick digits run is about 0.8 MB
ROOM_FOR_RECORDS = 200_000  # bytes left free: the history and small files fit, a checkpoint does not


@pytest.fixture
def small_home(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the home needs root")
    home = tmp_path / "home"
    home.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", str(home)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield home
    subprocess.run(["umount", "-l", str(home)], check=True)


def fill(home: Path, leave: int) -> None:
    """Fill the file system of `home` until only `leave` bytes are free."""
    stats = os.statvfs(home)
    free = stats.f_bavail * stats.f_frsize
    try:
        with open(home / "filler", "wb") as filler:
            filler.write(b"\0" * max(0, free - leave))
            while leave == 0:  # the last few blocks, whatever the accounting says
                filler.write(b"\0" * 4096)
                filler.flush()
    except OSError:
        pass  # full


def cli(*args: str):
    return runner.invoke(app, list(args))


def assert_one_line(result, exit_code: int, *words: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_a_full_disk_while_saving_checkpoints_fails_each_run_with_its_cause_and_the_worker_goes_on(small_home):
    added = cli("queue", "add", "digits-quick", "--seeds", "2", "--set", "epochs=1", "--set", "threads=1",
                "--home", str(small_home), "--json")
    assert added.exit_code == 0, added.output
    fill(small_home, ROOM_FOR_RECORDS)
    worker = subprocess.run([sys.executable, "-m", "tui_app.cli", "worker", "--once", "--home", str(small_home)],
                            capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stderr
    assert "Traceback" not in worker.stderr
    runs = Store(small_home / "history.json").list_runs()
    assert [run["state"] for run in runs] == ["failed", "failed"]
    assert all("No space left on device" in run["outcome"]["message"] for run in runs), [run["outcome"] for run in runs]
    assert not list(small_home.rglob("*.tmp"))
    json.loads((small_home / "history.json.bak").read_text())  # the backup parses too


def test_a_full_disk_refuses_writes_with_one_line_and_loses_nothing(small_home):
    home = str(small_home)
    assert cli("queue", "add", "digits-quick", "--seeds", "2", "--home", home).exit_code == 0
    history = (small_home / "history.json").read_bytes()
    fill(small_home, 0)
    for command in (["queue", "add", "digits-quick"], ["queue", "cancel", "1"], ["queue", "clear"],
                    ["run", "digits-quick", "--set", "epochs=1"]):
        result = cli(*command, "--home", home)
        assert_one_line(result, 1, "No space left on device", str(small_home / "history.json"))
        assert (small_home / "history.json").read_bytes() == history
    assert cli("history", "ls", "--home", home).exit_code == 0  # reading still works
    assert not list(small_home.rglob("*.tmp"))


def test_a_read_only_home_refuses_writes_with_one_line(small_home):
    home = str(small_home)
    assert cli("queue", "add", "digits-quick", "--home", home).exit_code == 0
    history = (small_home / "history.json").read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", home], check=True)
    for command in (["queue", "add", "digits-quick"], ["queue", "cancel", "1"], ["worker", "--once"]):
        result = cli(*command, "--home", home)
        assert_one_line(result, 2, "Read-only file system")
    assert (small_home / "history.json").read_bytes() == history
    assert cli("history", "ls", "--home", home).exit_code == 0
