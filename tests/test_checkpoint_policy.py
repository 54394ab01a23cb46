"""A run's checkpoint: kept while the run may resume, deleted once it is done (unless the
config keeps it), never before the record says done; `history prune-checkpoints`; and
`queue ls` ignoring the progress of a resumed run's previous attempt."""

import datetime as dt
import json
import os

import pytest
from typer.testing import CliRunner

import engine.runs
from engine import processes, queue
from engine.config import RunConfig
from engine.errors import BadInput
from engine.paths import CHECKPOINT_NAME, METRICS_NAME, PROGRESS_NAME, SUMMARY_NAME, USAGE_NAME
from engine.records import RunState, new_record
from engine.runs import CONFIG_NAME, execute_run
from engine.store import Store
from tui_app.cli import app

runner = CliRunner()
QUICK = RunConfig(dataset="digits", model="small_cnn", epochs=2, batch_size=64, crop_padding=1,
                  lr=0.05, device="cpu", threads=1)


def store_of(home):
    return Store(home / "history.json")


def run_now(home, config, **kwargs):
    """Insert `config` as a running run and train it here; its id."""
    store = store_of(home)
    (run_id,) = store.add_runs([new_record(config, "p", state=RunState.RUNNING)])
    execute_run(store, home, run_id, config, data_root=home / "data", **kwargs)
    return run_id


def test_keep_checkpoint_is_a_validated_flag():
    assert RunConfig().keep_checkpoint is False
    assert RunConfig.from_dict({"keep_checkpoint": "true"}).keep_checkpoint is True
    with pytest.raises(BadInput, match="keep_checkpoint='maybe' is not a valid bool"):
        RunConfig.from_dict({"keep_checkpoint": "maybe"})


def test_a_done_run_deletes_its_checkpoint_and_keeps_its_results(tmp_path):
    run_id = run_now(tmp_path, QUICK)
    folder = tmp_path / str(run_id)
    assert store_of(tmp_path).get_run(run_id)["state"] == "done"
    assert not (folder / CHECKPOINT_NAME).exists()
    assert all((folder / name).exists() for name in (SUMMARY_NAME, METRICS_NAME, USAGE_NAME, CONFIG_NAME))


def test_keep_checkpoint_keeps_it(tmp_path):
    run_id = run_now(tmp_path, QUICK.replace(keep_checkpoint=True))
    assert (tmp_path / str(run_id) / CHECKPOINT_NAME).exists()


def test_an_interrupted_run_keeps_its_checkpoint_and_resumes_from_it(tmp_path):
    store = store_of(tmp_path)

    def stop_after_the_first_epoch(event):
        if event["event"] == "epoch":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_now(tmp_path, QUICK, on_event=stop_after_the_first_epoch)
    folder = tmp_path / "1"
    assert store.get_run(1)["state"] == "interrupted"
    assert (folder / CHECKPOINT_NAME).exists()

    assert queue.retry(store, [1]) == {1: "queued"}
    queue.claim_next(store, processes.process_identity(os.getpid()))
    events = []
    execute_run(store, tmp_path, 1, QUICK, data_root=tmp_path / "data", on_event=events.append)
    assert [event["epoch"] for event in events if event["event"] == "resume"] == [1]
    assert store.get_run(1)["state"] == "done"
    assert len((folder / METRICS_NAME).read_text().splitlines()) == 2
    assert not (folder / CHECKPOINT_NAME).exists()


def test_a_crash_before_the_record_says_done_leaves_the_run_resumable(tmp_path, monkeypatch):
    real = engine.runs.finish_if_running

    def crash_when_done(store, run_id, state, **fields):
        if state == RunState.DONE:
            raise SystemExit("killed between the summary and the record")
        return real(store, run_id, state, **fields)

    monkeypatch.setattr(engine.runs, "finish_if_running", crash_when_done)
    with pytest.raises(SystemExit):
        run_now(tmp_path, QUICK.replace(epochs=1))
    assert (tmp_path / "1" / SUMMARY_NAME).exists()
    assert (tmp_path / "1" / CHECKPOINT_NAME).exists()
    assert store_of(tmp_path).get_run(1)["state"] == "running"  # found dead, then interrupted: resumable


