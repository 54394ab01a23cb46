"""Batched, on-device augmentations with per-image randomness, behind a registry.

An augmentation takes a uint8 batch and its labels and returns an AugmentedBatch: the
images plus, per mixing component, each image's source position and label weight, so the
loss is per sample with soft targets and samplers can credit each source sample.
`standard` (random crop with zero padding + horizontal flip) runs under every other one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from engine.config import RunConfig
from engine.errors import BadInput


@dataclass
class AugmentedBatch:
    images: torch.Tensor  # uint8 (B, C, H, W), augmented, not yet normalised
    sources: tuple[torch.Tensor, ...]  # per component: batch position of each image's source
    # Per component (B,), summing to 1 over components. None: no mixing, each image keeps
    # its own hard label (sources is then the identity).
    label_weights: tuple[torch.Tensor, ...] | None


class Augmentation:
    """Base class: subclasses set `name` and implement `__call__`."""

    name: ClassVar[str]

    def __init__(self, config: RunConfig, *, flip: bool) -> None:
        self.config = config
        self.padding = config.crop_padding
        self.flip = flip

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> AugmentedBatch:
        raise NotImplementedError


AUGMENTATIONS: dict[str, type[Augmentation]] = {}


def register_augmentation(name: str) -> Callable[[type[Augmentation]], type[Augmentation]]:
    def decorate(cls: type[Augmentation]) -> type[Augmentation]:
        cls.name = name
        AUGMENTATIONS[name] = cls
        return cls

    return decorate


def create_augmentation(name: str, config: RunConfig, *, flip: bool) -> Augmentation:
    """`flip`: whether the dataset allows horizontal flips (not on digits or SVHN)."""
    if name not in AUGMENTATIONS:
        raise BadInput(f"unknown augmentation {name!r}; choose one of: {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[name](config, flip=flip)


def random_crop_flip(
    images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Per-image random crop from the zero-padded image, then horizontal flip with p=0.5.

    One gather does both: each output pixel (b, c, i, j) reads padded[b, c, dy_b + i,
    dx_b + j], with the column index reversed for flipped images.
    """
    if padding == 0 and not flip:
        return images
    batch, channels, height, width = images.shape
    device = images.device
    span = 2 * padding + 1
    offsets = torch.randint(0, span, (2, batch, 1), generator=generator, device=device)
    rows = offsets[0] + torch.arange(height, device=device)  # (B, H) in padded coordinates
    cols = offsets[1] + torch.arange(width, device=device)  # (B, W)
    if flip:
        flipped = torch.randint(0, 2, (batch, 1), generator=generator, device=device, dtype=torch.bool)
        cols = torch.where(flipped, cols.flip(1), cols)
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    padded_width = width + 2 * padding
    # Flatten each image's (H+2p, W+2p) plane so one gather of H*W indices reads the crop.
    flat_index = (rows[:, :, None] * padded_width + cols[:, None, :]).reshape(batch, 1, height * width)
    planes = padded.reshape(batch, channels, -1)
    cropped = planes.gather(2, flat_index.expand(batch, channels, height * width))
    return cropped.reshape(batch, channels, height, width)


@register_augmentation("standard")
class StandardAugmentation(Augmentation):
    """Random crop with zero padding and horizontal flip (where the dataset allows it)."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> AugmentedBatch:
        identity = _positions(images)
        return AugmentedBatch(
            random_crop_flip(images, self.padding, self.flip, generator), (identity,), None
        )


def _positions(images: torch.Tensor) -> torch.Tensor:
    return torch.arange(images.shape[0], device=images.device)


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, batch: AugmentedBatch) -> torch.Tensor:
    """Cross-entropy of each image against its (possibly mixed) soft target, shape (B,).

    For mixed images this is sum_k w_k * CE(logits, y_source_k), which equals CE against
    the soft target sum_k w_k * onehot(y_source_k).
    """
    if batch.label_weights is None:
        return F.cross_entropy(logits, labels, reduction="none")
    log_probs = F.log_softmax(logits.float(), dim=1)
    loss = torch.zeros(logits.shape[0], device=logits.device)
    for sources, weights in zip(batch.sources, batch.label_weights):
        loss = loss - weights * log_probs.gather(1, labels[sources][:, None]).squeeze(1)
    return loss


class Credit(NamedTuple):
    """What a training step tells a sampler about the samples it used (SPEC §3, §4)."""

    indices: torch.Tensor  # (B,) training ids of the batch, in batch order
    losses: torch.Tensor  # (B,) per-sample training loss of each (possibly mixed) image
    ids: torch.Tensor  # (M,) training ids credited with a difficulty
    difficulty: torch.Tensor  # (M,) 1 - softmax(logits)[label] for the credited sample's label
    weight: torch.Tensor  # (M,) the credited sample's share of the image (1 without mixing)


def score_credit(
    indices: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    batch: AugmentedBatch,
    losses: torch.Tensor,
    *,
    faithful: bool,
) -> Credit:
    """Credit each source sample with its own label's difficulty, weighted by its share
    (corrected), or the whole mixed image to the un-permuted sample only, as the
    reference code does even under RICAP where that sample may not be in the collage
    (faithful). Without mixing both are the same."""
    probs = torch.softmax(logits.detach().float(), dim=1)
    losses = losses.detach()
    if batch.label_weights is None or faithful:
        difficulty = 1.0 - probs.gather(1, labels[:, None]).squeeze(1)
        return Credit(indices, losses, indices, difficulty, torch.ones_like(difficulty))
    ids, difficulty, weight = [], [], []
    for sources, weights in zip(batch.sources, batch.label_weights):
        ids.append(indices[sources])
        difficulty.append(1.0 - probs.gather(1, labels[sources][:, None]).squeeze(1))
        weight.append(weights.float())
    return Credit(indices, losses, torch.cat(ids), torch.cat(difficulty), torch.cat(weight))
