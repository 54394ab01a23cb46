"""Fuzzing the command line with bad input: hundreds of wrong presets, keys, values, grids,
seeds, ids, filters and compare options, drawn by a seeded generator.

Every one must end with exit code 2 (bad input) or 3 (not found), exactly one line on
stderr, nothing on stdout, no traceback, and the history and the home untouched.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.config import RunConfig
from engine.paths import history_path
from engine.records import new_record
from engine.store import Store
from tui_app.cli import app

SEED = 11
MINIMUM_CASES = 300
DRAWN_CASES = 400  # distinct command lines drawn
BAD_INPUT, NOT_FOUND = 2, 3

# Digits of other scripts that Python's int() and float() would read, and other near-numbers.
UNICODE_NUMBERS = ["\u0661\u0662", "\uff11\uff12", "\U0001d7d9\U0001d7da", "\u0967", "\u00bd", "\u00b2", "\u2167",
                   "1\u200b2", "\u0660.\u0665"]
HUGE = ["9" * 30, "-" + "9" * 30, "1" + "0" * 19]
INT_FIELDS = ["epochs", "batch_size", "seed", "val_size", "image_size", "crop_padding", "warmup_epochs", "threads",
              "test_batch_size", "sb_history", "ub_presample", "randaugment_ops", "split_seed"]
FLOAT_FIELDS = ["budget", "lr", "lr_gamma", "momentum", "weight_decay", "mixup_alpha", "cutmix_alpha", "ricap_beta"]
CHOICE_FIELDS = ["sampler", "augmentation", "dataset", "device", "budget_mode", "lr_schedule", "fidelity",
                 "score_average"]
BOOL_FIELDS = ["download", "compile", "score_smoothing", "keep_checkpoint"]
# Values wrong for every field of the kind (each field's checks refuse "-1" or "0" too, but not all both).
BAD_INTS = [*UNICODE_NUMBERS, *HUGE, "1.5", "abc", "", "0x10", "1_0", "1e3", "-1", "2 3", "++1", "nan"]
BAD_FLOATS = [*UNICODE_NUMBERS, "nan", "inf", "-inf", "abc", "", "1e400", "1,5", "0x1p-2", "-1", "1.2.3", "--1"]
BAD_CHOICES = ["magic", "SGD", "p_sgd", "", "\u0661", "unif-sgd,p-sgd", "none", "a" * 300, "../etc/passwd"]
BAD_BOOLS = ["maybe", "2", "", "ja", "\u0661", "truee", "nil"]
BAD_KEYS = ["colour", "EPOCHS", "ep och", "\u00e9pochs", "seed\u200b", "__class__", "config", "id", "outcome",
            "learning-rate", "x" * 200, "1", "\u0661"]
BAD_PRESETS = ["nope", "", " ", "DIGITS-QUICK", "digits-quick ", "../presets/digits-quick", "/etc/passwd",
               "digits\u2011quick", "\u0661", "x" * 300, "mine.toml", "presets/mine", "*", "digits-*"]
BAD_SEEDS = ["0", "-1", "1000000000", "9" * 30, "\u0661", "1.5", "abc", "\uff11", "10001"]
BAD_PRIORITIES = ["1001", "-1001", "9" * 30, "\u0661", "abc", "1.5", "\uff13"]
MISSING_IDS = ["999", "123456789", "9" * 30, "0"]
MALFORMED_IDS = ["abc", "\u0661", "1.5", "", "0x1", "\uff11", "1e2"]
METRICS_BAD = ["acc", "", "final_test_acc ", "FINAL_TEST_ACC", "\u0661"]
FORMATS_BAD = ["xls", "", "table ", "CSV", "csv,md", "\u0661"]
CHARTS_BAD = ["pie", "", "budget ", "BUDGET"]
FIELD_LISTS_BAD = [",,,", ",", "sampler,,budget", "", " , ", "colour", "sampler,colour", "budget,"]


def bad_assignment(rng: random.Random) -> str:
    kind = rng.choice(["int", "float", "choice", "bool", "key", "malformed", "milestones"])
    if kind == "int":
        return f"{rng.choice(INT_FIELDS)}={rng.choice(BAD_INTS)}"
    if kind == "float":
        return f"{rng.choice(FLOAT_FIELDS)}={rng.choice(BAD_FLOATS)}"
    if kind == "choice":
        return f"{rng.choice(CHOICE_FIELDS)}={rng.choice(BAD_CHOICES)}"
    if kind == "bool":
        return f"{rng.choice(BOOL_FIELDS)}={rng.choice(BAD_BOOLS)}"
    if kind == "key":
        return f"{rng.choice(BAD_KEYS)}={rng.choice(['1', 'x', ''])}"
    if kind == "milestones":
        return f"lr_milestones={rng.choice(['abc', '1.5', '0', '0.5,x', chr(0x661), '0.5,2'])}"
    return rng.choice(["epochs", "=5", "", " = ", "==", "budget"])


def bad_filter(rng: random.Random) -> str:
    """A --where that cannot be a filter: a value its field cannot hold, an unknown key, no `=`.
    (A well-formed filter that matches nothing, such as epochs=-1, is not bad input.)"""
    kind = rng.choice(["int", "float", "choice", "bool", "key", "malformed"])
    if kind == "int":
        return f"{rng.choice(INT_FIELDS)}={rng.choice([value for value in BAD_INTS if value != '-1'])}"
    if kind == "float":
        return f"{rng.choice(FLOAT_FIELDS)}={rng.choice([value for value in BAD_FLOATS if value != '-1'])}"
    if kind == "choice":
        return f"{rng.choice(CHOICE_FIELDS)}={rng.choice(BAD_CHOICES)}"
    if kind == "bool":
        return f"{rng.choice(BOOL_FIELDS)}={rng.choice(BAD_BOOLS)}"
    if kind == "key":
        return f"{rng.choice(BAD_KEYS)}=1"
    return rng.choice(["seed", "=1", "", " = ", "state"])


def bad_grid(rng: random.Random) -> str:
    kind = rng.choice(["no-equals", "empty", "key", "value", "huge"])
    if kind == "no-equals":
        return rng.choice(["budget", "sampler", "", "budget:0.3,1"])
    if kind == "empty":
        return rng.choice(["budget=", "budget=,,", "sampler= , "])
    if kind == "key":
        return f"{rng.choice(BAD_KEYS)}=1,2"
    if kind == "value":  # a comma would split a bad value into good ones ("1,5" is 1 and 5)
        field, bad = rng.choice([(rng.choice(INT_FIELDS), rng.choice(BAD_INTS)),
                                 (rng.choice(FLOAT_FIELDS), rng.choice(BAD_FLOATS)),
                                 (rng.choice(CHOICE_FIELDS), rng.choice(BAD_CHOICES))])
        bad = bad.replace(",", ";")
        return f"{field}=1,{bad}" if bad else f"{field}={bad}"
    return "seed=" + ",".join(str(seed) for seed in range(rng.randint(10_001, 10_100)))


def valid_extras(rng: random.Random) -> list[str]:
    """Harmless valid options around the bad one, so it is found among good ones."""
    return rng.choice([[], ["--set", "epochs=3"], ["--set", "lr=0.05", "--priority", "1"], ["--json"]])


def generate_cases(rng: random.Random) -> list[tuple[tuple[str, ...], frozenset[int]]]:
    makers = [
        # bad preset names, for every command that takes one
        lambda: (["run", rng.choice(BAD_PRESETS)], {BAD_INPUT}),
        lambda: (["queue", "add", rng.choice(BAD_PRESETS), *valid_extras(rng)], {BAD_INPUT}),
        lambda: (["presets", "show", rng.choice(BAD_PRESETS)], {BAD_INPUT}),
        lambda: (["compare", "--preset", rng.choice(BAD_PRESETS[:1] + BAD_PRESETS[3:])], {BAD_INPUT}),
        # bad --set keys and values
        lambda: (["queue", "add", "digits-quick", *valid_extras(rng), "--set", bad_assignment(rng)], {BAD_INPUT}),
        lambda: (["run", "digits-quick", "--set", bad_assignment(rng)], {BAD_INPUT}),
        lambda: (["queue", "add", "mine", "--set", bad_assignment(rng), "--set", bad_assignment(rng)], {BAD_INPUT}),
        # bad --grid
        lambda: (["queue", "add", "digits-quick", *valid_extras(rng), "--grid", bad_grid(rng)], {BAD_INPUT}),
        # bad --seeds and --priority
        lambda: (["queue", "add", "digits-quick", "--seeds", rng.choice(BAD_SEEDS)], {BAD_INPUT}),
        lambda: (["run", "digits-quick", "--seeds", rng.choice(BAD_SEEDS)], {BAD_INPUT}),
        lambda: (["queue", "add", "digits-quick", "--priority", rng.choice(BAD_PRIORITIES)], {BAD_INPUT}),
        lambda: (["queue", "priority", rng.choice(BAD_PRIORITIES), "1"], {BAD_INPUT}),
        # runs the queue will not start: unknown models, missing dataset files
        lambda: (["queue", "add", "digits-quick", "--set", f"model={rng.choice(['resnet9000', 'nope', 'x' * 40])}"],
                 {BAD_INPUT}),
        lambda: (["queue", "add", rng.choice(["cifar10-paper", "cifar100-paper", "svhn-paper"])], {BAD_INPUT}),
        lambda: (["queue", "add", "digits-quick", "--set", "dataset=imagefolder",
                  "--set", f"data_path=/no/such/{rng.randint(0, 10**6)}"], {BAD_INPUT}),
        # bad ids: malformed ones are usage errors, missing ones are not found
        lambda: ([*rng.choice([["history", "show"], ["queue", "cancel"], ["queue", "retry"]]),
                  rng.choice(MISSING_IDS)], {NOT_FOUND}),
        lambda: ([*rng.choice([["history", "show"], ["queue", "cancel"], ["queue", "retry"]]),
                  rng.choice(MALFORMED_IDS)], {BAD_INPUT}),
        lambda: (["queue", "priority", "5", rng.choice(MISSING_IDS)], {NOT_FOUND}),
        # bad --where
        lambda: ([*rng.choice([["history", "ls"], ["compare"]]), "--where", bad_filter(rng)], {BAD_INPUT}),
        # bad compare options and formats
        lambda: (["compare", rng.choice(["--rows", "--cols"]), rng.choice(FIELD_LISTS_BAD)], {BAD_INPUT}),
        lambda: (["compare", "--rows", "sampler", "--cols", "sampler"], {BAD_INPUT}),
        lambda: (["compare", "--metric", rng.choice(METRICS_BAD)], {BAD_INPUT}),
        lambda: (["compare", "--format", rng.choice(FORMATS_BAD)], {BAD_INPUT}),
        lambda: (["compare", "--chart", rng.choice(CHARTS_BAD)], {BAD_INPUT}),
        lambda: (["compare", "--plot", rng.choice(["out.txt", "out", "out.pdf", "out.svg.bak"])], {BAD_INPUT}),
        lambda: (["compare", "--baseline", rng.choice(["sampler", "colour=x", "budget=abc", ",", "seed=\u0661"])],
                 {BAD_INPUT}),
        # usage errors
        lambda: (rng.choice([["--bogus"], ["queue", "frob"], ["history", "rm"], ["presets", "rm", "x"],
                             ["queue", "add", "digits-quick", "--set"], ["queue", "add", "digits-quick", "--seeds"],
                             ["presets", "ls", "extra"], ["compare", "--format"], ["queue", "add"],
                             ["history", "show"], ["run", "digits-quick", "--device"],
                             ["queue", "add", "digits-quick", "--colour", "red"]]), {BAD_INPUT}),
    ]
    cases: dict[tuple[str, ...], frozenset[int]] = {}
    attempts = 0
    while len(cases) < DRAWN_CASES and attempts < 20 * DRAWN_CASES:
        attempts += 1
        args, codes = rng.choice(makers)()
        cases.setdefault(tuple(args), frozenset(codes))
    return sorted(cases.items())


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A small history (done, queued and cancelled runs) and one user preset."""
    home = tmp_path_factory.mktemp("fuzz-home")
    (home / "presets").mkdir()
    (home / "presets" / "mine.toml").write_text('description = "mine"\n[config]\nepochs = 4\n', encoding="utf-8")
    records = []
    for sampler in ("unif-sgd", "p-sgd"):
        for seed in (0, 1):
            record = new_record(RunConfig(sampler=sampler, seed=seed, epochs=4), "digits-quick", state="done")
            record["summary"] = {"final_test_acc": 0.9 + 0.01 * seed, "time_total_s": 3.0}
            records.append(record)
    records.append(new_record(RunConfig(epochs=4), "mine", state="queued"))
    records.append(new_record(RunConfig(epochs=5), "mine", state="cancelled"))
    Store(history_path(home)).add_runs(records)
    return home


