"""Generated motion clips: the label is which way a shape moves, and nothing else tells it.

Each clip is T frames (default 8) of a size×size RGB picture (default 32×32): one shape
(square, disk, plus, ring or triangle; 5-9 px) of a random bright colour on a dark grey
background with Gaussian pixel noise, moving horizontally at 1 or 2 px a frame on a torus
(what leaves one edge comes back at the other):

    label 0  "right"
    label 1  "left"

Shape, colour, size, background and speed are drawn independently of the label, and the
starting position is uniform over all size² pixels. Two consequences, by construction:

* **One frame says nothing about the label.** Frame t shows the shape at start + t·v (mod size):
  a uniform start makes that position uniform whatever v is, and everything else in the frame
  is label-free, so every frame has the same distribution under both labels. A model that sees
  one frame cannot beat chance (50 %).
* **Neither does the set of frames.** A clip of label 1 played backwards is a clip of label 0
  (same shape, colour and speed, starting where the other ended, noise in reverse order), and
  both are equally likely. So any model that treats the frames as an unordered set — one that
  attends only in space and averages its frames, as TimeSformer's space-only variant — sees the
  same distribution under both labels and stays at chance too. Only the *order* of the frames
  carries the label: attention across time (divided or joint) can read it.

Why two labels and not four directions: up/down/left/right would let a frame-set model tell
the axis (a horizontal streak of positions from a vertical one) and reach 50 % of four
classes; right/left keeps both claims exact.

Everything is vectorised NumPy (no loop over clips or frames) and deterministic from the seed;
clips are made in chunks of 1,000 with their own seeds, so the first k clips do not depend on
how many are made.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MOTION_CLASSES = ("right", "left")
SHAPES = ("square", "disk", "plus", "ring", "triangle")
CHUNK = 1000


@dataclass
class ClipSplit:
    """One split of clips on the host: ``clips`` (N, T, 3, H, W) uint8, ``labels`` (N,) int64."""
    clips: np.ndarray
    labels: np.ndarray
    classes: tuple

    def __post_init__(self):
        if self.clips.dtype != np.uint8 or self.clips.ndim != 5 or self.clips.shape[2] != 3:
            raise ValueError(f"clips must be uint8 (N, T, 3, H, W), got {self.clips.dtype} {self.clips.shape}")
        if self.labels.shape != (len(self.clips),):
            raise ValueError(f"labels must have shape ({len(self.clips)},), got {self.labels.shape}")

    def __len__(self):
        return len(self.labels)

    @property
    def images(self):            # the name the trainer's loaders use for the inputs
        return self.clips

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def stratified(self, n: int) -> "ClipSplit":
        """``n`` clips, each class in proportion to its share: the first ones of each class, in order."""
        if n >= len(self):
            return self
        if n <= 0:
            raise ValueError(f"subset size must be positive, got {n}")
        counts = np.bincount(self.labels, minlength=self.num_classes)
        rank = np.empty(len(self), dtype=np.int64)
        for c in range(self.num_classes):
            rank[self.labels == c] = np.arange(counts[c])
        keep = np.sort(np.lexsort((self.labels, rank / counts[self.labels]))[:n])
        return ClipSplit(self.clips[keep], self.labels[keep], self.classes)

    def subset(self, n: int | None) -> "ClipSplit":
        """The first ``n`` clips (all when n is None)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise ValueError(f"subset size must be positive, got {n}")
        return ClipSplit(self.clips[:n], self.labels[:n], self.classes)


def sprite(kind: str, k: int) -> np.ndarray:
    """A k×k boolean mask of one shape."""
    yy, xx = np.meshgrid(np.arange(k) - (k - 1) / 2, np.arange(k) - (k - 1) / 2, indexing="ij")
    r = np.sqrt(yy ** 2 + xx ** 2)
    if kind == "square":
        return np.ones((k, k), dtype=bool)
    if kind == "disk":
        return r <= k / 2
    if kind == "plus":
        return (np.abs(yy) <= k / 6) | (np.abs(xx) <= k / 6)
    if kind == "ring":
        return (r <= k / 2) & (r >= k / 2 - 1.5)
    if kind == "triangle":                                    # apex up
        return np.abs(xx) <= (yy + (k - 1) / 2) / 2 + 0.5
    raise ValueError(f"sprite: unknown shape {kind!r}; choose one of {SHAPES}")


