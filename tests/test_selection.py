"""Tests of the scoring samplers sb (engine.train.samplers.selective_backprop) and ub
(engine.train.samplers.upper_bound): sb's percentile rule and budget, ub's tau switch and weights."""

import json
import math
from pathlib import Path

import pytest
import torch

from engine.config import RunConfig
from engine.train.augment import Credit
from engine.train.budget import plan_budget
from engine.train.data import load_dataset
from engine.paths import CHECKPOINT_NAME, METRICS_NAME
from engine.train.loop import train
from engine.train.samplers import SAMPLERS, Batch, Sampler, Scorer, create_sampler, sampling_probabilities
from engine.train.samplers.selective_backprop import loss_percentile, selection_probability
from engine.train.samplers.upper_bound import (
    gradient_norm_scores,
    importance_draw,
    tau_threshold,
    variance_reduction,
)

NUM_CLASSES = 10
DIGITS_TRAIN = 1437
INF = float("inf")


def _config(sampler: str, **changes) -> RunConfig:
    values = {"sampler": sampler, "budget": 0.5, "epochs": 8, "batch_size": 10, "device": "cpu", **changes}
    config = RunConfig(**values)
    config.validate()
    return config


def _make(config: RunConfig, num_samples: int = 103, seed: int = 0) -> Sampler:
    plan = plan_budget(config, num_samples)
    generator = torch.Generator().manual_seed(seed)
    return create_sampler(config.sampler, num_samples, plan, config.batch_size, generator, config)


def _fixed_logits(num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and labels per sample: varied, repeatable losses without a model."""
    logits = torch.randn(num_samples, NUM_CLASSES, generator=torch.Generator().manual_seed(1)) * 3
    return logits, torch.arange(num_samples) % NUM_CLASSES


def _random_loss_scorer(num_samples: int) -> Scorer:
    """Fixed logits per sample; each candidate's view is its id, so a batch's views show
    whose they are."""
    logits, labels = _fixed_logits(num_samples)

    def forward(indices: torch.Tensor, train_mode: bool):
        return logits[indices], labels[indices], indices[:, None].clone()

    return Scorer(forward)


def _credit(indices: torch.Tensor) -> Credit:
    """What the training forward of a batch would report, from the fixed logits."""
    logits, labels = _fixed_logits(DIGITS_TRAIN)
    losses = torch.nn.functional.cross_entropy(logits[indices], labels[indices], reduction="none")
    ones = torch.ones(indices.shape[0])
    return Credit(indices, losses, indices, ones - 0.5, ones, gradient_norm_scores(logits[indices], labels[indices]))


def _drain(sampler: Sampler, epoch: int, scorer: Scorer) -> list[Batch]:
    """An epoch's batches, each observed as the loop would after its training forward."""
    batches = []
    for batch in sampler.epoch_batches(epoch, scorer):
        batches.append(batch)
        if sampler.needs_scores:
            sampler.observe(_credit(batch.indices))
    return batches


def _digits_config(sampler: str, **changes) -> RunConfig:
    values = {"dataset": "digits", "model": "small_cnn", "epochs": 3, "batch_size": 64, "crop_padding": 1,
              "sampler": sampler, "budget": 0.5, "device": "cpu", "threads": 1, **changes}
    config = RunConfig(**values)
    config.validate()
    return config


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines()]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_dataset("digits", tmp_path_factory.mktemp("data"))


def test_both_samplers_are_registered():
    assert {"sb", "ub"} <= set(SAMPLERS)
    assert SAMPLERS["sb"].name == "sb" and SAMPLERS["ub"].name == "ub"


# --- sb


def test_percentile_is_the_share_of_recorded_losses_strictly_below():
    history = torch.tensor([1.0, 2.0, 3.0, 4.0, INF, INF])  # +inf: empty slots, not counted
    losses = torch.tensor([2.0, 4.0, 0.5, 2.5, 10.0])
    assert loss_percentile(losses, history).tolist() == [25.0, 75.0, 0.0, 50.0, 100.0]
    # Ties do not count as below (the SB library's rule): equal losses are all at 0.
    assert loss_percentile(torch.tensor([1.0]), torch.ones(4)).tolist() == [0.0]


def test_a_loss_of_zero_is_never_selected():
    history = torch.tensor([0.0, 0.0, 0.3, 1.2, INF])
    assert selection_probability(torch.tensor([0.0, 0.0]), history, 1 / 0.3 - 1).tolist() == [0.0, 0.0]


