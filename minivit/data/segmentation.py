"""``shapes``: a generated semantic-segmentation set, made in memory, no download.

Each 64×64 RGB image (``size`` configurable) is a scene of 3 to 6 shapes painted one over
another (later ones occlude earlier ones) on a textured background; its mask gives
every pixel's class:

    0 background   1 disk   2 square   3 triangle   4 ring        255 ignore (borders)

What makes it a segmentation problem rather than a colouring one:

- **texture and colour say nothing about the class**: every shape and the background
  draw their texture (plain, stripes of any angle and period, a checkerboard, blotchy
  noise) and their two colours from the same distributions, so a pixel's class is known
  only from the outline of the region it lies in;
- **several sizes**: radii from 4 to 22 pixels, so a disk may cover 50 pixels or 1,500,
  and a ring's hole is background only if one sees the whole ring: the decoder has to
  combine fine maps (edges, small shapes) with coarse ones (context, big shapes);
- **overlaps**: shapes occlude each other, leaving partial outlines.

Labels come from the shapes' exact outlines (at the pixel centres); the image is drawn
with a soft (anti-aliased) edge, so pixels on a boundary are ambiguous. Those pixels
(every pixel whose 3×3 neighbourhood holds two labels: a band about two pixels wide on
each boundary) get the ignore label ``IGNORE_INDEX = 255``, as Pascal VOC marks its
object borders; the loss and the metrics skip them.

Everything is vectorised NumPy over the images (one pass per shape slot), deterministic
from the seed: images are made in chunks of 250 with their own seeds, so the first k
images are the same whatever the split's size (``--subset k``). 1,000 images of 64×64
take about a second.

    from minivit import data
    ds = data.load_dataset("shapes")                  # 4,000 train / 1,000 test
    ds.train.images, ds.train.labels                  # (4000, 3, 64, 64) uint8, (4000, 64, 64) int64
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minivit.data.augment import CIFAR10_MEAN, CIFAR10_STD, CounterRNG, normalize
from minivit.data.cifar10 import ImageDataset

IGNORE_INDEX = 255
SHAPES_CLASSES = ("background", "disk", "square", "triangle", "ring")
SHAPES_SIZES = (4000, 1000)          # train, test
CHUNK = 250          # scenes are made in chunks with their own seeds


@dataclass
class SegmentationSplit:
    """One split on the host: ``images`` (N, 3, H, W) uint8, ``labels`` (N, H, W) int64 masks with
    class indices in [0, K) or ``ignore_index``. (``labels``, not ``masks``, so that the batching of
    :class:`minivit.data.DeviceLoader` serves both tasks.)"""
    images: np.ndarray
    labels: np.ndarray
    classes: tuple
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {self.images.shape}")
        n, _, h, w = self.images.shape
        if self.labels.shape != (n, h, w):
            raise ValueError(f"masks must have shape (N, H, W) = {(n, h, w)}, got {self.labels.shape}")
        bad = (self.labels != self.ignore_index) & ((self.labels < 0) | (self.labels >= len(self.classes)))
        if bad.any():
            raise ValueError(f"mask values must lie in [0, {len(self.classes) - 1}] or be {self.ignore_index} "
                             f"(ignore), got {np.unique(self.labels[bad])[:10].tolist()}")

    def __len__(self):
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, n: int | None) -> "SegmentationSplit":
        """The first ``n`` examples (all when n is None)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise ValueError(f"subset size must be positive, got {n}")
        return SegmentationSplit(self.images[:n], self.labels[:n], self.classes, self.ignore_index)

    def stratified(self, n: int) -> "SegmentationSplit":
        """Every image holds several classes: the first ``n`` (a fixed choice, as ``subset``)."""
        return self.subset(n)


class SegmentationAugment:
    """The training augmentation of ``--task segmentation``, on the device: a random horizontal
    flip of each image *and its mask* (``hflip``), then normalisation. Drawn from (seed, epoch, step)
    by a :class:`CounterRNG`, so a resumed run replays it. Called as :class:`Augment` is, by
    :class:`minivit.data.DeviceLoader`: ``(images, masks, epoch, step) → (x, masks)``.

    ``flip_dims``: how many trailing axes are flipped, each on its own draw: 1 for images (left-right
    only), 3 for volumes (N, 1, D, H, W), whose objects are turned at random, so any mirror image of
    a volume is as likely as the volume."""

    def __init__(self, xp, hflip: bool = True, seed: int = 0, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                 flip_dims: int = 1):
        self.rng, self.hflip, self.mean, self.std = CounterRNG(xp, seed), hflip, mean, std
        self.xp, self.flip_dims = xp, flip_dims

    def __call__(self, images, masks, epoch: int, step: int, first: int = 0):
        xp = self.xp
        for k in range(self.flip_dims if self.hflip else 0):   # first: the shard's place in the global batch
            flip = self.rng.at(first).uniform((len(images),), epoch, step, 7 + k) < 0.5             # (B,)
            axis = -1 - k
            images = xp.where(flip.reshape((-1,) + (1,) * (images.ndim - 1)), xp.flip(images, axis), images)
            masks = xp.where(flip.reshape((-1,) + (1,) * (masks.ndim - 1)), xp.flip(masks, axis), masks)
        return normalize(images, self.mean, self.std), masks


