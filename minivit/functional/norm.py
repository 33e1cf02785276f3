"""Normalisation: layer_norm (every transformer block), batch_norm (CNN stems, hybrids) and
instance_norm (3-D segmentation networks: per sample and channel, over the spatial dims).

Each is one fused Function with the closed-form backward. With
x̂ = (x − μ)/σ, σ = √(var + ε), the statistics taken over n elements, and
g' = ∂L/∂x̂ (the incoming gradient times the weight):

    ∂L/∂x = (1/σ) · (g' − mean(g') − x̂ · mean(g' ⊙ x̂))

(the two subtracted terms are the gradient paths through μ and σ). This keeps
two arrays for backward (x̂ and 1/σ) instead of the half-dozen intermediates a
composition of elementary ops would.
"""
from __future__ import annotations

import math

from minivit import amp, backend
from minivit.autograd import Function, Tensor
from minivit.backend import get_array_module
from minivit.functional import fused_cpu, fused_cuda


def _normalise_backward(gxhat, xhat, rstd, axes):
    """(1/σ)(g' − mean(g') − x̂·mean(g'·x̂)), means over ``axes`` (the normalised ones)."""
    mean_g = gxhat.mean(axis=axes, keepdims=True)
    mean_gx = (gxhat * xhat).mean(axis=axes, keepdims=True)
    return rstd * (gxhat - mean_g - xhat * mean_gx)


