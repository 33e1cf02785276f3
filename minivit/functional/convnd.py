"""Convolution, transposed convolution and pooling over any number of spatial dims:
``conv3d`` on volumes (N, C, D, H, W), ``conv_transpose2d`` / ``conv_transpose3d``,
``max_pool3d`` and ``avg_pool3d``.

The ideas are functional/conv.py's (read that first), with the spatial dims counted
instead of named, so one readable implementation serves every dimension:

* **im2col** (:func:`_im2col`): every receptive field of the padded input, laid out as a
  column, and the conv is one batched GEMM over the groups,
  ``W (G, Og, Cg·Πk) @ cols (G, Cg·Πk, N·Πout)``.
* **col2im** (:func:`_col2im`), its adjoint: each column is added back onto the pixels it
  was read from, by a shift-and-add over the Πk kernel offsets (never over pixels).
* **transposed convolution** is the same pair run the other way round: its forward is a
  conv's backward-to-input (``Wᵀ @ x`` then col2im) and its backward-to-input is a conv's
  forward (im2col then ``W @ cols``). Dumoulin & Visin, "A guide to convolution
  arithmetic for deep learning" (2016), §4.
* **pooling** is a running max, or a sum, over the Πk shifted, strided slices of the input.

This is the readable reference only. conv2d keeps its own implementation (and CPU fast
paths: channels-last, threads, depthwise) in functional/conv.py; ``conv3d`` and the
transposed convs run here on NumPy and CuPy alike.

Shapes follow PyTorch: input (N, C, *spatial), or unbatched (C, *spatial); conv weights
(C_out, C_in/groups, *k); transposed-conv weights (C_in, C_out/groups, *k).
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from minivit import amp, backend
from minivit.autograd import Function, Tensor, is_grad_enabled
from minivit.functional.basic import squeeze, unsqueeze
from minivit.functional.conv import _AvgPool, _check_positive, _out_size, add_into

get_array_module = backend.get_array_module

_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


# =========================================================================== argument helpers
def _ntuple(v, n, name, op):
    """An int or a tuple of n ints → n ints, as PyTorch's kernel_size/stride/padding/dilation."""
    if isinstance(v, (int, np.integer)):
        return (int(v),) * n
    if isinstance(v, (tuple, list)) and len(v) == n and all(isinstance(i, (int, np.integer)) for i in v):
        return tuple(int(i) for i in v)
    raise TypeError(f"{op}: {name} must be an int or a tuple of {n} ints, got {v!r}")


def _batched(op, x, nd, fn):
    """Run fn on an (N, C, *spatial) input; an unbatched (C, *spatial) one gets a batch dim of 1 and loses it after."""
    if x.ndim == nd + 1:
        return squeeze(fn(unsqueeze(x, 0)), 0)
    if x.ndim != nd + 2:
        raise ValueError(f"{op}: expected a {nd + 2}-D (N, C, {_SPATIAL[nd]}) or {nd + 1}-D (C, {_SPATIAL[nd]}) "
                         f"input, got shape {tuple(x.shape)}")
    return fn(x)


def _pad(x, pads, value=0):
    """Pad the trailing len(pads) dims by pads = ((lo, hi), ...); no copy when all are 0."""
    if not any(lo or hi for lo, hi in pads):
        return x
    xp = get_array_module(x)
    return xp.pad(x, [(0, 0)] * (x.ndim - len(pads)) + list(pads), mode="constant", constant_values=value)


def _unpad(g, pads):
    lead = g.ndim - len(pads)
    return g[(Ellipsis,) + tuple(slice(lo, g.shape[lead + i] - hi) for i, (lo, hi) in enumerate(pads))]


def _offsets(k):
    """Every kernel offset (i, j, ...) in window order (last dim fastest)."""
    return itertools.product(*(range(ki) for ki in k))


def _tap(offset, s, d, out):
    """The padded-input positions that kernel offset ``offset`` reads for all output positions:
    output i reads i·s + offset·d, so one strided slice per dim covers them all."""
    return (Ellipsis,) + tuple(slice(o * di, o * di + si * (n - 1) + 1, si)
                               for o, si, di, n in zip(offset, s, d, out))