def test_selection_probability_is_the_percentile_to_the_power_beta():
    history = torch.tensor([1.0, 2.0, 3.0, 4.0, INF, INF])
    losses = torch.tensor([2.0, 4.0, 0.5, 1.0])
    assert selection_probability(losses, history, 2.0).tolist() == [0.0625, 0.5625, 0.0, 0.0]
    beta = 1 / 0.3 - 1
    expected = [0.25**beta, 0.75**beta, 0.0, 0.0]
    assert selection_probability(losses, history, beta).tolist() == pytest.approx(expected, rel=1e-6)
    assert selection_probability(losses, history, 0.0).tolist() == [1.0] * 4


def test_sb_beta_defaults_to_one_over_budget_minus_one():
    assert _make(_config("sb", budget=0.25)).beta == pytest.approx(3.0)
    assert _make(_config("sb", budget=0.25, sb_beta=1.5)).beta == 1.5


def test_sb_history_is_a_ring_of_the_most_recent_losses():
    sampler = _make(_config("sb", sb_history=4))
    sampler._remember(torch.tensor([1.0, 2.0, 3.0]))
    assert sampler.history.tolist() == [1.0, 2.0, 3.0, INF]
    sampler._remember(torch.tensor([4.0, 5.0]))
    assert sampler.history.tolist() == [5.0, 2.0, 3.0, 4.0]
    sampler._remember(torch.tensor([6.0, 7.0, 8.0, 9.0, 10.0]))  # more than fits: the last four
    assert sorted(sampler.history.tolist()) == [7.0, 8.0, 9.0, 10.0]
    assert int(sampler.history_count) == 9  # losses written: the next slot is 9 mod 4


def test_sb_first_epoch_backprops_everything_unscored_and_carries_only_scored_samples():
    sampler = _make(_config("sb"))  # 103 samples, batch 10, 8 epochs x 5 steps of budget
    scorer = _random_loss_scorer(103)
    first = list(sampler.epoch_batches(0, scorer))
    used = torch.cat([batch.indices for batch in first])
    assert len(first) == 10 and used.unique().numel() == 100
    assert scorer.forwarded == 0 and int(sampler.history_count) == 0
    assert all(batch.weights is None and batch.views is None for batch in first)
    # Unscored, the remainder is dropped like any full-data epoch's: nothing to carry.
    assert int(sampler.carry_count) == 0 and int(sampler.steps_taken) == 10

    second = list(sampler.epoch_batches(1, scorer))
    assert scorer.forwarded == 103 and int(sampler.history_count) == 103
    assert 0 < len(second) < 10
    fraction = sampler.diagnostics()["sb_selected_fraction"]
    carried = int(sampler.carry_count)
    assert fraction == (len(second) * 10 + carried) / 103 and carried < 10


def test_sb_ranks_each_chunk_with_its_own_losses_in_the_history():
    sampler = _make(_config("sb", sb_beta=3.0))  # low-ranked losses are rarely kept
    calls: list[torch.Tensor] = []
    logits, labels = _fixed_logits(103)
    scorer = Scorer(lambda indices, train_mode: (calls.append(indices), logits[indices], labels[indices])[1:])
    first_batch = next(iter(sampler.epoch_batches(1, scorer)))  # the history starts empty
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    first_chunk = calls[0]
    hardest = first_chunk[losses[first_chunk].argmax()]
    assert int(hardest) in first_batch.indices.tolist()  # percentile 100 among its own chunk: P = 1


def test_sb_stops_for_good_when_its_steps_are_spent():
    sampler = _make(_config("sb", epochs=3))  # 15 steps in all; the first epoch takes 10
    scorer = _random_loss_scorer(103)
    steps = [len(list(sampler.epoch_batches(epoch, scorer))) for epoch in range(6)]
    assert sum(steps) == sampler.plan.total_steps == 15
    assert steps[0] == 10 and steps[-1] == 0
    forwarded = scorer.forwarded
    assert list(sampler.epoch_batches(6, scorer)) == []
    assert scorer.forwarded == forwarded  # no scoring once the budget is spent
    assert int(sampler.carry_count) == 0


