"""`budget-tui` commands on single runs: log, rerun, diff, tag, untag, note, history rm and
history prune-checkpoints.

Thin like the others (parse, call one engine function, print; --json on stdout), and
registered on the app by tui_app.cli. Must not import torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from engine.errors import BadInput
from engine.paths import history_path, resolve_data_root, resolve_home
from tui_app.cli_common import DataRootOption, HomeOption, JsonOption, print_json

RunId = Annotated[int, typer.Argument(help="Run id.", show_default=False)]


def register(app: typer.Typer, history_app: typer.Typer) -> None:
    app.command("log")(log)
    app.command("rerun")(rerun)
    app.command("diff")(diff)
    app.command("tag")(tag)
    app.command("untag")(untag)
    app.command("note")(note)
    history_app.command("rm")(history_rm)
    history_app.command("prune-checkpoints")(history_prune_checkpoints)


def _store(home: Any):
    from engine.store import Store

    return Store(history_path(resolve_home(home)))


def log(
    run_id: RunId,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Go on printing what the run writes "
                                         "until it ends (waits for a queued run to start).")] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a run's log, <home>/<id>/log.txt, with its events (JSON lines in the file) as
    readable lines; --json gives the file's text as it is."""
    from engine.logs import follow_log, log_path, read_log
    from tui_app.formatting import log_lines

    if as_json and follow:
        raise BadInput("--json prints the whole log at once; leave out --follow")
    home_dir, store = resolve_home(home), _store(home)
    if follow:
        try:
            for line in log_lines(follow_log(store, home_dir, run_id)):
                typer.echo(line)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        return
    record = store.get_run(run_id)
    text = read_log(home_dir, record)
    if as_json:
        print_json({"id": run_id, "state": record.get("state"), "path": str(log_path(home_dir, record)),
                    "log": text})
    else:
        for line in log_lines([text]):
            typer.echo(line)


def rerun(
    run_id: RunId,
    sets: Annotated[list[str], typer.Option("--set", help="Override a config field: key=value.")] = [],
    priority: Annotated[int, typer.Option("--priority", help="Higher runs first.")] = 0,
    home: HomeOption = None,
    data_root: DataRootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queue a new run with the config of run ID (of any state) and --set overrides, after the
    checks `queue add` makes; it keeps the preset name and records the run it reruns."""
    from engine.config import parse_assignments
    from engine.preflight import check_queueable
    from engine.queue import rerun as queue_rerun

    assignments = parse_assignments(sets)
    home_dir = resolve_home(home)
    new_id = queue_rerun(_store(home), run_id, assignments, priority=priority,
                         check=lambda config: check_queueable([config], resolve_data_root(data_root, home_dir)))
    if as_json:
        print_json({"id": new_id, "rerun_of": run_id})
    else:
        typer.echo(f"queued run {new_id}: a rerun of run {run_id}")


def diff(first: RunId, second: RunId, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """The config and summary fields (and preset, state, tags, note) that differ between two runs."""
    from engine.history import diff_runs

    store = _store(home)
    differences = diff_runs(store.get_run(first), store.get_run(second))
    if as_json:
        print_json({"runs": [first, second], **differences})
        return
    rows = [(section, key, *values) for section, fields in differences.items() for key, values in fields.items()]
    if not rows:
        typer.echo(f"runs {first} and {second} have the same config, summary, preset, state, tags and note")
        return
    width = max(len(key) for _, key, _, _ in rows)
    typer.echo(f"{'':<8} {'field':<{width}}  {f'run {first}':>16}  {f'run {second}':>16}")
    for section, key, left, right in rows:
        typer.echo(f"{section:<8} {key:<{width}}  {_shown(left):>16}  {_shown(right):>16}")


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ",".join(map(_shown, value)) or "-"
    return str(value)


TagArguments = Annotated[list[str], typer.Argument(help="Tags: letters, digits, _ . : + / -.", show_default=False)]


def tag(run_id: RunId, tags: TagArguments, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Add tags to a run (filter by them: `history ls --where tag=NAME`, `compare --where ...`)."""
    from engine.annotations import change_tags

    _print_tags(run_id, change_tags(_store(home), run_id, add=tags), as_json)


def untag(run_id: RunId, tags: TagArguments, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Remove tags from a run (a tag it lacks is no error)."""
    from engine.annotations import change_tags

    _print_tags(run_id, change_tags(_store(home), run_id, remove=tags), as_json)


def _print_tags(run_id: int, tags: list[str], as_json: bool) -> None:
    if as_json:
        print_json({"id": run_id, "tags": tags})
    else:
        typer.echo(f"run {run_id}: tags {', '.join(tags)}" if tags else f"run {run_id}: no tags")


def note(
    run_id: RunId,
    text: Annotated[Optional[str], typer.Argument(help="The note; \"\" removes it; left out, the note is "
                                                "printed.", show_default=False)] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set, clear or print a run's note (free text; `history ls --where note=TEXT` finds it)."""
    from engine.annotations import set_note

    store = _store(home)
    kept = store.get_run(run_id).get("note") if text is None else set_note(store, run_id, text)
    if as_json:
        print_json({"id": run_id, "note": kept})
    elif text is None:
        typer.echo(kept if kept is not None else f"run {run_id} has no note")
    else:
        typer.echo(f"run {run_id}: note {'set' if kept is not None else 'removed'}")


def history_rm(
    run_ids: Annotated[list[int], typer.Argument(help="Run ids.", show_default=False)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove finished runs from the history and delete their run folders (asks first unless
    --yes). A queued or running run refuses the whole request (exit 4): cancel it first."""
    from engine.history import removable, remove_runs

    store = _store(home)
    ids = [record["id"] for record in removable(store, run_ids)]  # refused before asking
    if not yes:
        typer.confirm(f"remove run(s) {', '.join(map(str, dict.fromkeys(ids)))} from the history "
                      f"and delete their folders?", abort=True, err=True)
    removed = remove_runs(store, resolve_home(home), ids)
    if as_json:
        print_json({"removed": removed})
    else:
        typer.echo(f"removed {len(removed)} run(s): {', '.join(map(str, removed))}")


def history_prune_checkpoints(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete the checkpoint.pt of done and cancelled runs, keeping their summaries, metrics and
    logs (asks first unless --yes). A run that may resume (queued, running, interrupted, failed)
    keeps its checkpoint; a cancelled run retried after this starts over."""
    from engine.analysis.plots import compact_number
    from engine.history import checkpoints_to_prune, prune_checkpoints

    home_dir, store = resolve_home(home), _store(home)
    found = checkpoints_to_prune(store, home_dir)
    if found and not yes:
        ids = ", ".join(str(entry["id"]) for entry in found)
        typer.confirm(f"delete the checkpoints of {len(found)} finished run(s) ({ids}), "
                      f"{compact_number(sum(entry['bytes'] for entry in found), unit='B')}?", abort=True, err=True)
    pruned = prune_checkpoints(store, home_dir, [entry["id"] for entry in found]) if found else []
    freed = sum(entry["bytes"] for entry in pruned)
    if as_json:
        print_json({"pruned": pruned, "bytes_freed": freed})
    elif pruned:
        typer.echo(f"deleted {len(pruned)} checkpoint(s), {compact_number(freed, unit='B')} freed: "
                   f"run(s) {', '.join(str(entry['id']) for entry in pruned)}")
    else:
        typer.echo("no done or cancelled run keeps a checkpoint")
