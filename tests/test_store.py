"""The history store: atomic writes, a backup, clear errors, old files, several writers."""

import json
import multiprocessing
import shutil
from pathlib import Path

import pytest

from engine.errors import NotFound
from engine.store import Store, StoreCorrupted

FIXTURES = Path(__file__).parent / "fixtures"


def test_add_update_get_list(tmp_path):
    store = Store(tmp_path / "history.json")
    ids = store.add_runs([{"state": "queued", "n": 1}, {"state": "queued", "n": 2}])
    assert ids == [1, 2]
    store.update_run(2, state="done", summary={"final_test_acc": 0.5})
    assert store.get_run(2) == {"id": 2, "state": "done", "n": 2, "summary": {"final_test_acc": 0.5}}
    assert [record["n"] for record in store.list_runs()] == [1, 2]
    with pytest.raises(NotFound):
        store.get_run(3)
    with pytest.raises(NotFound):
        store.update_run(3, state="done")


def test_a_bulk_add_is_one_write(tmp_path, monkeypatch):
    store = Store(tmp_path / "history.json")
    writes = []
    original = store._write_file
    monkeypatch.setattr(store, "_write_file", lambda data: (writes.append(1), original(data)))
    store.add_runs([{"state": "queued"} for _ in range(100)])
    assert len(writes) == 1 and len(store.list_runs()) == 100


def test_the_file_carries_a_schema_version_and_the_previous_version_is_kept(tmp_path):
    store = Store(tmp_path / "history.json")
    store.add_runs([{"state": "queued"}])
    store.update_run(1, state="running")
    data = json.loads((tmp_path / "history.json").read_text())
    assert data["_meta"]["1"]["schema"] == 1
    backup = json.loads((tmp_path / "history.json.bak").read_text())
    assert backup["runs"]["1"]["state"] == "queued" and data["runs"]["1"]["state"] == "running"
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupted_file_names_the_file_and_the_backup_and_is_left_alone(tmp_path):
    store = Store(tmp_path / "history.json")
    store.add_runs([{"state": "queued"}])
    store.update_run(1, state="done")
    (tmp_path / "history.json").write_text('{"runs": {"1": ')
    with pytest.raises(StoreCorrupted) as raised:
        store.list_runs()
    message = str(raised.value)
    assert str(tmp_path / "history.json") in message and str(tmp_path / "history.json.bak") in message
    with pytest.raises(StoreCorrupted):
        store.add_runs([{"state": "queued"}])  # never a silent reset
    assert (tmp_path / "history.json").read_text() == '{"runs": {"1": '


def test_an_old_history_file_keeps_loading(tmp_path):
    shutil.copy(FIXTURES / "history_v1.json", tmp_path / "history.json")
    store = Store(tmp_path / "history.json")
    runs = store.list_runs()
    assert [(run["id"], run["state"]) for run in runs] == [(1, "done"), (2, "failed")]
    assert store.add_runs([{"state": "queued"}]) == [3]


def _writer(path: str, worker: int, count: int) -> None:
    store = Store(Path(path))
    for index in range(count):
        (run_id,) = store.add_runs([{"writer": worker, "index": index, "state": "queued"}])
        store.update_run(run_id, state="done")


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    path = tmp_path / "history.json"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(path), worker, 25)) for worker in range(4)]
    for process in workers:
        process.start()
    reads = 0
    while any(process.is_alive() for process in workers):
        if path.exists():
            Store(path).list_runs()  # a reader must always see a whole file
            reads += 1
    for process in workers:
        process.join()
        assert process.exitcode == 0
    runs = Store(path).list_runs()
    assert len(runs) == 100 and reads > 0
    assert sorted((run["writer"], run["index"]) for run in runs) == [(w, i) for w in range(4) for i in range(25)]
    assert sorted(run["id"] for run in runs) == list(range(1, 101))
    assert all(run["state"] == "done" for run in runs)


