"""A live progress bar for one run on stderr: epoch, loss, test accuracy, images/s, ETA.

Fed with the engine's events; never touches torch. The ETA is the engine's EtaClock (the
average rate since training began, "~" until a few steps are in), as the TUI shows it.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from engine.events import TrainingEvent
from engine.runs import EtaClock
from tui_app.formatting import duration


class RunProgress:
    """Context manager turning training events into a rich progress bar."""

    def __init__(self, label: str) -> None:
        self.label = label
        # Fits 80 columns: label, a short bar, epoch/loss/acc/rate, ETA.
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=12),
            TextColumn("{task.fields[status]}"),
            TextColumn("ETA {task.fields[eta]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self.task = self.progress.add_task(label, total=None, status="starting", eta="~")
        self.epoch_status = ""
        self.eta = EtaClock()
        self.step = 0

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def update(self, event: TrainingEvent) -> None:
        kind = event["event"]
        if kind in ("start", "resume"):
            plan = event.get("plan")
            if plan:
                self.progress.update(self.task, total=plan["total_steps"], status=f"on {event['device']}")
                self.eta.begin(self.step, time.monotonic())
            if kind == "resume":
                self.step = event["step"]
                self.progress.update(self.task, completed=event["step"])
        elif kind == "step":
            self.progress.update(self.task, completed=event["step"], eta=self._eta(event["step"], event["total_steps"]),
                                 status=f"ep {event['epoch']} {self.epoch_status}")
        elif kind == "epoch":
            self.epoch_status = (
                f"loss {event['train_loss']:.3f} acc {event['test_acc']:.1%} "
                f"{event['images_per_s']:,.0f} im/s"
            )
            self.progress.update(
                self.task, completed=event["step"], total=event["total_steps"],
                eta=self._eta(event["step"], event["total_steps"]),
                status=f"ep {event['epoch']}/{event['total_epochs']} {self.epoch_status}",
            )

    def _eta(self, step: int, total: int) -> str:
        self.step = step
        seconds = self.eta.observe(step, total, time.monotonic())
        return "~" if seconds is None else duration(seconds)
