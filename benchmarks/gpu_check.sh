#!/usr/bin/env bash
# One prepared check for a lent GPU: under 5 minutes in all (step limits sum to 285 s).
#   1. the op tests on CUDA (real Triton compiler; tests/test_ops*.py pick the GPU when present)
#      plus every test marked `cuda` elsewhere in tests/;
#   2. a quick Triton-vs-PyTorch timing of the three fused ops (CUDA events, median of 50);
#   3. `python -m rsg_fast.bench` (module variants incl. torch.compile of the reference, ResNet-32 step).
#      `pytest benchmarks/ --benchmark-only` does not fit the 5 minutes; run it by hand when time allows.
# Logs go to ${OUT:-benchmarks/results}/gpu-YYYY-MM-DD/. Exit status: non-zero if any step failed.
# Usage (from anywhere):  bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
LOG="${OUT:-benchmarks/results}/gpu-$(date +%F)"
mkdir -p "$LOG"
export RSG_FAST_TEST_ON_GPU=1   # tests/conftest.py: never switch on the Triton interpreter
unset TRITON_INTERPRET
status=0
step() {  # step NAME SECONDS CMD...: run with a time limit, tee to $LOG/NAME.txt, remember failures
    local name=$1 limit=$2; shift 2
    echo "== $name ($(date -u +%T), limit ${limit}s): $*" | tee -a "$LOG/summary.txt"
    timeout "$limit" "$@" > >(tee "$LOG/$name.txt") 2>&1
    local rc=$?
    echo "== $name: rc=$rc" | tee -a "$LOG/summary.txt"
    [ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || status=1   # 5: pytest collected no test (nothing marked)
}

{ nvidia-smi || true; python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"; } \
    > "$LOG/device.txt" 2>&1
cat "$LOG/device.txt"

step pytest-ops 110 python -m pytest -q --durations=10 tests/test_ops.py tests/test_ops_cuda.py tests/test_backend.py -ra
step pytest-cuda-marked 50 python -m pytest -q -m cuda tests --ignore=tests/test_ops_cuda.py -ra

step ops-timing 30 python - <<'PY'
import torch
from rsg_fast import ops
torch.manual_seed(0)
dev = "cuda"
def bench(fn, n=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    return sorted(ts)[n // 2]
for (N, K, C, H, W, M, dt) in [(128, 15, 32, 16, 16, 100, torch.float32), (128, 15, 32, 16, 16, 100, torch.float16),
                               (256, 15, 256, 14, 14, 200, torch.float32)]:
    x = torch.randn(N, C, H, W, device=dev, dtype=dt)
    cen = torch.randn(N, K, C, device=dev, requires_grad=True)
    idx = torch.randint(0, N, (M,), device=dev)
    cr = torch.randn(M, C, device=dev, dtype=dt)
    tv = torch.randn(M, C, H, W, device=dev, dtype=dt, requires_grad=True)
    v, u = torch.randn_like(tv), torch.randn_like(tv)
    e = x.element_size()
    cases = {
        "center_distance fwd+bwd": (lambda be: ops.center_distance(x, cen, backend=be)[1].sum().backward(), N * C * H * W * e),
        "displacement fwd": (lambda be: ops.displacement(x, idx, cr, backend=be), 2 * M * C * H * W * e),
        "mv_terms(location) fwd+bwd": (lambda be: ops.mv_terms(tv, v, u, x, idx, "location", backend=be)[1].sum().backward(), 8 * M * C * H * W * e),
        "mv_terms(rows) fwd+bwd": (lambda be: ops.mv_terms(tv, v, u, x, idx, "rows", backend=be)[1].sum().backward(), 8 * M * C * H * W * e),
    }
    print(f"N={N} K={K} C={C} H={H} W={W} M={M} {dt}")
    for name, (fn, nbytes) in cases.items():
        t = {be: bench(lambda: fn(be)) for be in ("torch", "triton")}
        print(f"  {name:28s} torch {t['torch']*1e3:8.1f} us   triton {t['triton']*1e3:8.1f} us   "
              f"speed-up {t['torch']/t['triton']:5.2f}x   triton ~{nbytes / t['triton'] / 1e6:7.1f} GB/s (min bytes)")
PY

step bench 100 python -m rsg_fast.bench --budget 10 --no-progress --out "$LOG"

echo "gpu_check: status=$status, logs in $LOG" | tee -a "$LOG/summary.txt"
exit $status
