"""What the score-keeping samplers cost per training epoch, relative to unif-sgd (CPU by default).

p-sgd, c-sgd and infobatch score samples from the training forward (the loop builds a
Credit and calls observe every step) and draw once per epoch; this measures that overhead
through engine.train.loop.train. The samplers take turns for several rounds so a noisy
machine slows all of them alike; each is reported as median (min) seconds per epoch over
all epochs but each call's first, and as the ratio of those to unif-sgd's (target: median
ratio <= 1.05).
Budget 0.5: infobatch keeps every above-mean sample and about half of the others, which
fills the k samples unless nearly all losses sit below the mean, so every sampler runs the
same steps per epoch.

    python tests/benchmarks/bench_samplers.py [--epochs 5] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench_engine import engine_epoch_times, interleaved_stats, synthetic_cifar
from engine.config import RunConfig
from engine.train.data import load_dataset

BASELINE = "unif-sgd"
SAMPLERS = (BASELINE, "p-sgd", "c-sgd", "infobatch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="epochs per call (the first is dropped)")
    parser.add_argument("--rounds", type=int, default=5, help="turns each sampler takes")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 0 = torch's default (tiny convolutions crawl with "
                             "several threads on a shared CPU)")
    parser.add_argument("--cifar-train", type=int, default=2_560, help="synthetic CIFAR-shaped training samples")
    arguments = parser.parse_args()

    common = {"epochs": arguments.epochs, "budget": 0.5, "device": "cpu", "threads": arguments.threads}
    workloads = [
        ("digits 1x8x8, small_cnn, batch 64", load_dataset("digits", Path(tempfile.gettempdir())),
         RunConfig(dataset="digits", model="small_cnn", batch_size=64, crop_padding=1, **common)),
        ("CIFAR-shaped 3x32x32, cifar_small_cnn, b128", synthetic_cifar(arguments.cifar_train, 1_000),
         RunConfig(dataset="cifar10", model="cifar_small_cnn", batch_size=128, crop_padding=4, **common)),
    ]
    threads = arguments.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {arguments.epochs} epochs per call "
          f"x {arguments.rounds} rounds, budget 0.5; seconds per training epoch, median (min), "
          f"and both as ratios to {BASELINE}")
    print(f"{'workload':<44} " + " ".join(f"{name:>20}" for name in SAMPLERS))
    for title, splits, config in workloads:
        stats = interleaved_stats(
            {name: (lambda name=name: engine_epoch_times(config.replace(sampler=name), splits))
             for name in SAMPLERS},
            arguments.rounds,
        )
        base_median, base_low = stats[BASELINE]
        cells = [f"{median:.4f} ({low:.4f})" for median, low in stats.values()]
        ratios = [f"{median / base_median:.3f}x ({low / base_low:.3f}x)" for median, low in stats.values()]
        print(f"{title:<44} " + " ".join(f"{cell:>20}" for cell in cells))
        print(f"{'':<44} " + " ".join(f"{ratio:>20}" for ratio in ratios))


if __name__ == "__main__":
    main()
