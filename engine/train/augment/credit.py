"""The training loss against (possibly mixed) soft targets, and what a step credits to
each source sample for the samplers that score them (docs/methods.md, "Score credit
under mixing")."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from engine.train.augment.base import AugmentedBatch


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
    """What a training step tells a sampler about the samples it used (docs/methods.md,
    Samplers; Augmentations, "Score credit under mixing")."""

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
