"""``rsg-fast check`` (also ``python -m rsg_fast.check``): is RSG exact on this machine?

A self-test for users (new driver, new GPU, new torch): on the best device present (or
``--device``), every fused op on every backend available there is compared, values and the gradient
of every differentiable input, with a float64 reference computed on the same input values
(``rsg_fast.ops.naive``), in fp32 (plus fp16/bf16 on CUDA, fp64 on the CPU), at odd shapes and the
paper's; then the whole ``RSG`` module against ``ReferenceRSG`` in both MV-loss modes and both
phases (and once given ``host_target``). One row per case: op, backend, dtype, shape, the worst
error over its outputs and gradients, the tolerance (``rsg_fast.testing``, the rule the test suite
uses) and PASS/FAIL. Exit status 0 when every row passes, 1 otherwise, 2 for a bad command line.

``--quick``: odd shapes only (seconds). Default: the ops also at the paper's CIFAR shape (under 2
minutes on a 2-core CPU), the module too on CUDA. ``--full``: the ops also at the ImageNet-LT maps
(1024 x 14 x 14, with a small batch), the module at the CIFAR shape everywhere.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rsg_fast import cli_args
from rsg_fast.testing import compare, tolerance

PROG = "rsg-fast check"
# a whole module (convolutions, softmax, sums) against float64; half precision: a few roundings
MODULE_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 5e-2}

# (label, N, L, K, C, H, W, M, D): batch, classes, centres, maps, pairs, contrastive width
SHAPES = {
    "odd": ("odd", 5, 3, 4, 7, 3, 5, 6, 9),
    "single": ("N=1", 1, 1, 1, 1, 1, 1, 1, 1),
    "cifar": ("cifar 32x16x16", 128, 10, 15, 32, 16, 16, 96, 256),
    "imagenet": ("imagenet-lt 1024x14x14", 8, 1000, 15, 1024, 14, 14, 8, 512),
}
LEVELS = {"quick": ("odd", "single"), "default": ("odd", "single", "cifar"),
          "full": ("odd", "single", "cifar", "imagenet")}


@dataclass
class Row:
    op: str
    backend: str
    dtype: str
    shape: str
    max_abs: float
    max_rel: float
    rtol: float
    passed: bool
    worst: str            # which output or gradient had the largest relative error
    seconds: float


# ----------------------------------------------------------------------------- one op, one case

def _run(fn: Callable, inputs: list, weights: list):
    """Outputs of ``fn(*inputs)`` and the gradients of sum(<output, weight>) w.r.t. every floating input."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) if isinstance(t, torch.Tensor) else t
              for t in inputs]
    outputs = [o for o in fn(*leaves) if o.is_floating_point()]
    total = sum((o.double() * w).sum() for o, w in zip(outputs, weights))
    wanted = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(total, wanted, allow_unused=True) if wanted and total.requires_grad else []
    return outputs, [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wanted)]


def _op_inputs(op: str, shape, dtype, device, gen):
    """(fast function, reference function, inputs, names) of one op at ``shape``."""
    from rsg_fast import ops
    from rsg_fast.ops import naive

    _, N, L, K, C, H, W, M, D = shape
    param = torch.float64 if dtype == torch.float64 else torch.float32     # parameters stay fp32 under AMP

    def randn(*size, dt=dtype):
        return torch.randn(size, generator=gen).to(device=device, dtype=dt)

    def index(n, high):
        return torch.randint(0, high, (n,), generator=gen).to(device)

    if op == "center_assign":
        inputs = [randn(N, C, H, W), index(N, L), randn(L, K, C, dt=param), 0.3 * randn(L, C, K, dt=param),
                  randn(L, K, dt=param)]
        return (lambda be: (lambda *a: ops.center_assign(*a, backend=be))), naive.center_assign, inputs, \
            ["gamma", "dist", "cesc", "grad x", "grad centers", "grad linear", "grad bias"]
    if op == "displacement":
        inputs = [randn(N, C, H, W), index(M, N), index(N, L * K), randn(L * K, C, dt=param)]
        return (lambda be: (lambda *a: (ops.displacement(*a, backend=be),))), \
            (lambda *a: (naive.displacement(*a),)), inputs, ["v", "grad x", "grad table"]
    if op.startswith("mv_terms"):
        grouping = "rows" if op.endswith("rows") else "location"
        # v about twice tv: no near-tie of their norms, where |(|tv| - |v|)| has a kink (fp32 and float64
        # could take different sides of it)
        inputs = [randn(M, C, H, W), 2 * randn(M, C, H, W), randn(N, C, H, W), index(M, N), index(N, L * K),
                  randn(L * K, C, dt=param)]
        return (lambda be: (lambda *a: ops.mv_terms(*a, grouping, backend=be))), \
            (lambda *a: naive.mv_terms(*a, grouping)), inputs, \
            ["new", "terms", "grad tv", "grad v", "grad x", "grad table"]
    if op == "tap_window_means":
        return (lambda be: (lambda a: (ops.relu_tap_window_means(a, backend=be),))), \
            (lambda a: (naive.tap_window_means(a),)), [randn(M, H, W, D)], ["means", "grad pre"]
    raise ValueError(op)


