"""The queue form: a preset's settings to adjust before its runs are queued.

Every field takes one value or a comma-separated list (a list sweeps the field, like
`queue add --grid`); "more" takes further `key=value` or `key=v1,v2` settings, never one
that has its own field. As it is typed, the form is checked in a thread worker with the
engine's own conversions and RunConfig validation, field by field and then whole with
Preset.grid_configs and the pre-flight checks (the path `queue add` takes: model known,
dataset files present); a valid form is queued with one engine.queue.enqueue call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from textual import on, work
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widget import Widget
from textual.widgets import Button, Input, Label, Static
from textual.worker import Worker, WorkerState

from engine.config import AUGMENTATIONS, DATASETS, DEVICES, SAMPLERS, RunConfig, parse_assignments, parse_whole_number
from engine.errors import BadInput, DatasetFilesMissing
from engine.paths import resolve_data_root
from engine.preflight import check_model_known, check_queueable
from engine.presets import Preset, parse_grid_values
from engine.queue import enqueue, validate_priority
from tui_app.screens.base import AppScreen, LatestOnly

# (config key, choices offered as suggestions)
CONFIG_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sampler", SAMPLERS), ("augmentation", AUGMENTATIONS), ("budget", ()),
    ("model", ()), ("dataset", DATASETS), ("device", DEVICES),
)
FIELD_ORDER = ("sampler", "augmentation", "budget", "seeds", "model", "dataset", "device", "priority", "more")
CHECKING_DELAY_S = 0.25  # a check still running after this (timm's model list loads) says so


def check_values(preset: Preset, key: str, text: str) -> list[Any]:
    """One value or a comma list for config field `key`, each valid on top of the preset."""
    if not text.strip():
        raise BadInput(f"{key} needs a value (or a comma-separated list to sweep)")
    values = parse_grid_values(key, text)
    for value in values:
        preset.config({key: value})
        if key == "model":
            check_model_known(value)
    return values


def check_seeds(text: str) -> int:
    seeds = parse_whole_number(text, "seeds")
    if seeds < 1:
        raise BadInput("seeds must be >= 1")
    return seeds


def check_priority(text: str) -> int:
    return validate_priority(parse_whole_number(text, "priority"))


def check_more(preset: Preset, text: str) -> dict[str, list[Any]]:
    """`key=value key=v1,v2 ...`: further settings, a comma list sweeping its field. A key
    with its own field above is refused (it would silently override that field). Every
    setting is checked: BadInput names all that are wrong, one per line."""
    grid: dict[str, list[Any]] = {}
    problems: list[str] = []
    for pair in text.split():
        try:
            ((key, value),) = parse_assignments([pair]).items()
            if key in FIELD_ORDER:
                raise BadInput(f"{key} has its own field above: set it there, not in more")
            grid[key] = check_values(preset, key, value)
        except BadInput as error:
            problems.append(str(error))
    if problems:
        raise BadInput("\n".join(problems))
    return grid


@dataclass(frozen=True)
class FormCheck:
    """The verdict on one state of the form."""

    texts: dict[str, str]  # the field texts it judged
    errors: dict[str, str] = field(default_factory=dict)  # field -> message
    problem: str | None = None  # what stops the whole form, if anything
    configs: list[RunConfig] = field(default_factory=list)
    priority: int = 0

    @property
    def valid(self) -> bool:
        return self.problem is None


def check_form(preset: Preset, texts: dict[str, str], data_root: Path) -> FormCheck:
    """Every field on its own, then the runs of the whole form as `queue add` builds and
    checks them (dataset files looked for in `data_root`)."""
    grid: dict[str, list[Any]] = {}
    errors: dict[str, str] = {}
    seeds, priority = 1, 0
    for key in FIELD_ORDER:
        try:
            if key == "seeds":
                seeds = check_seeds(texts[key])
            elif key == "priority":
                priority = check_priority(texts[key])
            elif key == "more":
                grid.update(check_more(preset, texts[key]) if texts[key].strip() else {})
            else:
                grid[key] = check_values(preset, key, texts[key])
        except BadInput as error:
            errors[key] = str(error)
    if errors:
        return FormCheck(texts, errors, "fix the field marked above to queue")
    try:
        configs = preset.grid_configs(None, grid, seeds)
        check_queueable(configs, data_root)
    except DatasetFilesMissing as error:  # shown under the dataset field, as queue add would name it
        return FormCheck(texts, {"dataset": str(error)}, "fix the field marked above to queue")
    except BadInput as error:
        return FormCheck(texts, problem=str(error))
    return FormCheck(texts, configs=configs, priority=priority)


def initial_values(preset: Preset) -> dict[str, str]:
    """The form as the preset stands: its grid as comma lists, its seeds, priority 0."""
    config = preset.config().to_dict()
    fields = {key: ",".join(map(str, preset.grid[key])) if key in preset.grid else str(config[key])
              for key, _ in CONFIG_FIELDS}
    other_grid = " ".join(f"{key}={','.join(map(str, values))}" for key, values in preset.grid.items()
                          if key not in fields)
    return {**fields, "seeds": str(preset.seeds), "priority": "0", "more": other_grid}


def plural(count: int) -> str:
    return f"{count} run{'s' * (count != 1)}"


def describe_ids(ids: list[int]) -> str:
    """"id 7" or "ids 7–12" (enqueue numbers a request's runs one after another)."""
    return f"id {ids[0]}" if len(ids) == 1 else f"ids {ids[0]}–{ids[-1]}"


class QueueFormScreen(AppScreen):
    """Fields in a column, each with its error under it; ctrl+s (or enter) queues."""

    MODE = "presets"
    BINDINGS = [
        Binding("ctrl+s", "submit", "queue", tooltip="Queue the runs of this form"),
        Binding("escape", "back", "back", tooltip="Back to the presets without queueing"),
        Binding("down", "app.focus_next", show=False),
        Binding("up", "app.focus_previous", show=False),
    ]

    class Checked(Message):
        def __init__(self, check: FormCheck) -> None:
            self.check = check
            super().__init__()

    class Queued(Message):
        def __init__(self, ids: list[int]) -> None:
            self.ids = ids
            super().__init__()

    def __init__(self, preset: Preset) -> None:
        super().__init__()
        self.preset = preset
        self.check: FormCheck | None = None  # the latest verdict
        self.submit_when_checked = False
        self.submitting = False
        self._checks = LatestOnly(self._check)

    def trail(self) -> str:
        return f"queue {self.preset.name}"

    def compose_body(self) -> Iterable[Widget]:
        values = initial_values(self.preset)
        suggestions = dict(CONFIG_FIELDS)
        with VerticalScroll(id="form"):
            for key in FIELD_ORDER:
                with Horizontal(classes="field-row"):
                    yield Label(key, classes="field-label")
                    choices = suggestions.get(key, ())
                    yield Input(values[key], id=f"field-{key}", compact=True,
                                suggester=SuggestFromList(choices) if choices else None,
                                placeholder="key=value … (a,b sweeps)" if key == "more" else "")
                yield Static("", id=f"error-{key}", classes="field-error")
            with Vertical(id="form-end"):
                yield Static("checking…", id="form-summary")
                with Horizontal(id="form-buttons"):
                    yield Button("Queue", id="submit", variant="primary", compact=True, disabled=True)
                    yield Button("Back", id="back", compact=True)

    def on_mount(self) -> None:
        self._checks.ask()
        self.query_one("#field-sampler", Input).focus()

    def texts(self) -> dict[str, str]:
        return {key: self.query_one(f"#field-{key}", Input).value for key in FIELD_ORDER}

    # --- checking as the user types
    @on(Input.Changed)
    def _field_changed(self) -> None:
        self._checks.ask()
        self.set_timer(CHECKING_DELAY_S, self._show_checking)

    def _show_checking(self) -> None:
        """The verdict shown is for an older form: say it is being checked, and queue nothing
        until it is (a model name unknown to us is looked up in timm, which takes a while)."""
        if self.check is not None and self.check.texts == self.texts():
            return
        summary = self.query_one("#form-summary", Static)
        summary.set_class(False, "invalid")
        summary.update("checking… (an unknown model name is looked up in timm)")
        submit = self.query_one("#submit", Button)
        submit.disabled = True
        submit.label = "Queue"

    def _check(self) -> Worker:
        return self._run_check(self.texts())

    @work(thread=True, exit_on_error=False, group="form-check")
    def _run_check(self, texts: dict[str, str]) -> None:
        data_root = resolve_data_root(self.budget_app.data_root, self.budget_app.home)
        self.post_message(self.Checked(check_form(self.preset, texts, data_root)))

    def on_queue_form_screen_checked(self, message: Checked) -> None:
        self._checks.finished()
        check = message.check
        if check.texts != self.texts():
            return  # the form changed meanwhile; the check asked for then is on its way
        self.check = check
        for key in FIELD_ORDER:
            error = check.errors.get(key, "")
            self.query_one(f"#field-{key}", Input).set_class(bool(error), "-invalid")
            label = self.query_one(f"#error-{key}", Static)
            label.update(error)
            label.set_class(bool(error), "shown")
        summary = self.query_one("#form-summary", Static)
        summary.set_class(not check.valid, "invalid")
        submit = self.query_one("#submit", Button)
        submit.disabled = not check.valid or self.submitting
        if check.valid:
            summary.update(f"{plural(len(check.configs))} of {self.preset.name} "
                           f"(enter or ctrl+s queues, escape goes back)")
            submit.label = f"Queue {plural(len(check.configs))}"
        else:
            summary.update(check.problem or "")
            submit.label = "Queue"
        submit.refresh(layout=True)  # a longer label needs a wider button
        if self.submit_when_checked:
            self.submit_when_checked = False
            self.action_submit()

    # --- queueing
    @on(Input.Submitted)
    def _field_submitted(self) -> None:
        self.action_submit()

    @on(Button.Pressed, "#submit")
    def _submit_pressed(self) -> None:
        self.action_submit()

    @on(Button.Pressed, "#back")
    def _back_pressed(self) -> None:
        self.action_back()

    def action_back(self) -> None:
        self.dismiss()

    def action_submit(self) -> None:
        if self.submitting:
            return
        if self.check is None or self.check.texts != self.texts():
            self.submit_when_checked = True  # queue as soon as the current form is checked
            return
        if not self.check.valid:
            invalid = next((key for key in FIELD_ORDER if key in self.check.errors), None)
            if invalid is not None:
                self.query_one(f"#field-{invalid}", Input).focus()
            self.notify(self.check.problem or "", severity="warning")
            return
        self.submitting = True
        self.query_one("#submit", Button).disabled = True
        self._enqueue(self.check.configs, self.check.priority)

    @work(thread=True, exit_on_error=False, group="form-submit")
    def _enqueue(self, configs: list[RunConfig], priority: int) -> None:
        self.post_message(self.Queued(enqueue(self.budget_app.store, self.preset.name, configs, priority)))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        super().on_worker_state_changed(event)
        if event.state == WorkerState.ERROR and event.worker.group == "form-submit":
            self.submitting = False
            self.query_one("#submit", Button).disabled = False

    def on_queue_form_screen_queued(self, message: Queued) -> None:
        self.notify(f"queued {plural(len(message.ids))} ({describe_ids(message.ids)}); 2 shows the queue")
        self.budget_app.request_refresh()
        self.dismiss()
