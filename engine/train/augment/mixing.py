"""The mixing augmentations (docs/methods.md, Augmentations): mixup, CutMix and RICAP.

Each combines the crop/flip views of a batch. A class draws the batch-level randomness
(lambda, sizes, permutations) and hands it to a function that can also be called with
chosen values, which is how the tests pin the geometry down.
"""

from __future__ import annotations

import torch

from engine.train.augment.base import AugmentedBatch, positions, register_augmentation
from engine.train.augment.crop_flip import StandardAugmentation
from engine.train.augment.pixels import boxes_at, read_pixels, select


def sample_beta(
    alpha: float, generator: torch.Generator, device: torch.device, shape: tuple[int, ...] = ()
) -> torch.Tensor:
    """Independent draws of Beta(alpha, alpha), float32 on `device`, no host sync.

    Beta = X / (X + Y) with X, Y ~ Gamma(alpha): torch.distributions takes no generator,
    torch._standard_gamma does. Float64 keeps both gammas from underflowing to 0 for small
    alpha (P(X < 1e-300) is about 1e-90 at alpha = 0.3), which would make 0/0.
    """
    gammas = torch._standard_gamma(
        torch.full((2, *shape), alpha, dtype=torch.float64, device=device), generator=generator
    )
    return (gammas[0] / gammas.sum(0)).float()


def _permutation(batch: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randperm(batch, generator=generator, device=device)


def _random_below(upper: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Integers uniform in [0, upper), one per element of `upper` (int64, all >= 1).

    torch.randint takes only a Python bound; the remainder of a 62-bit draw has a bias
    below 2**-50 for the small bounds used here.
    """
    wide = torch.randint(0, 2**62, upper.shape, generator=generator, device=upper.device)
    return wide % upper


def _boxes(
    centres: torch.Tensor, box_height: torch.Tensor, box_width: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """A (B, 1, H, W) bool mask per image: a box around its centre pixel (B,), numbered
    row by row, clipped to the image. Box sizes are int64 tensors broadcastable to (B,);
    a size 0 gives no box."""
    top = centres // width - box_height // 2
    left = centres % width - box_width // 2
    return boxes_at(top, left, box_height, box_width, height, width)


def mixup(images: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> AugmentedBatch:
    """lam * x + (1 - lam) * x[partner] as float32 on the 0..255 scale; lam is a 0-d tensor."""
    mixed = torch.lerp(images.index_select(0, partner).float(), images.float(), lam)
    weight = lam.expand(images.shape[0])
    return AugmentedBatch(mixed, (positions(images), partner), (weight, 1.0 - weight))


def cutmix(
    images: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor, generator: torch.Generator
) -> AugmentedBatch:
    """Paste a box of area fraction 1 - lam from x[partner] into each image, at a random
    centre per image; the label weights are each image's area after clipping."""
    height, width = images.shape[-2:]
    side = (1.0 - lam).sqrt()
    centres = torch.randint(0, height * width, images.shape[:1], generator=generator, device=images.device)
    box = _boxes(centres, (height * side).round().long(), (width * side).round().long(), height, width)
    pasted = box.sum(dim=(1, 2, 3)) / (height * width)
    return AugmentedBatch(
        select(box, images.index_select(0, partner), images), (positions(images), partner),
        (1.0 - pasted, pasted),
    )


def ricap(
    images: torch.Tensor,
    permutations: torch.Tensor,
    width: torch.Tensor,
    height: torch.Tensor,
    generator: torch.Generator,
) -> AugmentedBatch:
    """Tile each image with four regions split at column `width` and row `height` (0-d int64
    tensors): top-left, top-right, bottom-left, bottom-right. Region k of image i is a crop
    of region k's size, at a random offset per image, from image permutations[k, i]."""
    batch, _, full_height, full_width = images.shape
    device = images.device
    plane = full_height * full_width
    zero = torch.zeros_like(height)
    corner_rows = torch.stack((zero, zero, height, height))
    corner_cols = torch.stack((zero, width, zero, width))
    region_heights = torch.stack((height, height, full_height - height, full_height - height))
    region_widths = torch.stack((width, full_width - width, width, full_width - width))
    # Per region and image, the crop's top-left corner in its source image.
    room = torch.stack((full_height - region_heights, full_width - region_widths)) + 1
    offset_rows, offset_cols = _random_below(room[:, :, None].expand(2, 4, batch), generator)
    # Output pixel p of region k of image i reads pixel start[k, i] + p of the flattened
    # batch: the offset of the crop relative to the region's corner, in the source image.
    start = (permutations * plane + (offset_rows - corner_rows[:, None]) * full_width
             + offset_cols - corner_cols[:, None])
    lower = torch.arange(full_height, device=device) >= height
    right = torch.arange(full_width, device=device) >= width
    region = 2 * lower[:, None] + right[None, :]  # (H, W): which region each pixel is in
    # A gather along contiguous rows: index_select on the transposed (B, 4) view is 5x slower.
    sources = start.T.contiguous().gather(1, region.reshape(1, -1).expand(batch, -1))
    sources += torch.arange(plane, device=device)
    collage = read_pixels(images, sources)
    shares = (region_widths * region_heights).float() / plane
    return AugmentedBatch(
        collage, tuple(permutations), tuple(share.expand(batch) for share in shares)
    )


@register_augmentation("mixup")
class MixupAugmentation(StandardAugmentation):
    """Crop/flip, then blend with a permuted partner; one lambda ~ Beta(a, a) per batch."""

    def mix(self, images: torch.Tensor, generator: torch.Generator) -> AugmentedBatch:
        lam = sample_beta(self.config.mixup_alpha, generator, images.device)
        return mixup(images, _permutation(images.shape[0], generator, images.device), lam)


@register_augmentation("cutmix")
class CutMixAugmentation(StandardAugmentation):
    """Crop/flip, then paste a box from a permuted partner; one lambda ~ Beta(a, a) per
    batch fixes the box size, each image gets its own box centre (so its own weights)."""

    def mix(self, images: torch.Tensor, generator: torch.Generator) -> AugmentedBatch:
        lam = sample_beta(self.config.cutmix_alpha, generator, images.device)
        return cutmix(images, _permutation(images.shape[0], generator, images.device), lam, generator)


@register_augmentation("ricap")
class RicapAugmentation(StandardAugmentation):
    """Crop/flip, then a four-image collage split at w = round(W * Beta(b, b)),
    h = round(H * Beta(b, b)), one split per batch, from four independent permutations."""

    def mix(self, images: torch.Tensor, generator: torch.Generator) -> AugmentedBatch:
        batch, _, height, width = images.shape
        device = images.device
        column_fraction, row_fraction = sample_beta(self.config.ricap_beta, generator, device, (2,))
        split_col = (width * column_fraction).round().long()
        split_row = (height * row_fraction).round().long()
        permutations = torch.stack([_permutation(batch, generator, device) for _ in range(4)])
        return ricap(images, permutations, split_col, split_row, generator)
