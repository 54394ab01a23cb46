"""Batched, on-device augmentations with per-image randomness, behind a registry
(docs/methods.md, Augmentations).

One module per family, each registering its classes into AUGMENTATIONS when imported:
crop_flip (standard), mixing (mixup, cutmix, ricap) and rand_augment (randaugment), on
base (the batch type, base class and registry) and pixels (shared pixel plumbing).
Importing this package imports them all, so the registry is complete. credit holds the
soft-target loss and the per-sample credit the samplers read. Imports no training loop.
"""

from engine.train.augment.base import (
    AUGMENTATIONS,
    Augmentation,
    AugmentedBatch,
    create_augmentation,
    register_augmentation,
)
from engine.train.augment.credit import Credit, per_sample_loss, score_credit
from engine.train.augment.crop_flip import StandardAugmentation, random_crop_flip
from engine.train.augment.mixing import (
    CutMixAugmentation,
    MixupAugmentation,
    RicapAugmentation,
    cutmix,
    mixup,
    ricap,
    sample_beta,
)
from engine.train.augment.rand_augment import (
    RANDAUGMENT_OPS,
    RandAugmentation,
    apply_randaugment_ops,
    randaugment,
    randaugment_value,
)

__all__ = [
    "AUGMENTATIONS", "Augmentation", "AugmentedBatch", "create_augmentation", "register_augmentation",
    "Credit", "per_sample_loss", "score_credit", "StandardAugmentation", "random_crop_flip",
    "CutMixAugmentation", "MixupAugmentation", "RicapAugmentation", "cutmix", "mixup", "ricap",
    "sample_beta", "RANDAUGMENT_OPS", "RandAugmentation", "apply_randaugment_ops", "randaugment",
    "randaugment_value",
]
