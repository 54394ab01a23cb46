"""The commands on single runs (log, rerun, diff, tag, untag, note, history rm), the exit
code of a request a run's state refuses, and what every command offers (--json, -h,
--version, shell completion)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from typer.main import get_command
from typer.testing import CliRunner

import engine.logs
from engine.config import RunConfig
from engine.paths import history_path
from engine.processes import process_identity
from engine.runs import finish_if_running
from engine.records import RunState, new_record
from engine.store import Store
from tui_app.cli import app

ROOT = Path(__file__).resolve().parent.parent
WRONG_STATE = 4
runner = CliRunner()


def invoke(home: Path, *args: str, input: str | None = None):
    return runner.invoke(app, [*args, "--home", str(home)], input=input)


def history_bytes(home: Path) -> bytes:
    return history_path(home).read_bytes()


def add(home: Path, state: str, *, sampler: str = "unif-sgd", seed: int = 0, accuracy: float | None = None,
        **fields) -> int:
    record = new_record(RunConfig(sampler=sampler, seed=seed, epochs=3), "digits-quick", state=state, **fields)
    if accuracy is not None:
        record["summary"] = {"final_test_acc": accuracy, "time_total_s": 2.0}
    (run_id,) = Store(history_path(home)).add_runs([record])
    return run_id


def dead_process() -> dict:
    """The identity of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = process_identity(child.pid)
    child.wait()
    return identity


# --- log
def test_a_foreground_run_keeps_a_log_that_log_prints(tmp_path):
    result = invoke(tmp_path, "run", "digits-quick", "--set", "epochs=1", "--set", "threads=1", "--json")
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout)[0]["id"]
    lines = (tmp_path / str(run_id) / "log.txt").read_text().splitlines()
    assert lines[0].startswith("--- ") and "start in the foreground" in lines[0]
    events = [json.loads(line)["event"] for line in lines[1:]]
    assert events == ["start", "epoch", "done"]  # as a worker's child prints them: no steps

    printed = invoke(tmp_path, "log", str(run_id))
    assert printed.exit_code == 0 and printed.stdout.splitlines()[0] == lines[0]  # not an event: as written
    assert printed.stdout.splitlines()[1].startswith("start on cpu: ")  # events read as words, not JSON
    assert printed.stdout.splitlines()[-1].startswith("done: final test acc ")
    as_json = json.loads(invoke(tmp_path, "log", str(run_id), "--json").stdout)
    assert as_json["log"].splitlines() == lines and as_json["path"] == str(tmp_path / str(run_id) / "log.txt")


def test_log_of_a_run_without_one_is_not_found_and_json_does_not_follow(tmp_path):
    run_id = add(tmp_path, "queued")
    result = invoke(tmp_path, "log", str(run_id))
    assert result.exit_code == 3 and "no log yet (queued)" in result.stderr
    assert invoke(tmp_path, "log", "99").exit_code == 3
    assert invoke(tmp_path, "log", str(run_id), "-f", "--json").exit_code == 2


def test_follow_prints_the_log_as_it_grows_until_the_run_ends(tmp_path, monkeypatch):
    store = Store(history_path(tmp_path))
    run_id = add(tmp_path, "running", process=process_identity(os.getpid()))
    log = tmp_path / str(run_id) / "log.txt"
    steps = [
        lambda: None,  # no log yet: the run is waited for
        lambda: (log.parent.mkdir(), log.write_bytes(b"first\n")),
        lambda: log.open("ab").write(b"caf\xc3"),  # a character cut in two by a read
        lambda: log.open("ab").write(b"\xa9\nlast\n"),
        lambda: finish_if_running(store, run_id, RunState.DONE),
    ]
    monkeypatch.setattr(engine.logs.time, "sleep", lambda seconds: steps.pop(0)())
    chunks = list(engine.logs.follow_log(store, tmp_path, run_id, poll_s=0))
    assert "".join(chunks) == "first\ncafé\nlast\n" and not steps  # ended only once the run did


def test_log_lines_formats_whole_lines_from_pieces():
    from tui_app.formatting import log_lines

    epoch = '{"event": "epoch", "epoch": 2, "total_epochs": 3}'
    pieces = ["--- start\n" + epoch[:10], epoch[10:] + "\n", "tail without newline"]
    assert list(log_lines(pieces)) == ["--- start", "epoch 2/3", "tail without newline"]


