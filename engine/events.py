"""The events a training run emits, as typed dictionaries: what engine.train.loop.train
hands its `on_event` callback, what a worker's child prints as JSON lines and what the
progress file and the CLI's progress bar are fed with.

Every event has a key "event" naming its kind: start, resume, step, epoch or done. Plain
typing only (no torch), so the CLI and the TUI can import it.
"""

from __future__ import annotations

from typing import Callable, Literal, NotRequired, TypedDict, Union


class BudgetPlanDict(TypedDict):
    """engine.train.budget.BudgetPlan.to_dict(): the run's planned schedule."""

    num_train: int
    samples_per_epoch: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    nominal_steps: int
    lr_steps: int


class EpochRecord(TypedDict):
    """One line of metrics.jsonl: the state of the run after an epoch (cumulative counts)."""

    epoch: int  # 1-based
    step: int  # optimiser steps so far
    lr: float  # of the epoch's last step
    train_loss: float
    test_acc: float
    test_loss: float
    val_acc: NotRequired[float]  # with a validation hold-out only
    val_loss: NotRequired[float]
    loss_weight_mean: float
    loss_weight_std: float
    # The sampler's own numbers (Sampler.diagnostics), by sampler:
    max_probability_vs_uniform: NotRequired[float]  # p-sgd, c-sgd
    min_probability_vs_uniform: NotRequired[float]
    pruned_fraction: NotRequired[float]  # infobatch
    sb_selected_fraction: NotRequired[float]  # sb
    ub_importance_fraction: NotRequired[float]  # ub
    ub_tau_mean: NotRequired[float]
    samples_backprop: int
    samples_forwarded: int
    distinct_seen: int
    usage_entropy: float
    time_train_s: float
    time_eval_s: float
    images_per_s: float


class RunSummary(TypedDict):
    """summary.json: the run's outcome and cost (engine.train.accounting.summarise)."""

    final_test_acc: float
    final_test_loss: float
    best_test_acc: float
    best_test_epoch: int
    epochs_run: int
    steps: int
    samples_backprop: int
    samples_forwarded: int
    samples_forwarded_scoring: int
    flops_forward_per_sample: int
    flops_train: int
    time_train_s: float
    time_eval_s: float
    time_overhead_s: float
    time_total_s: float
    images_per_s: float
    budget_used: float
    budget_planned: float
    flops_budget_used: float
    plan: BudgetPlanDict
    device: str
    # How the run executed (engine.train.loop): absent from runs recorded before these were.
    precision: NotRequired[str]  # "bf16" or "fp32", resolved from the config's "auto"
    channels_last: NotRequired[bool]
    compiled: NotRequired[bool]
    threads: NotRequired[int]  # torch.get_num_threads() during the run
    peak_device_memory_bytes: NotRequired[int | None]  # torch.cuda.max_memory_allocated; None on a CPU
    fidelity: str
    distinct_seen: int
    usage_entropy: float
    budget_unspent_reason: NotRequired[str]  # only when the run spent less than planned
    final_val_acc: NotRequired[float]  # with a validation hold-out only
    best_val_acc: NotRequired[float]
    best_val_epoch: NotRequired[int]
    test_acc_at_best_val: NotRequired[float]


class StartEvent(TypedDict):
    """Training starts (or restarts after a resume) at 0-based `epoch`."""

    event: Literal["start"]
    plan: BudgetPlanDict
    device: str
    flops_forward_per_sample: int
    epoch: int


class ResumeEvent(TypedDict):
    """A checkpoint was loaded: `epoch` epochs and `step` steps are done already."""

    event: Literal["resume"]
    epoch: int
    step: int


class StepEvent(TypedDict):
    """About 20 times an epoch: progress only (the child does not print these)."""

    event: Literal["step"]
    epoch: int  # 1-based, the epoch in progress
    step: int
    total_steps: int


class EpochEvent(EpochRecord):
    """An epoch ended and its checkpoint is written: its record plus the plan's totals."""

    event: Literal["epoch"]
    total_epochs: int
    total_steps: int


class DoneEvent(TypedDict):
    """The run finished; summary.json holds the same summary."""

    event: Literal["done"]
    summary: RunSummary


TrainingEvent = Union[StartEvent, ResumeEvent, StepEvent, EpochEvent, DoneEvent]
EventHandler = Callable[[TrainingEvent], None]
