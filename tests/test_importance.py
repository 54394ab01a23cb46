"""Tests of p-sgd, c-sgd (engine.train.samplers.difficulty) and infobatch
(engine.train.samplers.infobatch); docs/methods.md, Samplers."""

import json
import math
from pathlib import Path

import pytest
import torch

import engine.train.samplers.difficulty as difficulty
from engine.config import RunConfig
from engine.train.augment import Credit
from engine.train.budget import plan_budget
from engine.train.data import load_dataset
from engine.train.samplers import sampling_probabilities
from engine.paths import METRICS_NAME
from engine.train.loop import train
from engine.train.samplers import Batch, Sampler, Scorer, create_sampler

SCORE_SAMPLERS = ("p-sgd", "c-sgd")
ALL_SAMPLERS = (*SCORE_SAMPLERS, "infobatch")
NO_SCORER = Scorer(lambda indices, train_mode: pytest.fail("these samplers never run scoring forwards"))


def _config(sampler: str, **changes) -> RunConfig:
    values = {"sampler": sampler, "budget": 0.5, "epochs": 4, "batch_size": 10, "device": "cpu", **changes}
    config = RunConfig(**values)
    config.validate()
    return config


def _make(config: RunConfig, num_samples: int, seed: int = 0) -> Sampler:
    generator = torch.Generator().manual_seed(seed)
    return create_sampler(config.sampler, num_samples, plan_budget(config, num_samples), config.batch_size,
                          generator, config)


def _credit(ids, difficulty=None, weight=None, losses=None) -> Credit:
    ids = torch.as_tensor(ids)
    ones = torch.ones(ids.shape[0])
    difficulty = ones * 0.5 if difficulty is None else torch.as_tensor(difficulty)
    weight = ones if weight is None else torch.as_tensor(weight)
    losses = ones if losses is None else torch.as_tensor(losses)
    return Credit(ids, losses, ids, difficulty, weight)


def _batches(sampler: Sampler, epoch: int) -> list[Batch]:
    return list(sampler.epoch_batches(epoch, NO_SCORER))


def _used(batches: list[Batch]) -> torch.Tensor:
    return torch.cat([batch.indices for batch in batches])


# --- p-sgd and c-sgd ------------------------------------------------------------------------

def test_probabilities_follow_the_spec_formulas():
    scores = torch.tensor([0.0, 0.1, 0.4, 0.25, 0.25])
    count, total = scores.numel(), scores.sum()
    smoothed = sampling_probabilities(scores, smoothing=True)
    torch.testing.assert_close(smoothed, 0.5 * scores / total + 0.5 / count)
    # docs/methods.md's wording: scores smoothed by their mean, i.e. add mean(s) to every
    # score, then normalise.
    shifted = scores + scores.mean()
    torch.testing.assert_close(smoothed, shifted / shifted.sum())
    torch.testing.assert_close(sampling_probabilities(scores, smoothing=False), scores / total)
    for smoothing in (True, False):
        torch.testing.assert_close(sampling_probabilities(torch.zeros(4), smoothing), torch.full((4,), 0.25))


@pytest.mark.parametrize("name", SCORE_SAMPLERS)
def test_the_draw_uses_sampling_probabilities_of_the_scores(name, monkeypatch):
    calls = []

    def spy(scores, smoothing):
        calls.append((scores.clone(), smoothing))
        return sampling_probabilities(scores, smoothing)

    monkeypatch.setattr(difficulty, "sampling_probabilities", spy)
    sampler = _make(_config(name, score_smoothing=False), 40)
    # Exactly k = 20 samples score above 0 (difficulty 0 scores 0 under both transforms).
    chosen = torch.arange(0, 40, 2)
    sampler.observe(_credit(torch.arange(40), torch.where(torch.arange(40) % 2 == 0, 0.5, 0.0)))
    used = _used(_batches(sampler, 1))
    assert len(calls) == 1
    torch.testing.assert_close(calls[0][0], sampler.scores())
    assert calls[0][1] is False
    assert sorted(used.tolist()) == chosen.tolist()
    probabilities = sampling_probabilities(sampler.scores(), False)
    assert sampler.diagnostics() == pytest.approx({
        "max_probability_vs_uniform": float(probabilities.max()) * 40,
        "min_probability_vs_uniform": 0.0,
    })


