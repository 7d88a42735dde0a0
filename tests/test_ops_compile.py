"""Compile every Triton kernel variant for a real GPU target (sm_90) without needing a GPU.

The CPU test run executes the kernels in the Triton interpreter, which accepts some programs the
compiler rejects (and the reverse). This test runs the launchers in a subprocess WITHOUT
TRITON_INTERPRET, records each launch instead of running it, and compiles the recorded variants
(fp32 in the three layout classes, fp16, bf16, fp64; every backward flag combination the ops use;
integer arguments equal to 1, e.g. unit strides, become constexprs as the JIT launcher makes them)
down to a cubin with the ptxas shipped in the triton wheel.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import torch

_TY = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
       torch.int64: "i64", torch.int32: "i32"}


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    assert "compiled" in proc.stdout, proc.stdout


class _Recorder:
    """Stands in for a @triton.jit kernel: ``kernel[grid](*args, **kw)`` records the call."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append((args, kw))


def _compile(fn, args, kw, target):
    import triton
    from triton.compiler import ASTSource

    opts = {k: kw.pop(k) for k in ("num_warps", "num_stages") if k in kw}
    values = dict(zip(fn.arg_names, args))
    values.update(kw)
    sig, const = {}, {}
    for i, name in enumerate(fn.arg_names):
        val = values[name]
        if fn.params[i].is_constexpr:
            sig[name], const[name] = "constexpr", val
        elif isinstance(val, torch.Tensor):
            sig[name] = "*" + _TY[val.dtype]
        elif isinstance(val, bool):
            sig[name] = "i1"
        elif isinstance(val, int) and val == 1:  # the JIT launcher specialises ints equal to 1
            sig[name], const[name] = "constexpr", 1
        elif isinstance(val, int):
            sig[name] = "i32" if -2**31 <= val < 2**31 else "i64"
        elif isinstance(val, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: cannot type argument {name}={val!r}")
    key = (fn.__name__, tuple(sorted(sig.items())), tuple(sorted((k, str(v)) for k, v in const.items())))
    return key, (lambda: triton.compile(ASTSource(fn, sig, const), target=target, options=opts))


def _main():
    assert "TRITON_INTERPRET" not in os.environ
    from triton.backends.compiler import GPUTarget

    from rsg_fast.kernels import center_distance as kcd
    from rsg_fast.kernels import displacement as kdp
    from rsg_fast.kernels import mv_terms as kmv

    recorders = {}
    for mod in (kcd, kdp, kmv):
        for name in dir(mod):
            if name.startswith("_") and name.endswith("_kernel"):
                fn = getattr(mod, name)
                rec = recorders.setdefault(fn.__name__, _Recorder(fn))
                setattr(mod, name, rec)

    def layouts(t, kinds):
        for kind in kinds:
            if kind == "contiguous":
                yield t.contiguous()
            elif kind == "channels_last":
                yield t.contiguous(memory_format=torch.channels_last)
            else:
                yield t[:, :, ::2, 1:]

    def run_all(x, K, tv_kind):
        dt, (N, C, H, W) = x.dtype, x.shape
        c = torch.randn(N, K, C).to(dt)
        mean, dist = kcd.center_distance_forward(x, c)
        kcd.center_distance_backward(x, c, mean, mean, dist, True, True)
        kcd.center_distance_backward(x, c, mean, None, dist, False, True)
        idx = torch.tensor([0, N - 1, N - 1, 1 % N])
        cr = torch.randn(4, C).to(dt)
        out = kdp.displacement_forward(x, idx, cr)
        kdp.displacement_backward(out, idx, (x.shape, x.dtype, x.stride()), cr.dtype, True, True)
        tv, u, v = (next(layouts(torch.randn(4, C, H, W).to(dt), (tv_kind,))) for _ in range(3))
        for grouping in ("location", "rows"):
            new, terms, stats = kmv.mv_terms_forward(tv, v, u, x, idx, grouping)
            kmv.mv_terms_backward(tv, v, u, stats, new, terms, grouping, True, True, True)
            kmv.mv_terms_backward(tv, v, u, stats, None, terms, grouping, True, False, False)

    cases = [(torch.float32, ("contiguous", "channels_last", "sliced"))] + \
            [(dt, ("contiguous",)) for dt in (torch.float16, torch.bfloat16, torch.float64)]
    for dt, kinds in cases:
        for x in layouts(torch.randn(3, 5, 6, 7).to(dt), kinds):
            run_all(x, 4, kinds[-1])
    run_all(torch.randn(2, 1, 5, 1), 1, "contiguous")   # C = K = W = 1: more constexpr specialisations
    target = GPUTarget("cuda", 90, 32)
    jobs = {}
    for rec in recorders.values():
        assert rec.calls, f"{rec.fn.__name__} was never launched"
        for args, kw in rec.calls:
            key, job = _compile(rec.fn, args, dict(kw), target)
            jobs.setdefault(key, job)
    t0 = time.time()
    for job in jobs.values():
        job()
    print(f"compiled {len(jobs)} kernel variants of {len(recorders)} kernels for sm_90 in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    _main()
