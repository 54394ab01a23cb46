"""A run's files: the checkpoint that makes it resumable, metrics.jsonl and usage.npy.

The checkpoint holds everything that shapes the rest of the run (weights, optimiser,
sampler state, schedule clock, both RNG states, usage counts, accounting and history), so
a resumed run ends, on a CPU, bit-identical to an uninterrupted one. It is written before
the epoch's metrics line: a crash between the two loses nothing, since a resume rewrites
metrics.jsonl from the checkpoint's history.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
import torch

from engine.atomic import write_atomic
from engine.events import EpochRecord
from engine.paths import METRICS_NAME
from engine.train.accounting import Accounting, SampleUsage
from engine.train.budget import ScheduleClock
from engine.train.samplers import Sampler
from engine.train.step import Trainer


@dataclass
class Progress:
    """How far the run has come: what a resume restores besides the parts' own state."""

    accounting: Accounting = field(default_factory=Accounting)
    history: list[EpochRecord] = field(default_factory=list)
    epoch: int = 0  # epochs done


def checkpoint_state(
    trainer: Trainer, sampler: Sampler, clock: ScheduleClock, usage: SampleUsage, progress: Progress
) -> dict[str, Any]:
    """Everything save_checkpoint writes after an epoch."""
    return {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "sampler": sampler.state_dict(),
        "clock": clock.state_dict(),
        "generator": trainer.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        **({"cuda_rng": torch.cuda.get_rng_state(trainer.device)} if trainer.cuda else {}),
        "usage": usage.counts,
        "accounting": vars(progress.accounting).copy(),
        "history": progress.history,
        "epoch": progress.epoch,
    }


def restore_checkpoint(
    path: Path, trainer: Trainer, sampler: Sampler, clock: ScheduleClock, usage: SampleUsage
) -> Progress:
    """Load the checkpoint at `path` into the run's parts (in place) and return its progress."""
    # Load on the CPU: generator states must stay CPU byte tensors; the rest is copied over.
    state = torch.load(path, map_location="cpu", weights_only=True)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    sampler.load_state_dict(state["sampler"])
    if "clock" in state:  # checkpoints of older versions re-planned nothing
        clock.load_state_dict(state["clock"])
    trainer.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if trainer.cuda and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], trainer.device)
    usage.counts.copy_(state["usage"])
    accounting = Accounting(**state["accounting"])
    trainer.scorer.forwarded = accounting.samples_forwarded_scoring
    return Progress(accounting, list(state["history"]), int(state["epoch"]))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise in memory, then write atomically: a crash never leaves half a checkpoint,
    and a full disk surfaces as the OSError it is (torch's own file writer reports it as
    an opaque "unexpected pos" RuntimeError)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getbuffer())


def save_usage(usage: SampleUsage, path: Path) -> None:
    write_atomic(path, lambda handle: numpy.save(handle, usage.counts.cpu().numpy().astype("int64")))


def write_metrics(run_dir: Path, history: list[EpochRecord]) -> None:
    write_atomic(run_dir / METRICS_NAME, "".join(json.dumps(record) + "\n" for record in history))


def append_metrics(run_dir: Path, record: EpochRecord) -> None:
    with open(run_dir / METRICS_NAME, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
