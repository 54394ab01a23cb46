"""Engine speed, measured side by side in one process (CPU by default).

Three timings per workload, each the median per-epoch time; the three pipelines take
turns for several rounds so that a noisy machine slows all of them alike:
  floor        the same model doing forward + backward + step on ready-made device
               tensors (already augmented), the same number of steps: no sampling,
               augmentation, normalisation or metrics inside the timed loop;
  engine       engine.train.loop.train's training phase (unif-sgd + standard augmentation);
  conventional a PIL dataset + torchvision transforms + a DataLoader rebuilt every epoch
               over a fresh uniform subset, as the paper's reference code does.
Prints engine/floor (target <= 1.10) and conventional/engine (target >= 1.5) on digits and
on a CIFAR-shaped synthetic set with a small net, plus a compute-bound row for contrast.

    python tests/benchmarks/bench_engine.py [--epochs 3] [--rounds 4] [--workers 0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.config import RunConfig
from engine.train.augment import random_crop_flip
from engine.train.budget import plan_budget
from engine.train.data import DatasetSplits, load_dataset
from engine.train.loop import train
from engine.train.models import build_model


def synthetic_cifar(num_train: int, num_test: int, seed: int = 0) -> DatasetSplits:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_train + num_test, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (num_train + num_test,), generator=generator)
    return DatasetSplits(
        name="synthetic-cifar", train_images=images[:num_train], train_labels=labels[:num_train],
        test_images=images[num_train:], test_labels=labels[num_train:], num_classes=10,
        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), flip=True,
    )


def engine_epoch_times(config: RunConfig, splits: DatasetSplits) -> list[float]:
    with tempfile.TemporaryDirectory() as folder:
        summary_history: list[dict] = []
        train(config, Path(folder), data_root=Path(folder), data=(splits, None),
              on_event=lambda event: summary_history.append(event) if event["event"] == "epoch" else None)
    cumulative = [record["time_train_s"] for record in summary_history]
    return [later - earlier for earlier, later in zip([0.0, *cumulative], cumulative)]


def floor_epoch_times(config: RunConfig, splits: DatasetSplits) -> list[float]:
    """Forward + backward + step on ready float batches: what the hardware must do anyway.

    The batches are the same kind of data the engine trains on (a fresh uniform subset,
    randomly cropped and flipped, normalised), made before the clock starts: compute time
    on a CPU depends on the data (the zero borders of crops change it measurably), so
    the floor must see augmented images too.
    """
    torch.manual_seed(config.seed)
    plan = plan_budget(config, splits.train_images.shape[0])
    model = build_model(config.model, splits.num_classes, splits.train_images.shape[1])
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    channels = splits.train_images.shape[1]
    mean = torch.tensor(splits.mean).reshape(1, channels, 1, 1) * 255
    std = torch.tensor(splits.std).reshape(1, channels, 1, 1) * 255
    used = plan.steps_per_epoch * config.batch_size
    times = []
    model.train()
    for _ in range(plan.epochs):
        order = torch.randperm(plan.num_train, generator=generator)[:used]
        images = random_crop_flip(splits.train_images[order], config.crop_padding, splits.flip, generator)
        inputs = ((images.float() - mean) / std).split(config.batch_size)
        labels = splits.train_labels[order].split(config.batch_size)
        start = time.perf_counter()
        train_steps(model, optimizer, zip(inputs, labels))
        times.append(time.perf_counter() - start)
    return times


def train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches) -> None:
    """Plain forward + backward + step over (inputs, labels) batches: both baselines' loop."""
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


class PilDataset(torch.utils.data.Dataset):
    def __init__(self, splits: DatasetSplits, transform) -> None:
        array = splits.train_images.permute(0, 2, 3, 1).numpy()
        mode = "L" if array.shape[-1] == 1 else "RGB"
        self.images = [Image.fromarray(image.squeeze(-1) if mode == "L" else image, mode) for image in array]
        self.labels = splits.train_labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.labels[index]


