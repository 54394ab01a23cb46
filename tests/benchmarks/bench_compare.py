"""How long the compare pivot takes as the history grows (100 and 10,000 runs).

Per size, median of several repeats, in seconds:
  pivot           build_pivot over the done runs (grouping, mean +- std, deltas, Welch tests)
  pivot + table   the pivot rendered as the text table
  command         `budget-tui compare --json` in a fresh process (start-up and file read included)
The runs vary over 6 samplers x 3 augmentations x 3 budgets x seeds, like digits-paper.

    python tests/benchmarks/bench_compare.py [--sizes 100,10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_store import SUMMARY, median_time

from engine.analysis.export import render
from engine.analysis.pivot import build_pivot
from engine.config import RunConfig
from engine.records import new_record
from engine.store import Store

SAMPLERS = ("unif-sgd", "p-sgd", "c-sgd", "sb", "ub", "infobatch")
AUGMENTATIONS = ("standard", "mixup", "ricap")
BUDGETS = (0.2, 0.3, 1.0)


def study_records(size: int) -> list[dict]:
    draw = random.Random(0)
    records = []
    for index in range(size):
        sampler = SAMPLERS[index % 6]
        augmentation = AUGMENTATIONS[(index // 6) % 3]
        budget = BUDGETS[(index // 18) % 3]
        config = RunConfig(dataset="digits", sampler=sampler, augmentation=augmentation, budget=budget,
                           seed=index // 54)
        record = new_record(config, "bench", state="done")
        record.update(summary={**SUMMARY, "final_test_acc": 0.9 + draw.gauss(0, 0.01)})
        records.append(record)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,10000")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            home = Path(folder) / str(size)
            records = study_records(size)
            Store(home / "history.json").add_runs(records)
            runs = Store(home / "history.json").list_runs()
            command = [sys.executable, "-m", "tui_app.cli", "compare", "--home", str(home), "--json"]
            results[size] = (
                median_time(lambda: build_pivot(runs), args.repeats),
                median_time(lambda: render(build_pivot(runs), "table"), args.repeats),
                median_time(lambda: subprocess.run(command, check=True, capture_output=True), args.repeats),
            )
    print(f"{'runs':>7} {'pivot':>9} {'pivot + table':>14} {'command':>9}")
    for size, (pivot, table, command) in results.items():
        print(f"{size:>7,} {pivot:>8.4f}s {table:>13.4f}s {command:>8.3f}s")
    if len(sizes) > 1:
        small, large = results[sizes[0]], results[sizes[-1]]
        print(f"ratio {sizes[-1]:,}/{sizes[0]:,} runs: pivot {large[0] / small[0]:.1f}x, "
              f"table {large[1] / small[1]:.1f}x, command {large[2] / small[2]:.2f}x")


if __name__ == "__main__":
    main()
