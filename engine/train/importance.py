"""Importance samplers that score samples from the training forward (SPEC §3): p-sgd, c-sgd, infobatch.

Per-sample scores live on the device and are updated in `observe` without host syncs;
each epoch's draw is made once, at the epoch's start. Registers into engine.train.samplers
(which imports this module last); must not import the training loop.
"""

from __future__ import annotations

import math
from itertools import islice
from typing import Iterator

import torch

from engine.train.augment import Credit
from engine.train.samplers import Batch, Scorer, UniformSubsetSampler, register_sampler, sampling_probabilities


def _fill_unseen(values: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Never-seen samples take the highest seen value; values are >= 0, so 0 before any visit."""
    return torch.where(seen, values, values.masked_fill(~seen, 0.0).max())


class DifficultyScoreSampler(UniformSubsetSampler):
    """Draws k samples without replacement with P from a per-sample difficulty score.

    Uniform (exactly unif-sgd's draw) in the first epoch and the warm-up epochs, since
    nothing or too little has been scored yet. Subclasses set `transform`, which turns the
    average difficulty into the sampling score. No loss re-weighting: biased on purpose.
    """

    needs_scores = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        zeros = torch.zeros(self.num_samples, device=self.device)
        # Weighted sums over the visits that count: all of them ("mean") or the latest ("last").
        self.difficulty_total = self.register_state("difficulty_total", zeros.clone())
        self.weight_total = self.register_state("weight_total", zeros.clone())
        self._probability_range = (1.0, 1.0)

    @staticmethod
    def transform(difficulty: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, credit: Credit) -> None:
        if self.config.score_average == "last":
            # A visit replaces the sample's history, but a zero-share credit (an empty RICAP
            # region) is no visit. Repeated ids in one step average by weight, as in "mean".
            keep = (credit.weight <= 0).to(self.weight_total.dtype)
            self.difficulty_total.scatter_reduce_(0, credit.ids, keep, "prod")
            self.weight_total.scatter_reduce_(0, credit.ids, keep, "prod")
        self.difficulty_total.index_add_(0, credit.ids, credit.weight * credit.difficulty)
        self.weight_total.index_add_(0, credit.ids, credit.weight)

    def average_difficulty(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted mean difficulty, 0 where never seen; seen mask)."""
        seen = self.weight_total > 0
        # Float sums can put the ratio an ulp outside [0, 1]; s * (1 - s) must stay >= 0.
        average = (self.difficulty_total / self.weight_total).clamp(0.0, 1.0)
        return torch.where(seen, average, 0.0), seen

    def scores(self) -> torch.Tensor:
        """The sampling score of every sample, never-seen ones included (SPEC §3)."""
        difficulty, seen = self.average_difficulty()
        if self.config.fidelity == "faithful":
            # The reference code fills before the transform, which de-prioritises unseen
            # samples under c-sgd (max * (1 - max) is small); for p-sgd both orders agree.
            return self.transform(_fill_unseen(difficulty, seen))
        return _fill_unseen(self.transform(difficulty), seen)

    def probabilities(self) -> torch.Tensor:
        return sampling_probabilities(self.scores(), self.config.score_smoothing)

    def uniform_epochs(self) -> int:
        """Epochs drawn uniformly: the first (nothing scored yet) and the warm-up. The
        reference code counts its 1-based epochs against the warm-up with `<`, so its
        warm-up of W gives W - 1 uniform epochs (and still at least the first)."""
        warmup = self.config.warmup_epochs
        return max(1, warmup - 1 if self.config.fidelity == "faithful" else warmup)

    def epoch_batches(self, epoch: int, scorer: Scorer) -> Iterator[Batch]:
        if epoch < self.uniform_epochs():
            self._probability_range = (1.0, 1.0)
            return super().epoch_batches(epoch, scorer)
        probabilities = self.probabilities()
        extremes = torch.stack((probabilities.max(), probabilities.min())) * self.num_samples
        self._probability_range = tuple(extremes.tolist())  # one sync per epoch
        # Without smoothing, samples scored 0 have P = 0, and once the positive ones run out
        # multinomial would take them in index order; the smallest normal float keeps them
        # last but in random order.
        floored = probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny)
        drawn = torch.multinomial(floored, self.plan.samples_per_epoch, replacement=False,
                                  generator=self.generator)
        # Successive sampling lists likely (hard) samples first; shuffling keeps the epoch
        # from becoming a hard-to-easy curriculum and makes drop_last discard at random.
        return self._slices(drawn[self._permutation(drawn.numel())])

    def diagnostics(self) -> dict[str, float]:
        most, least = self._probability_range
        return {"max_probability_vs_uniform": most, "min_probability_vs_uniform": least}


@register_sampler("p-sgd")
class DifficultySampler(DifficultyScoreSampler):
    """Score = mean difficulty 1 - softmax(logits)[y] over all visits (or the last one)."""

    @staticmethod
    def transform(difficulty: torch.Tensor) -> torch.Tensor:
        return difficulty


@register_sampler("c-sgd")
class ThresholdClosenessSampler(DifficultyScoreSampler):
    """Score = s * (1 - s) of the mean difficulty s: highest for samples near the decision
    threshold (Active Bias)."""

    @staticmethod
    def transform(difficulty: torch.Tensor) -> torch.Tensor:
        return difficulty * (1.0 - difficulty)


@register_sampler("infobatch")
class InfoBatchSampler(UniformSubsetSampler):
    """InfoBatch (Qin et al. 2024) under a budget: prune below-mean-loss samples at random.

    Each epoch every sample whose latest loss is below the mean is dropped with probability
    r and, if kept, has its loss weighted 1 / (1 - r) so the expected gradient is unchanged;
    never-seen samples are always kept. The shuffled kept set feeds the epoch up to k
    samples, so the budget caps it like any other sampler; if fewer than k are kept, the
    epoch is shorter. The last epochs are plain unif-sgd epochs (SPEC: "full data").
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
        # A batch's indices are distinct, so the copy has no write conflicts; losses come
        # in bfloat16 under CUDA autocast.
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
