"""Samplers: which training samples each optimiser step uses, behind a registry
(docs/methods.md, Samplers).

One module per family, each registering its classes into SAMPLERS when imported: uniform
(sgd, unif-sgd, random-subset), difficulty (p-sgd, c-sgd), selective_backprop (sb),
upper_bound (ub) and infobatch. They import only `base` (and each other's classes), never
this package; importing this package imports them all, so the registry is complete.
Must not import the training loop.
"""

from engine.train.samplers.base import (
    SAMPLERS,
    Batch,
    Sampler,
    Scored,
    Scorer,
    create_sampler,
    register_sampler,
    sampling_probabilities,
)
from engine.train.samplers.difficulty import DifficultySampler, ThresholdClosenessSampler
from engine.train.samplers.infobatch import InfoBatchSampler
from engine.train.samplers.selective_backprop import SelectiveBackpropSampler
from engine.train.samplers.uniform import FixedSubsetSampler, FullDataSampler, UniformSubsetSampler
from engine.train.samplers.upper_bound import UpperBoundSampler

__all__ = [
    "SAMPLERS", "Batch", "Sampler", "Scored", "Scorer", "create_sampler", "register_sampler",
    "sampling_probabilities", "FixedSubsetSampler", "FullDataSampler", "UniformSubsetSampler",
    "DifficultySampler", "ThresholdClosenessSampler", "SelectiveBackpropSampler", "UpperBoundSampler",
    "InfoBatchSampler",
]
