"""A synthetic stand-in for CIFAR-10: ten classes of drawn shapes and textures, made in memory.

Each 32×32 RGB image shows one object on a noisy background. The class says
*what* is drawn; everything else is random per image, so no single pixel,
colour or position gives the class away:

    0 disk      1 ring        2 square     3 triangle     4 plus
    5 h-stripes 6 v-stripes   7 checker    8 polka dots   9 target (concentric rings)

- position (centre anywhere in the middle 14×14 pixels) and size (radius 6–12 px);
- rotation, for the shapes whose identity does not depend on it (not the stripes);
- foreground and background colours, drawn independently (with a minimum contrast);
- a smooth background gradient, Gaussian pixel noise and a soft (anti-aliased) edge;
- in 30 % of the images a small distractor blob of a third colour, anywhere.

Stripes are horizontal vs vertical (a horizontal flip, the standard augmentation,
keeps every class what it is). Textures (stripes, checks, dots, targets) are
learnt first; telling the solid shapes apart regardless of colour takes longer.
A ResNet-8 of width 8 gets about 35 % after two epochs on 1,000 images (chance:
10 %), so the set shows learning within seconds but is far from solved by then.

Everything is vectorised NumPy over the batch (one pass per class, no loop over
images), deterministic from the seed: 12,000 images take about a second.
"""
from __future__ import annotations

import numpy as np

from minivit.data.cifar10 import ImageDataset, ImageSplit

SYNTHETIC_CLASSES = ("disk", "ring", "square", "triangle", "plus",
                     "h-stripes", "v-stripes", "checker", "dots", "target")


def _masks(label: int, u, v, freq):
    """Soft-edged class shape: signed distance d (<0 inside, in units of the object's radius).

    u, v: (n, H, W) coordinates in the object's frame, radius 1; freq: (n, 1, 1) stripe frequency.
    """
    r = np.sqrt(u * u + v * v)
    if label == 0:                                    # disk
        return r - 1.0
    if label == 1:                                    # ring of width 0.45
        return np.abs(r - 0.75) - 0.22
    if label == 2:                                    # square
        return np.maximum(np.abs(u), np.abs(v)) - 0.8
    if label == 3:                                    # triangle, apex up: three half-planes
        d1 = -v - 0.5                                 # above the base
        d2 = 0.866 * u + 0.5 * v - 0.5                # the two slanted sides
        d3 = -0.866 * u + 0.5 * v - 0.5
        return np.maximum(np.maximum(d1, d2), d3) * 1.4
    if label == 4:                                    # plus: union of two bars
        bar1 = np.maximum(np.abs(u) - 0.95, np.abs(v) - 0.28)
        bar2 = np.maximum(np.abs(v) - 0.95, np.abs(u) - 0.28)
        return np.minimum(bar1, bar2)
    if label in (5, 6):                               # stripes inside a disk
        t = v if label == 5 else u
        stripes = np.sin(t * freq) * 0.35             # >0 on the dark stripes
        return np.maximum(r - 1.0, stripes)
    if label == 7:                                    # checkerboard inside a square
        checks = np.sin(u * freq) * np.sin(v * freq) * 0.35
        return np.maximum(np.maximum(np.abs(u), np.abs(v)) - 0.85, checks)
    if label == 8:                                    # polka dots inside a disk
        dots = np.sqrt(np.sin(u * freq * 0.5) ** 2 + np.sin(v * freq * 0.5) ** 2) - 0.6
        return np.maximum(r - 1.0, dots * 0.5)
    if label == 9:                                    # concentric rings (a target)
        return np.maximum(r - 1.0, np.sin(r * freq) * 0.35)
    raise ValueError(f"no synthetic class {label}")