def _rtol(stored: torch.dtype, inputs: torch.dtype, rounded_on_the_way: bool = False) -> float:
    """The tolerance of a result stored in ``stored`` computed from inputs of dtype ``inputs``;
    ``rounded_on_the_way``: an fp32 result whose computation passes through a tensor stored in
    ``inputs`` (one rounding of that dtype, which the float64 reference does not make)."""
    if stored in (torch.float16, torch.bfloat16):
        return tolerance(stored)
    return tolerance(inputs) if rounded_on_the_way else tolerance(inputs, statistic=True)


# Results that pass through a tensor of the maps' dtype before they are formed: in the MV terms the
# centre table's gradient sums the gradient of u, which is stored in x's dtype first.
ROUNDED_ON_THE_WAY = {("mv_terms", "grad table"), ("mv_terms_rows", "grad table")}


def _worst(comparisons):
    """(name, Comparison) of the first failure, else of the largest error relative to its tolerance."""
    failed = [(n, c) for n, c in comparisons if not c.passed]
    pool = failed or comparisons
    return max(pool, key=lambda nc: nc[1].max_rel / nc[1].rtol)


def check_op(op: str, backend: str, dtype: torch.dtype, shape, device, seed: int = 0) -> Row:
    """One op, one backend, one dtype, one shape: every floating output and every input gradient."""
    from rsg_fast.ops import naive

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    make_fast, reference, inputs, names = _op_inputs(op, shape, dtype, device, gen)
    ref_inputs = naive.upcast(*inputs)
    with torch.no_grad():
        sizes = [o.shape for o in reference(*ref_inputs) if o.is_floating_point()]
    # weights representable in the op's dtype: autograd hands a half-precision output's gradient over
    # in that dtype, and the reference must see the same values
    weights = [torch.randn(size, generator=gen, dtype=torch.float64).to(dtype).to(device, torch.float64)
               for size in sizes]
    ref_out, ref_grads = _run(reference, ref_inputs, weights)
    out, grads = _run(make_fast(backend), inputs, weights)
    comparisons = [(name, compare(a, e, _rtol(a.dtype, dtype, (op, name) in ROUNDED_ON_THE_WAY)))
                   for name, a, e in zip(names, out + grads, ref_out + ref_grads)]
    worst, result = _worst(comparisons)
    return Row(op, backend, str(dtype).replace("torch.", ""), shape[0], result.max_abs, result.max_rel, result.rtol,
               result.passed, worst, time.perf_counter() - start)


# ----------------------------------------------------------------------------- the whole module

