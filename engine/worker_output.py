"""What a worker tells its user: a line per run as it starts and as it ends, and a notice
when the queue drains (a bell, a line, an optional shell command).

The lines go to stdout, flushed, and nothing else does (the worker's own messages go to
stderr), so `worker --once | grep` and `--json` (one object per line) stay parseable; a
detached worker's stdout is <home>/worker.log. Must not import torch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from engine.paths import HOME_ENV
from engine.records import RunState, now

# The config fields that tell the runs of a sweep apart (docs/methods.md: samplers, augmentations, budget).
IDENTITY_FIELDS = ("sampler", "augmentation", "budget", "seed")
ON_DRAIN_TIMEOUT_S = 60  # a notification command that hangs must not stall the queue for long
# The environment an --on-drain command gets: how many runs this worker finished, by state.
DRAIN_COUNT_VARIABLES = {RunState.DONE: "BUDGET_TUI_DONE", RunState.FAILED: "BUDGET_TUI_FAILED",
                         RunState.CANCELLED: "BUDGET_TUI_CANCELLED", RunState.INTERRUPTED: "BUDGET_TUI_INTERRUPTED"}


def run_identity(record: dict[str, Any]) -> dict[str, Any]:
    """The run's id, preset and the config fields that set it apart from its sweep."""
    config = record.get("config") or {}
    return {"run": record.get("id"), "preset": record.get("preset"),
            **{name: config.get(name) for name in IDENTITY_FIELDS}}


def last_line(message: str | None) -> str:
    """The last non-empty line of a run's recorded error (a traceback ends with its cause)."""
    return next((line.strip() for line in reversed((message or "").splitlines()) if line.strip()), "")


def end_fields(record: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """How a run ended, from its record: its state, accuracy when done, else its error."""
    state = str(record.get("state", "unknown"))
    summary = record.get("summary") or {}
    accuracy = summary.get("final_test_acc") if state == RunState.DONE else None
    error = None if state == RunState.DONE else last_line((record.get("outcome") or {}).get("message"))
    return {"state": state, "final_test_acc": accuracy, "wall_s": round(wall_s, 1), "error": error or None}


def _clock(seconds: float) -> str:
    """h:mm:ss (the engine cannot use the front ends' formatting)."""
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _what(event: dict[str, Any]) -> str:
    settings = " ".join(f"{name}={event[name]}" for name in IDENTITY_FIELDS if event.get(name) is not None)
    return f"{event.get('preset') or '-'} {settings}".strip()


def human_line(event: dict[str, Any]) -> str:
    """The line a person reads for an event; every run line names the run in full, so a
    grep for one finds its start and its end."""
    moment = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    if event["event"] in ("start", "follow"):
        verb = "started" if event["event"] == "start" else "followed (started by an earlier worker)"
        return f"{moment} run {event['run']} {verb} on {event['slot']}: {_what(event)}"
    if event["event"] == "end":
        if event["final_test_acc"] is not None:
            result = f"final test acc {event['final_test_acc']:.2%}"
        elif event["state"] == RunState.DONE:
            result = "no accuracy recorded"
        else:
            result = event["error"] or "no error recorded"
        return (f"{moment} run {event['run']} {event['state']} on {event['slot']} after "
                f"{_clock(event['wall_s'])}: {result} ({_what(event)})")
    others = ", ".join(f"{event[state]} {state}" for state in (RunState.CANCELLED.value, RunState.INTERRUPTED.value)
                       if event[state])
    return (f"{moment} queue drained: {event['done']} done, {event['failed']} failed"
            f"{', ' + others if others else ''}")


@dataclass
class WorkerReport:
    """Prints the worker's events and notices when the queue drains; counts the runs that
    ended since the last notice."""

    home: Path
    as_json: bool = False
    on_drain: str | None = None  # a shell command run when the queue drains
    out: IO[str] | None = None  # None: sys.stdout at the time (pytest's capture swaps it)
    err: IO[str] | None = None  # None: sys.stderr at the time
    started_at: dict[int, float] = field(default_factory=dict)  # run id -> monotonic start
    ended: Counter = field(default_factory=Counter)  # state -> runs since the last notice

    def started(self, record: dict[str, Any], slot_label: str, *, followed: bool = False) -> None:
        """`followed`: a cluster job that a worker now gone started, which this one takes over."""
        self.started_at[int(record["id"])] = time.monotonic()
        self._emit({"event": "follow" if followed else "start", "at": now(), **run_identity(record),
                    "slot": slot_label})

    def finished(self, record: dict[str, Any], slot_label: str) -> None:
        """`record` as the history holds it once the run ended (or as claimed, if unreadable)."""
        begun = self.started_at.pop(int(record["id"]), None)
        wall_s = time.monotonic() - begun if begun is not None else 0.0
        fields = end_fields(record, wall_s)
        self.ended[fields["state"]] += 1
        self._emit({"event": "end", "at": now(), **run_identity(record), "slot": slot_label, **fields})

    def queue_empty(self) -> None:
        """The worker found no queued run and has none running: if it ran any since the last
        notice, the queue drained: bell, line, --on-drain command."""
        if not self.ended:
            return
        counts = {state.value: self.ended.get(state.value, 0) for state in DRAIN_COUNT_VARIABLES}
        self.ended.clear()
        self._emit({"event": "drained", "at": now(), **counts})
        stream = self.err or sys.stderr
        if stream.isatty():
            stream.write("\a")
            stream.flush()
        if self.on_drain:
            self._run_on_drain(counts)

    def _emit(self, event: dict[str, Any]) -> None:
        line = json.dumps(event) if self.as_json else human_line(event)
        print(line, file=self.out or sys.stdout, flush=True)

    def _run_on_drain(self, counts: dict[str, int]) -> None:
        """Run the user's command through the shell, in a session of its own; what it prints
        goes to stderr (stdout holds the events). A failure is reported there and the worker
        goes on."""
        environment = {**os.environ, HOME_ENV: str(self.home),
                       **{variable: str(counts[state.value]) for state, variable in DRAIN_COUNT_VARIABLES.items()}}
        try:
            command = subprocess.Popen(self.on_drain, shell=True, env=environment, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as error:
            self._warn(f"--on-drain command could not start: {error}")
            return
        try:
            said, _ = command.communicate(timeout=ON_DRAIN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(command.pid, signal.SIGKILL)  # the shell and whatever it started
            said, _ = command.communicate()
            self._say(said)
            self._warn(f"--on-drain command did not finish in {ON_DRAIN_TIMEOUT_S} s and was stopped")
            return
        self._say(said)
        if command.returncode != 0:
            self._warn(f"--on-drain command failed with exit code {command.returncode}")

    def _say(self, output: bytes) -> None:
        text = output.decode("utf-8", "replace")
        if text:
            stream = self.err or sys.stderr
            stream.write(text if text.endswith("\n") else text + "\n")
            stream.flush()

    def _warn(self, message: str) -> None:
        print(f"warning: {message}", file=self.err or sys.stderr, flush=True)
