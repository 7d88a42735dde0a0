"""Compile every Triton kernel variant for a real GPU target (sm_90) without needing a GPU, and
check the machine code at the paper's shapes; compile them for the other architectures users train
on too (V100 to RTX 50).

The CPU test run executes the kernels in the Triton interpreter, which accepts some programs the
compiler rejects (and the reverse). This test runs the launchers in a subprocess WITHOUT
TRITON_INTERPRET, records each launch instead of running it, gives each recorded variant the
signature and alignment attributes Triton's JIT launcher would (``native_specialize_impl``:
pointers and integers divisible by 16, integers equal to 1 as constants) and compiles it down to a
cubin with the ptxas shipped in the triton wheel. At the CIFAR (N=128, 32x16x16) and ImageNet-LT
(N=256, 1024x14x14) shapes it then checks, for fp32 NCHW maps, that the kernels which stream the
maps load them with 16-byte vector loads (HW = 196 is not a multiple of 16; every variant, at least
one per map tensor its main loop reads) and that ptxas reports no register spills, there and for the
pairing kernels at the largest batch they take.

It also reads the Triton IR of every variant, including launches where every stride is a runtime
value (no stride of 1 for Triton to fold), for offsets that would wrap past 2**31 elements: the
batch program id must be widened to int64 before any arithmetic, and no 32-bit multiply may take a
runtime integer (a stride), nor may a 32-bit add or multiply of bounded values (constexpr sizes,
aranges, program ids of grid axes y and z) reach past int32, e.g. a channel index times H * W;
such a product wraps silently once a tensor spans 2**31 elements.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import pytest
import torch

# The kernels that stream feature maps, and how many map tensors each reads in its main loop: every
# compiled variant must load them with at least that many 16-byte vector loads.
STREAMING = {"_center_assign_fwd_kernel": 1, "_center_assign_x_grad_kernel": 1, "_displacement_fwd_kernel": 1,
             "_index_add_kernel": 1, "_mv_terms_fwd_kernel": 3, "_mv_terms_bwd_kernel": 2,
             "_relu_tap_window_means_fwd_kernel": 1, "_relu_tap_window_means_bwd_kernel": 1}


@pytest.fixture(scope="module")
def result():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        proc = subprocess.run([sys.executable, __file__, report], env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
        with open(report) as f:
            return json.load(f)


def test_kernels_compile_for_sm90_with_vector_loads_and_no_spills(result):
    assert result["variants"] > 50, result
    largest = ("_batch_plan_kernel", "_pair_indices_kernel", "_csr_kernel")     # run at the largest sizes they take
    for shape, kernels in result["paper"].items():
        for name in (STREAMING if shape != "max-batch" else largest):
            assert name in kernels, (shape, name, sorted(kernels))
        for name, variants in kernels.items():
            for info in variants:
                assert info["spill_bytes"] == 0, (shape, name, info)
                assert info["registers"] <= 255, (shape, name, info)
                assert info["vector_loads"] >= STREAMING.get(name, 0), (shape, name, info)


# The other CUDA architectures people train on (sm_90 is checked above, with its machine code), each
# compiled by its own ptxas. Triton's code generation differs between them (no bf16 arithmetic before
# sm_80, other layouts on Blackwell), so a kernel that compiles for one may not for another.
ARCHITECTURES = {70: "V100", 75: "T4, RTX 20", 80: "A100", 86: "RTX 30, A10", 89: "L4, L40S, RTX 40",
                 100: "B200", 120: "RTX 50"}


def test_kernels_compile_for_every_architecture_users_train_on():
    """Every kernel variant (fp32 NCHW / channels_last, fp16, bf16, fp64 at small odd shapes, and the
    CIFAR shape) compiles to a cubin for each architecture in ARCHITECTURES, two processes at once."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    archs = sorted(ARCHITECTURES)
    procs = [subprocess.Popen([sys.executable, __file__, "--archs", ",".join(map(str, archs[i::2]))], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    compiled = {}
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-4000:] + err[-8000:]
        compiled.update(json.loads(out.strip().splitlines()[-1]))
    assert sorted(map(int, compiled)) == archs
    for arch, report in compiled.items():
        assert report["variants"] > 50 and report["failed"] == {}, (arch, ARCHITECTURES[int(arch)], report)


def test_offsets_that_can_pass_2_31_are_computed_in_64_bits(result):
    """Every kernel, every variant (all strides runtime values in some): no offset wraps at 2**31."""
    assert set(result["narrow"]) >= set(STREAMING) | {"_center_assign_param_grad_kernel",
                                                       "_center_assign_finish_kernel", "_csr_kernel"}, \
        sorted(result["narrow"])
    assert not {name: found for name, found in result["narrow"].items() if found}


def test_the_ir_check_sees_a_narrow_offset():
    """Positive control for ``_narrow_offsets``: the pattern it must flag, in IR this Triton writes."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, __file__, "--control"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert any("32-bit product" in f for f in found["narrow"]), found
    assert any("program id" in f for f in found["narrow"]), found
    assert found["wide"] == [], found
    assert any("can pass 2**31" in f for f in found["narrow_hw"]), found
    assert found["wide_hw"] == [], found


# ----------------------------------------------------------------------------- the subprocess

class _Recorder:
    """Stands in for ``launch(kernel, programs)``: records the call instead of running it."""

    def __init__(self):
        self.calls = []

    def __call__(self, kernel, grid):
        return lambda *args, **kw: self.calls.append((kernel, args, kw))


def _specializer():
    """Triton's own argument specialisation (type, alignment attribute), across Triton versions."""
    from triton.backends.nvidia.compiler import CUDABackend

    try:
        from triton.runtime.jit import native_specialize_impl            # triton >= 3.6
        return lambda value: native_specialize_impl(CUDABackend, value, False, True, True)
    except ImportError:
        from triton.runtime.jit import create_specialize_impl            # triton 3.5
        impl = create_specialize_impl(CUDABackend.get_arg_specialization)
        return lambda value: impl(value, False, True, True)


def _source(fn, args, kw):
    """(options, ASTSource) for one recorded launch, specialised as Triton's JIT launcher would."""
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource

    opts = {k: kw.pop(k) for k in ("num_warps", "num_stages") if k in kw}
    values = dict(zip(fn.arg_names, args))
    values.update(kw)
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        val = values[name]
        if fn.params[i].is_constexpr:
            signature[name], constexprs[(i,)] = "constexpr", val
            continue
        ty, attr = _specializer()(val)
        signature[name] = ty
        if ty == "constexpr":
            constexprs[(i,)] = attr
        elif isinstance(attr, str):
            attrs[(i,)] = CUDABackend.parse_attr(attr)
    return opts, ASTSource(fn, signature, constexprs, attrs)


def _ptxas_report(ptx: str) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    try:
        ptxas = get_ptxas(90).path          # triton >= 3.6 takes the architecture
    except TypeError:
        ptxas = get_ptxas().path
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        out = subprocess.run([ptxas, "--gpu-name=sm_90a", "-v", f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    text = out.stdout + out.stderr
    regs = max(int(r) for r in re.findall(r"Used (\d+) registers", text))
    spills = sum(int(s) for s in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
    return {"registers": regs, "spill_bytes": spills}


def _run_launchers(x, K, L, D, kinds):
    """Every launcher the ops use, on maps like ``x``, through the recorder."""
    from rsg_fast.kernels import center_assign as kca
    from rsg_fast.kernels import displacement as kdp
    from rsg_fast.kernels import mv_terms as kmv
    from rsg_fast.kernels import pairs as kpr
    from rsg_fast.kernels import tap_window_means as ktw

    N, C, H, W = x.shape
    dt = x.dtype
    target = torch.randint(0, L, (N,))
    centers, linear, bias = torch.randn(L, K, C), torch.randn(L, C, K), torch.randn(L, K)
    gamma, mean_dist, row, shift, dmean = (torch.rand(N, K), torch.rand(N, K), torch.zeros(N, dtype=torch.long),
                                           torch.randn(N, C), torch.randn(N, C))
    kca.center_assign_forward(x, target, centers, linear, bias)
    kca.center_assign_param_grads(target, centers, shift, dmean, gamma, mean_dist, gamma, gamma, gamma[:, 0], H * W,
                                  True, True, True, linear.dtype, bias.dtype)
    kca.center_assign_param_grads(target, centers, shift, dmean, gamma, mean_dist, None, None, gamma[:, 0], H * W,
                                  True, False, False, linear.dtype, bias.dtype)
    kca.center_assign_x_grad(x, target, centers, linear, shift, dmean, gamma, mean_dist, gamma, gamma, None)
    M = max(2, N // 2)
    index = torch.arange(M) % N
    table = centers.flatten(0, 1).to(dt)
    v = kdp.displacement_forward(x, index, row, table)
    kdp.index_add_gather(v, index, x)
    for kind in kinds:
        tv = v if kind == "contiguous" else v.contiguous(memory_format=torch.channels_last)
        for grouping in ("location", "rows"):
            new, terms, stats = kmv.mv_terms_forward(tv, tv, x, index, row, table, grouping, torch.float32
                                                     if dt != torch.float64 else dt)
            kmv.mv_terms_backward(tv, tv, x, index, row, table, stats, new, terms, grouping, True, True, True)
            kmv.mv_terms_backward(tv, tv, x, index, row, table, stats, None, terms, grouping, True, False, False)
    pre = torch.randn(M, H, W, D).to(dt)
    s = ktw.relu_tap_window_means_forward(pre, torch.float64 if dt == torch.float64 else torch.float32)
    ktw.relu_tap_window_means_backward(pre, s)
    is_head, _ = kpr.batch_plan(target, torch.ones(L, dtype=torch.bool), 0.5)
    kpr.pair_indices(is_head, M)


def _strided(*shape):
    """Random values viewed with every stride a runtime value: every other element of a larger tensor
    (Triton folds a stride of 1 into the kernel, so a contiguous input would hide its products)."""
    return torch.randn(*(2 * n for n in shape))[tuple(slice(None, None, 2) for _ in shape)]


def _run_strided_launchers():
    """Every launcher once with no stride equal to 1 (C > 32: two channel blocks, so the finishing kernel runs)."""
    from rsg_fast.kernels import center_assign as kca
    from rsg_fast.kernels import displacement as kdp
    from rsg_fast.kernels import mv_terms as kmv
    from rsg_fast.kernels import tap_window_means as ktw

    N, C, H, W, L, K, M, D = 4, 40, 5, 3, 3, 4, 5, 6
    x, target = _strided(N, C, H, W), torch.randint(0, L, (N,))
    centers, linear, bias = _strided(L, K, C), _strided(L, C, K), _strided(L, K)
    gamma, mean_dist, shift, dmean = torch.rand(N, K), torch.rand(N, K), torch.randn(N, C), torch.randn(N, C)
    g, g_cesc = _strided(N, K), _strided(N)
    kca.center_assign_forward(x, target, centers, linear, bias)
    kca.center_assign_param_grads(target, centers, shift, dmean, gamma, mean_dist, g, g, g_cesc, H * W,
                                  True, True, True, linear.dtype, bias.dtype)
    kca.center_assign_x_grad(x, target, centers, linear, shift, dmean, gamma, mean_dist, g, g, g_cesc)
    index, row, table = torch.arange(M) % N, torch.zeros(N, dtype=torch.long), _strided(L * K, C)
    kdp.displacement_forward(x, index, row, table)
    kdp.index_add_gather(_strided(M, C, H, W), index, x)
    tv, v, grad_new = _strided(M, C, H, W), _strided(M, C, H, W), _strided(M, C, H, W)
    for grouping in ("location", "rows"):
        new, terms, stats = kmv.mv_terms_forward(tv, v, x, index, row, table, grouping, torch.float32)
        kmv.mv_terms_backward(tv, v, x, index, row, table, stats, grad_new, terms, grouping, True, True, True)
    # (H, W) must stay one flat axis (else the launcher copies pre): gaps along D only
    ktw.relu_tap_window_means_forward(torch.randn(M, H, W, 2 * D)[..., ::2], torch.float32)
    # channels outermost: grad_pre (allocated like pre) gets a channel stride of M*H*W too
    pre = torch.randn(D, M, H, W).permute(1, 2, 3, 0)
    ktw.relu_tap_window_means_backward(pre, _strided(M, D, 3, 3))


_DEF = re.compile(r"^\s*(%[\w.#]+)(?::\d+)? = ([\w.]+) (.*?)(?: loc\(.*)?$")
_FOR = re.compile(r"scf\.for (%[\w.#]+) = (%[\w.#]+) to (%[\w.#]+) step .*: i32 \{")
_I32 = re.compile(r"(?::|->)\s*(?:i32|tensor<[\dx]+xi32>)\s*$")
_INT32 = (-2**31, 2**31 - 1)


def _i32_range(op, rest, args):
    """(lo, hi) of an i32 result from its operands' ranges ``args`` (None: unknown), or None."""
    if op == "arith.constant":
        c = re.match(r"(?:dense<)?(-?\d+)>? :", rest)
        return (int(c.group(1)),) * 2 if c else None
    if op == "tt.make_range":
        start, end = (int(re.search(rf"{k} = (-?\d+)", rest).group(1)) for k in ("start", "end"))
        return start, end - 1
    if op == "tt.get_program_id":               # axes y, z: at most 65535 programs (axis x: rule (b))
        return (0, 65534) if not rest.startswith("x ") else None
    if op in ("tt.splat", "tt.broadcast", "tt.expand_dims", "tt.reshape"):
        return args[0]
    if op == "arith.select":                    # either of its last two operands
        args = args[1:]
    if not args or None in args:
        return None
    (a0, a1), (b0, b1) = args[0], args[-1]
    if op == "arith.addi":
        return a0 + b0, a1 + b1
    if op == "arith.subi":
        return a0 - b1, a1 - b0
    if op == "arith.muli":
        p = (a0 * b0, a0 * b1, a1 * b0, a1 * b1)
        return min(p), max(p)
    if op == "arith.select":
        return min(a0, b0), max(a1, b1)
    if op == "arith.minsi":
        return min(a0, b0), min(a1, b1)
    if op == "arith.maxsi":
        return max(a0, b0), max(a1, b1)
    if op == "arith.divsi" and b0 == b1 > 0:     # rounds toward zero
        return tuple(a // b0 if a >= 0 else -(-a // b0) for a in (a0, a1))
    if op == "arith.remsi" and b0 == b1 > 0:     # takes the dividend's sign
        return (0 if a0 >= 0 else 1 - b0, min(b0 - 1, max(a1, 0)))
    return None


def _narrow_offsets(ttir: str) -> list[str]:
    """Lines of a kernel's Triton IR whose offsets can wrap at 2**31: (a) a 32-bit multiply taking a
    runtime integer argument (directly or splatted/broadcast), (b) arithmetic on the program id of
    axis 0 (one program per sample: up to 2**31 - 1 of them) before it is widened to int64, and (c) a
    32-bit add or multiply whose operands have known ranges (constants such as constexpr sizes,
    aranges, program ids of axes y and z, counters of loops with such bounds) and whose result can
    leave int32, e.g. a channel (up to 65535 blocks) times a constexpr H * W."""
    sig = re.search(r"tt\.func public @\w+\((.*?)\) attributes", ttir, re.S)
    int_args = set(re.findall(r"(%\w+): i32", sig.group(1)))
    ops = []
    for line in ttir.splitlines():
        m, loop = _DEF.match(line), _FOR.search(line)
        if loop:                                # a loop's counter: in [start, end) (scf.for steps up)
            ops.append((loop.group(1), "scf.for.iv", "", [loop.group(2), loop.group(3)]))
        if m:
            ops.append((m.group(1), m.group(2), m.group(3), re.findall(r"%[\w.#]+", m.group(3))))
    defs = {v: (op, operands) for v, op, _, operands in ops}

    def root(v):
        while v in defs and defs[v][0] in ("tt.splat", "tt.broadcast", "tt.expand_dims"):
            v = defs[v][1][0]
        return v

    pids = {v for v, op, rest, _ in ops if op == "tt.get_program_id" and rest.startswith("x ")}
    ranges = {}
    found = []
    for v, op, rest, operands in ops:
        roots = {root(o) for o in operands}
        if op == "arith.muli" and _I32.search(rest) and roots & int_args:
            found.append(f"32-bit product with a runtime integer: {v} = {op} {rest}")
        if roots & pids and op not in ("arith.extsi", "scf.for.iv"):
            found.append(f"program id of axis 0 used before widening: {v} = {op} {rest}")
        args = [ranges.get(o) for o in operands]
        if op == "scf.for.iv":
            ranges[v] = (args[0][0], args[1][1] - 1) if None not in args else None
        elif _I32.search(rest):
            r = ranges[v] = _i32_range(op, rest, args)
            if r and not _INT32[0] <= r[0] <= r[1] <= _INT32[1]:
                ranges[v] = None                # flagged once, not again downstream
                if op in ("arith.addi", "arith.subi", "arith.muli"):
                    found.append(f"32-bit result of bounded values can pass 2**31 ({r}): {v} = {op} {rest}")
    return found


def _control():
    """``_narrow_offsets`` on small kernels: two with the patterns it must flag, their 64-bit versions."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget

    @triton.jit
    def narrow(x_ptr, stride, BLOCK: tl.constexpr):
        n = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        tl.store(x_ptr + n * BLOCK + offs * stride, 1.0)

    @triton.jit
    def wide(x_ptr, stride, BLOCK: tl.constexpr):
        n = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        tl.store(x_ptr + n * BLOCK + offs.to(tl.int64) * stride, 1.0)

    # a channel block (program id of axis y) times a constexpr H * W, as displacement's store takes it
    @triton.jit
    def narrow_hw(x_ptr, HW: tl.constexpr, BLOCK: tl.constexpr):
        offs_c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        tl.store(x_ptr + offs_c * HW, 1.0)

    @triton.jit
    def wide_hw(x_ptr, HW: tl.constexpr, BLOCK: tl.constexpr):
        offs_c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        tl.store(x_ptr + offs_c.to(tl.int64) * HW, 1.0)

    found = {}
    for fn, args, kw in [(narrow, (torch.empty(64), 7), {"BLOCK": 16}), (wide, (torch.empty(64), 7), {"BLOCK": 16}),
                         (narrow_hw, (torch.empty(64),), {"HW": 9216, "BLOCK": 8}),
                         (wide_hw, (torch.empty(64),), {"HW": 9216, "BLOCK": 8})]:
        opts, src = _source(fn, args, kw)
        found[fn.__name__] = _narrow_offsets(triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                                            options=opts).asm["ttir"])
    print(json.dumps(found))


def _main(report_path):
    assert "TRITON_INTERPRET" not in os.environ
    import triton
    from triton.backends.compiler import GPUTarget

    from rsg_fast.kernels import center_assign, csr, displacement, mv_terms, pairs, tap_window_means

    recorder = _Recorder()
    for mod in (center_assign, csr, displacement, mv_terms, pairs, tap_window_means):
        mod.launch = recorder
    target = GPUTarget("cuda", 90, 32)

    def compile_all(calls):
        compiled = {}
        for fn, args, kw in calls:
            opts, src = _source(fn, args, dict(kw))
            compiled.setdefault(src.hash() + repr(sorted(opts.items())),
                                (fn.__name__, lambda src=src, opts=opts: triton.compile(src, target=target,
                                                                                        options=opts)))
        return compiled

    # every dtype and layout class at small odd shapes, plus C = K = W = 1 specialisations
    for dt, layouts in [(torch.float32, ("contiguous", "channels_last", "sliced")), (torch.float16, ("contiguous",)),
                        (torch.bfloat16, ("contiguous",)), (torch.float64, ("contiguous",))]:
        base = torch.randn(3, 5, 6, 7).to(dt)
        for kind in layouts:
            x = (base if kind == "contiguous" else base.contiguous(memory_format=torch.channels_last)
                 if kind == "channels_last" else torch.randn(3, 5, 12, 8).to(dt)[:, :, ::2, 1:])
            _run_launchers(x, 4, 3, 9, ("contiguous", "channels_last"))
    _run_launchers(torch.randn(2, 1, 5, 1), 1, 1, 1, ("contiguous",))
    # H * W = 9216 (blocks of 8 channels): a 32-bit channel times H * W could pass 2**31 there
    _run_launchers(torch.randn(2, 9, 96, 96), 4, 3, 9, ("contiguous",))
    _run_strided_launchers()
    narrow = {}
    for name, job in compile_all(recorder.calls).values():
        narrow.setdefault(name, []).extend(_narrow_offsets(job().asm["ttir"]))
    result = {"variants": len(compile_all(recorder.calls)), "paper": {}, "narrow": narrow}

    # the pairs kernels at the largest batch they take (one program holds the whole batch), and the
    # CSR kernel at the largest index it takes (int64 and int32 values)
    recorder.calls.clear()
    from rsg_fast.kernels.pairs import MAX_BATCH
    labels = torch.randint(0, 10, (MAX_BATCH,))
    is_head, _ = pairs.batch_plan(labels, torch.ones(10, dtype=torch.bool), 0.5)
    pairs.pair_indices(is_head, MAX_BATCH // 2)
    for dt in (torch.int64, torch.int32):
        csr.csr_by_index(torch.zeros(csr.MAX_LEN, dtype=dt), csr.MAX_ROWS)
    result["paper"]["max-batch"] = {}
    for name, job in compile_all(recorder.calls).values():
        info = _ptxas_report(job().asm["ptx"])
        result["paper"]["max-batch"].setdefault(name, []).append(dict(info, vector_loads=0))

    # the paper's insertion points, fp32 NCHW: vector loads and registers
    for label, (N, C, H, W, L, D) in {"cifar": (128, 32, 16, 16, 10, 256),
                                      "imagenet-lt": (256, 1024, 14, 14, 1000, 512)}.items():
        recorder.calls.clear()
        _run_launchers(torch.randn(N, C, H, W), 15, L, D, ("contiguous",))
        kernels = {}
        for name, job in compile_all(recorder.calls).values():
            compiled = job()
            ptx = compiled.asm["ptx"]
            narrow.setdefault(name, []).extend(_narrow_offsets(compiled.asm["ttir"]))
            info = _ptxas_report(ptx)
            info["vector_loads"] = len(re.findall(r"ld\.global(?:\.\w+)*\.v4\.", ptx))
            kernels.setdefault(name, []).append(info)
        result["paper"][label] = kernels
    with open(report_path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


def _archs(archs: list[int]):
    """Compile every recorded variant for each of ``archs``; print {arch: {variants, failed}} as JSON."""
    assert "TRITON_INTERPRET" not in os.environ
    import triton
    from triton.backends.compiler import GPUTarget

    from rsg_fast.kernels import center_assign, csr, displacement, mv_terms, pairs, tap_window_means

    recorder = _Recorder()
    for mod in (center_assign, csr, displacement, mv_terms, pairs, tap_window_means):
        mod.launch = recorder
    for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        _run_launchers(torch.randn(3, 5, 6, 7).to(dt), 4, 3, 9, ("contiguous", "channels_last"))
    _run_launchers(torch.randn(3, 5, 6, 7).contiguous(memory_format=torch.channels_last), 4, 3, 9, ("contiguous",))
    _run_launchers(torch.randn(128, 32, 16, 16), 15, 10, 256, ("contiguous",))
    sources = {}
    for fn, args, kw in recorder.calls:
        opts, src = _source(fn, args, dict(kw))
        sources.setdefault(src.hash() + repr(sorted(opts.items())), (fn.__name__, src, opts))
    report = {}
    for arch in archs:
        failed = {}
        for name, src, opts in sources.values():
            try:
                triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
            except Exception as err:   # noqa: BLE001 (every failure is reported, with its kernel)
                failed.setdefault(name, str(err).splitlines()[0][:300] if str(err) else type(err).__name__)
        report[arch] = {"variants": len(sources), "failed": failed}
    print(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1] == "--control":
        _control()
    elif sys.argv[1] == "--archs":
        _archs([int(a) for a in sys.argv[2].split(",")])
    else:
        _main(sys.argv[1])
