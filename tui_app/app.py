"""The terminal UI: `budget-tui` with no arguments. Keyboard first, usable at 80x24 over SSH.

The app owns the one periodic read of the history (a thread worker, one in flight at a
time) and hands each new Snapshot down to the screen in view; store writes and process
control also run in thread workers, and every failure of one ends in `report_error`.
It calls the same engine functions as the CLI and never imports the training engine; the
engine's queue and worker modules are imported by the first read, after the first frame.
"""

from __future__ import annotations

import datetime as dt
import importlib
from functools import partial
from pathlib import Path
from typing import Callable

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.message import Message
from textual.worker import Worker, WorkerState

from engine.errors import BudgetTuiError
from engine.paths import history_path
from engine.store import HistoryCache, Store
from tui_app.screens.base import AppScreen, ConfirmScreen, LatestOnly, Snapshot

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# What a worker's slot label means, where the label alone does not say it.
SLOT_WORDS = {"inherit": "CUDA_VISIBLE_DEVICES inherited"}


def worker_status(workers: list[dict]) -> str:
    """`worker: running (pid 123, cpu)` or `worker: stopped`, for the header."""
    if not workers:
        return "worker: stopped"
    described = "; ".join(
        f"pid {info['pid']}, {', '.join(SLOT_WORDS.get(slot, slot) for slot in info.get('slots', [])) or '?'}"
        for info in workers)
    return f"worker: running ({described})"


# Where each screen class lives. Only the first screen's module is imported for the first
# frame; the others (and engine.analysis with the compare screen) when they are first needed.
SCREEN_CLASSES = {
    "presets": ("tui_app.screens.presets", "PresetsScreen"), "queue": ("tui_app.screens.queue", "QueueScreen"),
    "history": ("tui_app.screens.history", "HistoryScreen"), "compare": ("tui_app.screens.compare", "CompareScreen"),
    "queue form": ("tui_app.screens.queue_form", "QueueFormScreen"),
    "run detail": ("tui_app.screens.run_detail", "RunDetailScreen"),
    "help": ("tui_app.screens.help", "HelpScreen"),
}


def screen_class(name: str) -> type:
    """The class of screen `name` (a key of SCREEN_CLASSES), its module imported on first use."""
    module, attribute = SCREEN_CLASSES[name]
    return getattr(importlib.import_module(module), attribute)


Command = tuple[str, str, Callable[[], object]]  # (title, help, what it runs)


class ActionCommands(Provider):
    """The palette: budget-tui's actions first -- those of the screen in view (and the app's),
    then every other main screen's, which open that screen and act there -- then Textual's
    own commands (theme, keys, screenshot)."""

    def _commands(self) -> list[Command]:
        """Every action once, in the order listed."""
        app: BudgetTuiApp = self.app  # type: ignore[assignment]
        ours: dict[str, Command] = {}
        generic: dict[str, Command] = {}  # bindings Textual's own classes bring (list moves, copy, focus)
        for active in self.screen.active_bindings.values():
            binding = active.binding
            if not active.enabled or not binding.description or binding.action == "command_palette":
                continue
            title = binding.tooltip or binding.description
            keys = binding.key_display or app.get_key_display(binding)
            owner = type(active.node)
            declared_by_us = owner.__module__.startswith("tui_app.") and binding in owner.__dict__.get("BINDINGS", ())
            (ours if declared_by_us else generic).setdefault(
                title, (title, f"key: {keys}", partial(app.run_action, binding.action, active.node)))
        here = sorted(ours.values())
        elsewhere: list[Command] = []
        for _, mode, label in app.MAIN_SCREENS:
            main_class = screen_class(mode)
            if isinstance(self.screen, main_class):
                continue
            for binding in main_class.BINDINGS:
                if binding.description and binding.action.partition(".")[0] != "app":
                    keys = binding.key_display or app.get_key_display(binding)
                    elsewhere.append((f"{label}: {binding.tooltip or binding.description}",
                                      f"key: {keys} on the {label.lower()} screen",
                                      partial(app.run_on_screen, mode, binding.action)))
        covered = {f"action_{command.args[0]}" for _, _, command in [*here, *generic.values()]}
        textual_own = [(name, help_text, callback) for name, help_text, callback, discover
                       in app.get_system_commands(self.screen)
                       if discover and getattr(callback, "__name__", "") not in covered]
        return here + elsewhere + sorted(generic.values()) + sorted(textual_own)

    async def discover(self) -> Hits:
        for title, help_text, command in self._commands():
            yield DiscoveryHit(title, command, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, command in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), command, help=help_text)


