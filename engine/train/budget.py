"""Budget arithmetic and learning-rate schedules (SPEC §2), in plain Python.

A budget b turns the nominal schedule (epochs x full data) into a number of optimiser
steps; the LR schedule spans exactly those steps. No torch here, so this is cheap to
test exhaustively.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from engine.config import RunConfig


@dataclass(frozen=True)
class BudgetPlan:
    num_train: int  # N, training samples available
    samples_per_epoch: int  # k samples drawn each epoch
    steps_per_epoch: int  # floor(k / batch): the last partial batch is dropped
    epochs: int  # epochs actually run
    total_steps: int  # optimiser steps of the whole run
    nominal_steps: int  # steps of the full schedule: nominal epochs x floor(N / batch)
    lr_steps: int  # steps the LR schedule spans (== total_steps unless reproducing a defect)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def plan_budget(config: RunConfig, num_train: int) -> BudgetPlan:
    """How many samples, steps and epochs a config's budget buys on N training samples."""
    batch = config.batch_size
    full_steps = num_train // batch
    if full_steps < 1:
        raise ValueError(f"batch_size {batch} exceeds the {num_train} training samples")
    nominal_steps = config.epochs * full_steps
    # floor(b*N) of the budget as typed: 0.29 * 100 is 28.999... in binary floating point.
    budget_k = math.floor(round(config.budget * num_train, 9))
    if config.budget_mode == "scan":
        # Budget-scaled epochs: full data, round(b*epochs) of them.
        epochs = max(1, math.floor(config.budget * config.epochs + 0.5))  # halves round up
        steps_per_epoch = full_steps
        plan = BudgetPlan(num_train, num_train, steps_per_epoch, epochs,
                          epochs * steps_per_epoch, nominal_steps, epochs * steps_per_epoch)
    elif config.sampler == "sgd":
        # Plain SGD sees the full set every epoch. Validation only lets b < 1 through here
        # in faithful mode, where the LR spans the budgeted steps and then stays at lr_min.
        budget_steps = config.epochs * (budget_k // batch)
        if budget_steps < 1:
            raise ValueError(f"budget {config.budget} of {num_train} samples is under one batch of {batch}")
        plan = BudgetPlan(num_train, num_train, full_steps, config.epochs, nominal_steps,
                          nominal_steps, budget_steps)
    else:
        steps_per_epoch = budget_k // batch
        if steps_per_epoch < 1:
            raise ValueError(
                f"budget {config.budget} of {num_train} samples is under one batch of {batch}"
            )
        total = config.epochs * steps_per_epoch
        plan = BudgetPlan(num_train, budget_k, steps_per_epoch, config.epochs, total,
                          nominal_steps, total)
    return plan


def learning_rate(step: int, plan: BudgetPlan, config: RunConfig) -> float:
    """LR of 1-based optimiser step `step` (SPEC §2).

    linear: step t of T runs at lr - (t-1)*(lr - lr_min)/(T-1), so the first step uses lr
    and step T uses exactly lr_min; past T (faithful sgd only) it stays at lr_min.
    step: lr times gamma for every milestone fraction of T already passed.
    """
    total = plan.lr_steps
    if config.lr_schedule == "step":
        passed = sum(1 for fraction in config.lr_milestones if step > fraction * total)
        return config.lr * config.lr_gamma**passed
    if step >= total:
        return config.lr_min if total > 1 else config.lr
    return config.lr - (step - 1) * (config.lr - config.lr_min) / (total - 1)
