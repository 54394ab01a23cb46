"""What the main screens share: the frame (header with the worker's state, the screen bar,
the footer), the latest view of the history that the app hands down, the one route
from a failed background job to a notification, and the y/n question asked before an
action that stops a process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.reactive import reactive
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import Footer, Header, Static
from textual.worker import Worker, WorkerState

from tui_app.widgets.screen_bar import ScreenBar

if TYPE_CHECKING:
    from tui_app.app import BudgetTuiApp

EMPTY_HINT = "no runs yet — pick a preset (1) and press enter"
# A claimed run writes no progress until its process has imported torch and loaded the data.
STARTING_HINT = "starting: loading torch…"


@dataclass(eq=False)
class Snapshot:
    """The history as last read. Compared by identity: a new read is a new snapshot."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    version: int = 0  # grows whenever the history file was read again (it had changed)
    progress: dict[int, dict[str, Any]] = field(default_factory=dict)  # run id -> progress.json
    workers: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # the history could not be read; screens show this instead
    loaded: bool = False  # False until the first read finished

    def hint(self, empty: str = EMPTY_HINT) -> str:
        """What an empty table says: the read error, "loading", or how to start."""
        if self.error:
            return self.error
        return empty if self.loaded else "loading the history…"

    def run(self, run_id: int) -> dict[str, Any] | None:
        return next((record for record in self.runs if record.get("id") == run_id), None)


def is_starting(record: dict[str, Any], progress: dict[str, Any]) -> bool:
    """Running, not waiting in a Slurm queue, and without progress of this attempt yet."""
    from engine import queue  # the engine's queue and Slurm modules: after the first frame
    from engine.slurm import display_state

    return display_state(record) == queue.RUNNING and not progress.get("steps")


class ConfirmScreen(ModalScreen[bool]):
    """A y/n question over the screen; dismissed with True for y, False for n or escape."""

    BINDINGS = [
        Binding("y", "answer(True)", "yes", tooltip="Yes, do it"),
        Binding("n,escape", "answer(False)", "no", tooltip="No, leave it as it is"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Static(self.question, id="confirm-question")
            yield Static("y yes · n no", id="confirm-keys")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class LatestOnly:
    """Keeps one background job in flight: asks made while it runs collapse into a single
    run after it, so a burst of updates costs two runs and the latest state wins."""

    def __init__(self, start: Callable[[], Worker | None]) -> None:
        """`start` starts the job and returns its worker (None: nothing to do)."""
        self._start = start
        self._worker: Worker | None = None
        self._again = False

    def ask(self) -> None:
        if self._worker is not None and self._worker.state in (WorkerState.PENDING, WorkerState.RUNNING):
            self._again = True
            return
        self._again = False
        self._worker = self._start()

    def finished(self) -> None:
        """The job's result arrived: start the run asked for meanwhile, if any."""
        self._worker = None
        if self._again:
            self.ask()


class AppScreen(Screen):
    """A screen inside the app's frame. Subclasses set MODE (the main screen it belongs to)
    and compose their body; they show `snapshot` in `show_snapshot`."""

    MODE = ""
    snapshot: reactive[Snapshot] = reactive(Snapshot, init=False, always_update=True)

    @property
    def budget_app(self) -> BudgetTuiApp:
        return self.app  # type: ignore[return-value]

    def trail(self) -> str:
        """Where we are below the main screen, shown after it in the screen bar."""
        return ""

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        yield ScreenBar(self.budget_app.MAIN_SCREENS, self.MODE, self.trail())
        yield from self.compose_body()
        yield Footer(compact=True)

    def compose_body(self) -> Iterable[Widget]:
        raise NotImplementedError

    def on_screen_resume(self) -> None:
        if self.snapshot is not self.budget_app.snapshot:
            self.snapshot = self.budget_app.snapshot

    def watch_snapshot(self, snapshot: Snapshot) -> None:
        self.show_snapshot(snapshot)

    def show_snapshot(self, snapshot: Snapshot) -> None:
        """Bring the screen up to date with a new read of the history."""

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            self.budget_app.report_error(event.worker.error)

    # --- run actions shared by the queue, the history and the run detail
    def cancel_run(self, run_id: int) -> None:
        """Cancel a run; one that is running is stopped, so that is asked first."""
        from engine import queue

        store = self.budget_app.store

        def cancel(confirmed: bool | None = True) -> None:
            if confirmed:
                self.budget_app.perform(lambda: describe_outcome(queue.cancel(store, [run_id])))

        record = self.snapshot.run(run_id)
        if record is not None and record.get("state") == queue.RUNNING:
            self.app.push_screen(ConfirmScreen(f"Cancel run {run_id}? It is running: its process is stopped "
                                               f"(r resumes it later from its last checkpoint)."), cancel)
        else:
            cancel()

    def retry_run(self, run_id: int) -> None:
        """Queue a failed, cancelled or interrupted run again; it resumes from its checkpoint."""
        from engine import queue

        store = self.budget_app.store
        self.budget_app.perform(lambda: describe_outcome(queue.retry(store, [run_id])))


def describe_outcome(outcome: dict[int, str]) -> str:
    return "; ".join(f"run {run_id}: {result}" for run_id, result in outcome.items())
