"""The `budget-tui` command line (Typer): thin commands over the engine's core functions.

Machine output (--json) goes to stdout only; messages and progress go to stderr. Every
domain error is caught once here and printed as one line with its exit code (DESIGN.md):
0 ok, 1 runtime failure, 2 bad input, 3 not found, 4 refused by a run's state. Must not
import torch at start-up.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

try:  # newer typer vendors click as typer._click; older releases use click itself
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:
    from click.exceptions import ClickException, NoArgsIsHelpError

from engine.errors import TRACEBACK_ENV, BadInput, BudgetTuiError, NotFound, explain, one_line
from engine.paths import DATA_ENV, HOME_ENV, history_path, resolve_data_root, resolve_home
from tui_app.cli_common import DataRootOption, HomeOption, JsonOption, print_json
from tui_app.commands_runs import register as register_run_commands
from tui_app.formatting import duration, format_summary, percent, rate


class DomainErrorsToExitCodes(TyperGroup):
    """The one place an error of any command becomes one line on stderr and its exit code
    (DESIGN.md): no traceback and no box for a user's mistake or a fault of the files."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, ClickException):
            raise  # the command line's own control flow: --help, usage errors, typer.Exit
        except Exception as error:
            if os.environ.get(TRACEBACK_ENV) and not isinstance(error, BudgetTuiError):
                raise
            message, exit_code = explain(error)
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(exit_code) from None

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Usage errors as one line (`error: ...`) with exit 2, instead of typer's box."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as error:  # a bare command group: its help, as before
            error.show()
            sys.exit(error.exit_code)
        except ClickException as error:
            context = getattr(error, "ctx", None)
            hint = f" (see '{context.command_path} --help')" if context is not None else ""
            typer.echo(f"error: {one_line(error.format_message())}{hint}", err=True)
            sys.exit(error.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        # Without standalone mode, an Exit's code is returned rather than exited with.
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=DomainErrorsToExitCodes,
    name="budget-tui",
    help="Budgeted-training experiment manager: presets, runs, history. "
         "Run `budget-tui` with no command to open the terminal UI.",
    context_settings={"help_option_names": ["-h", "--help"]},  # every command inherits -h
    pretty_exceptions_enable=False,
)
presets_app = typer.Typer(help="List and show presets.", no_args_is_help=True)
history_app = typer.Typer(help="Browse finished and running runs; remove finished ones.", no_args_is_help=True)
queue_app = typer.Typer(help="Queue runs for the worker; list, cancel, retry, prioritise.", no_args_is_help=True)
worker_app = typer.Typer(help="Execute the queue: `worker` runs it here; status and stop manage it.")
app.add_typer(presets_app, name="presets")
app.add_typer(history_app, name="history")
app.add_typer(queue_app, name="queue")
app.add_typer(worker_app, name="worker")

def _print_version(asked: bool) -> None:
    if asked:
        from engine.records import code_version

        typer.echo(f"budget-tui {code_version()}")
        raise typer.Exit()


VersionOption = Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                             help="Print the version (and git commit in a checkout) and exit.")]


@app.callback(invoke_without_command=True)
def main_options(context: typer.Context, home: HomeOption = None, data_root: DataRootOption = None,
                 version: VersionOption = False) -> None:
    """Budgeted-training experiment manager: presets, runs, history. Without a command: the terminal UI."""
    # Given before the command, --home/--data-root apply to it and to any child process.
    if home is not None:
        os.environ[HOME_ENV] = str(home.expanduser().resolve())
    if data_root is not None:
        os.environ[DATA_ENV] = str(data_root.expanduser().resolve())
    if context.invoked_subcommand is None:
        from tui_app.app import run_tui  # textual is imported only when the UI opens

        run_tui(resolve_home(home), data_root.expanduser().resolve() if data_root is not None else None)


