"""GPU throughput of the engine: CIFAR-10-shaped data, cifar_resnet18, batch 128 and 512.

Trains through engine.train.loop.train (bf16 autocast, channels_last, uint8 data on the
device) and prints images/s of the training phase and the achieved fraction of the GPU's
peak dense bf16 FLOP/s (training FLOPs = 3 x forward FLOPs per image, measured), with the
goal beside it: at least 30% of the peak at batch 512.

    python tests/benchmarks/bench_gpu.py [--epochs 3] [--train 50000] [--compile] [--peak-tflops X]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from engine.config import RunConfig
from engine.train.data import DatasetSplits
from engine.train.loop import train

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, in TFLOP/s.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}
GOAL_BATCH, GOAL_SHARE = 512, 0.30  # of the bf16 peak, in the training phase


def peak_tflops(device_name: str) -> float | None:
    """Longest matching key wins, so "H100 PCIe" is not read as "H100 SXM"."""
    matches = [key for key in PEAK_BF16_TFLOPS if all(part in device_name for part in key.split())]
    return PEAK_BF16_TFLOPS[max(matches, key=len)] if matches else None


def synthetic_cifar10(num_train: int) -> DatasetSplits:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_train + 10_000, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (num_train + 10_000,), generator=generator)
    return DatasetSplits(
        name="synthetic-cifar10", train_images=images[:num_train], train_labels=labels[:num_train],
        test_images=images[num_train:], test_labels=labels[num_train:], num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010), flip=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="the first epoch is warm-up")
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the data-sheet peak")
    parser.add_argument("--batches", default="128,512")
    arguments = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU")

    name = torch.cuda.get_device_name()
    peak = arguments.peak_tflops or peak_tflops(name)
    splits = synthetic_cifar10(arguments.train)
    print(f"{name}; torch {torch.__version__}; peak bf16 {peak or '?'} TFLOP/s; "
          f"{arguments.train} CIFAR-10-shaped images; compile={arguments.compile}")
    print(f"{'batch':>6} {'images/s':>10} {'TFLOP/s':>9} {'of peak':>8} {'epoch s':>8} {'eval s':>7}")
    for batch in (int(size) for size in arguments.batches.split(",")):
        config = RunConfig(dataset="cifar10", model="cifar_resnet18", epochs=arguments.epochs,
                           batch_size=batch, device="cuda", compile=arguments.compile)
        epochs: list[dict] = []
        with tempfile.TemporaryDirectory() as folder:
            summary = train(config, Path(folder), data_root=Path(folder), data=(splits, None),
                            on_event=lambda event: epochs.append(event) if event["event"] == "epoch" else None)
        # Steady state: drop the first epoch (cuDNN autotuning, compilation, allocator warm-up).
        train_times = [later["time_train_s"] - earlier["time_train_s"] for earlier, later in zip(epochs, epochs[1:])]
        images = [later["samples_backprop"] - earlier["samples_backprop"] for earlier, later in zip(epochs, epochs[1:])]
        rate = sum(images) / sum(train_times)
        tflops = 3 * summary["flops_forward_per_sample"] * rate / 1e12
        share = f"{tflops / peak:.1%}" if peak else "?"
        eval_time = (epochs[-1]["time_eval_s"] - epochs[0]["time_eval_s"]) / max(1, len(epochs) - 1)
        print(f"{batch:>6} {rate:>10,.0f} {tflops:>9.1f} {share:>8} {sum(train_times) / len(train_times):>8.2f} "
              f"{eval_time:>7.2f}", flush=True)
        if batch == GOAL_BATCH and peak:
            verdict = "met" if tflops / peak >= GOAL_SHARE else "NOT met"
            print(f"goal: >= {GOAL_SHARE:.0%} of the bf16 peak at batch {GOAL_BATCH}: {tflops / peak:.1%} ({verdict})")


if __name__ == "__main__":
    main()
