"""torch.compile of RSG for a CUDA GPU, traced and code-generated on a machine without one.

The CPU tests compile RSG with the PyTorch path only: the Triton path cannot run on fake tensors
under the interpreter. On CUDA, torch.compile traces into the Triton kernels instead (the ops are
``triton_op``s launching through ``wrap_triton``), a path no CPU test reached. This test takes it
as far as it goes without a GPU: in a subprocess WITHOUT TRITON_INTERPRET, on fake CUDA tensors,
with the few CUDA queries dynamo and inductor make answered as an H100 would (``_pretend_h100``),
dynamo, AOT autograd and inductor compile RSG's forward, and the Python wrapper inductor writes
(the host code of the compiled graph) is captured instead of loaded. Each backward op is compiled
the same way on its own. What the wrapper must show:
- every fused op runs its Triton kernels (the wrapper launches them by name);
- host synchronisations: one ``.item()`` (the number of new samples) in the generation phase, none
  in the contrastive phase and none at all given ``host_target``;
- no host-to-device copy and no CPU buffer (a non_blocking=False copy from the host syncs the
  stream), except the pair indices and labels that ``host_target`` sends, asynchronously;
- with the constructor's head classes and with others (the head table is built on the device);
- with ``dynamic=True``, guards on a range of batch sizes (the launchers' power-of-two blocks), never
  on one size (a compile per batch size);
- under ``mode="reduce-overhead"``, every kernel inside the partitions CUDA graphs replay, nothing
  launched on the device between them: one graph in the contrastive phase, two in the generation
  phase (split at its sync), one given ``host_target`` (three with torch 2.11).
Positive controls (a table sent from the CPU, ``.item()``, ``torch.nonzero``) compiled by the same
inductor show that the wrapper reader sees copies and syncs in the form this torch writes them.

Limits: inductor compiles the forward for inference only (AOT autograd's joint forward+backward
graph runs the autograd engine, which needs a real device for CUDA tensors). The training graph is
traced on meta tensors instead (``_trace_training_on_meta``, both phases) and split into its
forward and backward, whose Triton kernels are checked, but not compiled. Nothing is executed: the
values are the CUDA tests' and ``rsg-fast check``'s job on a GPU.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import traceback

import pytest

CIFAR_BATCH = 128    # the batch size of the CIFAR cases (the paper's)

# user-defined Triton kernels each case must launch
FORWARD_KERNELS = {"_batch_plan_kernel", "_center_assign_fwd_kernel"}
GENERATION_KERNELS = FORWARD_KERNELS | {"_pair_indices_kernel", "_displacement_fwd_kernel", "_mv_terms_fwd_kernel",
                                        "_relu_tap_window_means_fwd_kernel"}
CONTRASTIVE_KERNELS = FORWARD_KERNELS | {"_relu_tap_window_means_fwd_kernel"}
BACKWARD_KERNELS = {"center_assign_backward": {"_csr_kernel", "_center_assign_param_grad_kernel",
                                               "_center_assign_x_grad_kernel"},
                    "displacement_backward": {"_csr_kernel", "_index_add_kernel"},
                    "mv_terms_backward": {"_mv_terms_bwd_kernel", "_csr_kernel", "_index_add_kernel"},
                    "relu_tap_window_means_backward": {"_relu_tap_window_means_bwd_kernel"}}
# launches of each backward op: torch 2.14's counts (3, 4, 5, 1 on 2026-12-06; each one more while the CSR
# was a sort), plus one where inductor's glue (zeros, the table's gradient) may fuse otherwise elsewhere
BACKWARD_LAUNCHES = {"center_assign_backward": 3, "displacement_backward": 5, "mv_terms_backward": 6,
                     "relu_tap_window_means_backward": 1}


@pytest.fixture(scope="module")
def report():
    import torch

    if not torch.cuda.is_available() and not hasattr(torch._C, "_ensureCUDADeviceGuardSet"):   # torch < 2.10
        pytest.skip("torch < 2.10 runs a fake CUDA tensor's copy_ through the real device guard, which needs a "
                    "CUDA driver ('CUDA driver version is insufficient for CUDA runtime version')")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "report.json")
        env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tmp, "inductor")
        proc = subprocess.run([sys.executable, __file__, path], env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
        with open(path) as f:
            cases = json.load(f)
        cases["stderr"] = proc.stderr
        return cases


def _case(report, name):
    case = report[name]
    import torch

    if (torch.torch_version.TorchVersion(torch.__version__) < "2.11"
            and "doesn't match mode" in (case["error"] or "")):
        pytest.skip("torch < 2.11's detect_fake_mode rejects fake inputs of a mode other than dynamo's "
                    "('fake mode ... from tracing context 0 doesn't match mode ... from fake tensor input 0')")
    assert case["error"] is None, f"{name}: {case['error']}\n{case.get('wrapper', '')[-3000:]}"
    return case


# launch budgets: what torch 2.14's inductor gives (19, 12, 19, 26, 158, 20, 19, 12 on 2026-12-06) plus slack
# for other versions' fusion choices; over budget means glue crept back in around the fused ops
@pytest.mark.parametrize("name, kernels, syncs, launches", [
    ("generation", GENERATION_KERNELS, 1, 22),
    ("contrastive", CONTRASTIVE_KERNELS, 0, 14),
    ("generation-1x1-dim3", GENERATION_KERNELS, 1, 22),
    ("generation-bf16-autocast", GENERATION_KERNELS, 1, 30),
    ("resnet32-generation", GENERATION_KERNELS, 1, 175),
    ("imagenet-lt-generation", GENERATION_KERNELS | {"_center_assign_finish_kernel"}, 1, 23),
    ("generation-other-heads", GENERATION_KERNELS, 1, 22),
    ("contrastive-other-heads", CONTRASTIVE_KERNELS, 0, 14),
    ("generation-dynamic", GENERATION_KERNELS, 1, 22),      # dynamic=True: 19 and 12 too on 2026-12-07
    ("contrastive-dynamic", CONTRASTIVE_KERNELS, 0, 14),
])
def test_compiled_forward_runs_the_triton_kernels_with_one_sync_and_no_host_copy(report, name, kernels, syncs,
                                                                                 launches):
    case = _case(report, name)
    assert kernels <= set(case["user_kernels"]), (name, sorted(kernels - set(case["user_kernels"])))
    assert case["device_syncs"] == syncs, (name, case["device_syncs"])
    assert case["copies"] == [], (name, case["copies"])
    assert case["cpu_buffers"] == 0, name
    assert case["launches"] <= launches, (name, case["launches"])


@pytest.mark.parametrize("name", ["generation-dynamic", "contrastive-dynamic"])
def test_dynamic_compile_guards_on_a_range_of_batch_sizes_not_on_one(report, name):
    # the pairs kernels' block is the batch size's power of two: picked by comparisons on the symbolic
    # size (guards 64 < N <= 128), not int(N), which pinned the graph to N = 128 (a compile per size)
    case = _case(report, name)
    assert case["guards"] and case["guards"] != ["(no shape env)"], case["guards"]
    pinned = [g for g in case["guards"] if re.search(rf"Eq\(\w+, {CIFAR_BATCH}\)", g)]
    assert not pinned, (name, pinned)
    assert any(re.fullmatch(rf"\w+ <= {CIFAR_BATCH}", g) for g in case["guards"]), case["guards"]


def test_compiled_forward_with_host_target_never_syncs(report):
    case = _case(report, "generation-host-target")
    assert GENERATION_KERNELS - {"_batch_plan_kernel", "_pair_indices_kernel"} <= set(case["user_kernels"])
    assert case["device_syncs"] == 0
    # what crosses to the device: the labels for the equality assert and the stacked pair indices,
    # both host-to-device and asynchronous (non_blocking=True)
    assert len(case["copies"]) == 2, case["copies"]
    assert all(c["to_device"] and c["non_blocking"] for c in case["copies"]), case["copies"]


@pytest.mark.parametrize("name, kernels, partitions, syncs", [
    ("contrastive-cudagraphs", CONTRASTIVE_KERNELS, {1}, 0),
    ("contrastive-host-target-cudagraphs", CONTRASTIVE_KERNELS - {"_batch_plan_kernel"}, {1}, 0),
    ("generation-cudagraphs", GENERATION_KERNELS, {2}, 1),
    # torch 2.14 runs the host pairing before the one graph; 2.11 between three (seen on 2026-12-07)
    ("generation-host-target-cudagraphs", GENERATION_KERNELS - {"_batch_plan_kernel", "_pair_indices_kernel"},
     {1, 3}, 0),
])
def test_reduce_overhead_puts_all_device_work_in_cuda_graphs(report, name, kernels, partitions, syncs):
    """``torch.compile(mode="reduce-overhead")``: every kernel is in a partition that a CUDA graph
    replays, and the host code around them launches nothing on the device. The contrastive phase
    is one graph; the generation phase is two, split at its one sync (the number of new samples),
    or one given ``host_target`` (its pairing runs on the CPU, outside, with the copies)."""
    case = _case(report, name)
    assert case["partitions"] in partitions, case
    assert kernels <= set(case["partition_kernels"]), (name, sorted(kernels - set(case["partition_kernels"])))
    assert case["user_kernels"] == [] and case["launches"] == len(case["cpu_ops"]), (name, case["launched"])
    assert case["device_syncs"] == syncs, case
    assert all(c["to_device"] and c["non_blocking"] for c in case["copies"]), case["copies"]


@pytest.mark.parametrize("op", sorted(BACKWARD_KERNELS))
def test_compiled_backward_op_runs_its_triton_kernels(report, op):
    case = _case(report, op)
    assert BACKWARD_KERNELS[op] <= set(case["user_kernels"]), (op, case["user_kernels"])
    assert case["device_syncs"] == 0 and case["copies"] == [] and case["cpu_buffers"] == 0, case
    assert case["launches"] <= BACKWARD_LAUNCHES[op], (op, case["launched"])
    # the CSR of an index is one user kernel (_csr_kernel), not a sort and a binary search
    assert not [k for k in case["launched"] if "sort" in k], (op, case["launched"])


@pytest.mark.parametrize("phase, forward, backward", [
    ("generation", GENERATION_KERNELS, {"_csr_kernel", "_center_assign_param_grad_kernel", "_mv_terms_bwd_kernel",
                                        "_relu_tap_window_means_bwd_kernel"}),
    ("contrastive", CONTRASTIVE_KERNELS, {"_csr_kernel", "_center_assign_param_grad_kernel",
                                          "_relu_tap_window_means_bwd_kernel"}),
])
def test_the_training_graph_traces_on_the_triton_path(report, phase, forward, backward):
    """Forward+backward as torch.compile trains with it, split by inductor's partitioner: the forward
    launches every fused forward kernel, the backward exactly the backward kernels RSG needs (its
    maps are detached: no x-gradient kernels; so is the centre table the displacement reads: no
    displacement backward; the contrastive phase trains the contrastive head: its tap-window means'
    backward)."""
    case = _case(report, f"training-{phase}")
    assert forward <= set(case["forward_kernels"]), case
    assert set(case["backward_kernels"]) == backward, case
    assert not set(case["forward_kernels"]) & set(case["backward_kernels"]), case


def test_compiling_for_cuda_warns_of_nothing(report):
    """No warning from dynamo or inductor while compiling RSG for CUDA (a user would see it on every
    compile; the Triton path's backend resolution once drew dynamo's functools-cache warning)."""
    warned = re.findall(r"^.*Warning: .*$", report["stderr"], re.M)
    # torch 2.11's inductor warns that TF32 is off for fp32 matmuls (2.14 logs it): torch's advice, not ours
    assert [w for w in warned if "TensorFloat32 tensor cores" not in w] == []


def test_the_wrapper_reader_finds_a_blocking_copy_and_syncs_in_real_wrappers(report):
    """Positive controls, compiled by the same inductor: a table built on the CPU and sent with
    ``.to(device)`` (what RSG did before), a ``.item()`` and a ``torch.nonzero`` (data-dependent size)."""
    copy = _case(report, "control-host-table")
    assert copy["cpu_buffers"] >= 1 and [(c["to_device"], c["non_blocking"]) for c in copy["copies"]] == [(True, False)]
    assert _case(report, "control-item")["device_syncs"] == 1
    assert _case(report, "control-nonzero")["device_syncs"] == 1


def test_the_wrapper_reader_on_the_forms_inductor_writes():
    text = "\n".join([
        "def partition_0(args):",
        "        _center_assign_fwd_kernel_1.run(arg0_1, stream=raw_stream0)",
        "def partition_1(args):",
        "    def call(self, args):",
        "        buf0 = empty_strided_cpu((5, ), (1, ), torch.bool)",
        "        buf1 = reinterpret_tensor(buf0, (1, ), (1, ), 3)  # alias",
        "        u0 = reinterpret_tensor(buf1, (), (), 1).item()",
        "        buf3 = empty_strided_cuda((5, ), (1, ), torch.bool)",
        "        u1 = reinterpret_tensor(buf4, (), (), 1).item()",
        "        u2 = buf5.item()",
        "        buf24 = torch.ops.aten.nonzero.default(buf3)",
        "        u3 = buf24.size(0)",
        "        buf6 = buf3; del buf3  # reuse",
        "        buf6.copy_(buf0, False)  # a comment",
        "        reinterpret_tensor(buf1, (1, ), (1, ), 0).copy_(buf6, True)",
        "        _d2h_event_buf7.synchronize()",
        "        _mv_terms_fwd_kernel_4.run(buf39, buf33, stream=raw_stream0)",
        "        triton_poi_fused_cat_4.run(arg0_1, stream=raw_stream0)",
        "        buf44 = extern_kernels.addmm(arg8_1, buf43, arg7_1)",
        "        buf45 = torch.ops.aten.sort.stable(buf0, stable=True, dim=0, descending=False)",
    ])
    got = _read_wrapper(text)
    assert got["device_syncs"] == 4 and got["cpu_buffers"] == 1
    assert [(c["to_device"], c["non_blocking"]) for c in got["copies"]] == [(True, False), (False, True)]
    assert got["user_kernels"] == ["_mv_terms_fwd_kernel"] and got["launches"] == 5
    assert got["launched"] == ["aten.nonzero.default", "_mv_terms_fwd_kernel_4", "triton_poi_fused_cat_4", "addmm",
                               "aten.sort.stable"]
    assert got["cpu_ops"] == ["aten.sort.stable"]             # on buf0, a host buffer
    assert got["partitions"] == 2 and got["partition_kernels"] == ["_center_assign_fwd_kernel"]


def _read_wrapper(code: str) -> dict:
    """What the host code of inductor's wrapper (its ``call``) does: device-to-host syncs (a new
    data-dependent size ``uN`` read from a device buffer, an event synchronisation), copies (into a
    device buffer or not, non_blocking or not), CPU buffers, kernel and library launches."""
    found = re.search(r"^\s*def call\(", code, re.M)
    assert found, "no call() in the wrapper: its format changed; update _read_wrapper"
    # under CUDA graphs (mode="reduce-overhead") the device work is in partition functions defined
    # before call(), which calls them; what call() itself runs stays outside every graph
    partitions = code[:found.start()]
    lines = [line.split("  #")[0].rstrip() for line in code[found.start():].splitlines()]
    device = {}                                            # buffer -> "cpu" | "cuda"
    for line in lines:
        m = re.match(r"\s*(\w+) = empty_strided_(cpu|cuda)\(", line)
        if m:
            device[m.group(1)] = m.group(2)
        m = re.match(r"\s*(\w+) = (?:reinterpret_tensor\()?(\w+)\b", line)
        if m and m.group(2) in device:
            device.setdefault(m.group(1), device[m.group(2)])
    syncs = 0
    copies = []
    for line in lines:
        m = re.match(r"\s*u\d+ = .*?\b(buf\d+|arg\d+_\d+)\b", line)
        if (m and device.get(m.group(1)) != "cpu") or ".synchronize()" in line:
            syncs += 1
        m = re.match(r"\s*(?:reinterpret_tensor\()?(\w+)\b.*\.copy_\(.*,\s*(True|False)\)\s*$", line)
        if m:
            copies.append({"line": line.strip(), "to_device": device.get(m.group(1)) == "cuda",
                           "non_blocking": m.group(2) == "True"})
    body = "\n".join(lines)
    return {"device_syncs": syncs, "copies": copies,
            "cpu_buffers": len(re.findall(r"\bempty_strided_cpu\(", body)),
            "user_kernels": sorted(set(re.findall(r"\b(_\w+_kernel)_\d+\.run\(", body))),
            "launched": ["".join(names) for names in re.findall(
                r"\b(\w+)\.run\(|\bextern_kernels\.(\w+)\(|\btorch\.ops\.(\w+\.\w+\.\w+)\(", body)],
            "launches": len(re.findall(r"\.run\(|\bextern_kernels\.\w+\(|\btorch\.ops\.\w+\.\w+\.\w+\(", body)),
            # library ops on a host buffer (host_target's pairing): CPU work, not device launches
            "cpu_ops": [name for name, arg in re.findall(r"\btorch\.ops\.(\w+\.\w+\.\w+)\((\w+)", body)
                        if device.get(arg) == "cpu"],
            "partitions": len(re.findall(r"^def partition_\d+\(", partitions, re.M)),
            "partition_kernels": sorted(set(re.findall(r"\b(_\w+_kernel)_\d+\.run\(", partitions)))}


# ----------------------------------------------------------------------------- the subprocess

class _Captured(Exception):
    """Raised instead of loading the wrapper inductor wrote (loading would compile for a real GPU)."""


def _pretend_h100_triton_driver():
    """Triton's active driver as an H100's: inductor asks it for the target when it compiles a kernel
    to its intermediate form to see which arguments the kernel writes."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget

    class FakeDriver:   # what inductor's Triton-kernel analysis asks of Triton's active driver
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_active_torch_device(self):
            return torch.device("cuda", 0)

    triton.runtime.driver.set_active(FakeDriver())


