"""Several runs per device: the placement on a fake inventory, the flags, nvidia-smi's
output, and a real worker running two digits runs side by side on the CPU."""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine import processes, queue
from engine.config import RunConfig
from engine.errors import BadInput, BudgetTuiError
from engine.scheduling import (CUDA_CONTEXT_BYTES, DEFAULT_PACKED_RUNS_PER_GPU, GIB, MIB, PEAK_MEMORY_FIELD, Gpu,
                               MemoryEstimates, Placement, Slot, SlotRequest, parse_nvidia_smi, parse_size,
                               plan_placement, slot_environment)
from engine.store import Store
from engine.worker import Worker
from tui_app.cli import app

runner = CliRunner()
# Captured from `nvidia-smi --query-gpu=index,memory.total --format=csv,noheader,nounits`.
H100_X2 = "0, 81559\n1, 81559\n"
H200 = "0, 143771\n"
CIFAR = {"model": "cifar_resnet18", "batch_size": 128, "dataset": "cifar10", "image_size": 0,
         "sampler": "unif-sgd", "compile": False, "device": "auto"}


def fake_gpus(*memory_gib: float):
    """A reader that reports GPUs 0, 1, ... with these memories, as read_gpus would."""
    return lambda: ([Gpu(str(index), int(gib * GIB)) for index, gib in enumerate(memory_gib)], "")


def no_gpu():
    return [], "nvidia-smi is not installed"


def must_not_read():
    raise AssertionError("the inventory was read although no flag needs it")


def run(run_id: int, **config) -> dict:
    return {"id": run_id, "config": {**CIFAR, **config}, "state": "queued"}


def finished(peak: int | None, **config) -> dict:
    summary = {"device": "cuda:0"} | ({PEAK_MEMORY_FIELD: peak} if peak is not None else {})
    return {"id": 999, "config": {**CIFAR, **config}, "state": "done", "summary": summary}


def pack(fraction: float, *memory_gib: float, history=(), **flags) -> Placement:
    placement = plan_placement(SlotRequest(pack_memory=fraction, **flags), fake_gpus(*memory_gib), threads=16)
    placement.estimates.learn(history)
    return placement


def place_all(placement: Placement, runs: list[dict]) -> list[str | None]:
    """Take a slot for each run in order, as the worker does; the GPU each went to."""
    where = []
    for record in runs:
        slot = placement.take(record) if placement.fits(record) else None
        where.append(slot.gpu if slot else None)
    return where


# --- nvidia-smi
def test_nvidia_smi_output_is_read_into_gpus_with_their_memory():
    assert parse_nvidia_smi(H100_X2) == [Gpu("0", 81559 * MIB), Gpu("1", 81559 * MIB)]
    assert parse_nvidia_smi(H200 + "\n") == [Gpu("0", 143771 * MIB)]
    assert parse_nvidia_smi("0, [N/A]\n") == [Gpu("0", None)]
    assert parse_nvidia_smi("") == []
    with pytest.raises(BudgetTuiError, match="unexpected line"):
        parse_nvidia_smi("No devices were found\n")


def test_a_gpu_of_unknown_memory_cannot_be_packed():
    reader = lambda: ([Gpu("0", 80 * GIB), Gpu("1", None)], "")  # noqa: E731
    with pytest.raises(BadInput, match="does not report for GPU 1"):
        plan_placement(SlotRequest(pack_memory=0.9), reader, threads=4)
    assert plan_placement(SlotRequest(gpus="0", pack_memory=0.9), reader, threads=4).budgets == {"0": int(72 * GIB)}


# --- slots without packing
def test_without_the_new_flags_slots_are_what_gpus_says_and_the_machine_is_not_read():
    assert plan_placement(SlotRequest(), must_not_read).slots == [Slot(None)]
    assert plan_placement(SlotRequest(gpus="cpu"), must_not_read).slots == [Slot("")]
    placement = plan_placement(SlotRequest(gpus="0,1"), must_not_read)
    assert placement.slots == [Slot("0"), Slot("1")] and placement.labels() == ["gpu 0", "gpu 1"]