def test_follow_ends_when_the_running_process_is_gone(tmp_path):
    run_id = add(tmp_path, "running", process=dead_process())
    (tmp_path / str(run_id)).mkdir()
    (tmp_path / str(run_id) / "log.txt").write_text("--- start\npartial")
    result = invoke(tmp_path, "log", str(run_id), "--follow")
    assert result.exit_code == 0 and result.stdout == "--- start\npartial\n"


# --- rerun
def test_rerun_queues_the_runs_config_with_overrides(tmp_path):
    source = add(tmp_path, "done", sampler="p-sgd", seed=3, accuracy=0.9)
    result = invoke(tmp_path, "rerun", str(source), "--set", "lr=0.05", "--set", "budget=0.5", "--json")
    assert result.exit_code == 0, result.output
    new_id = json.loads(result.stdout)["id"]
    record = Store(history_path(tmp_path)).get_run(new_id)
    original = Store(history_path(tmp_path)).get_run(source)
    assert record["state"] == "queued" and record["preset"] == "digits-quick" and record["rerun_of"] == source
    assert record["config"] == {**original["config"], "lr": 0.05, "budget": 0.5}


@pytest.mark.parametrize("args, exit_code, fragment", [
    (["--set", "colour=red"], 2, "valid keys"),
    (["--set", "budget=2"], 2, "budget must be in (0, 1]"),
    (["--set", "lr"], 2, "key=value"),
    (["--set", "dataset=cifar10"], 2, "cifar-10-batches-py"),  # the checks `queue add` makes
    (["--priority", "5000"], 2, "priority"),
])
def test_rerun_refuses_bad_overrides_and_writes_nothing(tmp_path, args, exit_code, fragment):
    source = add(tmp_path, "done")
    before = history_bytes(tmp_path)
    result = invoke(tmp_path, "rerun", str(source), *args, "--data-root", str(tmp_path / "data"))
    assert result.exit_code == exit_code and fragment in result.stderr, result.output
    assert history_bytes(tmp_path) == before


def test_rerun_of_an_unknown_run_is_not_found(tmp_path):
    add(tmp_path, "done")
    assert invoke(tmp_path, "rerun", "7").exit_code == 3


# --- diff
def test_diff_shows_only_the_fields_that_differ(tmp_path):
    first = add(tmp_path, "done", sampler="unif-sgd", accuracy=0.9)
    second = add(tmp_path, "done", sampler="p-sgd", accuracy=0.93)
    assert invoke(tmp_path, "tag", str(second), "best").exit_code == 0
    result = invoke(tmp_path, "diff", str(first), str(second), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "runs": [first, second],
        "config": {"sampler": ["unif-sgd", "p-sgd"]},
        "summary": {"final_test_acc": [0.9, 0.93]},
        "run": {"tags": [[], ["best"]]},
    }
    human = invoke(tmp_path, "diff", str(first), str(second)).stdout
    assert "sampler" in human and "final_test_acc" in human and "epochs" not in human
    same = json.loads(invoke(tmp_path, "diff", str(first), str(first), "--json").stdout)
    assert same["config"] == same["summary"] == same["run"] == {}
    assert invoke(tmp_path, "diff", str(first), "99").exit_code == 3


# --- tags and notes
def test_tags_and_notes_are_stored_listed_and_filtered(tmp_path):
    first = add(tmp_path, "done", seed=0, accuracy=0.9)
    second = add(tmp_path, "done", seed=1, accuracy=0.91)
    add(tmp_path, "done", sampler="p-sgd", accuracy=0.92)
    tagged = invoke(tmp_path, "tag", str(first), "paper", "lr:high", "--json")
    assert tagged.exit_code == 0 and json.loads(tagged.stdout) == {"id": first, "tags": ["lr:high", "paper"]}
    assert invoke(tmp_path, "tag", str(second), "paper").exit_code == 0
    assert json.loads(invoke(tmp_path, "untag", str(first), "lr:high", "absent", "--json").stdout)["tags"] == ["paper"]
    assert invoke(tmp_path, "note", str(second), "Diverged at epoch 2").exit_code == 0
    assert invoke(tmp_path, "note", str(second)).stdout == "Diverged at epoch 2\n"

    listed = json.loads(invoke(tmp_path, "history", "ls", "--json").stdout)
    assert [(row["tags"], row["note"]) for row in listed] == [(["paper"], None), (["paper"], "Diverged at epoch 2"),
                                                               ([], None)]
    human = invoke(tmp_path, "history", "ls").stdout
    assert "paper # Diverged at epoch 2" in human

    def ids(*where: str, command=("history", "ls")) -> list[int]:
        result = invoke(tmp_path, *command, *[item for pair in where for item in ("--where", pair)], "--json")
        assert result.exit_code == 0, result.output
        return [row["id"] for row in json.loads(result.stdout)]

    assert ids("tag=paper") == [first, second]
    assert ids("note=diverged") == [second]  # any case
    assert ids("tag=paper", "seed=0") == [first]
    assert invoke(tmp_path, "tag", str(first), "extra").exit_code == 0
    assert ids("tag=paper,extra") == ids("tag=paper", "tag=extra") == [first]
    compared = json.loads(invoke(tmp_path, "compare", "--where", "tag=paper", "--cols", "budget", "--json").stdout)
    assert sorted(run_id for cell in compared["cells"] for run_id in cell["run_ids"]) == [first, second]
    assert invoke(tmp_path, "compare", "--where", "tag=nothing").exit_code == 3

    assert json.loads(invoke(tmp_path, "note", str(second), "", "--json").stdout) == {"id": second, "note": None}
    assert json.loads(invoke(tmp_path, "history", "show", str(second), "--json").stdout)["note"] is None


