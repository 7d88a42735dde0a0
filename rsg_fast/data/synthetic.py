"""``synthetic-lt``: an offline, seeded, long-tailed image dataset that a small CNN can learn.

Each class owns ``modes`` smooth random colour patterns (several modes per class, so RSG's K centres
have something to find). A sample is one of its class's patterns with random contrast, a random
shift of up to ``max_shift`` pixels, a faint pattern of another class mixed in, and Gaussian pixel
noise. Training counts follow the CIFAR-LT rule (``img_num_per_cls``); the test split is balanced.
The defaults (10 classes, 500 down to 5 images, rho = 100) give many- (> 100), medium- (20-100) and
few-shot (< 20) classes: 4 / 3 / 3.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from rsg_fast.data.imbalance import img_num_per_cls


class SyntheticLT(Dataset):
    """One split of synthetic-lt (the module docstring says how a sample is made): ``data`` holds the
    float (N, 3, image_size, image_size) images, ``targets`` their labels, ``counts`` the images per class."""

    MIN_IMAGE_SIZE = 8

    def __init__(self, train: bool = True, *, num_classes: int = 10, n_max: int = 500, imb_type: str = "exp",
                 imb_factor: float = 0.01, test_per_class: int = 50, image_size: int = 16, modes: int = 2,
                 noise: float = 1.0, distractor: float = 0.5, max_shift: int = 2, seed: int = 0):
        for name, v in (("num_classes", num_classes), ("n_max", n_max), ("test_per_class", test_per_class),
                        ("image_size", image_size), ("modes", modes)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"synthetic-lt: {name} must be a positive int, got {v!r}")
        if image_size < self.MIN_IMAGE_SIZE:
            raise ValueError(f"synthetic-lt: image_size must be >= {self.MIN_IMAGE_SIZE}, got {image_size}")
        self.num_classes = num_classes
        self.counts = (img_num_per_cls(n_max, num_classes, imb_type, imb_factor) if train
                       else [test_per_class] * num_classes)
        if min(self.counts) < 1:
            raise ValueError(f"synthetic-lt: per-class counts {self.counts} leave a class empty; raise n_max "
                             "(rsg-fast train: --synthetic-max) or imb_factor (--imb-factor)")

        # The class patterns depend on the seed only, so train and test share them.
        g = torch.Generator().manual_seed(seed)
        low = torch.randn(num_classes * modes, 3, 4, 4, generator=g)
        protos = F.interpolate(low, size=(image_size, image_size), mode="bilinear", align_corners=False)
        protos = protos / protos.flatten(1).std(dim=1).view(-1, 1, 1, 1)
        protos = protos.view(num_classes, modes, 3, image_size, image_size)

        # Train and test samples come from different streams of the same seed.
        g.manual_seed(seed * 1_000_003 + (1 if train else 2))
        images, targets = [], []
        for c, n in enumerate(self.counts):
            mode = torch.randint(modes, (n,), generator=g)
            contrast = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)
            other = (c + 1 + torch.randint(num_classes - 1, (n,), generator=g)) % num_classes if num_classes > 1 \
                else torch.zeros(n, dtype=torch.long)
            other_mode = torch.randint(modes, (n,), generator=g)
            x = protos[c, mode] * contrast + distractor * torch.rand(n, 1, 1, 1, generator=g) * protos[other, other_mode]
            shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=g)
            x = torch.stack([torch.roll(x[i], shifts=(int(s[0]), int(s[1])), dims=(1, 2)) for i, s in enumerate(shifts)])
            x = x + noise * torch.randn(x.shape, generator=g)
            images.append(x)
            targets += [c] * n
        self.data = torch.cat(images).float()
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.data[i], self.targets[i]