@pytest.mark.parametrize("count, machine_threads, each", [(2, 16, 8), (2, 2, 1), (3, 2, 1), (1, 8, 8)])
def test_cpu_slots_split_the_machine_threads(count, machine_threads, each):
    placement = plan_placement(SlotRequest(slots=count), no_gpu, threads=machine_threads)
    assert placement.slots == [Slot("", lane=lane, threads=each) for lane in range(1, count + 1)]
    assert [place_all(placement, [run(i)]) for i in range(count + 1)] == [[""]] * count + [[None]]


def test_slots_per_gpu_spreads_runs_across_gpus_then_stops_at_the_cap():
    placement = plan_placement(SlotRequest(slots_per_gpu=2), fake_gpus(80, 80), threads=16)
    assert placement.labels() == ["gpu 0 x2 (4 threads each)", "gpu 1 x2 (4 threads each)"]
    assert place_all(placement, [run(i) for i in range(5)]) == ["0", "1", "0", "1", None]
    placement.release(Slot("1", lane=2, threads=4))
    assert place_all(placement, [run(9)]) == ["1"]


def test_slots_per_gpu_with_named_gpus_does_not_need_nvidia_smi():
    placement = plan_placement(SlotRequest(gpus="3", slots_per_gpu=3), must_not_read, threads=6)
    assert placement.slots == [Slot("3", lane=lane, threads=2) for lane in (1, 2, 3)]


# --- packing by memory
def test_packing_spreads_then_packs_until_the_fraction_of_memory_is_reached():
    history = [finished(int(9.5 * GIB)), finished(int(8 * GIB))]  # the larger recorded peak counts
    placement = pack(0.5, 80, 80, history=history)  # 40 GiB per GPU; each run 9.5 GiB + its context
    assert placement.budgets == {"0": 40 * GIB, "1": 40 * GIB}
    assert place_all(placement, [run(i) for i in range(9)]) == ["0", "1"] * 4 + [None]
    for gpu in ("0", "1"):
        assert placement.used(gpu) == 4 * (int(9.5 * GIB) + CUDA_CONTEXT_BYTES) <= 40 * GIB
    assert not placement.has_room() or not placement.fits(run(10))
    placement.release(next(slot for slot in placement.held if slot.gpu == "1"))
    assert place_all(placement, [run(11), run(12)]) == ["1", None]


def test_a_run_of_unknown_peak_takes_a_whole_gpu():
    placement = pack(0.9, 80, 80, history=[finished(4 * GIB)])
    known, unknown = run(1), run(2, model="cifar_wrn_28_10")
    assert place_all(placement, [known, unknown]) == ["0", "1"]  # the unknown one needs an empty GPU
    assert placement.used("1") == placement.budgets["1"]
    assert place_all(placement, [run(3)]) == ["0"]  # beside the known run, not beside the unknown one
    assert place_all(placement, [run(4, model="other")]) == [None]  # no empty GPU left


def test_a_run_of_unknown_peak_uses_the_default_estimate_when_given():
    placement = pack(0.9, 80, history=[], run_memory="20G")  # 72 GiB: three runs of 20 GiB
    assert place_all(placement, [run(i) for i in range(4)]) == ["0", "0", "0", None]
    assert placement.used("0") == 60 * GIB


def test_a_recorded_peak_is_matched_on_model_batch_and_data_only():
    estimates = MemoryEstimates(default_bytes=None)
    estimates.learn([finished(2 * GIB), finished(None),  # no peak recorded: ignored
                     {**finished(3 * GIB), "summary": {"device": "cpu", PEAK_MEMORY_FIELD: 3 * GIB}},
                     finished(True), finished(-5)])
    assert estimates.estimate(run(1)) == 2 * GIB + CUDA_CONTEXT_BYTES
    assert estimates.estimate(run(2, batch_size=512)) is None
    assert estimates.estimate(run(3, dataset="cifar100")) is None
    assert estimates.estimate(run(4, device="cpu")) == 0  # a CPU run holds no device memory
    own = {**run(5, batch_size=512), "summary": {"device": "cuda", PEAK_MEMORY_FIELD: 7 * GIB}}
    assert estimates.estimate(own) == 7 * GIB + CUDA_CONTEXT_BYTES


