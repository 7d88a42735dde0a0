"""``RSG``: the fast, drop-in Rare-class Sample Generator.

Same constructor, forward, return values and state_dict keys as the published module (and as
``ReferenceRSG``, the oracle it is tested against). ``forward`` is the paper's data flow, one fused
op (``rsg_fast.ops``) per step:

- Eq. 1 + Eq. 5 (first term), ``ops.center_assign``: one pass over x gives each sample's centre
  weights gamma, its K squared distances and its closest centre; never the N x K x C x H x W tensor.
- Algorithm 1's bookkeeping, ``ops.batch_plan`` / ``ops.pair_indices``: the head/tail split, the
  published segment rule and every (head, tail) pair of every segment, on the device. The only host
  synchronisation of a forward is the number of new samples (with the label range, fetched together);
  none when the caller passes the labels it still holds on the CPU as ``host_target``.
- Eq. 3, ``ops.displacement``: the frequent samples' displacements from their closest centres.
- Eq. 4 + Eq. 6, ``ops.mv_terms``: the new samples and the norm and cosine sums, in one pass; the rare
  samples' displacements are rebuilt inside the op, never stored.
- Eq. 2: average pooling after the contrastive module's 3x3 convolution is linear, so
  pool(conv3x3(a)) = sum over the 9 taps of W_tap @ S_tap(a) + b, S_tap the mean of the window that tap
  reads (``ops.relu_tap_window_means``): about H*W times fewer multiply-adds, the same numbers up to rounding.
- The generation-phase freeze of the contrastive classifier uses detached parameters instead of
  flipping ``requires_grad`` (which breaks DistributedDataParallel and optimiser state).
- Eq. 7, L_total = L_cls + lambda1 L_CESC + lambda2 L_MV, is the caller's: ``forward`` returns L_CESC and
  L_MV (``rsg_fast.train`` adds them with the paper's lambda1 = 0.1, lambda2 = 0.01).

Under ``torch.compile`` (with ``torch._dynamo.config.capture_scalar_outputs = True``) the value
checks become asynchronous device asserts and the number of new samples a data-dependent size, so one
graph serves every batch of a phase.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rsg_fast import ops
from rsg_fast._validation import (HOST_TARGET_MESSAGE, NON_FINITE_MESSAGE, check_forward_arguments,
                                  check_host_target, raise_for_labels, raise_if_labels_differ)
from rsg_fast.backend import check_backend, resolve_backend
from rsg_fast.parameters import RSGParameters

FUNCTORCH_MESSAGE = (
    "RSG does not support torch.func transforms (grad, vmap, jacrev, ...): its fused ops are torch.library "
    "custom ops whose autograd formulas PyTorch cannot transform. Use torch.autograd.grad (create_graph=True "
    "gives higher-order gradients, e.g. for a gradient penalty), or ReferenceRSG inside torch.func.")


class RSG(RSGParameters):
    """Rare-class Sample Generator (Wang et al., CVPR 2021), published API.

    Args (published, same defaults): n_center (K), feature_maps_shape ([C, H, W]), num_classes,
    contrastive_module_dim (D), head_class_lists, transfer_strength (beta in (0, 1]), epoch_thresh.
    Keyword-only extras:
      mv_loss: "original" (default: the published code's Eq. 6 grouping, which gives the published
        numbers) or "paper" (Eq. 6 per spatial location); see ``rsg_fast.reference``.
      backend: "auto" (Triton on CUDA when available, else PyTorch; None means "auto" too), "torch" or
        "triton"; the environment variable RSG_FAST_BACKEND=torch|triton overrides "auto".
      validate: check label ranges (fetched with the one host synchronisation); False skips that
        check, never the shape, dtype and device checks.
      check_finite: also reject feature maps holding NaN/Inf (with or without ``validate``).

    ``forward(feature_maps, head_class_lists, target, epoch, *, host_target=None)`` returns
    ``(feature_maps, loss_cesc, loss_mv, target)``: after the threshold the batch is extended by the
    new rare-class samples and their labels; the losses are 0-d tensors in fp32 (fp64 for fp64 input).
    ``host_target`` (optional) is ``target`` as a CPU tensor, e.g. the DataLoader's labels before
    they were moved to the GPU: Algorithm 1's counts and pairs are then computed on the CPU and
    copied to the device, so a forward makes no device-to-host synchronisation (``check_finite=True``
    and ``epoch`` or ``head_class_lists`` given as CUDA tensors, or lists of them, still do). With ``validate`` its
    equality with ``target`` is checked too: at once on the CPU, by a device assert on CUDA.
    """

    def __init__(self, n_center=3, feature_maps_shape=[32, 16, 16], num_classes=10,  # noqa: B006 (published API)
                 contrastive_module_dim=128, head_class_lists=[], transfer_strength=1.0,  # noqa: B006
                 epoch_thresh=100, *, mv_loss="original", backend="auto", validate=True, check_finite=False):
        backend = check_backend(backend)     # None means "auto", as in the ops
        super().__init__(n_center, feature_maps_shape, num_classes, contrastive_module_dim, head_class_lists,
                         transfer_strength, epoch_thresh, mv_loss=mv_loss, validate=validate,
                         check_finite=check_finite)
        self.backend = backend
        self._head_tables: dict = {}      # per head list and device (eager mode)

    def forward(self, feature_maps, head_class_lists, target, epoch, *, host_target=None):
        epoch = check_forward_arguments(self, feature_maps, target, epoch)   # a host number
        host_labels = None if host_target is None else check_host_target(host_target, target)
        compiling = torch.compiler.is_compiling()
        if not compiling and torch._C._functorch.peek_interpreter_stack() is not None:
            raise RuntimeError(FUNCTORCH_MESSAGE)
        heads = self._head_classes(head_class_lists)
        backend = resolve_backend(self.backend, feature_maps.device)
        generation = self._phase_is_generation(epoch)
        x = feature_maps.detach()                  # RSG's losses do not move the backbone's features
        N = x.shape[0]
        # int64 and contiguous: a uint8 index would act as a mask, and the kernels read labels as a flat array
        labels = target.to(torch.int64).contiguous()

        # Algorithm 1's bookkeeping and the label range: on the device, then the one host sync; or,
        # given host_target, on the CPU from those labels, with no sync at all.
        plan_labels, plan_backend = (labels, backend) if host_labels is None else (host_labels, "torch")
        key = (heads, plan_labels.device)
        head_table = None if compiling else self._head_tables.get(key)
        new_table = head_table is None
        if new_table:
            head_table = self._new_head_table(heads, plan_labels.device)
        if compiling:   # the repeat check of check_head_classes, which compiled code cannot make cheaply
            torch._assert_async(head_table.sum() == len(heads), "head_class_lists repeats class ids")
        check_labels = self.validate and N > 0
        counts = is_head = None
        if generation or check_labels:
            is_head, counts = ops.batch_plan(plan_labels, head_table, self.transfer_strength, backend=plan_backend)
        if host_labels is not None and check_labels:
            _check_same_labels(labels, host_labels, compiling)
        n_new = self._check_and_count(x, counts, generation, check_labels, compiling)
        if new_table and not compiling:    # kept only once the call passed its checks
            if len(self._head_tables) >= 16:
                self._head_tables.clear()
            self._head_tables[key] = head_table

        # Eq. 1 and Eq. 5 (first term): centre weights gamma, distances, each sample's closest centre.
        _, _, closest_row, cesc = ops.center_assign(x, labels, self.centers, self.linear, self.bias,
                                                    backend=backend, check_target=False)
        loss_cesc = cesc.mean() if N else cesc.sum()           # sum over samples / N

        if not generation:
            # Eq. 5 (second term): first floor(N/2) samples against the next floor(N/2).
            m = N // 2
            if m > 0:
                same_class = (labels[:m] == labels[m:2 * m]).long()
                pooled, wf, bf = self._contrastive_features(x[:m], x[m:2 * m], frozen=False, backend=backend)
                logits = F.linear(pooled, wf, bf)
                loss_cesc = loss_cesc + F.cross_entropy(_at_least_fp32(logits), same_class)
            return feature_maps, loss_cesc, loss_cesc.new_zeros(()), target
        # no head or no tail in the batch: nothing to generate. A compiled graph cannot test n_new, but
        # it can test N < 2 (and must: with n_new <= N <= 1 the compiler cannot trace the pairs' backward)
        if N < 2 or (not compiling and n_new == 0):
            return feature_maps, loss_cesc, loss_cesc.new_zeros(()), target

        head_index, tail_index = ops.pair_indices(is_head, counts, n_new, backend=plan_backend)
        if host_labels is not None:   # one small host-to-device copy, queued behind the work before it
            head_index, tail_index = _to_device_async(torch.stack([head_index, tail_index]), x.device).unbind(0)
        centre_table = self.centers.detach().flatten(0, 1)                  # (L*K, C), detached
        # Eq. 3: v = x_head - up(closest centre of the head)
        v = ops.displacement(x, head_index, closest_row, centre_table, backend=backend, check_indices=False)
        tv = self._transform(v)                                              # T(x_fd-freq)
        # Eq. 4 (new = x_tail + Tv) and Eq. 6's norm and cosine sums, u = x_tail - up(its centre)
        grouping = "location" if self.mv_loss == "paper" else "rows"
        new_maps, terms = ops.mv_terms(tv, v, x, tail_index, closest_row, centre_table, grouping,
                                       backend=backend, check_indices=False)
        # Eq. 6 (third term): the frozen contrastive module must call (head, Tv) "not the same class".
        pooled, wf, bf = self._contrastive_features(x[head_index], tv, frozen=True, backend=backend)
        # the two-way cross-entropy with label 0, -log softmax(l)[0] = log(1 + exp(l1 - l0)), from the
        # classifier's margin l1 - l0 (one output instead of two; summed over the pairs)
        dw, db = wf[1] - wf[0], bf[1] - bf[0]
        # addmv is one op; compiled code takes mv + add (inductor fuses the add), as addmv's
        # decomposition guards on the data-dependent pair count
        margin = torch.mv(pooled, dw) + db if compiling else torch.addmv(db, pooled, dw)
        loss_contrast = F.softplus(_at_least_fp32(margin)).sum()
        # Published scaling: mean over segments of (CE + terms / pairs) = (sum of CE + terms) / s_new.
        loss_mv = (loss_contrast + terms.sum().to(loss_contrast.dtype)) / torch.sym_max(n_new, 1)

        new_maps = new_maps.to(feature_maps.dtype)
        if _is_channels_last(feature_maps):
            # the batch keeps the maps' format (channels_last networks), in eager and compiled code: the
            # ops write new samples NCHW, so cat along the batch in NHWC order (one copy of each part)
            nhwc = [t.permute(0, 2, 3, 1) for t in (feature_maps, new_maps)]
            out_maps = torch.cat(nhwc, dim=0).permute(0, 3, 1, 2)
        else:
            out_maps = torch.cat([feature_maps, new_maps], dim=0)
        return out_maps, loss_cesc, loss_mv, torch.cat([target, target[tail_index]])

    # -- pieces of forward -------------------------------------------------------------------------
    def _new_head_table(self, heads, device) -> torch.Tensor:
        """A (num_classes,) bool table of the head classes, written on ``device`` one run of consecutive
        classes at a time: no host tensor, so no host-to-device copy, which from a CPU buffer would
        synchronise the stream (compiled code builds it in every call, in one fused kernel; eager mode
        keeps it per head list and device). Not a buffer: it is derived state that load_state_dict,
        to_empty and averaging of buffers would not keep right."""
        table = torch.zeros(self.num_classes, dtype=torch.bool, device=device)
        # under torch.compile the class ids that changed since an earlier call are symbolic, and dynamo
        # cannot sort those (a fullgraph error): the runs of the list as given, which for the usual
        # sorted list are the same few
        for start, stop in _runs(heads if torch.compiler.is_compiling() else sorted(heads)):
            table[start:stop] = True
        return table

    def _check_and_count(self, x, counts, generation: bool, check_labels: bool, compiling: bool):
        """The value checks and the number of new samples, from one device-to-host copy (eager; none
        when ``counts`` came from host_target) or as asynchronous device asserts and a data-dependent
        size (torch.compile)."""
        finite = torch.isfinite(x).all() if self.check_finite else None
        if compiling:
            if check_labels:
                torch._assert_async((counts[2] >= 0) & (counts[3] < self.num_classes),
                                    f"target holds a label outside [0, num_classes={self.num_classes})")
            if finite is not None:
                torch._assert_async(finite, NON_FINITE_MESSAGE)
            if not generation:
                return 0
            n_new = counts[1].item()
            torch._check(n_new >= 0)
            return n_new
        if counts is None and finite is None:
            return 0
        if finite is not None and counts is not None and counts.device == finite.device:
            *values, finite_ok = torch.cat([counts, finite.view(1)]).tolist()      # one copy for both
        else:   # counts on the host (host_target) or absent: each read on its own
            values = counts.tolist() if counts is not None else None
            finite_ok = finite is None or bool(finite)
        if not finite_ok:
            raise ValueError(NON_FINITE_MESSAGE)
        if check_labels:
            raise_for_labels(values[2], values[3], self.num_classes)
        return values[1] if generation else 0

    def _transform(self, v):
        """T, the published 3x3 convolution (padding 1). Eager mode always calls the module (its hooks
        run). Compiled, on 1x1 maps, it is its centre tap's matrix, the only tap that reads data there:
        inductor cannot trace the convolution's backward over a data-dependent number of 1x1 maps."""
        conv = self.vec_transformation_module[0]
        if not torch.compiler.is_compiling():
            return self.vec_transformation_module(v)
        if v.shape[2] == 1 and v.shape[3] == 1:
            return F.linear(v.flatten(1), conv.weight[:, :, 1, 1], conv.bias).view(v.shape)
        if _is_channels_last(conv.weight) or _is_channels_last(v):   # (v is NCHW from displacement today)
            # NCHW in and out: torch's fake convolution predicts NCHW strides for a data-dependent
            # number of maps whatever the layouts (torch 2.14), and the CPU convolution of a
            # channels_last weight (a module moved to channels_last) writes channels_last, which the
            # compiled graph's views of its output then misread
            return F.conv2d(v.contiguous(), conv.weight.contiguous(), conv.bias, conv.stride, conv.padding)
        return self.vec_transformation_module(v)

    def _contrastive_features(self, first, second, frozen: bool, backend: str):
        """Eq. 2 on cat[first, second] along channels, without the 3x3 convolution: returns ave(h)
        (P, D) and the classifier's weight and bias (the logits are ``F.linear(ave(h), weight, bias)``).

        h = conv3x3(relu(conv1x1(cat[first, second]))), with ave(conv3x3(a)) = sum over taps of
        W_tap S_tap + b (``ops.relu_tap_window_means``), so the D x D convolution (most of the
        published module's time) becomes a (P, 9D) x (9D, D) product.
        """
        conv1, conv3, fc = self.contrastive_module[0], self.contrastive_module[2], self.contrastive_fc
        w1, b1, w3, b3, wf, bf = conv1.weight, conv1.bias, conv3.weight, conv3.bias, fc.weight, fc.bias
        if frozen:  # generation phase: the classifier does not train, gradients still reach `second`
            w1, b1, w3, b3, wf, bf = (p.detach() for p in (w1, b1, w3, b3, wf, bf))
        P, C, H, W = first.shape
        D = w1.shape[0]
        # the 1x1 convolution as a matrix product on channels-last rows of cat[first, second], in
        # autocast's dtype where it is on (as the convolution would run), else the parameters'; autocast
        # leaves float64 alone, so a float64 module stays float64 under it
        device_type = first.device.type
        autocast = torch.is_autocast_enabled(device_type) and w1.dtype != torch.float64
        dtype = torch.get_autocast_dtype(device_type) if autocast else w1.dtype
        w1 = w1.flatten(1).t().to(dtype)                                               # (2C, D)
        # explicit sizes, no -1: P is data-dependent under torch.compile and may be 0
        if frozen:
            # Only `second` (T(v)) takes a gradient. Each half is its own batched product on a (P, H*W, C)
            # view of the maps (no copy, NCHW or channels_last), so the backward never forms the
            # gradient of the detached half, and the weight, detached, is broadcast over P for free.
            first_rows, second_rows = (t.permute(0, 2, 3, 1).flatten(1, 2).to(dtype) for t in (first, second))
            pre = torch.baddbmm(b1.to(dtype), first_rows, w1[:C].expand(P, C, D))
            pre = torch.baddbmm(pre, second_rows, w1[C:].expand(P, C, D))
        else:   # the weight trains: one product over both halves (a batched one would sum its gradient over P)
            rows = torch.cat([first.permute(0, 2, 3, 1), second.permute(0, 2, 3, 1)], dim=3).to(dtype)
            pre = torch.addmm(b1.to(dtype), rows.reshape(P * H * W, 2 * C), w1)
        taps = ops.relu_tap_window_means(pre.view(P, H, W, D), backend=backend)       # (P, D, 3, 3)
        # sum over d, i, j of S[p, d, i, j] W3[e, d, i, j]: one product with the weight as stored
        pooled = torch.addmm(b3.to(taps.dtype), taps.flatten(1), w3.flatten(1).t().to(taps.dtype))
        return pooled, wf.to(pooled.dtype), bf.to(pooled.dtype)


