"""Tests of engine.train.loop: reproducibility, resume, accounting (docs/methods.md, Compute
accounting) and the outputs."""

import json
import math
from pathlib import Path

import numpy
import pytest
import torch

from engine.config import RunConfig
from engine.errors import BadInput
from engine.paths import CHECKPOINT_NAME, METRICS_NAME, SUMMARY_NAME, USAGE_NAME
from engine.presets import get_preset
from engine.train.budget import plan_budget
from engine.train.data import load_dataset
from engine.train.preflight import check_runnable
from engine.train.accounting import Accounting, summarise, usage_entropy
from engine.train.loop import evaluate, train
from engine.train.models import build_model, forward_flops_per_sample

DIGITS_TRAIN = 1437
DIGITS_TEST = 360
TIMING_KEYS = {"time_train_s", "time_eval_s", "images_per_s"}
METRICS_KEYS = {
    "epoch", "step", "lr", "train_loss", "test_acc", "test_loss", "samples_backprop",
    "samples_forwarded", "distinct_seen", "usage_entropy", "time_train_s", "time_eval_s",
    "images_per_s", "loss_weight_mean", "loss_weight_std",
}


def _config(**changes) -> RunConfig:
    # threads=1: on a CPU shared with other jobs, multi-threaded tiny convolutions run ~50x
    # slower; results are the same either way.
    values = {"dataset": "digits", "model": "small_cnn", "epochs": 3, "batch_size": 64,
              "crop_padding": 1, "device": "cpu", "threads": 1, **changes}
    config = RunConfig(**values)
    config.validate()
    return config


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines()]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / CHECKPOINT_NAME, map_location="cpu", weights_only=True)["model"]


def _untimed(records: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if key not in TIMING_KEYS} for record in records]


def _assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


class StopAfterFirstEpoch(Exception):
    pass


