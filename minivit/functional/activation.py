"""Activations and regularisers: relu, leaky_relu, gelu, sigmoid, softmax, log_softmax, dropout, drop_path.

Each has a closed-form backward (no graph of elementary ops), and the
softmaxes subtract a detached row max first, so ``exp`` never overflows.
"""
from __future__ import annotations

import math

import numpy as np

from minivit import amp, backend
from minivit.autograd import Function
from minivit.functional import fused_cpu, fused_cuda

get_array_module = backend.get_array_module


def _norm_dim(dim, ndim):
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise IndexError(f"dim {dim} is out of range for a tensor with {ndim} dims")
    return dim % max(ndim, 1)


# =========================================================================== pointwise
class ReLU(Function):
    """max(x, 0); the gradient flows where x > 0 (0 at x == 0, as PyTorch)."""

    # A contiguous CPU array is cut into pieces that run on backend's threads
    # (_relu_threads, below): the same two ufuncs, written in place. False: always this code.
    fast_path = True

    def forward(self, x):
        if self.fast_path and backend.device_of(x) == "cpu" and _flat(x) is not None and x.size > _BLOCK:
            y, self.mask = _relu_threads(x)
            return y
        self.mask = x > 0
        return get_array_module(x).maximum(x, x.dtype.type(0))   # +0.0 (not -0.0), NaN stays NaN

    def backward(self, gy):
        if self.fast_path and backend.device_of(gy) == "cpu":
            return _multiply_threads(gy, self.mask)
        return gy * self.mask


def _flat(a):
    """A CPU array's numbers as a 1-D view in memory order, where they are dense: a contiguous
    array, or an image (N, C, H, W) that is channels-last in memory (a CPU conv stem's). Else None."""
    if a.flags.c_contiguous:
        return a.reshape(-1)
    if a.ndim == 4 and a.transpose(0, 2, 3, 1).flags.c_contiguous:
        return a.transpose(0, 2, 3, 1).reshape(-1)
    return None


def _relu_threads(x):
    """(max(x, 0), x > 0) for a dense CPU array (``_flat``), over backend's threads; both come out
    in x's memory layout."""
    y, mask = np.empty_like(x), np.empty_like(x, dtype=bool)     # (empty_like keeps the layout)
    f, fy, fm = _flat(x), _flat(y), _flat(mask)

    def piece(lo, hi):
        np.greater(f[lo:hi], 0, out=fm[lo:hi])
        np.maximum(f[lo:hi], x.dtype.type(0), out=fy[lo:hi])
    backend.parallel_pieces(f.size, piece, min_size=_BLOCK)
    return y, mask


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

    # Exact GELU in float32 on the CPU takes the fast path (_gelu_float32, below): the
    # same values to a few float32 ulps. On the GPU both forms take fused kernels
    # (fused_cuda.gelu_forward / gelu_backward: this code's operations, one pass each,
    # keeping only a reference to x, which the graph holds anyway). False: always this
    # reference code.
    fast_path = True

    def __init__(self, approximate):
        self.approximate = approximate
        self.dydx = None
        self.fused = False

    def forward(self, x):
        xp = get_array_module(x)
        if self.fast_path and fused_cuda.applies(x):
            self.fused, self.x = True, x
            return fused_cuda.gelu_forward(x, self.approximate)
        if self.approximate == "none" and self.fast_path and x.dtype == np.float32 \
                and backend.device_of(x) == "cpu":
            if fused_cpu.applies(x, any_layout=True):       # the same formulas, compiled: one pass
                y, self.dydx = fused_cpu.gelu_forward(x, with_grad=self.needs_grad[0])
            else:
                y, self.dydx = _gelu_float32(x, with_grad=self.needs_grad[0])
            return y
        self.x = x
        if self.approximate == "tanh":
            self.t = xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x * x * x))
            return 0.5 * x * (1 + self.t)
        self.cdf = 0.5 * (1 + backend.erf(x * _SQRT1_2))   # Φ(x); Python floats keep x's dtype
        return x * self.cdf

    def backward(self, gy):
        if self.fused:
            return fused_cuda.gelu_backward(gy, self.x, self.approximate)
        if self.dydx is not None:                           # the CPU fast path saved dy/dx itself
            return _multiply_threads(gy, self.dydx)
        xp = get_array_module(gy)
        x = self.x
        if self.approximate == "tanh":
            t = self.t
            du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_C * x * x)
            return gy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)
        pdf = _INV_SQRT_2PI * xp.exp(-0.5 * x * x)
        return gy * (self.cdf + x * pdf)


