"""Samplers that pay counted no-grad scoring forwards to choose samples (SPEC §3): sb, ub.

Selective Backprop keeps the candidates whose eval-mode loss ranks high among recent
losses, until its backprop budget is spent; upper-bound importance sampling draws each
batch from scored presamples, re-weighted to stay unbiased, while that promises a gain.
Both train on the very views they scored. Registers into
engine.train.samplers (which imports this module last); must not import the training loop.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from engine.train.augment import Credit
from engine.train.samplers import Batch, Scorer, Sampler, register_sampler, sampling_probabilities


def loss_percentile(losses: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """Percentile of each loss among the recorded losses: 100 * (share of them strictly
    below the loss), as the SB library counts.

    +inf marks an empty slot of the history and is not counted. A loss at or below every
    recorded one is at 0, so with any beta > 0 a loss of 0 is never selected.
    """
    ordered = history.sort().values
    below = torch.searchsorted(ordered, losses.to(ordered.dtype), right=False)
    return below * 100.0 / torch.isfinite(ordered).sum().clamp_min(1)


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


def _joined(queued: torch.Tensor | None, queued_count: int, added: torch.Tensor | None) -> torch.Tensor | None:
    """Views of a queue after appending `added`: None once any part has no views."""
    if queued_count == 0:
        return added
    return None if queued is None or added is None else torch.cat((queued, added))


@register_sampler("sb")
class SelectiveBackpropSampler(Sampler):
    """Selective Backprop (Jiang et al. 2019) with its backprop budget enforced.

    Each epoch walks a fresh permutation of all N samples in candidate chunks of a batch.
    The first epoch keeps every candidate unscored (SPEC: it backpropagates everything),
    so the loss history starts empty in epoch 1. From then on each chunk gets one
    eval-mode scoring forward of its views; its losses enter the history first, then each
    candidate is kept with selection_probability against the history, which thus always
    holds the candidate's own loss (the first chunk is ranked among itself). Kept samples
    queue, with the views they were scored on, until a batch is full; the batch trains on
    those views. A partial batch at a scored epoch's end is carried into the next one (in
    state), so no scored and kept sample is wasted; an unscored epoch drops its remainder
    like any full-data epoch. After plan.total_steps batches over the whole run the sampler
    yields nothing more and scores nothing more; the run goes on past plan.epochs until
    then, since the selection rate matches the budget only on average.
    """

    fixed_steps_per_epoch = False
    runs_until_spent = True
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
        # The carried samples' views; their shape is known only once something is scored.
        self.carry_views: torch.Tensor | None = None
        self._scored = 0  # candidates considered this epoch
        self._kept = 0

    def epoch_batches(self, epoch: int, scorer: Scorer) -> Iterator[Batch]:
        size, total = self.batch_size, self.plan.total_steps
        # The counters are read once per epoch and written back when it ends, before the
        # loop checkpoints; beta 0 keeps everything, so scoring would be wasted.
        steps = int(self.steps_taken)
        queue = self.carry[: int(self.carry_count)].clone()
        views = self.carry_views
        scoring = epoch > 0 and self.beta > 0
        self._scored = self._kept = 0
        for chunk in self._permutation(self.num_samples).split(size):
            if steps >= total:
                break
            kept, kept_views = self._select(chunk, scorer) if scoring else (chunk, None)
            self._scored += chunk.shape[0]
            self._kept += kept.shape[0]
            # The queue stays under two batches (a carry under one plus a chunk of at
            # most one), so a chunk fills at most one batch and the check above caps exactly.
            views = _joined(views, queue.shape[0], kept_views)
            queue = torch.cat((queue, kept))
            if queue.shape[0] >= size:
                batch = Batch(queue[:size], None, None if views is None else views[:size])
                queue = queue[size:]
                views = None if views is None else views[size:]
                steps += 1
                yield batch
        if steps >= total or not scoring:
            # Spent: nothing will use a carry. Unscored: drop the remainder, as drop_last does.
            queue = queue[:0]
        self.steps_taken.fill_(steps)
        self.carry[: queue.shape[0]].copy_(queue)
        self.carry_count.fill_(queue.shape[0])
        self.carry_views = None if views is None or queue.shape[0] == 0 else views.clone()

    def _select(self, chunk: torch.Tensor, scorer: Scorer) -> tuple[torch.Tensor, torch.Tensor | None]:
        scored = scorer(chunk)
        losses = F.cross_entropy(scored.logits.float(), scored.labels, reduction="none")
        self._remember(losses)
        probability = selection_probability(losses, self.history, self.beta)
        draw = torch.rand(chunk.shape[0], generator=self.generator, device=self.device)
        # The one host sync per chunk: how many were kept decides when a batch is full.
        positions = (draw < probability).nonzero().squeeze(1)
        return chunk[positions], None if scored.views is None else scored.views[positions]

    def _remember(self, losses: torch.Tensor) -> None:
        capacity = self.history.shape[0]
        recent = losses[-capacity:]  # a chunk larger than the history keeps its last losses
        slots = (self.history_count + torch.arange(recent.shape[0], device=self.device)) % capacity
        self.history.index_copy_(0, slots, recent)
        self.history_count += recent.shape[0]

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict()
        if self.carry_views is not None:
            state["carry_views"] = self.carry_views.clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        views = state.pop("carry_views", None)
        self.carry_views = None if views is None else views.to(self.device)
        super().load_state_dict(state)

    def diagnostics(self) -> dict[str, float]:
        return {"sb_selected_fraction": self._kept / self._scored if self._scored else 0.0}


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