def test_history_cache_rereads_only_after_a_write(tmp_path):
    from engine.store import HistoryCache

    store = Store(tmp_path / "history.json")
    cache = HistoryCache(store)
    assert cache.runs() == ([], True)
    assert cache.runs() == ([], False)  # still no file: nothing changed
    store.add_runs([{"state": "queued"}])
    runs, changed = cache.runs()
    assert changed and [run["state"] for run in runs] == ["queued"]
    assert cache.runs()[1] is False  # nothing written: no re-read
    store.update_run(runs[0]["id"], state="running")
    runs, changed = cache.runs()
    assert changed and runs[0]["state"] == "running"


def test_the_file_is_json_with_one_run_per_line(tmp_path):
    store = Store(tmp_path / "history.json")
    store.add_runs([{"state": "queued", "note": "two\nlines"}, {"state": "done"}])
    text = store.path.read_text()
    assert json.loads(text)["runs"]["1"]["note"] == "two\nlines"
    lines = text.split("\n")
    assert lines[1] == '"runs":{' and lines[-2:] == ["}}", ""]
    assert [json.loads("{" + line.rstrip(",") + "}") for line in lines[2:-2]] == [
        {"1": {"state": "queued", "note": "two\nlines", "id": 1}}, {"2": {"state": "done", "id": 2}}]


def test_history_cache_parses_only_the_changed_runs_and_agrees_with_a_full_read(tmp_path, monkeypatch):
    from engine.store import HistoryCache

    store = Store(tmp_path / "history.json")
    store.add_runs([{"state": "queued", "seed": seed} for seed in range(50)])
    cache = HistoryCache(store)
    assert cache.runs()[0] == store.list_runs()
    parsed = []
    real_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda text, *a, **k: parsed.append(text) or real_loads(text, *a, **k))
    store.update_run(7, state="running")
    store.add_runs([{"state": "queued", "seed": 99}])
    runs, changed = cache.runs()
    assert changed and runs == store.list_runs()
    documents = [text for text in parsed if text.startswith("{\"state\"")]
    assert len(documents) == 2  # run 7 and run 51 only, of 51 runs
    assert next(run for run in runs if run["id"] == 7)["state"] == "running"


def test_history_cache_reads_an_old_layout_and_reports_damage(tmp_path):
    from engine.store import HistoryCache

    shutil.copy(FIXTURES / "history_v1.json", tmp_path / "history.json")
    store = Store(tmp_path / "history.json")
    cache = HistoryCache(store)
    assert cache.runs()[0] == store.list_runs() and store.list_runs()
    store.update_run(store.list_runs()[0]["id"], priority=3)  # rewritten in the line layout
    assert cache.runs()[0] == store.list_runs()
    lines = store.path.read_text().split("\n")
    lines[2] = lines[2][: len(lines[2]) // 2]  # a run's line cut in half
    store.path.write_text("\n".join(lines))
    with pytest.raises(StoreCorrupted, match="history.json"):
        cache.runs()


@pytest.mark.parametrize("damage", ["", " \n\t\n"], ids=["empty", "whitespace"])
def test_an_empty_history_file_is_damage_and_the_backup_survives_every_write(tmp_path, damage):
    store = Store(tmp_path / "history.json")
    store.add_runs([{"state": "queued"}])
    store.update_run(1, state="done")  # the backup now holds run 1 as queued
    backup = (tmp_path / "history.json.bak").read_bytes()
    (tmp_path / "history.json").write_text(damage)
    with pytest.raises(StoreCorrupted, match="the file is empty") as raised:
        store.list_runs()
    assert str(tmp_path / "history.json.bak") in str(raised.value)
    with pytest.raises(StoreCorrupted):
        store.add_runs([{"state": "queued"}])
    assert (tmp_path / "history.json").read_text() == damage
    assert (tmp_path / "history.json.bak").read_bytes() == backup


def test_history_cache_checks_the_shape_of_each_changed_run(tmp_path):
    from engine.store import HistoryCache

    store = Store(tmp_path / "history.json")
    store.add_runs([{"state": "queued"}, {"state": "queued"}])
    cache = HistoryCache(store)
    cache.runs()
    lines = store.path.read_text().split("\n")
    lines[3] = '"2":{"state":"queued","priority":"high","id":2}'  # valid JSON, wrong field type
    store.path.write_text("\n".join(lines))
    with pytest.raises(StoreCorrupted, match="priority"):
        cache.runs()
