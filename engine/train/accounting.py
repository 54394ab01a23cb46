"""What a run has cost and how it went (docs/methods.md, Compute accounting): the running
totals, one epoch's tally, per-sample usage, the epoch record and the run's summary."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from engine.config import RunConfig
from engine.events import EpochRecord, RunSummary
from engine.train.budget import BudgetPlan
from engine.train.samplers import Batch


@dataclass
class Accounting:
    """What the run has cost so far; saved in checkpoints."""

    steps: int = 0
    samples_backprop: int = 0
    samples_forwarded_train: int = 0  # forwards of the training step itself
    samples_forwarded_scoring: int = 0  # extra no-grad forwards a sampler asked for
    time_train_s: float = 0.0
    time_eval_s: float = 0.0
    time_total_s: float = 0.0

    def samples_forwarded(self) -> int:
        return self.samples_forwarded_train + self.samples_forwarded_scoring


class EpochTally:
    """One epoch's training numbers as its steps go, summed on the device (no host sync)."""

    def __init__(self, device: torch.device) -> None:
        self.started = time.perf_counter()
        self.steps = 0
        self.backprop = 0  # samples backpropagated
        self.loss_sum = torch.zeros((), device=device)
        self.weight_sums = torch.zeros(2, device=device)  # sum and sum of squares of loss weights
        self.unweighted = 0  # samples of batches without weights (weight 1)

    def add(self, batch: Batch, losses: torch.Tensor) -> None:
        size = batch.indices.shape[0]
        self.steps += 1
        self.backprop += size
        self.loss_sum += losses.detach().sum()
        if batch.weights is None:
            self.unweighted += size
        else:
            self.weight_sums += torch.stack((batch.weights.sum(), batch.weights.square().sum()))

    def train_loss(self) -> float:
        return float(self.loss_sum) / max(1, self.backprop)

    def weight_stats(self) -> tuple[float, float]:
        """Mean and standard deviation of the per-sample loss weights of the epoch."""
        if self.backprop == 0:
            return 1.0, 0.0
        total, squares = (value + self.unweighted for value in self.weight_sums.tolist())
        mean = total / self.backprop
        return mean, math.sqrt(max(0.0, squares / self.backprop - mean * mean))


class SampleUsage:
    """How often each training sample has been backpropagated so far, on the device."""

    def __init__(self, num_samples: int, batch_size: int, device: torch.device) -> None:
        self.counts = torch.zeros(num_samples, dtype=torch.long, device=device)
        self._ones = torch.ones(batch_size, dtype=torch.long, device=device)

    def add(self, indices: torch.Tensor) -> None:
        self.counts.index_add_(0, indices, self._ones[: indices.shape[0]])

    def distinct_seen(self) -> int:
        return int((self.counts > 0).sum())

    def entropy(self) -> float:
        return usage_entropy(self.counts)


def usage_entropy(usage: torch.Tensor) -> float:
    """H(c) = -sum c_i/C ln(c_i/C) over samples with c_i > 0 (ln N when usage is uniform)."""
    total = usage.sum()
    if total == 0:
        return 0.0
    share = usage[usage > 0].double() / total
    return float(-(share * share.log()).sum())


def epoch_record(
    epoch: int, step: int, lr: float, tally: EpochTally, evaluation: dict[str, float],
    diagnostics: dict[str, float], accounting: Accounting, usage: SampleUsage,
) -> EpochRecord:
    """metrics.jsonl's line for 0-based `epoch`, its evaluation done and timed already."""
    weight_mean, weight_std = tally.weight_stats()
    epoch_time = time.perf_counter() - tally.started
    return {
        "epoch": epoch + 1,
        "step": step,
        "lr": lr,
        "train_loss": tally.train_loss(),
        **evaluation,  # test_acc, test_loss (and val_acc, val_loss)
        "loss_weight_mean": weight_mean,
        "loss_weight_std": weight_std,
        **diagnostics,
        "samples_backprop": accounting.samples_backprop,
        "samples_forwarded": accounting.samples_forwarded(),
        "distinct_seen": usage.distinct_seen(),
        "usage_entropy": usage.entropy(),
        "time_train_s": accounting.time_train_s,
        "time_eval_s": accounting.time_eval_s,
        "images_per_s": tally.backprop / max(epoch_time, 1e-9),
    }


def summarise(
    config: RunConfig,
    plan: BudgetPlan,
    accounting: Accounting,
    history: list[EpochRecord],
    flops_forward: int,
    device: torch.device,
    shortfall: str | None = None,
    execution: dict[str, Any] | None = None,
) -> RunSummary:
    """The run's outcome and cost, every accuracy labelled by how it was chosen.

    `shortfall`: why the run took fewer than its planned steps (recorded only then).
    `execution`: how it ran (switches, threads, peak device memory), recorded as given.
    """
    # backward costs about twice the forward; scoring forwards cost one forward each
    flops_train = (3 * flops_forward * accounting.samples_backprop
                   + flops_forward * accounting.samples_forwarded_scoring)
    # The nominal full-budget unif-sgd run of this config: every nominal step backpropagates
    # a full batch and nothing else is forwarded.
    flops_nominal = 3 * flops_forward * plan.nominal_steps * config.batch_size
    last = history[-1]
    best = max(history, key=lambda record: record["test_acc"])
    summary: RunSummary = {
        "final_test_acc": last["test_acc"],  # after the last epoch: the number to report
        "final_test_loss": last["test_loss"],
        "best_test_acc": best["test_acc"],  # oracle: epoch picked on the test set itself
        "best_test_epoch": best["epoch"],
        "epochs_run": len(history),
        "steps": accounting.steps,
        "samples_backprop": accounting.samples_backprop,
        "samples_forwarded": accounting.samples_forwarded(),
        "samples_forwarded_scoring": accounting.samples_forwarded_scoring,
        "flops_forward_per_sample": flops_forward,
        "flops_train": flops_train,
        "time_train_s": accounting.time_train_s,
        "time_eval_s": accounting.time_eval_s,
        "time_overhead_s": max(0.0, accounting.time_total_s - accounting.time_train_s - accounting.time_eval_s),
        "time_total_s": accounting.time_total_s,
        "images_per_s": accounting.samples_backprop / max(accounting.time_train_s, 1e-9),
        "budget_used": accounting.steps / plan.nominal_steps,  # fraction of the nominal steps
        "budget_planned": plan.total_steps / plan.nominal_steps,
        "flops_budget_used": flops_train / flops_nominal,  # fraction of the nominal compute
        "plan": plan.to_dict(),
        "device": str(device),
        **(execution or {}),
        "fidelity": config.fidelity,
        "distinct_seen": last["distinct_seen"],
        "usage_entropy": last["usage_entropy"],  # H(c) of the per-sample usage counts
    }
    if shortfall is not None:
        summary["budget_unspent_reason"] = shortfall
    if "val_acc" in last:
        best_val = max(history, key=lambda record: record["val_acc"])
        summary["final_val_acc"] = last["val_acc"]
        summary["best_val_acc"] = best_val["val_acc"]
        summary["best_val_epoch"] = best_val["epoch"]
        summary["test_acc_at_best_val"] = best_val["test_acc"]  # model selection without the test set
    return summary
