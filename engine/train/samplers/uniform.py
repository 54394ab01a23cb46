"""The uniform samplers (docs/methods.md, Samplers): sgd, unif-sgd and random-subset.

They keep no scores; unif-sgd's draw is also the first (and warm-up) epoch of the
difficulty samplers and the final epochs of infobatch, which subclass it.
"""

from __future__ import annotations

from typing import Iterator

import torch

from engine.train.samplers.base import Batch, Sampler, Scorer, register_sampler


@register_sampler("sgd")
class FullDataSampler(Sampler):
    """The whole training set, reshuffled every epoch."""

    def epoch_batches(self, epoch: int, scorer: Scorer) -> Iterator[Batch]:
        return self._slices(self._permutation(self.num_samples))


@register_sampler("unif-sgd")
class UniformSubsetSampler(Sampler):
    """k samples drawn uniformly without replacement, re-drawn every epoch.

    The first k entries of a fresh permutation are such a draw; drop_last then uses the
    first steps_per_epoch * batch_size of them, in that (random) order.
    """

    def epoch_batches(self, epoch: int, scorer: Scorer) -> Iterator[Batch]:
        return self._slices(self._permutation(self.num_samples)[: self.plan.samples_per_epoch])


@register_sampler("random-subset")
class FixedSubsetSampler(Sampler):
    """One uniform subset of k samples drawn in the first epoch, reshuffled and reused."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.subset = self.register_state(
            "subset", torch.full((self.plan.samples_per_epoch,), -1, dtype=torch.long, device=self.device)
        )

    def epoch_batches(self, epoch: int, scorer: Scorer) -> Iterator[Batch]:
        if epoch == 0:
            self.subset.copy_(self._permutation(self.num_samples)[: self.plan.samples_per_epoch])
        return self._slices(self.subset[self._permutation(self.plan.samples_per_epoch)])
