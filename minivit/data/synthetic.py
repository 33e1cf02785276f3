"""A synthetic stand-in for CIFAR-10: ten classes of drawn shapes and textures, made in memory.

Each 32×32 RGB image shows one object on a noisy, greyish background. The class says
*what* is drawn and leans the object's colour; everything else is random per image:

    0 disk      1 ring        2 square     3 triangle     4 plus
    5 h-stripes 6 v-stripes   7 checker    8 polka dots   9 target (concentric rings)

- position (centre within the middle 6×6 pixels: near the centre, as in CIFAR-10's photos)
  and size (radius 8–12 px);
- rotation, for the shapes whose identity does not depend on it (not the stripes);
- the object's hue: class k's is drawn around k/10 of the colour wheel with a spread
  (``HUE_SPREAD``) that overlaps its neighbours', so colour alone tells about half the
  images apart (a nearest-mean colour classifier: about 45 %) and the shape the rest;
  its saturation and brightness, and the background's brightness, are random;
- a smooth background gradient, Gaussian pixel noise and a soft (anti-aliased) edge;
- in 30 % of the images a small distractor blob of any colour, anywhere.

Stripes are horizontal vs vertical (a horizontal flip, the standard augmentation,
keeps every class what it is). The set exists to show that training works without
data, in minutes on a CPU: every CIFAR model of the registry passes 30 % test accuracy
after 3 epochs on 1,024 images (batch 64, the trainer's default recipe; see
tests/test_synthetic_learns.py), and none is near 100 % by then.

Everything is vectorised NumPy over the batch (one pass per class, no loop over
images), deterministic from the seed: 12,000 images take about a second.
"""
from __future__ import annotations

import numpy as np

from minivit.data.cifar10 import ImageDataset, ImageSplit

HUE_SPREAD = 0.07   # std of an object's hue around its class's, in turns (classes are 0.1 apart)
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


def _hsv_to_rgb(h, s, v):
    """(n,) hue in turns, saturation, value in [0, 1] → (n, 3, 1, 1) RGB in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0], dtype=np.float32)[None] + h[:, None] * 6) % 6     # (n, 3)
    rgb = v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1)
    return rgb[:, :, None, None].astype(np.float32)


def make_synthetic_images(labels: np.ndarray, rng: np.random.Generator, size: int = 32,
                          noise: float = 0.06, hue_spread: float = HUE_SPREAD) -> np.ndarray:
    """Draw one image per label; returns (N, 3, size, size) uint8."""
    n = len(labels)
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    centre = rng.uniform(size / 2 - 3, size / 2 + 3, size=(n, 2)).astype(np.float32)
    radius = rng.uniform(8.0, 12.0, size=n).astype(np.float32)
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

    # The object's hue leans to its class (class k around k/10 of the colour wheel, with a
    # spread that overlaps the neighbours); the background is greyish, of any brightness.
    hue = (labels / 10 + rng.normal(0, hue_spread, size=n)).astype(np.float32) % 1
    fg = _hsv_to_rgb(hue, rng.uniform(0.55, 1.0, size=n).astype(np.float32),
                     rng.uniform(0.55, 1.0, size=n).astype(np.float32))
    bg = _hsv_to_rgb(rng.uniform(0, 1, size=n).astype(np.float32), rng.uniform(0, 0.25, size=n).astype(np.float32),
                     rng.uniform(0.0, 1.0, size=n).astype(np.float32))
    # Enforce contrast: push fg away from bg where they are too close in brightness.
    diff = fg.mean(axis=1, keepdims=True) - bg.mean(axis=1, keepdims=True)
    push = np.where(diff >= 0, 1.0, -1.0) * np.maximum(0.0, 0.3 - np.abs(diff))
    bg = np.clip(bg - push, 0.0, 1.0)
    grad_dir = rng.normal(size=(n, 2)).astype(np.float32) * 0.15 / size
    gradient = (grad_dir[:, 0, None, None] * (yy - size / 2) + grad_dir[:, 1, None, None] * (xx - size / 2))[:, None]
    img = bg + gradient + alpha * (fg - bg)
    # A distractor in 30 % of the images: a small blob of any colour, anywhere.
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
