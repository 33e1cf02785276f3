"""Batches made on the device: the whole uint8 split is moved there once, then every batch is
an index gather plus the augmentations of :mod:`minivit.data.augment`.

CIFAR-10 is 150 MB as uint8, so it fits on any GPU; batching there means no
host→device copy per step (and no Python worker processes). The shuffle of
epoch ``e`` is a permutation drawn from ``(seed, e)`` on the host and copied
over once per epoch, so it is the same after a resume.

Data parallelism (``rank``, ``world``): every rank draws the same permutation. A training
loader's ``batch_size`` is the *global* batch; rank r gets its contiguous part, images
r·b/N … (r+1)·b/N − 1 of each step's global batch, so the ranks' parts of an epoch are
disjoint and cover it (as one process's batches would), and the augmentation draws per image
what one process draws for it. An evaluation loader gives rank r the r-th contiguous
part of the split; the ranks' sums add up to the whole split's.
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

    ``rank``/``world``: this process's part in a data-parallel run (see the module's text).
    ``n`` stays the whole split's size; ``n_local`` is this rank's share of it (of the
    images it sees per epoch, for a training loader: ``len(self)·batch_size/world``).
    """

    def __init__(self, split: ImageSplit, device: str, batch_size: int, *, shuffle: bool = False,
                 augment: Augment | None = None, seed: int = 0, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                 rank: int = 0, world: int = 1):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world), got rank {rank} of {world}")
        if shuffle and len(split) < batch_size:
            raise ValueError(f"the training split has {len(split)} images, fewer than one batch of "
                             f"{batch_size}: lower --batch-size or raise --subset")
        if shuffle and batch_size % world:
            raise ValueError(f"the global batch of {batch_size} does not split evenly over {world} ranks: "
                             f"make --batch-size a multiple of {world}")
        self.device, self.batch_size, self.shuffle = device, batch_size, shuffle
        self.augment, self.seed, self.mean, self.std = augment, seed, mean, std
        self.rank, self.world = rank, world
        self.n = len(split)
        # an evaluation loader's part of the split: images lo … hi − 1
        self._lo, self._hi = (0, self.n) if shuffle else (rank * self.n // world, (rank + 1) * self.n // world)
        self.images = backend.to_device(np.ascontiguousarray(split.images), device)   # once
        self.labels = backend.to_device(split.labels, device)
        self.xp = backend.xp_for(device)

    @property
    def n_local(self) -> int:
        if self.shuffle:
            return len(self) * (self.batch_size // self.world)
        return self._hi - self._lo

    def __len__(self) -> int:
        """Steps per epoch (of global batches, for a training loader)."""
        if self.shuffle:
            return self.n // self.batch_size
        return -(-self.n_local // self.batch_size)

    def order(self, epoch: int):
        """The example order of an epoch, on the device (an evaluation loader: this rank's part)."""
        if not self.shuffle:
            return self.xp.arange(self._lo, self._hi)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return backend.to_device(perm, self.device)

    def batches(self, epoch: int = 0, start_step: int = 0):
        """Yield the batches of ``epoch`` from step ``start_step`` on (to resume mid-epoch);
        with ``world`` > 1, a training loader yields this rank's part of each global batch."""
        order = self.order(epoch)
        bs = self.batch_size
        per = bs // self.world if self.shuffle else bs
        first = self.rank * per if self.shuffle else 0        # the part's place in the global batch
        for step in range(start_step, len(self)):
            idx = order[step * bs + first:step * bs + first + per]
            images, labels = self.images[idx], self.labels[idx]
            if self.augment is not None:
                x, target = self.augment(images, labels, epoch, step, first)
            else:
                x, target = normalize(images, self.mean, self.std), labels
            yield x, target, labels