def test_sb_keeps_low_loss_candidates_less_often():
    sampler = _make(_config("sb", budget=0.25))  # beta 3
    scorer = _random_loss_scorer(103)
    losses = torch.nn.functional.cross_entropy(*_fixed_logits(103), reduction="none")
    hard = set(losses.argsort()[-20:].tolist())
    easy = set(losses.argsort()[:20].tolist())
    kept = {"hard": 0, "easy": 0}
    for epoch in range(1, 40):
        sampler.steps_taken.zero_()  # keep the budget from running out
        for batch in sampler.epoch_batches(epoch, scorer):
            kept["hard"] += len(hard & set(batch.indices.tolist()))
            kept["easy"] += len(easy & set(batch.indices.tolist()))
    assert kept["hard"] > 5 * kept["easy"]


def test_sb_selects_about_a_budget_share_of_stationary_losses():
    # With the history holding exactly the N fixed losses, percentiles are j/N, j = 1..N,
    # so the expected kept share is mean((j/N)^3) = (N+1)^2 / (4 N^2) at budget 1/4.
    sampler = _make(_config("sb", budget=0.25, sb_history=103))
    scorer = _random_loss_scorer(103)
    fractions = []
    for epoch in range(1, 40):
        sampler.steps_taken.zero_()  # keep the budget from running out
        list(sampler.epoch_batches(epoch, scorer))
        fractions.append(sampler.diagnostics()["sb_selected_fraction"])
    expected = 104**2 / (4 * 103**2)
    assert sum(fractions[1:]) / len(fractions[1:]) == pytest.approx(expected, abs=0.02)


def _assert_same_state(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("name", ["sb", "ub"])
def test_state_dict_round_trip_continues_identically(name):
    config = _config(name)
    scorer = _random_loss_scorer(103)
    original = _make(config, seed=0)
    for epoch in range(2):
        _drain(original, epoch, scorer)
    state = original.state_dict()
    expected = {"sb": {"history", "history_count", "carry", "carry_count", "steps_taken", "carry_views"},
                "ub": {"tau_smoothed"}}[name]
    assert set(state) == expected
    if name == "sb":
        assert int(state["history_count"]) == 103 and int(state["carry_count"]) > 0
    else:
        assert float(state["tau_smoothed"]) != 1.0

    restored = _make(config, seed=99)
    restored.load_state_dict(state)
    _assert_same_state(restored.state_dict(), state)
    restored.generator.set_state(original.generator.get_state())
    for epoch in (2, 3):
        batches = [_drain(sampler, epoch, scorer) for sampler in (original, restored)]
        assert len(batches[0]) == len(batches[1]) > 0
        for first, second in zip(*batches):
            assert torch.equal(first.indices, second.indices)
            assert (first.weights is None) == (second.weights is None)
            assert first.weights is None or torch.equal(first.weights, second.weights)
    _assert_same_state(restored.state_dict(), original.state_dict())
    # state_dict is a copy: later changes to the sampler do not leak into it.
    assert not all(torch.equal(state[key], value) for key, value in original.state_dict().items())


def test_sb_stays_within_its_budget_and_counts_its_scoring(tmp_path, digits):
    config = _digits_config("sb", budget=0.3, epochs=5)
    summary = train(config, tmp_path / "run", data_root=tmp_path, data=(digits, None))
    plan = plan_budget(config, DIGITS_TRAIN)
    # Uncapped, sb would take 22 steps in the first epoch and about 7 in each later one.
    assert plan.total_steps == 30
    assert summary["steps"] == plan.total_steps
    assert summary["samples_backprop"] == plan.total_steps * 64
    assert summary["samples_forwarded_scoring"] > 0
    assert summary["samples_forwarded"] == summary["samples_backprop"] + summary["samples_forwarded_scoring"]
    steps = [record["step"] for record in _metrics(tmp_path / "run")]
    assert steps[0] == DIGITS_TRAIN // 64  # the whole first epoch
    assert steps[-1] == plan.total_steps


class StopAtEpoch(Exception):
    pass


@pytest.mark.parametrize("stop_after", [1, 2])
def test_sb_resume_ends_identical_to_an_uninterrupted_run(tmp_path, digits, stop_after):
    config = _digits_config("sb", epochs=4)
    uninterrupted = train(config, tmp_path / "a", data_root=tmp_path, data=(digits, None))

    def stop(event: dict) -> None:
        if event["event"] == "epoch" and event["epoch"] == stop_after:
            raise StopAtEpoch

    with pytest.raises(StopAtEpoch):
        train(config, tmp_path / "b", data_root=tmp_path, on_event=stop, data=(digits, None))
    saved = torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=True)["sampler"]
    # The carry of a scored epoch, with its views, must survive the restart.
    assert int(saved["carry_count"]) == (0 if stop_after == 1 else saved["carry_views"].shape[0]) < 64
    assert stop_after == 1 or int(saved["carry_count"]) > 0
    assert int(saved["history_count"]) == (0 if stop_after == 1 else DIGITS_TRAIN)
    resumed = train(config, tmp_path / "b", data_root=tmp_path, data=(digits, None))

    for key in ("final_test_acc", "final_test_loss", "best_test_acc", "steps", "samples_backprop",
                "samples_forwarded", "samples_forwarded_scoring", "flops_train"):
        assert resumed[key] == uninterrupted[key], key
    timed = {"time_train_s", "time_eval_s", "images_per_s"}
    assert [{k: v for k, v in r.items() if k not in timed} for r in _metrics(tmp_path / "b")] == \
        [{k: v for k, v in r.items() if k not in timed} for r in _metrics(tmp_path / "a")]


