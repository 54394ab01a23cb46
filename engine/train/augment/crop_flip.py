"""The standard augmentation: random crop with zero padding and horizontal flip.

It runs under every other augmentation too (docs/methods.md, Augmentations), which
therefore subclass StandardAugmentation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.train.augment.base import Augmentation, register_augmentation


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

    def views(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.crop_flip(images, generator)

    def crop_flip(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_crop_flip(images, self.padding, self.flip, generator)