def _pretend_h100():
    """Answer the CUDA queries dynamo and inductor make while compiling as an H100 would. Called after
    the fake inputs exist (random initialisation must not believe a GPU is there)."""
    import types

    import torch

    _pretend_h100_triton_driver()
    props = types.SimpleNamespace(
        name="NVIDIA H100 80GB HBM3 (pretended)", major=9, minor=0, multi_processor_count=132,
        max_threads_per_multi_processor=2048, regs_per_multiprocessor=65536, warp_size=32,
        total_memory=80 * 2**30, L2_cache_size=50 * 2**20, shared_memory_per_block_optin=227 * 1024,
        shared_memory_per_multiprocessor=228 * 1024, shared_memory_per_block=48 * 1024,
        max_threads_per_block=1024, clock_rate=1980000, memory_clock_rate=2619000, memory_bus_width=5120,
        gcnArchName="", uuid="pretended", is_integrated=False, is_multi_gpu_board=False)
    cuda = torch.cuda
    for name, value in {
        "is_available": lambda: True, "device_count": lambda: 1, "current_device": lambda: 0,
        "get_device_properties": lambda *a, **k: props, "_get_device_properties": lambda *a, **k: props,
        "get_device_capability": lambda *a, **k: (9, 0), "get_device_name": lambda *a, **k: props.name,
        "get_rng_state": lambda *a, **k: torch.zeros(16, dtype=torch.uint8),
        "set_rng_state": lambda *a, **k: None, "is_current_stream_capturing": lambda: False,
        "synchronize": lambda *a, **k: None, "_lazy_init": lambda: None, "set_device": lambda *a: None,
        "_exchange_device": lambda idx: 0, "_maybe_exchange_device": lambda idx: 0,
    }.items():
        setattr(cuda, name, value)
    torch.cuda.graphs.is_current_stream_capturing = lambda: False
    import torch.utils._triton
    for name in dir(torch.utils._triton):   # "is triton usable here?" answers cached before the pretence
        cache_clear = getattr(getattr(torch.utils._triton, name), "cache_clear", None)
        if cache_clear is not None:
            cache_clear()
    # inductor's pattern libraries and its constant folding run sample ops on real tensors of the
    # device: not here (the generated code differs from a GPU's only by those rewrites)
    import torch._inductor.config
    import torch._inductor.fx_passes.joint_graph as joint_graph
    import torch._inductor.fx_passes.post_grad as post_grad
    joint_graph.lazy_init = post_grad.lazy_init = lambda *a, **k: None
    torch._inductor.config.joint_graph_constant_folding = False
    from torch._inductor.codecache import PyCodeCache

    def capture(key, path, *args, **kwargs):
        with open(path) as f:
            _WRAPPERS.append(f.read())
        context = torch._guards.TracingContext.try_get()     # the shape guards dynamo has made so far
        shape_env = context.fake_mode.shape_env if context is not None else None
        _GUARDS[:] = [str(g.expr) for g in shape_env.guards] if shape_env is not None else ["(no shape env)"]
        raise _Captured
    PyCodeCache.load_by_key_path = capture