def test_zero_score_samples_fill_the_draw_at_random_once_positive_ones_run_out():
    sampler = _make(_config("p-sgd", score_smoothing=False), 40)
    positive = torch.arange(5)
    sampler.observe(_credit(torch.arange(40), torch.where(torch.arange(40) < 5, 0.5, 0.0)))
    fills = set()
    for _ in range(5):
        used = set(_used(_batches(sampler, 1)).tolist())
        assert set(positive.tolist()) <= used and len(used) == 20
        fills.add(frozenset(used))
    assert len(fills) == 5


@pytest.mark.parametrize("name", SCORE_SAMPLERS)
def test_the_draw_has_k_distinct_samples_and_favours_high_scores(name):
    sampler = _make(_config(name, budget=0.3), 100)
    k = sampler.plan.samples_per_epoch
    # p-sgd: 0.9 beats 0.1; c-sgd: 0.5 (score 0.25) beats 0.05 (score 0.0475).
    high, low = (0.9, 0.1) if name == "p-sgd" else (0.5, 0.05)
    sampler.observe(_credit(torch.arange(100), torch.where(torch.arange(100) < 50, high, low)))
    counts = torch.zeros(100)
    for _ in range(300):
        used = _used(_batches(sampler, 1))
        assert used.numel() == k and used.unique().numel() == k
        counts[used] += 1
    assert counts[:50].sum() > 1.8 * counts[50:].sum()


@pytest.mark.parametrize("average", ["mean", "last"])
def test_scores_average_all_visits_or_keep_the_last(average):
    sampler = _make(_config("p-sgd", score_average=average, batch_size=2), 6)
    sampler.observe(_credit([0, 1, 2], [0.2, 0.4, 0.6]))
    # A mixed step: sample 0 is credited twice with shares 0.25 and 0.75.
    sampler.observe(_credit([0, 0, 3], [0.8, 0.5, 1.0], weight=[0.25, 0.75, 1.0]))
    # A zero share (an empty RICAP region) is no visit, in either mode.
    sampler.observe(_credit([1], [0.9], weight=[0.0]))
    if average == "mean":
        first = (0.2 * 1 + 0.8 * 0.25 + 0.5 * 0.75) / (1 + 0.25 + 0.75)
    else:
        first = 0.8 * 0.25 + 0.5 * 0.75
    difficulty, seen = sampler.average_difficulty()
    torch.testing.assert_close(difficulty, torch.tensor([first, 0.4, 0.6, 1.0, 0.0, 0.0]))
    assert seen.tolist() == [True, True, True, True, False, False]
    # Never-seen samples 4 and 5 take the highest seen score.
    torch.testing.assert_close(sampler.scores(), torch.tensor([first, 0.4, 0.6, 1.0, 1.0, 1.0]))


@pytest.mark.parametrize("fidelity, unseen", [("faithful", 0.9 * 0.1), ("corrected", 0.25)])
def test_c_sgd_fills_unseen_samples_before_or_after_the_transform(fidelity, unseen):
    sampler = _make(_config("c-sgd", fidelity=fidelity, batch_size=2), 4)
    sampler.observe(_credit([0, 1, 2], [0.9, 0.5, 0.2]))
    torch.testing.assert_close(sampler.scores(), torch.tensor([0.09, 0.25, 0.16, unseen]))


@pytest.mark.parametrize("fidelity", ["faithful", "corrected"])
def test_p_sgd_gives_unseen_samples_the_highest_seen_score(fidelity):
    sampler = _make(_config("p-sgd", fidelity=fidelity, batch_size=2), 4)
    sampler.observe(_credit([0, 1, 2], [0.9, 0.5, 0.2]))
    torch.testing.assert_close(sampler.scores(), torch.tensor([0.9, 0.5, 0.2, 0.9]))


