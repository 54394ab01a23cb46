"""Engine speed, measured side by side in one process (CPU by default).

Three timings per workload, each the median per-epoch time over several epochs:
  floor        the same model doing forward + backward + step on ready-made device
               tensors, the same number of steps (no sampling, augmentation or metrics);
  engine       engine.train.loop.train's training phase (unif-sgd + standard augmentation);
  conventional a PIL dataset + torchvision transforms + a DataLoader rebuilt every epoch
               over a fresh uniform subset, as the paper's reference code does.
Prints engine/floor (target <= 1.10) and conventional/engine (target >= 1.5).

    python tests/benchmarks/bench_engine.py [--epochs 6] [--workers 0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.config import RunConfig
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
    """Forward + backward + step on ready float batches: what the hardware must do anyway."""
    torch.manual_seed(config.seed)
    plan = plan_budget(config, splits.train_images.shape[0])
    model = build_model(config.model, splits.num_classes, splits.train_images.shape[1])
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    size = config.batch_size
    inputs = [splits.train_images[i * size:(i + 1) * size].float() / 255.0 for i in range(plan.steps_per_epoch)]
    labels = [splits.train_labels[i * size:(i + 1) * size] for i in range(plan.steps_per_epoch)]
    times = []
    model.train()
    for _ in range(plan.epochs):
        start = time.perf_counter()
        for x, y in zip(inputs, labels):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return times


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
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def median_after_warmup(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 2 else times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the conventional pipeline")
    parser.add_argument("--cifar-train", type=int, default=10_000, help="synthetic CIFAR-shaped training samples")
    arguments = parser.parse_args()

    digits = load_dataset("digits", Path(tempfile.gettempdir()))
    workloads = [
        ("digits 1x8x8, small_cnn, batch 64", digits,
         RunConfig(dataset="digits", model="small_cnn", epochs=arguments.epochs, batch_size=64,
                   lr=0.05, crop_padding=1, device="cpu")),
        ("CIFAR-shaped 3x32x32, small_cnn, batch 128", synthetic_cifar(arguments.cifar_train, 1_000),
         RunConfig(dataset="cifar10", model="small_cnn", epochs=arguments.epochs, batch_size=128,
                   crop_padding=4, device="cpu")),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {arguments.epochs} epochs each; "
          "median seconds per training epoch (first epoch dropped as warm-up)")
    print(f"{'workload':<44} {'floor':>8} {'engine':>8} {'conv.':>8} {'engine/floor':>13} {'conv./engine':>13}")
    for name, splits, config in workloads:
        floor = median_after_warmup(floor_epoch_times(config, splits))
        engine = median_after_warmup(engine_epoch_times(config, splits))
        conventional = median_after_warmup(conventional_epoch_times(config, splits, arguments.workers))
        print(f"{name:<44} {floor:>8.4f} {engine:>8.4f} {conventional:>8.4f} "
              f"{engine / floor:>12.3f}x {conventional / engine:>12.2f}x")


if __name__ == "__main__":
    main()
