"""``volumes``: a generated 3-D segmentation set (UNETR's task, in miniature), made in memory.

Each volume (1 channel, 32³ by default) holds 2 to 5 solid objects in noise, painted one over
another (later ones occlude earlier ones); its label volume gives every voxel's class:

    0 background   1 sphere   2 rod (prolate ellipsoid)   3 disc (oblate ellipsoid)

- **shape** is what tells the classes apart for sure: a sphere (radius 4–8 voxels), a rod (two
  short semi-axes 2.5–4, a long one 2.2–3× longer) and a disc (one short semi-axis 2–3, two long
  ones 3–4× longer), the ellipsoids turned by a random rotation;
- **intensity** helps but overlaps: class k's objects draw their brightness around
  ``CLASS_INTENSITY[k]`` with a spread (``INTENSITY_SPREAD``) close to the classes' spacing, as
  organs in CT do; the background has a smooth random gradient (a "bias field");
- Gaussian voxel noise on everything, and a soft (partial-volume) edge one voxel wide.

Labels come from the exact surfaces at the voxel centres. Volumes are uint8 (N, 1, D, H, W)
(brightness 0–1 → 0–255, as the image sets; ``to_float`` gives the network's input in [−1, 1])
and labels int64 (N, D, H, W).

Everything is vectorised NumPy over a chunk of volumes (one pass per object slot, no loop over
volumes or voxels), deterministic from the seed: volumes are made in chunks of ``CHUNK`` with
their own seeds, so the first k volumes are the same whatever the split's size.

    from minivit.data.volumes import load_volumes
    ds = load_volumes(256, 64)                      # 32³ volumes
    ds.train.images, ds.train.labels                # (256, 1, 32, 32, 32) uint8, (256, 32, 32, 32) int64
    brightness_rule(ds.test.images)                 # the yardstick: each voxel's class by its brightness alone

The trainer's ``--dataset volumes`` is this set: 512 train / 128 test volumes (``VOLUMES_SIZES``), the
first N with ``--subset N`` / ``--test-subset N``, cubes of ``--volume-size`` (32 by default).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minivit.data.cifar10 import ImageDataset
from minivit.data.segmentation import IGNORE_INDEX

VOLUME_CLASSES = ("background", "sphere", "rod", "disc")
CLASS_INTENSITY = (0.25, 0.55, 0.65, 0.75)   # mean brightness per class (background: of its field)
INTENSITY_SPREAD = 0.07                      # std of an object's brightness around its class's
NOISE = 0.08                                 # std of the Gaussian voxel noise
CHUNK = 32                                   # volumes per chunk (own seed each)
VOLUMES_SIZES = (512, 128)                   # train, test volumes of ``--dataset volumes``
VOLUME_MEAN, VOLUME_STD = (0.5,), (0.5,)     # the trainer's normalisation: brightness·2 − 1 (``to_float``)


@dataclass
class VolumeSplit:
    """One split on the host: ``images`` (N, 1, D, H, W) uint8 volumes, ``labels`` (N, D, H, W) int64
    per-voxel classes in [0, len(classes)). (``images`` and ``labels``: the names the 2-D splits use.)"""
    images: np.ndarray
    labels: np.ndarray
    classes: tuple = VOLUME_CLASSES
    ignore_index: int = IGNORE_INDEX          # no voxel carries it: every voxel is labelled

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 5 or self.images.shape[1] != 1:
            raise ValueError(f"volumes must be uint8 (N, 1, D, H, W), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0], *self.images.shape[2:]):
            raise ValueError(f"labels must have shape {(self.images.shape[0], *self.images.shape[2:])}, "
                             f"got {self.labels.shape}")

    def __len__(self):
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, n: int | None) -> "VolumeSplit":
        return self if n is None else VolumeSplit(self.images[:n], self.labels[:n], self.classes)

    stratified = subset                       # every volume holds several classes: the first n


def _rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """n uniformly random 3-D rotation matrices (n, 3, 3), from QR of Gaussian matrices."""
    q, r = np.linalg.qr(rng.standard_normal((n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]     # unique QR: Haar-distributed
    q[:, :, 0] *= np.sign(np.linalg.det(q))[:, None]                   # det +1: a rotation
    return q


def _semi_axes(rng: np.random.Generator, cls: np.ndarray) -> np.ndarray:
    """Semi-axes (n, 3) in voxels for each object's class (1 sphere, 2 rod, 3 disc)."""
    n = len(cls)
    sphere = np.repeat(rng.uniform(4.0, 8.0, (n, 1)), 3, axis=1)
    short = rng.uniform(2.5, 4.0, (n, 1))
    rod = np.concatenate([short, short, short * rng.uniform(2.2, 3.0, (n, 1))], axis=1)
    thin = rng.uniform(2.0, 3.0, (n, 1))
    wide = thin * rng.uniform(3.0, 4.0, (n, 1))
    disc = np.concatenate([wide, wide, thin], axis=1)
    return np.where((cls == 1)[:, None], sphere, np.where((cls == 2)[:, None], rod, disc))