@pytest.mark.parametrize("name", SCORE_SAMPLERS)
@pytest.mark.parametrize("fidelity, warmup, uniform_epochs", [
    ("corrected", 0, 1), ("corrected", 2, 2), ("corrected", 3, 3),
    # The reference tests its 1-based epoch with `epoch < warmup`: W - 1 uniform epochs.
    ("faithful", 0, 1), ("faithful", 2, 1), ("faithful", 3, 2),
])
def test_warm_up_epochs_draw_exactly_like_unif_sgd(name, fidelity, warmup, uniform_epochs):
    sampler = _make(_config(name, warmup_epochs=warmup, epochs=5, fidelity=fidelity), 60)
    uniform = _make(_config("unif-sgd", epochs=5), 60)
    for epoch in range(uniform_epochs + 1):
        batches = _batches(sampler, epoch)
        same = torch.equal(_used(batches), _used(_batches(uniform, epoch)))
        assert same == (epoch < uniform_epochs), epoch
        if epoch < uniform_epochs:
            assert sampler.diagnostics() == {"max_probability_vs_uniform": 1.0, "min_probability_vs_uniform": 1.0}
        for batch in batches:
            assert batch.weights is None
            sampler.observe(_credit(batch.indices, torch.rand(batch.indices.shape[0])))


# --- infobatch ------------------------------------------------------------------------------

def _infobatch_with_losses(num_samples: int, seen: int, below: int, **changes) -> Sampler:
    """Samples [0, below) have loss 0.1, [below, seen) loss 2.0, [seen, N) were never seen."""
    sampler = _make(_config("infobatch", **changes), num_samples)
    ids = torch.arange(seen)
    losses = torch.where(ids < below, 0.1, 2.0).bfloat16()  # as the loop's losses under CUDA autocast
    sampler.observe(_credit(ids, losses=losses))
    return sampler


def test_infobatch_keeps_below_mean_samples_with_probability_one_minus_r_and_reweights_them():
    prune = 0.25
    sampler = _infobatch_with_losses(1000, seen=900, below=500, budget=1.0, batch_size=1, epochs=40,
                                     infobatch_prune=prune)
    kept_below = 0
    epochs = range(1, 21)  # the last 5 of 40 epochs are the final uniform ones
    for epoch in epochs:
        batches = _batches(sampler, epoch)
        used = _used(batches)
        weights = torch.cat([batch.weights for batch in batches])
        assert used.unique().numel() == used.numel()
        assert set(range(500, 1000)) <= set(used.tolist())  # above-mean and never-seen: always kept
        below = used < 500
        assert torch.equal(weights[below], torch.full((int(below.sum()),), 1 / (1 - prune)))
        assert torch.equal(weights[~below], torch.ones(int((~below).sum())))
        assert sampler.diagnostics() == {"pruned_fraction": pytest.approx(1 - used.numel() / 1000)}
        kept_below += int(below.sum())
    assert kept_below / (500 * len(epochs)) == pytest.approx(1 - prune, abs=0.02)


@pytest.mark.parametrize("budget", [0.5, 0.9])
def test_infobatch_never_backpropagates_more_than_the_budget(budget):
    # r = 0.9 keeps about 110 of 200 samples: more than k at b = 0.5, fewer at b = 0.9.
    sampler = _infobatch_with_losses(200, seen=200, below=100, budget=budget, epochs=6, infobatch_prune=0.9)
    plan = sampler.plan
    kept_counts = []
    for epoch in range(1, plan.epochs):
        batches = _batches(sampler, epoch)
        kept = round((1 - sampler.diagnostics()["pruned_fraction"]) * 200)
        assert all(batch.indices.shape == (10,) for batch in batches)
        assert len(batches) == min(plan.samples_per_epoch, kept) // 10 <= plan.steps_per_epoch
        assert _used(batches).numel() <= plan.samples_per_epoch
        kept_counts.append(kept)
    pruning = kept_counts[: plan.epochs - 1 - sampler.final_epochs]
    assert all((kept < plan.samples_per_epoch) == (budget == 0.9) for kept in pruning)


