"""Tests of engine.train.augment: the standard crop/flip recomputed by hand, and the loss."""

import pytest
import torch

from engine.config import RunConfig
import torch.nn.functional as F

from engine.train.augment import (
    AUGMENTATIONS,
    AugmentedBatch,
    StandardAugmentation,
    create_augmentation,
    per_sample_loss,
    random_crop_flip,
)
from engine.train.augment import crop_flip


def _distinct_images(batch: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    # Values 1..255: a zero in an output can only come from the padding.
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (batch, channels, height, width), generator=generator, dtype=torch.uint8)


def _manual_crop(image: torch.Tensor, padding: int, row: int, col: int, flipped: bool) -> torch.Tensor:
    channels, height, width = image.shape
    padded = torch.zeros(channels, height + 2 * padding, width + 2 * padding, dtype=image.dtype)
    padded[:, padding : padding + height, padding : padding + width] = image
    crop = padded[:, row : row + height, col : col + width]
    return crop.flip(-1) if flipped else crop


def _matching_choices(image, output, padding, flips):
    span = 2 * padding + 1
    return [
        (row, col, flipped)
        for row in range(span)
        for col in range(span)
        for flipped in flips
        if torch.equal(_manual_crop(image, padding, row, col, flipped), output)
    ]


def _run(images, padding, flip, seed):
    return random_crop_flip(images, padding, flip, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("padding, height, width", [(4, 8, 8), (2, 6, 9), (1, 5, 4)])
def test_every_output_is_exactly_one_manual_crop(padding, height, width):
    images = _distinct_images(64, 3, height, width)
    output = _run(images, padding, flip=True, seed=1)
    assert output.dtype == torch.uint8
    assert output.shape == images.shape
    choices = []
    for image, result in zip(images, output):
        matches = _matching_choices(image, result, padding, flips=(False, True))
        assert len(matches) == 1, matches
        row, col, flipped = matches[0]
        assert torch.equal(result, _manual_crop(image, padding, row, col, flipped))
        choices.append(matches[0])
    # Per-image randomness: offsets and flips differ within one batch.
    assert len({(row, col) for row, col, _ in choices}) > 1
    assert {flipped for _, _, flipped in choices} == {False, True}


def test_offsets_cover_every_padded_position():
    padding = 4
    images = _distinct_images(256, 1, 8, 8, seed=3)
    output = _run(images, padding, flip=True, seed=5)
    rows, cols, flips = set(), set(), []
    for image, result in zip(images, output):
        (row, col, flipped), = _matching_choices(image, result, padding, flips=(False, True))
        rows.add(row)
        cols.add(col)
        flips.append(flipped)
    assert rows == set(range(2 * padding + 1))
    assert cols == set(range(2 * padding + 1))
    assert 0.35 < sum(flips) / len(flips) < 0.65  # p = 0.5


def test_padding_is_zeros():
    padding, height, width = 2, 6, 7
    images = torch.full((128, 2, height, width), 200, dtype=torch.uint8)
    output = _run(images, padding, flip=False, seed=0)
    assert set(output.unique().tolist()) <= {0, 200}
    for result in output:
        zero_rows = (result[0] == 0).all(dim=1)
        zero_cols = (result[0] == 0).all(dim=0)
        inside = (~zero_rows).sum() * (~zero_cols).sum()
        # Everything outside the image's rectangle is zero, everything inside is 200.
        assert int((result[0] == 200).sum()) == int(inside)
        assert height - padding <= int((~zero_rows).sum()) <= height
        assert width - padding <= int((~zero_cols).sum()) <= width
        assert torch.equal(result[0], result[1])
    assert (output == 0).any()


def test_no_flip_never_flips():
    padding = 2
    # Left half dark, right half bright, plus distinct noise: no crop equals a flipped one.
    images = _distinct_images(128, 1, 8, 8, seed=7) // 2
    images[..., 4:] += 127
    output = _run(images, padding, flip=False, seed=2)
    for image, result in zip(images, output):
        assert len(_matching_choices(image, result, padding, flips=(False,))) == 1
        assert _matching_choices(image, result, padding, flips=(True,)) == []


def test_no_padding_and_no_flip_is_the_identity():
    images = _distinct_images(16, 3, 5, 6)
    output = _run(images, padding=0, flip=False, seed=0)
    assert torch.equal(output, images)
    assert output.dtype == torch.uint8


def test_no_padding_with_flip_only_flips():
    images = _distinct_images(64, 3, 5, 6)
    output = _run(images, padding=0, flip=True, seed=0)
    flipped = [torch.equal(result, image.flip(-1)) for image, result in zip(images, output)]
    kept = [torch.equal(result, image) for image, result in zip(images, output)]
    assert all(a != b for a, b in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_same_seed_same_output_and_different_seed_different_output():
    images = _distinct_images(32, 3, 8, 8)
    first = _run(images, 4, True, seed=11)
    assert torch.equal(first, _run(images, 4, True, seed=11))
    assert not torch.equal(first, _run(images, 4, True, seed=12))


def test_standard_augmentation_wraps_the_crop_with_identity_sources():
    images = _distinct_images(8, 3, 8, 8)
    augmentation = create_augmentation("standard", RunConfig(crop_padding=2), flip=True)
    assert isinstance(augmentation, StandardAugmentation)
    batch = augmentation(images, torch.Generator().manual_seed(4))
    assert torch.equal(batch.images, _run(images, 2, True, seed=4))
    assert len(batch.sources) == 1
    assert torch.equal(batch.sources[0], torch.arange(8))
    assert batch.label_weights is None


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_every_augmentation_crops_and_flips_each_view_once(name, monkeypatch):
    """The standard crop/flip runs under every other augmentation (docs/methods.md,
    Augmentations): once per image, with the run's padding and the dataset's flip, and
    its output is the view (RandAugment's ops come before it)."""
    crops = []

    def spy(images, padding, flip, generator):
        crops.append(((images.shape, padding, flip), random_crop_flip(images, padding, flip, generator)))
        return crops[-1][1]

    monkeypatch.setattr(crop_flip, "random_crop_flip", spy)
    images = _distinct_images(8, 3, 8, 8)
    augmentation = create_augmentation(name, RunConfig(crop_padding=3), flip=True)
    views = augmentation.views(images, torch.Generator().manual_seed(2))
    ((arguments, cropped),) = crops
    assert arguments == (images.shape, 3, True)
    assert torch.equal(views, cropped)


def test_per_sample_loss_standard_is_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 7, generator=generator)
    labels = torch.randint(0, 7, (10,), generator=generator)
    batch = AugmentedBatch(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), (torch.arange(10),), None)
    losses = per_sample_loss(logits, labels, batch)
    assert losses.shape == (10,)
    assert torch.equal(losses, F.cross_entropy(logits, labels, reduction="none"))


def test_per_sample_loss_of_a_mixed_batch_weights_each_source_label():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=generator)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    partner = torch.tensor([3, 2, 5, 4, 1, 0])
    lam = torch.full((6,), 0.3)
    batch = AugmentedBatch(torch.zeros(6, 1, 2, 2, dtype=torch.uint8),
                           (torch.arange(6), partner), (lam, 1 - lam))
    expected = (0.3 * F.cross_entropy(logits, labels, reduction="none")
                + 0.7 * F.cross_entropy(logits, labels[partner], reduction="none"))
    assert torch.allclose(per_sample_loss(logits, labels, batch), expected, rtol=1e-6, atol=1e-6)
