"""The fully connected layer, ``y = x Wᵀ + b``, as one fused op.

Composing ``matmul`` and ``add`` would work, but one Function saves a graph
node and the intermediate ``x Wᵀ`` that ``add`` would otherwise keep alive,
and lets backward skip the input gradient of the first layer (nobody needs
the gradient of the images). Leading dims are folded into one, so a
(B, N, C) token tensor goes through a single (B·N, C) GEMM.
"""
from __future__ import annotations

from minivit import amp, backend
from minivit.autograd import Function
from minivit.backend import get_array_module


class Linear(Function):
    """y = x Wᵀ + b, weight (out, in) as in PyTorch, x (..., in).

    With X the (M, in) matrix of all rows of x and G = ∂L/∂Y (M, out):
    ∂L/∂X = G W,   ∂L/∂W = Gᵀ X,   ∂L/∂b = Σ_rows G.
    """

    def forward(self, x, w, b=None):
        self.x_shape = x.shape
        self.x2 = x.reshape(-1, x.shape[-1])          # (M, in); a copy only if x is non-contiguous
        self.w = w
        y = self.x2 @ w.T                             # (M, out)
        if b is not None:
            add_bias_(y, b)                           # in place: y is our own fresh array
        return y.reshape(x.shape[:-1] + (w.shape[0],))

    def backward(self, gy):
        g2 = gy.reshape(-1, gy.shape[-1])             # (M, out)
        gx = (g2 @ self.w).reshape(self.x_shape) if self.needs_grad[0] else None
        gw = g2.T @ self.x2 if self.needs_grad[1] else None
        if len(self.needs_grad) == 2:                 # called without a bias
            return gx, gw
        if not self.needs_grad[2]:
            return gx, gw, None
        # Σ_rows G. On the CPU as a vector-matrix product (BLAS does it several times faster than
        # g2.sum(axis=0)); on a GPU one reduction kernel (the product would add a fill of ones).
        if backend.is_cupy_array(g2):
            return gx, gw, g2.sum(axis=0)
        gb = get_array_module(g2).ones(g2.shape[0], dtype=g2.dtype) @ g2
        return gx, gw, gb


def add_bias_(y, b):
    """y (M, out) += b (out,), in place; on the CPU the rows are split over backend's threads.

    On a GPU one in-place add, one kernel: ``y[lo:hi] += b`` would be two (the add into a
    view, then ``__setitem__`` copying the view onto itself)."""
    if backend.is_cupy_array(y):
        y += b
        return

    def rows(lo, hi):
        y[lo:hi] += b
    backend.parallel_rows(y, rows)


def linear(input, weight, bias=None):  # noqa: A002  (PyTorch's argument name)
    """``torch.nn.functional.linear``: input (..., in), weight (out, in), bias (out,) → (..., out)."""
    if amp._enabled:                                  # autocast: a float16 GEMM (minivit.amp's policy)
        input, weight, bias = amp.cast_inputs("linear", input, weight, bias)
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {weight.shape}")
    if input.ndim == 0 or input.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input's last dim must equal weight's in_features: input shape "
                         f"{input.shape}, weight shape {weight.shape} (out, in); "
                         f"reshape the input or build the weight as (out, {input.shape[-1] if input.ndim else '?'})")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear: bias must have shape ({weight.shape[0]},) to match weight "
                         f"{weight.shape}, got {bias.shape}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != input.dtype:
            raise TypeError(f"linear: input is {input.dtype} but {name} is {t.dtype}; cast one of them "
                            f"(e.g. x.to(dtype=...) or model.to(dtype=...)) so they match")
    if bias is None:
        return Linear()(input, weight)
    return Linear()(input, weight, bias)
