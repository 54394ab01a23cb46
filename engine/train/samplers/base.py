"""What every sampler shares: the batch it yields, the Scorer, the base class and the registry.

A sampler yields the batches of one epoch as device index tensors (and optional
per-sample loss weights). Per-sample state (scores, visit counts) lives on the device and
is saved in checkpoints through `state_dict`. Importance samplers get per-sample losses
from the training forward through `observe`, and may run extra no-grad scoring forwards
through the Scorer the loop hands them, which counts every sample it forwards and returns
the augmented views it scored, so the chosen samples train on exactly those views.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Iterator, NamedTuple

import torch

from engine.config import RunConfig
from engine.train.augment.credit import Credit
from engine.train.budget import BudgetPlan
from engine.train.registry import Registry


class Batch(NamedTuple):
    indices: torch.Tensor  # (B,) int64 training-set ids, on the device
    weights: torch.Tensor | None = None  # (B,) per-sample loss weights; None = all ones
    # (B, C, H, W) uint8 views already drawn (and scored) for these samples; None: the
    # loop draws them. Mixing, if any, is applied to them by the loop.
    views: torch.Tensor | None = None


class Scored(NamedTuple):
    logits: torch.Tensor  # (B, classes) of the candidates' views
    labels: torch.Tensor  # (B,)
    views: torch.Tensor | None = None  # (B, C, H, W) the views forwarded; None without images


class Scorer:
    """Extra no-grad forwards for samplers that score candidates before choosing.

    `forward(indices, train_mode)` draws each candidate's view (per-image augmentation, no
    mixing) and returns Scored (logits, labels, views), or a (logits, labels) pair where
    there are no images to return; eval mode leaves BN statistics untouched. Every
    forwarded sample is counted, so a sampler's extra compute shows up in the accounting.
    """

    def __init__(self, forward: Callable[[torch.Tensor, bool], tuple]):
        self._forward = forward
        self.forwarded = 0

    def __call__(self, indices: torch.Tensor, *, train_mode: bool = False) -> Scored:
        self.forwarded += indices.shape[0]
        return Scored(*self._forward(indices, train_mode))


class Sampler:
    """Base class. Subclasses set `name` (by registering) and implement `epoch_batches`."""

    name: ClassVar[str]
    needs_scores: ClassVar[bool] = False  # the loop calls observe() after each training forward
    # False: spends plan.total_steps at its own pace (e.g. sb: a full first epoch, then
    # fewer steps, possibly none at the end) instead of plan.steps_per_epoch every epoch.
    fixed_steps_per_epoch: ClassVar[bool] = True
    # True: the run continues past plan.epochs until the sampler has spent plan.total_steps
    # (sb, whose selection rate is only right on average).
    runs_until_spent: ClassVar[bool] = False
    repeats_samples: ClassVar[bool] = False  # a sample may occur twice in one epoch
    # Why the sampler may legitimately spend less than plan.total_steps (None: it never
    # does); the run's summary quotes it when the run fell short.
    shortfall_reason: ClassVar[str | None] = None

    def __init__(
        self,
        num_samples: int,
        plan: BudgetPlan,
        batch_size: int,
        generator: torch.Generator,
        config: RunConfig,
    ) -> None:
        self.num_samples = num_samples
        self.plan = plan
        self.batch_size = batch_size
        self.generator = generator
        self.device = generator.device
        self.config = config
        self._state: dict[str, torch.Tensor] = {}

    def register_state(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Keep a per-sample tensor in checkpoints (restored in place on resume)."""
        self._state[name] = tensor
        return tensor

    def epoch_batches(self, epoch: int, scorer: Scorer) -> Iterator[Batch]:
        """The batches of 0-based `epoch`: plan.steps_per_epoch of them when
        fixed_steps_per_epoch, otherwise never more than plan.total_steps over the run."""
        raise NotImplementedError

    def expected_total_steps(self, steps_run: int) -> int:
        """The run's optimiser steps in all, as known right after epoch_batches(epoch)
        returned with `steps_run` steps already taken; the LR schedule is re-planned to end
        on that step."""
        return self.plan.total_steps

    def observe(self, credit: Credit) -> None:
        """After each training forward (only if needs_scores): per-sample losses and the
        difficulty credited to each source sample, all detached, on the device."""

    def diagnostics(self) -> dict[str, float]:
        """Sampler-specific numbers recorded with each epoch (e.g. ub's share of IS steps)."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: tensor.clone() for name, tensor in self._state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, tensor in state.items():
            self._state[name].copy_(tensor)

    # Helpers shared by the uniform samplers.
    def _permutation(self, count: int) -> torch.Tensor:
        return torch.randperm(count, generator=self.generator, device=self.device)

    def _slices(self, order: torch.Tensor) -> Iterator[Batch]:
        size = self.batch_size
        for step in range(self.plan.steps_per_epoch):
            yield Batch(order[step * size : (step + 1) * size])


def sampling_probabilities(scores: torch.Tensor, smoothing: bool) -> torch.Tensor:
    """P_i from non-negative scores: s_i / sum(s), or with smoothing 0.5 * s_i / sum(s) + 0.5 / N.

    docs/methods.md (Samplers) smooths the scores by their mean: add mean(s) to every
    score, then normalise. That is the same distribution:
    (s_i + sum/N) / (sum + N * sum/N) = 0.5 * s_i / sum + 0.5 / N.
    All-zero scores give the uniform distribution (decided on the device, no host sync).
    """
    uniform = 1.0 / scores.numel()
    total = scores.sum()
    shares = torch.where(total > 0, scores / total, uniform)
    return 0.5 * shares + 0.5 * uniform if smoothing else shares


SAMPLERS: Registry[type[Sampler]] = Registry("sampler")
register_sampler = SAMPLERS.register


def create_sampler(
    name: str, num_samples: int, plan: BudgetPlan, batch_size: int, generator: torch.Generator,
    config: RunConfig,
) -> Sampler:
    return SAMPLERS.lookup(name)(num_samples, plan, batch_size, generator, config)
