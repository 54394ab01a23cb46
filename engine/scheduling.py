"""Where a worker's runs execute: slots on GPUs and the CPU, several runs per device.

The worker's flags become a Placement: its slots, and which free slot the next run may take
(first free; or, packing by memory, the GPU with the most room that the run's peak memory
fits). Pure bookkeeping, unit-tested on a fake inventory; the only contact with the machine
is nvidia-smi (`read_gpus`, and `read_gpu_use` for `worker status`) and `available_threads`.
Must not import torch.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from engine.errors import BadInput, BudgetTuiError

MIB = 1024**2
GIB = 1024**3
# A run's summary records its peak device memory under this name (torch's allocator counts).
PEAK_MEMORY_FIELD = "peak_device_memory_bytes"
# Runs that agree on these take about the same device memory.
MEMORY_KEY_FIELDS = ("model", "batch_size", "precision", "channels_last", "dataset", "image_size", "sampler",
                     "compile")
# Configs stored before these fields existed lack them: those runs ran as "auto" does now.
MEMORY_KEY_DEFAULTS = {"precision": "auto", "channels_last": "auto"}
# Each CUDA process holds a context of about half a GB that torch's peak counters leave out.
CUDA_CONTEXT_BYTES = 512 * MIB
# Packing without --slots-per-gpu stops at this many runs per GPU: past it, kernel launches
# from the CPU and time slicing limit the card, not its memory, and a tiny recorded peak
# (a digits run) would otherwise start hundreds of processes.
DEFAULT_PACKED_RUNS_PER_GPU = 8
NVIDIA_SMI_INVENTORY = ("index", "memory.total")  # what placement needs
NVIDIA_SMI_USE = ("index", "utilization.gpu", "memory.used", "memory.total")  # what `worker status` shows
NVIDIA_SMI_TIMEOUT_S = 30
NO_NVIDIA_SMI = "nvidia-smi is not installed"
_SIZE = re.compile(r"(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>[KMGT])(i?B)?", re.IGNORECASE)


@dataclass(frozen=True)
class Slot:
    """Where one run executes: a GPU id, "" for CPU only, or None to inherit the environment;
    for a cluster scheduler, which of the jobs in flight (the scheduler picks the resources).
    `lane` numbers the slots that share one device (None: the device's only slot); `threads`
    is the CPU threads a run there gets when its config sets none (0: torch's default)."""

    gpu: str | None
    job: int | None = None
    lane: int | None = None
    threads: int = 0

    def device_label(self) -> str:
        if self.job is not None:
            return f"job {self.job}"
        return "inherit" if self.gpu is None else (f"gpu {self.gpu}" if self.gpu else "cpu")

    def label(self) -> str:
        lane = f" slot {self.lane}" if self.lane is not None else ""
        return f"{self.device_label()}{lane}{_threads_note(self.threads)}"


def _threads_note(threads: int, each: str = "") -> str:
    return f" ({threads} thread{'s' if threads != 1 else ''}{each})" if threads else ""


def slot_environment(slot: Slot, environment: dict[str, str]) -> dict[str, str]:
    """The child's environment for `slot`. torch sizes its thread pool from OMP_NUM_THREADS
    when a run's config sets no `threads` (a config that does still wins: the loop calls
    torch.set_num_threads). Slots planned per GPU number GPUs as nvidia-smi does (PCI bus
    order), which CUDA's default "fastest first" order may not match."""
    result = dict(environment)
    if slot.gpu is not None:
        result["CUDA_VISIBLE_DEVICES"] = slot.gpu
        if slot.gpu and slot.lane is not None:
            result.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    if slot.threads:
        result["OMP_NUM_THREADS"] = result["MKL_NUM_THREADS"] = str(slot.threads)
    return result


def parse_gpus(text: str | None) -> list[Slot]:
    """--gpus "0,1" -> one slot per GPU; "" or "cpu" -> one CPU slot; None -> one slot that
    inherits the environment (device=auto then uses the first visible GPU, if any)."""
    if text is None:
        return [Slot(None)]
    if _means_cpu(text):
        return [Slot("")]
    return [Slot(gpu) for gpu in _gpu_numbers(text)]


def _means_cpu(text: str) -> bool:
    return text.strip().lower() in ("", "cpu", "none")


def _gpu_numbers(text: str) -> list[str]:
    gpus = [part.strip() for part in text.split(",") if part.strip()]
    if len(set(gpus)) != len(gpus) or not all(gpu.isdigit() for gpu in gpus):
        raise BadInput(f"--gpus takes distinct GPU numbers like 0,1 (or cpu), got {text!r}")
    return gpus


# --- the machine
@dataclass(frozen=True)
class Gpu:
    index: str  # as nvidia-smi numbers it
    memory_bytes: int | None  # None: nvidia-smi does not report it


@dataclass(frozen=True)
class GpuUse:
    """How busy a GPU is now; None where nvidia-smi does not report a value."""

    index: str
    utilization_percent: int | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"gpu": self.index, "utilization_percent": self.utilization_percent,
                "memory_used_bytes": self.memory_used_bytes, "memory_total_bytes": self.memory_total_bytes}


def nvidia_smi_rows(text: str, columns: int) -> list[list[str]]:
    """The rows of nvidia-smi's `--format=csv,noheader,nounits` output: one line per GPU,
    its index first, `columns` values each."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != columns or not parts[0].isdigit():
            raise BudgetTuiError(f"cannot read nvidia-smi's GPU list: unexpected line {line.strip()!r}")
        rows.append(parts)
    return rows


def _number(text: str, scale: int = 1) -> int | None:
    """A value nvidia-smi reported, times `scale`; None for "[N/A]", "[Not Supported]"."""
    return int(text) * scale if text.isdigit() else None


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """The GPUs in the output of `nvidia-smi --query-gpu=index,memory.total
    --format=csv,noheader,nounits`: one "index, MiB" line each ("[N/A]" when not reported)."""
    return [Gpu(index, _number(memory, MIB)) for index, memory in nvidia_smi_rows(text, len(NVIDIA_SMI_INVENTORY))]


def parse_gpu_use(text: str) -> list[GpuUse]:
    """The GPUs in the output of `nvidia-smi --query-gpu=index,utilization.gpu,memory.used,
    memory.total --format=csv,noheader,nounits`: "index, percent, MiB, MiB" lines."""
    return [GpuUse(index, _number(busy), _number(used, MIB), _number(total, MIB))
            for index, busy, used, total in nvidia_smi_rows(text, len(NVIDIA_SMI_USE))]


def query_nvidia_smi(fields: tuple[str, ...]) -> tuple[str, str]:
    """nvidia-smi's answer for these fields of every GPU (no torch, no CUDA initialisation),
    and, when it gave none, why: ("", NO_NVIDIA_SMI) on a machine without it."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return "", NO_NVIDIA_SMI
    try:
        result = subprocess.run([executable, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        return "", f"nvidia-smi did not answer ({error})"
    if result.returncode != 0:
        said = next((line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()), "")
        return "", f"nvidia-smi failed with exit code {result.returncode}: {said}"
    return result.stdout, ""


def read_gpus() -> tuple[list[Gpu], str]:
    """This machine's GPUs and their memory, and why there are none when there are none."""
    text, problem = query_nvidia_smi(NVIDIA_SMI_INVENTORY)
    gpus = parse_nvidia_smi(text)
    return gpus, problem or ("" if gpus else "nvidia-smi lists no GPU")


def read_gpu_use() -> tuple[list[GpuUse], str]:
    """How busy this machine's GPUs are now, and why there are none when there are none. A
    status view, so an answer it cannot read is a reason, not an error."""
    text, problem = query_nvidia_smi(NVIDIA_SMI_USE)
    try:
        gpus = parse_gpu_use(text)
    except BudgetTuiError as error:
        return [], str(error)
    return gpus, problem or ("" if gpus else "nvidia-smi lists no GPU")


def available_threads() -> int:
    """The CPU threads this process may use (its affinity, so taskset and cpusets count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- memory estimates
def recorded_peak(run: dict[str, Any]) -> int | None:
    """The peak device memory a finished run recorded in its summary, if it ran on a GPU."""
    summary = run.get("summary") or {}
    peak = summary.get(PEAK_MEMORY_FIELD)
    if isinstance(peak, bool) or not isinstance(peak, int) or peak <= 0:
        return None
    return peak if str(summary.get("device", "cuda")).startswith("cuda") else None


def memory_key(config: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(config.get(name, MEMORY_KEY_DEFAULTS.get(name)) for name in MEMORY_KEY_FIELDS)


@dataclass
class MemoryEstimates:
    """The device memory a run will take: its own recorded peak, else the largest peak
    recorded by a run of the same model, batch, precision, data and sampler, else
    `default_bytes`; None when nothing is known (the run then takes a whole GPU)."""

    default_bytes: int | None = None
    recorded: dict[tuple[Any, ...], int] = field(default_factory=dict)

    def learn(self, history: Iterable[dict[str, Any]]) -> None:
        recorded: dict[tuple[Any, ...], int] = {}
        for run in history:
            peak = recorded_peak(run)
            if peak is not None:
                key = memory_key(run.get("config") or {})
                recorded[key] = max(recorded.get(key, 0), peak)
        self.recorded = recorded

    def estimate(self, record: dict[str, Any]) -> int | None:
        config = record.get("config") or {}
        if config.get("device") == "cpu":
            return 0  # trains on the CPU: no device memory
        peak = recorded_peak(record) or self.recorded.get(memory_key(config))
        return peak + CUDA_CONTEXT_BYTES if peak is not None else self.default_bytes


# --- placement
@dataclass
class Placement:
    """Which run holds each slot, and which free slot the next run may take.

    Without packing (no `budgets`), the first free slot takes the next run. Packing, a run
    goes to the GPU with the most room left among those where its estimate fits beside the
    runs already there, so runs spread before they pack (a run alone on a GPU trains faster
    than beside another). A run of unknown peak, or one larger than a GPU's budget, needs
    that GPU to itself."""

    slots: list[Slot]
    budgets: dict[str, int] = field(default_factory=dict)  # GPU -> bytes its runs may hold together
    estimates: MemoryEstimates | None = None  # set when packing
    mode: str = "fixed"  # fixed | slots | slots-per-gpu | pack-memory, for status
    totals: dict[str, int] = field(default_factory=dict)  # GPU -> its memory, for status
    held: dict[Slot, tuple[int, int]] = field(default_factory=dict)  # busy slot -> (run id, bytes)

    @property
    def packing(self) -> bool:
        return self.estimates is not None

    def free_slots(self) -> list[Slot]:
        return [slot for slot in self.slots if slot not in self.held]

    def used(self, gpu: str) -> int:
        return sum(held for slot, (_, held) in self.held.items() if slot.gpu == gpu)

    def has_room(self) -> bool:
        """A run might start now (cheap: the worker asks before it touches the queue)."""
        free = self.free_slots()
        if not self.packing:
            return bool(free)
        return any(self.used(gpu) < budget for gpu, budget in self.budgets.items()
                   if any(slot.gpu == gpu for slot in free))

    def need(self, record: dict[str, Any], gpu: str) -> int:
        estimate = self.estimates.estimate(record) if self.estimates is not None else None
        return self.budgets[gpu] if estimate is None else min(estimate, self.budgets[gpu])

    def slot_for(self, record: dict[str, Any]) -> Slot | None:
        """The free slot `record` would take now, or None if it must wait."""
        free = self.free_slots()
        if not self.packing:
            return free[0] if free else None
        best: tuple[int, Slot] | None = None
        for gpu, budget in self.budgets.items():
            lanes = [slot for slot in free if slot.gpu == gpu]
            room = budget - self.used(gpu)
            if lanes and self.need(record, gpu) <= room and (best is None or room > best[0]):
                best = (room, lanes[0])
        return best[1] if best is not None else None

    def fits(self, record: dict[str, Any]) -> bool:
        return self.slot_for(record) is not None

    def take(self, record: dict[str, Any], slot: Slot | None = None) -> Slot:
        """Hold a slot for `record` (the one slot_for names, unless given) and its memory."""
        chosen = slot or self.slot_for(record)
        if chosen is None:
            raise RuntimeError(f"no room for run {record.get('id')}: ask fits() before take()")
        held = self.need(record, chosen.gpu) if chosen.gpu in self.budgets else 0
        self.held[chosen] = (int(record["id"]), held)
        return chosen

    def release(self, slot: Slot) -> None:
        self.held.pop(slot, None)

    def labels(self) -> list[str]:
        """One short line per device: "gpu 0", "cpu x2 (1 thread each)", "gpu 0 up to 8 runs
        within 72.0 of 80.0 GiB (2 threads each)"; a cluster's job slots as one line, "slurm,
        up to 4 runs in flight"."""
        groups: dict[str, list[Slot]] = {}
        for slot in self.slots:
            if slot.job is None:
                groups.setdefault(slot.device_label(), []).append(slot)
        jobs = sum(slot.job is not None for slot in self.slots)
        labels = [f"slurm, up to {jobs} run{'s' if jobs != 1 else ''} in flight"] if jobs else []
        for device, slots in groups.items():
            first = slots[0]
            if len(slots) == 1 and first.lane is None:
                labels.append(first.label())
            elif first.gpu in self.budgets:
                labels.append(f"{device} up to {len(slots)} runs within {self.budgets[first.gpu] / GIB:.1f} of "
                              f"{self.totals[first.gpu] / GIB:.1f} GiB{_threads_note(first.threads, ' each')}")
            else:
                labels.append(f"{device} x{len(slots)}{_threads_note(first.threads, ' each')}")
        return labels

    def describe(self) -> dict[str, Any]:
        """The slots, their runs and each GPU's memory budget, for `worker status --json`."""
        slots = [{"slot": slot.label(), "gpu": slot.gpu, "threads": slot.threads,
                  "run": self.held[slot][0] if slot in self.held else None,
                  "reserved_bytes": self.held[slot][1] if slot in self.held else 0} for slot in self.slots]
        gpus = [{"gpu": gpu, "memory_bytes": self.totals.get(gpu), "budget_bytes": budget,
                 "reserved_bytes": self.used(gpu)} for gpu, budget in self.budgets.items()]
        return {"mode": self.mode, "slots": slots, "gpu_memory": gpus}


# --- the worker's flags
@dataclass(frozen=True)
class SlotRequest:
    """The worker's placement flags, as given on its command line."""

    gpus: str | None = None
    slots: int | None = None  # runs side by side on the CPU
    slots_per_gpu: int | None = None  # runs side by side on each GPU (a cap when packing)
    pack_memory: float | None = None  # fraction of each GPU's memory its runs may hold
    run_memory: str | None = None  # estimate for a run of unknown peak when packing, e.g. "6G"

    def given(self) -> dict[str, Any]:
        """The flags beyond --gpus that were given, by their command-line names."""
        values = {"--slots": self.slots, "--slots-per-gpu": self.slots_per_gpu,
                  "--pack-memory": self.pack_memory, "--run-memory": self.run_memory}
        return {flag: value for flag, value in values.items() if value is not None}

    def several_per_device(self) -> bool:
        return bool(self.given())

    def arguments(self) -> list[str]:
        """The command-line form of those flags (for a detached worker)."""
        return [f"{flag}={value}" for flag, value in self.given().items()]


def parse_size(text: str, flag: str) -> int:
    """"6G", "6GiB", "512M", "1.5T" -> bytes (powers of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise BadInput(f"{flag} takes a size with its unit, like 6G or 512M, got {text!r}")
    size = float(match["number"]) * 1024 ** ("KMGT".index(match["unit"].upper()) + 1)
    if not math.isfinite(size) or size < 1:
        raise BadInput(f"{flag} must be at least one byte, got {text!r}")
    return int(size)


def check_flags(request: SlotRequest) -> None:
    """Refuse contradictory or out-of-range flags (BadInput: exit 2, before anything starts)."""
    for flag, value in (("--slots", request.slots), ("--slots-per-gpu", request.slots_per_gpu)):
        if value is not None and value < 1:
            raise BadInput(f"{flag} takes a number of runs, at least 1; got {value}")
    if request.pack_memory is not None and not 0.0 < request.pack_memory <= 1.0:
        raise BadInput(f"--pack-memory is the fraction of each GPU's memory its runs may hold together, "
                       f"in (0, 1] like 0.9; got {request.pack_memory}")
    if request.run_memory is not None:
        if request.pack_memory is None:
            raise BadInput("--run-memory is the memory --pack-memory assumes for a run of unknown peak: "
                           "add --pack-memory")
        parse_size(request.run_memory, "--run-memory")
    if request.gpus is not None and not _means_cpu(request.gpus):
        _gpu_numbers(request.gpus)
    if request.slots is not None:
        if request.slots_per_gpu is not None or request.pack_memory is not None:
            raise BadInput("--slots runs several runs side by side on the CPU; --slots-per-gpu and "
                           "--pack-memory place them on GPUs: give one or the other")
        if request.gpus is not None and not _means_cpu(request.gpus):
            raise BadInput(f"--slots places runs on the CPU, but --gpus {request.gpus} names GPUs; "
                           f"for several runs per GPU use --slots-per-gpu N or --pack-memory F")
    elif request.several_per_device() and request.gpus is not None and _means_cpu(request.gpus):
        raise BadInput(f"--slots-per-gpu and --pack-memory place runs on GPUs, but --gpus is "
                       f"{request.gpus!r}; for runs side by side on the CPU use --slots N")


GpuReader = Callable[[], tuple[list[Gpu], str]]


def plan_placement(request: SlotRequest, read: GpuReader = read_gpus, threads: int | None = None) -> Placement:
    """The Placement the flags ask for on this machine (`read` lists its GPUs; `threads` is
    its CPU threads). Without the new flags: one slot per --gpus entry, as always, and no
    look at the machine. BadInput when the flags contradict each other or the machine."""
    check_flags(request)
    if not request.several_per_device():
        return Placement(parse_gpus(request.gpus))
    threads = available_threads() if threads is None else threads
    if request.slots is not None:
        each = max(1, threads // request.slots)
        return Placement([Slot("", lane=lane, threads=each) for lane in range(1, request.slots + 1)], mode="slots")
    if request.pack_memory is None:
        gpus = _gpu_numbers(request.gpus) if request.gpus is not None else [gpu.index for gpu in _found_gpus(read)]
        return Placement(_gpu_slots(gpus, request.slots_per_gpu or 1, threads), mode="slots-per-gpu")
    return _packing(_chosen_gpus(request.gpus, _found_gpus(read)), request.pack_memory, request, threads)


def _found_gpus(read: GpuReader) -> list[Gpu]:
    gpus, problem = read()
    if not gpus:
        raise BadInput(f"--slots-per-gpu and --pack-memory place runs on GPUs, but none was found "
                       f"({problem}); for runs side by side on the CPU use --slots N")
    return gpus


def _chosen_gpus(text: str | None, found: list[Gpu]) -> list[Gpu]:
    """The GPUs --gpus names (all found ones without it), each with its memory known."""
    by_index = {gpu.index: gpu for gpu in found}
    chosen = found if text is None else []
    for index in _gpu_numbers(text) if text is not None else []:
        if index not in by_index:
            raise BadInput(f"--gpus names GPU {index}, but nvidia-smi lists only {', '.join(by_index)}")
        chosen.append(by_index[index])
    unknown = [gpu.index for gpu in chosen if gpu.memory_bytes is None]
    if unknown:
        raise BadInput(f"--pack-memory needs each GPU's memory, which nvidia-smi does not report for GPU "
                       f"{', '.join(unknown)}; leave it out with --gpus, or use --slots-per-gpu")
    return chosen


def _gpu_slots(gpus: list[str], lanes: int, threads: int) -> list[Slot]:
    """Lane by lane across the GPUs, so the first free slot spreads runs before packing
    them; every slot gets an equal share of the CPU threads."""
    each = max(1, threads // (len(gpus) * lanes))
    return [Slot(gpu, lane=lane, threads=each) for lane in range(1, lanes + 1) for gpu in gpus]


def _packing(gpus: list[Gpu], fraction: float, request: SlotRequest, threads: int) -> Placement:
    lanes = request.slots_per_gpu or DEFAULT_PACKED_RUNS_PER_GPU
    default = parse_size(request.run_memory, "--run-memory") if request.run_memory is not None else None
    totals = {gpu.index: int(gpu.memory_bytes or 0) for gpu in gpus}
    return Placement(
        _gpu_slots([gpu.index for gpu in gpus], lanes, threads),
        budgets={index: int(total * fraction) for index, total in totals.items()},
        estimates=MemoryEstimates(default_bytes=default), mode="pack-memory", totals=totals)
