"""Selective Backprop (docs/methods.md, Samplers, sb), with its backprop budget enforced.

It keeps the candidates whose eval-mode loss ranks high among recent losses, paying a
counted no-grad scoring forward for each, until its backprop budget is spent, and trains
on the very views it scored.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from engine.train.samplers.base import Batch, Sampler, Scorer, register_sampler


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
    """SB's P(select) = (percentile / 100) ** beta. A floor of 0 would never bind here:
    percentiles are >= 0, so no clamp is needed."""
    return (loss_percentile(losses, history) / 100.0).pow(beta)


def _joined(queued: torch.Tensor | None, queued_count: int, added: torch.Tensor | None) -> torch.Tensor | None:
    """Views of a queue after appending `added`: None once any part has no views."""
    if queued_count == 0:
        return added
    return None if queued is None or added is None else torch.cat((queued, added))


@register_sampler("sb")
class SelectiveBackpropSampler(Sampler):
    """Selective Backprop (Jiang et al. 2019) with its backprop budget enforced.

    Each epoch walks a fresh permutation of all N samples in candidate chunks of a batch.
    The first epoch keeps every candidate unscored ("the first epoch trains on everything"),
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
