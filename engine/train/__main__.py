"""`python -m engine.train RUN_DIR [--data-root DIR]`: run or resume the run in RUN_DIR.

RUN_DIR holds config.json; events are printed to stdout as JSON lines (one per epoch and
a final summary) so a parent process can follow the run. Exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.config import RunConfig
from engine.errors import BudgetTuiError
from engine.events import TrainingEvent
from engine.paths import resolve_data_root, resolve_home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.train", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data-root", type=Path, default=None)
    arguments = parser.parse_args(argv)
    from engine.train.loop import train

    def print_event(event: TrainingEvent) -> None:
        if event["event"] != "step":
            print(json.dumps(event, default=str), flush=True)

    try:
        config = RunConfig.from_dict(json.loads((arguments.run_dir / "config.json").read_text()))
        data_root = resolve_data_root(arguments.data_root, resolve_home())
        train(config, arguments.run_dir, data_root=data_root, on_event=print_event)
    except (OSError, json.JSONDecodeError) as error:
        print(f"error: cannot read {arguments.run_dir / 'config.json'}: {error}", file=sys.stderr)
        return 2
    except BudgetTuiError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
