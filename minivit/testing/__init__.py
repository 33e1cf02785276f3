"""Gradient checking: compare the engine's backward with central finite differences.

    from minivit.testing import gradcheck
    x = minivit.Tensor(np.random.randn(3, 4), requires_grad=True)   # float64!
    gradcheck(lambda x: (x * x).sum(), x)

The output is reduced to a scalar with a fixed random weighting ``L = Σ v⊙f(x)``
(so every output element matters), then for every input element
``(L(x+ε) − L(x−ε)) / 2ε`` is compared with ``∂L/∂x`` from backward.
"""
from __future__ import annotations

import numpy as np

from minivit import backend     # (no minivit.autograd here: backend imports strict_cupy from this package)


def _as_tuple(out):
    return out if isinstance(out, (tuple, list)) else (out,)


def _weights(outs, seed):
    rng = np.random.default_rng(seed)
    return [backend.to_device(rng.standard_normal(o.shape), o.device).astype(o.dtype) for o in outs]


def _scalar(fn, inputs, ws):
    """L = Σ v·f(inputs), as a Python float (no graph)."""
    from minivit.autograd import no_grad
    with no_grad():
        outs = _as_tuple(fn(*inputs))
    return float(sum(float((o.data * w).sum()) for o, w in zip(outs, ws)))


def _analytic(fn, inputs, seed):
    for x in inputs:
        x.grad = None
    from minivit.autograd import Tensor
    outs = _as_tuple(fn(*inputs))
    ws = _weights(outs, seed)
    loss = None
    for o, w in zip(outs, ws):
        if o.requires_grad:
            term = (o * Tensor(w)).sum()
            loss = term if loss is None else loss + term
    if loss is not None:
        loss.backward()
    grads = [backend.to_numpy(x.grad) if x.grad is not None else np.zeros(x.shape) for x in inputs]
    return grads, ws


def _check_float64(inputs):
    for x in inputs:
        if x.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 inputs (finite differences in float32 are "
                            f"too noisy), got {x.dtype}; build the inputs with dtype=np.float64")


def gradcheck(fn, *inputs, eps=1e-6, atol=1e-6, rtol=1e-4, seed=0):
    """Check every element's gradient of every input with ``requires_grad``.

    Raises AssertionError naming the input, the worst element, and both values.
    Returns True on success. Cost: two forward passes per input element, so keep
    inputs small; for big ones use :func:`gradcheck_directional`.
    """
    _check_float64([x for x in inputs if x.requires_grad])
    grads, ws = _analytic(fn, inputs, seed)
    for i, x in enumerate(inputs):
        if not x.requires_grad:
            continue
        num = np.zeros(x.shape)
        for j in np.ndindex(*x.shape):  # index x.data itself: works for non-contiguous inputs too
            old = x.data[j].item()
            x.data[j] = old + eps
            plus = _scalar(fn, inputs, ws)
            x.data[j] = old - eps
            minus = _scalar(fn, inputs, ws)
            x.data[j] = old
            num[j] = (plus - minus) / (2 * eps)
        err = np.abs(grads[i] - num) - (atol + rtol * np.abs(num))
        if (err > 0).any():
            k = np.unravel_index(np.argmax(err), x.shape)
            raise AssertionError(
                f"gradient of input {i} (shape {x.shape}) is wrong at index {tuple(int(v) for v in k)}: "
                f"backward gives {grads[i][k]:.10g}, finite differences give {num[k]:.10g} "
                f"({int((err > 0).sum())} of {num.size} elements outside atol={atol}, rtol={rtol})")
    return True


def gradcheck_directional(fn, *inputs, n_directions=3, eps=1e-6, rtol=1e-5, atol=1e-8, seed=0):
    """Cheap check for large inputs: along random directions d (over all inputs at once),
    ``(L(x+εd) − L(x−εd)) / 2ε`` must equal ``Σ ∂L/∂x · d``."""
    active = [x for x in inputs if x.requires_grad]
    _check_float64(active)
    grads, ws = _analytic(fn, inputs, seed)
    rng = np.random.default_rng(seed + 1)
    for n in range(n_directions):
        ds = [rng.standard_normal(x.shape) for x in inputs]
        originals = [x.data.copy() for x in inputs]
        xp = [backend.get_array_module(x.data) for x in inputs]

        def shifted(sign):
            for x, d, o, m in zip(inputs, ds, originals, xp):
                if x.requires_grad:
                    x.data[...] = o + sign * eps * m.asarray(d)
            return _scalar(fn, inputs, ws)

        numeric = (shifted(+1) - shifted(-1)) / (2 * eps)
        for x, o in zip(inputs, originals):
            x.data[...] = o
        analytic = sum(float((g * d).sum()) for x, g, d in zip(inputs, grads, ds) if x.requires_grad)
        if abs(analytic - numeric) > atol + rtol * max(abs(numeric), abs(analytic)):
            raise AssertionError(f"directional derivative {n}: backward gives {analytic:.12g}, "
                                 f"finite differences give {numeric:.12g}")
    return True
