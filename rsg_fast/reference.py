"""``ReferenceRSG``: RSG written as plainly as possible. It is the oracle every test compares with.

It materialises whatever is clearest (the N x K x C x H x W distance tensor, every pair, the full
3x3 convolution of the contrastive module), loops over segments like the published code, and maps
onto the paper's equations one commented block each. Do not optimise it: ``rsg_fast.RSG`` is the
fast module; this one exists to be obviously right.

The two MV-loss semantics (``mv_loss``)
---------------------------------------
Eq. 6 of the paper compares, at every spatial location (j, k), the channel vector of the transformed
frequent-class displacement ``Tv[:, j, k]`` with that of the rare-class displacement ``u[:, j, k]``
(cosine term) and with the length of the untransformed displacement ``v[:, j, k]`` (norm term).

- ``mv_loss="original"`` (default, so that the drop-in gives the published numbers): what the
  published code computes. It views each NCHW tensor as rows of C consecutive memory elements
  (``view(-1, C)``), which are not channel vectors, and its cosine term sums ``|a_i * b_i - 1|``
  over the elements of each normalised row (equal to ``C - cos(row)``: same gradient as
  ``|cos - 1|`` on those rows).
- ``mv_loss="paper"``: Eq. 6 as written, per location over the C channels.

Nothing else differs between the two.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rsg_fast._validation import (NON_FINITE_MESSAGE, check_forward_arguments, check_host_target,
                                  raise_for_labels, raise_if_labels_differ)
from rsg_fast.parameters import RSGParameters


class ReferenceRSG(RSGParameters):
    """RSG, plainly. Same constructor, forward and parameters as the published module.

    ``forward(feature_maps, head_class_lists, target, epoch) -> (feature_maps, loss_cesc, loss_mv, target)``;
    see the module docstring for ``mv_loss``. ``host_target`` (RSG's keyword) is accepted and checked,
    not used. Runs on any device, any batch size (odd N pairs the
    first floor(N/2) samples with the next floor(N/2); N = 0 and N = 1 give zero pair terms).
    """

    def forward(self, feature_maps, head_class_lists, target, epoch, *, host_target=None):
        epoch = check_forward_arguments(self, feature_maps, target, epoch)   # a host number
        heads = self._head_classes(head_class_lists)
        labels = target.long()             # any integer dtype (a uint8 index would act as a mask)
        if self.validate and labels.numel() > 0:   # (torch has no min/max of uint16/32/64)
            raise_for_labels(int(labels.min()), int(labels.max()), self.num_classes)
        if host_target is not None:   # RSG's keyword, accepted so the two modules swap; only checked here
            host_labels = check_host_target(host_target, target)
            if self.validate:
                raise_if_labels_differ(target.cpu(), host_labels)
        if self.check_finite and not bool(torch.isfinite(feature_maps).all()):
            raise ValueError(NON_FINITE_MESSAGE)

        x = feature_maps.detach()          # RSG's losses do not move the backbone's features
        N, C, H, W = x.shape
        # fp32 for fp16/bf16 maps, as this module's non-zero MV loss and RSG's losses are
        zero = x.new_zeros((), dtype=torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype)

        # Eq. 1: gamma_l = softmax(A_l ave(x_l) + b_l), one distribution over the K centres of class l.
        pooled = x.mean(dim=(2, 3))                                                   # (N, C)
        center_logits = torch.bmm(pooled.unsqueeze(1), self.linear[labels]).squeeze(1) + self.bias[labels]
        gamma = F.softmax(center_logits, dim=1)                                        # (N, K)

        # Eq. 5, first term: <sum_i gamma_i sum_{d,j,k} ||x - up(C_l^i)||^2>_s, a raw sum over C*H*W.
        centres = self.centers[labels]                                                 # (N, K, C)
        diff = x.unsqueeze(1) - centres[:, :, :, None, None]                           # (N, K, C, H, W)
        distance = diff.pow(2).sum(dim=(2, 3, 4))                                      # (N, K)
        loss_cesc = (gamma * distance).sum() / max(N, 1)

        if not self._phase_is_generation(epoch):
            # Eq. 5, second term (before the threshold): first half of the batch against the second,
            # label 1 when the two samples share a class; Eq. 2 gives the 2-way probabilities.
            m = N // 2
            if m > 0:
                same_class = (labels[:m] == labels[m:2 * m]).long()
                logits = self._contrastive(torch.cat([x[:m], x[m:2 * m]], dim=1), frozen=False)
                loss_cesc = loss_cesc + F.cross_entropy(logits, same_class)
            return feature_maps, loss_cesc, zero, target

        # Generation phase (Algorithm 1, after the threshold).
        is_head = torch.isin(labels, torch.tensor(heads, dtype=labels.dtype, device=labels.device))
        head_ids = torch.nonzero(is_head).flatten()                                    # batch order
        tail_ids = torch.nonzero(~is_head).flatten()
        nh, nt = len(head_ids), len(tail_ids)
        if nh == 0 or nt == 0:
            return feature_maps, loss_cesc, zero, target

        # Each sample's closest centre: argmax of its own gamma (gamma and centres detached).
        closest = gamma.detach().argmax(dim=1)                                         # (N,)
        closest_centre = self.centers.detach()[labels, closest]                        # (N, C)

        segment, pairs = self._segments(nh, nt)
        new_maps, new_labels, loss_mv = [], [], zero
        for j in range(segment):
            if nh >= nt:
                h_ids, t_ids = head_ids[j * nt:(j + 1) * nt], tail_ids
            else:
                h_ids, t_ids = head_ids, tail_ids[j * nh:(j + 1) * nh]
            h, t = x[h_ids], x[t_ids]

            # Eq. 3: feature displacement of the frequent-class sample, x_fd-freq = x - up(C_l^K).
            v = h - closest_centre[h_ids][:, :, None, None]
            # ... and of the rare-class sample, x_fd-rare.
            u = t - closest_centre[t_ids][:, :, None, None]
            # Eq. 4: x_new = T(x_fd-freq) + x_rare, labelled with the rare class.
            tv = self.vec_transformation_module(v)
            new_maps.append(t + tv)
            new_labels.append(target[t_ids])

            # Eq. 6, third term: -log gamma*, the frozen contrastive module must find (h, Tv) "not
            # the same class" (label 0); gradients flow through it into T only.
            not_same = torch.zeros(pairs, dtype=torch.long, device=x.device)
            loss_contrast = F.cross_entropy(self._contrastive(torch.cat([h, tv], dim=1), frozen=True), not_same)

            # Eq. 6, first and second terms, over the vectors of the chosen grouping.
            a, b, w = (self._vectors(z) for z in (tv, u, v))
            norm_term = (a.norm(dim=1) - w.norm(dim=1)).abs().sum()
            a_hat, b_hat = F.normalize(a, dim=1), F.normalize(b, dim=1)
            if self.mv_loss == "paper":
                cos_term = ((a_hat * b_hat).sum(dim=1) - 1).abs().sum()
            else:  # published code: elementwise product, not a dot product
                cos_term = (a_hat * b_hat - 1).abs().sum()
            loss_mv = loss_mv + loss_contrast + (norm_term + cos_term) / pairs

        loss_mv = loss_mv / segment
        out_maps = torch.cat([feature_maps, *[m.to(feature_maps.dtype) for m in new_maps]], dim=0)
        return out_maps, loss_cesc, loss_mv, torch.cat([target, *new_labels], dim=0)

    def _vectors(self, z: torch.Tensor) -> torch.Tensor:
        """The vectors Eq. 6 compares: per-location channel vectors, or the published code's rows."""
        C = z.shape[1]
        if self.mv_loss == "paper":
            return z.permute(0, 2, 3, 1).reshape(-1, C)
        return z.contiguous().view(-1, C)

    def _contrastive(self, pair: torch.Tensor, frozen: bool) -> torch.Tensor:
        """Eq. 2: logits of A* ave(h(cat[x1, x2])) + b*. ``frozen`` uses detached parameters, so the
        module does not train but gradients still pass through it to its input."""
        conv1, conv3, fc = self.contrastive_module[0], self.contrastive_module[2], self.contrastive_fc

        def p(t):
            return t.detach() if frozen else t

        hidden = F.relu(F.conv2d(pair, p(conv1.weight), p(conv1.bias)))
        hidden = F.conv2d(hidden, p(conv3.weight), p(conv3.bias), padding=1)
        return F.linear(hidden.mean(dim=(2, 3)), p(fc.weight), p(fc.bias))
