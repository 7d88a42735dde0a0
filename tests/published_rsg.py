"""A transcription, for tests only, of how the published RSG computes (../shared/design/original-rsg.md).

It follows the published code's path rather than ours: labels through numpy on the host, a Python
loop splitting heads from tails, the closest centre picked with a numpy one-hot and a float64 batched
matmul (then ``.float()``, as published: a float64 module's chosen centres are rounded to fp32, so
float64 comparisons with it need fp32 tolerances), AvgPool2d(H) (square maps only), even batches
only, the contrastive module frozen by flipping ``requires_grad`` for good, MV terms on
``view(-1, C)`` rows with an elementwise cosine product.
``.cuda()`` is replaced by the inputs' device so it runs here. ``RSG(mv_loss="original")`` must match
it to fp32 rounding, which is the drop-in promise.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rsg_fast.reference import RSGParameters


class PublishedRSG(RSGParameters):
    def forward(self, feature_maps, head_class_lists, target, epoch):
        C, H, W = self.feature_maps_shape
        assert H == W, "the published code assumes square maps"
        avgpool = nn.AvgPool2d(H)
        device = feature_maps.device
        x = feature_maps.detach()
        n = x.size(0)

        # centre estimation (Eq. 1) and the first CESC term, materialised the published way
        pooled = avgpool(x).view(n, -1)
        weights = F.softmax(torch.bmm(pooled.unsqueeze(1), self.linear[target]).squeeze(1) + self.bias[target], dim=1)
        centers = self.centers[target]
        fm = x.unsqueeze(1).repeat(1, self.n_center, 1, 1, 1)
        up = centers.unsqueeze(-1).unsqueeze(-1).repeat(1, 1, 1, H, W)
        dist = ((fm - up) ** 2).sum(-1).sum(-1).sum(-1)
        loss_cesc = (weights * dist).sum(1).mean()

        if epoch <= self.epoch_thresh:
            half = n // 2
            first, second = x[:half], x[half:]          # the published code crashes on odd n here
            label = (target[:half] == target[half:]).long()
            out = self.contrastive_module(torch.cat([first, second], 1))
            out = self.contrastive_fc(avgpool(out).view(half, -1))
            loss_cesc = loss_cesc + F.cross_entropy(out, label)
            return feature_maps, loss_cesc, torch.zeros(1, device=device).squeeze(), target

        # generation: freeze the contrastive classifier for good
        for p in list(self.contrastive_module.parameters()) + list(self.contrastive_fc.parameters()):
            p.requires_grad = False

        t_np = target.cpu().numpy()
        head_idx = [i for i in range(n) if t_np[i] in head_class_lists]
        tail_idx = [i for i in range(n) if t_np[i] not in head_class_lists]
        if len(head_idx) == 0 or len(tail_idx) == 0:
            return feature_maps, loss_cesc, torch.zeros(1, device=device).squeeze(), target

        # closest centre through a numpy one-hot and a float64 bmm
        idx = weights.detach().cpu().numpy().argmax(1)
        one_hot = np.zeros((n, self.n_center))
        one_hot[np.arange(n), idx] = 1
        one_hot = torch.from_numpy(one_hot).to(device).unsqueeze(1)
        chosen = torch.bmm(one_hot, self.centers.detach()[target].double()).squeeze(1).float()   # (n, C)

        heads = x[torch.tensor(head_idx, device=device)]
        tails = x[torch.tensor(tail_idx, device=device)]
        c_heads = chosen[torch.tensor(head_idx, device=device)]
        c_tails = chosen[torch.tensor(tail_idx, device=device)]
        t_tails = target[torch.tensor(tail_idx, device=device)]
        nh, nt = len(head_idx), len(tail_idx)
        beta = self.transfer_strength
        segment = max(1, int(nh * beta / nt)) if nh >= nt else max(1, int(nt * beta / nh))

        new_maps, new_targets, loss_mv = [], [], 0
        for j in range(segment):
            if nh >= nt:
                h, ch = heads[j * nt:(j + 1) * nt], c_heads[j * nt:(j + 1) * nt]
                t, ct, yt = tails, c_tails, t_tails
            else:
                h, ch = heads, c_heads
                t, ct, yt = tails[j * nh:(j + 1) * nh], c_tails[j * nh:(j + 1) * nh], t_tails[j * nh:(j + 1) * nh]
            v = h - ch.unsqueeze(-1).unsqueeze(-1).repeat(1, 1, H, W)
            tv = self.vec_transformation_module(v)
            u = t - ct.unsqueeze(-1).unsqueeze(-1).repeat(1, 1, H, W)
            new_maps.append(t + tv)
            new_targets.append(yt)

            pairs = h.size(0)
            out = self.contrastive_fc(avgpool(self.contrastive_module(torch.cat([h, tv], 1))).view(pairs, -1))
            ce = F.cross_entropy(out, torch.zeros(pairs, dtype=torch.long, device=device))
            norm_term = torch.abs(torch.norm(tv.view(-1, C), dim=1) - torch.norm(v.view(-1, C), dim=1)).sum()
            cos_term = torch.abs(F.normalize(u.view(-1, C), dim=1) * F.normalize(tv.view(-1, C), dim=1) - 1).sum()
            loss_mv = loss_mv + ce + (norm_term + cos_term) / pairs

        loss_mv = loss_mv / segment
        return (torch.cat([feature_maps] + new_maps, 0), loss_cesc, loss_mv, torch.cat([target] + new_targets, 0))
