"""The training step and the scoring forward of a run: its model, optimiser, augmentation
and generator over the training data on the device.

No host sync in a step: counters come from shapes, sums stay on the device.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from engine.config import RunConfig
from engine.train.augment import AugmentedBatch, create_augmentation, per_sample_loss
from engine.train.prepare import DeviceData
from engine.train.samplers import Batch, Scorer


class Switches(NamedTuple):
    """The device switches a run resolved from its config: what it actually trains with."""

    precision: str  # "bf16" (autocast to bfloat16) or "fp32"
    channels_last: bool
    compiled: bool

    def to_dict(self) -> dict[str, str | bool]:
        return {"precision": self.precision, "channels_last": self.channels_last, "compiled": self.compiled}


def resolve_switches(config: RunConfig, device: torch.device) -> Switches:
    """The config's switches on `device`: "auto" keeps the choices a CUDA run has always made
    (bf16 autocast, channels_last; compile only where asked) and a CPU run's fp32 defaults."""
    cuda = device.type == "cuda"
    precision = config.precision if config.precision != "auto" else ("bf16" if cuda else "fp32")
    return Switches(precision, _switch_on(config.channels_last, cuda), _switch_on(config.compile, cuda))


def _switch_on(value: bool | str, cuda: bool) -> bool:
    return cuda if value == "auto" else bool(value)


class StepResult(NamedTuple):
    """What one training step computed, for the tally and the sampler's credit."""

    logits: torch.Tensor  # (B, classes) float32
    labels: torch.Tensor  # (B,) the samples' own labels
    augmented: AugmentedBatch
    losses: torch.Tensor  # (B,) per-sample loss against the (possibly mixed) target


class Trainer:
    """Turns a sampler's Batch into one optimiser step, and candidates into scored views.

    One seed drives initialisation (the global RNG, seeded by the caller before it built
    `model`), sampling and augmentation: the run's `generator`, seeded here. Weight decay
    applies to every parameter (docs/methods.md, Budget and schedule). The switches
    (precision, channels_last, compile) hold for every forward: training, scoring and
    evaluation alike.
    """

    def __init__(self, config: RunConfig, data: DeviceData, model: torch.nn.Module, device: torch.device) -> None:
        self.config = config
        self.data = data
        self.device = device
        self.cuda = device.type == "cuda"
        self.switches = resolve_switches(config, device)
        if self.switches.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.forward_model = torch.compile(model) if self.switches.compiled else model
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay, nesterov=False,
        )
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(config.seed)
        self.augmentation = create_augmentation(config.augmentation, config, flip=data.splits.flip)
        self.scorer = Scorer(self.score)

    def gather(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and labels of training ids (index_select is much faster than []
        for uint8 image batches on the CPU)."""
        return (self.data.train_images.index_select(0, indices),
                self.data.train_labels.index_select(0, indices))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        inputs = (images.float() - self.data.mean) * self.data.inv_std
        return inputs.contiguous(memory_format=torch.channels_last) if self.switches.channels_last else inputs

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.switches.precision == "bf16"):
            return self.forward_model(inputs)

    def score(self, indices: torch.Tensor, train_mode: bool) -> tuple[torch.Tensor, ...]:
        """The Scorer's no-grad forward: (logits, labels, views) of candidates.

        Candidates are scored on their views (per-image augmentation, no mixing: a mixed
        image would carry other samples' labels); the chosen ones train on these views.
        """
        was_training = self.model.training
        self.model.train(train_mode)
        # On a CPU, training-batch-sized pieces stay in cache and augment faster than one
        # big batch (measured: ub's 3x presample); a GPU prefers one launch.
        pieces = [indices] if self.cuda else indices.split(self.config.batch_size)
        logits, labels, views = [], [], []
        with torch.no_grad():
            for piece in pieces:
                images, piece_labels = self.gather(piece)
                views.append(self.augmentation.views(images, self.generator))
                logits.append(self.forward(self.normalise(views[-1])).float())
                labels.append(piece_labels)
        self.model.train(was_training)
        return torch.cat(logits), torch.cat(labels), torch.cat(views)

    def step(self, batch: Batch, lr: float) -> StepResult:
        """One optimiser step at `lr`: draw each sample's view (unless the sampler scored
        views already), mix, normalise, forward, per-sample loss (weighted if the sampler
        says so), backward, step."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if batch.views is None:
            images, labels = self.gather(batch.indices)
            views = self.augmentation.views(images, self.generator)
        else:
            views, labels = batch.views, self.data.train_labels.index_select(0, batch.indices)
        augmented = self.augmentation.mix(views, self.generator)
        logits = self.forward(self.normalise(augmented.images)).float()  # loss in fp32 under bf16 autocast
        losses = per_sample_loss(logits, labels, augmented)
        loss = losses.mean() if batch.weights is None else (losses * batch.weights).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return StepResult(logits, labels, augmented, losses)