# =========================================================================== layer norm
class LayerNorm(Function):
    """Normalise each row over its last ``len(normalized_shape)`` dims, then scale and shift.

    Inputs: x, then the weight if ``has_weight``, then the bias if ``has_bias``.
    """

    # On the GPU: fused kernels (fused_cuda.layer_norm_forward / layer_norm_backward), one
    # warp or block per row. They keep the row means and 1/σ, as PyTorch does, instead of
    # x̂, and rebuild x̂ from x in backward. On the CPU, float32: compiled kernels of the same
    # shape (fused_cpu.layer_norm_*), a row at a time. False: always this reference code.
    fast_path = True

    def __init__(self, n_dims, eps, has_weight, has_bias):
        self.n_dims, self.eps = n_dims, eps
        self.has_weight, self.has_bias = has_weight, has_bias
        self.fused = self.fused_cpu = False

    def forward(self, x, *params):
        w = params[0] if self.has_weight else None
        b = params[-1] if self.has_bias else None
        self.shape = x.shape
        xp = get_array_module(x)
        d = math.prod(x.shape[x.ndim - self.n_dims:])
        x2 = x.reshape(-1, d)                                     # (M, D): one row per normalised slice
        if self.fast_path and x.size and fused_cuda.applies(x, *params):
            y, self.mean, self.rstd = fused_cuda.layer_norm_forward(x2, w, b, self.eps)
            self.fused, self.x2, self.w = True, x2, w
            return y.reshape(x.shape)
        if self.fast_path and x.size and fused_cpu.applies(x2, *params):   # on the CPU: compiled rows
            y, self.mean, self.rstd = fused_cpu.layer_norm_forward(x2, w, b, self.eps)
            self.fused_cpu, self.x2, self.w = True, x2, w
            return y.reshape(x.shape)
        # Row means as matrix-vector products: BLAS is several times faster than
        # NumPy's mean over a short last axis (D = 64 in Swin's first stage).
        self.ones = xp.ones(d, dtype=x.dtype)                      # x2 @ ones = row sums
        mu = (x2 @ self.ones).reshape(-1, 1) / x.dtype.type(d)     # (sum, then divide: a constant row stays exact)
        self.w2 = None if w is None else w.reshape(1, d)
        b2 = None if b is None else b.reshape(1, d)
        xhat = xp.empty(x2.shape, dtype=x.dtype)                   # (M, D)
        y = xhat if w is None and b is None else xp.empty(x2.shape, dtype=x.dtype)
        self.rstd = xp.empty((x2.shape[0], 1), dtype=x.dtype)      # (M, 1)

        def rows(lo, hi):   # rows lo..hi-1 (on the CPU, pieces run on backend's threads)
            xc = xhat[lo:hi]
            xp.subtract(x2[lo:hi], mu[lo:hi], out=xc)
            # Every (M, D) temporary costs a pass over memory: the row sums of squares go
            # through einsum (no temporary) and the arrays are updated in place.
            var = xp.einsum("ij,ij->i", xc, xc).reshape(-1, 1) / x.dtype.type(d)   # biased, as PyTorch
            self.rstd[lo:hi] = 1 / (var + self.eps) ** 0.5          # finite even for a constant row
            xc *= self.rstd[lo:hi]
            if self.w2 is not None:
                xp.multiply(xc, self.w2, out=y[lo:hi])
            elif b2 is not None:
                y[lo:hi] = xc
            if b2 is not None:
                y[lo:hi] += b2
        backend.parallel_rows(x2, rows)
        self.xhat = xhat
        return y.reshape(x.shape)

    def backward(self, gy):
        if self.fused or self.fused_cpu:
            return self._fused_backward(gy)
        xp = get_array_module(gy)
        g2 = gy.reshape(self.xhat.shape)                           # (M, D)
        d = g2.dtype.type(g2.shape[1])
        grads = [None]
        if self.needs_grad[0]:
            # _normalise_backward's formula, (1/σ)(g' − mean(g') − x̂·mean(g'·x̂)), in place on g'.
            # mean(g') = (g @ w)/D: a BLAS product on the calling thread, before the pieces
            mean_g = ((g2 @ self.w2.reshape(-1)) if self.w2 is not None else (g2 @ self.ones)).reshape(-1, 1) / d
            gxhat = xp.empty(g2.shape, dtype=g2.dtype)

            def rows(lo, hi):
                gx, xh = gxhat[lo:hi], self.xhat[lo:hi]
                if self.w2 is not None:
                    xp.multiply(g2[lo:hi], self.w2, out=gx)       # g' = g·w
                else:
                    gx[...] = g2[lo:hi]
                mean_gx = xp.einsum("ij,ij->i", gx, xh).reshape(-1, 1) / d
                gx -= mean_g[lo:hi]
                gx -= xh * mean_gx
                gx *= self.rstd[lo:hi]
            backend.parallel_rows(gxhat, rows)
            grads[0] = gxhat.reshape(self.shape)
        pshape = self.shape[len(self.shape) - self.n_dims:]
        if self.has_weight:
            if self.needs_grad[len(grads)]:                        # column sums of g·x̂, a share per piece
                shares = backend.parallel_rows(g2, lambda lo, hi: xp.einsum("ij,ij->j", g2[lo:hi], self.xhat[lo:hi]))
                grads.append(sum(shares[1:], shares[0]).reshape(pshape))
            else:
                grads.append(None)
        if self.has_bias:                                          # column sums, again as a product
            grads.append((xp.ones(g2.shape[0], dtype=g2.dtype) @ g2).reshape(pshape)
                         if self.needs_grad[len(grads)] else None)
        return tuple(grads)

    def _fused_backward(self, gy):
        """backward's gradients from the fused kernels (the forward took them too)."""
        want_w = self.has_weight and self.needs_grad[1]
        want_b = self.has_bias and self.needs_grad[-1]
        if self.fused_cpu:
            gx, gw, gb = fused_cpu.layer_norm_backward(gy.reshape(self.x2.shape), self.x2, self.w, self.mean,
                                                       self.rstd, need_x=self.needs_grad[0], need_w=want_w,
                                                       need_b=want_b)
        else:
            gx, gw, gb = fused_cuda.layer_norm_backward(gy.reshape(self.x2.shape), self.x2, self.w,
                                                        self.mean, self.rstd, need_x=self.needs_grad[0],
                                                        need_params=want_w or want_b)
        pshape = self.shape[len(self.shape) - self.n_dims:]
        grads = [None if gx is None else gx.reshape(self.shape)]
        if self.has_weight:
            grads.append(gw.reshape(pshape) if want_w else None)
        if self.has_bias:
            grads.append(gb.reshape(pshape) if want_b else None)
        return tuple(grads)


