"""Speed of the scoring samplers sb and ub against unif-sgd, side by side in one process (CPU).

sb and ub pay for extra no-grad scoring forwards, so they are slower than unif-sgd by design;
the question is whether they are slower only by that. Per workload the three samplers take
turns for several rounds (a noisy machine slows all alike; a first, untimed round warms up).
Each run's training seconds per epoch (median over rounds) over unif-sgd's is printed next
to the inherent FLOP ratio from the run's own accounting, (3 x backprop + scoring) /
(3 x unif-sgd's backprop) (a backward costs two forwards), and the overhead beyond it,
time ratio / FLOP ratio - 1 (target <= 10%).

    python tests/benchmarks/bench_selection.py [--epochs 6] [--rounds 5] [--budget 0.5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from bench_engine import synthetic_cifar
from engine.config import RunConfig
from engine.train.data import DatasetSplits, load_dataset
from engine.train.loop import train

SAMPLERS = ("unif-sgd", "sb", "ub")


def run_cost(config: RunConfig, splits: DatasetSplits) -> tuple[float, int, int]:
    """(training seconds per epoch, samples backpropagated, samples scored) of one run."""
    with tempfile.TemporaryDirectory() as folder:
        summary = train(config, Path(folder), data_root=Path(folder), data=(splits, None))
    return summary["time_train_s"] / config.epochs, summary["samples_backprop"], summary["samples_forwarded_scoring"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run (sb's first one is a full pass)")
    parser.add_argument("--rounds", type=int, default=5, help="timed turns each sampler takes")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: least disturbed by other jobs)")
    arguments = parser.parse_args()

    common = {"epochs": arguments.epochs, "budget": arguments.budget, "device": "cpu", "threads": arguments.threads}
    workloads = [
        ("digits 1x8x8, small_cnn, b64", load_dataset("digits", Path(tempfile.gettempdir())),
         RunConfig(dataset="digits", model="small_cnn", batch_size=64, lr=0.05, crop_padding=1, **common)),
        ("CIFAR-shaped 2560x3x32x32, cifar_small_cnn, b128", synthetic_cifar(2_560, 500),
         RunConfig(dataset="cifar10", model="cifar_small_cnn", batch_size=128, crop_padding=4, **common)),
    ]
    print(f"torch {torch.__version__}, {arguments.threads} thread(s), budget {arguments.budget}, "
          f"{arguments.epochs} epochs per run x {arguments.rounds} rounds (+1 warm-up); "
          "training seconds per epoch, median (min) over rounds")
    print(f"{'workload':<50} {'sampler':<9} {'s/epoch':>17} {'time ratio':>11} {'FLOP ratio':>11} {'overhead':>9}")
    for name, splits, config in workloads:
        configs = {sampler: config.replace(sampler=sampler) for sampler in SAMPLERS}
        times: dict[str, list[float]] = {sampler: [] for sampler in SAMPLERS}
        counts: dict[str, tuple[int, int]] = {}
        for round_index in range(arguments.rounds + 1):
            for sampler in SAMPLERS:
                seconds, backprop, scored = run_cost(configs[sampler], splits)
                counts[sampler] = (backprop, scored)  # the same every round: one seed
                if round_index > 0:
                    times[sampler].append(seconds)
        baseline = statistics.median(times["unif-sgd"])
        for sampler in SAMPLERS:
            median, low = statistics.median(times[sampler]), min(times[sampler])
            backprop, scored = counts[sampler]
            flop_ratio = (3 * backprop + scored) / (3 * counts["unif-sgd"][0])
            time_ratio = median / baseline
            print(f"{name:<50} {sampler:<9} {median:>8.4f} ({low:.4f}) {time_ratio:>10.3f}x "
                  f"{flop_ratio:>10.3f}x {100 * (time_ratio / flop_ratio - 1):>+8.1f}%")


if __name__ == "__main__":
    main()