def render_clips(masks: np.ndarray, starts: np.ndarray, velocities: np.ndarray, fg: np.ndarray, bg: np.ndarray,
                 noise: np.ndarray) -> np.ndarray:
    """Draw n clips of T frames, the shape translated on the torus.

    masks (n, S, S) bool: each shape at the top-left corner of an S×S canvas; starts (n, 2) and
    velocities (n, 2) int (row, column) pixels; fg (n, 3), bg (n,) in [0, 1]; noise (n, T, 3, S, S).
    Frame t shows the mask shifted by starts + t·velocities (mod S). Returns (n, T, 3, S, S) uint8.
    """
    n, S, _ = masks.shape
    T = noise.shape[1]
    shift = (starts[:, None, :] + np.arange(T)[None, :, None] * velocities[:, None, :]) % S      # (n, T, 2)
    ar = np.arange(S)
    rows = (ar[None, None, :] - shift[:, :, :1]) % S                                          # (n, T, S)
    cols = (ar[None, None, :] - shift[:, :, 1:]) % S
    alpha = masks[np.arange(n)[:, None, None, None], rows[:, :, :, None], cols[:, :, None, :]]  # (n, T, S, S)
    alpha = alpha[:, :, None].astype(np.float32)                                              # (n, T, 1, S, S)
    img = bg[:, None, None, None, None] + alpha * (fg[:, None, :, None, None] - bg[:, None, None, None, None])
    img = img + noise
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def make_motion_clips(labels: np.ndarray, rng: np.random.Generator, num_frames: int = 8, size: int = 32,
                      noise: float = 0.05) -> np.ndarray:
    """One clip per label (0 right, 1 left); returns (n, num_frames, 3, size, size) uint8."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 1):
        raise ValueError(f"make_motion_clips: labels must be 0 (right) or 1 (left), got "
                         f"[{labels.min()}, {labels.max()}]")
    n = len(labels)
    kinds = rng.integers(0, len(SHAPES), n)
    sizes = rng.integers(5, 10, n)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):                        # a few hundred distinct sprites: cheap
        k = int(sizes[i])
        masks[i, :k, :k] = sprite(SHAPES[kinds[i]], k)
    starts = rng.integers(0, size, (n, 2))                                # uniform over the torus
    speed = rng.integers(1, 3, n)                                         # 1 or 2 px a frame
    velocities = np.zeros((n, 2), dtype=np.int64)                         # (rows, columns)
    velocities[:, 1] = (1 - 2 * labels) * speed                           # right +, left −
    hue = rng.uniform(0, 1, n)
    k = (np.array([5.0, 3.0, 1.0])[None] + hue[:, None] * 6) % 6           # HSV → RGB, saturation 0.8
    value = rng.uniform(0.7, 1.0, n)[:, None]
    fg = (value - value * 0.8 * np.clip(np.minimum(k, 4 - k), 0, 1)).astype(np.float32)
    bg = rng.uniform(0.0, 0.3, n).astype(np.float32)
    pixel_noise = rng.standard_normal((n, num_frames, 3, size, size), dtype=np.float32) * np.float32(noise)
    return render_clips(masks, starts, velocities, fg, bg, pixel_noise)


def motion_split(n: int, seed, num_frames: int = 8, size: int = 32) -> ClipSplit:
    """``n`` clips, deterministic from ``seed``, labels balanced and shuffled within each chunk of
    1,000, so the first k clips are the same whatever ``n`` is."""
    if n <= 0:
        raise ValueError(f"a motion split needs at least one clip, got n={n}")
    clips, labels = [], []
    for chunk_seed in np.random.SeedSequence(seed).spawn((n + CHUNK - 1) // CHUNK):
        rng = np.random.default_rng(chunk_seed)
        y = rng.permutation(np.arange(CHUNK) % 2).astype(np.int64)
        clips.append(make_motion_clips(y, rng, num_frames, size))
        labels.append(y)
    return ClipSplit(np.concatenate(clips)[:n], np.concatenate(labels)[:n], MOTION_CLASSES)


def load_motion(n_train: int = 4000, n_test: int = 1000, seed: int = 0, num_frames: int = 8, size: int = 32):
    """The motion clips' train and test splits (independent draws, both from ``seed``)."""
    from minivit.data.cifar10 import ImageDataset
    return ImageDataset(motion_split(n_train, [seed, 0], num_frames, size),
                        motion_split(n_test, [seed, 1], num_frames, size),
                        "motion", f"generated motion clips in memory (seed {seed})")
