"""What ``rsg-fast bench``, ``benchmarks/`` and ``benchmarks/gpu_check.sh`` time: the public cases module.

Nothing here times anything; it builds the work that is timed, so the command line and the
pytest benchmarks measure exactly the same calls. Import this module (and ``op_cases`` for the
fused ops on their own); it re-exports the settings and the input pool:

- ``SETTINGS`` / ``Setting`` / ``PHASES`` / ``label_counts`` / ``pair_count`` (from ``settings``) and
  ``InputPool`` (from ``inputs``).
- Variants: ``MODULE_VARIANTS`` (one forward+backward of the RSG module: ``reference`` =
  ``ReferenceRSG``, ``rsg-torch`` / ``rsg-triton`` = ``RSG`` on one backend, ``reference-compiled`` /
  ``rsg-compiled`` = their ``torch.compile``, ``rsg-host`` = ``RSG`` given the labels on the host as
  ``host_target``, CUDA only: no device-to-host synchronisation) and ``STEP_VARIANTS`` (one SGD step
  of CIFAR ResNet-32 without RSG, with ``ReferenceRSG``, with ``RSG`` (``+rsg-host``: given
  ``host_target``), and compiled with and without ``RSG``).
- ``variant_unavailable(variant, device, ...)``: why a variant cannot run here, or None
  (``triton_unavailable(device)``: the same for the Triton kernels, shared with ``op_cases``;
  ``dtype_unavailable(dtype, device)``: for rows in a half dtype).
- ``module_case`` / ``step_case`` / ``make_case``: a ``Case`` whose ``fn()`` runs one call on the next
  input rotation, in the pool's dtype: an fp32 pool runs as the published scripts do, a bf16 or fp16
  pool under ``torch.autocast`` in that dtype (``rsg-fast bench --amp``), as ``rsg-fast train --amp``
  does (fp16 steps with a ``torch.amp.GradScaler``).
- ``DTYPES`` (the bench's dtype names), ``dtype_name`` and ``autocast_to``: shared with ``op_cases``;
  ``AMP_DTYPES``: the ``--amp`` names.

Every module variant starts from the same parameters (``ReferenceRSG``'s initialisation, loaded
into ``RSG``), with the library's default options.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsg_fast.bench.inputs import InputPool, default_rotations
from rsg_fast.bench.settings import (
    PHASES, PUBLIC_SHAPES, SETTINGS, Setting, label_counts, pair_count, phase_epoch,
)
from rsg_fast import optim
from rsg_fast.cli_args import lacks_bf16
from rsg_fast.compiling import compile_with_rsg

__all__ = [
    "SETTINGS", "PUBLIC_SHAPES", "PHASES", "Setting", "label_counts", "pair_count", "phase_epoch",
    "InputPool", "default_rotations", "DTYPES", "AMP_DTYPES", "dtype_name", "autocast_to",
    "MODULE_VARIANTS", "STEP_VARIANTS", "ALL_VARIANTS", "COMPILED_VARIANTS", "HOST_TARGET_VARIANTS",
    "GROUP_OF", "LAMBDA_CESC", "LAMBDA_MV", "Case", "triton_unavailable", "variant_unavailable", "dtype_unavailable",
    "rsg_args", "build_module",
    "module_bytes", "module_case", "build_step_model", "step_case", "make_case", "build",
]

MODULE_VARIANTS = ("reference", "rsg-torch", "rsg-triton", "rsg-host", "reference-compiled", "rsg-compiled")
STEP_VARIANTS = ("resnet32", "resnet32+reference", "resnet32+rsg", "resnet32+rsg-host", "resnet32-compiled",
                 "resnet32+rsg-compiled")
HOST_TARGET_VARIANTS = ("rsg-host", "resnet32+rsg-host")   # RSG called with host_target
ALL_VARIANTS = MODULE_VARIANTS + STEP_VARIANTS
COMPILED_VARIANTS = tuple(v for v in ALL_VARIANTS if v.endswith("-compiled"))
GROUP_OF = {**{v: "module" for v in MODULE_VARIANTS}, **{v: "step" for v in STEP_VARIANTS}}
# The loss weights of the published CIFAR scripts: L_cls + 0.1 * cesc + 0.01 * mv.
LAMBDA_CESC, LAMBDA_MV = 0.1, 0.01
# fp16 step cases: at most this many steps before timing for the GradScaler to stop overflowing
SCALER_SETTLE_STEPS = 16
# The dtype names of bench rows (``Case.dtype``, --dtypes, --amp).
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# --amp (and benchmarks/' RSG_BENCH_AMP) names -> the dtype of the module and step rows
AMP_DTYPES = {"off": "fp32", "bf16": "bf16", "fp16": "fp16"}


def dtype_name(dtype: torch.dtype) -> str:
    """The bench's name of ``dtype`` ("fp32", "bf16" or "fp16")."""
    return next(name for name, d in DTYPES.items() if d == dtype)