@pytest.mark.parametrize("name", ["sb", "ub"])
def test_trains_on_digits_with_a_finite_loss(tmp_path, digits, name):
    config = _digits_config(name)
    summary = train(config, tmp_path / "run", data_root=tmp_path, data=(digits, None))
    plan = plan_budget(config, DIGITS_TRAIN)
    records = _metrics(tmp_path / "run")
    assert len(records) == 3
    assert all(math.isfinite(record["train_loss"]) for record in records)
    assert summary["final_test_acc"] > 0.3  # well above chance (0.1) after 33 steps
    if name == "ub":
        assert summary["steps"] == plan.total_steps
        # Only importance-sampled steps pay the 3 x batch presample forward.
        importance_steps = sum(record["ub_importance_fraction"] for record in records) * plan.steps_per_epoch
        assert summary["samples_forwarded_scoring"] == round(importance_steps) * 3 * 64
        assert {"ub_importance_fraction", "ub_tau_mean"} <= records[0].keys()
        assert all(record["ub_tau_mean"] >= 1.0 for record in records)
    else:
        assert summary["samples_forwarded_scoring"] > 0
        assert summary["steps"] <= plan.total_steps
        assert records[0]["sb_selected_fraction"] == 1.0


# --- ub


def test_gradient_norm_scores_are_the_norm_of_the_loss_gradient_wrt_the_logits():
    logits = torch.randn(6, NUM_CLASSES, generator=torch.Generator().manual_seed(2), requires_grad=True)
    labels = torch.tensor([0, 3, 9, 9, 1, 4])
    torch.nn.functional.cross_entropy(logits, labels, reduction="sum").backward()
    expected = logits.grad.norm(dim=1)
    assert torch.allclose(gradient_norm_scores(logits.detach(), labels), expected, atol=1e-6)
    confident = torch.tensor([[1000.0, 0.0, 0.0], [1000.0, 0.0, 0.0]])
    assert gradient_norm_scores(confident, torch.tensor([0, 1])).tolist() == pytest.approx([0.0, math.sqrt(2)])


def test_ub_distribution_normalises_and_falls_back_to_uniform():
    assert sampling_probabilities(torch.tensor([1.0, 3.0, 0.0]), smoothing=False).tolist() == [0.25, 0.75, 0.0]
    assert sampling_probabilities(torch.zeros(4), smoothing=False).tolist() == [0.25] * 4


def test_tau_by_hand_and_its_threshold():
    assert float(variance_reduction(torch.full((7,), 1 / 7))) == pytest.approx(1.0)
    # g = (1/2, 1/4, 1/4, 0): ||g - u||^2 = 1/8, ||g||^2 = 3/8, tau = (1 - 1/3)^(-1/2).
    assert float(variance_reduction(torch.tensor([0.5, 0.25, 0.25, 0.0]))) == pytest.approx(math.sqrt(1.5))
    # All mass on one of B candidates: the largest possible tau, sqrt(B), finite.
    one_hot = torch.zeros(384)
    one_hot[5] = 1.0
    assert float(variance_reduction(one_hot)) == pytest.approx(math.sqrt(384), rel=1e-4)
    assert tau_threshold(384, 128) == 2.0
    assert tau_threshold(40, 10) == pytest.approx(70 / 30)