@pytest.mark.parametrize("args", [
    ["tag", "1", "two words"], ["tag", "1", "a,b"], ["tag", "1", "k=v"], ["tag", "1", "x" * 65], ["tag", "1", ""],
    ["untag", "1", "caf\u00e9"], ["history", "ls", "--where", "tag=a b"], ["note", "1", "x" * 10_001],
])
def test_a_bad_tag_or_note_exits_2_and_writes_nothing(tmp_path, args):
    add(tmp_path, "done")
    before = history_bytes(tmp_path)
    result = invoke(tmp_path, *args)
    assert result.exit_code == 2 and result.stderr.startswith("error: "), result.output
    assert history_bytes(tmp_path) == before


def test_an_old_history_without_tags_reads_and_a_tag_of_the_wrong_type_is_damage(tmp_path):
    history_path(tmp_path).write_text('{"runs": {"1": {"state": "done", "config": {"seed": 0}}}}')
    listed = json.loads(invoke(tmp_path, "history", "ls", "--json").stdout)
    assert listed[0]["tags"] == [] and listed[0]["note"] is None
    assert json.loads(invoke(tmp_path, "tag", "1", "old", "--json").stdout)["tags"] == ["old"]
    history_path(tmp_path).write_text('{"runs": {"1": {"state": "done", "tags": [1]}}}')
    result = invoke(tmp_path, "history", "ls")
    assert result.exit_code == 2 and "corrupted" in result.stderr and "tag" in result.stderr


# --- history rm
def test_history_rm_removes_finished_runs_and_their_folders_after_asking(tmp_path):
    done, failed = add(tmp_path, "done", accuracy=0.9), add(tmp_path, "failed")
    for run_id in (done, failed):
        (tmp_path / str(run_id)).mkdir()
        (tmp_path / str(run_id) / "log.txt").write_text("x")
    declined = invoke(tmp_path, "history", "rm", str(done), input="n\n")
    assert declined.exit_code == 1 and (tmp_path / str(done)).exists()
    assert len(Store(history_path(tmp_path)).list_runs()) == 2

    result = invoke(tmp_path, "history", "rm", str(done), str(failed), input="y\n")
    assert result.exit_code == 0, result.output
    assert Store(history_path(tmp_path)).list_runs() == []
    assert not (tmp_path / str(done)).exists() and not (tmp_path / str(failed)).exists()
    assert add(tmp_path, "queued") == failed + 1  # a removed run's id is never given again


def test_history_rm_refuses_a_queued_or_running_run_and_removes_nothing(tmp_path):
    done = add(tmp_path, "done")
    queued = add(tmp_path, "queued")
    running = add(tmp_path, "running", process=process_identity(os.getpid()))
    before = history_bytes(tmp_path)
    for refused in (queued, running):
        result = invoke(tmp_path, "history", "rm", str(done), str(refused), "--yes")
        assert result.exit_code == WRONG_STATE and f"run {refused} is" in result.stderr
    assert history_bytes(tmp_path) == before
    assert invoke(tmp_path, "history", "rm", "99", "--yes").exit_code == 3
    removed = invoke(tmp_path, "history", "rm", str(done), "--yes", "--json")
    assert removed.exit_code == 0 and json.loads(removed.stdout) == {"removed": [done]}