_WRAPPERS: list[str] = []
_GUARDS: list[str] = []


def _unless_captured(exc: BaseException, captured: bool) -> str | None:
    """None when ``exc`` is our ``_Captured`` (anywhere in its chain) and the capture is complete;
    otherwise the innermost exception's traceback, the finding."""
    chain, e = [], exc
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if captured and any(isinstance(e, _Captured) for e in chain):
        return None
    return "".join(traceback.format_exception(chain[-1]))[-6000:]


def _compile_and_capture(fn, *args, _dynamic=None, _mode=None, **kwargs) -> dict:
    """Compile ``fn`` with inductor (fullgraph; ``dynamic=_dynamic``, ``mode=_mode``) on fake inputs; the
    wrapper of its last graph, read."""
    import torch
    import torch._dynamo

    torch._dynamo.reset()
    _WRAPPERS.clear()
    _GUARDS.clear()
    error = None
    try:
        torch.compile(fn, backend="inductor", fullgraph=True, dynamic=_dynamic, mode=_mode)(*args, **kwargs)
        error = "the compiled call returned: the wrapper was never captured"
    except Exception as exc:  # noqa: BLE001  the capture ends the call; anything else is the finding
        error = _unless_captured(exc, captured=len(_WRAPPERS) > 0)
    out = _read_wrapper(_WRAPPERS[-1]) if _WRAPPERS else {}
    out.update(error=error, wrapper=_WRAPPERS[-1] if _WRAPPERS else "", guards=list(_GUARDS))
    return out