def conventional_epoch_times(config: RunConfig, splits: DatasetSplits, workers: int) -> list[float]:
    from torchvision import transforms

    torch.manual_seed(config.seed)
    plan = plan_budget(config, splits.train_images.shape[0])
    size = splits.train_images.shape[-1]
    steps = [transforms.RandomCrop(size, padding=config.crop_padding)]
    if splits.flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(splits.mean, splits.std)]
    dataset = PilDataset(splits, transforms.Compose(steps))
    model = build_model(config.model, splits.num_classes, splits.train_images.shape[1])
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    times = []
    model.train()
    for _ in range(plan.epochs):
        start = time.perf_counter()
        subset = torch.randperm(len(dataset))[: plan.samples_per_epoch].tolist()
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=config.batch_size, sampler=torch.utils.data.SubsetRandomSampler(subset),
            drop_last=True, num_workers=workers,
        )
        train_steps(model, optimizer, loader)
        times.append(time.perf_counter() - start)
    return times


def interleaved_stats(
    measures: dict[str, Callable[[], list[float]]], rounds: int
) -> dict[str, tuple[float, float]]:
    """Run each measure once per round, in turn; (median, min) over all epochs but each call's first."""
    times: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            epochs = measure()
            times[name].extend(epochs[1:] if len(epochs) > 1 else epochs)
    return {name: (statistics.median(values), min(values)) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per call (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=4, help="turns each pipeline takes")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the conventional pipeline")
    parser.add_argument("--skip-compute-bound", action="store_true", help="skip the slow small_cnn@32px row")
    parser.add_argument("--cifar-train", type=int, default=2_560, help="synthetic CIFAR-shaped training samples")
    arguments = parser.parse_args()

    digits = load_dataset("digits", Path(tempfile.gettempdir()))
    cifar_shaped = synthetic_cifar(arguments.cifar_train, 1_000)
    workloads = [
        ("digits 1x8x8, small_cnn, batch 64", digits,
         RunConfig(dataset="digits", model="small_cnn", epochs=arguments.epochs, batch_size=64,
                   lr=0.05, crop_padding=1, device="cpu")),
        ("CIFAR-shaped 3x32x32, cifar_small_cnn, b128", cifar_shaped,
         RunConfig(dataset="cifar10", model="cifar_small_cnn", epochs=arguments.epochs, batch_size=128,
                   crop_padding=4, device="cpu")),
    ]
    if not arguments.skip_compute_bound:
        # 16x the FLOPs per image: compute dominates, so the pipelines should all converge.
        workloads.append(
            ("CIFAR-shaped 3x32x32, small_cnn, b128", synthetic_cifar(1_280, 200),
             RunConfig(dataset="cifar10", model="small_cnn", epochs=arguments.epochs, batch_size=128,
                       crop_padding=4, device="cpu")))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {arguments.epochs} epochs per call "
          f"x {arguments.rounds} rounds, DataLoader workers {arguments.workers}; seconds per training "
          "epoch, median (min) over epochs, each call's first epoch dropped")
    print(f"{'workload':<44} {'floor':>15} {'engine':>15} {'conventional':>15} "
          f"{'engine/floor':>15} {'conv./engine':>15}")
    for name, splits, config in workloads:
        stats = interleaved_stats({
            "floor": lambda: floor_epoch_times(config, splits),
            "engine": lambda: engine_epoch_times(config, splits),
            "conventional": lambda: conventional_epoch_times(config, splits, arguments.workers),
        }, arguments.rounds)
        floor, engine, conventional = stats["floor"], stats["engine"], stats["conventional"]
        cells = [f"{median:.4f} ({low:.4f})" for median, low in (floor, engine, conventional)]
        print(f"{name:<44} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} "
              f"{engine[0] / floor[0]:>6.3f}x ({engine[1] / floor[1]:.3f}x) "
              f"{conventional[0] / engine[0]:>6.2f}x ({conventional[1] / engine[1]:.2f}x)")


if __name__ == "__main__":
    main()