def test_infobatch_expects_the_later_pruned_epochs_as_long_as_this_one():
    # 8 epochs, the last one full; batch 10, k = 100 at b = 1: r = 0.5 keeps about 75.
    sampler = _infobatch_with_losses(100, seen=100, below=50, budget=1.0, epochs=8, infobatch_prune=0.5)
    plan = sampler.plan
    assert sampler.expected_total_steps(0) == plan.total_steps == 80  # nothing pruned yet
    batches = _batches(sampler, 3)
    assert len(batches) < plan.steps_per_epoch
    # Epochs 4..7 (1-based) are pruned like this one; epoch 8 is a full one.
    assert sampler.expected_total_steps(30) == 30 + 4 * len(batches) + 10
    _batches(sampler, 7)
    assert sampler.expected_total_steps(60) == 70  # the final epoch is known exactly


def test_infobatch_keeps_everything_before_any_loss_is_known():
    sampler = _make(_config("infobatch"), 100)
    uniform = _make(_config("unif-sgd"), 100)
    batches = _batches(sampler, 0)
    assert sampler.diagnostics() == {"pruned_fraction": 0.0}
    assert all(batch.weights is None for batch in batches)
    assert len(batches) == sampler.plan.steps_per_epoch
    assert _used(batches).unique().numel() == 50
    assert not torch.equal(_used(batches), _used(_batches(uniform, 0)))  # drew pruning coins first


@pytest.mark.parametrize("epochs, fraction, final", [(8, 0.125, 1), (3, 0.125, 1), (30, 0.1, 3), (10, 0.0, 0)])
def test_infobatch_final_epochs_are_unweighted_unif_sgd_epochs(epochs, fraction, final):
    sampler = _infobatch_with_losses(100, seen=100, below=50, epochs=epochs,
                                     infobatch_final_fraction=fraction, infobatch_prune=0.5)
    uniform = _make(_config("unif-sgd", epochs=epochs), 100)
    assert sampler.final_epochs == final
    for epoch in (epochs - final - 1, *range(epochs - final, epochs)):
        uniform.generator.set_state(sampler.generator.get_state())
        batches = _batches(sampler, epoch)
        is_final = epoch >= epochs - final
        assert torch.equal(_used(batches), _used(_batches(uniform, epoch))) == is_final, epoch
        assert all((batch.weights is None) == is_final for batch in batches)
        assert (sampler.diagnostics()["pruned_fraction"] == 0.0) == is_final


# --- all three ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_state_round_trip_restores_scores_and_the_next_draw(name):
    config = _config(name)
    original = _make(config, 80)
    for epoch in range(2):
        for batch in _batches(original, epoch):
            size = batch.indices.shape[0]
            original.observe(_credit(batch.indices, torch.rand(size), losses=torch.rand(size)))
    restored = _make(config, 80, seed=99)
    restored.load_state_dict(original.state_dict())
    restored.generator.set_state(original.generator.get_state())
    restored_state = restored.state_dict()
    for key, tensor in original.state_dict().items():
        # infobatch keeps NaN for samples it never saw.
        torch.testing.assert_close(restored_state[key], tensor, rtol=0, atol=0, equal_nan=True)
    if name != "infobatch":
        assert torch.equal(restored.scores(), original.scores())
    for first, second in zip(_batches(original, 2), _batches(restored, 2), strict=True):
        assert torch.equal(first.indices, second.indices)
        assert (first.weights is None) == (second.weights is None)
        assert first.weights is None or torch.equal(first.weights, second.weights)


# --- through the training loop --------------------------------------------------------------

@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_dataset("digits", tmp_path_factory.mktemp("data"))


def _run_config(sampler: str) -> RunConfig:
    config = RunConfig(dataset="digits", model="small_cnn", epochs=3, batch_size=64, crop_padding=1,
                       sampler=sampler, budget=0.5, device="cpu", threads=1)
    config.validate()
    return config


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines()]