def _stop_after_first_epoch(event: dict) -> None:
    # The loop writes the checkpoint and the metrics line before it emits 'epoch'.
    if event["event"] == "epoch":
        raise StopAfterFirstEpoch


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_dataset("digits", tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, digits):
    """One uninterrupted 3-epoch unif-sgd run, shared by the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    summary = train(_config(), run_dir, data_root=run_dir.parent, data=(digits, None))
    return run_dir, summary


def test_same_seed_same_run_different_seed_different_run(tmp_path, digits, reference_run):
    reference_dir, reference = reference_run
    again = train(_config(), tmp_path / "again", data_root=tmp_path, data=(digits, None))
    other = train(_config(seed=1), tmp_path / "other", data_root=tmp_path, data=(digits, None))
    assert _untimed(_metrics(tmp_path / "again")) == _untimed(_metrics(reference_dir))
    for key in ("final_test_acc", "final_test_loss", "best_test_acc", "steps", "samples_backprop"):
        assert again[key] == reference[key], key
    _assert_same_weights(_weights(tmp_path / "again"), _weights(reference_dir))
    assert numpy.array_equal(numpy.load(tmp_path / "again" / USAGE_NAME), numpy.load(reference_dir / USAGE_NAME))

    other_metrics = _metrics(tmp_path / "other")
    assert [m["train_loss"] for m in other_metrics] != [m["train_loss"] for m in _metrics(reference_dir)]
    assert other["final_test_loss"] != reference["final_test_loss"]
    reference_weights, other_weights = _weights(reference_dir), _weights(tmp_path / "other")
    assert not all(torch.equal(reference_weights[name], other_weights[name]) for name in reference_weights)


@pytest.mark.parametrize("sampler, budget", [("unif-sgd", 0.5), ("random-subset", 0.5), ("sgd", 1.0), ("ub", 1.0)])
def test_resume_ends_identical_to_an_uninterrupted_run(tmp_path, digits, sampler, budget):
    config = _config(sampler=sampler, budget=budget)
    uninterrupted = train(config, tmp_path / "a", data_root=tmp_path, data=(digits, None))

    resumed_dir = tmp_path / "b"
    with pytest.raises(StopAfterFirstEpoch):
        train(config, resumed_dir, data_root=tmp_path, on_event=_stop_after_first_epoch,
              data=(digits, None))
    assert len(_metrics(resumed_dir)) == 1
    assert torch.load(resumed_dir / CHECKPOINT_NAME, weights_only=True)["epoch"] == 1
    assert not (resumed_dir / SUMMARY_NAME).exists()
    events = []
    resumed = train(config, resumed_dir, data_root=tmp_path, on_event=events.append, data=(digits, None))

    plan = plan_budget(config, DIGITS_TRAIN)
    resume_events = [event for event in events if event["event"] == "resume"]
    assert resume_events == [{"event": "resume", "epoch": 1, "step": plan.steps_per_epoch}]
    assert [event["epoch"] for event in events if event["event"] == "epoch"] == [2, 3]
    for key in ("final_test_acc", "final_test_loss", "best_test_acc", "best_test_epoch", "epochs_run",
                "steps", "samples_backprop", "samples_forwarded", "flops_train", "budget_used", "plan"):
        assert resumed[key] == uninterrupted[key], key
    assert _untimed(_metrics(resumed_dir)) == _untimed(_metrics(tmp_path / "a"))
    _assert_same_weights(_weights(resumed_dir), _weights(tmp_path / "a"))
    assert numpy.array_equal(numpy.load(resumed_dir / USAGE_NAME), numpy.load(tmp_path / "a" / USAGE_NAME))


def test_resume_drops_metric_lines_written_after_the_checkpoint(tmp_path, digits):
    config = _config(epochs=2)
    run_dir = tmp_path / "run"
    with pytest.raises(StopAfterFirstEpoch):
        train(config, run_dir, data_root=tmp_path, on_event=_stop_after_first_epoch, data=(digits, None))
    first_line = (run_dir / METRICS_NAME).read_text()
    # A crash after the metrics append of a later epoch but before its checkpoint.
    with open(run_dir / METRICS_NAME, "a") as handle:
        handle.write(json.dumps({"epoch": 2, "stale": True}) + "\n")
    train(config, run_dir, data_root=tmp_path, data=(digits, None))
    records = _metrics(run_dir)
    assert [record["epoch"] for record in records] == [1, 2]
    assert "stale" not in records[1]
    assert (run_dir / METRICS_NAME).read_text().startswith(first_line)


def test_a_finished_run_called_again_returns_the_same_summary(tmp_path, digits):
    config = _config(epochs=1)
    first = train(config, tmp_path / "run", data_root=tmp_path, data=(digits, None))
    events = []
    second = train(config, tmp_path / "run", data_root=tmp_path, on_event=events.append, data=(digits, None))
    assert not any(event["event"] == "epoch" for event in events)
    for key in ("final_test_acc", "steps", "samples_backprop", "epochs_run"):
        assert second[key] == first[key]


def test_accounting_of_a_full_budget_run(reference_run):
    run_dir, summary = reference_run
    steps_per_epoch = DIGITS_TRAIN // 64
    steps = 3 * steps_per_epoch
    assert summary["steps"] == steps == summary["plan"]["total_steps"]
    assert summary["plan"] == plan_budget(_config(), DIGITS_TRAIN).to_dict()
    assert summary["samples_backprop"] == steps * 64
    assert summary["samples_forwarded"] == steps * 64
    assert summary["samples_forwarded_scoring"] == 0
    assert summary["budget_used"] == steps / (3 * steps_per_epoch) == 1.0
    flops = forward_flops_per_sample(build_model("small_cnn", num_classes=10, in_chans=1), (1, 8, 8))
    assert flops > 0
    assert summary["flops_forward_per_sample"] == flops
    assert summary["flops_train"] == 3 * flops * summary["samples_backprop"]
    assert summary["time_train_s"] > 0 and summary["time_eval_s"] > 0
    assert summary["time_train_s"] + summary["time_eval_s"] <= summary["time_total_s"]
    assert summary["time_overhead_s"] == pytest.approx(
        summary["time_total_s"] - summary["time_train_s"] - summary["time_eval_s"], abs=1e-9)
    assert summary["images_per_s"] == summary["samples_backprop"] / summary["time_train_s"]
    assert summary["epochs_run"] == 3
    assert summary["distinct_seen"] == DIGITS_TRAIN  # a full budget sees every sample
    assert summary["device"] == "cpu"
    assert summary["fidelity"] == "corrected"


def test_accounting_at_half_budget_in_subset_mode(tmp_path, digits):
    config = _config(budget=0.5, epochs=2)
    summary = train(config, tmp_path / "run", data_root=tmp_path, data=(digits, None))
    steps_per_epoch = int(0.5 * DIGITS_TRAIN) // 64  # 718 // 64 = 11
    assert summary["plan"]["steps_per_epoch"] == steps_per_epoch == 11
    assert summary["steps"] == 2 * steps_per_epoch
    assert summary["samples_backprop"] == 2 * steps_per_epoch * 64
    assert summary["budget_used"] == (2 * 11) / (2 * 22) == 0.5
    # FLOPs against the nominal full-budget unif-sgd run: 3 x forward x 2 x 22 steps x 64.
    flops = summary["flops_forward_per_sample"]
    assert summary["flops_budget_used"] == summary["flops_train"] / (3 * flops * 2 * 22 * 64) == 0.5
    records = _metrics(tmp_path / "run")
    # unif-sgd draws without replacement: the first epoch sees each used sample once.
    assert records[0]["distinct_seen"] == 11 * 64
    assert records[0]["usage_entropy"] == pytest.approx(math.log(11 * 64), rel=1e-12)
    assert 11 * 64 < records[1]["distinct_seen"] <= DIGITS_TRAIN
    usage = torch.from_numpy(numpy.load(tmp_path / "run" / USAGE_NAME))
    assert usage.shape == (DIGITS_TRAIN,)
    assert int(usage.sum()) == summary["samples_backprop"]
    assert int((usage > 0).sum()) == records[1]["distinct_seen"]
    assert usage_entropy(usage) == records[1]["usage_entropy"]


def test_accounting_in_scan_mode(tmp_path, digits):
    config = _config(sampler="sgd", budget=0.5, budget_mode="scan", epochs=4)
    summary = train(config, tmp_path / "run", data_root=tmp_path, data=(digits, None))
    assert summary["epochs_run"] == 2
    assert summary["steps"] == 2 * 22
    assert summary["budget_used"] == 0.5
    first, second = (record["distinct_seen"] for record in _metrics(tmp_path / "run"))
    # Full-data epochs with drop_last: each drops a different remainder of 1437 - 22*64.
    assert first == 22 * 64
    assert 22 * 64 < second <= DIGITS_TRAIN


def test_faithful_sgd_below_full_budget_spends_the_full_compute_on_the_sawtooth(tmp_path, digits):
    config = _config(sampler="sgd", budget=0.3, fidelity="faithful", epochs=5, batch_size=128)
    summary = train(config, tmp_path / "run", data_root=tmp_path, data=(digits, None))
    full, budgeted = DIGITS_TRAIN // 128, int(0.3 * DIGITS_TRAIN) // 128  # 11 and 3
    table = 5 * budgeted
    assert summary["steps"] == 5 * full
    assert summary["budget_used"] == summary["flops_budget_used"] == summary["budget_planned"] == 1.0
    # The last batch of epoch e reads table entry (e-1)*3 + 11, held at lr_min past 15.
    expected = [config.lr - (entry - 1) * (config.lr - config.lr_min) / (table - 1) if entry < table
                else config.lr_min for entry in ((epoch - 1) * budgeted + full for epoch in range(1, 6))]
    assert [record["lr"] for record in _metrics(tmp_path / "run")] == pytest.approx(expected, rel=1e-12)
    assert expected[1] > config.lr_min == expected[2]


def test_metrics_lr_is_the_lr_of_each_epochs_last_step(reference_run):
    run_dir, _ = reference_run
    total = 3 * 22
    for record in _metrics(run_dir):
        step = record["epoch"] * 22
        assert record["step"] == step
        expected = 0.1 - (step - 1) * (0.1 - 1e-6) / (total - 1)
        assert record["lr"] == pytest.approx(expected, rel=1e-9, abs=0)


def test_usage_entropy_of_uniform_and_one_hot_counts():
    for count in (1, 2, 10, 1437):
        assert usage_entropy(torch.full((count,), 3, dtype=torch.long)) == pytest.approx(
            math.log(count), rel=1e-12, abs=1e-15)
    one_hot = torch.zeros(50, dtype=torch.long)
    one_hot[7] = 5
    assert usage_entropy(one_hot) == 0.0
    assert usage_entropy(torch.zeros(5, dtype=torch.long)) == 0.0
    # Unused samples do not count: two samples used equally among five.
    assert usage_entropy(torch.tensor([0, 4, 0, 4, 0])) == pytest.approx(math.log(2), rel=1e-12)
    # A skewed count: -(1/4 ln 1/4 + 3/4 ln 3/4).
    assert usage_entropy(torch.tensor([1, 3])) == pytest.approx(
        -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), rel=1e-12)


def test_validation_split_is_reported(tmp_path):
    config = _config(val_size=200, epochs=2)
    summary = train(config, tmp_path / "run", data_root=tmp_path)
    records = _metrics(tmp_path / "run")
    assert summary["plan"]["num_train"] == DIGITS_TRAIN - 200
    for record in records:
        assert set(record) == METRICS_KEYS | {"val_acc", "val_loss"}
        assert 0.0 <= record["val_acc"] <= 1.0
        assert (record["val_acc"] * 200) == pytest.approx(round(record["val_acc"] * 200), abs=1e-9)
        assert record["val_loss"] > 0
        assert record["distinct_seen"] <= DIGITS_TRAIN - 200
    best = max(records, key=lambda record: record["val_acc"])
    assert summary["final_val_acc"] == records[-1]["val_acc"]
    assert summary["best_val_acc"] == best["val_acc"]
    assert summary["best_val_epoch"] == best["epoch"]
    assert summary["test_acc_at_best_val"] == records[best["epoch"] - 1]["test_acc"]


def test_metrics_lines_and_summary_file(reference_run):
    run_dir, summary = reference_run
    records = _metrics(run_dir)
    assert [record["epoch"] for record in records] == [1, 2, 3]
    for record in records:
        assert set(record) == METRICS_KEYS
        assert record["samples_backprop"] == record["epoch"] * 22 * 64
        assert record["samples_forwarded"] == record["samples_backprop"]
        assert record["distinct_seen"] <= DIGITS_TRAIN
        assert 0.0 <= record["test_acc"] <= 1.0
        assert record["test_acc"] * DIGITS_TEST == pytest.approx(round(record["test_acc"] * DIGITS_TEST), abs=1e-9)
        assert record["train_loss"] > 0 and record["test_loss"] > 0
    assert json.loads((run_dir / SUMMARY_NAME).read_text()) == summary
    assert summary["final_test_acc"] == records[-1]["test_acc"]
    assert summary["final_test_loss"] == records[-1]["test_loss"]
    best = max(records, key=lambda record: record["test_acc"])
    assert summary["best_test_acc"] == best["test_acc"]
    assert summary["best_test_epoch"] == best["epoch"]
    assert "test_acc_at_best_val" not in summary


def test_events_report_start_epochs_and_done(tmp_path, digits):
    events, threads = [], []

    def record(event: dict) -> None:
        events.append(event)
        threads.append(torch.get_num_threads())

    summary = train(_config(epochs=2), tmp_path / "run", data_root=tmp_path, on_event=record,
                    data=(digits, None))
    assert set(threads) == {1}  # config.threads reaches torch
    kinds = [event["event"] for event in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("epoch") == 2
    assert events[0]["plan"] == summary["plan"]
    assert events[-1]["summary"] == summary
    steps = [event["step"] for event in events if event["event"] == "step"]
    assert steps == sorted(steps) and steps[-1] == 44


def test_evaluate_counts_accuracy_and_mean_loss_over_uneven_batches():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    images = torch.randint(0, 256, (10, 1, 2, 2), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])

    def normalise(batch: torch.Tensor) -> torch.Tensor:
        return batch.float() / 255

    model.train()
    accuracy, loss = evaluate(model, model, normalise, images, labels, batch_size=3)
    assert model.training  # mode restored
    with torch.no_grad():
        logits = model(normalise(images))
    expected_correct = int((logits.argmax(1) == labels).sum())
    assert accuracy == expected_correct / 10
    expected_loss = float(torch.nn.functional.cross_entropy(logits, labels))
    assert loss == pytest.approx(expected_loss, rel=1e-6)


def test_summarise_labels_final_best_and_val_selected_accuracies():
    config = _config(epochs=3)
    plan = plan_budget(config, DIGITS_TRAIN)
    history = [
        {"epoch": 1, "test_acc": 0.5, "test_loss": 1.0, "val_acc": 0.6},
        {"epoch": 2, "test_acc": 0.9, "test_loss": 0.4, "val_acc": 0.7},
        {"epoch": 3, "test_acc": 0.8, "test_loss": 0.5, "val_acc": 0.95,
         "distinct_seen": 700, "usage_entropy": 6.5},
    ]
    accounting = Accounting(steps=33, samples_backprop=2112, samples_forwarded_train=2112,
                            samples_forwarded_scoring=100, time_train_s=2.0, time_eval_s=0.5,
                            time_total_s=3.0)
    summary = summarise(config, plan, accounting, history, 1000, torch.device("cpu"))
    assert summary["final_test_acc"] == 0.8 and summary["final_test_loss"] == 0.5
    assert summary["best_test_acc"] == 0.9 and summary["best_test_epoch"] == 2
    assert summary["best_val_epoch"] == 3 and summary["best_val_acc"] == 0.95
    assert summary["test_acc_at_best_val"] == 0.8 and summary["final_val_acc"] == 0.95
    assert summary["samples_forwarded"] == 2212
    assert summary["flops_train"] == 3 * 1000 * 2112 + 1000 * 100
    assert summary["time_overhead_s"] == pytest.approx(0.5)
    assert summary["images_per_s"] == 2112 / 2.0
    assert summary["budget_used"] == 33 / 66
    assert summary["epochs_run"] == 3
    assert summary["distinct_seen"] == 700 and summary["usage_entropy"] == 6.5  # of the last epoch


def test_check_runnable_rejects_before_writing_anything(tmp_path):
    with pytest.raises(BadInput, match="under one batch"):
        check_runnable(_config(budget=0.02), tmp_path)  # floor(0.02 * 1437) = 28 < 64
    with pytest.raises(BadInput, match="unknown model"):
        check_runnable(_config(model="no_such_model_xyz"), tmp_path)
    splits, val = check_runnable(_config(val_size=100), tmp_path)
    assert splits.train_images.shape == (DIGITS_TRAIN - 100, 1, 8, 8)
    assert val[0].shape == (100, 1, 8, 8)
    assert list(tmp_path.iterdir()) == []


def test_training_on_tiny_synthetic_data(tmp_path):
    """A tiny separable set passed in directly: the loop needs no dataset on disk."""
    from engine.train.data import DatasetSplits

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    images = torch.randint(0, 60, (64, 1, 8, 8), generator=generator, dtype=torch.uint8)
    images[labels == 1, :, :, :4] += 180  # class 1: bright left half
    splits = DatasetSplits("synthetic", images, labels, images[:32].clone(), labels[:32].clone(),
                           num_classes=2, mean=(0.3,), std=(0.3,), flip=False)
    config = _config(epochs=4, batch_size=16, lr=0.05)
    summary = train(config, tmp_path / "run", data_root=tmp_path, data=(splits, None))
    assert summary["steps"] == 16
    assert summary["final_test_acc"] == 1.0


def test_digits_quick_preset_reaches_95_percent(tmp_path, digits):
    # The product's promise: the default preset learns digits well in seconds.
    config = get_preset("digits-quick", None).config({"threads": 1})
    summary = train(config, tmp_path / "run", data_root=tmp_path, data=(digits, None))
    assert summary["epochs_run"] == 15
    assert summary["final_test_acc"] >= 0.95


def test_a_diverging_run_fails_instead_of_reporting_garbage(tmp_path):
    from engine.train.loop import TrainingDiverged

    config = RunConfig(dataset="digits", model="small_cnn", epochs=2, batch_size=64, crop_padding=1,
                       device="cpu", threads=1, lr=1e6, momentum=0.0)
    with pytest.raises(TrainingDiverged):
        train(config, tmp_path / "run", data_root=tmp_path)
    assert not (tmp_path / "run" / "summary.json").exists()
