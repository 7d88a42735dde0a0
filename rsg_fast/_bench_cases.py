"""Settings, inputs and timed cases shared by ``rsg-fast bench`` and ``benchmarks/`` (pytest-benchmark).

Nothing here times anything: it only builds what is timed, so the command line and the pytest
benchmarks measure exactly the same work.

- ``SETTINGS``: the paper's shapes (CIFAR-10/100 after stage 2 of ResNet-32, ImageNet-LT and
  iNaturalist 2018 after stage 3 of ResNet-50) plus a hidden ``tiny`` one for tests.
- ``InputPool``: rotated inputs (fresh feature maps, images and a permutation of one fixed
  long-tailed label multiset per rotation, so every rotation pairs the same number of samples).
- ``module_case`` / ``step_case`` / ``op_case``: a ``Case`` whose ``fn()`` runs one forward+backward
  (or one training step) on the next rotation.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsg_fast.reference import segment_plan

PHASES = ("contrastive", "generation")
MODULE_VARIANTS = ("reference", "rsg-torch", "rsg-triton", "reference-compiled")
STEP_VARIANTS = ("resnet32", "resnet32+reference", "resnet32+rsg")
ALL_VARIANTS = MODULE_VARIANTS + STEP_VARIANTS
OPS = ("center_distance", "displacement", "mv_terms", "contrastive_head")
OP_IMPLS = ("reference", "torch", "triton")
# The loss weights of the published CIFAR scripts: L_cls + 0.1 * cesc + 0.01 * mv.
LAMBDA_CESC, LAMBDA_MV = 0.1, 0.01


@dataclass(frozen=True)
class Setting:
    """One benchmark shape: RSG's inputs (N x C x H x W maps, labels) and its constructor arguments."""

    name: str
    batch: int
    channels: int
    height: int
    width: int
    centers: int            # K, n_center
    dim: int                # D, contrastive_module_dim
    num_classes: int
    head_classes: tuple[int, ...]
    rho: float              # imbalance ratio of the label distribution (largest / smallest class)
    epoch_thresh: int
    transfer_strength: float = 1.0
    image_size: int | None = 32   # CIFAR images for the ResNet-32 step; None: no step rows
    where: str = ""          # where RSG sits, for the report

    @property
    def maps(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def has_step(self) -> bool:
        """The ResNet-32 training step exists only where RSG's maps are ResNet-32's stage-2 maps."""
        return self.image_size == 32 and self.maps == (32, 16, 16)

    def describe(self) -> dict:
        d = dataclasses.asdict(self)
        d["head_classes"] = _compact_ids(self.head_classes)
        d["maps"] = "x".join(str(s) for s in self.maps)
        return d

    def override(self, *, batch=None, maps=None, centers=None, dim=None, num_classes=None) -> Setting:
        """A copy with some sizes changed (name gets a suffix); head classes are re-derived as the
        first 20 % of the classes when ``num_classes`` changes."""
        changes, suffix = {}, []
        if batch is not None and batch != self.batch:
            changes["batch"] = batch
            suffix.append(f"n{batch}")
        if maps is not None and tuple(maps) != self.maps:
            changes.update(channels=maps[0], height=maps[1], width=maps[2])
            suffix.append("x".join(str(s) for s in maps))
        if centers is not None and centers != self.centers:
            changes["centers"] = centers
            suffix.append(f"k{centers}")
        if dim is not None and dim != self.dim:
            changes["dim"] = dim
            suffix.append(f"d{dim}")
        if num_classes is not None and num_classes != self.num_classes:
            changes["num_classes"] = num_classes
            changes["head_classes"] = tuple(range(max(1, int(num_classes * 0.2))))
            suffix.append(f"c{num_classes}")
        if not changes:
            return self
        return dataclasses.replace(self, name="-".join([self.name, *suffix]), **changes)


def _compact_ids(ids: Sequence[int]) -> str:
    ids = list(ids)
    if ids and ids == list(range(ids[0], ids[0] + len(ids))) and len(ids) > 3:
        return f"{ids[0]}..{ids[-1]}"
    return ",".join(str(i) for i in ids)


def _heads(num_classes: int, alpha: float = 0.2) -> tuple[int, ...]:
    """The paper's head classes: the first int(num_classes * alpha) ids (class 0 most frequent)."""
    return tuple(range(int(num_classes * alpha)))


SETTINGS: dict[str, Setting] = {
    # The paper's CIFAR setting: ResNet-32, RSG after stage 2, batch 128, K = 15, D = 256.
    "cifar10": Setting("cifar10", 128, 32, 16, 16, 15, 256, 10, _heads(10), 100.0, 159,
                       where="ResNet-32 stage 2"),
    "cifar100": Setting("cifar100", 128, 32, 16, 16, 15, 256, 100, _heads(100), 100.0, 159,
                        where="ResNet-32 stage 2"),
    # ResNet-50 before its last down-sampling layer (stage 3): 1024 x 14 x 14 maps for 224 x 224 images.
    "imagenet-lt": Setting("imagenet-lt", 256, 1024, 14, 14, 15, 256, 1000, _heads(1000), 256.0, 79,
                           image_size=None, where="ResNet-50 stage 3"),
    "inat2018": Setting("inat2018", 256, 1024, 14, 14, 15, 256, 8142, _heads(8142), 500.0, 139,
                        image_size=None, where="ResNet-50 stage 3"),
    # For tests only (hidden from --help): CIFAR maps, a tiny batch and a tiny contrastive module.
    "tiny": Setting("tiny", 8, 32, 16, 16, 3, 16, 10, _heads(10), 10.0, 1, where="ResNet-32 stage 2"),
}
PUBLIC_SHAPES = ("cifar10", "cifar100", "imagenet-lt", "inat2018")


def phase_epoch(setting: Setting, phase: str) -> int:
    """Algorithm 1: 'contrastive' while epoch <= epoch_thresh, 'generation' after it."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    return setting.epoch_thresh if phase == "contrastive" else setting.epoch_thresh + 1


def label_counts(setting: Setting) -> list[int]:
    """How many samples of each class one batch holds: the batch split over the classes in
    proportion to the exponential long-tailed profile n_i ~ rho^(-i / (classes - 1)), by largest
    remainders (deterministic), with at least one head and one tail sample so generation runs."""
    C, N = setting.num_classes, setting.batch
    weights = [setting.rho ** (-i / (C - 1)) if C > 1 else 1.0 for i in range(C)]
    total = sum(weights)
    exact = [N * w / total for w in weights]
    counts = [int(e) for e in exact]
    order = sorted(range(C), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:N - sum(counts)]:
        counts[i] += 1
    heads = set(setting.head_classes)
    tail_ids = [i for i in range(C) if i not in heads]
    if heads and tail_ids and N >= 2:
        if sum(counts[i] for i in tail_ids) == 0:          # move one sample to the largest tail class
            donor = max(heads, key=lambda i: counts[i])
            counts[donor] -= 1
            counts[tail_ids[0]] += 1
        if sum(counts[i] for i in heads) == 0:
            donor = max(tail_ids, key=lambda i: counts[i])
            counts[donor] -= 1
            counts[min(heads)] += 1
    return counts


def pair_count(setting: Setting) -> int:
    """New samples per batch in the generation phase (the published pairing rule)."""
    counts = label_counts(setting)
    nh = sum(counts[i] for i in setting.head_classes)
    nt = setting.batch - nh
    if nh == 0 or nt == 0:
        return 0
    segments, pairs = segment_plan(nh, nt, setting.transfer_strength)
    return segments * pairs


def default_rotations(setting: Setting, device: torch.device) -> int:
    """Enough input sets that their feature maps together exceed the caches (>= 64 MiB; 2 to 8)."""
    bytes_one = setting.batch * setting.channels * setting.height * setting.width * 4
    return max(2, min(8, math.ceil((64 << 20) / max(bytes_one, 1))))


class InputPool:
    """Rotated inputs on one device: feature maps (leaf tensors that require grad, as a backbone's
    output would), labels (permutations of one long-tailed multiset) and, lazily, CIFAR images.
    ``next()`` / ``next_images()`` cycle through them, so a timed loop never reuses cache-hot inputs."""

    def __init__(self, setting: Setting, device, rotations: int | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32):
        self.setting, self.device, self.dtype = setting, torch.device(device), dtype
        self.rotations = rotations or default_rotations(setting, self.device)
        gen = torch.Generator().manual_seed(seed)
        counts = label_counts(setting)
        base = torch.repeat_interleave(torch.arange(setting.num_classes), torch.tensor(counts))
        self.labels = [base[torch.randperm(setting.batch, generator=gen)].to(self.device)
                       for _ in range(self.rotations)]
        self._gen_seed = seed
        self._maps: list[torch.Tensor] | None = None
        self._images: list[torch.Tensor] | None = None
        self._grads: dict[tuple, torch.Tensor] = {}
        self._i = itertools.count()
        self._j = itertools.count()

    def _randn(self, shape, salt: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self._gen_seed * 1000 + salt)
        return torch.randn(shape, generator=gen, dtype=self.dtype).to(self.device)

    @property
    def maps(self) -> list[torch.Tensor]:
        if self._maps is None:
            s = self.setting
            self._maps = [self._randn((s.batch, *s.maps), r).requires_grad_(True) for r in range(self.rotations)]
        return self._maps

    @property
    def images(self) -> list[torch.Tensor]:
        if self._images is None:
            n, size = self.setting.batch, self.setting.image_size or 32
            self._images = [self._randn((n, 3, size, size), 500 + r) for r in range(self.rotations)]
        return self._images

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        r = next(self._i) % self.rotations
        x = self.maps[r]
        x.grad = None
        return x, self.labels[r]

    def next_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        r = next(self._j) % self.rotations
        return self.images[r], self.labels[r]

    def grad_like(self, t: torch.Tensor) -> torch.Tensor:
        """A fixed random upstream gradient for an output of ``t``'s shape (made once per shape)."""
        key = (tuple(t.shape), t.dtype)
        g = self._grads.get(key)
        if g is None:
            gen = torch.Generator().manual_seed(self._gen_seed * 1000 + 900 + len(self._grads))
            g = torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)
            self._grads[key] = g
        return g


