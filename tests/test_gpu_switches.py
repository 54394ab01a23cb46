"""The device switches (precision, channels_last, compile): config fields that resolve per
device, work on a CPU too, and are recorded in the run's summary."""

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from engine.config import RunConfig
from engine.errors import BadInput
from engine.paths import CHECKPOINT_NAME, METRICS_NAME
from engine.scheduling import memory_key
from engine.train.data import load_dataset
from engine.train.loop import train
from engine.train.step import Switches, resolve_switches
from tui_app.cli import app

TIMING_KEYS = {"time_train_s", "time_eval_s", "images_per_s"}
ALL_ON = {"precision": "bf16", "channels_last": True, "compile": True}


def _config(**changes) -> RunConfig:
    # threads=1: tiny convolutions on a shared CPU run much faster single-threaded.
    # test_batch_size=120 divides digits' 360 test images: one evaluation shape, one compile.
    values = {"dataset": "digits", "model": "small_cnn", "epochs": 3, "batch_size": 64, "crop_padding": 1,
              "test_batch_size": 120, "device": "cpu", "threads": 1, **changes}
    return RunConfig.from_dict(values)


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / METRICS_NAME).read_text().splitlines()
    return [{key: value for key, value in json.loads(line).items() if key not in TIMING_KEYS} for line in lines]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / CHECKPOINT_NAME, map_location="cpu", weights_only=True)["model"]


class StopAfterFirstEpoch(Exception):
    pass


def _stop_after_first_epoch(event: dict) -> None:
    if event["event"] == "epoch":  # emitted after the checkpoint and the metrics line
        raise StopAfterFirstEpoch


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_dataset("digits", tmp_path_factory.mktemp("data"))


def test_auto_keeps_the_choices_each_device_has_always_had():
    assert resolve_switches(RunConfig(), torch.device("cpu")) == Switches("fp32", False, False)
    # torch.device("cuda") needs no GPU to exist: the choice is made from its type.
    assert resolve_switches(RunConfig(), torch.device("cuda")) == Switches("bf16", True, False)
    assert resolve_switches(RunConfig(compile="auto"), torch.device("cuda")).compiled
    assert not resolve_switches(RunConfig(compile="auto"), torch.device("cpu")).compiled


def test_explicit_switches_hold_on_either_device():
    on, off = RunConfig(**ALL_ON), RunConfig(precision="fp32", channels_last=False, compile=False)
    for device in (torch.device("cpu"), torch.device("cuda")):
        assert resolve_switches(on, device) == Switches("bf16", True, True)
        assert resolve_switches(off, device) == Switches("fp32", False, False)


def test_switch_values_convert_from_any_spelling_and_stored_bools_stay_bools():
    config = RunConfig.from_dict({"compile": "yes", "channels_last": "AUTO", "precision": "bf16"})
    assert (config.compile, config.channels_last, config.precision) == (True, "auto", "bf16")
    assert RunConfig.from_dict({"compile": False, "channels_last": "off"}).to_dict()["channels_last"] is False
    assert RunConfig().to_dict()["compile"] is False  # the default is unchanged: no compile


@pytest.mark.parametrize("key, value, choices", [
    ("precision", "fp16", "auto, bf16, fp32"),
    ("channels_last", "maybe", "auto, true, false"),
    ("compile", "", "auto, true, false"),
])
def test_a_bad_switch_in_the_config_exits_2_listing_the_choices(tmp_path, key, value, choices):
    with pytest.raises(BadInput, match=choices):
        RunConfig.from_dict({key: value})
    home = tmp_path / "home"
    result = CliRunner().invoke(app, ["run", "digits-quick", "--set", f"{key}={value}", "--home", str(home)])
    assert result.exit_code == 2, result.output
    assert f"choose one of: {choices}" in result.stderr
    assert not home.exists()


def test_the_summary_records_switches_threads_and_no_peak_memory_on_a_cpu(tmp_path, digits):
    summary = train(_config(epochs=1, budget=0.5), tmp_path / "run", data_root=tmp_path, data=(digits, None))
    assert summary["precision"] == "fp32" and summary["channels_last"] is False and summary["compiled"] is False
    assert summary["threads"] == 1 == torch.get_num_threads()
    assert "peak_device_memory_bytes" in summary and summary["peak_device_memory_bytes"] is None
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["precision"] == "fp32"


# About 55 s on a busy 2-core CPU, nearly all of it compiling (each of the three compiled
# trainings compiles its model; the fp32 run takes 2 s): under the limit for `slow`.
def test_bf16_channels_last_compiled_training_on_a_cpu_learns_and_resumes_exactly(tmp_path, digits):
    fp32 = train(_config(), tmp_path / "fp32", data_root=tmp_path, data=(digits, None))
    config = _config(**ALL_ON)
    switched = train(config, tmp_path / "on", data_root=tmp_path, data=(digits, None))
    print(f"final test accuracy: fp32 {fp32['final_test_acc']:.4f}, "
          f"bf16 + channels_last + compile {switched['final_test_acc']:.4f}")
    assert (switched["precision"], switched["channels_last"], switched["compiled"]) == ("bf16", True, True)
    assert all(math.isfinite(record["train_loss"]) and math.isfinite(record["test_loss"])
               for record in _metrics(tmp_path / "on"))
    assert abs(switched["final_test_acc"] - fp32["final_test_acc"]) <= 0.03
    assert _metrics(tmp_path / "on") != _metrics(tmp_path / "fp32")  # the switches changed the arithmetic

    resumed_dir = tmp_path / "resumed"
    with pytest.raises(StopAfterFirstEpoch):
        train(config, resumed_dir, data_root=tmp_path, on_event=_stop_after_first_epoch, data=(digits, None))
    resumed = train(config, resumed_dir, data_root=tmp_path, data=(digits, None))
    for key in ("final_test_acc", "final_test_loss", "steps", "samples_backprop", "flops_train"):
        assert resumed[key] == switched[key], key
    assert _metrics(resumed_dir) == _metrics(tmp_path / "on")
    first, second = _weights(resumed_dir), _weights(tmp_path / "on")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_runs_stored_before_the_switches_share_memory_estimates_with_auto_runs():
    stored_before = {"model": "cifar_resnet18", "batch_size": 128, "dataset": "cifar10", "image_size": 0,
                     "sampler": "unif-sgd", "compile": False}
    defaults = RunConfig().to_dict()
    assert memory_key(stored_before) == memory_key(
        {**stored_before, "precision": defaults["precision"], "channels_last": defaults["channels_last"]})
    assert memory_key(stored_before) != memory_key({**stored_before, "precision": "fp32"})
