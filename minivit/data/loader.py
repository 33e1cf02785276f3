"""Batches made on the device: the whole uint8 split is moved there once, then every batch is
an index gather plus the augmentations of :mod:`minivit.data.augment`.

CIFAR-10 is 150 MB as uint8, so it fits on any GPU; batching there means no
host→device copy per step (and no Python worker processes). The shuffle of
epoch ``e`` is a permutation drawn from ``(seed, e)`` on the host and copied
over once per epoch, so it is the same after a resume.
"""
from __future__ import annotations

import numpy as np

from minivit import backend
from minivit.data.augment import CIFAR10_MEAN, CIFAR10_STD, Augment, normalize
from minivit.data.cifar10 import ImageSplit


class DeviceLoader:
    """Iterate over ``(x, target, labels)`` batches of a split, on ``device``.

    ``x`` is float32 (B, 3, H, W), normalised; ``target`` is what the loss takes
    (the labels, or soft targets with mixup/cutmix); ``labels`` the int64 labels.
    Training loaders (``shuffle=True``) drop the last incomplete batch, so every
    step sees ``batch_size`` images (steady BatchNorm statistics, one compiled shape).
    """

    def __init__(self, split: ImageSplit, device: str, batch_size: int, *, shuffle: bool = False,
                 augment: Augment | None = None, seed: int = 0, mean=CIFAR10_MEAN, std=CIFAR10_STD):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if shuffle and len(split) < batch_size:
            raise ValueError(f"the training split has {len(split)} images, fewer than one batch of "
                             f"{batch_size}: lower --batch-size or raise --subset")
        self.device, self.batch_size, self.shuffle = device, batch_size, shuffle
        self.augment, self.seed, self.mean, self.std = augment, seed, mean, std
        self.n = len(split)
        self.images = backend.to_device(np.ascontiguousarray(split.images), device)   # once
        self.labels = backend.to_device(split.labels, device)
        self.xp = backend.xp_for(device)

    def __len__(self) -> int:
        """Steps per epoch."""
        return self.n // self.batch_size if self.shuffle else -(-self.n // self.batch_size)

    def order(self, epoch: int):
        """The example order of an epoch, on the device."""
        if not self.shuffle:
            return self.xp.arange(self.n)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return backend.to_device(perm, self.device)

    def batches(self, epoch: int = 0, start_step: int = 0):
        """Yield the batches of ``epoch`` from step ``start_step`` on (to resume mid-epoch)."""
        order = self.order(epoch)
        bs = self.batch_size
        for step in range(start_step, len(self)):
            idx = order[step * bs:(step + 1) * bs]
            images, labels = self.images[idx], self.labels[idx]
            if self.augment is not None:
                x, target = self.augment(images, labels, epoch, step)
            else:
                x, target = normalize(images, self.mean, self.std), labels
            yield x, target, labels
