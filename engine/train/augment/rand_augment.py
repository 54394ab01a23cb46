"""RandAugment (docs/methods.md, Augmentations), as the paper's reference code runs it.

N ops per image drawn uniformly with replacement from 16, each at value
low + (high - low) * M / 30 from its range below, PIL semantics (nearest-neighbour
geometry, black fill, truncating enhance blends); applied before crop/flip.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, NamedTuple

import torch

from engine.train.augment.base import register_augmentation
from engine.train.augment.crop_flip import StandardAugmentation
from engine.train.augment.pixels import boxes_at, read_pixels, select


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
class RandAugmentation(StandardAugmentation):
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
    return select(highest > lowest, stretched, levels).to(torch.uint8)


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
    return select(step > 0, equalized, levels).to(torch.uint8)


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
    box = boxes_at(top, left, box_height, box_width, height, width)[:, 0]
    plane = height * width
    first = torch.arange(batch, dtype=torch.int32, device=device)[:, None, None] * plane
    no_source = batch * plane + ops.int()[:, None, None]
    sources = select(inside & ~box, first + rows * width + cols, no_source)
    return read_pixels(images, sources.reshape(batch, plane).long(), tables.fill.T)


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
    degenerate = select(color, _grayscale(images).float(), smoothed)
    return _blend(degenerate, values, randaugment_value("sharpness", magnitude)).to(torch.uint8)


_RANDAUGMENT_FAMILIES: tuple[tuple[tuple[str, ...], Callable[..., torch.Tensor]], ...] = (
    (_TONE_OPS, _tone_curves),
    (_SOURCE_OPS, _geometry_and_cutout),
    (_BLEND_OPS, _colour_and_sharpness),
)
