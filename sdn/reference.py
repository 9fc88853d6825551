"""The reference engine: data fed the way the original implementation fed it, for measurement only.

Images are handed out one at a time as PIL images by a torchvision-style ``Dataset``, transformed by the standard
torchvision transforms in ``DataLoader`` worker processes (4 by default), collated on the CPU and copied to the
device; the model runs eagerly in fp32. The fast engine (the default) keeps the uint8 split on the device instead.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from sdn.data import DatasetInfo, TensorSplit


class PILImageDataset(Dataset):
    """A prepared split served like torchvision's CIFAR10: HWC uint8 arrays turned into PIL images per item."""

    def __init__(self, split: TensorSplit, transform: transforms.Compose) -> None:
        self.images = np.ascontiguousarray(split.images.permute(0, 2, 3, 1).numpy())
        self.labels = split.labels.numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index])
        return self.transform(image), int(self.labels[index])


def reference_transform(info: DatasetInfo, *, augment: bool) -> transforms.Compose:
    """The original's transforms: RandomCrop(pad) + HFlip (+ ColorJitter on Tiny ImageNet), ToTensor, Normalize."""
    steps: list[object] = []
    if augment:
        steps.append(transforms.RandomCrop(info.input_size, padding=info.crop_padding))
        steps.append(transforms.RandomHorizontalFlip())
        if info.color_jitter > 0:
            j = info.color_jitter
            steps.append(transforms.ColorJitter(brightness=j, contrast=j, saturation=j))
    steps.append(transforms.ToTensor())
    steps.append(transforms.Normalize(info.mean, info.std))
    return transforms.Compose(steps)


def reference_loader(
    split: TensorSplit,
    info: DatasetInfo,
    *,
    batch_size: int,
    augment: bool,
    shuffle: bool,
    workers: int = 4,
    seed: int = 0,
) -> DataLoader:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        PILImageDataset(split, reference_transform(info, augment=augment)),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        generator=generator,
    )
