"""History store and queue speed as the history grows (100, 1,000, 10,000 runs).

Per size, median of several repeats, in seconds:
  history ls --json   the whole CLI command in a fresh process (start-up included)
  refresh read        Store.list_runs(): a full re-read, what a refresh does after a write
  idle refresh        HistoryCache.runs() when nothing was written: the TUI's usual tick
  changed refresh     HistoryCache.runs() after one run changed: only its line is parsed again
  enqueue 100         one 100-run grid enqueued (one store write)
  state update        one run's state changed (a store transaction)
  progress update     one progress.json write, how running runs report progress

    python tests/benchmarks/bench_store.py [--sizes 100,1000,10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from engine import queue
from engine.config import RunConfig
from engine.records import new_record
from engine.runs import ProgressWriter
from engine.store import HistoryCache, Store

SUMMARY = {
    "final_test_acc": 0.9472, "final_test_loss": 0.21, "best_test_acc": 0.95, "best_test_epoch": 14,
    "epochs_run": 15, "steps": 330, "samples_backprop": 21120, "samples_forwarded": 21120,
    "samples_forwarded_scoring": 0, "flops_forward_per_sample": 4758016, "flops_train": 301470000000,
    "time_train_s": 1.6, "time_eval_s": 0.1, "time_overhead_s": 0.1, "time_total_s": 1.8,
    "images_per_s": 12994.0, "budget_used": 1.0, "device": "cpu", "fidelity": "corrected",
}


def median_time(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def filled_store(folder: Path, size: int) -> Store:
    store = Store(folder / "history.json")
    samplers = ("unif-sgd", "p-sgd", "c-sgd", "sb", "ub", "infobatch")
    records = []
    for index in range(size):
        config = RunConfig(sampler=samplers[index % len(samplers)], budget=(0.2, 0.3, 1.0)[index % 3],
                           seed=index % 5)
        record = new_record(config, "bench", state="done")
        record.update(summary=SUMMARY, outcome={"exit_code": 0, "message": "ok"},
                      run_dir=str(folder / str(index + 1)))
        records.append(record)
    store.add_runs(records)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    grid = [RunConfig(seed=seed) for seed in range(100)]
    print(f"{'runs':>6} {'file MB':>8} {'ls --json':>10} {'refresh':>9} {'idle ref. µs':>13} {'changed ref.':>13} {'enqueue100':>11} "
          f"{'state upd':>10} {'progress':>9}")
    for size in (int(value) for value in arguments.sizes.split(",")):
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            store = filled_store(folder, size)
            megabytes = store.path.stat().st_size / 1e6
            command = [sys.executable, "-m", "tui_app.cli", "history", "ls", "--json", "--home", str(folder)]
            listing = median_time(lambda: subprocess.run(command, check=True, capture_output=True), arguments.repeats)
            refresh = median_time(store.list_runs, arguments.repeats)
            cache = HistoryCache(store)
            cache.runs()
            idle = median_time(cache.runs, arguments.repeats)
            changed_times = []
            for repeat in range(arguments.repeats):
                store.update_run(2, priority=repeat + 1)
                changed_times.append(median_time(cache.runs, 1))
            changed = statistics.median(changed_times)
            enqueue = median_time(lambda: queue.enqueue(store, "bench", grid), arguments.repeats)
            state = median_time(lambda: store.update_run(1, state="done"), arguments.repeats)
            writer = ProgressWriter(folder / "progress.json")
            writer.update({"event": "start", "plan": {"total_steps": 1000, "epochs": 10}, "epoch": 0, "device": "cpu"})
            event = {"event": "epoch", "epoch": 1, "step": 100, "test_acc": 0.5, "train_loss": 1.0,
                     "images_per_s": 1000.0}
            progress = median_time(lambda: writer.update(event), arguments.repeats)
            print(f"{size:>6} {megabytes:>8.2f} {listing:>10.3f} {refresh:>9.3f} {idle * 1e6:>13.1f} {changed:>13.3f} {enqueue:>11.3f} "
                  f"{state:>10.3f} {progress:>9.4f}")


if __name__ == "__main__":
    main()