# --- presets
@presets_app.command("ls")
def presets_ls(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """List shipped and user presets; one that does not load is listed with its error."""
    from engine.presets import scan_presets

    listings = scan_presets(resolve_home(home))
    if as_json:
        print_json([{"name": listing.name, "source": listing.source, "path": str(listing.path),
                     "description": listing.preset.description if listing.preset else None,
                     "error": listing.error} for listing in listings])
    else:
        width = max((len(listing.name) for listing in listings), default=4)
        for listing in listings:
            about = listing.preset.description if listing.preset else f"BROKEN: {listing.error}"
            typer.echo(f"{listing.name:<{width}}  {listing.source:<7}  {about}")
    broken = [listing.name for listing in listings if listing.error]
    if broken:
        typer.echo(f"warning: {len(broken)} preset(s) do not load and were skipped: {', '.join(broken)}", err=True)


@presets_app.command("show")
def presets_show(name: str, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Show a preset's full config (defaults with the preset's overrides applied)."""
    from engine.presets import get_preset

    preset = get_preset(name, resolve_home(home))
    config = preset.config().to_dict()
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
    from engine.store import Store

    store = Store(history_path(home_dir))
    store.list_runs()  # a damaged history or unusable home is reported before any work
    assignments: dict[str, Any] = parse_assignments(sets)
    if device is not None:
        assignments["device"] = device
    if seeds is not None and seeds < 1:
        raise BadInput("--seeds must be >= 1")
    chosen = get_preset(preset, home_dir)
    configs = chosen.grid_configs(assignments, seeds=seeds)
    # Everything that can be wrong with the input is found before anything is written.
    from engine.train.preflight import check_all_runnable

    datasets = check_all_runnable(configs, resolve_data_root(data_root, home_dir))

    from engine.processes import process_identity
    from engine.records import RunState, new_record, now
    from engine.runs import execute_run
    from tui_app.progress import RunProgress

    results = []
    for index, (config, data) in enumerate(zip(configs, datasets), start=1):
        # Recorded when it starts, as running in this process: a worker never claims it.
        (run_id,) = store.add_runs([new_record(config, preset, state=RunState.RUNNING, started_at=now(),
                                               process=process_identity(os.getpid()))])
        label = f"run {run_id} [{index}/{len(configs)}] seed {config.seed}"
        with RunProgress(label) as progress:
            try:
                summary = execute_run(store, home_dir, run_id, config, data=data,
                                      data_root=resolve_data_root(data_root, home_dir), on_event=progress.update,
                                      log_as="in the foreground")
            except KeyboardInterrupt:
                typer.echo(f"\nrun {run_id} interrupted; it resumes from its last checkpoint", err=True)
                raise typer.Exit(130) from None
            except BudgetTuiError:
                raise  # a domain error: one line and its exit code, from the app's handler
            except Exception as error:  # the record says failed and keeps the traceback file
                typer.echo(f"run {run_id} failed: {type(error).__name__}: {error}", err=True)
                raise typer.Exit(1) from None
        results.append({"id": run_id, "seed": config.seed, "summary": summary})
        if not as_json:
            typer.echo(format_summary(run_id, summary))
    if as_json:
        print_json(results)


# --- history
@history_app.command("ls")
def history_ls(
    where: Annotated[list[str], typer.Option("--where", help="Filter: key=value on config or state.")] = [],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List runs in the history (filters: config fields, state, preset, tag=a,b, note=text)."""
    from engine.annotations import annotations
    from engine.history import filter_runs, parse_filters
    from engine.store import Store

    runs = filter_runs(Store(history_path(resolve_home(home))).list_runs(), parse_filters(where))
    if as_json:
        print_json([annotations(record) for record in runs])
        return
    typer.echo(f"{'id':>5}  {'state':<11} {'preset':<16} {'dataset':<10} {'sampler':<13} "
               f"{'aug':<9} {'budget':>6} {'seed':>4}  {'final acc':>9}  tags / note")
    for record in runs:
        config = record.get("config", {})
        summary = record.get("summary") or {}
        accuracy = percent(summary.get("final_test_acc"), 2)
        typer.echo(
            f"{record['id']:>5}  {record.get('state', '?'):<11} {record.get('preset', ''):<16} "
            f"{config.get('dataset', ''):<10} {config.get('sampler', ''):<13} "
            f"{config.get('augmentation', ''):<9} {config.get('budget', 0):>6g} "
            f"{config.get('seed', 0):>4}  {accuracy:>9}{_tags_and_note(record)}"
        )


def _tags_and_note(record: dict[str, Any]) -> str:
    """The listing's last column: the tags, then the note's first line, shortened."""
    parts = [",".join(record["tags"])] if record.get("tags") else []
    lines = (record.get("note") or "").splitlines()
    if lines:
        shortened = len(lines[0]) > 40 or len(lines) > 1
        parts.append(f"# {lines[0][:40]}{'...' if shortened else ''}")
    return f"  {' '.join(parts)}" if parts else ""


@history_app.command("show")
def history_show(run_id: int, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Show one run: config, state, tags and note, summary and per-epoch metrics."""
    from engine.annotations import annotations
    from engine.history import load_metrics
    from engine.store import Store

    record = annotations(Store(history_path(resolve_home(home))).get_run(run_id))
    record["metrics"] = load_metrics(record)
    if as_json:
        print_json(record)
        return
    typer.echo(f"run {run_id}: {record['state']} (preset {record.get('preset')}, "
               f"created {record.get('created_at')})")
    if record["tags"]:
        typer.echo(f"  tags: {', '.join(record['tags'])}")
    if record["note"]:
        typer.echo(f"  note: {record['note']}")
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


# --- queue
def _store(home: Path | None):
    from engine.store import Store

    return Store(history_path(resolve_home(home)))


@queue_app.command("add")
def queue_add(
    preset: Annotated[str, typer.Argument(help="Preset name (see `budget-tui presets ls`).")],
    sets: Annotated[list[str], typer.Option("--set", help="Override a config field: key=value.")] = [],
    grids: Annotated[list[str], typer.Option("--grid", help="Sweep a field: key=v1,v2,...")] = [],
    seeds: Annotated[Optional[int], typer.Option("--seeds", help="Seeds per grid point.")] = None,
    priority: Annotated[int, typer.Option("--priority", help="Higher runs first.")] = 0,
    home: HomeOption = None,
    data_root: DataRootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queue a preset's runs (its grid x --grid x seeds) in one store write, after the checks
    `run` makes: model known, dataset files in the data root."""
    from engine.config import parse_assignments
    from engine.preflight import check_queueable
    from engine.presets import get_preset, parse_grid_values
    from engine.queue import enqueue, validate_priority

    home_dir = resolve_home(home)
    assignments = parse_assignments(sets)
    grid: dict[str, list[Any]] = {}
    for item in grids:
        key, sep, values = item.partition("=")
        if not sep:
            raise BadInput(f"expected --grid key=v1,v2, got {item!r}")
        grid[key.strip().replace("-", "_")] = parse_grid_values(key.strip().replace("-", "_"), values)
    if seeds is not None and seeds < 1:
        raise BadInput("--seeds must be >= 1")
    configs = get_preset(preset, home_dir).grid_configs(assignments, grid, seeds)
    # The checks `run` makes before it starts, so a run the worker could not start is never queued.
    priority = validate_priority(priority)
    check_queueable(configs, resolve_data_root(data_root, home_dir))
    ids = enqueue(_store(home), preset, configs, priority)
    if as_json:
        print_json({"ids": ids})
    else:
        typer.echo(f"queued {len(ids)} run(s): {', '.join(map(str, ids))}")


@queue_app.command("ls")
def queue_ls(
    show_all: Annotated[bool, typer.Option("--all", help="Also finished runs.")] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queued, running and interrupted runs with progress and ETA."""
    from engine.queue import FINISHED, queue_order, reconcile
    from engine.runs import read_progress
    from engine.slurm import display_state

    store = _store(home)
    reconcile(store)
    runs = sorted((r for r in store.list_runs() if show_all or r.get("state") not in FINISHED
                   or r.get("state") == "interrupted"), key=queue_order)
    for record in runs:
        record["progress"] = read_progress(record) if record.get("state") == "running" else {}
    if as_json:
        print_json(runs)
        return
    typer.echo(f"{'id':>5} {'state':<11} {'prio':>4} {'preset':<14} {'sampler':<12} {'aug':<9} "
               f"{'budget':>6} {'seed':>4} {'done':>5} {'acc':>6} {'img/s':>7} {'ETA':>8}")
    for record in runs:
        config, progress = record.get("config", {}), record["progress"]
        done = f"{progress.get('step', 0) / progress['steps']:.0%}" if progress.get("steps") else "-"
        summary = record.get("summary") or {}
        accuracy = percent(progress.get("test_acc", summary.get("final_test_acc")))
        speed = rate(progress.get("images_per_s"))
        eta = duration(progress.get("eta_s"))
        typer.echo(f"{record['id']:>5} {display_state(record):<11} {record.get('priority', 0):>4} "
                   f"{record.get('preset', ''):<14.14} {config.get('sampler', ''):<12} "
                   f"{config.get('augmentation', ''):<9} {config.get('budget', 0):>6g} {config.get('seed', 0):>4} "
                   f"{done:>5} {accuracy:>6} {speed:>7} {eta:>8}")


RunIds = Annotated[list[int], typer.Argument(help="Run ids.")]


def _report(outcome: dict[int, str], as_json: bool) -> None:
    """Each run's result; then exit 4 if a run's state refused the request (the other runs
    were still handled), so a script sees it."""
    from engine.errors import WrongState
    from engine.queue import refused

    if as_json:
        print_json({str(run_id): result for run_id, result in outcome.items()})
    else:
        for run_id, result in outcome.items():
            typer.echo(f"{run_id}: {result}")
    refusals = refused(outcome)
    if refusals:
        raise WrongState(f"{len(refusals)} of {len(outcome)} run(s) refused by their state: "
                         f"{', '.join(f'{run_id} ({outcome[run_id]})' for run_id in refusals)}")


@queue_app.command("cancel")
def queue_cancel(run_ids: RunIds, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Cancel runs: queued ones at once, running ones by stopping their process group."""
    from engine.queue import cancel

    _report(cancel(_store(home), run_ids), as_json)


@queue_app.command("retry")
def queue_retry(
    run_ids: RunIds,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete the results so far and start over.")] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queue failed, cancelled or interrupted runs again; they resume from their last checkpoint."""
    from engine.queue import retry

    _report(retry(_store(home), run_ids, fresh=fresh), as_json)


@queue_app.command("priority")
def queue_priority(
    priority: Annotated[int, typer.Argument(help="New priority (higher runs first).")],
    run_ids: RunIds,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change the priority of runs (of any state: a retried run keeps it)."""
    from engine.queue import set_priority, validate_priority

    set_priority(_store(home), run_ids, validate_priority(priority))
    if as_json:
        print_json({"ids": run_ids, "priority": priority})
    else:
        typer.echo(f"priority {priority}: run(s) {', '.join(map(str, run_ids))}")


@queue_app.command("clear")
def queue_clear(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Cancel every run still waiting in the queue (running runs are left alone)."""
    from engine.queue import clear_queued

    ids = clear_queued(_store(home))
    if as_json:
        print_json({"cancelled": ids})
    else:
        typer.echo(f"cleared {len(ids)} queued run(s)")


# --- worker
@worker_app.callback(invoke_without_command=True)
def worker(
    context: typer.Context,
    gpus: Annotated[Optional[str], typer.Option("--gpus", help="One slot per GPU, e.g. 0,1; `cpu` for a CPU slot.")] = None,
    slots: Annotated[Optional[int], typer.Option(
        "--slots", help="N runs side by side on the CPU, the machine's threads split between them.")] = None,
    slots_per_gpu: Annotated[Optional[int], typer.Option(
        "--slots-per-gpu", help="N runs side by side on each GPU (with --pack-memory: at most N).")] = None,
    pack_memory: Annotated[Optional[float], typer.Option(
        "--pack-memory", help="Pack runs onto each GPU while their peak memory stays under this fraction "
                              "of it, e.g. 0.9.")] = None,
    run_memory: Annotated[Optional[str], typer.Option(
        "--run-memory", help="With --pack-memory: the memory of a run whose peak is not yet known, e.g. 6G "
                             "(default: it takes a whole GPU).")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Keep running after this terminal closes.")] = False,
    once: Annotated[bool, typer.Option("--once", help="Drain the queue, then exit.")] = False,
    auto_resume: Annotated[bool, typer.Option("--auto-resume", help="Queue interrupted runs again on start.")] = False,
    executor: Annotated[str, typer.Option("--executor", help="local (this machine) or slurm (one job per run).")] = "local",
    partition: Annotated[Optional[str], typer.Option("--partition", help="Slurm partition.")] = None,
    time_limit: Annotated[Optional[int], typer.Option("--time", help="Slurm time limit per job, minutes.")] = None,
    cpus: Annotated[Optional[int], typer.Option("--cpus", help="Slurm CPUs per run.")] = None,
    gpus_per_run: Annotated[Optional[int], typer.Option("--gpus-per-run", help="Slurm GPUs per run.")] = None,
    mem: Annotated[Optional[str], typer.Option("--mem", help="Slurm memory per run, e.g. 8G.")] = None,
    account: Annotated[Optional[str], typer.Option("--account", help="Slurm account.")] = None,
    sbatch: Annotated[list[str], typer.Option("--sbatch", help="Extra sbatch flag, e.g. --sbatch=--qos=high.")] = [],
    max_jobs: Annotated[Optional[int], typer.Option(
        "--max-jobs", help="Slurm jobs in flight at once (with --array: tasks of the array running at once).")] = None,
    array: Annotated[Optional[int], typer.Option(
        "--array", help="Submit up to N queued runs as one Slurm job array, the next once it has ended "
                        "(0: one job per run).")] = None,
    home: HomeOption = None,
    data_root: DataRootOption = None,
    on_drain: Annotated[Optional[str], typer.Option(
        "--on-drain", help="Shell command run each time the queue drains, with BUDGET_TUI_DONE, "
                           "BUDGET_TUI_FAILED, BUDGET_TUI_CANCELLED, BUDGET_TUI_INTERRUPTED and "
                           "BUDGET_TUI_HOME set; its failure is reported, never fatal.")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Each run's start and end, and the drain notice, as one JSON object per line "
                       "(with --detach: in the log, and the pid and log printed as JSON).")] = False,
) -> None:
    """Execute queued runs: here, each in its own process group, one per slot (one per GPU,
    or several per device with --slots, --slots-per-gpu, --pack-memory); or with --executor
    slurm, each as a Slurm job, or many as one job array with --array (settings also in
    <home>/slurm.toml). Prints a line per run
    as it starts and ends, and "queue drained: ..." (with a bell on a terminal) when the
    queue empties; a detached worker writes them to <home>/worker.log."""
    if context.invoked_subcommand is not None:
        return
    from engine.worker import WorkerOptions, prepare_worker, start_detached_worker

    home_dir = resolve_home(home)
    options = WorkerOptions(gpus=gpus, slots=slots, slots_per_gpu=slots_per_gpu, pack_memory=pack_memory,
                            run_memory=run_memory, once=once, auto_resume=auto_resume, executor=executor,
                            data_root=data_root, as_json=as_json, on_drain=on_drain,
                            slurm={"partition": partition, "time": time_limit, "cpus": cpus,
                                   "gpus_per_run": gpus_per_run, "mem": mem, "account": account,
                                   "sbatch": sbatch or None, "max_jobs": max_jobs, "array": array})
    prepared = prepare_worker(home_dir, options)  # every option checked, here and now, before anything starts
    if detach:
        pid, log = start_detached_worker(home_dir, options)
        if as_json:
            print_json({"pid": pid, "log": str(log)})
        else:
            typer.echo(f"worker started in the background: pid {pid}, log {log}")
        return
    prepared.run()


@worker_app.command("status")
def worker_status(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Live workers of this home; with one on this host, how busy this host's GPUs are (nvidia-smi)."""
    from engine.worker import describe_workers

    workers = describe_workers(resolve_home(home))
    if as_json:
        print_json(workers)
    elif not workers:
        typer.echo("no worker running")
    else:
        for info in workers:
            where = f"remote on host {info.get('host')}" if info["remote"] else "on this host"
            typer.echo(f"worker {info['pid']} ({where}) since {info.get('started_at', '?')} "
                       f"on {', '.join(info.get('slots', [])) or '?'}")
        here = next((info for info in workers if not info["remote"]), None)
        if here is not None:
            for line in _gpu_lines(here["gpus"], here["gpus_problem"]):
                typer.echo(line)


def _gpu_lines(gpus: list[dict[str, Any]], problem: str | None) -> list[str]:
    """One line per GPU of this host: "gpu 0: 87% busy, 12.3 of 79.6 GiB used"."""
    from engine.scheduling import GIB, NO_NVIDIA_SMI

    if not gpus:
        return ["no GPU found" + (f" ({problem})" if problem and problem != NO_NVIDIA_SMI else "")]

    def gib(value: int | None) -> str:
        return "?" if value is None else f"{value / GIB:.1f}"

    def busy(percent: int | None) -> str:
        return "?" if percent is None else f"{percent}%"

    return [f"gpu {gpu['gpu']}: {busy(gpu['utilization_percent'])} busy, "
            f"{gib(gpu['memory_used_bytes'])} of {gib(gpu['memory_total_bytes'])} GiB used" for gpu in gpus]


@worker_app.command("stop")
def worker_stop(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Stop every worker of this home; their running runs become interrupted (resumable)."""
    from engine.worker import stop_workers

    stopped = stop_workers(resolve_home(home))
    if as_json:
        print_json({"stopped": stopped})
    else:
        typer.echo(f"stopped {len(stopped)} worker(s)" if stopped else "no worker running")


# --- compare
@app.command("compare")
def compare(
    preset: Annotated[Optional[str], typer.Option("--preset", help="Only runs queued from this preset.")] = None,
    where: Annotated[list[str], typer.Option("--where", help="Filter: key=value on config or state.")] = [],
    rows: Annotated[str, typer.Option("--rows", help="Config fields down the side, comma-separated.")] = "sampler",
    cols: Annotated[str, typer.Option("--cols", help="Config fields across the top, comma-separated.")] = "augmentation,budget",
    metric: Annotated[str, typer.Option("--metric", help="Cell value: final_test_acc, best_test_acc, "
                                         "time_total_s, images_per_s, flops_train, flops_budget_used, usage_entropy, ...")] = "final_test_acc",
    baseline: Annotated[Optional[str], typer.Option(
        "--baseline", help="Delta against this cell, k=v,k=v (default sampler=unif-sgd,augmentation=standard).")] = None,
    output_format: Annotated[str, typer.Option("--format", help="table, csv, md, latex or json.")] = "table",
    chart: Annotated[Optional[str], typer.Option(
        "--chart", help="Also draw: budget, frontier, frontier-time, curves, curves-forwarded or usage.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write the chart to a .png or .svg file.")] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pivot of the history: mean +- std over seeds, deltas against a baseline, Welch's t-test."""
    from engine.analysis.charts import CHARTS, build_chart
    from engine.analysis.export import FORMATS, render
    from engine.analysis.metrics import check_choice
    from engine.analysis.pivot import build_pivot
    from engine.analysis.plots import FIGURE_SUFFIXES
    from engine.config import convert_value, parse_assignments
    from engine.history import filter_runs, parse_filters
    from engine.presets import preset_paths
    from engine.store import Store

    # Every option is checked before the history is read, so a typo is named as such.
    output_format = "json" if as_json else output_format
    check_choice(output_format, FORMATS, "format")
    if chart is not None:
        check_choice(chart, CHARTS, "chart")
    if plot is not None and plot.suffix.lower() not in FIGURE_SUFFIXES:  # refused before any output
        raise BadInput(f"--plot writes {' or '.join(FIGURE_SUFFIXES)} files, got {plot.name!r}")
    if chart is not None and plot is None and output_format != "table":  # it would be dropped unseen
        raise BadInput(f"--chart {chart} draws in the terminal only under --format table; "
                       f"add --plot FILE.svg to write it beside --format {output_format}")
    row_names, col_names = _names(rows, "--rows"), _names(cols, "--cols")
    filters = parse_filters([*where, *([f"preset={preset}"] if preset else [])])
    baseline_cell = ({key: convert_value(key, value) for key, value in parse_assignments(baseline.split(",")).items()}
                     if baseline else None)
    home_dir = resolve_home(home)
    history = Store(history_path(home_dir)).list_runs()
    if preset and preset not in preset_paths(home_dir) and all(run.get("preset") != preset for run in history):
        raise BadInput(f"unknown preset {preset!r}: neither a preset file nor the preset of any run; "
                       f"presets: {', '.join(preset_paths(home_dir)) or '(none)'}")
    runs = filter_runs(history, filters)
    if not runs and filters:
        described = " ".join(f"{key}={value}" for key, value in filters.items())
        raise NotFound(f"no run in the history matches {described}")
    pivot = build_pivot(runs, rows=row_names, cols=col_names, metric=metric, baseline=baseline_cell)
    figure = build_chart(chart or "budget", runs, metric) if (chart or plot) else None
    typer.echo(render(pivot, output_format), nl=False)  # an unknown format is refused here
    if figure is not None and plot is not None:
        from engine.analysis.plots import write_figure

        typer.echo(f"wrote {write_figure(figure, plot)}", err=True)
    elif figure is not None and output_format == "table":
        from engine.analysis.plots import render_text

        width = min(shutil.get_terminal_size((100, 30)).columns, 120)
        typer.echo("\n" + render_text(figure, width=width, height=max(12, width // 4)))


def _names(text: str, option: str) -> list[str]:
    """Comma-separated field names; an empty one is a typo, not a wish for fewer fields."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise BadInput(f"{option} {text!r} has an empty name; give field names separated by commas")
    return names


# --- commands on single runs (tui_app/commands_runs.py): log, rerun, diff, tag, untag, note, history rm
register_run_commands(app, history_app)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="budget-tui")


if __name__ == "__main__":
    sys.exit(main())