# =========================================================================== im2col / col2im
def _im2col(xpad, k, s, d, out, groups):
    """(N, C, *Sp) padded input → cols (G, Cg·Πk, N·Πout): column l holds output position l's
    receptive field (rows ordered (Cg, *k), as a weight (Og, Cg, *k) flattens)."""
    N, C = xpad.shape[:2]
    nd = len(k)
    win = backend.sliding_window_view(xpad, tuple(di * (ki - 1) + 1 for ki, di in zip(k, d)),
                                      axis=tuple(range(2, 2 + nd)))
    win = win[(Ellipsis,) + tuple(slice(0, si * (n - 1) + 1, si) for si, n in zip(s, out))
              + tuple(slice(None, None, di) for di in d)]           # (N, C, *out, *k), a view
    win = win.reshape((N, groups, C // groups) + tuple(out) + tuple(k))
    perm = (1, 2) + tuple(range(3 + nd, 3 + 2 * nd)) + (0,) + tuple(range(3, 3 + nd))
    return win.transpose(perm).reshape(groups, (C // groups) * math.prod(k), N * math.prod(out))


def _col2im(cols, shape, k, s, d, out):
    """The adjoint of _im2col: cols (G, Cg·Πk, N·Πout) added back onto a zero (N, C, *Sp) array,
    one strided slice per kernel offset."""
    xp = get_array_module(cols)
    G = cols.shape[0]
    N, C, spatial = shape[0], shape[1], tuple(shape[2:])
    c = cols.reshape((G, C // G) + tuple(k) + (N,) + tuple(out))   # (G, Cg, *k, N, *out)
    acc = xp.zeros((G, C // G, N) + spatial, dtype=cols.dtype)       # (G, Cg, N, *Sp)
    for off in _offsets(k):
        add_into(acc[_tap(off, s, d, out)], c[(slice(None), slice(None)) + off])
    return acc.reshape((C, N) + spatial).swapaxes(0, 1)             # (N, C, *Sp), a view


# =========================================================================== conv (N-d)
class ConvNd(Function):
    """N-d cross-correlation (PyTorch's conv1d/conv2d/conv3d) by im2col and one batched GEMM.

    With G groups, Cg = C_in/G input and Og = C_out/G output channels per group,
    K = Cg·Πk and L = N·Πout:

        cols (G, K, L)    column l holds the receptive field of output position l
        y    (G, Og, L) = W (G, Og, K) @ cols

    Backward, with g = ∂L/∂y laid out as (G, Og, L):
        ∂L/∂W    = g @ colsᵀ                                     (G, Og, K)
        ∂L/∂cols = Wᵀ @ g, then col2im adds each column back where it was read
        ∂L/∂b    = Σ of g over N and the spatial dims
    """

    def __init__(self, stride, pads, dilation, groups, keep_cols=True):
        self.stride, self.pads, self.dilation, self.groups = stride, pads, dilation, groups
        self.keep_cols = keep_cols      # cols are only needed for ∂W: don't hold them otherwise

    def forward(self, x, w, b=None):
        xp = get_array_module(x)
        N, nd, G = x.shape[0], x.ndim - 2, self.groups
        O, k = w.shape[0], w.shape[2:]
        out = tuple(_out_size(n, ki, si, lo, hi, di)
                    for n, ki, si, (lo, hi), di in zip(x.shape[2:], k, self.stride, self.pads, self.dilation))
        xpad = _pad(x, self.pads)
        cols = _im2col(xpad, k, self.stride, self.dilation, out, G)          # (G, K, L)
        w3 = w.reshape(G, O // G, -1)                                        # (G, Og, K)
        y = xp.ascontiguousarray((w3 @ cols).reshape((O, N) + out).swapaxes(0, 1))   # (N, O, *out)
        if b is not None:
            y += b.reshape((1, O) + (1,) * nd)
        self.cols = cols if self.keep_cols else None
        self.w3 = w3
        self.shapes = x.shape, w.shape, xpad.shape, out
        return y

    def backward(self, gy):
        x_shape, w_shape, pad_shape, out = self.shapes
        O, G = w_shape[0], self.groups
        g3 = gy.swapaxes(0, 1).reshape(G, O // G, -1)                        # (G, Og, L)
        gx = gw = None
        if self.needs_grad[0]:
            gcols = self.w3.transpose(0, 2, 1) @ g3                          # (G, K, L)
            gx = _unpad(_col2im(gcols, pad_shape, w_shape[2:], self.stride, self.dilation, out), self.pads)
        if self.needs_grad[1]:
            gw = (g3 @ self.cols.transpose(0, 2, 1)).reshape(w_shape)        # (G, Og, K) → (O, Cg, *k)
        if len(self.needs_grad) == 2:                                        # called without a bias
            return gx, gw
        return gx, gw, (gy.sum(axis=(0,) + tuple(range(2, gy.ndim))) if self.needs_grad[2] else None)


def _conv_padding(op, padding, k, d, s):
    """padding (int, tuple, 'valid' or 'same') → ((lo, hi), ...) per spatial dim.

    'same' pads d·(k−1) in total per dim, the odd one extra at the end (as PyTorch)."""
    nd = len(k)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * nd
        if padding == "same":
            if any(si != 1 for si in s):
                raise ValueError(f"{op}: padding='same' needs stride 1 (as in PyTorch), got stride {s}; "
                                 f"give the padding as numbers instead")
            total = [di * (ki - 1) for ki, di in zip(k, d)]
            return tuple((t // 2, t - t // 2) for t in total)
        raise ValueError(f"{op}: padding string must be 'same' or 'valid', got {padding!r}")
    p = _ntuple(padding, nd, "padding", op)
    if min(p) < 0:
        raise ValueError(f"{op}: padding must be non-negative, got {p}")
    return tuple((pi, pi) for pi in p)


def _check_groups(op, groups, c, o, ic_name, oc_name):
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    if c % groups or o % groups:
        raise ValueError(f"{op}: groups={groups} must divide both the {ic_name} ({c}) and the {oc_name} ({o})")


def _check_dtypes(op, x, **params):
    for name, t in params.items():
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{op}: input is {x.dtype} but {name} is {t.dtype}; cast one of them so they match")


def _convnd(op, nd, input, weight, bias, stride, padding, dilation, groups):  # noqa: A002
    """conv1d/conv3d's checks and call (conv2d keeps its own, with fast paths, in conv.py)."""
    if amp._enabled:                                  # autocast: a float16 GEMM (minivit.amp's policy)
        input, weight, bias = amp.cast_inputs(op, input, weight, bias)

    def run(x):
        if weight.ndim != nd + 2:
            raise ValueError(f"{op}: weight must be {nd + 2}-D (C_out, C_in/groups, *kernel_size), "
                             f"got shape {tuple(weight.shape)}")
        C, O, Cg, k = x.shape[1], weight.shape[0], weight.shape[1], tuple(weight.shape[2:])
        _check_groups(op, groups, C, O, "input channels", "output channels = weight.shape[0]")
        if C != Cg * groups:
            raise ValueError(f"{op}: input has {C} channels but weight of shape {tuple(weight.shape)} with "
                             f"groups={groups} expects weight.shape[1] × groups = {Cg * groups}; the weight "
                             f"should be {(O, C // groups) + k}")
        s = _ntuple(stride, nd, "stride", op)
        d = _ntuple(dilation, nd, "dilation", op)
        _check_positive(op, stride=s, dilation=d)
        pads = _conv_padding(op, padding, k, d, s)
        span = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))
        padded = tuple(n + lo + hi for n, (lo, hi) in zip(x.shape[2:], pads))
        if any(e > n for e, n in zip(span, padded)):
            raise ValueError(f"{op}: kernel {k} (dilation {d}, so it spans {span}) is larger than the padded "
                             f"input {padded} (input {tuple(x.shape[2:])}, padding {pads}); use a bigger input, "
                             f"more padding or a smaller kernel")
        if bias is not None and tuple(bias.shape) != (O,):
            raise ValueError(f"{op}: bias must have shape ({O},) = (C_out,), got {tuple(bias.shape)}")
        _check_dtypes(op, x, weight=weight, bias=bias)
        fn = ConvNd(s, pads, d, int(groups), keep_cols=weight.requires_grad and is_grad_enabled())
        return fn(x, weight) if bias is None else fn(x, weight, bias)
    return _batched(op, input, nd, run)


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002
    """``torch.nn.functional.conv1d``: input (N, C_in, L), weight (C_out, C_in/groups, k),
    bias (C_out,) → (N, C_out, L_out). padding may be an int, a 1-tuple, 'same' or 'valid'."""
    return _convnd("conv1d", 1, input, weight, bias, stride, padding, dilation, groups)


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002
    """``torch.nn.functional.conv3d``: input (N, C_in, D, H, W), weight (C_out, C_in/groups, kD, kH, kW),
    bias (C_out,) → (N, C_out, D_out, H_out, W_out). padding may be an int, a triple, 'same' or 'valid'."""
    return _convnd("conv3d", 3, input, weight, bias, stride, padding, dilation, groups)


# =========================================================================== transposed conv
class ConvTransposeNd(Function):
    """N-d transposed convolution (PyTorch's conv_transpose2d/3d): the adjoint of ConvNd.

    A conv maps an input (N, C_out, *S) to (N, C_in, *I) with weight W (C_in, C_out/G, *k);
    the transposed conv with the same W maps (N, C_in, *I) back to (N, C_out, *S) by that
    conv's backward-to-input. So, with Cg = C_in/G, Og = C_out/G, K = Og·Πk, L = N·ΠI:

        forward:   cols (G, K, L) = Wᵀ (G, K, Cg) @ x (G, Cg, L),  then col2im onto the padded
                   output, and the padding cropped:     the conv's ∂L/∂input
        ∂L/∂x    = W @ im2col(pad(g)):                 the conv's forward
        ∂L/∂W    = x @ im2col(pad(g))ᵀ:                the conv's ∂L/∂W, roles swapped
        ∂L/∂b    = Σ of g over N and the spatial dims

    Output size per dim: (I − 1)·s − 2p + d·(k − 1) + output_padding + 1; output_padding only
    adds positions at the end that no input reaches (beyond the bias).
    """

    def __init__(self, stride, padding, out_size, dilation, groups):
        self.stride, self.padding, self.out_size = stride, padding, out_size
        self.dilation, self.groups = dilation, groups

    def forward(self, x, w, b=None):
        xp = get_array_module(x)
        N, Ci, I = x.shape[0], x.shape[1], tuple(x.shape[2:])
        G, Og, k = self.groups, w.shape[1], tuple(w.shape[2:])
        x3 = x.swapaxes(0, 1).reshape(G, Ci // G, -1)                        # (G, Cg, L)
        w3 = w.reshape(G, Ci // G, -1)                                       # (G, Cg, K)
        cols = w3.transpose(0, 2, 1) @ x3                                    # (G, K, L)
        self.pads = tuple((p, p) for p in self.padding)
        padded = (N, G * Og) + tuple(n + 2 * p for n, p in zip(self.out_size, self.padding))
        y = xp.ascontiguousarray(_unpad(_col2im(cols, padded, k, self.stride, self.dilation, I), self.pads))
        if b is not None:
            y += b.reshape((1, G * Og) + (1,) * len(I))
        self.x3 = x3 if self.needs_grad[1] else None     # only ∂W needs x
        self.w3 = w3
        self.shapes = x.shape, w.shape
        return y                                                             # (N, C_out, *out_size)

    def backward(self, gy):
        x_shape, w_shape = self.shapes
        I, k, G = tuple(x_shape[2:]), tuple(w_shape[2:]), self.groups
        gx = gw = None
        if self.needs_grad[0] or self.needs_grad[1]:
            gcols = _im2col(_pad(gy, self.pads), k, self.stride, self.dilation, I, G)   # (G, K, L)
        if self.needs_grad[0]:
            gx = (self.w3 @ gcols).reshape((x_shape[1], x_shape[0]) + I).swapaxes(0, 1)   # (N, C_in, *I)
        if self.needs_grad[1]:
            gw = (self.x3 @ gcols.transpose(0, 2, 1)).reshape(w_shape)      # (G, Cg, K) → (C_in, Og, *k)
        if len(self.needs_grad) == 2:
            return gx, gw
        return gx, gw, (gy.sum(axis=(0,) + tuple(range(2, gy.ndim))) if self.needs_grad[2] else None)


def _conv_transpose_out(I, k, s, p, op_, d):
    return tuple((n - 1) * si - 2 * pi + di * (ki - 1) + oi + 1 for n, ki, si, pi, oi, di in zip(I, k, s, p, op_, d))


def _conv_transposend(op, nd, input, weight, bias, stride, padding, output_padding, groups, dilation):  # noqa: A002
    if amp._enabled:                                  # autocast: a float16 GEMM (minivit.amp's policy)
        input, weight, bias = amp.cast_inputs(op, input, weight, bias)

    def run(x):
        if weight.ndim != nd + 2:
            raise ValueError(f"{op}: weight must be {nd + 2}-D (C_in, C_out/groups, *kernel_size), "
                             f"got shape {tuple(weight.shape)}")
        C, Og, k = x.shape[1], weight.shape[1], tuple(weight.shape[2:])
        if weight.shape[0] != C:
            raise ValueError(f"{op}: input has {C} channels but weight.shape[0] is {weight.shape[0]}; a transposed "
                             f"conv's weight is (C_in, C_out/groups, *kernel_size) = ({C}, ..., ...)")
        _check_groups(op, groups, C, C, "input channels", "weight.shape[0]")
        s = _ntuple(stride, nd, "stride", op)
        d = _ntuple(dilation, nd, "dilation", op)
        p = _ntuple(padding, nd, "padding", op)
        o = _ntuple(output_padding, nd, "output_padding", op)
        _check_positive(op, stride=s, dilation=d)
        if min(p) < 0 or min(o) < 0:
            raise ValueError(f"{op}: padding {p} and output_padding {o} must be non-negative")
        if any(oi >= max(si, di) for oi, si, di in zip(o, s, d)):
            raise ValueError(f"{op}: output_padding {o} must be smaller than either stride {s} or dilation {d} "
                             f"in every dim (as in PyTorch)")
        out = _conv_transpose_out(x.shape[2:], k, s, p, o, d)
        if min(out) < 1:
            raise ValueError(f"{op}: the output size {out} is not positive (input {tuple(x.shape[2:])}, kernel {k}, "
                             f"stride {s}, padding {p}, dilation {d}); use less padding")
        O = Og * int(groups)
        if bias is not None and tuple(bias.shape) != (O,):
            raise ValueError(f"{op}: bias must have shape ({O},) = (C_out,) = (weight.shape[1] × groups,), "
                             f"got {tuple(bias.shape)}")
        _check_dtypes(op, x, weight=weight, bias=bias)
        fn = ConvTransposeNd(s, p, out, d, int(groups))
        return fn(x, weight) if bias is None else fn(x, weight, bias)
    return _batched(op, input, nd, run)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,  # noqa: A002
                     dilation=1):
    """``torch.nn.functional.conv_transpose2d`` (note PyTorch's order: groups before dilation):
    input (N, C_in, H, W), weight (C_in, C_out/groups, kH, kW), bias (C_out,) → (N, C_out, H_out, W_out),
    H_out = (H − 1)·stride − 2·padding + dilation·(kH − 1) + output_padding + 1.

    Its forward is conv2d's backward-to-input and its backward-to-input is conv2d's forward
    (ConvTransposeNd)."""
    return _conv_transposend("conv_transpose2d", 2, input, weight, bias, stride, padding, output_padding,
                             groups, dilation)


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,  # noqa: A002
                     dilation=1):
    """``torch.nn.functional.conv_transpose3d``: input (N, C_in, D, H, W), weight (C_in, C_out/groups,
    kD, kH, kW), bias (C_out,) → (N, C_out, D_out, H_out, W_out), each out size as conv_transpose2d's.

    Its forward is conv3d's backward-to-input and its backward-to-input is conv3d's forward
    (ConvTransposeNd)."""
    return _conv_transposend("conv_transpose3d", 3, input, weight, bias, stride, padding, output_padding,
                             groups, dilation)


# =========================================================================== pooling (N-d)
def _pool_args(op, nd, kernel_size, stride, padding, dilation=1):
    k = _ntuple(kernel_size, nd, "kernel_size", op)
    s = k if stride is None or stride == [] or stride == () else _ntuple(stride, nd, "stride", op)
    p = _ntuple(padding, nd, "padding", op)
    d = _ntuple(dilation, nd, "dilation", op)
    _check_positive(op, kernel_size=k, stride=s, dilation=d)
    return k, s, p, d


def _check_pool_input(op, x, k, p, d):
    """PyTorch's rules: 0 ≤ padding ≤ half the kernel size, and the window fits the padded input."""
    if any(not 0 <= pi <= ki // 2 for pi, ki in zip(p, k)):
        raise ValueError(f"{op}: padding {p} must be between 0 and half the kernel size "
                         f"{tuple(ki // 2 for ki in k)} for kernel {k}")
    spatial = tuple(x.shape[2:])
    span = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))
    padded = tuple(n + 2 * pi for n, pi in zip(spatial, p))
    if any(e > n for e, n in zip(span, padded)):
        raise ValueError(f"{op}: kernel {k} (spanning {span}) is larger than the padded input {padded} "
                         f"(input {spatial}, padding {p}); use a smaller kernel")


def _pool_geometry(x, k, s, p, d, ceil_mode):
    """Output sizes, and padding (lo, hi) per dim with enough at the end for a ceil_mode window."""
    out = tuple(_out_size(n, ki, si, pi, pi, di, ceil_mode) for n, ki, si, pi, di in zip(x.shape[2:], k, s, p, d))
    pads = tuple((pi, max(0, (o - 1) * si + di * (ki - 1) + 1 - n - pi))
                 for n, ki, si, pi, di, o in zip(x.shape[2:], k, s, p, d, out))
    return out, pads


class MaxPoolNd(Function):
    """Max over each (dilated) window, by a running max over the Πk kernel offsets.

    A strict ``>`` keeps the first maximum in window order (last dim fastest), the element
    PyTorch picks and the one that gets the whole gradient. Padding is −inf, so it never
    wins. Backward: offset t's slice gets g where t was the winner."""

    def __init__(self, k, s, p, d, ceil_mode):
        self.k, self.s, self.p, self.d, self.ceil_mode = k, s, p, d, ceil_mode

    def forward(self, x):
        xp = get_array_module(x)
        out, self.pads = _pool_geometry(x, self.k, self.s, self.p, self.d, self.ceil_mode)
        xpad = _pad(x, self.pads, value=-np.inf)
        self.pad_shape, self.out = xpad.shape, out
        y = None
        for t, off in enumerate(_offsets(self.k)):
            v = xpad[_tap(off, self.s, self.d, out)]
            if y is None:
                y, self.arg = v.copy(), xp.zeros(v.shape, dtype=np.int32)   # arg: the winning offset
            else:
                better = v > y
                y = xp.where(better, v, y)
                xp.copyto(self.arg, t, where=better)   # (not arg[better] = t: a GPU sync, see conv.py)
        return y

    def backward(self, gy):
        xp = get_array_module(gy)
        gpad = xp.zeros(self.pad_shape, dtype=gy.dtype)
        zero = gy.dtype.type(0)
        for t, off in enumerate(_offsets(self.k)):
            add_into(gpad[_tap(off, self.s, self.d, self.out)], xp.where(self.arg == t, gy, zero))
        return _unpad(gpad, self.pads)

    def indices(self, spatial):
        """Flat index into each (unpadded) input volume of every max (d·H·W + h·W + w in 3-D),
        as PyTorch's return_indices."""
        xp = get_array_module(self.arg)
        nd = len(self.k)
        flat = 0
        for i in range(nd):
            off = (self.arg // math.prod(self.k[i + 1:])) % self.k[i]                  # offset along dim i
            start = (xp.arange(self.out[i]) * self.s[i] - self.p[i]).reshape((-1,) + (1,) * (nd - 1 - i))
            flat = flat + (start + off * self.d[i]) * math.prod(spatial[i + 1:])
        return flat.astype(np.int64)


class AvgPoolNd(_AvgPool):
    """Mean over each window: a sum over the Πk shifted, strided slices, divided per window.

    The divisor follows PyTorch: with count_include_pad it counts the zero padding but not
    the part of a ceil_mode window past the padding; without it, only real elements. It
    factors into one count per dim (an outer product). Backward spreads g/divisor back over
    each window (the same slices, added in reverse)."""

    def forward(self, x):
        xp = get_array_module(x)
        ones = (1,) * len(self.k)
        out, self.pads = _pool_geometry(x, self.k, self.s, self.p, ones, self.ceil_mode)
        xpad = _pad(x, self.pads)
        self.pad_shape, self.out = xpad.shape, out
        y = xp.zeros(x.shape[:2] + out, dtype=x.dtype)
        for off in _offsets(self.k):
            y += xpad[_tap(off, self.s, ones, out)]
        if self.divisor_override:
            div = np.full(out, float(self.divisor_override))
        else:
            div = functools.reduce(np.multiply.outer, [self._counts(n, ki, si, pi, o) for n, ki, si, pi, o
                                                       in zip(x.shape[2:], self.k, self.s, self.p, out)])
        self.inv_div = xp.asarray(1.0 / div, dtype=x.dtype)                  # (*out)
        return y * self.inv_div

    def backward(self, gy):
        xp = get_array_module(gy)
        ones = (1,) * len(self.k)
        g = gy * self.inv_div
        gpad = xp.zeros(self.pad_shape, dtype=gy.dtype)
        for off in _offsets(self.k):
            add_into(gpad[_tap(off, self.s, ones, self.out)], g)
        return _unpad(gpad, self.pads)


def max_pool3d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,  # noqa: A002
               return_indices=False):
    """``torch.nn.functional.max_pool3d`` on (N, C, D, H, W) or (C, D, H, W); stride defaults to
    kernel_size. With return_indices, also the flat (d·H·W + h·W + w) index of every max, as a
    tensor outside the graph."""
    k, s, p, d = _pool_args("max_pool3d", 3, kernel_size, stride, padding, dilation)
    op = MaxPoolNd(k, s, p, d, ceil_mode)

    def run(x):
        _check_pool_input("max_pool3d", x, k, p, d)
        return op(x)
    y = _batched("max_pool3d", input, 3, run)
    if not return_indices:
        return y
    idx = op.indices(tuple(input.shape[-3:]))
    return y, Tensor(idx[0] if input.ndim == 4 else idx)


def avg_pool3d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,  # noqa: A002
               divisor_override=None):
    """``torch.nn.functional.avg_pool3d`` on (N, C, D, H, W) or (C, D, H, W); stride defaults to kernel_size.

    A kernel larger than the input but not than the padded input is allowed, as in avg_pool2d
    and max_pool3d (PyTorch's avg_pool3d alone refuses it)."""
    k, s, p, d = _pool_args("avg_pool3d", 3, kernel_size, stride, padding)

    def run(x):
        _check_pool_input("avg_pool3d", x, k, p, d)
        return AvgPoolNd(k, s, p, ceil_mode, count_include_pad, divisor_override)(x)
    return _batched("avg_pool3d", input, 3, run)