def _texture(rng, n: int, yy, xx):
    """(n, H, W) float32 textures in [0, 1], one per image: plain, stripes, checkerboard or blotches."""
    kind = rng.integers(0, 4, size=n)[:, None, None]
    angle = rng.uniform(0, np.pi, size=n).astype(np.float32)[:, None, None]
    period = rng.uniform(3.0, 10.0, size=n).astype(np.float32)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, size=n).astype(np.float32)[:, None, None]
    t = (np.cos(angle) * xx + np.sin(angle) * yy) * (2 * np.pi / period) + phase      # (n, H, W)
    t2 = (-np.sin(angle) * xx + np.cos(angle) * yy) * (2 * np.pi / period)
    stripes = (np.sin(t) > 0).astype(np.float32)
    checker = ((np.sin(t) > 0) ^ (np.sin(t2) > 0)).astype(np.float32)
    blotch = 0.5 + 0.25 * (np.sin(t * 0.7) + np.sin(t2 * 0.9 + phase))                 # smooth noise
    tex = np.where(kind == 0, np.float32(0), np.where(kind == 1, stripes, np.where(kind == 2, checker, blotch)))
    return tex.astype(np.float32)


def _coloured(rng, n: int, tex):
    """Two random colours per image mixed by the texture → (n, 3, H, W) float32 in [0, 1]."""
    c1 = rng.uniform(0, 1, size=(n, 3, 1, 1)).astype(np.float32)
    c2 = rng.uniform(0, 1, size=(n, 3, 1, 1)).astype(np.float32)
    return c1 + tex[:, None] * (c2 - c1)


def _signed_distance(kind: int, u, v):
    """Signed distance (< 0 inside, in units of the shape's radius) of shape ``kind`` (1..4)."""
    if kind == 1:                                     # disk
        return np.sqrt(u * u + v * v) - 1.0
    if kind == 2:                                     # square
        return np.maximum(np.abs(u), np.abs(v)) - 0.8
    if kind == 3:                                     # triangle: three half-planes
        d1 = -v - 0.5
        d2 = 0.866 * u + 0.5 * v - 0.5
        d3 = -0.866 * u + 0.5 * v - 0.5
        return np.maximum(np.maximum(d1, d2), d3) * 1.4
    if kind == 4:                                     # ring: the annulus 0.55 < r < 1
        return np.abs(np.sqrt(u * u + v * v) - 0.775) - 0.225
    raise ValueError(f"no shape kind {kind}")


def ignore_borders(masks: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``masks`` (N, H, W) with every pixel whose 3×3 neighbourhood holds two labels set to ignore."""
    p = np.pad(masks, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = masks.shape[1:]
    border = np.zeros(masks.shape, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            border |= p[:, dy:dy + h, dx:dx + w] != masks
    return np.where(border, ignore_index, masks)


def make_shapes_scenes(rng: np.random.Generator, n: int, size: int = 64, max_shapes: int = 6,
                       noise: float = 0.04, ignore: bool = True):
    """``n`` scenes → (images (n, 3, size, size) uint8, masks (n, size, size) int64);
    ``ignore=False``: the masks without the ignore label on the borders."""
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    img = _coloured(rng, n, _texture(rng, n, yy, xx))                  # (n, 3, H, W) background
    mask = np.zeros((n, size, size), dtype=np.int64)
    count = rng.integers(3, max_shapes + 1, size=n)                    # shapes per image
    scale = size / 64
    for slot in range(max_shapes):                                     # painter's order
        kind = rng.integers(1, len(SHAPES_CLASSES), size=n)
        radius = (rng.uniform(4.0, 22.0, size=n) * scale).astype(np.float32)
        centre = rng.uniform(0, size, size=(n, 2)).astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi, size=n).astype(np.float32)
        fg = _coloured(rng, n, _texture(rng, n, yy, xx))               # (n, 3, H, W)
        dy = yy[None] - centre[:, 0, None, None]                        # (n, H, W)
        dx = xx[None] - centre[:, 1, None, None]
        c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
        r = radius[:, None, None]
        u, v = (c * dx + s * dy) / r, (-s * dx + c * dy) / r
        dist = np.empty((n, size, size), dtype=np.float32)
        for k in range(1, len(SHAPES_CLASSES)):                         # one vectorised pass per kind
            idx = np.flatnonzero(kind == k)
            dist[idx] = _signed_distance(k, u[idx], v[idx])
        present = (slot < count)[:, None, None]                         # (n, 1, 1)
        alpha = np.clip(0.5 - dist * r, 0.0, 1.0) * present             # soft edge, about a pixel wide
        img = img + alpha[:, None] * (fg - img)
        mask = np.where((dist < 0) & present, kind[:, None, None], mask)
    img = img + rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(noise)
    images = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return images, ignore_borders(mask) if ignore else mask


def shapes_split(n: int, seed, size: int = 64) -> SegmentationSplit:
    """``n`` scenes, deterministic from ``seed``; the first ``k`` are the same whatever ``n`` is."""
    if n <= 0:
        raise ValueError(f"a shapes split needs at least one image, got n={n}")
    if size < 16:
        raise ValueError(f"shapes images must be at least 16×16, got size={size}")
    seeds = np.random.SeedSequence(seed).spawn((n + CHUNK - 1) // CHUNK)
    images, masks = [], []
    for chunk_seed in seeds:                  # whole chunks, so image i does not depend on n
        im, m = make_shapes_scenes(np.random.default_rng(chunk_seed), CHUNK, size)
        images.append(im)
        masks.append(m)
    return SegmentationSplit(np.concatenate(images)[:n], np.concatenate(masks)[:n], SHAPES_CLASSES)


def load_shapes(n_train: int = SHAPES_SIZES[0], n_test: int = SHAPES_SIZES[1], seed: int = 0,
                size: int = 64) -> ImageDataset:
    """The shapes train and test splits (independent draws, both from ``seed``)."""
    return ImageDataset(shapes_split(n_train, [seed, 0], size), shapes_split(n_test, [seed, 1], size),
                        "shapes", f"generated in memory (seed {seed}, {size}×{size})")