def _check_same_labels(labels: torch.Tensor, host_labels: torch.Tensor, compiling: bool) -> None:
    """``host_target`` must equal ``target``: at once where both are on the CPU, otherwise an
    asynchronous device assert (reading the device here would bring back the sync it avoids)."""
    if labels.device.type == "cpu" and not compiling:
        raise_if_labels_differ(labels, host_labels)
        return
    torch._assert_async((labels == _to_device_async(host_labels, labels.device)).all(), HOST_TARGET_MESSAGE)


def _runs(values: list[int]) -> list[tuple[int, int]]:
    """Distinct integers as [start, stop) runs of consecutive increasing values, in their order:
    [0, 1, 2, 5] -> [(0, 3), (5, 6)]; [2, 0, 1] -> [(2, 3), (0, 2)]."""
    runs: list[tuple[int, int]] = []
    for v in values:
        if runs and runs[-1][1] == v:
            runs[-1] = (runs[-1][0], v + 1)
        else:
            runs.append((v, v + 1))
    return runs


def _to_device_async(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The CPU tensor ``t`` on ``device`` without waiting for the device: on CUDA from pinned memory
    (from pageable memory the driver may wait for the stream before it stages the copy)."""
    if device.type == "cuda" and not torch.compiler.is_compiling():
        t = t.pin_memory()     # the caching host allocator keeps the block until the copy is done
    return t.to(device, non_blocking=True)


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Losses accumulate in fp32 under autocast (fp16/bf16 activations); fp64 stays fp64."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _is_channels_last(t: torch.Tensor) -> bool:
    """In channels_last and not also NCHW-contiguous (as a 1 x 1 or single-channel map can be)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
