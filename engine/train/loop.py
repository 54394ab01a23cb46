"""One budgeted training run: `train(config, run_dir) -> summary`.

Wires the run's parts together and runs its epochs; each trains on the sampler's batches,
then accounts, evaluates, records, checkpoints and reports. The parts have modules of
their own: prepare (device and data), step (the training step and the scoring forward),
accounting (cost, epoch records, the summary) and checkpoint (resume and the run's files).
Printing, the history store and seed loops live outside.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from engine.atomic import write_atomic
from engine.config import RunConfig
from engine.events import EventHandler, RunSummary, TrainingEvent
from engine.paths import CHECKPOINT_NAME, METRICS_NAME, SUMMARY_NAME, USAGE_NAME
from engine.scheduling import PEAK_MEMORY_FIELD
from engine.train.accounting import EpochTally, SampleUsage, epoch_record, summarise
from engine.train.augment import score_credit
from engine.train.budget import BudgetPlan, ScheduleClock, learning_rate, plan_budget
from engine.train.checkpoint import (
    Progress,
    append_metrics,
    checkpoint_state,
    restore_checkpoint,
    save_checkpoint,
    save_usage,
    write_metrics,
)
from engine.train.models import build_model, forward_flops_per_sample
from engine.train.prepare import RunData, load_run_data, prepare, resolve_device
from engine.train.samplers import Sampler, create_sampler
from engine.train.step import Trainer


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run fails instead of reporting garbage."""


@dataclass
class _Run:
    """The parts of one run, wired once by train(), that its epochs share."""

    config: RunConfig
    plan: BudgetPlan
    run_dir: Path
    trainer: Trainer
    sampler: Sampler
    clock: ScheduleClock
    usage: SampleUsage
    emit: EventHandler
    wall_mark: float  # perf_counter() when wall time was last charged to the accounting

    def lap(self) -> float:
        """Wall seconds since the last lap (or the run's start in this process)."""
        now = time.perf_counter()
        seconds, self.wall_mark = now - self.wall_mark, now
        return seconds