@dataclass
class Case:
    """One timed unit of work: ``fn()`` runs it once on the next rotation of the inputs."""

    group: str              # "module", "step" or "op"
    variant: str
    phase: str              # "contrastive", "generation" or "-" (phase-independent)
    fn: Callable[[], None]
    bytes_moved: int | None = None      # compulsory bytes (see ``module_bytes``) for GB/s, if meaningful
    meta: dict = field(default_factory=dict)
    # Frees what a call leaves alive until the next one (gradients): memory is measured from there,
    # so a call's peak includes the gradients it allocates.
    reset: Callable[[], None] = lambda: None

    @property
    def key(self) -> tuple[str, str]:
        return (self.variant, self.phase)


# ----------------------------------------------------------------------------- availability

def variant_unavailable(variant: str, device: torch.device, *, compile_reference: bool,
                        setting: Setting | None = None) -> str | None:
    """Why ``variant`` cannot run here (a sentence), or None when it can."""
    device = torch.device(device)
    if variant not in ALL_VARIANTS:
        return f"unknown variant {variant!r}"
    if variant == "rsg-triton":
        if device.type != "cuda":
            return "needs CUDA (Triton kernels; the CPU interpreter is not a timing)"
        from rsg_fast.backend import triton_available
        if not triton_available():
            return "triton does not import"
    if variant == "reference-compiled" and not compile_reference:
        return "torch.compile is off on CPU by default (bench: --compile; benchmarks/: RSG_BENCH_COMPILE=1)"
    if variant in STEP_VARIANTS and setting is not None and not setting.has_step:
        return f"the ResNet-32 step needs CIFAR maps 32x16x16 at stage 2, not {setting.describe()['maps']}"
    return None