@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_each_sampler_trains_on_digits(name, digits, tmp_path):
    config = _run_config(name)
    summary = train(config, tmp_path / "run", data_root=tmp_path, data=(digits, None))
    plan = plan_budget(config, digits.train_images.shape[0])
    metrics = _metrics(tmp_path / "run")
    assert len(metrics) == 3
    assert all(math.isfinite(record["train_loss"]) for record in metrics)
    assert summary["samples_backprop"] <= plan.epochs * plan.samples_per_epoch
    diagnostic_keys = {"pruned_fraction"} if name == "infobatch" else {
        "max_probability_vs_uniform", "min_probability_vs_uniform"}
    for record in metrics:
        assert diagnostic_keys <= record.keys()
        assert all(isinstance(record[key], float) and math.isfinite(record[key]) for key in diagnostic_keys)
    if name == "infobatch":
        assert metrics[1]["pruned_fraction"] > 0 and metrics[1]["loss_weight_mean"] > 1.0
        assert metrics[2]["pruned_fraction"] == 0 and metrics[2]["loss_weight_mean"] == 1.0
    else:
        assert metrics[0]["max_probability_vs_uniform"] == 1.0
        assert metrics[1]["max_probability_vs_uniform"] > 1.0


class StopAfterFirstEpoch(Exception):
    pass


def _stop_after_first_epoch(event: dict) -> None:
    # The loop writes the checkpoint before it emits "epoch".
    if event["event"] == "epoch":
        raise StopAfterFirstEpoch


def test_p_sgd_resume_ends_identical_to_an_uninterrupted_run(digits, tmp_path):
    config = _run_config("p-sgd")
    uninterrupted = train(config, tmp_path / "a", data_root=tmp_path, data=(digits, None))
    with pytest.raises(StopAfterFirstEpoch):
        train(config, tmp_path / "b", data_root=tmp_path, on_event=_stop_after_first_epoch,
              data=(digits, None))
    resumed = train(config, tmp_path / "b", data_root=tmp_path, data=(digits, None))
    for key in ("final_test_acc", "final_test_loss", "best_test_acc", "steps", "samples_backprop"):
        assert resumed[key] == uninterrupted[key], key
    lines = [_metrics(tmp_path / run) for run in ("a", "b")]
    assert [record["test_acc"] for record in lines[0]] == [record["test_acc"] for record in lines[1]]
    assert [record["max_probability_vs_uniform"] for record in lines[0]] == [
        record["max_probability_vs_uniform"] for record in lines[1]]


def test_infobatch_ends_its_lr_anneal_on_its_last_step_and_says_why_it_spent_less(digits, tmp_path):
    config = _run_config("infobatch").replace(budget=1.0, epochs=4)
    summary = train(config, tmp_path / "run", data_root=tmp_path, data=(digits, None))
    plan = plan_budget(config, digits.train_images.shape[0])
    metrics = _metrics(tmp_path / "run")
    assert metrics[-1]["lr"] == config.lr_min  # pruned epochs no longer cut the anneal short
    assert metrics[-1]["step"] == summary["steps"] < plan.total_steps
    assert summary["budget_used"] == summary["steps"] / plan.nominal_steps < summary["budget_planned"] == 1.0
    assert summary["flops_budget_used"] == pytest.approx(summary["budget_used"], rel=1e-12)
    assert "infobatch prunes" in summary["budget_unspent_reason"]
    # The LR falls monotonically through the re-plans.
    lrs = [record["lr"] for record in metrics]
    assert all(earlier > later for earlier, later in zip(lrs, lrs[1:]))


def test_infobatch_resume_after_a_re_plan_ends_identical(digits, tmp_path):
    config = _run_config("infobatch").replace(budget=1.0, epochs=4)
    uninterrupted = train(config, tmp_path / "a", data_root=tmp_path, data=(digits, None))

    def stop_after_second_epoch(event: dict) -> None:
        if event["event"] == "epoch" and event["epoch"] == 2:
            raise StopAfterFirstEpoch

    with pytest.raises(StopAfterFirstEpoch):
        train(config, tmp_path / "b", data_root=tmp_path, on_event=stop_after_second_epoch, data=(digits, None))
    resumed = train(config, tmp_path / "b", data_root=tmp_path, data=(digits, None))
    for key in ("final_test_acc", "final_test_loss", "steps", "samples_backprop", "flops_budget_used"):
        assert resumed[key] == uninterrupted[key], key
    assert [record["lr"] for record in _metrics(tmp_path / "a")] == [record["lr"] for record in _metrics(tmp_path / "b")]
