"""Budget arithmetic and learning-rate schedules (docs/methods.md, Budget and schedule),
in plain Python.

A budget b turns the nominal schedule (epochs x full data) into a number of optimiser
steps; the LR schedule spans exactly those steps. A ScheduleClock places each step of the
run in that schedule, re-planning when a sampler's epochs come out shorter than planned.
No torch here, so this is cheap to test exhaustively.
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
        # in faithful mode: the LR table spans the budgeted steps, walked by the budgeted
        # steps per epoch (see ScheduleClock), and all the full epochs run.
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


def learning_rate(step: float, plan: BudgetPlan, config: RunConfig) -> float:
    """LR at 1-based position `step` of the schedule's table of plan.lr_steps entries
    (a ScheduleClock position; fractional after a re-plan).

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


@dataclass
class ScheduleClock:
    """Where each 1-based optimiser step of the run falls in the LR table.

    Normally step t is table position t. Faithful sgd with b < 1 reproduces the reference
    code: each full-data epoch advances the table by only the budgeted steps per epoch, so
    batch c of epoch e reads position (e-1) * budgeted + c, overshooting within the epoch
    and jumping back at the next one. A sampler whose epochs turn out shorter than planned
    (infobatch's pruning) re-plans: the steps it now expects to run are spread evenly over
    the rest of the table, so its last step still reads the table's end (lr_min).
    """

    table_steps: int  # plan.lr_steps
    steps_per_epoch: int
    table_steps_per_epoch: int  # how far one epoch advances the table
    origin_step: int = 0  # the last step run when the clock was last re-planned
    origin_position: float = 0.0  # its table position
    end_step: int = 0  # the step expected to read the table's end

    @classmethod
    def for_plan(cls, plan: BudgetPlan) -> ScheduleClock:
        return cls(plan.lr_steps, plan.steps_per_epoch, plan.lr_steps // plan.epochs,
                   end_step=plan.lr_steps)

    def position(self, step: int) -> float:
        if self.table_steps_per_epoch != self.steps_per_epoch:
            epoch_index, within = divmod(step - 1, self.steps_per_epoch)
            return epoch_index * self.table_steps_per_epoch + within + 1
        if step >= self.end_step:
            return self.table_steps  # exactly, whatever the rounding of the line below
        # Multiplied before divided: with no re-plan yet this is T * t / T, exactly t.
        remaining = (self.table_steps - self.origin_position) * (step - self.origin_step)
        return self.origin_position + remaining / (self.end_step - self.origin_step)

    def replan(self, steps_run: int, expected_total: int) -> None:
        """The run now expects `expected_total` steps in all, `steps_run` of them done."""
        if expected_total == self.end_step or expected_total <= steps_run:
            return
        self.origin_position = self.position(steps_run) if steps_run else 0.0
        self.origin_step = steps_run
        self.end_step = expected_total

    def state_dict(self) -> dict[str, float]:
        return {"origin_step": self.origin_step, "origin_position": self.origin_position,
                "end_step": self.end_step}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.origin_step = int(state["origin_step"])
        self.origin_position = float(state["origin_position"])
        self.end_step = int(state["end_step"])
