"""Tests of engine.train.budget: steps per budget (docs/methods.md, Budget and schedule) and the learning-rate schedules."""

import pytest

from engine.config import RunConfig
from engine.errors import BadInput
from engine.train.budget import BudgetPlan, ScheduleClock, learning_rate, plan_budget

CIFAR_TRAIN = 50_000
PAPER_STEPS_PER_EPOCH = {0.2: 78, 0.3: 117, 0.5: 195, 0.7: 273, 1.0: 390}


def _config(**changes) -> RunConfig:
    config = RunConfig(**changes)
    config.validate()
    return config


def _spec_linear_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    # docs/methods.md, Budget and schedule, written out independently of the engine.
    return lr - (step - 1) * (lr - lr_min) / (total - 1)


@pytest.mark.parametrize("budget", sorted(PAPER_STEPS_PER_EPOCH))
def test_subset_mode_matches_the_paper_steps_per_epoch(budget):
    config = _config(budget=budget, epochs=200, batch_size=128, sampler="unif-sgd", budget_mode="subset")
    plan = plan_budget(config, CIFAR_TRAIN)
    steps_per_epoch = PAPER_STEPS_PER_EPOCH[budget]
    assert plan == BudgetPlan(
        num_train=CIFAR_TRAIN,
        samples_per_epoch={0.2: 10_000, 0.3: 15_000, 0.5: 25_000, 0.7: 35_000, 1.0: 50_000}[budget],
        steps_per_epoch=steps_per_epoch,
        epochs=200,
        total_steps=200 * steps_per_epoch,
        nominal_steps=200 * 390,
        lr_steps=200 * steps_per_epoch,
    )


@pytest.mark.parametrize("budget", sorted(PAPER_STEPS_PER_EPOCH))
def test_scan_mode_runs_fewer_full_epochs(budget):
    config = _config(budget=budget, epochs=200, batch_size=128, sampler="sgd", budget_mode="scan")
    plan = plan_budget(config, CIFAR_TRAIN)
    epochs = {0.2: 40, 0.3: 60, 0.5: 100, 0.7: 140, 1.0: 200}[budget]
    assert plan == BudgetPlan(
        num_train=CIFAR_TRAIN,
        samples_per_epoch=CIFAR_TRAIN,
        steps_per_epoch=390,
        epochs=epochs,
        total_steps=epochs * 390,
        nominal_steps=200 * 390,
        lr_steps=epochs * 390,
    )


@pytest.mark.parametrize("budget, epochs", [(0.26, 3), (0.24, 2), (0.01, 1)])
def test_scan_mode_rounds_the_epochs_and_runs_at_least_one(budget, epochs):
    config = _config(budget=budget, epochs=10, batch_size=100, sampler="sgd", budget_mode="scan")
    plan = plan_budget(config, 1000)
    assert (plan.epochs, plan.total_steps, plan.lr_steps) == (epochs, epochs * 10, epochs * 10)


@pytest.mark.parametrize("budget, samples", [(0.29, 29), (0.57, 57), (0.58, 58)])
def test_budget_samples_are_the_floor_of_the_decimal_budget(budget, samples):
    plan = plan_budget(_config(budget=budget, batch_size=1, epochs=1), 100)
    assert (plan.samples_per_epoch, plan.steps_per_epoch) == (samples, samples)


def test_plan_to_dict_lists_every_field():
    plan = plan_budget(_config(budget=0.5, epochs=3, batch_size=100), 1000)
    assert plan.to_dict() == {
        "num_train": 1000, "samples_per_epoch": 500, "steps_per_epoch": 5, "epochs": 3,
        "total_steps": 15, "nominal_steps": 30, "lr_steps": 15,
    }


def test_linear_lr_follows_the_spec_formula_at_every_step():
    config = _config(budget=0.5, epochs=3, batch_size=100, lr=0.1, lr_min=1e-6)
    plan = plan_budget(config, 1000)
    total = plan.total_steps
    assert total == 15 and plan.lr_steps == 15
    rates = [learning_rate(step, plan, config) for step in range(1, total + 1)]
    assert rates[0] == 0.1
    for step, rate in zip(range(1, total), rates):
        assert rate == _spec_linear_lr(step, total, 0.1, 1e-6), step
    assert rates[-1] == 1e-6
    assert all(earlier > later for earlier, later in zip(rates, rates[1:]))


@pytest.mark.parametrize("lr, lr_min, total_epochs", [(0.1, 1e-6, 3), (0.05, 1e-6, 7), (0.3, 1e-3, 2)])
def test_linear_lr_ends_exactly_at_lr_min(lr, lr_min, total_epochs):
    config = _config(budget=1.0, epochs=total_epochs, batch_size=100, lr=lr, lr_min=lr_min)
    plan = plan_budget(config, 1000)
    assert learning_rate(plan.lr_steps, plan, config) == lr_min


def test_linear_lr_with_a_single_step_uses_lr():
    config = _config(budget=1.0, epochs=1, batch_size=100, lr=0.1)
    plan = plan_budget(config, 100)
    assert plan.total_steps == 1
    assert learning_rate(1, plan, config) == 0.1