def test_history_rm_counts_a_run_whose_process_is_gone_as_interrupted(tmp_path):
    stale = add(tmp_path, "running", process=dead_process())
    assert invoke(tmp_path, "history", "rm", str(stale), "--yes").exit_code == 0


def test_store_remove_runs_is_all_or_nothing_and_keeps_the_highest_id(tmp_path):
    store = Store(tmp_path / "history.json")
    store.add_runs([{"state": "done"}, {"state": "done"}, {"state": "queued"}])

    def refuse_queued(record):
        if record["state"] == "queued":
            raise ValueError("queued")

    with pytest.raises(ValueError):
        store.remove_runs([1, 3], refuse_queued)
    assert len(store.list_runs()) == 3
    assert [record["id"] for record in store.remove_runs([2, 3, 2])] == [2, 3]
    assert store.add_runs([{"state": "queued"}]) == [4]
    assert json.loads((tmp_path / "history.json").read_text())["_meta"]["1"] == {"schema": 1, "last_id": 3}


# --- a request the run's state refuses: its own exit code
def test_retry_and_cancel_refused_by_the_state_exit_4_and_still_handle_the_others(tmp_path):
    done, failed = add(tmp_path, "done"), add(tmp_path, "failed")
    result = invoke(tmp_path, "queue", "retry", str(done), str(failed), "--json")
    assert result.exit_code == WRONG_STATE
    assert json.loads(result.stdout) == {str(done): "not retried: done", str(failed): "queued"}
    assert "refused by their state" in result.stderr
    cancelled = invoke(tmp_path, "queue", "cancel", str(done))
    assert cancelled.exit_code == WRONG_STATE and "not cancelled: already done" in cancelled.stdout
    assert invoke(tmp_path, "queue", "cancel", str(failed)).exit_code == 0  # it was queued again


def test_the_readme_lists_every_exit_code():
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "3 not found, 4 refused by the run's state" in readme


# --- what every command offers
def all_commands() -> dict[str, click.Command]:
    """Every command and group of the app by its command line ("" is the app itself)."""
    found = {}

    def walk(command: click.Command, path: list[str]) -> None:
        found[" ".join(path)] = command
        for name, child in getattr(command, "commands", {}).items():
            walk(child, [*path, name])

    walk(get_command(app), [])
    return found


def has_json(command: click.Command) -> bool:
    return any("--json" in parameter.opts for parameter in command.params)


def test_every_command_takes_h_and_every_command_that_prints_takes_json():
    commands = all_commands()
    for path, command in commands.items():
        result = runner.invoke(app, [*path.split(), "-h"])
        assert result.exit_code == 0 and "Usage" in result.stdout, (path, result.output)
        if path and not getattr(command, "commands", None):
            assert has_json(command), path
    assert has_json(commands["worker"])  # the group runs the worker itself: its run lines as JSON


def test_version_and_the_help_that_names_the_terminal_ui():
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.startswith("budget-tui 0.")
    assert "no command to open the terminal UI" in " ".join(runner.invoke(app, ["--help"]).stdout.split())


def test_shell_completion_is_offered_and_completes_commands():
    shown = runner.invoke(app, ["--show-completion", "bash"])
    assert shown.exit_code == 0 and "complete" in shown.stdout
    environment = {**os.environ, "_BUDGET_TUI_COMPLETE": "complete_bash", "COMP_WORDS": "budget-tui qu",
                   "COMP_CWORD": "1"}
    completed = subprocess.run([sys.executable, "-c", "from tui_app.cli import main; main()"], env=environment,
                               capture_output=True, text=True, timeout=60)
    assert "queue" in completed.stdout.split(), completed


def test_priority_and_stop_print_json(tmp_path):
    run_id = add(tmp_path, "queued")
    priority = invoke(tmp_path, "queue", "priority", "5", str(run_id), "--json")
    assert priority.exit_code == 0 and json.loads(priority.stdout) == {"ids": [run_id], "priority": 5}
    stopped = invoke(tmp_path, "worker", "stop", "--json")
    assert stopped.exit_code == 0 and json.loads(stopped.stdout) == {"stopped": []}


@pytest.mark.parametrize("output_format", ["csv", "md", "latex", "json"])
def test_compare_refuses_a_chart_its_format_would_drop(tmp_path, output_format):
    add(tmp_path, "done", accuracy=0.9)
    result = invoke(tmp_path, "compare", "--format", output_format, "--chart", "budget")
    assert result.exit_code == 2 and "--plot" in result.stderr and not result.stdout
