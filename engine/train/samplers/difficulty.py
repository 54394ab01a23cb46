"""The difficulty samplers (docs/methods.md, Samplers): p-sgd and c-sgd.

They score samples from the training forward for free: per-sample scores live on the
device and are updated in `observe` without host syncs; each epoch's draw is made once,
at the epoch's start.
"""

from __future__ import annotations

from typing import Iterator

import torch

from engine.train.augment.credit import Credit
from engine.train.samplers.base import Batch, Scorer, register_sampler, sampling_probabilities
from engine.train.samplers.uniform import UniformSubsetSampler


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
        """The sampling score of every sample, never-seen ones included (docs/methods.md,
        Samplers, p-sgd and c-sgd)."""
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
