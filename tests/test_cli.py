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


# --- every fault of the input or the files: one line, an exit code, nothing written
def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_one_line_error(result, exit_code: int, *fragments: str) -> None:
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.exception)
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("error, exit_code, fragments", [
    (PermissionError(13, "Permission denied", "/srv/home/history.json"), 2, ["Permission denied", "/srv/home/history.json"]),
    (IsADirectoryError(21, "Is a directory", "/srv/home/presets/x.toml"), 2, ["Is a directory", "x.toml"]),
    (NotADirectoryError(20, "Not a directory", "/srv/file/history.json"), 2, ["/srv/file/history.json"]),
    (FileNotFoundError(2, "No such file or directory", "/srv/gone"), 3, ["/srv/gone"]),
    (OSError(28, "No space left on device", "/srv/home/history.json.tmp"), 1, ["No space left", "history.json.tmp"]),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 2, ["not UTF-8", "invalid start byte"]),
    (TypeError("list indices must be integers or slices, not str"), 1, ["TypeError", "list indices"]),
    (KeyError("runs"), 1, ["KeyError", "runs"]),
])
def test_an_os_or_data_shape_error_of_any_command_is_one_line_and_an_exit_code(tmp_path, monkeypatch, error,
                                                                                 exit_code, fragments):
    import engine.presets

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(engine.presets, "scan_presets", fail)
    monkeypatch.setattr(engine.presets, "get_preset", fail)
    for args in (["presets", "ls"], ["presets", "show", "digits-quick"], ["queue", "add", "digits-quick"]):
        assert_one_line_error(invoke(*args, "--home", str(tmp_path / "home")), exit_code, *fragments)
    assert not (tmp_path / "home").exists()


def test_a_home_that_is_a_file_is_one_line_naming_it(tmp_path):
    home = tmp_path / "home"
    home.write_text("not a folder")
    assert_one_line_error(invoke("queue", "add", "digits-quick", "--home", str(home)), 2, str(home))
    assert home.read_text() == "not a folder"


def user_preset(home, name: str, content: bytes | None) -> None:
    """A user preset file; None makes a folder of that name instead."""
    folder = home / "presets"
    folder.mkdir(parents=True, exist_ok=True)
    if content is None:
        (folder / f"{name}.toml").mkdir()
    else:
        (folder / f"{name}.toml").write_bytes(content)


BROKEN_PRESETS = {
    "folder": (None, "cannot be read"),
    "latin1": ('description = "caf\u00e9"\n'.encode("latin-1"), "not UTF-8"),
    "badvalue": (b"[config]\nbudget = 7\n", "budget must be in (0, 1]"),
    "badgrid": (b"[grid]\nsampler = ['magic']\n", "choose one of"),
    "huge": (b"seeds = 100\n[grid]\nseed = " + str(list(range(101))).encode() + b"\n", "at most 10000"),
}


@pytest.mark.parametrize("name", BROKEN_PRESETS)
def test_a_broken_preset_is_one_line_naming_its_file(tmp_path, name):
    content, reason = BROKEN_PRESETS[name]
    user_preset(tmp_path, name, content)
    for args in (["presets", "show", name], ["run", name], ["queue", "add", name]):
        assert_one_line_error(invoke(*args, "--home", str(tmp_path)), 2, f"{name}.toml", reason)
    assert not (tmp_path / "history.json").exists()