# ----------------------------------------------------------------------------- module cases

def _rsg_classes():
    try:
        from rsg_fast import RSG
    except ImportError:  # the package root may not export it yet
        from rsg_fast.module import RSG
    from rsg_fast.reference import ReferenceRSG
    return RSG, ReferenceRSG


def rsg_args(setting: Setting) -> tuple:
    """The published constructor's positional arguments for ``setting``."""
    return (setting.centers, list(setting.maps), setting.num_classes, setting.dim, list(setting.head_classes),
            setting.transfer_strength, setting.epoch_thresh)


def build_module(variant: str, setting: Setting, device, seed: int = 0) -> nn.Module:
    """The RSG module of a module variant, with the same initial parameters for every variant."""
    RSG, ReferenceRSG = _rsg_classes()
    torch.manual_seed(seed)
    reference = ReferenceRSG(*rsg_args(setting))
    if variant in ("reference", "reference-compiled"):
        module = reference
    elif variant in ("rsg-torch", "rsg-triton"):
        module = RSG(*rsg_args(setting), backend=variant.split("-", 1)[1])
        module.load_state_dict(reference.state_dict())
    else:
        raise ValueError(f"not a module variant: {variant!r}")
    return module.to(device).train()


def module_bytes(setting: Setting, phase: str, dtype_size: int = 4) -> int:
    """Compulsory bytes of one RSG forward+backward (a lower bound used for GB/s): forward reads the
    maps once and writes the new samples; backward reads the output gradient and writes the maps'
    gradient. Before the threshold the output is the input itself (no copy, the gradient passes
    through), so only the read of the maps is compulsory."""
    s = setting
    plane = s.channels * s.height * s.width * dtype_size
    if phase == "contrastive":
        return s.batch * plane
    m = pair_count(s)
    return (s.batch + 2 * m) * plane + (s.batch + m) * plane + s.batch * plane


