#!/usr/bin/env bash
# The GPU checks in one run, on a machine with a CUDA device and the project's dependencies:
#   1. the CUDA tests (pytest -m gpu: every rule on CUDA tensors against the CPU kernels, on
#      honest, NaN and attacked inputs, both dtypes, and at d = 3e6; the Triton kernels' bits
#      and that they ran);
#   2. benchmarks/aggregators.py --device cuda at n = 25, f = 5, d = 1e8, every input kind
#      (no references at that size: the tests check the values);
#   3. the sweep over n on the device (d = 1e7, 1e6 from n = 500: at the CPU sweep's 1e6 a GPU
#      pass takes microseconds and launches, not bytes, would be measured); at n = 50 its first
#      calls compile the Triton selection kernels of merged groups (about 25 s, once), from
#      n = 100 those of sorted blocks (about 3-6 s each per rule and n, compiled offline for
#      sm_90 with Triton 3.9).
# Usage, from the repository root:  bash benchmarks/cuda_check.sh [OUT_DIR]
# (then, in a call of its own where time allows: python benchmarks/cuda_select_variants.py, the
# selection kernels side by side from 25 to 1000 rows; several minutes, mostly compiles: 3-6 s
# per sorted-block kernel, up to 35 s for the 64-row generated Phocas)
# Each step's output goes to OUT_DIR (default: cuda_check_out); a step that fails or runs past
# its time limit does not stop the next one. Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-cuda_check_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

step() {  # step NAME LIMIT_S COMMAND...: run, keep the output in $out/NAME.log, report the status
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
    [ "$rc" -eq 0 ] || status=1
}

{
    date -u '+%Y-%m-%d %H:%M:%S UTC'
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem \
        --format=csv,noheader || true
    python3 -c 'import platform, torch, numpy, numba; print("python", platform.python_version(),
        "torch", torch.__version__, "cuda", torch.version.cuda, "numpy", numpy.__version__,
        "numba", numba.__version__, "cpus", __import__("os").cpu_count())'
    python3 -c 'import triton; print("triton", triton.__version__)' || echo "triton: not installed"
} 2>&1 | tee "$out/summary.txt"

parallel=()
python3 -c 'import xdist' 2>/dev/null && parallel=(-n 4)  # the CPU halves compile in parallel
step tests 180 python3 -m pytest -q -p no:cacheprovider "${parallel[@]}" -m gpu \
    tests/aggregators/test_gpu.py tests/aggregators/test_distance_rules.py \
    tests/aggregators/test_filters.py
tail -n 3 "$out/tests.log"
step table_d1e8 160 python3 benchmarks/aggregators.py --device cuda --d 1e8 --no-reference \
    --min-time 0.2 --markdown
step sweep 240 python3 benchmarks/aggregators.py --device cuda --scale-n --scale-d 1e7 \
    --scale-d-large 1e6 --min-time 0.2 --markdown
exit "$status"
