"""Tests of engine.train.samplers, parametrised over the registry so new samplers get tested."""

from pathlib import Path

import pytest
import torch

import engine.config
from engine.config import RunConfig
from engine.errors import BadInput
from engine.train import augment, samplers
from engine.train.augment import Credit
from engine.train.budget import plan_budget
from engine.train.data import load_dataset
from engine.train.loop import train
from engine.train.models import build_model, forward_flops_per_sample
from engine.train.samplers import SAMPLERS, Batch, Sampler, Scorer, create_sampler, register_sampler

NUM_CLASSES = 10


def _config(sampler: str, **changes) -> RunConfig:
    # sgd with b < 1 is only legal in scan mode (or faithful); everything else uses subsets.
    mode = "scan" if sampler == "sgd" else "subset"
    values = {"sampler": sampler, "budget": 0.5, "budget_mode": mode, "epochs": 4,
              "batch_size": 10, "device": "cpu", **changes}
    config = RunConfig(**values)
    config.validate()
    return config


def _make(name: str, num_samples: int, config: RunConfig, seed: int = 0) -> Sampler:
    plan = plan_budget(config, num_samples)
    generator = torch.Generator().manual_seed(seed)
    return create_sampler(name, num_samples, plan, config.batch_size, generator, config)


def _dummy_scorer(num_samples: int) -> Scorer:
    """Fixed random logits per sample: distinct losses, since sb never keeps a loss that
    no recorded loss lies below."""
    labels = torch.arange(num_samples) % NUM_CLASSES
    logits = torch.randn(num_samples, NUM_CLASSES, generator=torch.Generator().manual_seed(5))

    def forward(indices: torch.Tensor, train_mode: bool):
        return logits[indices], labels[indices]

    return Scorer(forward)


def _epoch(sampler: Sampler, epoch: int, scorer: Scorer) -> list[Batch]:
    batches = []
    for batch in sampler.epoch_batches(epoch, scorer):
        batches.append(batch)
        if sampler.needs_scores:
            size = batch.indices.shape[0]
            sampler.observe(Credit(batch.indices, torch.ones(size), batch.indices, torch.full((size,), 0.5),
                                   torch.ones(size), torch.rand(size, generator=torch.Generator().manual_seed(size))))
    return batches


def _used(batches: list[Batch]) -> torch.Tensor:
    return torch.cat([batch.indices for batch in batches])


def test_registries_match_the_config_names():
    assert sorted(SAMPLERS) == sorted(engine.config.SAMPLERS)
    assert sorted(augment.AUGMENTATIONS) == sorted(engine.config.AUGMENTATIONS)
    for name, cls in SAMPLERS.items():
        assert cls.name == name
    for name, cls in augment.AUGMENTATIONS.items():
        assert cls.name == name


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_epoch_has_the_planned_batches_of_distinct_in_range_indices(name):
    num_samples = 103  # not a multiple of the batch: drop_last must bite
    config = _config(name)
    sampler = _make(name, num_samples, config)
    plan = sampler.plan
    expected_steps = {"sgd": 10}.get(name, 5)  # sgd: full data; others floor(51 / 10)
    assert plan.steps_per_epoch == expected_steps
    scorer = _dummy_scorer(num_samples)
    total_steps = 0
    for epoch in range(plan.epochs):
        batches = _epoch(sampler, epoch, scorer)
        total_steps += len(batches)
        if sampler.fixed_steps_per_epoch:
            assert len(batches) == plan.steps_per_epoch
        for batch in batches:
            assert batch.indices.shape == (config.batch_size,)
            assert batch.indices.dtype == torch.int64
            assert batch.weights is None or batch.weights.shape == (config.batch_size,)
        if not batches:
            continue
        used = _used(batches)
        assert int(used.min()) >= 0 and int(used.max()) < num_samples
        if not sampler.repeats_samples:
            assert used.unique().numel() == used.numel()  # without replacement within the epoch
    assert total_steps <= plan.total_steps


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_same_generator_seed_same_batches(name):
    config = _config(name)
    first, second = _make(name, 103, config, seed=3), _make(name, 103, config, seed=3)
    scorer = _dummy_scorer(103)
    for epoch in range(2):
        assert torch.equal(_used(_epoch(first, epoch, scorer)), _used(_epoch(second, epoch, scorer)))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_state_dict_and_generator_state_continue_every_sampler_identically(name):
    """What a checkpoint keeps of a sampler (its state_dict, and the run's generator) is
    all it needs: a fresh sampler loaded with it draws the same later epochs."""
    config = _config(name)
    scorer = _dummy_scorer(103)
    original = _make(name, 103, config, seed=0)
    for epoch in range(2):
        _epoch(original, epoch, scorer)
    restored = _make(name, 103, config, seed=99)
    restored.load_state_dict(original.state_dict())
    restored.generator.set_state(original.generator.get_state())
    for epoch in (2, 3):
        batches = [_epoch(sampler, epoch, scorer) for sampler in (original, restored)]
        assert len(batches[0]) == len(batches[1])
        for first, second in zip(*batches):
            assert torch.equal(first.indices, second.indices)
            assert (first.weights is None) == (second.weights is None)
            assert first.weights is None or torch.equal(first.weights, second.weights)
        assert original.diagnostics() == restored.diagnostics()


