"""Throughput of several training runs packed on one GPU, as `worker --slots-per-gpu N` or
`--pack-memory` places them: total images/s of 1, 2 and 4 concurrent runs against one alone.

Each run is its own process (as the worker starts them), cifar_resnet18 at batch 128 on
CIFAR-10-shaped data through engine.train.loop.train. The runs load, build and train one
warm-up epoch, wait at a barrier, then train the measured epochs together. Total images/s
= images all runs trained after the barrier / time from the barrier to the last run's end
(wall clock, so each epoch's small evaluation is inside it, alike for every count). Also
prints each run's peak device memory, the figure packing reserves per run.

    python tests/benchmarks/bench_packing.py [--runs 1,2,4] [--train 25000] [--epochs 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_SPEED_UP = 1.5  # total throughput of 4 packed runs against 1 alone
TEST_IMAGES = 1_000  # a small evaluation, so the wall-clock window is mostly training
BARRIER_TIMEOUT_S = 240


def child(barrier: Path, index: int, arguments: argparse.Namespace) -> None:
    """One packed run: warm up, report ready, wait for the go, train, print what it did."""
    import torch

    from bench_gpu import synthetic_cifar10
    from engine.config import RunConfig
    from engine.train.loop import train

    splits = synthetic_cifar10(arguments.train)
    splits = dataclasses.replace(splits, test_images=splits.test_images[:TEST_IMAGES],
                                 test_labels=splits.test_labels[:TEST_IMAGES])
    config = RunConfig(dataset="cifar10", model="cifar_resnet18", epochs=arguments.epochs,
                       batch_size=arguments.batch, device="cuda", seed=index)
    warm: dict[str, float] = {}

    def after_warm_up(event: dict) -> None:
        if event["event"] == "epoch" and event["epoch"] == 1:
            warm["samples"] = event["samples_backprop"]
            (barrier / f"ready.{index}").touch()
            go = barrier / "go"
            while not go.exists():
                time.sleep(0.005)
            warm["go"] = float(go.read_text())

    with tempfile.TemporaryDirectory() as folder:
        summary = train(config, Path(folder), data_root=Path(folder), data=(splits, None), on_event=after_warm_up)
    print(json.dumps({"samples": summary["samples_backprop"] - warm["samples"], "end": time.time(),
                      "go": warm["go"], "peak_bytes": torch.cuda.max_memory_allocated()}), flush=True)


def measure(count: int, arguments: argparse.Namespace) -> dict[str, float]:
    """Start `count` runs, release them together, and total what they trained."""
    with tempfile.TemporaryDirectory() as folder:
        barrier = Path(folder)
        command = [sys.executable, __file__, "--child", str(barrier), "--train", str(arguments.train),
                   "--epochs", str(arguments.epochs), "--batch", str(arguments.batch)]
        runs = [subprocess.Popen([*command, "--index", str(index)], stdout=subprocess.PIPE, text=True)
                for index in range(count)]
        deadline = time.monotonic() + BARRIER_TIMEOUT_S
        while len(list(barrier.glob("ready.*"))) < count:
            if time.monotonic() > deadline or any(run.poll() is not None for run in runs):
                for run in runs:
                    run.kill()
                raise SystemExit(f"{count} packed run(s) did not reach the barrier")
            time.sleep(0.01)
        (barrier / "go.tmp").write_text(repr(time.time()))
        (barrier / "go.tmp").rename(barrier / "go")  # whole, so no run reads a half-written time
        reports = []
        for run in runs:
            output, _ = run.communicate()
            if run.returncode != 0:
                raise SystemExit(f"a packed run failed with exit code {run.returncode}")
            reports.append(json.loads(output.strip().splitlines()[-1]))
    window = max(report["end"] for report in reports) - reports[0]["go"]
    return {"total": sum(report["samples"] for report in reports) / window,
            "peak": max(report["peak_bytes"] for report in reports)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="1,2,4", help="counts of runs packed on the GPU")
    parser.add_argument("--train", type=int, default=25_000, help="training images per run")
    parser.add_argument("--epochs", type=int, default=5, help="the first is warm-up, before the barrier")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child is not None:
        child(arguments.child, arguments.index, arguments)
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU")
    print(f"{torch.cuda.get_device_name()}; cifar_resnet18, batch {arguments.batch}, {arguments.train} images x "
          f"{arguments.epochs - 1} measured epochs per run, each run its own process")
    print(f"{'runs':>5} {'total images/s':>15} {'per run':>9} {'vs 1 run':>9} {'peak GiB/run':>13}")
    alone = None
    results = {}
    for count in (int(text) for text in arguments.runs.split(",")):
        result = measure(count, arguments)
        alone = alone or (result["total"] if count == 1 else None)
        ratio = f"{result['total'] / alone:.2f}x" if alone else "?"
        results[count] = result["total"]
        print(f"{count:>5} {result['total']:>15,.0f} {result['total'] / count:>9,.0f} {ratio:>9} "
              f"{result['peak'] / 2**30:>13.2f}", flush=True)
    if 1 in results and 4 in results:
        speed_up = results[4] / results[1]
        verdict = "met" if speed_up >= GOAL_SPEED_UP else "NOT met"
        print(f"goal: 4 packed runs >= {GOAL_SPEED_UP}x the total images/s of 1 run: {speed_up:.2f}x ({verdict})")


if __name__ == "__main__":
    main()
