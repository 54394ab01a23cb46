"""`python -m engine.child HOME RUN_ID`: the process a worker starts for one queued run.

It dies with its worker (Linux PR_SET_PDEATHSIG), turns SIGTERM into a clean
"interrupted" record, exits at once if its run was cancelled while it started, and
otherwise runs engine.runs.execute_run, which records the outcome itself. Events go to stdout, which the worker sends to <run dir>/log.txt.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
from pathlib import Path

from engine.config import RunConfig
from engine.errors import BudgetTuiError
from engine.events import TrainingEvent
from engine.paths import history_path, resolve_data_root
from engine.records import TransitionRefused
from engine.runs import Interrupted, event_line, execute_run
from engine.store import Store

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGTERM us when the worker dies, so no run outlives its supervisor."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the run then finishes on its own and records its outcome


def main(argv: list[str] | None = None, *, supervised_by_scheduler: bool = False) -> int:
    """Run the queued run HOME RUN_ID here. `supervised_by_scheduler`: this process is a
    cluster job (Slurm), whose SIGTERM means cancel, time limit, preemption or requeue; it
    then exits without recording anything, as the worker reads the reason from the scheduler
    and a requeued job must find its run still running."""
    parser = argparse.ArgumentParser(prog="python -m engine.child")
    parser.add_argument("home", type=Path)
    parser.add_argument("run_id", type=int)
    parser.add_argument("--data-root", type=Path, default=None)
    arguments = parser.parse_args(argv)
    die_with_parent()

    def on_sigterm(signum: int, frame: object) -> None:
        if supervised_by_scheduler:
            sys.stdout.flush()
            os._exit(128 + signum)
        raise Interrupted("stopped by SIGTERM")

    def print_event(event: TrainingEvent) -> None:
        line = event_line(event)
        if line is not None:
            print(line, flush=True)

    signal.signal(signal.SIGTERM, on_sigterm)
    store = Store(history_path(arguments.home))
    try:
        record = store.get_run(arguments.run_id)
        config = RunConfig.from_dict(record["config"])
        execute_run(store, arguments.home, arguments.run_id, config,
                    data_root=resolve_data_root(arguments.data_root, arguments.home),
                    on_event=print_event)
    except Interrupted:
        return 143
    except TransitionRefused as error:  # cancelled while this process started: nothing to do
        print(f"not started: {error}", flush=True)
        return 0
    except BudgetTuiError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except Exception:  # execute_run has recorded it as failed, with the traceback file
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