# --------------------------------------------------------------------------- GELU's fast path
# SciPy's erf costs ~15 ns an element, 30 times NumPy's exp: it alone was over a tenth
# of a ViT training step. For float32 we compute Φ from the complementary error function
# instead. With z = |x|/√2,
#
#     Φ(x) = ½·erfc(z) for x < 0,   1 − ½·erfc(z) for x ≥ 0,      erfc(z) = e^(−z²)·R(z)
#
# where R(z) = e^(z²)·erfc(z) (SciPy's erfcx) is smooth and slowly varying on z ≥ 0, so a
# ratio of two short polynomials matches it: P/Q of degrees 4 and 5 to a relative 5e-9
# on [0, 9], far below float32's 6e-8. (The coefficients were fitted for minivit by
# least squares on a fine grid, reweighted towards the worst points; R(0) = 1.) Unlike
# 1 + erf, the small Φ of a very negative x keeps its relative precision. As a bonus
# e^(−z²) = e^(−x²/2) is the normal density's exponential, so dy/dx = Φ + x·φ(x) costs
# three more passes here instead of seven in backward, which then is one multiply.
# The work goes block by block through the flattened input, so the dozen temporaries of
# the polynomial evaluation stay in the CPU's cache.
_ERFCX_P = (1.0, 1.22841772, 0.7211835, 0.22426812, 0.03176299)                 # z⁰ … z⁴
_ERFCX_Q = (1.0, 2.35679736, 2.38053688, 1.30592114, 0.39753655, 0.05629755)    # z⁰ … z⁵
_BLOCK = 1 << 17     # 512 KB a temporary: large enough that ufunc calls (GIL held) cost little


def _gelu_float32(x, with_grad=True):
    """(gelu(x), dy/dx or None) for a float32 array, by the rational erfc above.

    The flattened input is split over backend.get_num_threads() threads (NumPy lets go
    of the GIL inside each ufunc), each piece going block by block."""
    flat = x.reshape(-1)
    y = np.empty_like(flat)
    dydx = np.empty_like(flat) if with_grad else None
    backend.parallel_pieces(flat.size, lambda a, b: _gelu_float32_piece(flat, y, dydx, a, b),
                            min_size=_BLOCK)
    shape = x.shape
    return y.reshape(shape), (dydx.reshape(shape) if with_grad else None)