def autocast_to(device: torch.device, dtype: torch.dtype):
    """``torch.autocast`` in ``dtype`` for a half dtype; for fp32 a context that changes nothing."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


@dataclass
class Case:
    """One timed unit of work: ``fn()`` runs it once on the next rotation of the inputs."""

    group: str              # "module", "step" or "op"
    variant: str
    phase: str              # "contrastive", "generation" or "-" (phase-independent)
    fn: Callable[[], None]
    bytes_moved: int | None = None      # compulsory bytes of one call, for GB/s (None: not meaningful)
    meta: dict = field(default_factory=dict)
    # Frees what a call leaves alive until the next one (gradients): memory is measured from there,
    # so a call's peak includes the gradients it allocates.
    reset: Callable[[], None] = lambda: None
    dtype: str = "fp32"     # the timed tensors' dtype ("bf16" / "fp16" module and step rows: under autocast)
    mode: str = "eager"     # "eager", or "cuda-graph" (replayed from a captured CUDA graph)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.variant, self.phase, self.dtype, self.mode)

    @property
    def compiled(self) -> bool:
        return self.variant.endswith("-compiled")


# ----------------------------------------------------------------------------- availability

def triton_unavailable(device) -> str | None:
    """Why the Triton kernels cannot be timed on ``device`` (a sentence), or None when they can."""
    if torch.device(device).type != "cuda":
        return "needs CUDA (Triton kernels; the CPU interpreter is not a timing)"
    from rsg_fast.backend import triton_available
    return None if triton_available() else "triton does not import"


def variant_unavailable(variant: str, device, *, with_compile: bool, setting: Setting | None = None) -> str | None:
    """Why ``variant`` cannot run here (a sentence), or None when it can."""
    if variant not in ALL_VARIANTS:
        return f"unknown variant {variant!r}"
    if variant == "rsg-triton" and (why := triton_unavailable(device)):
        return why
    if variant in HOST_TARGET_VARIANTS and torch.device(device).type == "cpu":
        return "host_target removes a device-to-host synchronisation; on the CPU there is none (same work as rsg-torch)"
    if variant in COMPILED_VARIANTS and not with_compile:
        return "torch.compile is off on CPU by default (bench: --compile; benchmarks/: RSG_BENCH_COMPILE=1)"
    if variant in STEP_VARIANTS and setting is not None and not setting.has_step:
        return f"the ResNet-32 step needs CIFAR maps 32x16x16 at stage 2, not {setting.describe()['maps']}"
    return None


def dtype_unavailable(dtype: str, device) -> str | None:
    """Why rows cannot run in ``dtype`` (a bench dtype name) on ``device``, or None."""
    if dtype == "bf16" and lacks_bf16(device):
        # torch would emulate bf16 there: a timing of the emulation, not of what users run
        return "this GPU has no bf16 arithmetic (Ampere or later has); fp16 is its half precision"
    return None


# ----------------------------------------------------------------------------- module cases

def rsg_args(setting: Setting) -> tuple:
    """The published constructor's positional arguments for ``setting``."""
    return (setting.centers, list(setting.maps), setting.num_classes, setting.dim, list(setting.head_classes),
            setting.transfer_strength, setting.epoch_thresh)


def build_module(variant: str, setting: Setting, device, seed: int = 0, compile_backend: str = "inductor") -> nn.Module:
    """The RSG module of a module variant (compiled variants: the ``torch.compile`` wrapper), with the
    same initial parameters for every variant."""
    from rsg_fast import RSG, ReferenceRSG

    torch.manual_seed(seed)
    reference = ReferenceRSG(*rsg_args(setting))
    if variant in ("reference", "reference-compiled"):
        module = reference
    elif variant in ("rsg-torch", "rsg-triton", "rsg-host", "rsg-compiled"):
        backend = {"rsg-torch": "torch", "rsg-triton": "triton", "rsg-host": "auto", "rsg-compiled": "auto"}[variant]
        module = RSG(*rsg_args(setting), backend=backend)
        module.load_state_dict(reference.state_dict())
    else:
        raise ValueError(f"not a module variant: {variant!r}")
    module = module.to(device).train()
    # compiled during the first calls (the bench's warm-up): a failure there becomes the row's error
    return compile_with_rsg(module, compile_backend) if variant.endswith("-compiled") else module


