"""The `budget-tui` command line (Typer): thin commands over the engine's core functions.

Machine output (--json) goes to stdout only; messages and progress go to stderr. Every
domain error is caught once here and printed as one line with its exit code (DESIGN.md):
0 ok, 1 runtime failure, 2 bad input, 3 not found. Must not import torch at start-up.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from engine.errors import BadInput, BudgetTuiError
from engine.paths import DATA_ENV, HOME_ENV, history_path, resolve_data_root, resolve_home

app = typer.Typer(
    name="budget-tui",
    help="Budgeted-training experiment manager: presets, runs, history.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
presets_app = typer.Typer(help="List and show presets.", no_args_is_help=True)
history_app = typer.Typer(help="Browse finished and running runs.", no_args_is_help=True)
app.add_typer(presets_app, name="presets")
app.add_typer(history_app, name="history")

HomeOption = Annotated[
    Optional[Path], typer.Option("--home", help="History and run folders [env BUDGET_TUI_HOME; default ./runs].")
]
DataRootOption = Annotated[
    Optional[Path], typer.Option("--data-root", help="Datasets [env BUDGET_TUI_DATA; default <home>/data].")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


@app.callback()
def main_options(home: HomeOption = None, data_root: DataRootOption = None) -> None:
    """Budgeted-training experiment manager: presets, runs, history."""
    # Given before the command, --home/--data-root apply to it and to any child process.
    if home is not None:
        os.environ[HOME_ENV] = str(home.expanduser().resolve())
    if data_root is not None:
        os.environ[DATA_ENV] = str(data_root.expanduser().resolve())


def fail(error: BudgetTuiError) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(error.exit_code)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


# --- presets
@presets_app.command("ls")
def presets_ls(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """List shipped and user presets."""
    from engine.presets import list_presets

    try:
        presets = list_presets(resolve_home(home))
    except BudgetTuiError as error:
        raise fail(error) from None
    if as_json:
        print_json([{"name": p.name, "source": p.source, "description": p.description,
                     "path": str(p.path)} for p in presets])
        return
    width = max((len(p.name) for p in presets), default=4)
    for preset in presets:
        typer.echo(f"{preset.name:<{width}}  {preset.source:<7}  {preset.description}")


@presets_app.command("show")
def presets_show(name: str, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Show a preset's full config (defaults with the preset's overrides applied)."""
    from engine.presets import get_preset

    try:
        preset = get_preset(name, resolve_home(home))
        config = preset.config().to_dict()
    except BudgetTuiError as error:
        raise fail(error) from None
    payload = {"name": preset.name, "source": preset.source, "description": preset.description,
               "path": str(preset.path), "seeds": preset.seeds, "grid": preset.grid, "config": config}
    if as_json:
        print_json(payload)
        return
    typer.echo(f"{preset.name} ({preset.source}: {preset.path})\n{preset.description}\n")
    for key, value in config.items():
        marker = "*" if key in preset.overrides else " "
        typer.echo(f" {marker} {key:<16} {value}")
    if preset.grid:
        typer.echo(f"\ngrid ({preset.seeds} seed(s) each):")
        for key, values in preset.grid.items():
            typer.echo(f"   {key:<16} {', '.join(map(str, values))}")
    typer.echo("\n* set by the preset")