def test_slots_per_gpu_caps_packing_and_packing_has_a_default_cap():
    tiny = [finished(10 * MIB)]
    capped = pack(0.9, 80, history=tiny, slots_per_gpu=2)
    assert place_all(capped, [run(i) for i in range(3)]) == ["0", "0", None]
    default = pack(0.9, 80, history=tiny)
    assert place_all(default, [run(i) for i in range(DEFAULT_PACKED_RUNS_PER_GPU + 1)]) == (
        ["0"] * DEFAULT_PACKED_RUNS_PER_GPU + [None])
    assert default.labels() == [f"gpu 0 up to {DEFAULT_PACKED_RUNS_PER_GPU} runs within 72.0 of 80.0 GiB "
                                f"(2 threads each)"]


def test_a_run_larger_than_the_budget_runs_alone_instead_of_blocking_the_queue():
    placement = pack(0.5, 80, history=[finished(60 * GIB)])
    assert place_all(placement, [run(1), run(2)]) == ["0", None]


def test_packing_on_gpus_of_different_sizes_and_the_status_view():
    placement = pack(0.9, 80, 141, history=[finished(30 * GIB)])
    # 72 and 126.9 GiB: each run goes where the most room is left, while it fits.
    assert place_all(placement, [run(i) for i in range(1, 8)]) == ["1", "1", "0", "1", "0", "1", None]
    status = placement.describe()
    assert status["mode"] == "pack-memory"
    assert [(row["gpu"], row["reserved_bytes"]) for row in status["gpu_memory"]] == [
        ("0", 2 * (30 * GIB + CUDA_CONTEXT_BYTES)), ("1", 4 * (30 * GIB + CUDA_CONTEXT_BYTES))]
    assert sorted(row["run"] for row in status["slots"] if row["run"] is not None) == [1, 2, 3, 4, 5, 6]


# --- the flags
@pytest.mark.parametrize("request_, message", [
    (SlotRequest(slots=0), "--slots takes a number of runs, at least 1"),
    (SlotRequest(slots_per_gpu=-1), "--slots-per-gpu takes a number of runs"),
    (SlotRequest(pack_memory=0.0), "--pack-memory is the fraction"),
    (SlotRequest(pack_memory=1.5), "--pack-memory is the fraction"),
    (SlotRequest(pack_memory=float("nan")), "--pack-memory is the fraction"),
    (SlotRequest(run_memory="6G"), "add --pack-memory"),
    (SlotRequest(pack_memory=0.9, run_memory="lots"), "--run-memory takes a size"),
    (SlotRequest(slots=2, slots_per_gpu=2), "give one or the other"),
    (SlotRequest(slots=2, pack_memory=0.9), "give one or the other"),
    (SlotRequest(gpus="0", slots=2), "--gpus 0 names GPUs"),
    (SlotRequest(gpus="cpu", slots_per_gpu=2), "--gpus is 'cpu'"),
    (SlotRequest(gpus="0,0", slots_per_gpu=2), "distinct GPU numbers"),
    (SlotRequest(slots_per_gpu=2), "none was found (nvidia-smi is not installed)"),
    (SlotRequest(pack_memory=0.9), "none was found"),
])
def test_contradictory_or_out_of_range_flags_are_refused(request_, message):
    with pytest.raises(BadInput) as refused:
        plan_placement(request_, no_gpu, threads=4)
    assert message in str(refused.value)


def test_named_gpus_must_exist_when_packing():
    with pytest.raises(BadInput, match="names GPU 2, but nvidia-smi lists only 0, 1"):
        plan_placement(SlotRequest(gpus="2", pack_memory=0.9), fake_gpus(80, 80), threads=4)


