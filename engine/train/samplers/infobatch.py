"""InfoBatch (docs/methods.md, Samplers; not in the paper): prune samples whose latest
loss is below the mean, at random, and re-weight the survivors."""

from __future__ import annotations

import math
from itertools import islice
from typing import Iterator

import torch

from engine.train.augment.credit import Credit
from engine.train.samplers.base import Batch, Scorer, register_sampler
from engine.train.samplers.uniform import UniformSubsetSampler


@register_sampler("infobatch")
class InfoBatchSampler(UniformSubsetSampler):
    """InfoBatch (Qin et al. 2024) under a budget: prune below-mean-loss samples at random.

    Each epoch every sample whose latest loss is below the mean is dropped with probability
    r and, if kept, has its loss weighted 1 / (1 - r) so the expected gradient is unchanged;
    never-seen samples are always kept. The shuffled kept set feeds the epoch up to k
    samples, so the budget caps it like any other sampler; if fewer than k are kept, the
    epoch is shorter. The last epochs are plain unif-sgd epochs ("the last 12.5% of
    epochs use all data", docs/methods.md, Samplers).
    Shorter epochs would leave the LR schedule unfinished, so each epoch tells the loop how
    many steps the run now expects (the later pruned epochs taken as long as this one),
    and the schedule is re-planned to end on that step, as InfoBatch's own code re-indexes
    its schedule every epoch; the last epoch is always known exactly.
    """

    fixed_steps_per_epoch = False  # pruning can leave fewer than k samples
    shortfall_reason = ("infobatch prunes below-mean-loss samples, so its epochs hold fewer "
                        "than the planned samples whenever fewer than k survive pruning; "
                        "the run spends less than its budget by design")

    needs_scores = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # NaN until the sample's first visit: NaN < mean is False, so it is always kept.
        self.latest_loss = self.register_state(
            "latest_loss", torch.full((self.num_samples,), math.nan, device=self.device)
        )
        # round(): 0.1 * 30 is 3.0000000000000004 in binary floating point.
        self.final_epochs = math.ceil(round(self.config.infobatch_final_fraction * self.plan.epochs, 9))
        self.pruned_fraction = 0.0
        self._epoch = 0
        self._epoch_steps = self.plan.steps_per_epoch

    def expected_total_steps(self, steps_run: int) -> int:
        pruned_epochs_left = max(0, self.plan.epochs - self.final_epochs - self._epoch)
        full_epochs_left = self.plan.epochs - self._epoch - pruned_epochs_left
        return steps_run + pruned_epochs_left * self._epoch_steps + full_epochs_left * self.plan.steps_per_epoch

    def observe(self, credit: Credit) -> None:
        # A batch's indices are distinct, so the copy has no write conflicts. Losses are
        # float32 (computed from logits cast to float32); the cast keeps the store's dtype
        # whatever a future caller passes.
        self.latest_loss.index_copy_(0, credit.indices, credit.losses.to(self.latest_loss.dtype))

    def epoch_batches(self, epoch: int, scorer: Scorer) -> Iterator[Batch]:
        self.pruned_fraction = 0.0
        self._epoch, self._epoch_steps = epoch, self.plan.steps_per_epoch
        if epoch >= self.plan.epochs - self.final_epochs:
            return super().epoch_batches(epoch, scorer)
        prune = self.config.infobatch_prune
        below_mean = self.latest_loss < torch.nanmean(self.latest_loss)
        coins = torch.rand(self.num_samples, generator=self.generator, device=self.device)
        kept = (~(below_mean & (coins < prune))).nonzero().squeeze(1)  # syncs once per epoch
        self.pruned_fraction = 1.0 - kept.numel() / self.num_samples
        order = kept[self._permutation(kept.numel())][: self.plan.samples_per_epoch]
        self._epoch_steps = order.numel() // self.batch_size
        batches = islice(self._slices(order), self._epoch_steps)
        rescale = 1.0 / (1.0 - prune)
        if rescale == 1.0 or not bool(below_mean.any()):
            return batches
        sample_weights = torch.where(below_mean, rescale, 1.0)
        return (Batch(batch.indices, sample_weights[batch.indices]) for batch in batches)

    def diagnostics(self) -> dict[str, float]:
        return {"pruned_fraction": self.pruned_fraction}