def check_module(mv_loss: str, phase: str, backend: str, dtype: torch.dtype, shape, device, seed: int = 0,
                 host_target: bool = False) -> Row:
    """RSG (``dtype``) against ReferenceRSG (float64) holding the same parameter values; ``host_target``:
    RSG is also given the labels on the CPU (its synchronisation-free path)."""
    from rsg_fast import RSG, ReferenceRSG

    start = time.perf_counter()
    _, N, L, K, C, H, W, _, D = shape
    N = max(N, 4)
    torch.manual_seed(seed)
    heads = list(range(max(1, L // 5)))
    fast = RSG(K, [C, H, W], L, D, heads, 1.0, 3, mv_loss=mv_loss, backend=backend).to(device=device, dtype=dtype)
    with torch.no_grad():
        fast.centers.normal_(0, 0.5)
        fast.bias.normal_(1, 0.3)
        fast.linear.mul_(0.3)
    ref = ReferenceRSG(K, [C, H, W], L, D, heads, 1.0, 3, mv_loss=mv_loss).to(device=device, dtype=torch.float64)
    ref.load_state_dict(fast.state_dict())
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=gen).to(device=device, dtype=dtype)
    y = torch.randint(0, L, (N,), generator=gen).to(device)
    y[: N // 3 + 1] = heads[0]
    y[-1] = L - 1                     # a rare class too: the generation phase makes new samples
    epoch = 0 if phase == "contrastive" else 9
    results = {}
    for name, module, maps in (("fast", fast, x), ("ref", ref, x.double())):
        maps = maps.clone().requires_grad_(True)
        extra = {"host_target": y.cpu()} if host_target and module is fast else {}
        out, cesc, mv, _ = module(maps, heads, y, epoch, **extra)
        if phase == "generation" and out.shape[0] == N:
            raise RuntimeError(f"{PROG}: the generation-phase case made no new samples")
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
        ((out.double() * weight.to(device)).sum() + cesc.double() + mv.double()).backward()
        params = [p.grad if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]
        results[name] = [out, cesc, mv, maps.grad] + params
    names = ["maps", "loss_cesc", "loss_mv", "grad maps"] + [f"grad {n}" for n, _ in fast.named_parameters()]
    worst, result = _worst([(name, compare(a, e, MODULE_RTOL[dtype]))
                            for name, a, e in zip(names, results["fast"], results["ref"])])
    label = f"RSG ({mv_loss}, {phase}{', host_target' if host_target else ''})"
    return Row(label, backend, str(dtype).replace("torch.", ""), shape[0], result.max_abs,
               result.max_rel, result.rtol, result.passed, worst, time.perf_counter() - start)


# ----------------------------------------------------------------------------- planning and the report

OPS = ("center_assign", "displacement", "mv_terms", "mv_terms_rows", "tap_window_means")


def available_backends(device: torch.device) -> list[str]:
    """torch everywhere; triton on CUDA, and on the CPU only under the Triton interpreter."""
    from rsg_fast.backend import triton_available, triton_interpret

    out = ["torch"]
    if triton_available() and (device.type == "cuda" or triton_interpret()):
        out.append("triton")
    return out


def _guarded(op: str, backend: str, dtype: torch.dtype, shape_label: str, fn: Callable[[], Row]) -> Row:
    """``fn()``, or a failing row naming the exception: one case that raises (a compile error, a CUDA
    error) must not end the check and lose the rows after it."""
    start = time.perf_counter()
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        from rsg_fast.bench.timers import error_text    # the bench's rows word their errors the same way

        return Row(op, backend, str(dtype).replace("torch.", ""), shape_label, float("inf"), float("inf"),
                   0.0, False, error_text(exc), time.perf_counter() - start)


def _json_row(row: Row) -> dict:
    """The row for ``--json``, non-finite errors (a case that raised, or NaN outputs) as null: strict JSON
    readers reject the Infinity and NaN that json.dumps writes by default."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(row).items()}


def checked_dtypes(device: torch.device) -> tuple[list[torch.dtype], list[torch.dtype]]:
    """(op dtypes, module dtypes) checked on ``device``: fp32, plus fp64 on the CPU, fp16 (ops) and
    bf16 on CUDA; bf16 only where the GPU computes in it (not emulated, as before Ampere)."""
    if device.type == "cpu":
        return [torch.float32, torch.float64], [torch.float32, torch.float64]
    bf16 = [] if cli_args.lacks_bf16(device) else [torch.bfloat16]
    return [torch.float32, torch.float16, *bf16], [torch.float32, *bf16]


def run(device: torch.device, level: str, backends: list[str], progress=print) -> list[Row]:
    rows = []
    op_dtypes, module_dtypes = checked_dtypes(device)

    def add(row: Row) -> None:
        rows.append(row)
        progress(row)

    for backend in backends:
        shapes = [SHAPES[k] for k in LEVELS[level]]
        if device.type != "cuda" and backend == "triton":   # the interpreter runs each program in Python
            shapes = shapes[:2]
        # the float64 ReferenceRSG's full D x D convolution makes the paper's shape slow on a CPU
        module_shapes = [SHAPES["odd"]] + ([SHAPES["cifar"]] if level == "full" or
                                            (device.type == "cuda" and level != "quick") else [])
        for op in OPS:
            for dtype in op_dtypes:
                for shape in shapes:
                    add(_guarded(op, backend, dtype, shape[0],
                                 lambda: check_op(op, backend, dtype, shape, device)))
        for mv_loss in ("original", "paper"):
            for phase in ("contrastive", "generation"):
                for dtype in module_dtypes:
                    for shape in module_shapes:
                        add(_guarded(f"RSG ({mv_loss}, {phase})", backend, dtype, shape[0],
                                     lambda: check_module(mv_loss, phase, backend, dtype, shape, device)))
        add(_guarded("RSG (original, generation, host_target)", backend, torch.float32, SHAPES["odd"][0],
                     lambda: check_module("original", "generation", backend, torch.float32, SHAPES["odd"], device,
                                          host_target=True)))
    return rows


@contextlib.contextmanager
def full_fp32():
    """fp32 convolutions and matmuls in full precision while checking: cuDNN's default TF32 rounds T's
    convolution to 10 mantissa bits on Ampere and later, about 3e-4 off a float64 reference. The
    caller's settings come back afterwards."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    try:
        saved_matmul, _ = matmul.allow_tf32, cudnn.allow_tf32
    except RuntimeError:
        # torch >= 2.9 raises on reading the legacy flags once the process has set the new
        # fp32_precision ones: such a caller is served in the new API's terms
        flags = (matmul, cudnn.conv, cudnn.rnn)
        saved = [f.fp32_precision for f in flags]
        for f in flags:
            f.fp32_precision = "ieee"
        try:
            yield
        finally:
            for f, value in zip(flags, saved):
                f.fp32_precision = value
        return
    matmul.allow_tf32 = False
    try:
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                         allow_tf32=False):
            yield
    finally:
        matmul.allow_tf32 = saved_matmul


def format_row(row: Row) -> str:
    return (f"{row.op:<40} {row.backend:<7} {row.dtype:<9} {row.shape:<24} {row.max_abs:9.2e} {row.max_rel:9.2e} "
            f"{row.rtol:7.1e}  {'PASS' if row.passed else 'FAIL'}  {row.worst}")


HEADER = (f"{'op':<40} {'backend':<7} {'dtype':<9} {'shape':<24} {'max abs':>9} {'max rel':>9} {'rtol':>7}  "
          f"pass  worst quantity")


def build_parser():
    p = cli_args.Parser(prog=PROG, description="Compare every fused op and the RSG module with float64 references "
                        "on this machine (values and gradients); exit status 1 if anything is off.")
    p.add_argument("--device", type=cli_args.device_name(), default="auto",
                   help="auto (CUDA when present), cpu, cuda or cuda:N")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="odd shapes only (seconds)")
    size.add_argument("--full", action="store_true", help="also the ImageNet-LT maps (1024x14x14)")
    p.add_argument("--backends", type=cli_args.name_list("--backends", ("torch", "triton")), default=None,
                   metavar="NAMES", help="torch and/or triton (default: every backend available on the device)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = cli_args.parse_args(build_parser(), argv)
        device = cli_args.resolve_device(args.device)
        backends = args.backends or available_backends(device)
        missing = [b for b in backends if b not in available_backends(device)]
        if missing:
            raise cli_args.UsageError(PROG, f"--backends {','.join(missing)} is not available on {device} (Triton "
                                      "needs CUDA, or TRITON_INTERPRET=1 set before triton is imported)")
        if args.json:   # before any row runs: a bad path would otherwise end the run after the first row
            try:
                Path(args.json).open("a").close()
            except OSError as exc:
                raise cli_args.UsageError(PROG, f"--json {args.json}: cannot write it ({exc.strerror})") from None
    except cli_args.UsageError as exc:
        return cli_args.usage_error_exit(exc)
    except SystemExit as exc:   # --help
        return int(exc.code or 0)
    level = "quick" if args.quick else "full" if args.full else "default"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{PROG}: {device} ({name}), torch {torch.__version__}, backends {', '.join(backends)}, {level} set")
    if cli_args.lacks_bf16(device):
        print(f"{PROG}: no bf16 rows: this GPU has no bf16 arithmetic (Ampere or later has); fp16 is checked")
    print(HEADER)
    start = time.perf_counter()
    done: list[Row] = []

    def save(complete: bool) -> None:
        if args.json:
            Path(args.json).write_text(json.dumps({"device": str(device), "device_name": name,
                                                   "torch": torch.__version__, "complete": complete,
                                                   "rows": [_json_row(r) for r in done]}, indent=1))

    def report(row: Row) -> None:     # the file is rewritten after every row: a time limit keeps them
        done.append(row)
        print(format_row(row), flush=True)
        save(complete=False)

    save(complete=False)              # valid JSON (no rows yet) from the start, not the probe's empty file
    with full_fp32():
        rows = run(device, level, backends, progress=report)
    save(complete=True)
    failed = [r for r in rows if not r.passed]
    print(f"{len(rows) - len(failed)} of {len(rows)} passed in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
