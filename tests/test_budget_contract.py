"""The equal-budget contract, for every registered sampler in both budget modes: a run's last
step runs at lr_min and it backpropagates its planned budget to within one batch, or (where
the sampler cannot spend it by design) its record says how much it spent and why. A
sampler/mode pair that cannot honour the contract is refused as bad input (exit 2) before
anything is written. A new sampler joins the registry and inherits these checks."""

import json

import pytest
from typer.testing import CliRunner

from engine.config import BUDGET_MODES, RunConfig
from engine.errors import BadInput
from engine.paths import METRICS_NAME
from engine.train.budget import plan_budget
from engine.train.data import load_dataset
from engine.train.loop import train
from engine.train.samplers import SAMPLERS
from tui_app.cli import app

BUDGETS = (0.2, 0.5, 1.0)
# The pairs refused, and why: plain sgd trains on the full data, so a subset budget has no
# meaning for it; sb sets its budget through its selection rate, which scan's fewer epochs
# would cut a second time.
REFUSED = {("sgd", "subset", 0.2), ("sgd", "subset", 0.5), ("sb", "scan", 0.2), ("sb", "scan", 0.5)}


def _values(sampler: str, mode: str, budget: float) -> dict:
    # threads=1: tiny convolutions on a shared CPU run far faster single-threaded.
    return {"dataset": "digits", "model": "small_cnn", "epochs": 3, "batch_size": 64, "crop_padding": 1,
            "device": "cpu", "threads": 1, "sampler": sampler, "budget_mode": mode, "budget": budget}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_dataset("digits", tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("mode", BUDGET_MODES)
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_spends_its_budget_and_ends_at_lr_min(sampler, mode, budget, digits, tmp_path):
    try:
        config = RunConfig.from_dict(_values(sampler, mode, budget))
    except BadInput as refusal:
        assert (sampler, mode, budget) in REFUSED, f"refused unexpectedly: {refusal}"
        return
    assert (sampler, mode, budget) not in REFUSED, "should have been refused"
    summary = train(config, tmp_path / "run", data_root=tmp_path, data=(digits, None))
    plan = plan_budget(config, digits.train_images.shape[0])
    last = json.loads((tmp_path / "run" / METRICS_NAME).read_text().splitlines()[-1])

    assert last["lr"] == config.lr_min
    assert last["step"] == summary["steps"]
    planned = plan.total_steps * config.batch_size
    assert summary["samples_backprop"] == summary["steps"] * config.batch_size <= planned
    assert summary["budget_planned"] == plan.total_steps / plan.nominal_steps
    assert summary["budget_used"] == summary["steps"] / plan.nominal_steps
    if planned - summary["samples_backprop"] > config.batch_size:
        # Only a sampler that says why may fall short, and the record says it.
        reason = SAMPLERS[sampler].shortfall_reason
        assert reason is not None, f"{sampler} spent {summary['steps']} of {plan.total_steps} steps"
        assert summary["budget_unspent_reason"] == reason
    else:
        assert "budget_unspent_reason" not in summary


def test_the_refused_pairs_exit_2_before_anything_is_written(tmp_path):
    runner = CliRunner()
    for sampler, mode, budget in sorted(REFUSED):
        home = tmp_path / f"{sampler}-{mode}-{budget}"
        result = runner.invoke(app, ["run", "digits-quick", "--set", f"sampler={sampler}", "--set",
                                     f"budget_mode={mode}", "--set", f"budget={budget}", "--home", str(home)])
        assert result.exit_code == 2, result.output
        assert "budget" in result.stderr and "Traceback" not in result.output
        assert not home.exists()
    result = runner.invoke(app, ["queue", "add", "digits-quick", "--grid", "sampler=unif-sgd,sb",
                                 "--set", "budget_mode=scan", "--set", "budget=0.3", "--home", str(tmp_path / "q")])
    assert result.exit_code == 2, result.output
    assert "sampler=sb" in result.stderr
    assert not (tmp_path / "q").exists()
