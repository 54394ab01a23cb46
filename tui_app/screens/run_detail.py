"""Run detail: one run's state and outcome (or traceback), its curves and sampler
diagnostics, its config and the tail of its log; resume or cancel it with one key.

Files (metrics.jsonl, log.txt, the traceback) are read in a thread worker, again on every
refresh while the run is running.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static
from textual.worker import Worker

from engine.analysis.plots import Chart, Series
from engine.config import RunConfig
from engine.history import load_metrics
from engine.paths import LOG_NAME, TRACEBACK_NAME, run_dir
from engine.queue import FINISHED, INTERRUPTED, QUEUED, RETRYABLE, RUNNING
from engine.records import parse_time
from tui_app.formatting import format_summary, log_line, percent, rate
from tui_app.screens.base import STARTING_HINT, AppScreen, LatestOnly, Snapshot, is_starting
from tui_app.widgets.cells import ago, eta_text, progress_bar, sparkline, state_text
from tui_app.widgets.chart_view import ChartView

LOG_LINES = 15
TRACEBACK_LINES = 12
EPOCH_ROWS = 10
CURVE_WIDTH = 30
DEFAULTS = RunConfig().to_dict()


@dataclass(frozen=True)
class RunFiles:
    """What a run's folder holds, read off the UI thread."""

    record: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    traceback: list[str] = field(default_factory=list)


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a text file (read from its end; empty if it is missing)."""
    try:
        with path.open("rb") as file:
            file.seek(0, 2)
            file.seek(max(file.tell() - 64 * 1024, 0))
            text = file.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def read_run_files(home: Path, record: dict[str, Any]) -> RunFiles:
    folder = Path(record.get("run_dir") or run_dir(home, record["id"]))
    outcome = record.get("outcome") or {}
    trace = Path(outcome["traceback_file"]) if outcome.get("traceback_file") else folder / TRACEBACK_NAME
    return RunFiles(record, load_metrics({**record, "run_dir": str(folder)}), tail(folder / LOG_NAME, LOG_LINES),
                    tail(trace, TRACEBACK_LINES) if record.get("state") != "done" else [])


def state_lines(files: RunFiles, progress: dict[str, Any], now: dt.datetime) -> Text:
    """Where the run stands: its summary when done, its progress while running, why it stopped."""
    record = files.record
    config, state = record.get("config", {}), record.get("state")
    text = Text()
    text.append(f"run {record['id']} ", style="bold")
    text.append_text(state_text(state))
    text.append(f" · {config.get('sampler', '')} · {config.get('augmentation', '')} · "
                f"budget {config.get('budget', '')} · seed {config.get('seed', '')}\n")
    text.append(f"{record.get('preset', '')} · {config.get('dataset', '')} · "
                f"created {ago(record.get('created_at'), now)}", style="dim")
    if record.get("finished_at"):
        text.append(f" · finished {ago(record.get('finished_at'), now)}", style="dim")
    if record.get("attempts", 1) > 1:
        text.append(f" · attempt {record['attempts']}", style="dim")
    text.append(f" · priority {record.get('priority', 0)}\n", style="dim")
    if is_starting(record, progress):
        started = parse_time(record.get("started_at"))
        waited = f" ({int((now - started).total_seconds())} s so far)" if started else ""
        text.append(f"{STARTING_HINT}{waited}; progress shows after its first steps\n", style="yellow")
    elif state == RUNNING and progress.get("steps"):
        text.append_text(progress_bar(progress.get("step", 0), progress["steps"], 24))
        text.append(f"  epoch {progress.get('epoch', '?')}/{progress.get('epochs', '?')} · "
                    f"test acc {percent(progress.get('test_acc'))} · "
                    f"{rate(progress.get('images_per_s'))} images/s · "
                    f"ETA {eta_text(progress, now)}\n")
    elif state == QUEUED:
        text.append("waiting in the queue for a worker (w starts one)\n")
    if record.get("summary"):
        text.append(format_summary(record["id"], record["summary"]) + "\n")
    outcome = record.get("outcome") or {}
    if state in FINISHED and state != "done" and outcome:
        code = outcome.get("exit_code")
        text.append(f"{state}: {outcome.get('message', '')}" + (f" (exit code {code})" if code is not None else ""),
                    style="bold red" if state == "failed" else "magenta")
        text.append("\n")
    if state in RETRYABLE:
        verb = "resume it from its last checkpoint" if state == INTERRUPTED else "queue it again"
        text.append(f"R: {verb}\n", style="bold")
    return text


def curve_lines(metrics: list[dict[str, Any]]) -> RenderableType:
    """Sparklines of the per-epoch metrics (sampler diagnostics included) and the last epochs."""
    if not metrics:
        return Text("no epochs recorded yet", style="dim")
    sparks = Table.grid(padding=(0, 1))
    for name, label, show in (
        ("test_acc", "test acc", lambda value: f"{value:.1%}"),
        ("train_loss", "train loss", lambda value: f"{value:.3f}"),
        ("usage_entropy", "usage H(c)", lambda value: f"{value:.3f}"),
        ("distinct_seen", "distinct", lambda value: f"{value:,.0f}"),
    ):
        values = [row[name] for row in metrics if row.get(name) is not None]
        if values:
            sparks.add_row(label, sparkline(values, CURVE_WIDTH), f"{show(values[0])} → {show(values[-1])}")
    epochs = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
    for label in ("epoch", "step", "train loss", "test acc", "usage H(c)", "distinct", "forwarded"):
        epochs.add_column(label, justify="right")
    for row in metrics[-EPOCH_ROWS:]:
        epochs.add_row(str(row.get("epoch", "")), str(row.get("step", "")), f"{row.get('train_loss', 0):.4f}",
                       percent(row.get("test_acc"), 2), f"{row.get('usage_entropy', 0):.3f}",
                       f"{row.get('distinct_seen', 0):,}", f"{row.get('samples_forwarded', 0):,}")
    return Group(sparks, Text(""), epochs)


def accuracy_chart(record: dict[str, Any], metrics: list[dict[str, Any]]) -> Chart:
    rows = [row for row in metrics if row.get("test_acc") is not None]
    return Chart(title="test accuracy (%)", x_label="optimiser steps", y_label="",
                 series=[Series(f"run {record['id']}", [row["step"] for row in rows],
                                [100.0 * row["test_acc"] for row in rows])])


def config_table(config: dict[str, Any]) -> Table:
    """Every setting, two per line; bold with * where it differs from the defaults."""
    table = Table.grid(padding=(0, 1))
    for _ in range(2):
        table.add_column(style="dim")
        table.add_column()
    items = list(config.items())
    half = (len(items) + 1) // 2
    for left, right in zip(items[:half], [*items[half:], None]):
        cells: list[Text] = []
        for item in (left, right):
            if item is None:
                cells += [Text(""), Text("")]
                continue
            key, value = item
            changed = DEFAULTS.get(key) != value
            cells += [Text(("*" if changed else " ") + key), Text(str(value), style="bold" if changed else "")]
        table.add_row(*cells)
    return table


def log_text(files: RunFiles) -> Text:
    if files.log:
        return Text("\n".join(log_line(line) for line in files.log), style="dim")
    if files.record.get("state") == QUEUED:
        return Text("no log yet", style="dim")
    return Text("no log file: only runs started by a worker have one", style="dim")


class RunDetailScreen(AppScreen):
    BINDINGS = [
        Binding("escape,backspace", "back", "back", tooltip="Back to the list"),
        Binding("R", "resume", "resume", tooltip="Resume or retry this run (queue.retry)"),
        Binding("c", "cancel", "cancel", tooltip="Cancel this run (asks first if it is running)"),
    ]

    class Loaded(Message):
        def __init__(self, files: RunFiles) -> None:
            self.files = files
            super().__init__()

    def __init__(self, run_id: int, mode: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.MODE = mode
        self.files: RunFiles | None = None
        self._loads = LatestOnly(self._load)

    def trail(self) -> str:
        return f"run {self.run_id}"

    def compose_body(self) -> Iterable[Widget]:
        with VerticalScroll(id="detail"):
            yield Static("loading…", id="detail-state")
            yield Static("", id="detail-traceback")
            yield ChartView(id="detail-chart")
            yield Static("", id="detail-curves")
            yield Static("config  (* differs from the defaults)", classes="section")
            yield Static("", id="detail-config")
            yield Static("log (last lines)", classes="section")
            yield Static("", id="detail-log")

    def on_mount(self) -> None:
        self.query_one("#detail", VerticalScroll).focus()

    def show_snapshot(self, snapshot: Snapshot) -> None:
        record = snapshot.run(self.run_id)
        if record is None:
            self.query_one("#detail-state", Static).update(snapshot.error or f"no run {self.run_id} in the history")
            return
        if self.files is None or record is not self.files.record or record.get("state") == RUNNING:
            self._loads.ask()
        else:
            self._show(self.files)  # the "ago" times move on

    def _load(self) -> Worker | None:
        record = self.snapshot.run(self.run_id)
        return None if record is None else self._read(record)

    @work(thread=True, exit_on_error=False)
    def _read(self, record: dict[str, Any]) -> None:
        self.post_message(self.Loaded(read_run_files(self.budget_app.home, record)))

    def on_run_detail_screen_loaded(self, message: Loaded) -> None:
        self.files = message.files
        self._show(message.files)
        self._loads.finished()

    def _show(self, files: RunFiles) -> None:
        record = files.record
        progress = self.snapshot.progress.get(self.run_id, {})
        self.query_one("#detail-state", Static).update(state_lines(files, progress, self.budget_app.now()))
        chart = self.query_one(ChartView)
        chart.display = len(files.metrics) > 1
        chart.show(accuracy_chart(record, files.metrics))
        self.query_one("#detail-curves", Static).update(curve_lines(files.metrics))
        self.query_one("#detail-config", Static).update(config_table(record.get("config", {})))
        self.query_one("#detail-log", Static).update(log_text(files))
        traceback = self.query_one("#detail-traceback", Static)
        traceback.display = bool(files.traceback)
        traceback.update(Text("\n".join(files.traceback), style="red"))

    def action_back(self) -> None:
        self.dismiss()

    def action_resume(self) -> None:
        self.retry_run(self.run_id)

    def action_cancel(self) -> None:
        self.cancel_run(self.run_id)