def _main(report_path):
    assert "TRITON_INTERPRET" not in os.environ
    import torch
    import torch._dynamo
    from torch._subclasses.fake_tensor import FakeTensorMode

    from rsg_fast import RSG, ops  # noqa: F401  registers the ops
    from rsg_fast.models import build_model

    torch._dynamo.config.capture_scalar_outputs = True        # the README's compile setting
    torch.manual_seed(0)
    N, C, H, W, L, K, D, heads, thresh = CIFAR_BATCH, 32, 16, 16, 10, 15, 256, [0, 1, 2], 3   # the paper's CIFAR
    cases = {}
    lt_heads = sorted(torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:390].tolist())
    _pretend_h100_triton_driver()
    for phase, epoch in (("generation", thresh + 2), ("contrastive", 1)):
        cases[f"training-{phase}"] = _trace_training_on_meta(K, [C, H, W], L, D, heads, thresh, N, epoch)
    with FakeTensorMode(allow_non_fake_inputs=True):
        with torch.device("cuda"):
            rsg = RSG(K, [C, H, W], L, D, heads, 1.0, thresh)
            rsg_small = RSG(4, [6, 1, 1], 5, 3, [0, 1], 1.0, thresh)       # 1x1 maps, contrastive dim 3
            # the paper's ImageNet-LT stage (390 scattered head classes): C = 1024 takes center_assign's
            # multi-block finish kernel
            rsg_lt = RSG(K, [1024, 14, 14], 1000, 512, lt_heads, 1.0, thresh)
            x_lt, y_lt = torch.randn(256, 1024, 14, 14), torch.randint(0, 1000, (256,))
            net = build_model("resnet32", L, rsg=dict(n_center=K, contrastive_module_dim=D, epoch_thresh=thresh),
                              head_classes=heads)
            x = torch.randn(N, C, H, W)
            y = torch.randint(0, L, (N,))
            x_small, y_small = torch.randn(10, 6, 1, 1), torch.randint(0, 5, (10,))
            images = torch.randn(N, 3, 32, 32)
            bwd = _backward_inputs(N, C, H, W, L, K, D)
        host_y = torch.randint(0, L, (N,))
        for module in (rsg, rsg_small, rsg_lt, net):
            for p in module.parameters():
                p.requires_grad_(False)
        _pretend_h100()
        gen = thresh + 2
        cases["generation"] = _compile_and_capture(rsg, x, heads, y, gen)
        cases["contrastive"] = _compile_and_capture(rsg, x, heads, y, 1)
        cases["generation-1x1-dim3"] = _compile_and_capture(rsg_small, x_small, [0, 1], y_small, gen)
        cases["generation-host-target"] = _compile_and_capture(rsg, x, heads, y, gen, host_target=host_y)

        def autocast_forward(x, y):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return rsg(x, heads, y, gen)
        cases["generation-bf16-autocast"] = _compile_and_capture(autocast_forward, x.bfloat16(), y)
        cases["resnet32-generation"] = _compile_and_capture(net, images, y, gen)
        cases["imagenet-lt-generation"] = _compile_and_capture(rsg_lt, x_lt, lt_heads, y_lt, gen)
        other = [7, 0, 4, 5]                                   # not the constructor's head classes
        cases["generation-other-heads"] = _compile_and_capture(rsg, x, other, y, gen)
        cases["contrastive-other-heads"] = _compile_and_capture(rsg, x, other, y, 1)
        # dynamic=True (README: one graph per phase): kernels generic in the batch size
        cases["generation-dynamic"] = _compile_and_capture(rsg, x, heads, y, gen, _dynamic=True)
        cases["contrastive-dynamic"] = _compile_and_capture(rsg, x, heads, y, 1, _dynamic=True)
        # mode="reduce-overhead": inductor puts the device work in partitions that CUDA graphs replay
        for phase, epoch in (("contrastive", 1), ("generation", gen)):
            cases[f"{phase}-cudagraphs"] = _compile_and_capture(rsg, x, heads, y, epoch, _mode="reduce-overhead")
            cases[f"{phase}-host-target-cudagraphs"] = _compile_and_capture(rsg, x, heads, y, epoch, host_target=host_y,
                                                                            _mode="reduce-overhead")
        for name, args in bwd.items():
            op = getattr(torch.ops.rsg_fast, name)
            cases[name] = _compile_and_capture(lambda *a, op=op: op(*a), *args)
        # positive controls of the wrapper reader
        cases["control-host-table"] = _compile_and_capture(_control_host_table, x)
        cases["control-item"] = _compile_and_capture(lambda x: x * (x.sum() > 0).long().item(), x)
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
            cases["control-nonzero"] = _compile_and_capture(lambda x: x * torch.nonzero(x > 0).shape[0], x)
    for name, case in cases.items():
        print(name, {k: v for k, v in case.items() if k != "wrapper"})
    with open(report_path, "w") as f:
        json.dump(cases, f)


