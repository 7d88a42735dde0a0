"""torchvision's ``ToTensor`` + ``Normalize`` split in two, so that batches travel as uint8 and are scaled
where the model runs, with the same float32 values bit for bit.

Per image (in a DataLoader worker), ``to_hwc_uint8`` keeps the pixels ``ToTensor`` would read: a
(H, W, C) uint8 tensor, a quarter of the float32 image's bytes in the worker-to-main-process queue,
the pinned-memory copy and the host-to-device copy. Per batch (on the device),
``normalize_uint8_batch`` does what ``ToTensor`` then ``Normalize`` do: ``(u8 / 255 - mean) / std``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch


def to_hwc_uint8(pic) -> torch.Tensor:
    """A PIL image (mode L or RGB) -> its pixels as a (H, W, C) uint8 tensor: ``ToTensor``'s input, before
    it permutes and scales. A module-level function, so a transform holding it pickles for workers."""
    if pic.mode not in ("L", "RGB"):   # ToTensor scales "1" and leaves 16/32-bit modes unscaled: not 8-bit pixels
        raise ValueError(f"to_hwc_uint8 takes images of mode 'L' or 'RGB', got mode {pic.mode!r}; convert it first")
    pixels = np.array(pic, dtype=np.uint8)   # a writable copy, as ToTensor makes
    return torch.from_numpy(pixels if pixels.ndim == 3 else pixels[:, :, None])


def normalize_uint8_batch(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                          memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float32 in ``memory_format``: ``ToTensor`` then ``Normalize(mean,
    std)`` of each image, as the same operations in the same order: the same values while torch's default
    dtype is float32 (ToTensor converts to the default dtype). Reads B H W C bytes, writes 4 B C H W; with
    ``torch.channels_last`` the layout change is free (NHWC is its order)."""
    check_uint8_nhwc(images, len(mean), hint=" (a dataset's per-image transform must end in such pixels for its "
                     "device_transform: to_hwc_uint8, as imagenet_transforms(..., uint8=True) does)")
    scale, mean_t, std_t = _normalize_constants(tuple(mean), tuple(std), images.device)
    # one kernel converts and lays out (exact: every uint8 is a float32)
    x = images.permute(0, 3, 1, 2).to(torch.float32, memory_format=memory_format).div_(scale)
    return x.sub_(mean_t).div_(std_t)


def check_uint8_nhwc(images: torch.Tensor, channels: int, hint: str = "") -> None:
    """``ValueError`` unless ``images`` is a (B, H, W, channels) uint8 batch."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != channels:
        raise ValueError(f"images must be (B, H, W, {channels}) uint8, got {tuple(images.shape)} {images.dtype}{hint}")


@dataclass(frozen=True)
class ImageNormalize:
    """The batch half of the split, as a dataset's ``device_transform``: ``normalize_uint8_batch`` with
    this ``mean`` and ``std``. ``rsg_fast.data.LoaderOnDevice`` applies it to each batch on the device."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean and std must give one value per channel, got {self.mean} and {self.std}")
        if any(s == 0 for s in self.std):   # as torchvision's Normalize: not a silent division by zero
            raise ValueError(f"std must not hold a zero, got {self.std}")

    def __call__(self, images: torch.Tensor,
                 memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        return normalize_uint8_batch(images, self.mean, self.std, memory_format)


@functools.lru_cache(maxsize=None)
def _normalize_constants(mean: tuple, std: tuple, device: torch.device):
    """255 and the (C, 1, 1) mean and std as float32 tensors on ``device``, made once: a tensor made
    from Python numbers per batch would be a blocking copy (a GPU sync), and CUDA divides by a Python
    scalar as a multiplication by its reciprocal, which rounds differently from the CPU's division."""
    def const(v):
        return torch.tensor(v, dtype=torch.float32, device=device)
    return const(255.0), const(mean).view(-1, 1, 1), const(std).view(-1, 1, 1)