# --- run
@app.command("run")
def run(
    preset: Annotated[str, typer.Argument(help="Preset name (see `budget-tui presets ls`).")],
    sets: Annotated[list[str], typer.Option("--set", help="Override a config field: key=value.")] = [],
    seeds: Annotated[Optional[int], typer.Option("--seeds", help="Run N seeds: seed, seed+1, ...")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda")] = None,
    home: HomeOption = None,
    data_root: DataRootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train a preset's run(s) now, in this process, with a live progress bar."""
    from engine.config import parse_assignments
    from engine.presets import get_preset

    home_dir = resolve_home(home)
    try:
        assignments: dict[str, Any] = parse_assignments(sets)
        if device is not None:
            assignments["device"] = device
        if seeds is not None and seeds < 1:
            raise BadInput("--seeds must be >= 1")
        chosen = get_preset(preset, home_dir)
        configs = chosen.grid_configs(assignments, seeds=seeds)
        # Everything that can be wrong with the input is found before anything is written.
        from engine.train.loop import check_all_runnable

        datasets = check_all_runnable(configs, resolve_data_root(data_root, home_dir))
    except BudgetTuiError as error:
        raise fail(error) from None

    from engine.runs import execute_run, new_record
    from engine.store import Store
    from tui_app.progress import RunProgress

    store = Store(history_path(home_dir))
    try:
        ids = store.add_runs([new_record(config, preset, state="queued") for config in configs])
    except BudgetTuiError as error:
        raise fail(error) from None
    results = []
    for index, (run_id, config, data) in enumerate(zip(ids, configs, datasets), start=1):
        label = f"run {run_id} [{index}/{len(ids)}] seed {config.seed}"
        with RunProgress(label) as progress:
            try:
                summary = execute_run(store, home_dir, run_id, config, data=data,
                                      data_root=resolve_data_root(data_root, home_dir), on_event=progress.update)
            except KeyboardInterrupt:
                typer.echo(f"\nrun {run_id} interrupted; it resumes from its last checkpoint", err=True)
                raise typer.Exit(130) from None
            except BudgetTuiError as error:
                raise fail(error) from None
            except Exception as error:  # the record says failed and keeps the traceback file
                typer.echo(f"run {run_id} failed: {type(error).__name__}: {error}", err=True)
                raise typer.Exit(1) from None
        results.append({"id": run_id, "seed": config.seed, "summary": summary})
        if not as_json:
            typer.echo(format_summary(run_id, summary))
    if as_json:
        print_json(results)


def format_summary(run_id: int, summary: dict[str, Any]) -> str:
    lines = [
        f"run {run_id}: final test acc {summary['final_test_acc']:.2%} "
        f"(best epoch {summary['best_test_epoch']}: {summary['best_test_acc']:.2%}, chosen on test)",
        f"  {summary['steps']} steps, {summary['samples_backprop']:,} samples backpropagated, "
        f"{summary['samples_forwarded']:,} forwarded, {summary['flops_train'] / 1e12:.3f} TFLOP, "
        f"{summary['budget_used']:.0%} of the nominal steps",
        f"  time: train {summary['time_train_s']:.1f}s, eval {summary['time_eval_s']:.1f}s, "
        f"overhead {summary['time_overhead_s']:.1f}s; {summary['images_per_s']:,.0f} images/s",
    ]
    if "test_acc_at_best_val" in summary:
        lines.insert(1, f"  test acc at best validation epoch {summary['best_val_epoch']}: "
                        f"{summary['test_acc_at_best_val']:.2%}")
    return "\n".join(lines)


# --- history
@history_app.command("ls")
def history_ls(
    where: Annotated[list[str], typer.Option("--where", help="Filter: key=value on config or state.")] = [],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List runs in the history."""
    from engine.history import filter_runs, parse_filters
    from engine.store import Store

    try:
        runs = filter_runs(Store(history_path(resolve_home(home))).list_runs(), parse_filters(where))
    except BudgetTuiError as error:
        raise fail(error) from None
    if as_json:
        print_json(runs)
        return
    typer.echo(f"{'id':>5}  {'state':<11} {'preset':<16} {'dataset':<10} {'sampler':<13} "
               f"{'aug':<9} {'budget':>6} {'seed':>4}  {'final acc':>9}")
    for record in runs:
        config = record.get("config", {})
        summary = record.get("summary") or {}
        accuracy = f"{summary['final_test_acc']:.2%}" if "final_test_acc" in summary else "-"
        typer.echo(
            f"{record['id']:>5}  {record.get('state', '?'):<11} {record.get('preset', ''):<16} "
            f"{config.get('dataset', ''):<10} {config.get('sampler', ''):<13} "
            f"{config.get('augmentation', ''):<9} {config.get('budget', 0):>6g} "
            f"{config.get('seed', 0):>4}  {accuracy:>9}"
        )


@history_app.command("show")
def history_show(run_id: int, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Show one run: config, state, summary and per-epoch metrics."""
    from engine.history import load_metrics
    from engine.store import Store

    try:
        record = Store(history_path(resolve_home(home))).get_run(run_id)
    except BudgetTuiError as error:
        raise fail(error) from None
    record["metrics"] = load_metrics(record)
    if as_json:
        print_json(record)
        return
    typer.echo(f"run {run_id}: {record['state']} (preset {record.get('preset')}, "
               f"created {record.get('created_at')})")
    for key, value in record.get("config", {}).items():
        typer.echo(f"  {key:<16} {value}")
    if record.get("summary"):
        typer.echo(format_summary(run_id, record["summary"]))
    elif record.get("outcome"):
        typer.echo(f"outcome: {record['outcome'].get('message')}")
    if record["metrics"]:
        typer.echo(f"\n{'epoch':>5} {'step':>7} {'lr':>9} {'train loss':>10} {'test acc':>9}")
        for row in record["metrics"]:
            typer.echo(f"{row['epoch']:>5} {row['step']:>7} {row['lr']:>9.2e} "
                       f"{row['train_loss']:>10.4f} {row['test_acc']:>9.2%}")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="budget-tui")


if __name__ == "__main__":
    sys.exit(main())
