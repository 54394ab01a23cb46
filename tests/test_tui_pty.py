"""The real `budget-tui` in a real terminal: started in an 80x24 tmux pane on a fixture
home, driven with key presses, read back from the pane, and quit with q (exit status 0).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_tui import build_home

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
BUDGET_TUI = Path(sys.executable).with_name("budget-tui")


class Pane:
    """One detached tmux session on a private server socket, so no user session is touched."""

    def __init__(self, folder: Path, command: str) -> None:
        self.socket = str(folder / "tmux.sock")
        self.tmux("new-session", "-d", "-s", "tui", "-x", "80", "-y", "24", command)

    def tmux(self, *arguments: str) -> str:
        return subprocess.run([TMUX, "-S", self.socket, *arguments], check=True, capture_output=True,
                              text=True).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "tui")

    def press(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "tui", *keys)

    def wait_for(self, *texts: str, timeout_s: float = 15.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            screen = self.screen()
            if all(text in screen for text in texts):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{texts} never appeared; the screen reads:\n{screen}")
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run([TMUX, "-S", self.socket, "kill-server"], capture_output=True)


def test_budget_tui_in_a_terminal_switches_screens_opens_a_run_and_quits(tmp_path):
    home = build_home(tmp_path / "home")
    status = tmp_path / "status"
    start = time.monotonic()
    pane = Pane(tmp_path, f"env TERM=xterm-256color {BUDGET_TUI} --home {home}; echo $? > {status}")
    try:
        pane.wait_for("1 Presets", "digits-quick")
        # The target is under a second (tests/benchmarks/bench_tui.py); twice that leaves room
        # for a busy test machine but not for importing the training stack on the way.
        assert time.monotonic() - start < 2.0
        first = pane.wait_for("worker: stopped", "quit")
        assert "help" in first.splitlines()[-1]  # the footer shows the keys

        pane.press("2")
        queue = pane.wait_for("1 running · 2 queued · 1 interrupted · 5 finished last")
        # At 80 columns the rate and accuracy make way for seed, priority and preset.
        assert "40%" in queue and "interrupted" in queue and "cancelled" in queue
        assert all(label in queue.splitlines()[3] for label in ("seed", "prio", "preset"))

        pane.press("3")
        pane.wait_for("19 finished runs", "cancelled")
        pane.press("Down", "Down", "Down", "Enter")
        detail = pane.wait_for("run 16 done", "final test acc 95.30%")
        assert "test accuracy (%)" in detail

        pane.press("Escape")  # alone: an escape followed at once by a key reads as alt+key
        pane.wait_for("19 finished runs")
        pane.press("4")
        pane.wait_for("unif-sgd", "91.60±0.14 base")

        pane.press("q")
        deadline = time.monotonic() + 10
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status.read_text().strip() == "0"
    finally:
        pane.close()


def test_the_queue_button_in_a_terminal_grows_with_its_label(tmp_path):
    """Typed one key at a time in a real terminal, the label outgrew a button that kept its
    first width ("Queue 1000" with "runs" cut off)."""
    pane = Pane(tmp_path, f"env TERM=xterm-256color {BUDGET_TUI} --home {tmp_path}")
    try:
        pane.wait_for("digits-quick", "worker: stopped")
        # At a person's pace, so each key lands where a person's would.
        for key in ("Down", "Down", "Down", "Enter", "Tab", "Tab", "Tab", "C-u", *"1000"):
            pane.press(key)
            time.sleep(0.3)
        pane.wait_for("1000 runs of digits-quick", "Queue 1000 runs")
    finally:
        pane.close()
