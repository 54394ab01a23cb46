"""The command line as users and scripts meet it: output shapes, exit codes, nothing written on bad input."""

import json
import pickle

import pytest
from typer.testing import CliRunner

from tui_app.cli import app

runner = CliRunner()

QUICK = ["--set", "epochs=2", "--set", "threads=1"]


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_presets_ls_lists_shipped_presets_as_json(tmp_path):
    result = invoke("presets", "ls", "--home", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    names = {row["name"] for row in json.loads(result.stdout)}
    assert {"digits-quick", "cifar10-paper", "cifar100-paper", "svhn-paper", "mini-imagenet-paper"} <= names


def test_user_presets_are_listed_beside_shipped_ones_and_win_a_name_clash(tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "mine.toml").write_text('description = "my study"\n[config]\nbudget = 0.5\n')
    (tmp_path / "presets" / "digits-quick.toml").write_text('description = "override"\n[config]\nepochs = 3\n')
    rows = {row["name"]: row for row in json.loads(invoke("presets", "ls", "--home", str(tmp_path), "--json").stdout)}
    assert rows["mine"]["source"] == "user"
    assert rows["digits-quick"]["source"] == "user"
    assert rows["cifar10-paper"]["source"] == "shipped"
    shown = json.loads(invoke("presets", "show", "mine", "--home", str(tmp_path), "--json").stdout)
    assert shown["config"]["budget"] == 0.5 and shown["config"]["epochs"] == 200


def test_paper_presets_state_the_protocol_explicitly(tmp_path):
    shown = json.loads(invoke("presets", "show", "cifar10-paper", "--home", str(tmp_path), "--json").stdout)
    config = shown["config"]
    assert (config["model"], config["epochs"], config["batch_size"], config["test_batch_size"]) == (
        "cifar_resnet18", 200, 128, 100)
    assert (config["lr"], config["lr_min"], config["momentum"], config["weight_decay"]) == (0.1, 1e-6, 0.9, 1e-4)
    assert (config["lr_schedule"], config["budget_mode"], config["crop_padding"]) == ("linear", "subset", 4)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "no-such-preset"], "digits-quick"),  # lists the valid choices
        (["run", "digits-quick", "--set", "colour=red"], "valid keys"),
        (["run", "digits-quick", "--set", "budget=1.5"], "budget must be in (0, 1]"),
        (["run", "digits-quick", "--set", "budget=lots"], "not a valid float"),
        (["run", "digits-quick", "--set", "sampler=magic"], "unif-sgd"),
        (["run", "digits-quick", "--set", "seed=-1"], "seeds must be >= 0"),
        (["run", "digits-quick", "--set", "epochs"], "key=value"),
        (["run", "digits-quick", "--seeds", "0"], "--seeds"),
        (["run", "digits-quick", "--set", "model=not_a_model"], "cifar_resnet18"),
        (["run", "digits-quick", "--set", "batch_size=5000"], "exceeds the 1437 training samples"),
        (["run", "digits-quick", "--set", "budget=0.01"], "under one batch"),
        (["run", "digits-quick", "--set", "sampler=sgd", "--set", "budget=0.5"], "budget_mode=scan"),
        (["presets", "show", "nope"], "digits-quick"),
        (["queue", "add", "nope"], "digits-quick"),
        (["queue", "add", "digits-quick", "--grid", "flavour=a,b"], "valid keys"),
        (["queue", "add", "digits-quick", "--grid", "budget=0.5,1.5"], "budget must be in (0, 1]"),
        (["queue", "add", "digits-quick", "--grid", "sampler=unif-sgd,magic"], "choose one of"),
        (["queue", "add", "digits-quick", "--grid", "budget"], "key=v1,v2"),
        (["queue", "add", "digits-quick", "--seeds", "-2"], "--seeds"),
        (["queue", "add", "digits-quick", "--priority", "5000"], "priority"),
        (["worker", "--gpus", "0,0"], "--gpus"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message_and_writes_nothing(tmp_path, args, fragment):
    home = tmp_path / "home"
    result = invoke(*args, "--home", str(home))
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
    assert "Traceback" not in result.output
    assert not home.exists()


def test_missing_dataset_files_exit_2_naming_the_directory_and_files(tmp_path):
    home, data = tmp_path / "home", tmp_path / "data"
    result = invoke("run", "cifar10-paper", "--home", str(home), "--data-root", str(data))
    assert result.exit_code == 2
    assert str(data / "cifar-10-batches-py") in result.stderr
    assert "data_batch_1" in result.stderr and "test_batch" in result.stderr
    assert not home.exists()


def test_malformed_user_preset_exits_2_naming_the_file(tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "broken.toml").write_text("[config\nbudget = ")
    result = invoke("run", "broken", "--home", str(tmp_path))
    assert result.exit_code == 2
    assert "broken.toml" in result.stderr


def test_run_records_the_run_and_history_reads_it_back(tmp_path):
    result = invoke("run", "digits-quick", *QUICK, "--home", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)  # machine output only on stdout
    assert len(payload) == 1
    run_id, summary = payload[0]["id"], payload[0]["summary"]
    assert summary["epochs_run"] == 2 and 0.0 <= summary["final_test_acc"] <= 1.0

    listed = json.loads(invoke("history", "ls", "--home", str(tmp_path), "--json").stdout)
    assert [(row["id"], row["state"]) for row in listed] == [(run_id, "done")]
    assert listed[0]["config"]["epochs"] == 2 and listed[0]["preset"] == "digits-quick"

    shown = json.loads(invoke("history", "show", str(run_id), "--home", str(tmp_path), "--json").stdout)
    assert shown["summary"] == {key: value for key, value in summary.items() if key != "plan"}
    assert [row["epoch"] for row in shown["metrics"]] == [1, 2]
    assert shown["provenance"]["version"]

    human = invoke("history", "show", str(run_id), "--home", str(tmp_path))
    assert human.exit_code == 0 and "final test acc" in human.stdout


def test_run_with_seeds_trains_each_seed_and_filters_select_them(tmp_path):
    result = invoke("run", "digits-quick", "--set", "epochs=1", "--set", "threads=1", "--seeds", "2",
                    "--home", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    assert [row["seed"] for row in json.loads(result.stdout)] == [0, 1]
    only = json.loads(invoke("history", "ls", "--where", "seed=1", "--home", str(tmp_path), "--json").stdout)
    assert [row["config"]["seed"] for row in only] == [1]
    assert invoke("history", "ls", "--where", "flavour=x", "--home", str(tmp_path)).exit_code == 2


def test_history_show_of_an_unknown_run_exits_3(tmp_path):
    invoke("run", "digits-quick", "--set", "epochs=1", "--set", "threads=1", "--home", str(tmp_path))
    result = invoke("history", "show", "999", "--home", str(tmp_path))
    assert result.exit_code == 3
    assert "999" in result.stderr


def test_corrupted_history_gives_one_clear_line_naming_the_file(tmp_path):
    (tmp_path / "history.json").write_text('{"runs": {"1": {"state": "do')
    result = invoke("history", "ls", "--home", str(tmp_path))
    assert result.exit_code == 2  # a bad file is bad input
    assert str(tmp_path / "history.json") in result.stderr and "corrupted" in result.stderr
    assert "Traceback" not in result.output


def test_home_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGET_TUI_HOME", str(tmp_path / "envhome"))
    result = invoke("run", "digits-quick", "--set", "epochs=1", "--set", "threads=1")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "envhome" / "history.json").exists()


def test_imagefolder_run_from_a_tree_the_test_writes(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for label, colour in enumerate([(250, 10, 10), (10, 10, 250)]):
            folder = tmp_path / "tree" / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(16 if split == "train" else 4):
                Image.new("RGB", (12, 10), colour).save(folder / f"{index}.png")
    result = invoke("run", "digits-quick", "--set", "dataset=imagefolder", "--set", f"data_path={tmp_path / 'tree'}",
                    "--set", "image_size=8", "--set", "batch_size=8", "--set", "epochs=10", "--set", "threads=1",
                    "--home", str(tmp_path / "home"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["summary"]["final_test_acc"] == 1.0  # two solid colours


def test_cifar_preset_runs_on_files_the_test_writes(tmp_path):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": __import__("numpy").zeros((20, 3072), dtype="uint8"), "labels": [0, 1] * 10}, handle)
    result = invoke("run", "cifar10-paper", "--set", "model=cifar_small_cnn", "--set", "epochs=1",
                    "--set", "batch_size=10", "--set", "budget=0.5", "--set", "device=cpu", "--set", "threads=1",
                    "--home", str(tmp_path / "home"), "--data-root", str(tmp_path / "data"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)[0]["summary"]
    assert summary["steps"] == 5 and summary["samples_backprop"] == 50  # floor(0.5*100)/10 steps