def _scalar(value: float, like: torch.Tensor, cache: dict) -> torch.Tensor:
    key = (like.dtype, like.device)
    t = cache.get(key)
    if t is None:
        t = cache[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return t


def module_case(variant: str, setting: Setting, phase: str, pool: InputPool, seed: int = 0,
                module: nn.Module | None = None) -> Case:
    """One forward+backward of RSG: maps out with a fixed upstream gradient, plus 0.1 * loss_cesc and
    0.01 * loss_mv (the published loss weights), parameter gradients cleared each call."""
    module = module if module is not None else build_module(variant, setting, pool.device, seed)
    runner = module
    if variant == "reference-compiled":
        runner = torch.compile(module)
    epoch = phase_epoch(setting, phase)
    heads = list(setting.head_classes)
    cesc_w, mv_w = {}, {}

    def fn() -> None:
        x, y = pool.next()
        module.zero_grad(set_to_none=True)
        out, cesc, mv, _ = runner(x, heads, y, epoch)
        roots, grads = [out], [pool.grad_like(out)]
        if cesc.requires_grad:
            roots.append(cesc)
            grads.append(_scalar(LAMBDA_CESC, cesc, cesc_w))
        if mv.requires_grad:
            roots.append(mv)
            grads.append(_scalar(LAMBDA_MV, mv, mv_w))
        torch.autograd.backward(roots, grads)

    def reset() -> None:
        module.zero_grad(set_to_none=True)
        for x in pool.maps:
            x.grad = None

    return Case("module", variant, phase, fn, module_bytes(setting, phase),
                {"pairs": pair_count(setting) if phase == "generation" else 0, "module": module}, reset)


# ----------------------------------------------------------------------------- training-step cases

def _resnet32():
    try:
        from rsg_fast.models import resnet32
    except ImportError:  # the models package may not export it at its root
        from rsg_fast.models.cifar_resnet import resnet32
    return resnet32


def build_step_model(variant: str, setting: Setting, device, seed: int = 0) -> nn.Module:
    """ResNet-32 for ``setting.num_classes``: plain, with ``ReferenceRSG`` or with ``RSG`` after stage 2
    (the RSG parameters are the same in both RSG variants)."""
    resnet32 = _resnet32()
    torch.manual_seed(seed)
    if variant == "resnet32":
        model = resnet32(setting.num_classes)
    elif variant in ("resnet32+reference", "resnet32+rsg"):
        options = dict(n_center=setting.centers, contrastive_module_dim=setting.dim,
                       transfer_strength=setting.transfer_strength, epoch_thresh=setting.epoch_thresh)
        if variant == "resnet32+rsg":
            options["backend"] = "auto"
        model = resnet32(setting.num_classes, rsg=options, head_classes=list(setting.head_classes))
        if variant == "resnet32+reference":
            _, ReferenceRSG = _rsg_classes()
            fast = model.rsg
            reference = ReferenceRSG(setting.centers, list(fast.feature_maps_shape), setting.num_classes,
                                     setting.dim, list(setting.head_classes), setting.transfer_strength,
                                     setting.epoch_thresh)
            reference.load_state_dict(fast.state_dict())
            model.rsg = reference
    else:
        raise ValueError(f"not a training-step variant: {variant!r}")
    return model.to(device).train()


def step_case(variant: str, setting: Setting, phase: str, pool: InputPool, seed: int = 0) -> Case:
    """One SGD training step of CIFAR ResNet-32 (momentum 0.9, weight decay 2e-4 as in the paper):
    forward, L_cls + 0.1 cesc + 0.01 mv, backward, optimiser step."""
    model = build_step_model(variant, setting, pool.device, seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    epoch = phase_epoch(setting, phase) if phase in PHASES else None
    plain = variant == "resnet32"

    def fn() -> None:
        images, y = pool.next_images()
        opt.zero_grad(set_to_none=True)
        if plain:
            loss = F.cross_entropy(model(images), y)
        else:
            logits, target_out, cesc, mv = model(images, y, epoch)
            loss = F.cross_entropy(logits, target_out) + LAMBDA_CESC * cesc.mean() + LAMBDA_MV * mv.mean()
        loss.backward()
        opt.step()

    return Case("step", variant, phase, fn, None, {"model": model}, lambda: opt.zero_grad(set_to_none=True))


# ----------------------------------------------------------------------------- op cases (benchmarks/)

def op_case(op: str, impl: str, setting: Setting, phase: str, pool: InputPool, seed: int = 0) -> Case:
    """One forward+backward of one fused op (``impl`` "torch" / "triton" through ``rsg_fast.ops``, or
    "reference": the plain expression ``ReferenceRSG`` uses) on the setting's shapes, with the
    inputs requiring grad exactly where the module's do. ``phase`` matters for contrastive_head only
    (trained before the threshold, frozen with gradients to its input after)."""
    from rsg_fast import ops
    from rsg_fast.ops import naive

    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if impl not in OP_IMPLS:
        raise ValueError(f"impl must be one of {OP_IMPLS}, got {impl!r}")
    s, device = setting, pool.device
    gen = torch.Generator().manual_seed(seed + 17)

    def randn(*shape, grad=False):
        return torch.randn(shape, generator=gen).to(device).requires_grad_(grad)

    N, (C, H, W), K = s.batch, s.maps, s.centers
    M = max(1, pair_count(s))
    plane = C * H * W * 4
    if op == "center_distance":
        centers = randn(N, K, C, grad=True)
        g_dist = randn(N, K)

        def fn():
            x, _ = pool.next()
            x = x.detach()
            centers.grad = None
            if impl == "reference":
                _, dist = naive.center_distance(x, centers)
            else:
                _, dist = ops.center_distance(x, centers, backend=impl)
            dist.backward(g_dist)
        return Case("op", f"{op}:{impl}", phase, fn, N * plane + 2 * N * K * C * 4, {"M": M})

    idx_gen = torch.Generator().manual_seed(seed + 23)
    index = torch.randint(0, N, (2 * M,), generator=idx_gen).to(device)
    if op == "displacement":
        rows = randn(2 * M, C)

        def fn():
            x, _ = pool.next()
            x = x.detach()
            if impl == "reference":
                naive.displacement(x, index, rows)
            else:
                ops.displacement(x, index, rows, backend=impl)
        return Case("op", f"{op}:{impl}", phase, fn, 2 * 2 * M * plane, {"M": M})

    if op == "mv_terms":
        tail_index = index[M:]
        v, u = randn(M, C, H, W), randn(M, C, H, W)
        tv = randn(M, C, H, W, grad=True)
        g_new = randn(M, C, H, W)
        g_terms = torch.tensor([LAMBDA_MV / M, LAMBDA_MV / M], device=device)

        def fn():
            x, _ = pool.next()
            x = x.detach()
            tv.grad = None
            if impl == "reference":
                new, terms = naive.mv_terms(tv, v, u, x, tail_index, "location")
            else:
                new, terms = ops.mv_terms(tv, v, u, x, tail_index, "location", backend=impl)
            torch.autograd.backward([new, terms], [g_new, g_terms])
        # reads tv, v, u, x[tail], writes new; backward reads g_new, tv, v, u, writes grad tv
        return Case("op", f"{op}:{impl}", phase, fn, 9 * M * plane, {"M": M})

    # contrastive_head: Eq. 2 on (first, second) pairs; the reference materialises the 3x3 conv.
    if impl == "triton":
        raise ValueError("contrastive_head has no Triton path (it is ATen convolutions and a matmul)")
    RSG, ReferenceRSG = _rsg_classes()
    torch.manual_seed(seed)
    module = (ReferenceRSG if impl == "reference" else RSG)(*rsg_args(s)).to(device)
    frozen = phase == "generation"
    P = M if frozen else N // 2
    first = randn(P, C, H, W)
    second = randn(P, C, H, W, grad=frozen)
    labels = torch.zeros(P, dtype=torch.long, device=device)

    def fn():
        module.zero_grad(set_to_none=True)
        second.grad = None
        if impl == "reference":
            logits = module._contrastive(torch.cat([first, second], dim=1), frozen=frozen)
        else:
            logits = module._contrastive_logits(first, second, frozen=frozen)
        F.cross_entropy(logits, labels).backward()
    return Case("op", f"{op}:{impl}", phase, fn, 2 * P * plane, {"P": P})