def _check_dtype(op, x, **params):
    """The params' dtypes equal the input's (``x``: the input, or its dtype)."""
    dtype = getattr(x, "dtype", x)
    for name, p in params.items():
        if p is not None and p.dtype != dtype:
            raise TypeError(f"{op}: input is {dtype} but {name} is {p.dtype}; cast them to one dtype")


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):  # noqa: A002
    """``torch.nn.functional.layer_norm``: normalise over the trailing ``normalized_shape`` dims."""
    if amp._enabled:                                  # autocast: float32 statistics (minivit.amp's policy)
        input, weight, bias = amp.cast_inputs("layer_norm", input, weight, bias)
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    normalized_shape = tuple(normalized_shape)
    k = len(normalized_shape)
    if k == 0 or input.ndim < k or tuple(input.shape[input.ndim - k:]) != normalized_shape:
        raise ValueError(f"layer_norm: normalized_shape {normalized_shape} must match the last dims of "
                         f"the input, whose shape is {input.shape} (e.g. normalized_shape={input.shape[-1:]})")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != normalized_shape:
            raise ValueError(f"layer_norm: {name} must have shape normalized_shape={normalized_shape}, "
                             f"got {p.shape}")
    _check_dtype("layer_norm", input, weight=weight, bias=bias)
    params = [p for p in (weight, bias) if p is not None]
    return LayerNorm(k, eps, weight is not None, bias is not None)(input, *params)


