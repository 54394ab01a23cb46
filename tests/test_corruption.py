"""Every kind of damaged history x every command that reads it: exit 2, one line on stderr
naming the file and its backup, no traceback, and neither file touched."""

import json
import random

import pytest
from typer.testing import CliRunner

from tui_app.cli import app

runner = CliRunner()

GOOD_BACKUP = json.dumps({"runs": {"1": {"id": 1, "state": "done", "preset": "digits-quick", "config": {}}}})


def _record(**fields) -> bytes:
    return json.dumps({"runs": {"1": {"id": 1, **fields}}}).encode()


CORRUPTIONS = {
    "empty": b"",
    "whitespace": b"  \n\t \n",
    "not-utf8": b'{"runs": {"1": {"state": "done", "preset": "\xff\xfe"}}}',
    "truncated": b'{"runs": {"1": {"state": "do',
    "binary-garbage": random.Random(11).randbytes(512),
    "null": b"null",
    "top-level-array": b"[]",
    "runs-array": b'{"runs": []}',
    "id-not-a-number": b'{"runs": {"abc": {}}}',
    "record-not-an-object": b'{"runs": {"1": "done"}}',
    "record-without-state": b'{"runs": {"1": {}}}',
    "unknown-state": _record(state="bogus"),
    "state-a-number": _record(state=5),
    "config-an-array": _record(state="done", config=[]),
    "config-value-wrong-type": _record(state="done", config={"budget": "half"}),
    "priority-a-string": _record(state="queued", priority="high"),
    "summary-number-a-string": _record(state="done", summary={"final_test_acc": "97%"}),
    "process-a-number": _record(state="running", process=42),
    "tags-a-string": _record(state="done", tags="paper"),
    "note-a-number": _record(state="done", note=7),
    "meta-an-array": b'{"_meta": [], "runs": {}}',
    "schema-a-string": b'{"_meta": {"1": {"schema": "one"}}, "runs": {}}',
}

COMMANDS = {
    "history-ls": ["history", "ls"],
    "history-show": ["history", "show", "1"],
    "queue-ls": ["queue", "ls"],
    "queue-add": ["queue", "add", "digits-quick"],
    "queue-cancel": ["queue", "cancel", "1"],
    "queue-retry": ["queue", "retry", "1"],
    "queue-clear": ["queue", "clear"],
    "compare": ["compare"],
    "run": ["run", "digits-quick", "--set", "epochs=1"],
    "worker-once": ["worker", "--once"],
    "log": ["log", "1"],
    "rerun": ["rerun", "1"],
    "diff": ["diff", "1", "1"],
    "tag": ["tag", "1", "paper"],
    "note": ["note", "1", "text"],
    "history-rm": ["history", "rm", "1", "--yes"],
    "history-prune-checkpoints": ["history", "prune-checkpoints", "--yes"],
}


def _assert_one_line_error(result, *names: str) -> None:
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert result.stdout == ""


@pytest.mark.parametrize("command", COMMANDS, ids=list(COMMANDS))
@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_a_damaged_history_stops_every_command_with_one_line_and_touches_nothing(tmp_path, corruption, command):
    history, backup = tmp_path / "history.json", tmp_path / "history.json.bak"
    history.write_bytes(CORRUPTIONS[corruption])
    backup.write_text(GOOD_BACKUP)
    result = runner.invoke(app, [*COMMANDS[command], "--home", str(tmp_path)])
    assert result.exit_code == 2, result.output
    _assert_one_line_error(result, str(history), str(backup), "corrupted")
    assert history.read_bytes() == CORRUPTIONS[corruption]
    assert backup.read_text() == GOOD_BACKUP
    assert sorted(path.name for path in tmp_path.iterdir()) in (
        ["history.json", "history.json.bak"], ["history.json", "history.json.bak", "history.json.lock"])


def test_without_a_backup_the_message_says_so_and_names_where_it_would_be(tmp_path):
    (tmp_path / "history.json").write_bytes(b"")
    result = runner.invoke(app, ["history", "ls", "--home", str(tmp_path)])
    assert result.exit_code == 2
    _assert_one_line_error(result, "no backup exists", str(tmp_path / "history.json.bak"))


UNUSABLE_HOMES = {
    "home-is-a-file": lambda home: home.write_text("not a folder"),
    "history-is-a-folder": lambda home: (home / "history.json").mkdir(parents=True),
}


@pytest.mark.parametrize("command", COMMANDS, ids=list(COMMANDS))
@pytest.mark.parametrize("unusable", UNUSABLE_HOMES, ids=list(UNUSABLE_HOMES))
def test_an_unusable_home_stops_every_command_with_one_line(tmp_path, unusable, command):
    home = tmp_path / "home"
    UNUSABLE_HOMES[unusable](home)
    result = runner.invoke(app, [*COMMANDS[command], "--home", str(home)])
    assert result.exit_code == 2, result.output
    _assert_one_line_error(result, str(home))
