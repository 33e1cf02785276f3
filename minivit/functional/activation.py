"""Activations and regularisers: relu, gelu, sigmoid, softmax, log_softmax, dropout, drop_path.

Each has a closed-form backward (no graph of elementary ops), and the
softmaxes subtract a detached row max first, so ``exp`` never overflows.
"""
from __future__ import annotations

import math

from minivit import backend
from minivit.autograd import Function

get_array_module = backend.get_array_module


def _norm_dim(dim, ndim):
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise IndexError(f"dim {dim} is out of range for a tensor with {ndim} dims")
    return dim % max(ndim, 1)


# =========================================================================== pointwise
class ReLU(Function):
    """max(x, 0); the gradient flows where x > 0 (0 at x == 0, as PyTorch)."""

    def forward(self, x):
        self.mask = x > 0
        return get_array_module(x).maximum(x, x.dtype.type(0))   # +0.0 (not -0.0), NaN stays NaN

    def backward(self, gy):
        return gy * self.mask


_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


class GELU(Function):
    """x·Φ(x), Φ the standard normal CDF (Hendrycks & Gimpel, 2016).

    exact:  y = x/2·(1 + erf(x/√2)),            dy/dx = Φ(x) + x·φ(x),  φ(x) = e^(−x²/2)/√(2π)
    tanh:   y = x/2·(1 + tanh(u)), u = √(2/π)(x + 0.044715x³)
            dy/dx = (1 + t)/2 + x/2·(1 − t²)·√(2/π)(1 + 3·0.044715x²),  t = tanh(u)
    """

    def __init__(self, approximate):
        self.approximate = approximate

    def forward(self, x):
        xp = get_array_module(x)
        self.x = x
        if self.approximate == "tanh":
            self.t = xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x * x * x))
            return 0.5 * x * (1 + self.t)
        self.cdf = 0.5 * (1 + backend.erf(x * _SQRT1_2))   # Φ(x); Python floats keep x's dtype
        return x * self.cdf

    def backward(self, gy):
        xp = get_array_module(gy)
        x = self.x
        if self.approximate == "tanh":
            t = self.t
            du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_C * x * x)
            return gy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)
        pdf = _INV_SQRT_2PI * xp.exp(-0.5 * x * x)
        return gy * (self.cdf + x * pdf)


class Sigmoid(Function):
    """σ(x) = 1/(1 + e^(−x)); dσ/dx = σ(1 − σ).

    Computed from e^(−|x|) ≤ 1 so nothing overflows: σ(x) = 1/(1+e) for x ≥ 0 and
    e/(1+e) for x < 0 (accurate in the far negative tail too)."""

    def forward(self, x):
        xp = get_array_module(x)
        e = xp.exp(-xp.abs(x))
        self.y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return self.y

    def backward(self, gy):
        return gy * self.y * (1 - self.y)


def relu(input):  # noqa: A002
    return ReLU()(input)


def gelu(input, approximate="none"):  # noqa: A002
    """``torch.nn.functional.gelu``; ``approximate='tanh'`` is the GPT-2/BERT tanh form."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return GELU(approximate)(input)


def sigmoid(input):  # noqa: A002
    return Sigmoid()(input)


# =========================================================================== softmax
class Softmax(Function):
    """y = e^(x − m) / Σ e^(x − m) along dim, with m the (constant) max along dim.

    Jacobian: ∂y_i/∂x_j = y_i(δ_ij − y_j), so the vector–Jacobian product is
    gx = y ⊙ (g − Σ_j g_j y_j)."""

    def __init__(self, dim):
        self.dim = dim

    def forward(self, x):
        xp = get_array_module(x)
        if x.size == 0:
            self.y = x.copy()
            return self.y
        e = xp.exp(x - x.max(axis=self.dim, keepdims=True))   # every exponent ≤ 0: no overflow
        self.y = e / e.sum(axis=self.dim, keepdims=True)
        return self.y

    def backward(self, gy):
        y = self.y
        return y * (gy - (gy * y).sum(axis=self.dim, keepdims=True))


class LogSoftmax(Function):
    """y = x − logsumexp(x) = (x − m) − log Σ e^(x − m) along dim.

    ∂y_i/∂x_j = δ_ij − softmax_j, so gx = g − softmax ⊙ Σ_i g_i."""

    def __init__(self, dim):
        self.dim = dim

    def forward(self, x):
        xp = get_array_module(x)
        if x.size == 0:
            self.y = x.copy()
            return self.y
        z = x - x.max(axis=self.dim, keepdims=True)
        self.y = z - xp.log(xp.exp(z).sum(axis=self.dim, keepdims=True))
        return self.y

    def backward(self, gy):
        xp = get_array_module(gy)
        return gy - xp.exp(self.y) * gy.sum(axis=self.dim, keepdims=True)


def _softmax_dim(dim, ndim):
    d = _norm_dim(dim, ndim)
    return None if ndim == 0 else d      # a 0-d input is its own (single-element) row


def softmax(input, dim):  # noqa: A002
    """``torch.softmax(input, dim)`` (dim is required: PyTorch's implicit dim is deprecated)."""
    return Softmax(_softmax_dim(dim, input.ndim))(input)


def log_softmax(input, dim):  # noqa: A002
    """``torch.log_softmax(input, dim)``: stable, and more accurate than ``softmax(x).log()``."""
    return LogSoftmax(_softmax_dim(dim, input.ndim))(input)


# =========================================================================== dropout and stochastic depth
class MaskScale(Function):
    """y = x ⊙ m for a constant mask m (already scaled, broadcastable to x); gx = g ⊙ m."""

    def __init__(self, mask):
        self.mask = mask

    def forward(self, x):
        return x * self.mask

    def backward(self, gy):
        return gy * self.mask


def _check_prob(name, p):
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} probability has to be between 0 and 1, got {p}")


def _keep_mask(xp, shape, keep, dtype):
    """Bernoulli(keep) mask scaled by 1/keep, in x's dtype (all zeros when keep == 0)."""
    mask = xp.random.random_sample(shape) < keep
    scale = 1.0 / keep if keep > 0 else 0.0
    return mask.astype(dtype) * dtype.type(scale)


def dropout(input, p=0.5, training=True):  # noqa: A002
    """``torch.nn.functional.dropout``: zero each element with probability p and scale the
    survivors by 1/(1 − p) ("inverted" dropout), so evaluation needs no rescaling.
    Identity when not training or p == 0; p == 1 zeros everything (as PyTorch)."""
    _check_prob("dropout", p)
    if not training or p == 0:
        return input
    xp = get_array_module(input.data)
    return MaskScale(_keep_mask(xp, input.shape, 1.0 - p, input.dtype))(input)


def drop_path(x, drop_prob=0.0, training=False, scale_by_keep=True):
    """Stochastic depth (Huang et al., 2016) as timm defines it: drop a whole residual
    branch per sample. The mask has shape (B, 1, 1, ...): one coin per sample, shared
    by all its tokens and channels; survivors are scaled by 1/(1 − drop_prob) if
    ``scale_by_keep``. Identity when not training or drop_prob == 0."""
    _check_prob("drop_path", drop_prob)
    if not training or drop_prob == 0:
        return x
    xp = get_array_module(x.data)
    keep = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)              # (B, 1, 1, ...)
    if scale_by_keep:
        mask = _keep_mask(xp, shape, keep, x.dtype)
    else:
        mask = (xp.random.random_sample(shape) < keep).astype(x.dtype)
    return MaskScale(mask)(x)


__all__ = ["relu", "gelu", "sigmoid", "softmax", "log_softmax", "dropout", "drop_path"]
