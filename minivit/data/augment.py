"""Data augmentation on the device, a whole batch at a time.

The batch stays on the training device (NumPy or CuPy arrays) from the uint8
dataset to the normalised float32 input: every augmentation below is a few
array ops over the whole batch (gathers, ``where``, broadcasting), never a
Python loop over images.

Randomness comes from a *counter-based* generator (``CounterRNG``): the random
numbers of step ``s`` of epoch ``e`` are a hash of ``(seed, e, s, stream, i)``, ``i`` counting
from the first image of the step's *global* batch: a rank of a data-parallel run that
augments images ``first…first+b−1`` of it (``Augment(..., first=first)``) draws for each image
exactly what one process augmenting the whole batch draws for it.
There is no generator state to carry around, save in checkpoints or keep in
sync: a resumed run draws exactly the numbers the uninterrupted one would have
drawn, and NumPy and CuPy draw the *same* numbers. (The idea is Philox's and
JAX's; the hash is SplitMix64, Steele et al. 2014.)

The train-time pipeline, in timm's order for CIFAR-sized images:

    uint8 (B, 3, 32, 32)
      → random crop (4-pixel zero padding) + horizontal flip      (one gather)
      → RandAugment: N ops per image out of 14, magnitude M          [--randaugment N,M]
      → to float, normalise with the CIFAR-10 mean/std
      → random erasing: a random box filled with N(0, 1) noise       [--random-erasing P]
      → resize to a smaller size for the first epochs               [--progressive-resize S:E,...]
      → mixup / cutmix with the reversed batch, soft targets         [--mixup A --cutmix A]
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from minivit import backend

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_M64 = 0xFFFFFFFFFFFFFFFF
_GOLDEN = 0x9E3779B97F4A7C15


# =========================================================================== counter-based RNG
def _mix64_int(z: int) -> int:
    """SplitMix64's finaliser on a Python int (for mixing keys on the host)."""
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _M64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _M64
    return z ^ (z >> 31)


