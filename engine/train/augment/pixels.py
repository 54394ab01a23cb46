"""Pixel plumbing shared by the mixing augmentations and RandAugment: masks of boxes,
reading each output pixel from a chosen source pixel, and a fast elementwise select."""

from __future__ import annotations

import torch


def select(mask: torch.Tensor, chosen: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """torch.where(mask, chosen, other) by arithmetic, for finite values of one dtype
    (broadcasting like where): on one CPU thread torch.where is not vectorised and runs
    10-20 times slower than these multiplies."""
    mask = mask.to(chosen.dtype)
    return chosen * mask + other * (1 - mask)


def boxes_at(
    top: torch.Tensor, left: torch.Tensor, box_height: torch.Tensor, box_width: torch.Tensor,
    height: int, width: int,
) -> torch.Tensor:
    """A (B, 1, H, W) bool mask per image: the box with top-left pixel (top, left) (B,),
    clipped to the image; sizes are int64 tensors broadcastable to (B,) and 0 gives no box."""
    rows = torch.arange(height, device=top.device)
    cols = torch.arange(width, device=top.device)
    # Comparing against arange clips the box for free: rows outside 0..H-1 never exist.
    in_rows = (rows >= top[:, None]) & (rows < (top + box_height)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + box_width)[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def read_pixels(
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
