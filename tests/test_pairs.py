"""Every sampler with every augmentation, trained through the loop on digits and on a
CIFAR-shaped synthetic set. Parametrised over the registries: a new name gets its tests."""

import json
import math

import pytest
import torch

from engine.config import RunConfig
from engine.train.augment import AUGMENTATIONS
from engine.train.budget import plan_budget
from engine.train.data import DatasetSplits, load_dataset
from engine.paths import METRICS_NAME
from engine.train.loop import train
from engine.train.samplers import SAMPLERS


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(320) % 10
    images = torch.randint(0, 256, (320, 3, 32, 32), generator=generator, dtype=torch.uint8)
    images[:, 0] = (labels * 25).to(torch.uint8).view(-1, 1, 1)  # red channel encodes the class
    cifar_shaped = DatasetSplits("cifar-shaped", images[:256], labels[:256], images[256:], labels[256:],
                                 num_classes=10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), flip=True)
    return {
        "digits": (load_dataset("digits", tmp_path_factory.mktemp("data")),
                   dict(dataset="digits", model="small_cnn", batch_size=64, crop_padding=1)),
        "cifar-shaped": (cifar_shaped,
                         dict(dataset="cifar10", model="cifar_small_cnn", batch_size=32, crop_padding=4)),
    }


@pytest.mark.parametrize("dataset", ["digits", "cifar-shaped"])
@pytest.mark.parametrize("augmentation", sorted(AUGMENTATIONS))
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_sampler_and_augmentation_train_together(sampler, augmentation, dataset, datasets, tmp_path):
    splits, settings = datasets[dataset]
    config = RunConfig(sampler=sampler, augmentation=augmentation, epochs=4, budget=0.5, lr=0.05,
                       device="cpu", threads=1, **settings)
    summary = train(config, tmp_path / "run", data_root=tmp_path, data=(splits, None))
    plan = plan_budget(config, splits.train_images.shape[0])
    epochs = [json.loads(line) for line in (tmp_path / "run" / METRICS_NAME).read_text().splitlines()]
    assert epochs and all(math.isfinite(epoch["train_loss"]) and epoch["train_loss"] > 0 for epoch in epochs)
    assert all(math.isfinite(epoch["loss_weight_mean"]) for epoch in epochs)
    # the budget holds whatever the pair: never more backprops than the plan allows
    assert 0 < summary["samples_backprop"] <= plan.epochs * plan.samples_per_epoch
    assert summary["samples_forwarded"] >= summary["samples_backprop"]
    assert 0 < summary["distinct_seen"] <= splits.train_images.shape[0]
    assert 0.0 <= summary["final_test_acc"] <= 1.0