def test_importance_weights_make_the_batch_mean_unbiased():
    candidates = 12
    g = torch.arange(1.0, candidates + 1) / (candidates * (candidates + 1) / 2)
    q = torch.arange(float(candidates), 0.0, -1.0)  # anti-correlated with g: a plain mean is biased
    generator = torch.Generator().manual_seed(0)
    estimates = []
    for _ in range(4000):
        positions, weights = importance_draw(g, 10, generator)
        assert weights.tolist() == pytest.approx((1 / (candidates * g[positions])).tolist())
        estimates.append(float((weights * q[positions]).mean()))
    estimates = torch.tensor(estimates, dtype=torch.float64)
    standard_error = float(estimates.std()) / math.sqrt(len(estimates))
    assert abs(float(estimates.mean()) - float(q.mean())) < 4 * standard_error
    assert float((g * q).sum()) < float(q.mean()) - 1.0  # what unweighted draws would estimate


def _two_level_logits(count: int, wrong: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `wrong` of `count` samples confidently wrong (score sqrt 2), the rest
    confidently right (score 0): g = 1/wrong on those, tau = sqrt(count / wrong)."""
    logits = torch.zeros(count, NUM_CLASSES)
    logits[:wrong, 1] = 1000.0
    logits[wrong:, 0] = 1000.0
    return logits, torch.zeros(count, dtype=torch.long)


def _two_level_scorer(wrong: int, calls: list) -> Scorer:
    def forward(indices: torch.Tensor, train_mode: bool):
        calls.append(indices)
        return _two_level_logits(indices.shape[0], wrong)

    return Scorer(forward)


def _two_level_credit(indices: torch.Tensor, wrong: int) -> Credit:
    logits, labels = _two_level_logits(indices.shape[0], wrong)
    ones = torch.ones(indices.shape[0])
    return Credit(indices, ones, indices, ones, ones, gradient_norm_scores(logits, labels))


@pytest.mark.parametrize("batch_wrong, presample_wrong, momentum, first_on", [
    # A uniform batch of 10 with 1 wrong: tau sqrt(10) > tau_th = 2, on from step 2.
    (1, 3, 0.0, 2),
    # The same with smoothing: the EMA from 1 passes 2 after 6 uniform steps; then the
    # presamples' tau sqrt(30/3) keeps it on.
    (1, 3, 0.9, 7),
    # tau sqrt(10/3) < 2: never on, and never a presample.
    (3, 3, 0.0, None),
    # On at step 2, but the presample's tau sqrt(30/8) < 2 turns it off again at step 3.
    (1, 8, 0.0, 2),
])
def test_ub_presamples_only_while_the_smoothed_tau_exceeds_the_threshold(
    batch_wrong, presample_wrong, momentum, first_on
):
    sampler = _make(_config("ub", ub_tau_momentum=momentum))  # batch 10, B 30, 5 steps per epoch
    assert sampler.presample == 30 and sampler.tau_threshold == 2.0
    calls: list[torch.Tensor] = []
    scorer = _two_level_scorer(presample_wrong, calls)
    on_steps = []
    tau_means = []
    for epoch in range(2):
        for step, batch in enumerate(sampler.epoch_batches(epoch, scorer), start=5 * epoch + 1):
            if batch.weights is None:  # uniform: a batch of distinct samples, no presample
                assert batch.indices.unique().numel() == 10
                sampler.observe(_two_level_credit(batch.indices, batch_wrong))
            else:
                on_steps.append(step)
                candidates = calls[-1]
                assert candidates.unique().numel() == 30
                assert set(batch.indices.tolist()) <= set(candidates[:presample_wrong].tolist())
                assert torch.allclose(batch.weights, torch.full((10,), presample_wrong / 30))
                sampler.observe(_two_level_credit(batch.indices, batch_wrong))  # ignored: not uniform
        tau_means.append(sampler.diagnostics()["ub_tau_mean"])
    assert scorer.forwarded == 30 * len(on_steps)  # only importance steps pay a presample
    if first_on is None:
        assert on_steps == []
        assert tau_means == pytest.approx([math.sqrt(10 / batch_wrong)] * 2, rel=1e-5)
    elif presample_wrong == 8:
        assert on_steps == [2, 4, 6, 8, 10]  # on, off, on, ... each phase resets the EMA
    else:
        assert on_steps == list(range(first_on, 11))
        if momentum == 0.0:  # every step's tau is sqrt(10), from the batch or the presample
            assert tau_means == pytest.approx([math.sqrt(10)] * 2, rel=1e-5)


# --- through the training loop: what ub's uniform phase costs, which views are trained


def test_ub_switched_off_costs_exactly_what_unif_sgd_costs(tmp_path, digits):
    # A presample of 10 batches puts tau_th at (640 + 192) / 192 = 4.3: never reached here.
    ub = train(_digits_config("ub", budget=1.0, ub_presample=10), tmp_path / "ub", data_root=tmp_path,
               data=(digits, None))
    assert all(record["ub_importance_fraction"] == 0.0 for record in _metrics(tmp_path / "ub"))
    uniform = train(_digits_config("unif-sgd", budget=1.0), tmp_path / "uniform", data_root=tmp_path,
                    data=(digits, None))
    assert ub["samples_forwarded_scoring"] == 0
    for key in ("steps", "samples_backprop", "samples_forwarded", "flops_train", "flops_budget_used"):
        assert ub[key] == uniform[key], key
    assert ub["flops_budget_used"] == 1.0


def _spy_on_model_inputs(monkeypatch) -> list[tuple[bool, torch.Tensor]]:
    """Every input the run's model is given outside evaluation, with whether it was in
    training mode (the step) or not (a scoring forward)."""
    import engine.train.loop as loop

    seen: list[tuple[bool, torch.Tensor]] = []
    evaluating = []
    build, evaluate = loop.build_model, loop.evaluate

    def record(module, inputs):
        if not evaluating:
            seen.append((module.training, inputs[0].detach().clone()))

    def build_and_spy(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_pre_hook(record)
        return model

    def evaluate_unseen(*args, **kwargs):
        evaluating.append(True)
        try:
            return evaluate(*args, **kwargs)
        finally:
            evaluating.pop()

    monkeypatch.setattr(loop, "build_model", build_and_spy)
    monkeypatch.setattr(loop, "evaluate", evaluate_unseen)
    return seen


@pytest.mark.parametrize("name, changes", [
    ("sb", {"budget": 0.3, "epochs": 5}),
    # RandAugment is part of each image's view: scoring sees it too.
    ("sb", {"budget": 0.3, "epochs": 5, "augmentation": "randaugment"}),
    # One batch of presample: tau_th = 4/3, so importance sampling switches on within the run.
    ("ub", {"budget": 1.0, "ub_presample": 1, "epochs": 5}),
])
def test_scored_samples_train_on_the_very_views_they_were_scored_on(tmp_path, digits, monkeypatch, name, changes):
    seen = _spy_on_model_inputs(monkeypatch)
    summary = train(_digits_config(name, **changes), tmp_path / "run", data_root=tmp_path, data=(digits, None))
    assert summary["samples_forwarded_scoring"] > 0
    scored_rows: set[bytes] = set()
    chosen_after_scoring = 0
    scored_since_last_step = False
    first_step = next(position for position, (training, _) in enumerate(seen) if training)
    for training, inputs in seen[first_step:]:  # before it: the FLOP-counting forward
        rows = {row.numpy().tobytes() for row in inputs}
        if not training:  # a scoring forward
            scored_rows |= rows
            scored_since_last_step = True
            continue
        if scored_since_last_step:  # a batch chosen from scored candidates
            # A re-drawn crop (1 pixel of padding: 9 positions) would miss most of them.
            assert rows <= scored_rows
            chosen_after_scoring += 1
        scored_since_last_step = False
    assert chosen_after_scoring > 0


def test_mixing_is_applied_after_selection_to_the_scored_views(tmp_path, digits, monkeypatch):
    """Under mixup, sb's scoring sees each candidate's own view (its own label), and the
    selected samples' same views are what mixup then blends."""
    import engine.train.augment as augment
    import engine.train.samplers as samplers

    events: list[tuple[str, set[bytes]]] = []
    score, mix = samplers.Scorer.__call__, augment.MixupAugmentation.mix

    def score_and_record(self, indices, **kwargs):
        scored = score(self, indices, **kwargs)
        events.append(("scored", {row.numpy().tobytes() for row in scored.views}))
        return scored

    def record_and_mix(self, views, generator):
        events.append(("mixed", {row.numpy().tobytes() for row in views}))
        return mix(self, views, generator)

    monkeypatch.setattr(samplers.Scorer, "__call__", score_and_record)
    monkeypatch.setattr(augment.MixupAugmentation, "mix", record_and_mix)
    config = _digits_config("sb", budget=0.3, epochs=5, augmentation="mixup")
    train(config, tmp_path / "run", data_root=tmp_path, data=(digits, None))
    scored_rows: set[bytes] = set()
    mixed_after_scoring = 0
    previous = None
    for kind, rows in events:
        if kind == "scored":
            scored_rows |= rows
        elif previous == "scored":
            assert rows <= scored_rows
            mixed_after_scoring += 1
        previous = kind
    assert mixed_after_scoring > 0
