"""Weight initialisation, in place on a Tensor's data (``torch.nn.init``'s names).

Every function draws from the global generator of the tensor's own array module
(``xp.random``: NumPy's for CPU tensors, CuPy's for CUDA ones), seeded by
``minivit.manual_seed``. Values are drawn in float64 and cast to the tensor's
dtype; the functions record nothing in the autograd graph and return the tensor.

Fans: for a Linear weight (out, in) ``fan_in = in``, ``fan_out = out``; for a
Conv2d weight (out, in/groups, kh, kw) both are multiplied by ``kh·kw``.
"""
from __future__ import annotations

import math

import numpy as np

from minivit import backend


def _fill(tensor, values):
    """Write float64 ``values`` into ``tensor.data`` (in place, keeping dtype and device)."""
    tensor.data[...] = values.astype(tensor.dtype, copy=False)
    return tensor


def _xp(tensor):
    return backend.get_array_module(tensor.data)


def calculate_gain(nonlinearity: str, param=None) -> float:
    """The gain that keeps activations' variance steady through a nonlinearity (PyTorch's table)."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "sigmoid", "identity"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}: use linear, conv2d, sigmoid, "
                     f"tanh, relu, leaky_relu or selu")


def calculate_fan_in_and_fan_out(tensor):
    if tensor.ndim < 2:
        raise ValueError(f"fan in and fan out need a tensor with at least 2 dims, got shape {tensor.shape}")
    receptive = int(np.prod(tensor.shape[2:])) if tensor.ndim > 2 else 1
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


# =========================================================================== plain fills
def uniform_(tensor, a: float = 0.0, b: float = 1.0):
    """Fill with U(a, b)."""
    return _fill(tensor, _xp(tensor).random.uniform(a, b, size=tensor.shape))


def normal_(tensor, mean: float = 0.0, std: float = 1.0):
    """Fill with N(mean, std²)."""
    return _fill(tensor, _xp(tensor).random.normal(mean, std, size=tensor.shape))


def constant_(tensor, val: float):
    tensor.data[...] = val
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0)


def ones_(tensor):
    return constant_(tensor, 1)


def trunc_normal_(tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0):
    """Fill with N(mean, std²) truncated to [a, b] (timm's and ViT's weight init).

    As in timm, ``a`` and ``b`` are absolute bounds, not multiples of std: the
    ViT call ``trunc_normal_(w, std=.02)`` cuts at ±2, i.e. ±100 std.

    Exact by rejection: draw from the normal and draw again for every value that
    fell outside [a, b]. What is kept is distributed exactly as the normal
    conditioned on [a, b]. Each round keeps a fraction P(a ≤ X ≤ b) of what is
    left, so for any sensible interval a handful of rounds suffice.
    """
    if not a < b:
        raise ValueError(f"trunc_normal_ needs a < b, got a={a}, b={b}")
    if std <= 0:
        raise ValueError(f"trunc_normal_ needs std > 0, got std={std}")
    cdf = lambda v: 0.5 * (1 + math.erf((v - mean) / (std * math.sqrt(2))))  # noqa: E731
    mass = cdf(b) - cdf(a)
    if mass < 1e-3:
        raise ValueError(f"trunc_normal_: [a, b] = [{a}, {b}] holds only {mass:.2g} of N({mean}, {std}²)'s "
                         f"mass, too far in the tail to sample by rejection; move the bounds "
                         f"towards the mean or widen std")
    xp = _xp(tensor)
    out = xp.random.normal(mean, std, size=tensor.shape)
    bad = (out < a) | (out > b)
    while bad.any():
        out[bad] = xp.random.normal(mean, std, size=int(bad.sum()))
        bad = (out < a) | (out > b)
    _fill(tensor, out)
    # Rounding to float32 may nudge a value a hair past a bound that float32 cannot hold.
    tensor.data[...] = xp.clip(tensor.data, tensor.dtype.type(a), tensor.dtype.type(b))
    return tensor


# =========================================================================== fan-scaled fills
def xavier_uniform_(tensor, gain: float = 1.0):
    """U(−r, r) with r = gain·√(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010):
    keeps the variance of activations and of gradients about equal across layers."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound)


def xavier_normal_(tensor, gain: float = 1.0):
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def _kaiming_std(tensor, a, mode, nonlinearity):
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    """U(−r, r) with r = √3·gain/√fan (He et al., 2015): Var = gain²/fan.

    PyTorch's default Linear/Conv2d init is ``kaiming_uniform_(w, a=√5)``: gain² =
    2/(1+5) = 1/3, so r = 1/√fan_in."""
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    return normal_(tensor, 0.0, _kaiming_std(tensor, a, mode, nonlinearity))
