"""Samplers that pay counted no-grad scoring forwards to choose samples (SPEC §3): sb, ub.

Selective Backprop keeps the candidates whose eval-mode loss ranks high among recent
losses, until its backprop budget is spent; upper-bound importance sampling draws each
batch from scored presamples, re-weighted to stay unbiased. Registers into
engine.train.samplers (which imports this module last); must not import the training loop.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from engine.train.samplers import Batch, Scorer, Sampler, register_sampler, sampling_probabilities


def loss_percentile(losses: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """Percentile of each loss among the recorded losses: 100 * (share of them <= the loss).

    +inf marks an empty slot of the history and is not counted. A loss equal to every
    recorded one is at 100; a loss that is itself recorded is at least 100 / recorded.
    """
    ordered = history.sort().values
    at_most = torch.searchsorted(ordered, losses.to(ordered.dtype), right=True)
    return at_most * 100.0 / torch.isfinite(ordered).sum().clamp_min(1)


def selection_probability(losses: torch.Tensor, history: torch.Tensor, beta: float) -> torch.Tensor:
    """SB's P(select) = (percentile / 100) ** beta. SPEC's floor of 0 never binds here:
    percentiles are >= 0, so no clamp is needed."""
    return (loss_percentile(losses, history) / 100.0).pow(beta)


def gradient_norm_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """||softmax(z) - onehot(y)||_2 per row: the norm of the cross-entropy gradient w.r.t. z."""
    probabilities = torch.softmax(logits.float(), dim=1)
    # scatter_add, not F.one_hot, whose range check can wait for the device.
    minus_one = torch.full((labels.shape[0], 1), -1.0, device=logits.device)
    return probabilities.scatter_add(1, labels[:, None], minus_one).norm(dim=1)


def variance_reduction(g: torch.Tensor) -> torch.Tensor:
    """tau = (1 - ||g - u||^2 / ||g||^2) ** (-1/2), u uniform over the B candidates (SPEC §3).

    For a distribution g the bracket equals 1 / (B ||g||^2), which lies in [1/B, 1]
    (tau from 1 when g is uniform to sqrt(B) when one candidate has all the mass).
    Rounding can push it outside, to 0 or below (tau infinite or NaN, which would stick
    in the EMA), so the bracket is clamped to that exact range.
    """
    uniform = 1.0 / g.shape[0]
    bracket = 1.0 - (g - uniform).square().sum() / g.square().sum()
    return bracket.clamp(uniform, 1.0).rsqrt()


def tau_threshold(presample: int, batch_size: int) -> float:
    """tau_th = (B + 3b) / (3b), B the presample size and b the batch (SPEC §3)."""
    return (presample + 3 * batch_size) / (3 * batch_size)


def importance_draw(g: torch.Tensor, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` candidate positions drawn with replacement with probability g, and their
    loss weights 1 / (B g_i): E[w q] = sum_i g_i q_i / (B g_i) = mean of q over the B
    candidates, so the weighted mean loss is unbiased."""
    positions = torch.multinomial(g, count, replacement=True, generator=generator)
    return positions, 1.0 / (g.shape[0] * g[positions])


