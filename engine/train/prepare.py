"""A run's device and its data on it: loaded once, kept as uint8 on the device and
normalised per batch, never re-decoded per epoch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.config import RunConfig
from engine.errors import BadInput
from engine.train.data import DatasetSplits, load_dataset, split_validation

# The dataset's splits and the validation hold-out (images, labels), if the run asks for one.
RunData = tuple[DatasetSplits, tuple[torch.Tensor, torch.Tensor] | None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput("device=cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def load_run_data(config: RunConfig, data_root: Path) -> RunData:
    """The dataset's splits (train shrunk by the validation hold-out when asked)."""
    splits = load_dataset(
        config.dataset,
        data_root,
        download=config.download,
        image_size=config.image_size or None,
        data_path=Path(config.data_path) if config.data_path else None,
        split_seed=config.split_seed,
    )
    if config.val_size:
        return split_validation(splits, config.val_size, config.split_seed)
    return splits, None


@dataclass
class DeviceData:
    """Data on the device plus what the loop derives from it once."""

    splits: DatasetSplits
    train_images: torch.Tensor  # uint8 on the device
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor] | None
    mean: torch.Tensor  # (1, C, 1, 1), on the 0..255 scale
    inv_std: torch.Tensor  # (1, C, 1, 1), 1 / (std * 255)

    @property
    def num_train(self) -> int:
        return self.train_images.shape[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one image."""
        return tuple(self.train_images.shape[1:])


def prepare(data: RunData, device: torch.device) -> DeviceData:
    splits, val = data
    channels = splits.train_images.shape[1]
    mean = torch.tensor(splits.mean, device=device).reshape(1, channels, 1, 1) * 255.0
    # A constant channel has std 0; one grey level keeps the division finite.
    std = torch.tensor(splits.std, device=device).reshape(1, channels, 1, 1).clamp_min(1 / 255) * 255.0
    return DeviceData(
        splits=splits,
        train_images=splits.train_images.to(device),
        train_labels=splits.train_labels.to(device),
        test_images=splits.test_images.to(device),
        test_labels=splits.test_labels.to(device),
        val=None if val is None else (val[0].to(device), val[1].to(device)),
        mean=mean,
        inv_std=1.0 / std,
    )