# =========================================================================== batch norm
class BatchNorm(Function):
    """Per-channel normalisation of x (N, C, *) over the N and * dims.

    Training: batch statistics, backward as in the module docstring (the statistics
    depend on x). Evaluation: the running statistics are constants, so the op is
    affine per channel and ∂L/∂x = g ⊙ w / σ_running.
    """

    def __init__(self, running_mean, running_var, training, momentum, eps, has_weight, has_bias):
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.momentum, self.eps = training, momentum, eps
        self.has_weight, self.has_bias = has_weight, has_bias

    # On the CPU, a float32/float64 (N, C, ...) input takes the threaded path (_cpu_*, below):
    # the same formulas in fewer passes over memory, pieces of the batch on backend's
    # threads; on the GPU, in training, the fused kernels. False: always this reference code.
    fast_path = True
    cpu_fast = gpu_fast = False          # which path the last forward took (backward follows it)
    # On that path, a float32 channels-last input's per-channel sums go by blocks of rows
    # (_sums, below); False: NumPy's float64 sum over the (n, S) axes.
    block_sums = True

    def forward(self, x, *params):
        w = params[0] if self.has_weight else None
        b = params[-1] if self.has_bias else None
        # On the GPU, training: one fused kernel forward and one backward (fused_cuda.batch_norm_*),
        # which keep x, the channels' means and 1/σ (not x̂) and rebuild x̂ in backward.
        self.gpu_fast = (self.fast_path and self.training and x.ndim >= 2 and x.size > 0
                         and fused_cuda.applies(x, *params))
        if self.gpu_fast:
            self.x, self.w = get_array_module(x).ascontiguousarray(x), w    # backward reads it as it is
            y, self.mean_c, self.rstd_c, var, updated = fused_cuda.batch_norm_forward(
                self.x, w, b, self.running_mean, self.running_var, self.eps, self.momentum)
            if not updated:
                self._update_running_stats(self.mean_c, var, n=x.size // x.shape[1])
            return y
        self.cpu_fast = (self.fast_path and x.ndim >= 3 and x.dtype.kind == "f" and x.dtype.itemsize >= 4
                         and backend.device_of(x) == "cpu"
                         and (self.training or not any(self.needs_grad[1:])))   # eval ∂w, ∂b: the reference
        if self.cpu_fast:
            return self._cpu_forward(x, w, b)
        self.axes = (0,) + tuple(range(2, x.ndim))                 # every dim but the channel one
        pshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)              # (1, C, 1, ...): broadcasts over x
        if self.training:
            mu = x.mean(axis=self.axes, keepdims=True)
            xc = x - mu
            var = (xc * xc).mean(axis=self.axes, keepdims=True)    # biased: used to normalise
            self._update_running_stats(mu, var, n=x.size // x.shape[1])
        else:
            mu = self.running_mean.reshape(pshape).astype(x.dtype, copy=False)
            var = self.running_var.reshape(pshape).astype(x.dtype, copy=False)
            xc = x - mu
        self.rstd = 1 / (var + self.eps) ** 0.5                     # (1, C, 1, ...)
        self.xhat = xc * self.rstd
        self.w = None if w is None else w.reshape(pshape)
        y = self.xhat if w is None else self.xhat * self.w
        return y if b is None else y + b.reshape(pshape)

    def _update_running_stats(self, mu, var, n):
        """running ← (1 − momentum)·running + momentum·batch, in place on the caller's arrays.
        The running variance uses the unbiased batch variance (× n/(n−1)), as PyTorch."""
        m = self.momentum
        if self.running_mean is not None:
            rm = self.running_mean
            rm *= 1 - m
            rm += (m * mu.reshape(-1)).astype(rm.dtype, copy=False)
        if self.running_var is not None:
            rv = self.running_var
            rv *= 1 - m
            rv += (m * n / (n - 1) * var.reshape(-1)).astype(rv.dtype, copy=False)

    def backward(self, gy):
        if self.gpu_fast:
            gx, gw, gb = fused_cuda.batch_norm_backward(gy, self.x, self.w, self.mean_c, self.rstd_c,
                                                        need_x=self.needs_grad[0])
            grads = [gx]
            if self.has_weight:
                grads.append(gw if self.needs_grad[len(grads)] else None)
            if self.has_bias:
                grads.append(gb if self.needs_grad[len(grads)] else None)
            return tuple(grads)
        if self.cpu_fast:
            return self._cpu_backward(gy)
        grads = [None]
        if self.needs_grad[0]:
            gxhat = gy if self.w is None else gy * self.w
            if self.training:
                grads[0] = _normalise_backward(gxhat, self.xhat, self.rstd, self.axes)
            else:
                grads[0] = gxhat * self.rstd
        if self.has_weight:
            grads.append((gy * self.xhat).sum(axis=self.axes) if self.needs_grad[len(grads)] else None)
        if self.has_bias:
            grads.append(gy.sum(axis=self.axes) if self.needs_grad[len(grads)] else None)
        return tuple(grads)


    # ----------------------------------------------------------------------- the CPU fast path
    # The reference above makes a temporary per operation (x − μ, its square, x̂, x̂·w, …) on
    # one core. Here x is seen as (N, C, S), S the pixels of a channel; the work is cut into
    # pieces of the batch that run on backend's threads (NumPy releases the GIL), per-channel
    # sums come back from each piece and are added up, and the element-wise work writes into
    # preallocated arrays (einsum's sums of products make no temporaries):
    #
    #   training forward:  μ = Σx/n;  x̂ ← x − μ, Σx̂² (one pass);  σ⁻¹ from Σx̂²/n;  x̂ ← x̂·σ⁻¹, y = x̂·w + b
    #   backward:          Σg and Σg·x̂ (one pass);  ∂x = g·(w/σ) − x̂·(w/σ)·mean(g·x̂) − (w/σ)·mean(g)
    #
    # which is the module docstring's formula with g' = g·w taken apart per channel.
    # A channels-last image (N, C, H, W) whose memory is (N, H, W, C), as a CPU conv stem
    # makes (layers/conv_stem.py), is seen as (N, S, C) instead, without a copy, and its output
    # keeps that layout: the same sums, over the other axis.

    def _layout(self, x):
        """x as (N, C, S) or, channels-last in memory, (N, S, C), a view where it can be; and how
        a per-channel vector broadcasts against it, the einsum of Σa·b per channel, the summed axes."""
        np_ = get_array_module(x)
        N, C = x.shape[:2]
        if self.channels_last:
            return (np_.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(N, -1, C),
                    lambda v: v[None, :], "nsc,nsc->c", (0, 1))
        return (np_.ascontiguousarray(x).reshape(N, C, -1),
                lambda v: v[:, None], "ncs,ncs->c", (0, 2))

    def _sums(self, a, axes, sum_ab=None, b=None):
        """Per channel, in float64: Σa, or Σa·b with ``b`` (sum_ab the einsum that does it).

        A float32 channels-last piece (n, S, C) is summed in blocks of rows: each block by a
        float32 einsum (channels along the SIMD lanes; NumPy's float64 sum over the leading axes
        is slower), the blocks' sums added up in float64, so rounding stays that of a block."""
        np_ = get_array_module(a)
        if not (self.block_sums and self.channels_last and a.dtype == np_.float32):
            if b is None:
                return a.sum(axis=axes, dtype=np_.float64)
            return np_.einsum(sum_ab, a, b, dtype=np_.float64)
        a2 = a.reshape(-1, a.shape[-1])                             # (n·S, C)
        b2 = None if b is None else b.reshape(a2.shape)
        total = np_.zeros(a2.shape[1])
        for r in range(0, a2.shape[0], 4096):
            total += (np_.einsum("sc->c", a2[r:r + 4096]) if b2 is None
                      else np_.einsum("sc,sc->c", a2[r:r + 4096], b2[r:r + 4096]))
        return total

    def _cpu_forward(self, x, w, b):
        np_ = get_array_module(x)
        N, C = x.shape[:2]
        self.channels_last = (x.ndim == 4 and not x.flags.c_contiguous
                              and x.transpose(0, 2, 3, 1).flags.c_contiguous)
        x3, col, sum_ab, axes = self._layout(x)                     # (N, C, S) or (N, S, C)
        n = x.size // C
        step = max(1, (1 << 16) // max(1, x3[0].size))             # a piece: ≥ 64k numbers
        pieces = lambda fn: backend.parallel_pieces(N, fn, min_size=step)  # noqa: E731
        if self.training:
            xhat = np_.empty_like(x3)
            mu = sum(pieces(lambda lo, hi: self._sums(x3[lo:hi], axes))) / n

            def center(lo, hi):                                   # x̂ ← x − μ, and Σ(x − μ)²
                np_.subtract(x3[lo:hi], col(mu.astype(x.dtype)), out=xhat[lo:hi])
                return self._sums(xhat[lo:hi], axes, sum_ab, xhat[lo:hi])
            var = sum(pieces(center)) / n                           # biased: used to normalise
            self._update_running_stats(mu, var, n)
            rstd = 1 / np_.sqrt(var + self.eps)
        else:
            xhat = None
            mu = self.running_mean.astype(np_.float64)
            rstd = 1 / np_.sqrt(self.running_var.astype(np_.float64) + self.eps)
        wc = np_.ones(C) if w is None else w.astype(np_.float64)
        bc = np_.zeros(C) if b is None else b.astype(np_.float64)
        rs = col(rstd.astype(x.dtype))
        scale = col((wc * rstd).astype(x.dtype))                    # eval: y = x·(w/σ) + (b − μ·w/σ)
        shift = col((bc - mu * wc * rstd).astype(x.dtype))
        w1 = None if w is None else col(w.astype(x.dtype))
        b1 = None if b is None else col(b.astype(x.dtype))
        y = np_.empty_like(x3)

        def normalise(lo, hi):
            out = y[lo:hi]
            if self.training:                                       # x̂ = (x − μ)·σ⁻¹, kept for backward
                xh = xhat[lo:hi]
                xh *= rs
                np_.multiply(xh, w1, out=out) if w1 is not None else np_.copyto(out, xh)
                if b1 is not None:
                    out += b1
            else:                                                   # running statistics: affine per channel
                np_.multiply(x3[lo:hi], scale, out=out)
                out += shift
        pieces(normalise)
        self.xhat = xhat
        self.rstd, self.scale, self.n = rstd, scale, n
        self.w = w
        self.shape = x.shape
        if self.channels_last:
            N, _, H, W = x.shape
            return y.reshape(N, H, W, C).transpose(0, 3, 1, 2)     # (N, C, H, W), channels-last in memory
        return y.reshape(x.shape)

    def _cpu_backward(self, gy):
        np_ = get_array_module(gy)
        N, C = self.shape[:2]
        g3, col, sum_ab, axes = self._layout(gy)                    # as x was: (N, C, S) or (N, S, C)
        step = max(1, (1 << 16) // max(1, g3[0].size))
        pieces = lambda fn: backend.parallel_pieces(N, fn, min_size=step)  # noqa: E731
        want_w = self.has_weight and self.needs_grad[1]
        want_b = self.has_bias and self.needs_grad[-1]
        sum_g = sum_gx = None
        if self.training:                                               # Σg and Σg·x̂ per channel, one pass
            def sums(lo, hi):
                return (self._sums(g3[lo:hi], axes),
                        self._sums(g3[lo:hi], axes, sum_ab, self.xhat[lo:hi]))
            parts = pieces(sums)
            sum_g = sum(p[0] for p in parts)
            sum_gx = sum(p[1] for p in parts)
        grads = [None]
        if self.needs_grad[0]:
            gx = np_.empty_like(g3)
            if self.training:
                w = np_.ones(C) if self.w is None else self.w.astype(np_.float64)
                a = col((w * self.rstd).astype(gy.dtype))                            # w/σ
                bcoef = col((w * self.rstd * sum_gx / self.n).astype(gy.dtype))      # (w/σ)·mean(g·x̂)
                ccoef = col((w * self.rstd * sum_g / self.n).astype(gy.dtype))       # (w/σ)·mean(g)

                def dx(lo, hi):
                    out = gx[lo:hi]
                    np_.multiply(g3[lo:hi], a, out=out)
                    out -= self.xhat[lo:hi] * bcoef
                    out -= ccoef
            else:
                def dx(lo, hi):
                    np_.multiply(g3[lo:hi], self.scale, out=gx[lo:hi])
            pieces(dx)
            if self.channels_last:
                N, _, H, W = self.shape
                grads[0] = gx.reshape(N, H, W, C).transpose(0, 3, 1, 2)
            else:
                grads[0] = gx.reshape(self.shape)
        if self.has_weight:
            grads.append(sum_gx.astype(gy.dtype) if want_w else None)
        if self.has_bias:
            grads.append(sum_g.astype(gy.dtype) if want_b else None)
        return tuple(grads)


def _stat_array(name, s, channels, op="batch_norm"):
    """Running statistics may be arrays or Tensors; we update the array itself, in place."""
    if s is None:
        return None
    arr = s.data if isinstance(s, Tensor) else s
    if tuple(arr.shape) != (channels,):
        raise ValueError(f"{op}: {name} must have shape ({channels},) (one value per channel), "
                         f"got {tuple(arr.shape)}")
    return arr


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,  # noqa: A002
               momentum=0.1, eps=1e-5):
    """``torch.nn.functional.batch_norm``: input (N, C) or (N, C, *).

    Training: normalise with the batch's statistics and update ``running_mean`` and
    ``running_var`` in place (when given). Evaluation: normalise with the running ones.
    """
    if amp._enabled:                                  # autocast: float32 statistics (minivit.amp's policy)
        input, weight, bias = amp.cast_inputs("batch_norm", input, weight, bias)
    fn = batch_norm_op(input.shape, input.dtype, running_mean, running_var, weight, bias, training, momentum, eps)
    return fn(input, *[p for p in (weight, bias) if p is not None])


def batch_norm_op(shape, dtype, running_mean, running_var, weight=None, bias=None, training=False,
                  momentum=0.1, eps=1e-5) -> BatchNorm:
    """``batch_norm``'s checks for an input of this shape and dtype, and the op it would run (its
    inputs: the input, then weight and bias where given). ``F.conv2d_tokens`` runs it inside its own op."""
    if len(shape) < 2:
        raise ValueError(f"batch_norm: input must be (N, C) or (N, C, *), got shape {tuple(shape)}")
    c = shape[1]
    rm = _stat_array("running_mean", running_mean, c)
    rv = _stat_array("running_var", running_var, c)
    if not training and (rm is None or rv is None):
        raise ValueError("batch_norm: evaluation mode (training=False) needs running_mean and running_var; "
                         "pass them, or use training=True to normalise with the batch's statistics")
    if training and math.prod(shape) // c <= 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got input "
                         f"shape {tuple(shape)}; use a bigger batch or evaluation mode")
    if not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"batch_norm: momentum must be a number in [0, 1], got {momentum!r}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (c,):
            raise ValueError(f"batch_norm: {name} must have shape ({c},), got {p.shape}")
    _check_dtype("batch_norm", dtype, weight=weight, bias=bias)
    return BatchNorm(rm, rv, training, momentum, eps, weight is not None, bias is not None)


# =========================================================================== L2 normalisation
class Normalize(Function):
    """y = x / n, n = max(‖x‖₂, ε) along ``dim`` (one op; ``layers.xca.l2_normalize`` is the
    same from the engine's elementary ops). Backward by hand, with s = Σ g·y along ``dim``:

        ∂L/∂x = (g − y·s) / n      where ‖x‖₂ ≥ ε (n moves with x: the y·s term)
        ∂L/∂x = g / ε              where the clamp holds (n is the constant ε)

    It keeps y and n for backward: one array of x's size, where the composition keeps x,
    x² summed, the clamp's mask and the square root, and adds two gradients of x's size.
    """

    def __init__(self, dim, eps):
        self.dim, self.eps = dim, eps

    def forward(self, x):
        xp = get_array_module(x)
        norm = xp.sqrt((x * x).sum(axis=self.dim, keepdims=True))
        self.free = norm >= self.eps                    # the norm is not clamped: it moves with x
        self.n = xp.maximum(norm, x.dtype.type(self.eps))
        self.y = x / self.n
        return self.y

    def backward(self, gy):
        s = (gy * self.y).sum(axis=self.dim, keepdims=True)
        return (gy - self.y * (s * self.free)) / self.n


def normalize(input, p: float = 2.0, dim: int = 1, eps: float = 1e-12):  # noqa: A002
    """``torch.nn.functional.normalize`` for p = 2: ``input / max(‖input‖₂, eps)`` along ``dim``
    (PyTorch's default dim is 1)."""
    if p != 2:
        raise ValueError(f"normalize: only p=2 (the L2 norm) is implemented, got p={p}")
    if not -input.ndim <= dim < input.ndim:
        raise ValueError(f"normalize: dim={dim} is out of range for a tensor of {input.ndim} dims")
    return Normalize(dim % input.ndim, eps)(input)


# =========================================================================== instance norm
class InstanceNorm(Function):
    """Instance normalisation (Ulyanov, Vedaldi & Lempitsky, "Instance Normalization: The Missing
    Ingredient for Fast Stylization", 2016): x (N, C, *) normalised per sample and channel over
    its spatial dims *, then scaled and shifted per channel.

    With input statistics (``use_input_stats``) μ and σ² (biased) are each (n, c) slice's own,
    and backward is the module docstring's formula with the means over the spatial dims. If
    running statistics are given they are updated as batch norm's would be for the batch
    reshaped to (1, N·C, *), then averaged over N: running ← (1 − m)·running + m·mean_n(stat),
    the variance unbiased (× S/(S−1), S spatial elements), as PyTorch. Without input statistics
    the running ones are constants, the op is affine per channel and ∂L/∂x = g ⊙ w / σ_running.
    Inputs: x, then the weight if ``has_weight``, then the bias if ``has_bias``.
    """

    def __init__(self, running_mean, running_var, use_input_stats, momentum, eps, has_weight, has_bias):
        self.running_mean, self.running_var = running_mean, running_var
        self.use_input_stats, self.momentum, self.eps = use_input_stats, momentum, eps
        self.has_weight, self.has_bias = has_weight, has_bias

    def forward(self, x, *params):
        w = params[0] if self.has_weight else None
        b = params[-1] if self.has_bias else None
        self.axes = tuple(range(2, x.ndim))                         # the spatial dims
        pshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)               # (1, C, 1, ...): per channel
        if self.use_input_stats:
            mu = x.mean(axis=self.axes, keepdims=True)               # (N, C, 1, ...)
            xc = x - mu
            var = (xc * xc).mean(axis=self.axes, keepdims=True)      # biased: used to normalise
            self._update_running_stats(mu, var, n=math.prod(x.shape[2:]))
        else:
            mu = self.running_mean.reshape(pshape).astype(x.dtype, copy=False)
            var = self.running_var.reshape(pshape).astype(x.dtype, copy=False)
            xc = x - mu
        self.rstd = 1 / (var + self.eps) ** 0.5                       # (N, C, 1, ...) or (1, C, 1, ...)
        self.xhat = xc * self.rstd
        self.w = None if w is None else w.reshape(pshape)
        y = self.xhat if w is None else self.xhat * self.w
        return y if b is None else y + b.reshape(pshape)

    def _update_running_stats(self, mu, var, n):
        m = self.momentum
        if self.running_mean is not None:
            rm = self.running_mean
            rm *= 1 - m
            rm += (m * mu.reshape(mu.shape[:2]).mean(axis=0)).astype(rm.dtype, copy=False)
        if self.running_var is not None:
            rv = self.running_var
            rv *= 1 - m
            rv += (m * n / (n - 1) * var.reshape(var.shape[:2]).mean(axis=0)).astype(rv.dtype, copy=False)

    def backward(self, gy):
        grads = [None]
        if self.needs_grad[0]:
            gxhat = gy if self.w is None else gy * self.w            # g' = ∂L/∂x̂
            if self.use_input_stats:
                grads[0] = _normalise_backward(gxhat, self.xhat, self.rstd, self.axes)
            else:
                grads[0] = gxhat * self.rstd
        summed = (0,) + self.axes                                     # every dim but the channel one
        if self.has_weight:
            grads.append((gy * self.xhat).sum(axis=summed) if self.needs_grad[len(grads)] else None)
        if self.has_bias:
            grads.append(gy.sum(axis=summed) if self.needs_grad[len(grads)] else None)
        return tuple(grads)


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,  # noqa: A002
                  use_input_stats=True, momentum=0.1, eps=1e-5):
    """``torch.nn.functional.instance_norm``: input (N, C, *) with at least one spatial dim
    (3-D, 4-D or 5-D in the InstanceNorm1d/2d/3d modules), normalised per sample and channel.

    use_input_stats=True: each slice's own statistics (running_mean / running_var, when given,
    are updated in place). False: the running statistics, which must then be given."""
    if amp._enabled:                                  # autocast: float32 statistics (minivit.amp's policy)
        input, weight, bias = amp.cast_inputs("instance_norm", input, weight, bias)
    if input.ndim < 3:
        raise ValueError(f"instance_norm: input must be (N, C, *) with at least one spatial dim, got shape "
                         f"{tuple(input.shape)}; add a batch dim with x.unsqueeze(0)")
    c = input.shape[1]
    rm = _stat_array("running_mean", running_mean, c, "instance_norm")
    rv = _stat_array("running_var", running_var, c, "instance_norm")
    if not use_input_stats and (rm is None or rv is None):
        raise ValueError("instance_norm: use_input_stats=False needs running_mean and running_var; pass them, "
                         "or use use_input_stats=True to normalise with each instance's statistics")
    if use_input_stats and math.prod(input.shape[2:]) <= 1:
        raise ValueError(f"instance_norm: expected more than 1 spatial element when using input statistics, "
                         f"got input shape {tuple(input.shape)}")
    if not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"instance_norm: momentum must be a number in [0, 1], got {momentum!r}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (c,):
            raise ValueError(f"instance_norm: {name} must have shape ({c},) (one value per channel), got {p.shape}")
    _check_dtype("instance_norm", input, weight=weight, bias=bias)
    params = [p for p in (weight, bias) if p is not None]
    fn = InstanceNorm(rm, rv, bool(use_input_stats), momentum, eps, weight is not None, bias is not None)
    return fn(input, *params)


__all__ = ["layer_norm", "batch_norm", "instance_norm", "normalize"]