def home_contents(home: Path) -> dict[str, bytes]:
    """Every file of the home by its path, bytes included (lock files come and go with reads)."""
    return {str(path.relative_to(home)): path.read_bytes() for path in sorted(home.rglob("*"))
            if path.is_file() and not path.name.endswith(".lock")}


def check(args: tuple[str, ...], expected: frozenset[int], exit_code: int, stdout: str, stderr: str,
          before: dict[str, bytes], home: Path) -> list[str]:
    """The faults of one case's outcome, by kind."""
    faults = []
    if "Traceback" in stdout + stderr or exit_code not in (0, 1, 2, 3, 130):
        faults.append("traceback")
    if exit_code not in expected:
        faults.append("wrong exit code")
    if len([line for line in stderr.splitlines() if line.strip()]) != 1:
        faults.append("not one line on stderr")
    if stdout.strip():
        faults.append("output on stdout")
    if home_contents(home) != before:
        faults.append("history or home changed")
    return faults


def test_bad_command_lines_are_refused_in_one_line_and_change_nothing(home, capsys):
    cases = generate_cases(random.Random(SEED))
    assert len(cases) >= MINIMUM_CASES
    runner = CliRunner()
    before = home_contents(home)
    assert "history.json" in before
    failures: dict[str, list[str]] = {}
    for args, expected in cases:
        result = runner.invoke(app, [*args, "--home", str(home)])
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            stderr += "Traceback (an exception escaped the command line)"
        for fault in check(args, expected, result.exit_code, result.stdout, stderr, before, home):
            failures.setdefault(fault, []).append(f"{list(args)} -> {result.exit_code}: {result.output[-300:]!r}")
        if home_contents(home) != before:
            break  # later cases would all see the changed home
    counts = {kind: len(failures.get(kind, [])) for kind in
              ("traceback", "wrong exit code", "not one line on stderr", "output on stdout", "history or home changed")}
    with capsys.disabled():
        print(f"\nCLI fuzz: {len(cases)} bad inputs; " + ", ".join(f"{kind}: {count}" for kind, count in counts.items()))
    assert not failures, "\n".join(f"{kind}: {examples[:5]}" for kind, examples in failures.items())


SUBPROCESS_CASES = [
    (("queue", "add", "digits-quick", "--set", "epochs=\u0661\u0662"), BAD_INPUT),
    (("queue", "add", "digits-quick", "--seeds", "1000000000"), BAD_INPUT),
    (("queue", "add", "digits-quick", "--set", "seed=" + "9" * 30), BAD_INPUT),
    (("compare", "--cols", ",,,"), BAD_INPUT),
    (("compare", "--preset", "nope"), BAD_INPUT),
    (("history", "show", "999"), NOT_FOUND),
    (("queue", "add"), BAD_INPUT),
    (("--bogus",), BAD_INPUT),
]


@pytest.mark.parametrize("args, exit_code", SUBPROCESS_CASES)
def test_bad_command_lines_through_a_real_process(home, args, exit_code):
    before = home_contents(home)
    environment = {**os.environ, "BUDGET_TUI_HOME": str(home), "COLUMNS": "80"}
    completed = subprocess.run([sys.executable, "-m", "tui_app.cli", *args], capture_output=True, text=True,
                               env=environment, timeout=120)
    assert check(args, frozenset({exit_code}), completed.returncode, completed.stdout, completed.stderr,
                 before, home) == [], (completed.returncode, completed.stdout, completed.stderr)