def make_volumes(rng: np.random.Generator, n: int, size: int = 32, min_objects: int = 2, max_objects: int = 5):
    """n volumes (n, 1, size³) uint8 and their labels (n, size³) int64, drawn from ``rng``."""
    if size < 16:
        raise ValueError(f"make_volumes: size must be at least 16 voxels, got {size}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"make_volumes: need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    grid = np.stack(np.meshgrid(*(np.arange(size, dtype=np.float32),) * 3, indexing="ij"), -1)  # (S, S, S, 3)
    pts = grid.reshape(-1, 3)                                                                   # (V, 3)
    # background: a smooth field (constant + a random linear gradient) around class 0's brightness
    slope = rng.normal(0, 0.1, (n, 3)).astype(np.float32) / size
    level = rng.normal(CLASS_INTENSITY[0], 0.04, (n, 1)).astype(np.float32)
    img = level + slope @ (pts - size / 2).T                                                    # (n, V)
    labels = np.zeros((n, pts.shape[0]), dtype=np.int64)
    count = rng.integers(min_objects, max_objects + 1, n)
    for slot in range(max_objects):
        cls = rng.integers(1, len(VOLUME_CLASSES), n)
        axes = _semi_axes(rng, cls).astype(np.float32)                                      # (n, 3)
        margin = axes.max(axis=1, keepdims=True) * 0.6
        centre = rng.uniform(0, 1, (n, 3)).astype(np.float32) * (size - 1 - 2 * margin) + margin
        rot = _rotations(rng, n).astype(np.float32)                                         # (n, 3, 3)
        bright = (np.asarray(CLASS_INTENSITY, np.float32)[cls]
                  + rng.normal(0, INTENSITY_SPREAD, n).astype(np.float32))
        active = slot < count                                                               # (n,)
        # the object's frame: u = Rᵀ(p − c) / a; inside where |u| ≤ 1
        u = ((pts[None] - centre[:, None]) @ rot) / axes[:, None]                          # (n, V, 3)
        r = np.sqrt((u * u).sum(-1))                                                        # (n, V)
        inside = (r <= 1.0) & active[:, None]
        labels[inside] = np.broadcast_to(cls[:, None], inside.shape)[inside]
        # partial volume: about one voxel of soft edge (the radius scaled by the shortest axis)
        alpha = np.clip((1.0 - r) * axes.min(axis=1, keepdims=True) + 0.5, 0.0, 1.0) * active[:, None]
        img = img * (1 - alpha) + bright[:, None] * alpha
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(NOISE)
    vol = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return vol.reshape(n, 1, size, size, size), labels.reshape(n, size, size, size)


def volume_split(n: int, seed, size: int = 32) -> VolumeSplit:
    """n volumes made chunk by chunk, chunk i from ``default_rng([seed, i])``."""
    vols, labs = [], []
    for i in range(-(-n // CHUNK)):
        k = min(CHUNK, n - i * CHUNK)                 # a whole chunk is drawn, so volume j never depends on n
        v, lab = make_volumes(np.random.default_rng([seed, i]), CHUNK, size)
        vols.append(v[:k])
        labs.append(lab[:k])
    if not vols:
        return VolumeSplit(np.zeros((0, 1, size, size, size), np.uint8), np.zeros((0, size, size, size), np.int64))
    return VolumeSplit(np.concatenate(vols), np.concatenate(labs))


def load_volumes(n_train: int = 512, n_test: int = 128, size: int = 32, seed: int = 0) -> ImageDataset:
    """The ``volumes`` set: train and test splits from different seeds (2·seed and 2·seed + 1)."""
    if size % 16:
        raise ValueError(f"load_volumes: size must be a multiple of 16 (UNETR's patch), got {size}")
    train, test = volume_split(n_train, 2 * seed, size), volume_split(n_test, 2 * seed + 1, size)
    return ImageDataset(train, test, "volumes",
                        f"generated {size}³ volumes: spheres, rods and discs in noise (seed {seed})")


def to_float(volumes, xp=np):
    """uint8 volumes → float32 network input in [−1, 1] (brightness·2 − 1)."""
    return xp.asarray(volumes).astype(np.float32) * np.float32(2 / 255) - np.float32(1)


def brightness_rule(volumes) -> np.ndarray:
    """The yardstick a model has to beat: each voxel's class is the one whose mean brightness
    (``CLASS_INTENSITY``) is nearest to the voxel's, one voxel at a time, blind to shape.
    uint8 volumes (N, 1, D, H, W) → class indices (N, D, H, W)."""
    return np.abs(np.asarray(volumes)[:, 0, ..., None] / 255 - np.asarray(CLASS_INTENSITY)).argmin(-1)