def _trace_training_on_meta(K, maps, L, D, heads, thresh, N, epoch) -> dict:
    """The training graph of RSG on the Triton path: AOT autograd's joint forward+backward, traced and
    split into forward and backward by inductor's partitioner, on meta tensors (the autograd engine
    cannot run on fake CUDA tensors). rsg_fast is told that the Triton path may run there (its guards
    refuse non-CUDA tensors); the Triton driver is the pretended H100's, so inductor's analysis of
    which kernel arguments are written sees the kernels as a GPU run would. Returns the Triton
    kernels each graph launches, or the error."""
    import importlib

    import torch
    import torch._dynamo
    from torch._functorch.aot_autograd import aot_module_simplified
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    import rsg_fast.backend
    from rsg_fast import RSG

    op_files = [importlib.import_module(f"rsg_fast.ops.{name}")
                for name in ("center_assign", "displacement", "mv_terms", "tap_window_means", "pairs")]
    import torch.nn.functional as F

    saved = [(rsg_fast.backend, "triton_interpret", rsg_fast.backend.triton_interpret),
             (torch, "is_autocast_enabled", torch.is_autocast_enabled), (F, "cross_entropy", F.cross_entropy)] + \
        [(f, "interpreter_guard", f.interpreter_guard) for f in op_files]
    # on meta tensors AOT autograd drops F.cross_entropy's gradient (a plain
    # F.cross_entropy(F.linear(x, w), y) shows it): the same loss from log_softmax keeps it
    F.cross_entropy = lambda logits, y: -F.log_softmax(logits, 1).gather(1, y[:, None]).mean()
    rsg_fast.backend.triton_interpret = lambda: True
    for f in op_files:
        f.interpreter_guard = lambda *a: None
    autocast_enabled = torch.is_autocast_enabled
    torch.is_autocast_enabled = lambda *a: False if a and a[0] == "meta" else autocast_enabled(*a)
    graphs = {}

    def capture(gm, example_inputs):
        def keep(name):
            def compiler(graph, inputs):
                graphs[name] = sorted(kernel_side_table.get_kernel(n.kwargs["kernel_idx"]).fn.__name__
                                      for n in graph.graph.nodes if "triton_kernel_wrapper" in str(n.target))
                if name == "backward":
                    raise _Captured
                return graph
            return compiler
        return aot_module_simplified(gm, example_inputs, fw_compiler=keep("forward"), bw_compiler=keep("backward"),
                                     partition_fn=min_cut_rematerialization_partition)

    torch._dynamo.reset()
    error = None
    try:
        with torch.device("meta"):
            rsg = RSG(K, maps, L, D, heads, 1.0, thresh, backend="triton")
            x, y = torch.randn(N, *maps, requires_grad=True), torch.randint(0, L, (N,))
        with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):   # both graphs now
            torch.compile(rsg, backend=capture, fullgraph=True)(x, heads, y, epoch)
        error = "the compiled call returned: the graphs were never captured"
    except Exception as exc:  # noqa: BLE001  the capture ends the call; anything else is the finding
        error = _unless_captured(exc, captured=len(graphs) == 2)
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
        torch._dynamo.reset()
    return {"error": error, "forward_kernels": graphs.get("forward"), "backward_kernels": graphs.get("backward")}


