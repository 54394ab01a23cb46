"""Upper-bound importance sampling (docs/methods.md, Samplers, ub).

Each batch is drawn from scored presamples, re-weighted to stay unbiased, while the
smoothed variance-reduction estimate promises a gain; otherwise it trains on a uniform
batch at unif-sgd's cost. The chosen samples train on the very views that were scored.
"""

from __future__ import annotations

from typing import Iterator

import torch

from engine.train.augment.credit import Credit
from engine.train.samplers.base import Batch, Sampler, Scorer, register_sampler, sampling_probabilities


def gradient_norm_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """||softmax(z) - onehot(y)||_2 per row: the norm of the cross-entropy gradient w.r.t. z."""
    probabilities = torch.softmax(logits.float(), dim=1)
    # scatter_add, not F.one_hot, whose range check can wait for the device.
    minus_one = torch.full((labels.shape[0], 1), -1.0, device=logits.device)
    return probabilities.scatter_add(1, labels[:, None], minus_one).norm(dim=1)


def variance_reduction(g: torch.Tensor) -> torch.Tensor:
    """tau = (1 - ||g - u||^2 / ||g||^2) ** (-1/2), u uniform over the B candidates
    (docs/methods.md, Samplers, ub).

    For a distribution g the bracket equals 1 / (B ||g||^2), which lies in [1/B, 1]
    (tau from 1 when g is uniform to sqrt(B) when one candidate has all the mass).
    Rounding can push it outside, to 0 or below (tau infinite or NaN, which would stick
    in the EMA), so the bracket is clamped to that exact range.
    """
    uniform = 1.0 / g.shape[0]
    bracket = 1.0 - (g - uniform).square().sum() / g.square().sum()
    return bracket.clamp(uniform, 1.0).rsqrt()


def tau_threshold(presample: int, batch_size: int) -> float:
    """tau_th = (B + 3b) / (3b), B the presample size and b the batch (docs/methods.md,
    Samplers, ub)."""
    return (presample + 3 * batch_size) / (3 * batch_size)


def importance_draw(g: torch.Tensor, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` candidate positions drawn with replacement with probability g, and their
    loss weights 1 / (B g_i): E[w q] = sum_i g_i q_i / (B g_i) = mean of q over the B
    candidates, so the weighted mean loss is unbiased."""
    positions = torch.multinomial(g, count, replacement=True, generator=generator)
    return positions, 1.0 / (g.shape[0] * g[positions])


@register_sampler("ub")
class UpperBoundSampler(Sampler):
    """Upper-bound importance sampling (Katharopoulos & Fleuret 2018, Algorithm 1).

    While the smoothed variance-reduction estimate tau (an EMA, in state) exceeds tau_th,
    a step presamples B = ub_presample x batch distinct candidates uniformly (capped at N),
    scores their views with gradient_norm_scores in one counted forward, folds their tau
    into the EMA and trains on importance_draw's batch (with replacement, weighted) of
    those same views. Otherwise the step trains on a uniform batch with weight 1 and no
    presample at all, and tau is updated from the training forward's own scores (observe),
    so the uniform phase costs exactly what unif-sgd costs. Deciding whether to pay for a
    presample reads tau on the host: one scalar per step.
    """

    needs_scores = True  # the uniform phase updates tau from the training batch
    repeats_samples = True  # importance draws are with replacement

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.presample = min(self.num_samples, self.config.ub_presample * self.batch_size)
        self.tau_threshold = tau_threshold(self.presample, self.batch_size)
        # 1 is uniform sampling's tau: before any scores there is no evidence of a gain.
        self.tau_smoothed = self.register_state("tau_smoothed", torch.ones((), device=self.device))
        self._uniform_step = False  # whether the batch last yielded was a uniform one
        self._importance_steps = 0  # this epoch's
        self._tau_sum = torch.zeros((), device=self.device)  # read once, by diagnostics()

    def epoch_batches(self, epoch: int, scorer: Scorer) -> Iterator[Batch]:
        self._importance_steps = 0
        self._tau_sum.zero_()
        for _ in range(self.plan.steps_per_epoch):
            order = self._permutation(self.num_samples)
            self._uniform_step = not bool(self.tau_smoothed > self.tau_threshold)
            if self._uniform_step:
                yield Batch(order[: self.batch_size])
                continue
            candidates = order[: self.presample]
            scored = scorer(candidates)
            g = sampling_probabilities(gradient_norm_scores(scored.logits, scored.labels), smoothing=False)
            self._fold(variance_reduction(g))
            positions, weights = importance_draw(g, self.batch_size, self.generator)
            self._importance_steps += 1
            yield Batch(candidates[positions], weights, None if scored.views is None else scored.views[positions])

    def observe(self, credit: Credit) -> None:
        if self._uniform_step:
            self._fold(variance_reduction(sampling_probabilities(credit.gradient_norm, smoothing=False)))

    def _fold(self, tau: torch.Tensor) -> None:
        momentum = self.config.ub_tau_momentum
        self.tau_smoothed.mul_(momentum).add_((1.0 - momentum) * tau)
        self._tau_sum += tau

    def diagnostics(self) -> dict[str, float]:
        steps = self.plan.steps_per_epoch
        return {"ub_importance_fraction": self._importance_steps / steps,
                "ub_tau_mean": float(self._tau_sum) / steps}
