"""``RSG``: the fast, drop-in Rare-class Sample Generator.

Same constructor, forward, return values and state_dict keys as the published module (and as
``ReferenceRSG``, the oracle it is tested against). What differs is how it computes:

- Eq. 1 + Eq. 5 (first term): one pass over x gives the pooled mean and all K distances
  (``ops.center_distance``), never the N x K x C x H x W tensor.
- Pairing: one stable sort splits heads from tails and one gather builds every (head, tail) pair of
  every segment; the only host synchronisation is the head count (folded into the value checks).
- Eq. 3: ``ops.displacement`` gathers samples and subtracts their closest centre in one pass.
- Eq. 4 + Eq. 6: ``ops.mv_terms`` writes the new samples and sums the norm and cosine terms in one pass.
- Eq. 2: average pooling after the contrastive module's 3x3 convolution is linear, so
  pool(conv3x3(a)) = sum over the 9 taps of W_tap @ S_tap(a) / (H W) + b, with S_tap(a) the sum of
  a over that tap's shifted window: about H*W times fewer multiply-adds, same numbers up to rounding.
- The generation-phase freeze of the contrastive classifier uses detached parameters instead of
  flipping ``requires_grad`` (which breaks DistributedDataParallel and optimiser state).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rsg_fast import ops
from rsg_fast._validation import check_forward_shapes, raise_for_values
from rsg_fast.backend import BACKEND_CHOICES, resolve_backend
from rsg_fast.reference import RSGParameters


class RSG(RSGParameters):
    """Rare-class Sample Generator (Wang et al., CVPR 2021), published API.

    Args (published, same defaults): n_center (K), feature_maps_shape ([C, H, W]), num_classes,
    contrastive_module_dim (D), head_class_lists, transfer_strength (beta in (0, 1]), epoch_thresh.
    Keyword-only extras:
      mv_loss: "paper" (Eq. 6 per spatial location, default) or "original" (the published code's
        row grouping); see ``rsg_fast.reference`` for when to pick which.
      backend: "auto" (Triton on CUDA when available, else PyTorch), "torch" or "triton"; the
        environment variable RSG_FAST_BACKEND=torch|triton overrides "auto".
      validate: check label ranges (one host synchronisation, shared with the head count); False
        skips the value checks, never the shape checks.
      check_finite: also reject feature maps holding NaN/Inf.

    ``forward(feature_maps, head_class_lists, target, epoch)`` returns
    ``(feature_maps, loss_cesc, loss_mv, target)``: after the threshold the batch is extended by the
    new rare-class samples and their labels; the losses are 0-d tensors in fp32 (fp64 for fp64 input).
    """

    def __init__(self, n_center=3, feature_maps_shape=[32, 16, 16], num_classes=10,  # noqa: B006 (published API)
                 contrastive_module_dim=128, head_class_lists=[], transfer_strength=1.0,  # noqa: B006
                 epoch_thresh=100, *, mv_loss="paper", backend="auto", validate=True, check_finite=False):
        if backend not in BACKEND_CHOICES:
            raise ValueError(f"backend must be one of {BACKEND_CHOICES}, got {backend!r}")
        super().__init__(n_center, feature_maps_shape, num_classes, contrastive_module_dim, head_class_lists,
                         transfer_strength, epoch_thresh, mv_loss=mv_loss, validate=validate,
                         check_finite=check_finite)
        self.backend = backend
        self._head_lookup_cache: dict = {}

    def forward(self, feature_maps, head_class_lists, target, epoch):
        check_forward_shapes(self, feature_maps, target, epoch)
        heads = self._head_classes(head_class_lists)
        backend = resolve_backend(self.backend, feature_maps.device)
        generation = self._phase_is_generation(epoch)
        x = feature_maps.detach()
        N = x.shape[0]
        # clamp: a bad label must reach the value check below, not fail inside this lookup
        is_head = self._is_head_class(heads, target.device)[target.clamp(0, self.num_classes - 1)]

        # The one host synchronisation: the head count (needed to size the pairs) and, unless
        # validate=False, the label range and finiteness, fetched together.
        n_head = self._host_statistics(x, target, is_head, need_count=generation)

        with torch.autocast(x.device.type, enabled=False):
            # Eq. 1 and Eq. 5 (first term), fused: pooled mean and every centre distance in one pass.
            mean, distance = ops.center_distance(x, self.centers[target], backend=backend)
            center_logits = torch.baddbmm(self.bias[target].unsqueeze(1).to(mean.dtype), mean.unsqueeze(1),
                                          self.linear[target].to(mean.dtype)).squeeze(1)
            gamma = F.softmax(center_logits, dim=1)                                    # (N, K)
            loss_cesc = (gamma * distance).sum() / max(N, 1)
        zero = loss_cesc.new_zeros(())

        if not generation:
            # Eq. 5 (second term): first floor(N/2) samples against the next floor(N/2).
            m = N // 2
            if m > 0:
                same_class = (target[:m] == target[m:2 * m]).long()
                logits = self._contrastive_logits(x[:m], x[m:2 * m], frozen=False)
                loss_cesc = loss_cesc + F.cross_entropy(_at_least_fp32(logits), same_class)
            return feature_maps, loss_cesc, zero, target

        n_tail = N - n_head
        if n_head == 0 or n_tail == 0:
            return feature_maps, loss_cesc, zero, target
        head_index, tail_index = self._pair_indices(is_head, n_head, n_tail)
        n_new = head_index.shape[0]

        # Closest centre of each sample: argmax of its own gamma (gamma and centres detached).
        closest_centre = self.centers.detach()[target, center_logits.detach().argmax(dim=1)]    # (N, C)
        pair_index = torch.cat([head_index, tail_index])
        # Eq. 3: v = x_head - up(C_head) and u = x_tail - up(C_tail), gathered in one pass.
        # (the indices come from the sort above, in range by construction: no range check)
        displaced = ops.displacement(x, pair_index, closest_centre[pair_index].to(x.dtype), backend=backend,
                                     check_index=False)
        v, u = displaced[:n_new], displaced[n_new:]
        tv = self.vec_transformation_module(v)                                         # T(x_fd-freq)
        # Eq. 4 (new = x_tail + Tv) and Eq. 6 (norm and cosine terms, summed), in one pass.
        grouping = "location" if self.mv_loss == "paper" else "rows"
        new_maps, terms = ops.mv_terms(tv, v, u, x, tail_index, grouping, backend=backend, check_index=False)
        # Eq. 6 (third term): the frozen contrastive module must call (head, Tv) "not the same class".
        not_same = torch.zeros(n_new, dtype=torch.long, device=x.device)
        loss_contrast = F.cross_entropy(_at_least_fp32(self._contrastive_logits(x[head_index], tv, frozen=True)), not_same)
        # Published scaling: mean over segments of (CE + terms / pairs) = CE + terms / s_new.
        loss_mv = loss_contrast + terms.sum().to(loss_contrast.dtype) / n_new

        out_maps = torch.cat([feature_maps, new_maps.to(feature_maps.dtype)], dim=0)
        return out_maps, loss_cesc, loss_mv, torch.cat([target, target[tail_index]])

    # -- pieces of forward -------------------------------------------------------------------------
    def _is_head_class(self, heads: tuple[int, ...], device) -> torch.Tensor:
        """A (num_classes,) bool lookup table, cached per head list and device so forward does not
        copy a host list to the device every step."""
        key = (heads, str(device))
        table = self._head_lookup_cache.get(key)
        if table is None:
            table = torch.zeros(self.num_classes, dtype=torch.bool)
            table[list(heads)] = True
            table = table.to(device)
            if len(self._head_lookup_cache) > 16:
                self._head_lookup_cache.clear()
            self._head_lookup_cache[key] = table
        return table

    def _host_statistics(self, x, target, is_head, need_count: bool) -> int:
        """Fetch the head count and the value-check statistics in one device-to-host copy."""
        want_values = self.validate and target.numel() > 0
        if not want_values and not need_count:
            return -1
        stats = [is_head.sum()]
        if want_values:
            stats += [target.min(), target.max()]
            if self.check_finite:
                stats.append(torch.isfinite(x).all())
        values = torch.stack([s.to(torch.int64) for s in stats]).tolist()
        if want_values:
            raise_for_values(values[1], values[2], self.num_classes,
                             bool(values[3]) if self.check_finite else None)
        return values[0]

    def _pair_indices(self, is_head, n_head: int, n_tail: int):
        """Every (head, tail) pair of every segment, in the published order, from one stable sort."""
        segment, pairs = self._segments(n_head, n_tail)
        order = torch.sort(~is_head, stable=True).indices            # heads, then tails, batch order each
        heads, tails = order[:n_head], order[n_head:]
        k = torch.arange(segment * pairs, device=is_head.device)
        if n_head >= n_tail:   # segment j: heads[j*nt:(j+1)*nt] with all tails
            return heads[k], tails[k % n_tail]
        return heads[k % n_head], tails[k]   # segment j: all heads with tails[j*nh:(j+1)*nh]

    def _contrastive_logits(self, first, second, frozen: bool):
        """Eq. 2 on cat[first, second] along channels, without the 3x3 convolution.

        h = conv3x3(relu(conv1x1(cat[first, second]))); logits = fc(ave(h)). Average pooling after
        the 3x3 conv is linear: ave(conv3x3(a)) = sum over taps of W_tap S_tap / HW + b, where S_tap
        is the sum of a over the window that tap reads (zero padding excluded), so the D x D conv
        (most of the published module's time) becomes a (P, 9D) x (9D, D) product.
        """
        conv1, conv3, fc = self.contrastive_module[0], self.contrastive_module[2], self.contrastive_fc
        w1, b1, w3, b3, wf, bf = conv1.weight, conv1.bias, conv3.weight, conv3.bias, fc.weight, fc.bias
        if frozen:  # generation phase: the classifier does not train, gradients still reach `second`
            w1, b1, w3, b3, wf, bf = (p.detach() for p in (w1, b1, w3, b3, wf, bf))
        P, _, H, W = first.shape
        # One compute dtype for the hand-written Function: autocast's where it is on (the 1x1 conv
        # would run there), else the inputs' promoted dtype; autocast stays off inside it.
        device_type = first.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
        else:
            dtype = torch.promote_types(first.dtype, second.dtype)
        # channels-last rows of cat[first, second]: the 1x1 conv is one matrix product on them
        rows = torch.cat([first.permute(0, 2, 3, 1).to(dtype), second.permute(0, 2, 3, 1).to(dtype)],
                         dim=3).reshape(P * H * W, -1)
        with torch.autocast(device_type, enabled=False):
            window_sums = _ReluTapWindowSums.apply(rows, w1.flatten(1).to(dtype), b1.to(dtype), P, H, W)
        pooled = torch.einsum("pijd,edij->pe", window_sums, w3.to(window_sums.dtype)) / (H * W) + b3
        return F.linear(pooled, wf, bf)


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Losses accumulate in fp32 under autocast (fp16/bf16 activations); fp64 stays fp64."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _tap_masks(H: int, W: int, device, dtype):
    """rows[i, h] = 1 when tap row i of a 3x3, padding-1 conv reads input row h (likewise cols).

    Tap row 0 reads rows 0..H-2 (it misses the last row), 1 reads all, 2 reads rows 1..H-1."""
    def mask(n):
        m = torch.ones(3, n, device=device, dtype=dtype)
        m[0, n - 1] = 0
        m[2, 0] = 0
        return m
    return mask(H), mask(W)


class _ReluTapWindowSums(torch.autograd.Function):
    """S[p, i, j, d] = sum over (h, w) in tap (i, j)'s window of relu(rows @ w1^T + b1)[p, h, w, d].

    rows: (P*H*W, Cin) channels-last; w1: (D, Cin); b1: (D,); S: (P, 3, 3, D). The window sums are
    separable: S = sum_{h,w} rmask[i, h] cmask[j, w] a[p, h, w, d], so one pass over a gives S, and
    backward rebuilds dS/da the same way. Hand-written so that only one P*H*W*D activation (saved for
    the ReLU mask) and one gradient of that size exist at a time.
    """

    @staticmethod
    def forward(ctx, rows, w1, b1, P, H, W):
        hidden = torch.addmm(b1, rows, w1.t()).clamp_min_(0).view(P, H, W, -1)
        rmask, cmask = _tap_masks(H, W, rows.device, rows.dtype)
        col_sums = torch.matmul(rmask, hidden.view(P, H, -1)).view(P, 3, W, -1)     # (P, 3, W, D)
        sums = torch.einsum("piwd,jw->pijd", col_sums, cmask)                         # (P, 3, 3, D)
        ctx.save_for_backward(rows, w1, hidden)
        ctx.masks = (rmask, cmask)
        return sums

    @staticmethod
    def backward(ctx, grad_sums):
        rows, w1, hidden = ctx.saved_tensors
        rmask, cmask = ctx.masks
        P, H, W, D = hidden.shape
        grad_sums = grad_sums.to(hidden.dtype)
        grad_cols = torch.einsum("pijd,jw->piwd", grad_sums, cmask)          # (P, 3, W, D)
        grad_hidden = torch.matmul(rmask.t(), grad_cols.reshape(P, 3, W * D))     # (P, H, W*D)
        grad_hidden = grad_hidden.view(P * H * W, D).masked_fill_(hidden.view(P * H * W, D) == 0, 0)   # ReLU
        grad_rows = grad_hidden @ w1 if ctx.needs_input_grad[0] else None
        grad_w1 = grad_hidden.t() @ rows if ctx.needs_input_grad[1] else None
        grad_b1 = grad_hidden.sum(0) if ctx.needs_input_grad[2] else None
        return grad_rows, grad_w1, grad_b1, None, None, None