def test_a_run_folder_from_before_a_field_existed_resumes(tmp_path):
    store = store_of(tmp_path)
    (run_id,) = store.add_runs([new_record(QUICK.replace(epochs=1), "p", state=RunState.RUNNING)])
    folder = tmp_path / str(run_id)
    folder.mkdir()
    older = QUICK.replace(epochs=1).to_dict()
    del older["keep_checkpoint"]
    (folder / CONFIG_NAME).write_text(json.dumps(older))
    execute_run(store, tmp_path, run_id, QUICK.replace(epochs=1), data_root=tmp_path / "data")
    assert store.get_run(run_id)["state"] == "done"


# --- history prune-checkpoints

SIZES = {"done": 1000, "cancelled": 300, "interrupted": 50, "failed": 70, "running": 90, "queued": 20}


@pytest.fixture
def home(tmp_path):
    """One run of each state, each folder holding a checkpoint of a known size."""
    store = store_of(tmp_path)
    ids = store.add_runs([new_record(QUICK, "p", state=state) for state in SIZES])
    for run_id, (state, size) in zip(ids, SIZES.items()):
        (tmp_path / str(run_id)).mkdir()
        (tmp_path / str(run_id) / CHECKPOINT_NAME).write_bytes(b"x" * size)
        store.update_run(run_id, run_dir=str(tmp_path / str(run_id)))
    return tmp_path


def kept(home):
    return {state: (home / str(run_id) / CHECKPOINT_NAME).exists() for run_id, state in enumerate(SIZES, start=1)}


def prune(home, *args, **kwargs):
    return runner.invoke(app, ["history", "prune-checkpoints", "--home", str(home), *args], **kwargs)


def test_prune_deletes_only_the_checkpoints_of_done_and_cancelled_runs(home):
    result = prune(home, "--yes", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(entry["id"], entry["state"], entry["bytes"]) for entry in report["pruned"]] == [
        (1, "done", 1000), (2, "cancelled", 300)]
    assert report["bytes_freed"] == 1300
    assert kept(home) == {"done": False, "cancelled": False, "interrupted": True, "failed": True,
                          "running": True, "queued": True}
    assert json.loads(prune(home, "--yes", "--json").stdout) == {"pruned": [], "bytes_freed": 0}
    assert prune(home).stdout.strip() == "no done or cancelled run keeps a checkpoint"


def test_prune_asks_first_and_a_no_keeps_everything(home):
    result = prune(home, input="n\n")
    assert result.exit_code == 1
    assert "delete the checkpoints of 2 finished run(s) (1, 2), 1.3 kB?" in result.output
    assert all(kept(home).values())
    result = prune(home, input="y\n")
    assert result.exit_code == 0, result.output
    assert "deleted 2 checkpoint(s), 1.3 kB freed: run(s) 1, 2" in result.output
    assert not kept(home)["done"]


def test_prune_spares_a_run_retried_after_it_was_listed(home):
    from engine.history import checkpoints_to_prune, prune_checkpoints

    store = store_of(home)
    listed = checkpoints_to_prune(store, home)
    queue.retry(store, [2])  # the cancelled run is queued again: it resumes from its checkpoint
    assert [entry["id"] for entry in prune_checkpoints(store, home, [entry["id"] for entry in listed])] == [1]
    assert kept(home)["cancelled"]


# --- queue ls and a resumed run's previous progress

def test_queue_ls_ignores_progress_written_before_the_current_attempt(tmp_path):
    store = store_of(tmp_path)
    started = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=10)
    (run_id,) = store.add_runs([new_record(QUICK, "p", state=RunState.RUNNING, started_at=started.isoformat(),
                                           process=processes.process_identity(os.getpid()))])
    folder = tmp_path / str(run_id)
    folder.mkdir()
    store.update_run(run_id, run_dir=str(folder))
    progress = {"steps": 100, "epochs": 2, "epoch": 1, "step": 60, "test_acc": 0.875, "images_per_s": 999.0,
                "eta_s": 40.0, "updated_at": started.timestamp() - 60}  # the previous attempt's
    (folder / PROGRESS_NAME).write_text(json.dumps(progress))

    def listed():
        result = runner.invoke(app, ["queue", "ls", "--home", str(tmp_path), "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)[0]["progress"]

    assert listed() == {}
    text = runner.invoke(app, ["queue", "ls", "--home", str(tmp_path)]).stdout
    assert "87.5%" not in text and "60%" not in text
    progress["updated_at"] = started.timestamp() + 5  # this attempt's own
    (folder / PROGRESS_NAME).write_text(json.dumps(progress))
    assert listed() == progress
