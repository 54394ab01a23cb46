"""Batched, on-device augmentations with per-image randomness, behind a registry (SPEC §4).

An augmentation takes a uint8 batch and returns an AugmentedBatch: the images plus, per
mixing component, each image's source position and label weight, so the loss is per sample
with soft targets and samplers can credit each source sample. `standard` (random crop with
zero padding + horizontal flip) runs under every other one. All randomness comes from the
run's generator; no per-image Python loops and no host syncs. Imports no training loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from engine.config import RunConfig
from engine.errors import BadInput


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
    """Base class: subclasses set `name` and override `views`, `mix` or both.

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
        """Each image's random view, uint8 like the input: crop/flip unless overridden."""
        return self.crop_flip(images, generator)

    def mix(self, views: torch.Tensor, generator: torch.Generator) -> AugmentedBatch:
        """The batch's training images from its views: unchanged unless overridden."""
        return AugmentedBatch(views, (_positions(views),), None)

    def crop_flip(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_crop_flip(images, self.padding, self.flip, generator)


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


def _positions(images: torch.Tensor) -> torch.Tensor:
    return torch.arange(images.shape[0], device=images.device)


# ---------------------------------------------------------------------------------------
# Mixing: each class draws the batch-level randomness (lambda, sizes, permutations) and
# hands it to a function that can also be called with chosen values.


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


def _select(mask: torch.Tensor, chosen: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """torch.where(mask, chosen, other) by arithmetic, for finite values of one dtype
    (broadcasting like where): on one CPU thread torch.where is not vectorised and runs
    10-20 times slower than these multiplies."""
    mask = mask.to(chosen.dtype)
    return chosen * mask + other * (1 - mask)


def _boxes(
    centres: torch.Tensor, box_height: torch.Tensor, box_width: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """A (B, 1, H, W) bool mask per image: a box around its centre pixel (B,), numbered
    row by row, clipped to the image. Box sizes are int64 tensors broadcastable to (B,);
    a size 0 gives no box."""
    top = centres // width - box_height // 2
    left = centres % width - box_width // 2
    return _boxes_at(top, left, box_height, box_width, height, width)


def _boxes_at(
    top: torch.Tensor, left: torch.Tensor, box_height: torch.Tensor, box_width: torch.Tensor,
    height: int, width: int,
) -> torch.Tensor:
    """A (B, 1, H, W) bool mask per image: the box with top-left pixel (top, left) (B,),
    clipped to the image; like _boxes, sizes broadcast to (B,) and 0 gives no box."""
    rows = torch.arange(height, device=top.device)
    cols = torch.arange(width, device=top.device)
    # Comparing against arange clips the box for free: rows outside 0..H-1 never exist.
    in_rows = (rows >= top[:, None]) & (rows < (top + box_height)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + box_width)[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def _read_pixels(
    images: torch.Tensor, sources: torch.Tensor, extra: torch.Tensor | None = None
) -> torch.Tensor:
    """Pixel p of output image b, in every channel, is pixel sources[b, p] (int64, (B, H*W))
    of the batch flattened channel-first: i * H*W + q is pixel q of image i, and B*H*W + k
    is column k of `extra` (C, K), values no image holds. Channels first, so one gather
    with one index serves every channel (on CPU faster than take or index_select)."""
    batch, channels, height, width = images.shape
    planes = images.transpose(0, 1).reshape(channels, -1)
    if extra is not None:
        planes = torch.cat((planes, extra), dim=1)
    read = planes.gather(1, sources.reshape(1, -1).expand(channels, -1))
    return read.reshape(channels, batch, height, width).transpose(0, 1).contiguous()


def mixup(images: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> AugmentedBatch:
    """lam * x + (1 - lam) * x[partner] as float32 on the 0..255 scale; lam is a 0-d tensor."""
    mixed = torch.lerp(images.index_select(0, partner).float(), images.float(), lam)
    weight = lam.expand(images.shape[0])
    return AugmentedBatch(mixed, (_positions(images), partner), (weight, 1.0 - weight))


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
        _select(box, images.index_select(0, partner), images), (_positions(images), partner),
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
    collage = _read_pixels(images, sources)
    shares = (region_widths * region_heights).float() / plane
    return AugmentedBatch(
        collage, tuple(permutations), tuple(share.expand(batch) for share in shares)
    )


@register_augmentation("mixup")
class MixupAugmentation(Augmentation):
    """Crop/flip, then blend with a permuted partner; one lambda ~ Beta(a, a) per batch."""

    def mix(self, images: torch.Tensor, generator: torch.Generator) -> AugmentedBatch:
        lam = sample_beta(self.config.mixup_alpha, generator, images.device)
        return mixup(images, _permutation(images.shape[0], generator, images.device), lam)


@register_augmentation("cutmix")
class CutMixAugmentation(Augmentation):
    """Crop/flip, then paste a box from a permuted partner; one lambda ~ Beta(a, a) per
    batch fixes the box size, each image gets its own box centre (so its own weights)."""

    def mix(self, images: torch.Tensor, generator: torch.Generator) -> AugmentedBatch:
        lam = sample_beta(self.config.cutmix_alpha, generator, images.device)
        return cutmix(images, _permutation(images.shape[0], generator, images.device), lam, generator)


@register_augmentation("ricap")
class RicapAugmentation(Augmentation):
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


# ---------------------------------------------------------------------------------------
# RandAugment, as the paper's reference code runs it: N ops per image drawn uniformly with
# replacement from 16, each at value low + (high - low) * M / 30 from its range below,
# PIL semantics (nearest-neighbour geometry, black fill, truncating enhance blends).

RANDAUGMENT_OPS: tuple[str, ...] = (
    "auto_contrast", "equalize", "invert", "rotate", "posterize", "solarize", "solarize_add",
    "color", "contrast", "brightness", "sharpness", "shear_x", "shear_y", "cutout",
    "translate_x", "translate_y",
)
# The reference's ranges, including its quirks: Posterize keeps max(1, int(value)) bits and
# Solarize inverts levels >= value, so both are strongest at low M; the enhance factors
# have no sign, so M < 15 always fades. Pixel ranges (Cutout, Translate) are absolute
# pixels at every image size, as in the reference; `scale_pixels` instead reads them as
# pixels of a 32-px image (the paper's CIFAR) and scales them with the image side.
_RANDAUGMENT_RANGES: dict[str, tuple[float, float]] = {
    "rotate": (0.0, 30.0),  # degrees, random sign
    "posterize": (0.0, 4.0),  # bits kept
    "solarize": (0.0, 256.0),  # threshold
    "solarize_add": (0.0, 110.0),  # added to every level, then solarize at 128
    "color": (0.1, 1.9),  # enhance factor: 0 is the degenerate image, 1 the image
    "contrast": (0.1, 1.9),
    "brightness": (0.1, 1.9),
    "sharpness": (0.1, 1.9),
    "shear_x": (0.0, 0.3),  # shear factor, random sign
    "shear_y": (0.0, 0.3),
    "cutout": (0.0, 40.0),  # box side, pixels
    "translate_x": (0.0, 100.0),  # pixels, random sign
    "translate_y": (0.0, 100.0),
}
_REFERENCE_SIDE = 32  # image side the pixel ranges are read at when scaled
_CUTOUT_FILL = (125, 123, 114)  # the reference's grey box, RGB
_MAX_MAGNITUDE = 30

# The three families of ops, each applied by one batched function (see apply_randaugment_ops)
# that takes the same arguments: its images, their ops and draws, the magnitude, _OpTables.
_TONE_OPS = ("auto_contrast", "equalize", "invert", "posterize", "solarize", "solarize_add", "contrast",
             "brightness")
_GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")  # in _OpTables.affine order
_SOURCE_OPS = (*_GEOMETRIC_OPS, "cutout")
_BLEND_OPS = ("color", "sharpness")


def randaugment_value(op: str, magnitude: float) -> float:
    low, high = _RANDAUGMENT_RANGES[op]
    return low + (high - low) * magnitude / _MAX_MAGNITUDE


class _OpTables(NamedTuple):
    """Everything about the 16 ops that depends on the magnitude and image shape only,
    as tables indexed by op: table.index_select(0, ops) gives each image its own row."""

    families: torch.Tensor  # (3, 16) bool: the ops of each of _RANDAUGMENT_FAMILIES
    curves: torch.Tensor  # (16, 256) uint8: level curve, the identity where none is constant
    affine: torch.Tensor  # (16, 5) float: rotation (radians), shear x, shear y, shift x, y (px) at sign +1
    cutout_box: torch.Tensor  # (16, 4) int64: Cutout box lead above/left of its drawn pixel, height, width; 0 for other ops
    fill: torch.Tensor  # (16, C) uint8: colour of pixels with no source (Cutout grey, else black)


@lru_cache(maxsize=32)
def _op_tables(
    magnitude: float, scale_pixels: bool, channels: int, height: int, width: int, device: torch.device
) -> _OpTables:
    """Built once per setting: rebuilding per batch costs more calls than the ops themselves
    on small images, and building from Python values copies from the host."""
    ops = {op: index for index, op in enumerate(RANDAUGMENT_OPS)}
    levels = torch.arange(256)

    def solarized(values: torch.Tensor, threshold: float) -> torch.Tensor:
        return torch.where(values < threshold, values, 255 - values)

    curves = levels.repeat(len(ops), 1)
    bits = max(1, int(randaugment_value("posterize", magnitude)))
    curves[ops["invert"]] = 255 - levels
    curves[ops["posterize"]] = levels & (256 - 2 ** (8 - bits))
    curves[ops["solarize"]] = solarized(levels, randaugment_value("solarize", magnitude))
    added = (levels + randaugment_value("solarize_add", magnitude)).floor().clamp_max(255)
    curves[ops["solarize_add"]] = solarized(added, 128)
    curves[ops["brightness"]] = _blend(torch.zeros(()), levels, randaugment_value("brightness", magnitude))

    affine = torch.zeros(len(ops), 5, dtype=torch.float64)
    row_scale, col_scale = (height / _REFERENCE_SIDE, width / _REFERENCE_SIDE) if scale_pixels else (1.0, 1.0)
    scales = (torch.pi / 180, 1.0, 1.0, col_scale, row_scale)
    for column, (op, scale) in enumerate(zip(_GEOMETRIC_OPS, scales)):
        affine[ops[op], column] = randaugment_value(op, magnitude) * scale

    # The reference draws its Cutout square with PIL from corner floor(c - v/2), clamped
    # to 0, to corner + v, both corners truncated and included: int(v) + 1 pixels a side.
    # Its centre c is uniform on (1, side] (numpy's uniform(side), low and high swapped);
    # here c is the drawn pixel's index + 1, so the corner is that pixel - (ceil(v/2) - 1).
    cutout = randaugment_value("cutout", magnitude)
    row_side, col_side = cutout * row_scale, cutout * col_scale
    cutout_box = torch.zeros(len(ops), 4, dtype=torch.long)
    cutout_box[ops["cutout"]] = torch.tensor((math.ceil(row_side / 2) - 1, math.ceil(col_side / 2) - 1,
                                              int(row_side) + 1, int(col_side) + 1))
    grey = torch.tensor(_CUTOUT_FILL).reshape(1, 3, 1, 1)
    fill = torch.zeros(len(ops), channels, dtype=torch.uint8)
    fill[ops["cutout"]] = (grey if channels == 3 else _grayscale(grey)).reshape(-1)

    def members(names: tuple[str, ...]) -> torch.Tensor:
        return torch.tensor([op in names for op in RANDAUGMENT_OPS])

    families = torch.stack([members(names) for names, _ in _RANDAUGMENT_FAMILIES])
    return _OpTables(families.to(device), curves.to(torch.uint8).to(device), affine.float().to(device),
                     cutout_box.to(device), fill.to(device))


def apply_randaugment_ops(
    images: torch.Tensor, ops: torch.Tensor, magnitude: float, generator: torch.Generator,
    *, scale_pixels: bool = False,
) -> torch.Tensor:
    """One RandAugment layer: image i gets op RANDAUGMENT_OPS[ops[i]] at `magnitude` (0..30);
    `scale_pixels` scales the Cutout and Translate pixels with the image side (see
    _RANDAUGMENT_RANGES).

    The ops fall into three families, each applied in one batched call to the images that
    drew one of its ops: tone curves (a lookup table per image and channel), geometry and
    Cutout (a source pixel per output pixel), Color and Sharpness (blends). Every image
    gets its random draw whatever its op, so the generator advances the same for any ops.
    """
    tables = _op_tables(magnitude, scale_pixels, *images.shape[1:], images.device)
    height, width = images.shape[-2:]
    # One uniform draw per image in [0, 2*H*W): its parity is the sign of the signed ops,
    # the rest the pixel at the centre of a Cutout box.
    draws = torch.randint(0, 2 * height * width, ops.shape, generator=generator, device=ops.device)
    for members, (_, family) in zip(tables.families, _RANDAUGMENT_FAMILIES):
        images = _apply_where_drawn(
            members.index_select(0, ops),
            images,
            lambda pick: family(pick(images), pick(ops), pick(draws), magnitude, tables),
        )
    return images


# Devices where an op family runs on the images that drew it only (see _apply_where_drawn).
_COMPACTING_DEVICES = ("cpu",)


def _apply_where_drawn(
    drew: torch.Tensor,
    target: torch.Tensor,
    compute: Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor],
) -> torch.Tensor:
    """target (batch first) with new values where `drew`: compute(pick) returns them for
    the rows that pick(tensor) selects from each batch-first tensor it is given.

    On the CPU pick selects the drawing rows only, several times cheaper, and finding
    them costs nothing. On an accelerator that search would sync with the host (the
    count sets a shape), so pick keeps every row and torch.where keeps the drawn ones.
    """
    if target.device.type in _COMPACTING_DEVICES:
        rows = drew.nonzero().squeeze(1)
        if not rows.numel():
            return target
        # index_select copies whole rows; indexing with [rows] goes element by element.
        return target.index_copy(0, rows, compute(lambda tensor: tensor.index_select(0, rows)))
    return torch.where(drew.reshape(-1, *[1] * (target.dim() - 1)), compute(lambda tensor: tensor), target)


def randaugment(
    images: torch.Tensor, num_ops: int, magnitude: float, generator: torch.Generator,
    *, scale_pixels: bool = False,
) -> torch.Tensor:
    """`num_ops` layers, each image drawing its own op in each layer."""
    for _ in range(num_ops):
        ops = torch.randint(
            0, len(RANDAUGMENT_OPS), images.shape[:1], generator=generator, device=images.device
        )
        images = apply_randaugment_ops(images, ops, magnitude, generator, scale_pixels=scale_pixels)
    return images


@register_augmentation("randaugment")
class RandAugmentation(Augmentation):
    """RandAugment before crop/flip, as the reference code orders them."""

    def views(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        config = self.config
        augmented = randaugment(images, config.randaugment_ops, config.randaugment_magnitude, generator,
                                scale_pixels=config.randaugment_scale_pixels)
        return self.crop_flip(augmented, generator)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, ...) int32 grey of one-channel (itself) or RGB images (B, C, ...), the latter
    as PIL's convert("L") computes it (fixed-point luma)."""
    if images.shape[1] == 1:
        return images.int()
    red, green, blue = images.int().unbind(1)
    return ((red * 19595 + green * 38470 + blue * 7471 + 32768) >> 16)[:, None]


def _blend(degenerate: torch.Tensor, image: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's ImageEnhance: degenerate + factor * (image - degenerate) in float32, clipped
    to 0..255 and truncated."""
    blended = degenerate.float() + factor * (image.float() - degenerate.float())
    return blended.clamp(0, 255).trunc()


def _tone_curves(
    images: torch.Tensor, ops: torch.Tensor, draws: torch.Tensor, magnitude: float, tables: _OpTables
) -> torch.Tensor:
    """AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd, Contrast and
    Brightness map each level of each channel (PIL works per band) through a curve."""
    batch, channels = images.shape[:2]
    pixels = images.reshape(batch, channels, -1)
    curves = tables.curves.index_select(0, ops)[:, None].expand(-1, channels, -1)
    for op, image_curves in _IMAGE_CURVES.items():
        curves = _apply_where_drawn(
            ops == RANDAUGMENT_OPS.index(op), curves, lambda pick: image_curves(pick(pixels), magnitude)
        )
    return curves.gather(2, pixels.long()).reshape(images.shape)


# Curves that depend on the image: (B, C, H*W) uint8 pixels and the magnitude give (B, C, 256) uint8.


def _auto_contrast_curves(pixels: torch.Tensor, magnitude: float) -> torch.Tensor:
    """Stretch each channel's [lowest, highest] to [0, 255]. PIL computes in float64 and
    truncates; a true division, as `255.0 / tensor` multiplies by a reciprocal, which can
    land the top level on 254.99999999999997."""
    levels = torch.arange(256, device=pixels.device)
    lowest, highest = (extreme.long() for extreme in pixels.aminmax(dim=2, keepdim=True))
    span = (highest - lowest).clamp_min(1).double()
    scale = torch.full_like(span, 255.0) / span
    stretched = (levels * scale - lowest * scale).long().clamp(0, 255)
    return _select(highest > lowest, stretched, levels).to(torch.uint8)


def _equalize_curves(pixels: torch.Tensor, magnitude: float) -> torch.Tensor:
    """PIL's table from each channel's cumulative histogram, the top level's count left out."""
    batch, channels, plane = pixels.shape
    levels = torch.arange(256, device=pixels.device)
    index = pixels.long()
    counts = torch.zeros(batch, channels, 256, dtype=torch.long, device=pixels.device)
    counts.scatter_add_(2, index, torch.ones((), dtype=torch.long, device=pixels.device).expand_as(index))
    step = (plane - counts.gather(2, index.amax(dim=2, keepdim=True))) // 255
    below = counts.cumsum(2) - counts
    equalized = ((step // 2 + below) // step.clamp_min(1)).clamp_max(255)
    return _select(step > 0, equalized, levels).to(torch.uint8)


def _contrast_curves(pixels: torch.Tensor, magnitude: float) -> torch.Tensor:
    """PIL's blend toward the image's mean grey, rounded."""
    batch, channels, plane = pixels.shape
    levels = torch.arange(256, device=pixels.device)
    mean_grey = (2 * _grayscale(pixels).sum(dim=(1, 2)) + plane) // (2 * plane)
    curves = _blend(mean_grey[:, None, None], levels, randaugment_value("contrast", magnitude))
    return curves.to(torch.uint8).expand(batch, channels, 256)


_IMAGE_CURVES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "auto_contrast": _auto_contrast_curves,
    "equalize": _equalize_curves,
    "contrast": _contrast_curves,
}


def _geometry_and_cutout(
    images: torch.Tensor, ops: torch.Tensor, draws: torch.Tensor, magnitude: float, tables: _OpTables
) -> torch.Tensor:
    """Each output pixel reads one source pixel of its image. Rotate, ShearX/Y and
    TranslateX/Y are one affine map per image, sampled nearest-neighbour like PIL; rotation
    and shear act about the image centre (PIL shears about the corner: the same up to a
    shift). Pixels with no source (shifted in from outside, or in a Cutout box) read the
    colour of their image's op: black, or the Cutout grey."""
    batch, _, height, width = images.shape
    device = images.device
    signed = tables.affine.index_select(0, ops) * (draws % 2 * 2 - 1)[:, None]
    angle, shear_x, shear_y, shift_x, shift_y = signed[:, :, None, None].unbind(1)
    cos, sin = angle.cos(), angle.sin()
    # Output pixel centres, relative to the image centre, mapped to source coordinates.
    xs = (torch.arange(width, device=device) + 0.5 - width / 2)[None, None, :]
    ys = (torch.arange(height, device=device) + 0.5 - height / 2)[None, :, None]
    # int32 until the gather: int64 arithmetic is several times slower on CPU.
    cols = (cos * xs + (shear_x - sin) * ys + (shift_x + width / 2)).floor().int()
    rows = ((sin + shear_y) * xs + cos * ys + (shift_y + height / 2)).floor().int()
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    lead_rows, lead_cols, box_height, box_width = tables.cutout_box.index_select(0, ops).unbind(1)
    centres = draws // 2
    top = (centres // width - lead_rows).clamp_min(0)
    left = (centres % width - lead_cols).clamp_min(0)
    box = _boxes_at(top, left, box_height, box_width, height, width)[:, 0]
    plane = height * width
    first = torch.arange(batch, dtype=torch.int32, device=device)[:, None, None] * plane
    no_source = batch * plane + ops.int()[:, None, None]
    sources = _select(inside & ~box, first + rows * width + cols, no_source)
    return _read_pixels(images, sources.reshape(batch, plane).long(), tables.fill.T)


def _colour_and_sharpness(
    images: torch.Tensor, ops: torch.Tensor, draws: torch.Tensor, magnitude: float, tables: _OpTables
) -> torch.Tensor:
    """PIL's Color (a blend toward the grey image) or Sharpness (toward the image through
    PIL's SMOOTH filter: kernel [[1,1,1],[1,5,1],[1,1,1]] / 13, rounded, borders kept)."""
    values = images.float()
    rows = values[..., :-2, :] + values[..., 1:-1, :] + values[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    smoothed = values.clone()
    smoothed[..., 1:-1, 1:-1] = ((box + 4 * values[..., 1:-1, 1:-1]) / 13).round()
    color = (ops == RANDAUGMENT_OPS.index("color"))[:, None, None, None]
    degenerate = _select(color, _grayscale(images).float(), smoothed)
    return _blend(degenerate, values, randaugment_value("sharpness", magnitude)).to(torch.uint8)


_RANDAUGMENT_FAMILIES: tuple[tuple[tuple[str, ...], Callable[..., torch.Tensor]], ...] = (
    (_TONE_OPS, _tone_curves),
    (_SOURCE_OPS, _geometry_and_cutout),
    (_BLEND_OPS, _colour_and_sharpness),
)


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
    # (B,) ||softmax(logits) - target||_2 per image, target its (soft) label: the norm of
    # the loss gradient w.r.t. the logits, ub's score
    gradient_norm: torch.Tensor | None = None


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
    gradient = probs.clone()  # softmax minus the (soft) target, built by scatter_add
    if batch.label_weights is None:
        gradient.scatter_add_(1, labels[:, None], torch.full_like(probs[:, :1], -1.0))
    else:
        for sources, weights in zip(batch.sources, batch.label_weights):
            gradient.scatter_add_(1, labels[sources][:, None], -weights.float()[:, None])
    gradient_norm = gradient.norm(dim=1)
    if batch.label_weights is None or faithful:
        difficulty = 1.0 - probs.gather(1, labels[:, None]).squeeze(1)
        return Credit(indices, losses, indices, difficulty, torch.ones_like(difficulty), gradient_norm)
    ids, difficulty, weight = [], [], []
    for sources, weights in zip(batch.sources, batch.label_weights):
        ids.append(indices[sources])
        difficulty.append(1.0 - probs.gather(1, labels[sources][:, None]).squeeze(1))
        weight.append(weights.float())
    return Credit(indices, losses, torch.cat(ids), torch.cat(difficulty), torch.cat(weight), gradient_norm)