def _mix64(xp, z):
    """The same finaliser on a uint64 array (wrapping multiplication is what we want)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class CounterRNG:
    """Stateless random numbers on a device: draw ``key`` gives element i = hash(seed, key, i).

    ``key`` is any tuple of ints (epoch, step, stream, ...); the same key always gives
    the same numbers, on NumPy and CuPy alike.

    Every draw's shape starts with the batch axis. ``first``: the index of the batch's first
    image in a larger batch (a rank's shard of the global batch): element i of a draw is then
    element ``first·prod(shape[1:]) + i`` of the same draw over the whole batch.
    """

    def __init__(self, xp, seed: int, first: int = 0):
        self.xp, self.seed, self.first = xp, int(seed), int(first)

    def at(self, first: int) -> "CounterRNG":
        """The same generator for a batch that starts at image ``first`` of the global batch."""
        return self if first == self.first else CounterRNG(self.xp, self.seed, first)

    def _bits(self, shape, key) -> "np.ndarray":
        k = _mix64_int(self.seed & _M64)
        for part in key:
            k = _mix64_int((k + _GOLDEN + (int(part) & _M64)) & _M64)
        n = math.prod(shape)
        start = self.first * math.prod(shape[1:])
        counter = self.xp.arange(start + 1, start + n + 1, dtype=np.uint64) * np.uint64(_GOLDEN) + np.uint64(k)
        return _mix64(self.xp, counter).reshape(shape)

    def uniform(self, shape, *key, low=0.0, high=1.0):
        """float32 uniform in [low, high): the top 24 bits of the hash, as a fraction."""
        u = (self._bits(shape, key) >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)
        return u if (low, high) == (0.0, 1.0) else low + (high - low) * u

    def integers(self, shape, high, *key):
        """int64 uniform in [0, high); ``high`` may be an array broadcastable to ``shape``."""
        u = (self._bits(shape, key) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
        return self.xp.minimum(self.xp.floor(u * high), self.xp.asarray(high) - 1).astype(np.int64)

    def normal(self, shape, *key):
        """float32 standard normal, by Box–Muller from two uniforms."""
        u1 = 1.0 - self.uniform(shape, *key, 0)       # in (0, 1]: log is finite
        u2 = self.uniform(shape, *key, 1)
        xp = self.xp
        return (xp.sqrt(-2.0 * xp.log(u1)) * xp.cos(np.float32(2 * np.pi) * u2)).astype(np.float32)


# Streams: each random decision of a step draws from its own key.
_CROP_Y, _CROP_X, _FLIP, _RA_OP, _RA_SIGN, _ERASE, _MIX = range(7)


# =========================================================================== crop, flip, normalise
def random_crop_flip(x, rng: CounterRNG, key, padding: int = 4, flip: bool = True):
    """Random ``padding``-pixel-padded crop and horizontal flip of uint8 (B, C, H, W), as one gather.

    Output pixel (i, j) of image b reads padded pixel (oy_b + i, ox_b + j), or
    (oy_b + i, ox_b + W − 1 − j) when b is flipped.
    """
    xp = rng.xp
    b, c, h, w = x.shape
    if padding:
        x = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oy = rng.integers((b,), 2 * padding + 1, *key, _CROP_Y)
    ox = rng.integers((b,), 2 * padding + 1, *key, _CROP_X)
    cols = xp.arange(w)[None, :]
    if flip:
        flipped = rng.uniform((b,), *key, _FLIP) < 0.5
        cols = xp.where(flipped[:, None], w - 1 - cols, cols)              # (B, W)
    rows = oy[:, None] + xp.arange(h)[None, :]                             # (B, H)
    cols = ox[:, None] + cols                                              # (B, W)
    return x[xp.arange(b)[:, None, None, None], xp.arange(c)[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :]]


def normalize(x_uint8, mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """uint8 (or float in [0, 255]) (B, 3, H, W) → float32 (x/255 − mean) / std."""
    xp = backend.get_array_module(x_uint8)
    scale = xp.asarray([1.0 / (255.0 * s) for s in std], dtype=np.float32)[:, None, None]
    shift = xp.asarray([m / s for m, s in zip(mean, std)], dtype=np.float32)[:, None, None]
    return x_uint8.astype(np.float32) * scale - shift


# =========================================================================== RandAugment
def _affine_nearest(x, mats, fill: float):
    """Warp float (B, C, H, W) by per-image 2×3 matrices (output → source, pixel units about the
    centre), nearest neighbour; pixels from outside the image take ``fill``."""
    xp = backend.get_array_module(x)
    b, c, h, w = x.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy = (xp.arange(h, dtype=np.float32) - cy)[None, :, None]             # (1, H, 1)
    xx = (xp.arange(w, dtype=np.float32) - cx)[None, None, :]             # (1, 1, W)
    m = mats[:, :, :, None, None]                                          # (B, 2, 3, 1, 1)
    src_x = m[:, 0, 0] * xx + m[:, 0, 1] * yy + m[:, 0, 2] + cx            # (B, H, W)
    src_y = m[:, 1, 0] * xx + m[:, 1, 1] * yy + m[:, 1, 2] + cy
    sx, sy = xp.rint(src_x).astype(np.int64), xp.rint(src_y).astype(np.int64)
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    sx, sy = xp.clip(sx, 0, w - 1), xp.clip(sy, 0, h - 1)
    out = x[xp.arange(b)[:, None, None, None], xp.arange(c)[None, :, None, None],
            sy[:, None], sx[:, None]]
    return xp.where(inside[:, None], out, np.float32(fill))


def _blend(x, degenerate, factor):
    """PIL's ImageEnhance: degenerate + factor·(x − degenerate), clipped to [0, 255]."""
    return backend.get_array_module(x).clip(degenerate + factor * (x - degenerate), 0, 255)


def _gray(x):
    """ITU-R 601-2 luma, as PIL's convert('L'): (B, 1, H, W)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _smooth(x):
    """PIL's SMOOTH filter (3×3, centre 5, others 1, /13) by shift-and-add; borders kept."""
    xp = backend.get_array_module(x)
    p = xp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = x.shape[2:]
    out = (sum(p[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)) + 4 * x) / 13.0
    for border in ((slice(None), slice(None), 0), (slice(None), slice(None), -1),
                   (Ellipsis, 0), (Ellipsis, -1)):     # PIL leaves the outermost pixels as they were
        out[border] = x[border]
    return out


# name -> kind. Magnitudes follow timm's RandAugment (level M out of 10): rotate ±30°·M/10,
# shear ±0.3·M/10, translate ±0.45·M/10 of the size, enhance factor 1 ± 0.9·M/10,
# solarize threshold 256·(1 − M/10), posterize to 8 − round(4·M/10) bits.
RANDAUGMENT_OPS = ("Identity", "AutoContrast", "Invert", "Rotate", "Posterize", "Solarize", "Color",
                   "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY")
_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def rand_augment(x, rng: CounterRNG, key, num_ops: int = 2, magnitude: float = 9.0, fill: float = 128.0):
    """RandAugment (Cubuk et al. 2020) on float (B, 3, H, W) in [0, 255].

    Each of ``num_ops`` rounds, every image picks one of the 14 ops uniformly (Identity
    included) with a random sign for the signed ones. The geometric ops of a round are
    one warp (their matrices are built per image, identity for the others); each
    colour op is computed for the batch and kept where it was picked.
    """
    xp = rng.xp
    b, _, h, w = x.shape
    level = magnitude / 10.0
    names = RANDAUGMENT_OPS
    for r in range(num_ops):
        op = rng.integers((b,), len(names), *key, _RA_OP, r)               # (B,) op per image
        sign = xp.where(rng.uniform((b,), *key, _RA_SIGN, r) < 0.5, -1.0, 1.0).astype(np.float32)
        picked = {name: op == i for i, name in enumerate(names)}

        # --- geometry: one warp per round (output → source matrices)
        mats = xp.zeros((b, 2, 3), dtype=np.float32)
        mats[:, 0, 0] = mats[:, 1, 1] = 1.0
        theta = sign * np.float32(math.radians(30.0 * level))
        rot = picked["Rotate"]
        cos_t, sin_t = xp.cos(theta), xp.sin(theta)
        mats[:, 0, 0] = xp.where(rot, cos_t, mats[:, 0, 0])
        mats[:, 0, 1] = xp.where(rot, -sin_t, mats[:, 0, 1])
        mats[:, 1, 0] = xp.where(rot, sin_t, mats[:, 1, 0])
        mats[:, 1, 1] = xp.where(rot, cos_t, mats[:, 1, 1])
        mats[:, 0, 1] = xp.where(picked["ShearX"], sign * 0.3 * level, mats[:, 0, 1])
        mats[:, 1, 0] = xp.where(picked["ShearY"], sign * 0.3 * level, mats[:, 1, 0])
        mats[:, 0, 2] = xp.where(picked["TranslateX"], sign * 0.45 * level * w, 0.0)
        mats[:, 1, 2] = xp.where(picked["TranslateY"], sign * 0.45 * level * h, 0.0)
        geometric = sum(picked[n].astype(np.int32) for n in _GEOMETRIC) > 0
        x = xp.where(geometric[:, None, None, None], _affine_nearest(x, mats, fill), x)

        # --- colour ops, each on the whole batch, kept where picked
        factor = (1.0 + sign * 0.9 * level)[:, None, None, None]
        bits = 8 - int(round(4 * level))
        step = float(2 ** (8 - bits))
        lo = x.min(axis=(2, 3), keepdims=True)
        hi = x.max(axis=(2, 3), keepdims=True)
        stretched = xp.where(hi > lo, (x - lo) * (255.0 / xp.maximum(hi - lo, 1e-3)), x)
        colour = {
            "AutoContrast": lambda: stretched,
            "Invert": lambda: 255.0 - x,
            "Posterize": lambda: xp.floor(x / step) * step,
            "Solarize": lambda: xp.where(x >= 256.0 * (1.0 - level), 255.0 - x, x),
            "Color": lambda: _blend(x, _gray(x), factor),
            "Contrast": lambda: _blend(x, _gray(x).mean(axis=(1, 2, 3), keepdims=True), factor),
            "Brightness": lambda: _blend(x, 0.0, factor),
            "Sharpness": lambda: _blend(x, _smooth(x), factor),
        }
        for name, fn in colour.items():
            x = xp.where(picked[name][:, None, None, None], fn(), x)
    return x.astype(np.float32)


# =========================================================================== erasing, mixing
def random_erasing(x, rng: CounterRNG, key, prob: float, area=(0.02, 1 / 3), ratio=(0.3, 3.3)):
    """Random erasing (Zhong et al. 2020; timm's mode='pixel'): with probability ``prob`` per image,
    a box of area fraction ~ U(area) and log-uniform aspect ratio is filled with N(0, 1) noise.
    ``x`` is the normalised float batch."""
    xp = rng.xp
    b, c, h, w = x.shape
    u = rng.uniform((b, 5), *key, _ERASE)
    apply = u[:, 0] < prob
    frac = area[0] + (area[1] - area[0]) * u[:, 1]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 2]
    aspect = xp.exp(log_r)
    bh = xp.clip(xp.rint(xp.sqrt(frac * aspect) * h), 1, h - 1).astype(np.int64)   # (B,)
    bw = xp.clip(xp.rint(xp.sqrt(frac / aspect) * w), 1, w - 1).astype(np.int64)
    top = xp.floor(u[:, 3] * (h - bh + 1)).astype(np.int64)
    left = xp.floor(u[:, 4] * (w - bw + 1)).astype(np.int64)
    rows = xp.arange(h)[None, :]
    cols = xp.arange(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + bh)[:, None])                # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + bw)[:, None])              # (B, W)
    box = apply[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]         # (B, H, W)
    noise = rng.normal(x.shape, *key, _ERASE, 1)
    return xp.where(box[:, None], noise, x)