def test_step_schedule_drops_by_gamma_at_each_milestone():
    config = _config(budget=1.0, epochs=2, batch_size=100, lr=0.1, lr_schedule="step",
                     lr_milestones=(0.5, 0.75), lr_gamma=0.1)
    plan = plan_budget(config, 800)
    assert plan.total_steps == 16
    rates = [learning_rate(step, plan, config) for step in range(1, 17)]
    expected = [0.1] * 8 + [0.01] * 4 + [0.001] * 4
    assert rates == pytest.approx(expected, rel=1e-12)


def _lr_of_step(step: int, plan: BudgetPlan, config: RunConfig, clock: ScheduleClock | None = None) -> float:
    return learning_rate((clock or ScheduleClock.for_plan(plan)).position(step), plan, config)


def test_faithful_sgd_runs_full_epochs_on_the_reference_sawtooth():
    """The reference code with `SGD --budget 0.3` on CIFAR: every epoch runs all 390
    batches, and batch c of epoch e reads entry (e-1)*117 + c of a 200*117-entry linear
    table from 0.1 to 1e-6, held at 1e-6 past its end."""
    config = _config(sampler="sgd", budget=0.3, budget_mode="subset", fidelity="faithful",
                     epochs=200, batch_size=128, lr=0.1, lr_min=1e-6)
    plan = plan_budget(config, CIFAR_TRAIN)
    full, budgeted = CIFAR_TRAIN // 128, int(0.3 * CIFAR_TRAIN) // 128
    assert (full, budgeted) == (390, 117)
    table = 200 * budgeted
    # It spends the full compute: every nominal step runs.
    assert (plan.epochs, plan.steps_per_epoch, plan.total_steps) == (200, full, plan.nominal_steps)
    clock = ScheduleClock.for_plan(plan)
    first_at_lr_min = None
    for epoch in range(1, 201):
        for batch in range(1, full + 1):
            entry = (epoch - 1) * budgeted + batch
            expected = 0.1 - (entry - 1) * (0.1 - 1e-6) / (table - 1) if entry < table else 1e-6
            step = (epoch - 1) * full + batch
            actual = _lr_of_step(step, plan, config, clock)
            assert actual == pytest.approx(expected, rel=1e-12, abs=1e-18), (epoch, batch)
            if first_at_lr_min is None and entry >= table:
                first_at_lr_min = (epoch, batch)
    # 1e-6 is first reached 351 batches (0.9) into epoch 198, not near epoch 61 (0.3 * 200).
    assert first_at_lr_min == (198, 351)
    # The sawtooth: within an epoch the LR overshoots, then jumps back up at the next one.
    assert _lr_of_step(full + 1, plan, config) > _lr_of_step(full, plan, config)


def test_the_clock_is_the_identity_without_a_re_plan():
    config = _config(budget=0.5, epochs=3, batch_size=100)
    plan = plan_budget(config, 1000)
    clock = ScheduleClock.for_plan(plan)
    clock.replan(5, plan.total_steps)  # the same total: nothing changes
    assert [clock.position(step) for step in range(1, 16)] == list(range(1, 16))


def test_a_re_planned_clock_ends_its_last_step_on_the_table_end():
    config = _config(budget=1.0, epochs=3, batch_size=100, lr=0.1, lr_min=1e-6)
    plan = plan_budget(config, 1000)  # 30 steps planned
    clock = ScheduleClock.for_plan(plan)
    clock.replan(10, 23)  # after 10 steps the run expects 13 more, not 20
    positions = [clock.position(step) for step in range(11, 24)]
    assert positions[0] == pytest.approx(10 + 20 / 13)
    assert all(earlier < later for earlier, later in zip([10.0] + positions, positions))
    assert positions[-1] == 30
    assert learning_rate(clock.position(23), plan, config) == 1e-6
    state = clock.state_dict()
    restored = ScheduleClock.for_plan(plan)
    restored.load_state_dict(state)
    assert [restored.position(step) for step in range(11, 24)] == positions


def test_corrected_sgd_with_a_subset_budget_is_rejected():
    with pytest.raises(BadInput, match="budget_mode=scan"):
        RunConfig.from_dict({"sampler": "sgd", "budget": 0.5, "budget_mode": "subset",
                             "fidelity": "corrected"})
    # The two legal ways to ask for it.
    RunConfig.from_dict({"sampler": "sgd", "budget": 0.5, "budget_mode": "scan"})
    RunConfig.from_dict({"sampler": "sgd", "budget": 0.5, "fidelity": "faithful"})


@pytest.mark.parametrize("sampler", ["unif-sgd", "random-subset"])
def test_a_budget_under_one_batch_raises(sampler):
    config = _config(sampler=sampler, budget=0.1, batch_size=128)
    with pytest.raises(ValueError, match="under one batch"):
        plan_budget(config, 1000)  # floor(0.1 * 1000) = 100 < 128


def test_a_batch_larger_than_the_training_set_raises():
    with pytest.raises(ValueError, match="exceeds"):
        plan_budget(_config(batch_size=128, budget_mode="scan"), 100)