def test_sizes_read_with_binary_units():
    assert [parse_size(text, "--x") for text in ("6G", "6GiB", "512m", "1.5T", "64 KB")] == [
        6 * GIB, 6 * GIB, 512 * MIB, int(1.5 * 1024 * GIB), 64 * 1024]
    for text in ("6", "G", "-1G", "1e3G", "0.0000000001K"):
        with pytest.raises(BadInput):
            parse_size(text, "--x")


@pytest.mark.parametrize("flags, message", [
    (["--slots", "0"], "--slots takes a number of runs"),
    (["--slots", "2", "--gpus", "0,1"], "names GPUs"),
    (["--pack-memory", "2"], "--pack-memory is the fraction"),
    (["--run-memory", "8G"], "add --pack-memory"),
    (["--slots", "two"], "Invalid value for '--slots'"),
    (["--slots", "2", "--executor", "slurm"], "--slots places runs on this machine"),
])
def test_the_worker_command_refuses_bad_flags_with_exit_2_and_writes_nothing(tmp_path, flags, message):
    home = tmp_path / "home"
    result = runner.invoke(app, ["worker", "--once", "--home", str(home), *flags])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not home.exists()


def test_a_detached_worker_gets_the_same_flags():
    assert SlotRequest(slots=2).arguments() == ["--slots=2"]
    assert SlotRequest(gpus="0", slots_per_gpu=4, pack_memory=0.9, run_memory="6G").arguments() == [
        "--slots-per-gpu=4", "--pack-memory=0.9", "--run-memory=6G"]


# --- the child's environment
def test_a_slot_gives_its_threads_and_gpu_to_the_run_process():
    environment = slot_environment(Slot("", lane=1, threads=1), {"PATH": os.environ["PATH"]})
    assert environment["CUDA_VISIBLE_DEVICES"] == "" and environment["OMP_NUM_THREADS"] == "1"
    code = "import torch; print(torch.get_num_threads())"
    child = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "1"  # torch sizes its pool from it when the config sets no threads
    gpu = slot_environment(Slot("1", lane=2, threads=4), {})
    assert gpu == {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "OMP_NUM_THREADS": "4",
                   "MKL_NUM_THREADS": "4"}
    assert slot_environment(Slot("1"), {}) == {"CUDA_VISIBLE_DEVICES": "1"}  # --gpus alone: as before
    assert slot_environment(Slot(None), {"A": "b"}) == {"A": "b"}


def test_scheduling_and_worker_import_no_torch():
    code = "import sys, engine.scheduling, engine.worker; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == (
        "False")


# --- the worker with a placement
@dataclass
class FakeRun:
    run_id: int
    code: int | None = None

    def poll(self):
        return self.code

    def ending(self):
        return queue.RunState.FAILED, {"exit_code": self.code, "message": "fake"}


@dataclass
class FakeExecutor:
    runs_outlive_worker = False
    started: list = field(default_factory=list)

    def start(self, record, slot):
        self.started.append((record["id"], slot.gpu))
        return FakeRun(record["id"])

    def follow(self, record):
        return None


def test_the_worker_claims_in_queue_order_while_the_next_run_fits(tmp_path):
    store = Store(tmp_path / "history.json")
    config = RunConfig(dataset="cifar10", model="cifar_resnet18", batch_size=128)
    (earlier,) = queue.enqueue(store, "p", [config])
    store.update_run(earlier, state="done", summary={"device": "cuda:0", PEAK_MEMORY_FIELD: 15 * GIB})
    big = config.replace(model="cifar_wrn_28_10")  # no peak known: a whole GPU
    ids = queue.enqueue(store, "p", [config, config, big, config])
    placement = plan_placement(SlotRequest(pack_memory=0.5), fake_gpus(80, 80), threads=4)  # 40 GiB each
    executor = FakeExecutor()
    worker = Worker(tmp_path, placement.slots, executor, placement=placement)
    assert worker._fill_slots()
    assert executor.started == [(ids[0], "0"), (ids[1], "1")]  # the unknown one waits for an empty GPU
    assert [store.get_run(run_id)["state"] for run_id in ids[2:]] == ["queued", "queued"]  # order kept
    worker.running[next(slot for slot in worker.running if slot.gpu == "1")].code = 0
    worker._reap()
    worker._fill_slots()
    assert executor.started[2:] == [(ids[2], "1"), (ids[3], "0")]


