"""What every augmentation shares: the batch it returns, the base class and the registry.

An augmentation takes a uint8 batch and returns an AugmentedBatch: the images plus, per
mixing component, each image's source position and label weight, so the loss is per sample
with soft targets and samplers can credit each source sample. All randomness comes from
the run's generator; no per-image Python loops and no host syncs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from engine.config import RunConfig
from engine.train.registry import Registry


@dataclass
class AugmentedBatch:
    # (B, C, H, W) on the 0..255 scale, not yet normalised: uint8, or float32 where images
    # were blended (mixup), since a blend of two pixels is rarely a whole grey level.
    images: torch.Tensor
    sources: tuple[torch.Tensor, ...]  # per component: batch position of each image's source
    # Per component (B,), summing to 1 over components. None: no mixing, each image keeps
    # its own hard label (sources is then the identity).
    label_weights: tuple[torch.Tensor, ...] | None


class Augmentation:
    """Base class: subclasses register a name and implement `views`, and mixing ones `mix`.

    Two stages: `views` draws each image's own random view (per-image ops, then crop/flip)
    and `mix` combines the views of a batch (mixup, cutmix, ricap). Samplers that score
    candidates before choosing train on the views they scored, mixed afterwards.
    """

    name: ClassVar[str]

    def __init__(self, config: RunConfig, *, flip: bool) -> None:
        self.config = config
        self.padding = config.crop_padding
        self.flip = flip

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> AugmentedBatch:
        return self.mix(self.views(images, generator), generator)

    def views(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Each image's random view, uint8 like the input."""
        raise NotImplementedError

    def mix(self, views: torch.Tensor, generator: torch.Generator) -> AugmentedBatch:
        """The batch's training images from its views: unchanged unless overridden."""
        return AugmentedBatch(views, (positions(views),), None)


def positions(images: torch.Tensor) -> torch.Tensor:
    """Each image's own batch position: the sources of an unmixed component."""
    return torch.arange(images.shape[0], device=images.device)


AUGMENTATIONS: Registry[type[Augmentation]] = Registry("augmentation")
register_augmentation = AUGMENTATIONS.register


def create_augmentation(name: str, config: RunConfig, *, flip: bool) -> Augmentation:
    """`flip`: whether the dataset allows horizontal flips (not on digits or SVHN)."""
    return AUGMENTATIONS.lookup(name)(config, flip=flip)