class BudgetTuiApp(App[None]):
    """Presets, queue, history and compare screens over one home."""

    CSS_PATH = "app.tcss"
    TITLE = "budget-tui"
    SUB_TITLE = "worker: …"
    COMMANDS = {ActionCommands}  # it lists Textual's own commands too, after the app's
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    MAIN_SCREENS = (("1", "presets", "Presets"), ("2", "queue", "Queue"),
                    ("3", "history", "History"), ("4", "compare", "Compare"))
    MODES = {mode: partial(lambda name: screen_class(name)(), mode) for _, mode, _ in MAIN_SCREENS}
    DEFAULT_MODE = "presets"
    BINDINGS = [
        *(Binding(key, f"switch_mode('{mode}')", label, show=False, tooltip=f"Go to {label.lower()}")
          for key, mode, label in MAIN_SCREENS),
        Binding("question_mark", "help", "help", tooltip="Show the keys of every screen"),
        Binding("q", "quit", "quit", tooltip="Quit budget-tui (runs go on in the worker)"),
        Binding("w", "start_worker", "worker on", show=False, tooltip="Start a worker in the background"),
        Binding("W", "stop_worker", "worker off", show=False,
                tooltip="Stop the worker (asks first; its running runs become interrupted)"),
    ]

    class RunsRefreshed(Message):
        """A read of the history finished."""

        def __init__(self, snapshot: Snapshot) -> None:
            self.snapshot = snapshot
            super().__init__()

    class ActionDone(Message):
        """A store or process action finished; `text` says what happened."""

        def __init__(self, text: str) -> None:
            self.text = text
            super().__init__()

    def __init__(self, home: Path, data_root: Path | None = None, *, now: Clock = utc_now,
                 refresh_interval_s: float = 1.0) -> None:
        super().__init__()
        self.home = home
        self.data_root = data_root
        self.now = now
        self.store = Store(history_path(home))
        self.snapshot = Snapshot()
        self._history = HistoryCache(self.store)
        self._version = 0
        self._refresh_interval_s = refresh_interval_s
        self._reads = LatestOnly(self._read_snapshot)

    def on_mount(self) -> None:
        self.call_after_refresh(self.request_refresh)  # the first frame does not wait for the read
        self.set_interval(self._refresh_interval_s, self.request_refresh)

    # --- reading the history
    def request_refresh(self) -> None:
        """Read the history again (one read in flight at a time; the latest state wins)."""
        self._reads.ask()

    @work(thread=True, exit_on_error=False, group="refresh")
    def _read_snapshot(self) -> None:
        from engine.worker import live_workers

        try:
            snapshot = self._snapshot()
        except (BudgetTuiError, OSError) as error:
            snapshot = Snapshot(error=str(error), loaded=True, version=self._version,
                                workers=live_workers(self.home))
        self.post_message(self.RunsRefreshed(snapshot))

    def _snapshot(self) -> Snapshot:
        from engine.queue import RUNNING, is_stale, reconcile
        from engine.runs import read_progress
        from engine.worker import live_workers

        runs, changed = self._history.runs()
        if any(is_stale(record) for record in runs):
            reconcile(self.store)  # a run never stays "running" after its process died
            runs, changed = self._history.runs()
        self._version += changed
        progress = {record["id"]: read_progress(record)
                    for record in runs if record.get("state") == RUNNING}
        return Snapshot(runs=runs, version=self._version, progress=progress, workers=live_workers(self.home),
                        loaded=True)

    def on_budget_tui_app_runs_refreshed(self, message: RunsRefreshed) -> None:
        self.snapshot = message.snapshot
        self.sub_title = worker_status(message.snapshot.workers)
        if isinstance(self.screen, AppScreen):
            self.screen.snapshot = message.snapshot
        self._reads.finished()

    # --- actions that write or control processes
    def perform(self, job: Callable[[], str]) -> None:
        """Run `job` (a store write, a process start or stop) off the UI thread; the text it
        returns is notified and the history read again."""
        self._perform(job)

    @work(thread=True, exit_on_error=False, group="actions")
    def _perform(self, job: Callable[[], str]) -> None:
        self.post_message(self.ActionDone(job()))

    def on_budget_tui_app_action_done(self, message: ActionDone) -> None:
        self.notify(message.text)
        self.request_refresh()

    def report_error(self, error: BaseException) -> None:
        """The one place a failed background job becomes a message on screen."""
        if isinstance(error, BudgetTuiError):
            self.notify(str(error), title="error", severity="error", timeout=8)
        else:
            self.notify(f"{type(error).__name__}: {error}", title="unexpected error", severity="error", timeout=12)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            self.report_error(event.worker.error)

    def action_start_worker(self) -> None:
        from engine.worker import WorkerOptions, live_workers, start_detached_worker

        home, data_root = self.home, self.data_root

        def start() -> str:
            running = live_workers(home)
            if running:
                return f"a worker is already running (pid {', '.join(str(info['pid']) for info in running)})"
            pid, log = start_detached_worker(home, WorkerOptions(data_root=data_root))
            return f"worker started: pid {pid}, log {log}"

        self.perform(start)

    def action_stop_worker(self) -> None:
        """Stop the worker, after a y/n question when one is known to run: its runs stop too."""
        from engine.worker import stop_workers

        home = self.home

        def stop() -> str:
            stopped = stop_workers(home)
            return f"stopped worker {', '.join(map(str, stopped))}" if stopped else "no worker running"

        def answered(confirmed: bool | None) -> None:
            if confirmed:
                self.notify("stopping the worker…")
                self.perform(stop)

        workers = self.snapshot.workers
        if not workers:
            answered(True)
            return
        pids = ", ".join(str(info["pid"]) for info in workers)
        self.push_screen(ConfirmScreen(f"Stop the worker (pid {pids})? Its running runs stop and become "
                                       f"interrupted (r resumes them from their last checkpoint)."), answered)

    async def run_on_screen(self, mode: str, action: str) -> None:
        """Open main screen `mode` and run one of its actions there (for the palette)."""
        await self.switch_mode(mode)
        main_class = screen_class(mode)
        target = next((screen for screen in reversed(self.screen_stack) if isinstance(screen, main_class)),
                      self.screen)
        await self.run_action(action, target)

    def action_help(self) -> None:
        help_screen = screen_class("help")
        if isinstance(self.screen, help_screen):
            return
        from tui_app.widgets.run_table import RunTable

        sections = [("everywhere", self.BINDINGS)]
        sections += [(name, screen_class(name).BINDINGS)
                     for name in ("presets", "queue form", "queue", "history", "compare", "run detail")]
        sections.append(("run tables (↑ ↓ pgup pgdn home end move, ← → scroll by a column)", RunTable.BINDINGS))
        self.push_screen(help_screen(sections))


def run_tui(home: Path, data_root: Path | None) -> None:
    BudgetTuiApp(home, data_root).run()
