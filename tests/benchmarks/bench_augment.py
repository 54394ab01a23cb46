"""Augmentation cost per batch, on the CPU, measured side by side in one process.

For each workload (digits 1x8x8 with small_cnn at batch 64; CIFAR-shaped 3x32x32 with
cifar_small_cnn at batch 128) it prints the median time of:
  step         one training step on a ready batch: normalise, forward, loss, backward, SGD step;
  <name>       one call of each registered augmentation on the batch's uint8 images,
               and its ratio to the step (targets: mixup, cutmix, ricap <= 5%);
  ours RA      the RandAugment layers alone (2 ops, M=4, per image, batched), without crop/flip;
  PIL RA       torchvision.transforms.RandAugment(num_ops=2, magnitude=4) applied image by
               image to PIL images of the same batch, the conventional pipeline (its op list
               differs slightly from the paper's; the work per image is comparable);
and the speed-up of ours over PIL (target >= 5x). Timings take turns for many rounds, so a
noisy machine slows all of them alike.

    python tests/benchmarks/bench_augment.py [--rounds 60] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from engine.config import RunConfig
from engine.train.augment import AUGMENTATIONS, create_augmentation, randaugment
from engine.train.data import DatasetSplits, load_dataset
from engine.train.models import build_model

MIXING_TARGET = 0.05  # mixing augmentations: at most this fraction of a training step
RANDAUGMENT_TARGET = 5.0  # batched RandAugment: at least this many times faster than PIL


def cifar_shaped(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 10, (count,), generator=generator)


def training_step(
    model_name: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> Callable[[], None]:
    """One step as the engine's loop takes it, on an already augmented batch."""
    torch.manual_seed(0)
    config = RunConfig()
    model = build_model(model_name, num_classes, images.shape[1])
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    mean = images.float().mean(dim=(0, 2, 3), keepdim=True)
    inv_std = 1 / images.float().std(dim=(0, 2, 3), keepdim=True).clamp_min(1)

    def step() -> None:
        losses = F.cross_entropy(model((images.float() - mean) * inv_std), labels, reduction="none")
        optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        optimizer.step()

    return step


def pil_images(images: torch.Tensor) -> list[Image.Image]:
    array = images.permute(0, 2, 3, 1).numpy()
    if array.shape[-1] == 1:
        return [Image.fromarray(image[..., 0], "L") for image in array]
    return [Image.fromarray(image, "RGB") for image in array]


def interleaved_times(measures: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each measure; each round calls every measure once, in turn."""
    for measure in measures.values():  # warm-up: first calls allocate and initialise
        measure()
    times: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            start = time.perf_counter()
            measure()
            times[name].append(time.perf_counter() - start)
    return times


def run_workload(title: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 model_name: str, padding: int, flip: bool, rounds: int) -> None:
    config = RunConfig(crop_padding=padding, randaugment_ops=2, randaugment_magnitude=4)
    generator = torch.Generator().manual_seed(0)
    augmentations = {name: create_augmentation(name, config, flip=flip) for name in AUGMENTATIONS}
    ready = augmentations["standard"](images, generator).images
    pil_randaugment = transforms.RandAugment(num_ops=2, magnitude=4)
    pil_batch = pil_images(images)
    measures: dict[str, Callable[[], object]] = {"step": training_step(model_name, ready, labels, num_classes)}
    for name, augmentation in augmentations.items():
        measures[name] = lambda augmentation=augmentation: augmentation(images, generator)
    measures["ours RA"] = lambda: randaugment(images, 2, 4, generator)
    measures["PIL RA"] = lambda: [pil_randaugment(image) for image in pil_batch]

    times = interleaved_times(measures, rounds)
    median = {name: statistics.median(values) for name, values in times.items()}
    low = {name: min(values) for name, values in times.items()}
    print(f"\n{title}")
    print(f"  {'':<12} {'median ms':>10} {'min ms':>8} {'/ step':>8}")
    for name in measures:
        share = median[name] / median["step"]
        ratio = "" if name == "step" else f"{share:>7.1%}"
        target = ""
        if name in ("mixup", "cutmix", "ricap"):
            target = f"  target <= {MIXING_TARGET:.0%}: {'ok' if share <= MIXING_TARGET else 'MISSED'}"
        print(f"  {name:<12} {median[name] * 1e3:>10.3f} {low[name] * 1e3:>8.3f} {ratio:>8}{target}")
    speedup = median["PIL RA"] / median["ours RA"]
    print(f"  RandAugment, PIL / ours: {speedup:.1f}x median ({low['PIL RA'] / low['ours RA']:.1f}x min)  "
          f"target >= {RANDAUGMENT_TARGET:.0f}x: {'ok' if speedup >= RANDAUGMENT_TARGET else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60, help="timed calls of each measure")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads, {arguments.rounds} rounds; "
          "times per batch")

    digits: DatasetSplits = load_dataset("digits", Path(tempfile.gettempdir()))
    order = torch.randperm(digits.train_images.shape[0], generator=torch.Generator().manual_seed(0))[:64]
    run_workload("digits 1x8x8, small_cnn, batch 64 (crop padding 1, no flip)",
                 digits.train_images[order], digits.train_labels[order], digits.num_classes,
                 "small_cnn", padding=1, flip=False, rounds=arguments.rounds)
    images, labels = cifar_shaped(128)
    run_workload("CIFAR-shaped 3x32x32, cifar_small_cnn, batch 128 (crop padding 4, flip)",
                 images, labels, 10, "cifar_small_cnn", padding=4, flip=True, rounds=arguments.rounds)


if __name__ == "__main__":
    main()