def one_hot(labels, num_classes: int, dtype=np.float32):
    xp = backend.get_array_module(labels)
    return (labels[:, None] == xp.arange(num_classes)[None, :]).astype(dtype)


def mix_batch(x, labels, num_classes: int, seed: int, key, mixup_alpha: float = 0.0,
              cutmix_alpha: float = 0.0, switch_prob: float = 0.5):
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of the batch with its reverse, as timm.

    One λ ~ Beta(α, α) per batch (drawn on the host: a scalar, no device sync).
    Mixup: x ← λ·x + (1 − λ)·x[::-1]. CutMix: a box of area (1 − λ) is pasted from
    x[::-1], and λ is corrected to the box actually pasted. Targets are soft:
    λ·onehot(y) + (1 − λ)·onehot(y[::-1]). With both enabled each batch picks one
    (cutmix with probability ``switch_prob``).
    """
    rng = np.random.default_rng([seed & _M64, *[int(k) for k in key], _MIX])
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha))
    x_rev, y_rev = x[::-1], labels[::-1]
    if use_cutmix:
        h, w = x.shape[2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.copy()
        x[:, :, y0:y1, x0:x1] = x_rev[:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
        x = np.float32(lam) * x + np.float32(1.0 - lam) * x_rev
    target = lam * one_hot(labels, num_classes) + (1.0 - lam) * one_hot(y_rev, num_classes)
    return x, target.astype(np.float32)


# =========================================================================== progressive resizing
@functools.lru_cache(maxsize=32)
def _resize_matrix(n: int, out: int):
    """The antialiased bilinear (out, n) matrix, built once per size pair (a loop on the host)."""
    from minivit.functional.conv import resize_matrix
    m = resize_matrix(n, out, "bilinear", antialias=True)
    m.setflags(write=False)
    return m


def resize_images(x, size: int):
    """Resize a float batch (B, C, H, W) to (B, C, size, size): antialiased bilinear (PIL's and
    ``torch.nn.functional.interpolate(..., mode='bilinear', antialias=True)``'s filter), as two
    products with fixed (size, H) and (size, W) matrices. A linear map whose rows sum to 1, so
    it commutes with the per-channel normalisation."""
    H, W = x.shape[-2:]
    if (H, W) == (size, size):
        return x
    xp = backend.get_array_module(x)
    ah = xp.asarray(_resize_matrix(H, size), dtype=x.dtype)                                # (S, H)
    aw = xp.asarray(_resize_matrix(W, size).T, dtype=x.dtype)                              # (W, S)
    return xp.ascontiguousarray(xp.matmul(xp.matmul(ah, x), aw))                           # (B, C, S, S)


def parse_resize_schedule(text: str | None):
    """``"16:3,24:4"`` → ((16, 3), (24, 4)): train the first 3 epochs on 16×16 images, the next
    4 on 24×24, the rest at the data's own size. Raises ValueError naming the problem."""
    if not text:
        return ()
    out = []
    for part in str(text).split(","):
        size, colon, epochs = part.strip().partition(":")
        try:
            size, epochs = int(size), int(epochs)
        except ValueError:
            size = epochs = None
        if not colon or size is None or size < 1 or epochs < 1:
            raise ValueError(f"{part.strip()!r} is not SIZE:EPOCHS with whole numbers >= 1 (e.g. 16:3,24:4)")
        out.append((size, epochs))
    return tuple(out)


def size_at_epoch(schedule, epoch: int):
    """The image size of a 0-based epoch under a resize schedule, None for the data's own size."""
    end = 0
    for size, epochs in schedule:
        end += epochs
        if epoch < end:
            return size
    return None


# =========================================================================== the pipeline
@dataclass
class AugmentConfig:
    """What the training pipeline does; each field is a command-line flag of ``minivit.train``."""
    crop_padding: int = 4            # 0 turns the random crop off
    hflip: bool = True
    randaugment: tuple | None = None  # (num_ops, magnitude), e.g. (2, 9)
    random_erasing: float = 0.0      # probability per image
    mixup: float = 0.0               # Beta(α, α) for mixup; 0 = off
    cutmix: float = 0.0              # Beta(α, α) for cutmix; 0 = off
    resize: tuple = ()               # ((size, epochs), ...): smaller images first (progressive resizing)

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


class Augment:
    """``aug(images_uint8, labels, epoch, step, first=0) -> (x float32, target)``: the training pipeline.

    ``target`` is the labels (int64) or, with mixup/cutmix, soft targets (B, num_classes).
    ``first``: where ``images`` start in the step's global batch (a data-parallel rank's shard):
    crop, flip, RandAugment and erasing then draw per image what one process draws for that
    image of the whole batch. Mixup and cutmix pair each image with one of the same shard (the
    reversed shard; one λ per step), as timm's data-parallel training does: with them, N ranks
    are not one process.
    """

    def __init__(self, xp, config: AugmentConfig, num_classes: int, seed: int,
                 mean=CIFAR10_MEAN, std=CIFAR10_STD):
        self.config, self.num_classes, self.seed = config, num_classes, seed
        self.mean, self.std = mean, std
        self.rng = CounterRNG(xp, seed)

    def __call__(self, images, labels, epoch: int, step: int, first: int = 0):
        cfg, key, rng = self.config, (epoch, step), self.rng.at(first)
        x = images
        if cfg.crop_padding or cfg.hflip:
            x = random_crop_flip(x, rng, key, cfg.crop_padding, cfg.hflip)
        if cfg.randaugment:
            n, m = cfg.randaugment
            x = rand_augment(x.astype(np.float32), rng, key, int(n), float(m))
        x = normalize(x, self.mean, self.std)
        if cfg.random_erasing > 0:
            x = random_erasing(x, rng, key, cfg.random_erasing)
        size = size_at_epoch(cfg.resize, epoch)
        if size is not None:
            x = resize_images(x, size)
        target = labels
        if cfg.mixes:
            x, target = mix_batch(x, labels, self.num_classes, self.seed, key, cfg.mixup, cfg.cutmix)
        return x, target