def module_bytes(setting: Setting, phase: str, element_size: int = 4) -> int:
    """Compulsory bytes of one RSG forward+backward (a lower bound used for GB/s): forward reads the
    maps once and writes the new samples; backward reads the output gradient and writes the maps'
    gradient. Before the threshold the output is the input itself (no copy, the gradient passes
    through), so only the read of the maps is compulsory. ``element_size``: bytes of one element of
    the maps (4 in fp32, 2 in bf16 / fp16)."""
    s = setting
    plane = s.channels * s.height * s.width * element_size
    if phase == "contrastive":
        return s.batch * plane
    m = pair_count(s)
    return (s.batch + 2 * m) * plane + (s.batch + m) * plane + s.batch * plane


def _weights(cache: dict, key: str, value: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor holding ``value`` (the loss weight), made once per dtype and device."""
    k = (key, like.dtype, like.device)
    if k not in cache:
        cache[k] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return cache[k]


def module_case(variant: str, setting: Setting, phase: str, pool: InputPool, seed: int = 0,
                module: nn.Module | None = None, compile_backend: str = "inductor") -> Case:
    """One forward+backward of RSG: maps out with a fixed upstream gradient, plus 0.1 * loss_cesc and
    0.01 * loss_mv (the published loss weights), parameter gradients cleared each call. ``module``
    (from ``build_module``) may be shared by the two phases of a variant. With a bf16 or fp16 pool
    the maps are in that dtype, as a convolution under autocast hands them over, and the forward runs
    under autocast; the backward runs outside it, as in a training step."""
    module = module if module is not None else build_module(variant, setting, pool.device, seed, compile_backend)
    epoch = phase_epoch(setting, phase)
    heads = list(setting.head_classes)
    weights: dict = {}
    host = variant in HOST_TARGET_VARIANTS

    def fn() -> None:
        x, y = pool.next()
        module.zero_grad(set_to_none=True)
        extra = {"host_target": pool.host_labels_of(y)} if host else {}
        with autocast_to(pool.device, pool.dtype):
            out, cesc, mv, _ = module(x, heads, y, epoch, **extra)
        roots, grads = [out], [pool.grad_like(out)]
        if cesc.requires_grad:
            roots.append(cesc)
            grads.append(_weights(weights, "cesc", LAMBDA_CESC, cesc))
        if mv.requires_grad:
            roots.append(mv)
            grads.append(_weights(weights, "mv", LAMBDA_MV, mv))
        torch.autograd.backward(roots, grads)

    def reset() -> None:
        module.zero_grad(set_to_none=True)
        pool.clear_grads()

    meta = {"pairs": pair_count(setting) if phase == "generation" else 0,
            "mv_loss": getattr(module, "mv_loss", None)}   # a torch.compile wrapper passes attributes through
    return Case("module", variant, phase, fn, module_bytes(setting, phase, pool.dtype.itemsize), meta, reset,
                dtype=dtype_name(pool.dtype))


# ----------------------------------------------------------------------------- training-step cases

def build_step_model(variant: str, setting: Setting, device, seed: int = 0, compile_backend: str = "inductor",
                     dtype: str = "fp32"):
    """(model, optimiser) of a step variant: CIFAR ResNet-32 for ``setting.num_classes``, plain, with
    ``ReferenceRSG`` or with ``RSG`` after stage 2 (the same RSG parameters in both), compiled for the
    ``-compiled`` variants (the optimiser step stays eager). SGD with momentum 0.9 and weight decay
    2e-4, as in the paper; for ``dtype`` fp16 (loss scaling) the trainer's fused SGD (``rsg_fast.optim``)."""
    from rsg_fast import ReferenceRSG
    from rsg_fast.models import resnet32

    if variant not in STEP_VARIANTS:
        raise ValueError(f"not a training-step variant: {variant!r}")
    torch.manual_seed(seed)
    base = variant.removesuffix("-compiled")
    if base == "resnet32":
        model = resnet32(setting.num_classes)
    else:
        options = dict(n_center=setting.centers, contrastive_module_dim=setting.dim,
                       transfer_strength=setting.transfer_strength, epoch_thresh=setting.epoch_thresh)
        if base in ("resnet32+rsg", "resnet32+rsg-host"):
            options["backend"] = "auto"
        model = resnet32(setting.num_classes, rsg=options, head_classes=list(setting.head_classes))
        if base == "resnet32+reference":
            fast = model.rsg
            reference = ReferenceRSG(setting.centers, list(fast.feature_maps_shape), setting.num_classes,
                                     setting.dim, list(setting.head_classes), setting.transfer_strength,
                                     setting.epoch_thresh)
            reference.load_state_dict(fast.state_dict())
            model.rsg = reference
    model = model.to(device).train()
    optimiser = optim.sgd(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4, loss_scaling=dtype == "fp16")
    return (compile_with_rsg(model, compile_backend) if variant.endswith("-compiled") else model), optimiser


def step_case(variant: str, setting: Setting, phase: str, pool: InputPool, seed: int = 0,
              model=None, compile_backend: str = "inductor") -> Case:
    """One training step: forward, L_cls + 0.1 cesc + 0.01 mv, backward, optimiser step. ``model``
    (a (model, optimiser) pair from ``build_step_model``) may be shared by the two phases. With a
    bf16 or fp16 pool the forward and the loss run under autocast in that dtype (the images stay
    fp32, as a data loader gives them), as in ``rsg-fast train --amp``: fp16 scales the loss with a
    ``torch.amp.GradScaler``, whose overflow check the fused SGD step reads on the device."""
    model, opt = model if model is not None else build_step_model(variant, setting, pool.device, seed,
                                                                   compile_backend, dtype_name(pool.dtype))
    epoch = phase_epoch(setting, phase) if phase in PHASES else None
    plain = variant.removesuffix("-compiled") == "resnet32"
    host = variant in HOST_TARGET_VARIANTS
    # disabled (outside fp16) it passes the loss and the step through unchanged, as in the trainer
    scaler = torch.amp.GradScaler(pool.device.type, enabled=pool.dtype == torch.float16)

    def fn() -> None:
        images, y = pool.next_images()
        opt.zero_grad(set_to_none=True)
        with autocast_to(pool.device, pool.dtype):
            if plain:
                loss = F.cross_entropy(model(images), y)
            else:
                extra = {"host_target": pool.host_labels_of(y)} if host else {}
                logits, target_out, cesc, mv = model(images, y, epoch, **extra)
                loss = F.cross_entropy(logits, target_out) + LAMBDA_CESC * cesc.mean() + LAMBDA_MV * mv.mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    # fp16: the scaler starts high and halves its scale at each step whose gradients overflow, skipping
    # the update; steps until it holds, so the timed ones (and the memory probe's) update the weights
    for _ in range(SCALER_SETTLE_STEPS if scaler.is_enabled() else 0):
        scale = scaler.get_scale()
        fn()
        if scaler.get_scale() >= scale:
            break
    return Case("step", variant, phase, fn, None, reset=lambda: opt.zero_grad(set_to_none=True),
                dtype=dtype_name(pool.dtype))


def make_case(group: str, variant: str, phase: str, setting: Setting, pool: InputPool, *, seed: int = 0,
              compile_backend: str = "inductor", built=None) -> Case:
    """The module or step case of ``variant`` (``built``: a module / (model, optimiser) to reuse)."""
    if group == "module":
        return module_case(variant, setting, phase, pool, seed, module=built, compile_backend=compile_backend)
    if group == "step":
        return step_case(variant, setting, phase, pool, seed, model=built, compile_backend=compile_backend)
    raise ValueError(f"group must be 'module' or 'step', got {group!r}")


def build(group: str, variant: str, setting: Setting, device, *, seed: int = 0, compile_backend: str = "inductor",
          dtype: str = "fp32"):
    """What ``make_case`` may reuse across phases for ``dtype`` (a ``DTYPES`` name): the module, or the
    (model, optimiser) pair."""
    if group == "module":
        return build_module(variant, setting, device, seed, compile_backend)
    return build_step_model(variant, setting, device, seed, compile_backend, dtype)