def make_synthetic_images(labels: np.ndarray, rng: np.random.Generator, size: int = 32,
                          noise: float = 0.06) -> np.ndarray:
    """Draw one image per label; returns (N, 3, size, size) uint8."""
    n = len(labels)
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    centre = rng.uniform(size / 2 - 7, size / 2 + 7, size=(n, 2)).astype(np.float32)
    radius = rng.uniform(6.0, 12.0, size=n).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi, size=n).astype(np.float32)
    jitter = rng.uniform(-0.25, 0.25, size=n).astype(np.float32)       # stripes: ±15° only
    freq = rng.uniform(2.6, 4.0, size=n).astype(np.float32) * np.pi    # stripe frequency (per radius)
    stripe_class = (labels == 5) | (labels == 6)
    angle = np.where(stripe_class, jitter, angle)

    # Object frame: translate to the centre, rotate, scale to radius 1.
    dy = yy[None] - centre[:, 0, None, None]                            # (n, H, W)
    dx = xx[None] - centre[:, 1, None, None]
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (c * dx + s * dy) / radius[:, None, None]
    v = (-s * dx + c * dy) / radius[:, None, None]

    dist = np.empty((n, size, size), dtype=np.float32)
    for k in np.unique(labels):                                         # one vectorised pass per class
        idx = np.flatnonzero(labels == k)
        dist[idx] = _masks(int(k), u[idx], v[idx], freq[idx, None, None])
    # Soft edge about one pixel wide: distance in pixels through a clipped ramp.
    alpha = np.clip(0.5 - dist * radius[:, None, None], 0.0, 1.0)[:, None]   # (n, 1, H, W)

    bg = rng.uniform(0.0, 1.0, size=(n, 3, 1, 1)).astype(np.float32)
    fg = rng.uniform(0.0, 1.0, size=(n, 3, 1, 1)).astype(np.float32)
    # Enforce contrast: push fg away from bg where they are too close in brightness.
    diff = fg.mean(axis=1, keepdims=True) - bg.mean(axis=1, keepdims=True)
    push = np.where(diff >= 0, 1.0, -1.0) * np.maximum(0.0, 0.35 - np.abs(diff))
    fg = np.clip(fg + push, 0.0, 1.0)
    grad_dir = rng.normal(size=(n, 2)).astype(np.float32) * 0.15 / size
    gradient = (grad_dir[:, 0, None, None] * (yy - size / 2) + grad_dir[:, 1, None, None] * (xx - size / 2))[:, None]
    img = bg + gradient + alpha * (fg - bg)
    # A distractor in half of the images: a small blob of a third colour, anywhere.
    blob_c = rng.uniform(2, size - 2, size=(n, 2)).astype(np.float32)
    blob_r = rng.uniform(1.5, 3.5, size=n).astype(np.float32)
    blob_d = np.sqrt((yy[None] - blob_c[:, 0, None, None]) ** 2 + (xx[None] - blob_c[:, 1, None, None]) ** 2)
    blob_a = np.clip(blob_r[:, None, None] + 0.5 - blob_d, 0.0, 1.0)[:, None] * (rng.random(n) < 0.3)[:, None, None, None]
    blob_col = rng.uniform(0.0, 1.0, size=(n, 3, 1, 1)).astype(np.float32)
    img = img + blob_a * (blob_col - img)
    img = img + rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(noise)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


CHUNK = 1000  # images are made in chunks with their own seeds: image i does not depend on n


def synthetic_split(n: int, seed, num_classes: int = 10) -> ImageSplit:
    """``n`` images, deterministic from ``seed``; labels balanced and shuffled within each chunk
    of 1,000, so the first ``k`` images are the same whatever ``n`` is (``--subset k``)."""
    if n <= 0:
        raise ValueError(f"a synthetic split needs at least one image, got n={n}")
    seeds = np.random.SeedSequence(seed).spawn((n + CHUNK - 1) // CHUNK)
    images, labels = [], []
    for chunk_seed in seeds:
        rng = np.random.default_rng(chunk_seed)
        y = rng.permutation(np.arange(CHUNK) % num_classes).astype(np.int64)
        images.append(make_synthetic_images(y, rng))
        labels.append(y)
    images, labels = np.concatenate(images)[:n], np.concatenate(labels)[:n]
    return ImageSplit(images, labels, SYNTHETIC_CLASSES[:num_classes])


def load_synthetic(n_train: int = 10000, n_test: int = 2000, seed: int = 0) -> ImageDataset:
    """The synthetic train and test splits (independent draws, both from ``seed``)."""
    return ImageDataset(synthetic_split(n_train, [seed, 0]), synthetic_split(n_test, [seed, 1]),
                        "synthetic", f"generated in memory (seed {seed})")