@register_sampler("sb")
class SelectiveBackpropSampler(Sampler):
    """Selective Backprop (Jiang et al. 2019) with its backprop budget enforced.

    Each epoch walks a fresh permutation of all N samples in candidate chunks of a batch.
    The first epoch keeps every candidate unscored (SPEC: it backpropagates everything),
    so the loss history starts empty in epoch 1. From then on each chunk gets one
    eval-mode scoring forward; its losses enter the history first, then each candidate
    is kept with selection_probability against the history, which thus always holds the
    candidate's own loss (the first chunk is ranked among itself). Kept samples queue
    until a batch is full; a partial batch at an epoch's end is carried into the next one
    (in state), so no scored and kept sample is wasted. After plan.total_steps batches
    over the whole run the sampler yields nothing more and scores nothing more.
    """

    fixed_steps_per_epoch = False
    repeats_samples = True  # a partial batch is carried into the next epoch

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.beta = self.config.sb_beta or 1.0 / self.config.budget - 1.0
        device = self.device
        # A ring buffer of the most recent losses; +inf marks slots not yet written, and
        # history_count, the losses written so far, puts the next one at count mod size.
        self.history = self.register_state(
            "history", torch.full((self.config.sb_history,), float("inf"), device=device))
        self.history_count = self.register_state("history_count", torch.zeros((), dtype=torch.long, device=device))
        self.carry = self.register_state("carry", torch.zeros(self.batch_size, dtype=torch.long, device=device))
        self.carry_count = self.register_state("carry_count", torch.zeros((), dtype=torch.long, device=device))
        self.steps_taken = self.register_state("steps_taken", torch.zeros((), dtype=torch.long, device=device))
        self._scored = 0  # candidates considered this epoch
        self._kept = 0

    def epoch_batches(self, epoch: int, scorer: Scorer) -> Iterator[Batch]:
        size, total = self.batch_size, self.plan.total_steps
        # The counters are read once per epoch and written back when it ends, before the
        # loop checkpoints; beta 0 keeps everything, so scoring would be wasted.
        steps = int(self.steps_taken)
        queue = self.carry[: int(self.carry_count)].clone()
        scoring = epoch > 0 and self.beta > 0
        self._scored = self._kept = 0
        for chunk in self._permutation(self.num_samples).split(size):
            if steps >= total:
                break
            kept = self._select(chunk, scorer) if scoring else chunk
            self._scored += chunk.shape[0]
            self._kept += kept.shape[0]
            # The queue stays under two batches (a carry under one plus a chunk of at
            # most one), so a chunk fills at most one batch and the check above caps exactly.
            queue = torch.cat((queue, kept))
            if queue.shape[0] >= size:
                batch, queue = queue[:size], queue[size:]
                steps += 1
                yield Batch(batch)
        if steps >= total:
            queue = queue[:0]  # the run's backprop is spent: nothing will use a carry
        self.steps_taken.fill_(steps)
        self.carry[: queue.shape[0]].copy_(queue)
        self.carry_count.fill_(queue.shape[0])

    def _select(self, chunk: torch.Tensor, scorer: Scorer) -> torch.Tensor:
        logits, labels = scorer(chunk)
        losses = F.cross_entropy(logits.float(), labels, reduction="none")
        self._remember(losses)
        probability = selection_probability(losses, self.history, self.beta)
        draw = torch.rand(chunk.shape[0], generator=self.generator, device=self.device)
        # The one host sync per chunk: how many were kept decides when a batch is full.
        return chunk[draw < probability]

    def _remember(self, losses: torch.Tensor) -> None:
        capacity = self.history.shape[0]
        recent = losses[-capacity:]  # a chunk larger than the history keeps its last losses
        slots = (self.history_count + torch.arange(recent.shape[0], device=self.device)) % capacity
        self.history.index_copy_(0, slots, recent)
        self.history_count += recent.shape[0]

    def diagnostics(self) -> dict[str, float]:
        return {"sb_selected_fraction": self._kept / self._scored if self._scored else 0.0}


@register_sampler("ub")
class UpperBoundSampler(Sampler):
    """Upper-bound importance sampling (Katharopoulos & Fleuret 2018).

    Every step presamples B = ub_presample x batch distinct candidates uniformly (capped
    at N), scores them with gradient_norm_scores in one counted forward and folds their
    tau into an EMA (state) that then decides this very step, so every step pays the
    scoring forward. While the EMA exceeds tau_th the batch is importance_draw's (with
    replacement, weighted); otherwise it is the first `batch` candidates with weight 1.
    The switch is a torch.where on the device (both branches cost a few hundred-element
    ops), so no step waits for the host; the uniform branch's weights are ones, not None.
    """

    repeats_samples = True  # importance draws are with replacement

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.presample = min(self.num_samples, self.config.ub_presample * self.batch_size)
        self.tau_threshold = tau_threshold(self.presample, self.batch_size)
        # 1 is uniform sampling's tau: before any scores there is no evidence of a gain.
        self.tau_smoothed = self.register_state("tau_smoothed", torch.ones((), device=self.device))
        self._first = torch.arange(self.batch_size, device=self.device)
        # This epoch's sums, on the device; read once, by diagnostics().
        self._importance_steps = torch.zeros((), device=self.device)
        self._tau_sum = torch.zeros((), device=self.device)

    def epoch_batches(self, epoch: int, scorer: Scorer) -> Iterator[Batch]:
        momentum = self.config.ub_tau_momentum
        self._importance_steps.zero_()
        self._tau_sum.zero_()
        for _ in range(self.plan.steps_per_epoch):
            candidates = self._permutation(self.num_samples)[: self.presample]
            logits, labels = scorer(candidates)
            g = sampling_probabilities(gradient_norm_scores(logits, labels), smoothing=False)
            tau = variance_reduction(g)
            self.tau_smoothed.mul_(momentum).add_((1.0 - momentum) * tau)
            importance = self.tau_smoothed > self.tau_threshold
            positions, weights = importance_draw(g, self.batch_size, self.generator)
            self._importance_steps += importance
            self._tau_sum += tau
            yield Batch(candidates[torch.where(importance, positions, self._first)],
                        torch.where(importance, weights, 1.0))

    def diagnostics(self) -> dict[str, float]:
        steps = self.plan.steps_per_epoch
        return {"ub_importance_fraction": float(self._importance_steps) / steps,
                "ub_tau_mean": float(self._tau_sum) / steps}