def test_presets_ls_lists_the_good_presets_and_reports_each_broken_one(tmp_path):
    user_preset(tmp_path, "mine", b'description = "my study"\n[config]\nbudget = 0.5\n')
    for name, (content, _) in BROKEN_PRESETS.items():
        user_preset(tmp_path, name, content)
    result = invoke("presets", "ls", "--home", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["mine"]["error"] is None and rows["mine"]["description"] == "my study"
    assert rows["digits-quick"]["source"] == "shipped" and rows["digits-quick"]["error"] is None
    for name, (_, reason) in BROKEN_PRESETS.items():
        assert f"{name}.toml" in rows[name]["error"] and reason in rows[name]["error"]
    (warning,) = error_lines(result)
    assert warning.startswith("warning: 5 preset(s) do not load") and all(name in warning for name in BROKEN_PRESETS)

    human = invoke("presets", "ls", "--home", str(tmp_path))
    assert human.exit_code == 0
    lines = {line.split()[0]: line for line in human.stdout.splitlines()}
    assert "my study" in lines["mine"] and "budget must be in (0, 1]" in lines["badvalue"]


@pytest.mark.parametrize("args, fragment", [
    (["--set", "model=not_a_model"], "cifar_resnet18"),
    (["--grid", "model=small_cnn,not_a_model"], "not_a_model"),
    (["--set", "dataset=cifar10"], "cifar-10-batches-py"),
    (["--set", "dataset=svhn"], "train_32x32.mat"),
    (["--set", "dataset=mini-imagenet"], "mini-imagenet"),
    (["--set", "dataset=imagefolder", "--set", "data_path=/no/such/tree"], "/no/such/tree"),
    (["--set", "seed=" + "9" * 30], "64 bits"),
    (["--set", "batch_size=" + "9" * 30], "64 bits"),
    (["--set", "seed=9223372036854775807", "--seeds", "2"], "64 bits"),
    (["--set", "epochs=\u0661\u0662"], "ASCII digits"),
    (["--set", "budget=\u0660.\u0665"], "not a valid float"),
    (["--grid", "epochs=2,\u0663"], "ASCII digits"),
    (["--seeds", "1000000000"], "at most 10000 runs"),
    (["--grid", "seed=" + ",".join(map(str, range(200))), "--grid", "lr=" + ",".join(f"0.0{i}" for i in range(1, 10)),
      "--seeds", "6"], "at most 10000 runs"),
])
def test_queue_add_refuses_what_run_refuses_and_writes_nothing(tmp_path, args, fragment):
    home = tmp_path / "home"
    result = invoke("queue", "add", "digits-quick", *args, "--home", str(home), "--data-root", str(tmp_path / "data"))
    assert_one_line_error(result, 2, fragment)
    assert not home.exists()


@pytest.mark.parametrize("args, fragment", [
    (["--set", "seed=" + "9" * 30], "64 bits"),
    (["--set", "epochs=\u0661\u0662"], "ASCII digits"),
    (["--seeds", "1000000000"], "at most 10000 runs"),
])
def test_run_refuses_huge_and_non_ascii_numbers_before_writing(tmp_path, args, fragment):
    assert_one_line_error(invoke("run", "digits-quick", *args, "--home", str(tmp_path / "home")), 2, fragment)
    assert not (tmp_path / "home").exists()


def test_queue_add_finds_dataset_files_in_the_data_root_and_accepts_downloads(tmp_path):
    data = tmp_path / "data" / "cifar-10-batches-py"
    data.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (data / name).write_bytes(b"")
    queued = invoke("queue", "add", "cifar10-paper", "--home", str(tmp_path / "home"),
                    "--data-root", str(tmp_path / "data"), "--json")
    assert queued.exit_code == 0, queued.output
    fetched = invoke("queue", "add", "svhn-paper", "--set", "download=true", "--home", str(tmp_path / "home"), "--json")
    assert fetched.exit_code == 0, fetched.output
    assert len(json.loads(queued.stdout)["ids"]) == len(json.loads(fetched.stdout)["ids"]) == 1


def test_the_model_names_checked_without_torch_are_the_registered_ones():
    from engine.config import MODELS
    from engine.train.models import REGISTERED_MODELS

    assert sorted(MODELS) == sorted(REGISTERED_MODELS)


def test_history_filters_refuse_non_ascii_digits(tmp_path):
    assert_one_line_error(invoke("history", "ls", "--where", "seed=\u0661", "--home", str(tmp_path)), 2, "ASCII digits")


@pytest.mark.parametrize("args, exit_code, fragment", [
    (["--cols", ",,,"], 2, "--cols"),
    (["--cols", "augmentation,,budget"], 2, "empty name"),
    (["--rows", ""], 2, "--rows"),
    (["--preset", "nope"], 2, "unknown preset 'nope'"),
    (["--preset", "digits-quick", "--metric", "final_test_acc"], 3, "no run in the history matches preset=digits-quick"),
    (["--format", "xls"], 2, "unknown format 'xls'"),
    (["--chart", "pie"], 2, "unknown chart 'pie'"),
])
def test_compare_names_the_option_that_is_wrong(tmp_path, args, exit_code, fragment):
    assert_one_line_error(invoke("compare", *args, "--home", str(tmp_path / "home")), exit_code, fragment)


@pytest.mark.parametrize("args, fragment", [
    (["queue", "add"], "Missing argument"),
    (["--bogus"], "No such option: --bogus"),
    (["history", "show", "one"], "run_id"),
    (["history", "show", "\u0661"], "run_id"),
    (["queue", "add", "digits-quick", "--seeds", "\u0663"], "--seeds"),
    (["queue", "add", "digits-quick", "--seeds"], "--seeds"),
    (["nosuchcommand"], "nosuchcommand"),
])
def test_a_usage_error_is_one_line_with_exit_2(tmp_path, args, fragment):
    result = invoke(*args, "--home", str(tmp_path / "home"))
    assert_one_line_error(result, 2, fragment)
    assert "╭" not in result.output and not (tmp_path / "home").exists()


def test_help_still_prints_the_full_help():
    result = invoke("queue", "add", "--help")
    assert result.exit_code == 0
    assert "Usage" in result.stdout and "--grid" in result.stdout and "--seeds" in result.stdout


def test_store_writes_keep_the_history_file_mode(tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        assert invoke("queue", "add", "digits-quick", "--home", str(tmp_path)).exit_code == 0
        history = tmp_path / "history.json"
        assert stat.S_IMODE(history.stat().st_mode) == 0o644  # the umask, as for any new file
        history.chmod(0o664)  # shared with a group on purpose
        assert invoke("queue", "add", "digits-quick", "--home", str(tmp_path)).exit_code == 0
        assert stat.S_IMODE(history.stat().st_mode) == 0o664
    finally:
        os.umask(previous)
