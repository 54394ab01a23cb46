#!/usr/bin/env bash
# The GPU checks in one go, from the repository root; the steps' time limits add up to 8
# minutes (an H100 needs less):
#   1. CPU side: the scheduling tests (placement, flags, nvidia-smi parsing, a real worker
#      running two CPU runs side by side);
#   2. with a GPU: what the worker reads from nvidia-smi and would pack, the CUDA tests
#      (tests/test_cuda.py), the engine's images/s and share of the bf16 peak for
#      cifar_resnet18 at batch 128 and 512, and the total images/s of 1, 2 and 4 runs
#      packed on one GPU, each printed with its goal beside it.
# Without a GPU it runs step 1, says that no GPU is present and exits 0 (if step 1 passed).
# Goals are printed, never asserted; the exit status is that of the tests.
#
#     bash tests/benchmarks/gpu_check.sh        (PYTHON=... to pick the interpreter)
set -u
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failed=()

step() {  # step NAME LIMIT_S COMMAND...: run it under a time limit, remember a failure
    local name=$1 limit=$2
    shift 2
    echo
    echo "== $name (limit ${limit}s)"
    local started=$SECONDS
    timeout --kill-after=5 "$limit" "$@"
    local status=$?
    [ $status -eq 124 ] && echo "-- $name: stopped at its ${limit}s limit"
    [ $status -ne 0 ] && failed+=("$name (exit $status)")
    echo "-- $name: $((SECONDS - started))s, exit $status"
}

step "CPU-side checks: tests/test_scheduling.py" 90 \
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_scheduling.py

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo
    if command -v nvidia-smi >/dev/null; then
        echo "nvidia-smi: $(nvidia-smi -L 2>&1 | head -n 1)"
    else
        echo "nvidia-smi: not installed"
    fi
    echo "NO GPU PRESENT: torch sees no CUDA device, so the CUDA tests and the GPU benchmarks were not run."
    if [ ${#failed[@]} -gt 0 ]; then
        echo "FAILED: ${failed[*]}"
        exit 1
    fi
    echo "CPU-side checks passed."
    exit 0
fi

step "what the worker reads from nvidia-smi and would pack at --pack-memory 0.9" 20 "$PYTHON" -c '
from engine.scheduling import SlotRequest, plan_placement, read_gpus
gpus, problem = read_gpus()
print("nvidia-smi:", [(gpu.index, gpu.memory_bytes) for gpu in gpus] or problem)
print("placement:", "; ".join(plan_placement(SlotRequest(pack_memory=0.9)).labels()))'

step "CUDA tests: tests/test_cuda.py" 130 \
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py

step "GPU throughput: cifar_resnet18 at batch 128 and 512 (goal: >= 30% of bf16 peak at 512)" 110 \
    "$PYTHON" tests/benchmarks/bench_gpu.py --batches 128,512 --epochs 3

step "packing: 1, 2 and 4 runs on one GPU (goal: 4 runs >= 1.5x the images/s of 1)" 130 \
    "$PYTHON" tests/benchmarks/bench_packing.py --runs 1,2,4

echo
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all GPU checks ran; compare the goal lines above with their results."