def _control_host_table(x):
    """A table built on the CPU and sent to the device with a blocking copy (RSG's code until 12fcd35)."""
    import torch

    table = torch.zeros(x.shape[1], dtype=torch.bool)
    table[[0, 2]] = True
    return x * table.to(x.device).view(1, -1, 1, 1)


def _backward_inputs(N, C, H, W, L, K, D):
    """Arguments of each backward op, as one forward at these sizes would give them (fake CUDA)."""
    import torch

    M = N // 3
    x, target = torch.randn(N, C, H, W), torch.randint(0, L, (N,))
    centers, linear, bias = torch.randn(L, K, C), torch.randn(L, C, K), torch.randn(L, K)
    index, row = torch.randint(0, N, (M,)), torch.randint(0, L * K, (N,))
    table = torch.randn(L * K, C)
    tv, v = torch.randn(M, C, H, W), torch.randn(M, C, H, W)
    gamma, mean_dist, shift, dmean = torch.rand(N, K), torch.rand(N, K), torch.randn(N, C), torch.randn(N, C)
    stats = torch.randn(M, H * W, 5)
    pre = torch.randn(M, H, W, D)
    return {
        "center_assign_backward": (x, target, centers, linear, bias, gamma, mean_dist, shift, dmean, torch.randn(N, K),
                                   None, torch.randn(N), True, True, True, True, "triton"),
        "displacement_backward": (torch.randn(M, C, H, W), x, index, row, table, True, True, "triton"),
        "mv_terms_backward": (tv, v, x, index, row, table, stats, torch.randn(M, C, H, W), torch.randn(2), "rows",
                              True, True, True, True, "triton"),
        "relu_tap_window_means_backward": (pre, torch.randn(M, D, 3, 3), "triton"),
    }


if __name__ == "__main__":
    _main(sys.argv[1])