def test_sgd_covers_the_whole_set_every_epoch_in_a_new_order():
    sampler = _make("sgd", 100, _config("sgd", budget=1.0, budget_mode="subset"))
    scorer = _dummy_scorer(100)
    orders = [_used(_epoch(sampler, epoch, scorer)) for epoch in range(2)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(100))
    assert not torch.equal(orders[0], orders[1])


def test_unif_sgd_redraws_the_subset_every_epoch():
    sampler = _make("unif-sgd", 100, _config("unif-sgd"))
    scorer = _dummy_scorer(100)
    subsets = [set(_used(_epoch(sampler, epoch, scorer)).tolist()) for epoch in range(4)]
    assert all(len(subset) == 50 for subset in subsets)
    assert len({frozenset(subset) for subset in subsets}) == 4
    assert len(set().union(*subsets)) > 50


def test_random_subset_reuses_one_subset_in_a_new_order():
    sampler = _make("random-subset", 100, _config("random-subset"))
    scorer = _dummy_scorer(100)
    orders = [_used(_epoch(sampler, epoch, scorer)) for epoch in range(4)]
    assert orders[0].numel() == 50
    assert all(set(order.tolist()) == set(orders[0].tolist()) for order in orders)
    assert all(not torch.equal(order, orders[0]) for order in orders[1:])
    assert set(sampler.state_dict()["subset"].tolist()) == set(orders[0].tolist())


def test_random_subset_survives_a_state_dict_round_trip():
    config = _config("random-subset")
    scorer = _dummy_scorer(100)
    original = _make("random-subset", 100, config, seed=0)
    first_epoch = set(_used(_epoch(original, 0, scorer)).tolist())
    state = original.state_dict()
    # A fresh sampler with a different generator must still train on the saved subset.
    restored = _make("random-subset", 100, config, seed=99)
    restored.load_state_dict(state)
    for epoch in (1, 2):
        assert set(_used(_epoch(restored, epoch, scorer)).tolist()) == first_epoch
    # state_dict is a copy: later changes to the sampler do not leak into it.
    state["subset"].fill_(-5)
    assert set(restored.state_dict()["subset"].tolist()) == first_epoch


def test_unknown_sampler_is_bad_input():
    config = _config("unif-sgd")
    with pytest.raises(BadInput, match="unknown sampler"):
        create_sampler("no-such-sampler", 100, plan_budget(config, 100), 10, torch.Generator(), config)


def test_scorer_counts_every_forwarded_sample():
    seen = []
    scorer = Scorer(lambda indices, train_mode: (seen.append(train_mode), (indices, indices))[1])
    scorer(torch.arange(7))
    scorer(torch.arange(5), train_mode=True)
    assert scorer.forwarded == 12
    assert seen == [False, True]


CANDIDATES_PER_STEP = 2  # candidates scored per backpropagated sample


@pytest.fixture
def scoring_sampler():
    """A throwaway sampler that scores twice a batch of candidates each step, then keeps
    the hardest half; removed from the registry afterwards."""
    calls = []

    @register_sampler("test-scoring")
    class ScoringSampler(Sampler):
        def epoch_batches(self, epoch, scorer):
            size = self.batch_size
            for _ in range(self.plan.steps_per_epoch):
                candidates = self._permutation(self.num_samples)[: CANDIDATES_PER_STEP * size]
                logits, labels, _ = scorer(candidates)
                calls.append((candidates, logits, labels))
                losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
                yield Batch(candidates[losses.argsort(descending=True)[:size]])

    yield calls
    samplers.SAMPLERS.unregister("test-scoring")


def test_scoring_forwards_are_counted_in_the_summary(scoring_sampler, tmp_path: Path):
    splits = load_dataset("digits", tmp_path)
    # RunConfig's own validation only knows the shipped names, so build it unvalidated.
    config = RunConfig(dataset="digits", model="small_cnn", sampler="test-scoring", epochs=1,
                       batch_size=64, crop_padding=1, device="cpu", threads=1)
    summary = train(config, tmp_path / "run", data_root=tmp_path, data=(splits, None))
    steps = 1437 // 64
    scored = steps * CANDIDATES_PER_STEP * 64
    assert len(scoring_sampler) == steps
    for candidates, logits, labels in scoring_sampler:
        assert logits.shape == (CANDIDATES_PER_STEP * 64, 10)
        assert torch.equal(labels, splits.train_labels[candidates])
    assert summary["steps"] == steps
    assert summary["samples_backprop"] == steps * 64
    assert summary["samples_forwarded_scoring"] == scored
    assert summary["samples_forwarded"] == steps * 64 + scored
    flops = forward_flops_per_sample(build_model("small_cnn", num_classes=10, in_chans=1), (1, 8, 8))
    assert summary["flops_forward_per_sample"] == flops
    assert summary["flops_train"] == 3 * flops * steps * 64 + flops * scored