def test_a_worker_without_placement_flags_fills_each_free_slot_once(tmp_path):
    """The cluster executor's job slots (and --gpus) keep one run per slot, first free first."""
    store = Store(tmp_path / "history.json")
    ids = queue.enqueue(store, "p", [RunConfig(seed=seed) for seed in range(3)])
    executor = FakeExecutor()
    worker = Worker(tmp_path, [Slot(None, job=1), Slot(None, job=2)], executor)
    assert worker._fill_slots() and not worker._fill_slots()
    assert [(run.run_id, slot.label()) for slot, run in worker.running.items()] == [
        (ids[0], "job 1"), (ids[1], "job 2")]
    assert worker.placement.labels() == ["slurm, up to 2 runs in flight"]  # not one label per job slot
    worker.running[Slot(None, job=1)].code = 0
    worker._reap()
    assert worker.placement.free_slots() == [Slot(None, job=1)]
    worker._fill_slots()
    assert worker.running[Slot(None, job=1)].run_id == ids[2]


def test_claim_next_keeps_the_order_when_the_head_must_wait(tmp_path):
    store = Store(tmp_path / "history.json")
    first, second = queue.enqueue(store, "p", [RunConfig(), RunConfig(seed=1)])
    me = processes.process_identity(os.getpid())
    assert queue.claim_next(store, me, accept=lambda record: record["id"] != first) is None
    assert {record["state"] for record in store.list_runs()} == {"queued"}
    assert queue.claim_next(store, me, accept=lambda record: True)["id"] == first


# --- end to end: a real worker, two runs side by side on the CPU
def test_worker_once_with_two_cpu_slots_runs_two_runs_at_the_same_time(tmp_path):
    home = tmp_path / "home"
    store = Store(home / "history.json")
    config = RunConfig(dataset="digits", model="small_cnn", epochs=1, batch_size=64, crop_padding=1, lr=0.05,
                       device="cpu")  # threads=0: the slot's share of the machine
    ids = queue.enqueue(store, "p", [config.replace(seed=seed) for seed in range(3)])
    worker = subprocess.Popen([sys.executable, "-m", "tui_app.cli", "worker", "--once", "--slots", "2",
                               "--home", str(home)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    most_at_once, status = 0, None
    deadline = time.monotonic() + 400  # 45 s on a 2-core machine busy with other work; generous for a busier one
    try:
        while worker.poll() is None and time.monotonic() < deadline:
            training = [run for run in store.list_runs()
                        if run.get("state") == "running" and processes.is_alive(run.get("process"))]
            most_at_once = max(most_at_once, len(training))
            if len(training) == 2 and status is None:
                status = json.loads(runner.invoke(app, ["worker", "status", "--home", str(home), "--json"]).stdout)
            time.sleep(0.2)
        drained = worker.poll() is not None
    finally:
        if worker.poll() is None:
            worker.terminate()  # it stops its runs (they become interrupted) and exits
    assert worker.wait(timeout=60) == 0, worker.stderr.read()
    assert drained, "the worker did not drain the queue in time"
    assert most_at_once == 2
    assert {run["state"] for run in store.list_runs()} == {"done"}
    threads = max(1, (len(os.sched_getaffinity(0))) // 2)
    assert status[0]["slots"] == [f"cpu x2 ({threads} thread{'s' if threads != 1 else ''} each)"]
    assert [row["slot"] for row in status[0]["placement"]["slots"]] == [
        f"cpu slot {lane} ({threads} thread{'s' if threads != 1 else ''})" for lane in (1, 2)]
    assert all(row["run"] in ids for row in status[0]["placement"]["slots"])
    starts = [line for run_id in ids for line in (home / str(run_id) / "log.txt").read_text().splitlines()
              if line.startswith("--- ")]
    assert {line.split(" start on ")[1].split(" (")[0] for line in starts} == {"cpu slot 1", "cpu slot 2"}