def _multiply_threads(a, b):
    """a * b for two CPU arrays of one shape (b of a's dtype, or a bool mask), split over
    threads when both are dense in the same memory layout (``_flat``)."""
    def layout(arr):
        return tuple(st // arr.itemsize for st in arr.strides)
    if (a.shape != b.shape or (a.dtype != b.dtype and b.dtype != np.bool_)   # (b may be a mask)
            or _flat(a) is None or _flat(b) is None or layout(a) != layout(b)):
        return a * b
    out = np.empty_like(a)                                          # a's layout
    fa, fb, fo = _flat(a), _flat(b), _flat(out)
    backend.parallel_pieces(fa.size, lambda lo, hi: np.multiply(fa[lo:hi], fb[lo:hi], out=fo[lo:hi]),
                            min_size=_BLOCK)
    return out


def _gelu_float32_piece(flat, y, dydx, lo, hi):
    """Fill y[lo:hi] (and dydx[lo:hi]) from flat[lo:hi], one cache-sized block at a time."""
    f = np.float32
    p_half = [f(0.5 * c) for c in _ERFCX_P]           # ½·P: gives ½·erfc(z) directly
    q = [f(c) for c in _ERFCX_Q]
    n = min(hi - lo, _BLOCK)
    z, e, pz, qz = (np.empty(n, dtype=f) for _ in range(4))
    ten = np.full(n, 10, dtype=f)
    nonneg = np.empty(n, dtype=bool)
    # (Cheap ufuncs only: with a scalar, np.minimum is 3x slower than with an array, and
    # np.where / copyto(where=) 15x slower than arithmetic on this block size.)
    for start in range(lo, hi, _BLOCK):
        xb = flat[start:min(start + _BLOCK, hi)]
        k = len(xb)
        zb, eb, pb, qb, mb = z[:k], e[:k], pz[:k], qz[:k], nonneg[:k]
        np.abs(xb, out=zb)
        zb *= f(_SQRT1_2)                              # z = |x|/√2
        np.square(zb, out=eb)
        eb *= f(-1)
        np.exp(eb, out=eb)                             # e^(−z²) = e^(−x²/2)
        np.minimum(zb, ten[:k], out=zb)                # keeps P/Q finite for x = ±inf
        np.multiply(zb, p_half[4], out=pb)             # Horner: ½P(z)
        for c in p_half[3:0:-1]:
            pb += c
            pb *= zb
        pb += p_half[0]
        np.multiply(zb, q[5], out=qb)                  # Horner: Q(z)
        for c in q[4:0:-1]:
            qb += c
            qb *= zb
        qb += q[0]
        pb /= qb
        pb *= eb                                       # h = ½·erfc(z)
        # Φ = h + [x ≥ 0]·(1 − 2h): exactly h for x < 0, 1 − h (to an ulp) for x ≥ 0
        np.multiply(pb, f(-2), out=qb)
        qb += f(1)
        np.greater_equal(xb, 0, out=mb)
        qb *= mb
        cdf = qb
        cdf += pb
        np.multiply(xb, cdf, out=y[start:start + k])   # y = x·Φ(x)
        if dydx is not None:
            eb *= xb
            eb *= f(_INV_SQRT_2PI)                     # x·φ(x)
            np.add(cdf, eb, out=dydx[start:start + k]) # Φ(x) + x·φ(x)


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


class LeakyReLU(Function):
    """x where x > 0, negative_slope·x elsewhere; the gradient is 1 or negative_slope
    (negative_slope at x == 0, as PyTorch). UNETR's and nnU-Net's conv blocks use slope 0.01."""

    def __init__(self, negative_slope):
        self.negative_slope = negative_slope

    def forward(self, x):
        xp = get_array_module(x)
        self.mask = x > 0
        return xp.where(self.mask, x, x * x.dtype.type(self.negative_slope))

    def backward(self, gy):
        xp = get_array_module(gy)
        return xp.where(self.mask, gy, gy * gy.dtype.type(self.negative_slope))


def leaky_relu(input, negative_slope: float = 0.01, inplace: bool = False):  # noqa: A002
    """``torch.nn.functional.leaky_relu``; ``inplace`` is accepted and ignored (ops never overwrite)."""
    if not isinstance(negative_slope, (int, float)):
        raise ValueError(f"leaky_relu: negative_slope must be a number, got {negative_slope!r}")
    return LeakyReLU(float(negative_slope))(input)


def gelu(input, approximate="none"):  # noqa: A002
    """``torch.nn.functional.gelu``; ``approximate='tanh'`` is the GPT-2/BERT tanh form."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    if amp._enabled:                                  # autocast: float32 (erf has no float16 kernel)
        (input,) = amp.cast_inputs("gelu", input)
    return GELU(approximate)(input)


def sigmoid(input):  # noqa: A002
    return Sigmoid()(input)


# =========================================================================== softmax
class Softmax(Function):
    """y = e^(x − m) / Σ e^(x − m) along dim, with m the (constant) max along dim.

    Jacobian: ∂y_i/∂x_j = y_i(δ_ij − y_j), so the vector–Jacobian product is
    gx = y ⊙ (g − Σ_j g_j y_j)."""

    # Over the last dim on the GPU: one fused kernel each way (fused_cuda.softmax_forward /
    # softmax_backward: these formulas, one row per warp). False: always this reference code.
    fast_path = True

    def __init__(self, dim):
        self.dim = dim

    def forward(self, x):
        xp = get_array_module(x)
        if self.dim is not None and self.dim < 0:          # Softmax(-1): the last dim, as dim=ndim-1
            self.dim += x.ndim
        if x.size == 0:
            self.y = x.copy()
            return self.y
        if self.fast_path and self.dim == x.ndim - 1 and fused_cuda.applies(x):
            self.y = fused_cuda.softmax_forward(x)
            return self.y
        if self.dim == x.ndim - 1 and x.ndim >= 2 and backend.device_of(x) == "cpu":
            # Over the last dim on the CPU: the same steps, on pieces of the rows, on threads.
            rows = x.reshape(-1, x.shape[-1])
            y = np.empty(rows.shape, dtype=x.dtype)

            def piece(lo, hi):
                e = y[lo:hi]
                xp.subtract(rows[lo:hi], rows[lo:hi].max(axis=1, keepdims=True), out=e)
                xp.exp(e, out=e)
                e /= e.sum(axis=1, keepdims=True)
            backend.parallel_rows(rows, piece)
            self.y = y.reshape(x.shape)
            return self.y
        e = xp.asarray(x - x.max(axis=self.dim, keepdims=True))   # every exponent ≤ 0: no overflow
        xp.exp(e, out=e)                                       # in place: e is a fresh array (0-d too)
        e /= e.sum(axis=self.dim, keepdims=True)
        self.y = e
        return self.y

    def backward(self, gy):
        y = self.y
        if self.fast_path and self.dim == y.ndim - 1 and fused_cuda.applies(gy, y):
            return fused_cuda.softmax_backward(gy, y)
        if self.dim == y.ndim - 1 and y.ndim >= 2 and backend.device_of(y) == "cpu":
            y2, g2 = y.reshape(-1, y.shape[-1]), gy.reshape(-1, y.shape[-1])
            gx = np.empty(y2.shape, dtype=y.dtype)

            def piece(lo, hi):                                  # as below, on pieces of the rows
                out = gx[lo:hi]
                np.multiply(g2[lo:hi], y2[lo:hi], out=out)
                out -= y2[lo:hi] * out.sum(axis=1, keepdims=True)
            backend.parallel_rows(y2, piece)
            return gx.reshape(y.shape)
        gx = gy * y                                            # y ⊙ (g − Σ g y), as y ⊙ g − y ⊙ Σ g y
        gx -= y * gx.sum(axis=self.dim, keepdims=True)
        return gx


class LogSoftmax(Function):
    """y = x − logsumexp(x) = (x − m) − log Σ e^(x − m) along dim.

    ∂y_i/∂x_j = δ_ij − softmax_j, so gx = g − softmax ⊙ Σ_i g_i."""

    fast_path = True        # as Softmax: the fused kernels on the GPU, over the last dim

    def __init__(self, dim):
        self.dim = dim

    def forward(self, x):
        xp = get_array_module(x)
        if self.dim is not None and self.dim < 0:          # as Softmax
            self.dim += x.ndim
        if x.size == 0:
            self.y = x.copy()
            return self.y
        if self.fast_path and self.dim == x.ndim - 1 and fused_cuda.applies(x):
            self.y = fused_cuda.softmax_forward(x, log=True)
            return self.y
        z = x - x.max(axis=self.dim, keepdims=True)
        self.y = z - xp.log(xp.exp(z).sum(axis=self.dim, keepdims=True))
        return self.y

    def backward(self, gy):
        xp = get_array_module(gy)
        if self.fast_path and self.dim == self.y.ndim - 1 and fused_cuda.applies(gy, self.y):
            return fused_cuda.softmax_backward(gy, self.y, log=True)
        return gy - xp.exp(self.y) * gy.sum(axis=self.dim, keepdims=True)


def _softmax_dim(dim, ndim):
    d = _norm_dim(dim, ndim)
    return None if ndim == 0 else d      # a 0-d input is its own (single-element) row


def softmax(input, dim):  # noqa: A002
    """``torch.softmax(input, dim)`` (dim is required: PyTorch's implicit dim is deprecated)."""
    if amp._enabled:                                  # autocast: float32 (exp overflows float16)
        (input,) = amp.cast_inputs("softmax", input)
    return Softmax(_softmax_dim(dim, input.ndim))(input)


def log_softmax(input, dim):  # noqa: A002
    """``torch.log_softmax(input, dim)``: stable, and more accurate than ``softmax(x).log()``."""
    if amp._enabled:                                  # autocast: float32 (exp overflows float16)
        (input,) = amp.cast_inputs("log_softmax", input)
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


def _uniform(xp, shape):
    """U[0, 1) samples: NumPy's float64 stream (what the CPU tests replay), float32 on the
    GPU (CuPy takes a dtype: half the memory, and no float64 throughput penalty)."""
    if xp is np:
        return np.random.random_sample(shape)
    return xp.random.random_sample(shape, dtype=np.float32)


def _keep_mask(xp, shape, keep, dtype):
    """Bernoulli(keep) mask scaled by 1/keep, in x's dtype (all zeros when keep == 0)."""
    u = _uniform(xp, shape)
    scale = 1.0 / keep if keep > 0 else 0.0
    if fused_cuda.applies(u) and np.dtype(dtype).char in "fd":
        return fused_cuda.keep_mask(u, keep, scale, dtype)      # one kernel: these two lines' steps
    mask = u < keep
    return xp.multiply(mask, dtype.type(scale), dtype=dtype)    # one op: bool × scale, in dtype


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
        mask = (_uniform(xp, shape) < keep).astype(x.dtype)
    return MaskScale(mask)(x)


__all__ = ["relu", "leaky_relu", "gelu", "sigmoid", "softmax", "log_softmax", "dropout", "drop_path"]
