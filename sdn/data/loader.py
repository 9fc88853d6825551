"""Device-resident batches with on-device augmentation (no per-image Python while iterating).

The whole uint8 split is moved to ``device`` once. Each epoch draws, from a CPU generator seeded with
``(seed, epoch)``, a permutation plus every sample's crop offset, flip bit and colour-jitter factors; these move to
the device once per epoch, so the batches are the same on CPU and GPU for a given seed and epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from sdn.data.datasets import DatasetInfo
from sdn.data.prepare import TensorSplit

# ITU-R 601 luma weights, as torchvision's grayscale conversion uses.
_LUMA = (0.299, 0.587, 0.114)


def crop_flip(images: torch.Tensor, padding: int, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Zero-pad a batch by ``padding``, take each sample's window at ``offsets`` [B, 2] (row, col, each in
    ``[0, 2*padding]``) and mirror the samples where ``flips`` [B] is true; one gather for the whole batch."""
    batch, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    rows = offsets[:, 0:1] + torch.arange(height, device=device)  # [B, H]
    ar = torch.arange(width, device=device)
    cols = offsets[:, 1:2] + torch.where(flips[:, None], width - 1 - ar, ar)  # [B, W]
    b = torch.arange(batch, device=device)[:, None, None, None]
    c = torch.arange(channels, device=device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


def color_jitter(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, then saturation, per sample; ``images`` float in [0, 1], ``factors`` [B, 3]."""
    luma = torch.tensor(_LUMA, device=images.device, dtype=images.dtype)[None, :, None, None]
    f = factors.to(images.dtype)[:, :, None, None, None]
    x = (images * f[:, 0]).clamp(0, 1)
    grey_mean = (x * luma).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = ((x - grey_mean) * f[:, 1] + grey_mean).clamp(0, 1)
    grey = (x * luma).sum(dim=1, keepdim=True)
    return ((x - grey) * f[:, 2] + grey).clamp(0, 1)


class DeviceLoader:
    """Iterate ``(normalised float NCHW, int64 labels)`` batches of a split kept whole on ``device``.

    ``augment`` turns on random crop with zero padding ``info.crop_padding``, horizontal flip and, when
    ``info.color_jitter > 0``, per-sample brightness/contrast/saturation factors in ``[1 - j, 1 + j]``.
    Each ``iter()`` is one epoch; ``set_epoch`` chooses the epoch (for resuming).
    """

    def __init__(
        self,
        split: TensorSplit,
        info: DatasetInfo,
        *,
        batch_size: int,
        shuffle: bool,
        augment: bool,
        device: str | torch.device,
        seed: int,
        drop_last: bool = False,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if split.images.dtype != torch.uint8:
            raise ValueError(f"split images must be uint8, got {split.images.dtype}")
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.info = info
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.dtype = dtype
        self.epoch = 0
        self._mean = torch.tensor(info.mean, device=self.device).view(1, -1, 1, 1)
        self._inv_std = 1.0 / torch.tensor(info.std, device=self.device).view(1, -1, 1, 1)

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.num_samples
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        pad, jitter = self.info.crop_padding, self.info.color_jitter
        offsets = flips = factors = None
        if self.augment:
            offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen).to(self.device)
            flips = (torch.rand(n, generator=gen) < 0.5).to(self.device)
            if jitter > 0:
                factors = (1.0 + (torch.rand((n, 3), generator=gen) * 2 - 1) * jitter).to(self.device)
        order = order.to(self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            images = self.images[idx]
            if offsets is not None and flips is not None:
                images = crop_flip(images, pad, offsets[start : start + len(idx)], flips[start : start + len(idx)])
            x = images.to(torch.float32) / 255.0
            if factors is not None:
                x = color_jitter(x, factors[start : start + len(idx)])
            x = ((x - self._mean) * self._inv_std).to(self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]