def train(
    config: RunConfig,
    run_dir: Path,
    *,
    data_root: Path,
    on_event: EventHandler | None = None,
    data: RunData | None = None,
) -> RunSummary:
    """Train (or resume) the run in `run_dir` and return its summary.

    A checkpoint is written after every epoch; calling train again on the same run_dir
    continues from it and, on CPU, ends bit-identical to an uninterrupted run.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    wall_start = time.perf_counter()
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the summary's peak is this run's own

    # 1. Data: uint8 on the device, normalised per batch, never re-decoded per epoch.
    device_data = prepare(data if data is not None else load_run_data(config, data_root), device)
    plan = plan_budget(config, device_data.num_train)

    # 2. The parts. One seed drives initialisation (the global RNG, seeded here), sampling
    #    and augmentation (the run's generator, which the Trainer seeds).
    torch.manual_seed(config.seed)
    model = build_model(config.model, num_classes=device_data.splits.num_classes,
                        in_chans=device_data.input_shape[0]).to(device)
    flops_forward = forward_flops_per_sample(model, device_data.input_shape)
    trainer = Trainer(config, device_data, model, device)
    sampler = create_sampler(config.sampler, device_data.num_train, plan, config.batch_size, trainer.generator, config)
    usage = SampleUsage(device_data.num_train, config.batch_size, device)
    run = _Run(config, plan, run_dir, trainer, sampler, ScheduleClock.for_plan(plan), usage,
               on_event or _ignore, wall_start)

    # 3. Resume: everything that shapes the rest of the run comes back from the checkpoint.
    progress = _resume(run)
    run.emit({"event": "start", "plan": plan.to_dict(), "device": str(device),
              "flops_forward_per_sample": flops_forward, "epoch": progress.epoch})

    # 4. Epochs. A sampler that spends its budget at its own pace (sb) may need epochs past the plan.
    shortfall: str | None = None  # why the run spent less than its planned steps, if it did
    while progress.epoch < plan.epochs or (sampler.runs_until_spent and progress.accounting.steps < plan.total_steps):
        tally = _train_epoch(run, progress.epoch, progress.accounting.steps)
        if tally.steps == 0:
            # The sampler has spent its budget (sb), or found nothing worth a step in a
            # whole pass: no empty epochs in the record.
            if progress.accounting.steps < plan.total_steps:
                shortfall = f"the sampler chose no batch in epoch {progress.epoch + 1} before spending its budget"
            break
        _end_epoch(run, tally, progress)
    return _finish(run, progress, flops_forward, shortfall)


def _ignore(event: TrainingEvent) -> None:
    """The event handler of a run nobody follows."""


def _resume(run: _Run) -> Progress:
    """The progress saved in the run folder's checkpoint, its parts restored; a fresh
    Progress (and no stale metrics file) where there is none."""
    path = run.run_dir / CHECKPOINT_NAME
    if not path.exists():
        (run.run_dir / METRICS_NAME).unlink(missing_ok=True)
        return Progress()
    progress = restore_checkpoint(path, run.trainer, run.sampler, run.clock, run.usage)
    write_metrics(run.run_dir, progress.history)  # drop epoch lines written after the checkpoint
    run.emit({"event": "resume", "epoch": progress.epoch, "step": progress.accounting.steps})
    return progress


def _train_epoch(run: _Run, epoch: int, step: int) -> EpochTally:
    """Train 0-based `epoch` on the sampler's batches, `step` steps having been taken."""
    config, plan, sampler = run.config, run.plan, run.sampler
    run.trainer.model.train()
    tally = EpochTally(run.trainer.device)
    batches = sampler.epoch_batches(epoch, run.trainer.scorer)
    run.clock.replan(step, sampler.expected_total_steps(step))
    progress_every = max(1, plan.steps_per_epoch // 20)
    for batch in batches:
        step += 1
        result = run.trainer.step(batch, learning_rate(run.clock.position(step), plan, config))
        tally.add(batch, result.losses)
        run.usage.add(batch.indices)
        if sampler.needs_scores:
            sampler.observe(score_credit(batch.indices, result.logits, result.labels, result.augmented,
                                         result.losses, faithful=config.fidelity == "faithful"))
        if step % progress_every == 0:
            run.emit({"event": "step", "epoch": epoch + 1, "step": step, "total_steps": plan.total_steps})
    return tally


def _end_epoch(run: _Run, tally: EpochTally, progress: Progress) -> None:
    """After the epoch `tally` counted: account for it, evaluate, record it, checkpoint
    (before the metrics line) and report."""
    accounting, plan = progress.accounting, run.plan
    if run.trainer.cuda:
        torch.cuda.synchronize()  # honest timing: wait for the queued kernels
    accounting.time_train_s += time.perf_counter() - tally.started
    accounting.steps += tally.steps
    accounting.samples_backprop += tally.backprop
    accounting.samples_forwarded_train += tally.backprop
    accounting.samples_forwarded_scoring = run.trainer.scorer.forwarded

    eval_start = time.perf_counter()
    evaluation = _evaluate(run.trainer, run.config.test_batch_size)
    accounting.time_eval_s += time.perf_counter() - eval_start
    last_lr = learning_rate(run.clock.position(max(accounting.steps, 1)), plan, run.config)
    record = epoch_record(progress.epoch, accounting.steps, last_lr, tally, evaluation,
                          run.sampler.diagnostics(), accounting, run.usage)
    if not math.isfinite(record["train_loss"]):
        raise TrainingDiverged(f"training loss is {record['train_loss']} in epoch {progress.epoch + 1}; "
                               "lower lr or check the data")
    progress.history.append(record)
    progress.epoch += 1

    accounting.time_total_s += run.lap()
    save_checkpoint(run.run_dir / CHECKPOINT_NAME,
                    checkpoint_state(run.trainer, run.sampler, run.clock, run.usage, progress))
    append_metrics(run.run_dir, record)
    run.emit({"event": "epoch", "total_epochs": plan.epochs, "total_steps": plan.total_steps, **record})


def _evaluate(trainer: Trainer, batch_size: int) -> dict[str, float]:
    """Test (and validation) accuracy and loss, after every epoch."""
    data = trainer.data
    test = evaluate(trainer.model, trainer.forward, trainer.normalise, data.test_images, data.test_labels,
                    batch_size)
    scores = dict(zip(("test_acc", "test_loss"), test))
    if data.val is not None:
        val = evaluate(trainer.model, trainer.forward, trainer.normalise, *data.val, batch_size)
        scores.update(zip(("val_acc", "val_loss"), val))
    return scores


def _finish(run: _Run, progress: Progress, flops_forward: int, shortfall: str | None) -> RunSummary:
    """Write the summary and the usage counts, report the run done."""
    accounting = progress.accounting
    accounting.time_total_s += run.lap()
    if accounting.steps < run.plan.total_steps and shortfall is None:
        shortfall = run.sampler.shortfall_reason or "the sampler ran out of epochs before spending its budget"
    summary = summarise(run.config, run.plan, accounting, progress.history, flops_forward, run.trainer.device,
                        shortfall, execution=_execution(run.trainer))
    save_usage(run.usage, run.run_dir / USAGE_NAME)
    write_atomic(run.run_dir / SUMMARY_NAME, json.dumps(summary, indent=2))
    run.emit({"event": "done", "summary": summary})
    return summary


def _execution(trainer: Trainer) -> dict[str, Any]:
    """How the run executed: its resolved switches, the CPU threads torch used and the peak
    device memory torch's allocator saw (CUDA only: the scheduler packs GPUs by it; after a
    resume, the peak of the resumed part)."""
    peak = torch.cuda.max_memory_allocated(trainer.device) if trainer.cuda else None
    return {**trainer.switches.to_dict(), "threads": torch.get_num_threads(), PEAK_MEMORY_FIELD: peak}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    normalise: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
) -> tuple[float, float]:
    """Accuracy and mean loss, accumulated on the device with one host sync at the end."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    loss_sum = torch.zeros((), device=images.device)
    for start in range(0, images.shape[0], batch_size):
        logits = forward(normalise(images[start : start + batch_size])).float()
        target = labels[start : start + batch_size]
        correct += (logits.argmax(1) == target).sum()
        loss_sum += F.cross_entropy(logits, target, reduction="sum")
    model.train(was_training)
    count = images.shape[0]
    return int(correct) / count, float(loss_sum) / count
