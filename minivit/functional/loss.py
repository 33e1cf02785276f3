"""Losses: cross_entropy, nll_loss, kl_div, mse_loss, with PyTorch's semantics.

Cross-entropy is one fused op: log-softmax (stable: the row max is subtracted
first) and the negative log-likelihood together. Every variant PyTorch offers
(class indices or probabilities, class weights, label smoothing, ignore_index)
comes down to one formula: build the per-sample target distribution Q, then

    loss_n = −Σ_c Q_nc · log p_nc,         p_n = softmax(x_n)
    ∂loss_n/∂x_nc = p_nc · Σ_k Q_nk − Q_nc   (= p − onehot when Q is a plain one-hot)
"""
from __future__ import annotations

import warnings

import numpy as np

from minivit import amp, backend
from minivit.autograd import Function, Tensor, defer_check
from minivit.functional import fused_cuda
from minivit.functional.basic import sum_to

get_array_module = backend.get_array_module

_REDUCTIONS = ("mean", "sum", "none")


def _data(a):
    return a.data if isinstance(a, Tensor) else a


def _check_reduction(op, reduction, allowed=_REDUCTIONS):
    if reduction not in allowed:
        raise ValueError(f"{op}: reduction must be one of {allowed}, got {reduction!r}")


def _rows(a):
    """(N, C, d1, ...) → (N·d1·…, C): one row per prediction, classes along the last axis.
    A 1-D (C,) input is one unbatched prediction."""
    if a.ndim == 1:
        return a.reshape(1, -1)
    return get_array_module(a).moveaxis(a, 1, -1).reshape(-1, a.shape[1])


def _unrows(g, shape):
    """Inverse of ``_rows``: (M, C) back to the original (N, C, d1, ...) layout."""
    if len(shape) == 1:
        return g.reshape(shape)
    g = g.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],))
    return get_array_module(g).moveaxis(g, -1, 1)


# =========================================================================== cross-entropy / NLL
class CrossEntropy(Function):
    """loss_n = −Σ_c Q_nc · logp_nc over the rows of x, then the reduction.

    ``from_logits``: x holds logits and logp = log_softmax(x) (cross_entropy);
    otherwise x already holds log-probabilities (nll_loss, so ∂loss_n/∂x_nc = −Q_nc).

    Targets are either class indices (a constant array given here) or class
    probabilities (the op's second input, which may itself require a gradient:
    ∂loss_n/∂t_nc = −(1 − ε)·w_c·logp_nc).
    """

    def __init__(self, index_target, weight, reduction, label_smoothing, ignore_index, from_logits,
                 bad_rows=None):
        self.index_target, self.weight, self.bad_rows = index_target, weight, bad_rows
        self.reduction, self.eps, self.ignore_index = reduction, label_smoothing, ignore_index
        self.from_logits = from_logits

    def forward(self, x, *prob_target):
        xp = get_array_module(x)
        self.x_shape = x.shape
        z = _rows(x)                                                   # (M, C)
        m, c = z.shape
        if self.from_logits and fused_cuda.applies(z):
            z = fused_cuda.softmax_forward(z, log=True)                # the same steps, one kernel
        elif self.from_logits:
            z = z - z.max(axis=1, keepdims=True)                       # every exponent ≤ 0
            z = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))       # log_softmax
        self.logp = z
        w = self.weight                                                # (C,) or None
        eps = self.eps
        self.fused = self.index_target is not None and fused_cuda.applies(z)
        if self.fused:
            # On a GPU Q is never built: one kernel computes each row's loss, weight and Σ_c Q_nc
            # from the class indices (fused_cuda.class_nll_forward: the formulas below).
            t = self.index_target.reshape(-1)                          # (M,)
            lw, self.qsum = fused_cuda.class_nll_forward(z, t, w, eps, self.ignore_index)
            if self.reduction == "none":
                out_shape = self.x_shape[:1] + self.x_shape[2:] if len(self.x_shape) > 1 else ()
                return lw[0].reshape(out_shape)
            if self.reduction == "sum":
                self.denom = None
                return lw[0].sum()
            sums = lw.sum(axis=1)                                      # Σ loss, Σ weight: one reduction
            self.denom = sums[1:]                                      # (1,): a view, as is sums[:1]
            return (sums[:1] / self.denom).reshape(())
        if self.index_target is not None:
            # Q = w_c · ((1 − ε)·onehot(y) + ε/C), zero on ignored rows. The mean divides
            # by Σ_n w_{y_n} over kept rows (by their count without weights), as PyTorch.
            t = self.index_target.reshape(-1)                          # (M,)
            keep = t != self.ignore_index
            y = xp.where(keep, t, 0)
            q = xp.zeros((m, c), dtype=x.dtype)
            q[xp.arange(m), y] = 1 - eps
            if eps:
                q += eps / c
            if w is not None:
                q *= w
            q *= keep[:, None]
            if self.bad_rows is not None:
                # An out-of-range class index (found on the device, see _class_loss): its row of Q is
                # NaN, so the loss and the row's gradient are NaN, never a silently wrapped-around class.
                q = xp.where(self.bad_rows[:, None], xp.asarray(np.nan, dtype=q.dtype), q)
            denom = (w[y] * keep).sum() if w is not None else keep.sum()
        else:
            # Q = w_c · ((1 − ε)·t + ε/C); the mean divides by the number of rows M.
            q = _rows(prob_target[0])
            if eps:
                q = q * (1 - eps) + eps / c
            if w is not None:
                q = q * w
            denom = m
        self.q = q
        self.denom = xp.asarray(denom, dtype=x.dtype)
        loss = -(q * self.logp).sum(axis=1)                            # (M,)
        if self.reduction == "none":
            out_shape = self.x_shape[:1] + self.x_shape[2:] if len(self.x_shape) > 1 else ()
            return loss.reshape(out_shape)
        total = loss.sum()
        return xp.asarray(total / self.denom if self.reduction == "mean" else total, dtype=x.dtype)

    def backward(self, gy):
        xp = get_array_module(gy)
        if self.fused:                                                 # one kernel (see forward)
            gz = fused_cuda.class_nll_backward(gy, self.logp, self.index_target.reshape(-1), self.weight,
                                               self.qsum, self.denom if self.reduction == "mean" else None,
                                               self.eps, self.ignore_index, self.from_logits)
            return (_unrows(gz, self.x_shape),)
        gm = gy.reshape(-1, 1)                                         # ∂L/∂loss_n, (M, 1) or (1, 1)
        if self.reduction == "mean":
            gm = gm / self.denom
        q = self.q
        gx = gt = None
        if self.needs_grad[0]:
            if self.from_logits:
                gz = (xp.exp(self.logp) * q.sum(axis=1, keepdims=True) - q) * gm
            else:
                gz = -q * gm
            gx = _unrows(gz, self.x_shape)
        if len(self.needs_grad) > 1 and self.needs_grad[1]:
            gt = -(1 - self.eps) * self.logp * gm
            if self.weight is not None:
                gt = gt * self.weight
            gt = _unrows(gt, self.x_shape)
        return gx, gt


def _class_loss(op, input, target, weight, ignore_index, reduction, label_smoothing, from_logits):  # noqa: A002
    """Validate the arguments shared by cross_entropy and nll_loss, then run the op."""
    _check_reduction(op, reduction)
    if input.dtype.kind != "f":
        raise TypeError(f"{op}: input must be floating point (logits / log-probabilities), got {input.dtype}")
    if input.ndim == 0:
        raise ValueError(f"{op}: input must be (C,), (N, C) or (N, C, d1, ...), got a 0-d tensor")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing}")
    c = input.shape[0] if input.ndim == 1 else input.shape[1]
    xp = get_array_module(_data(input))
    w = None
    if weight is not None:
        w = _data(weight)
        if tuple(w.shape) != (c,):
            raise ValueError(f"{op}: weight must have shape ({c},), one value per class, got {tuple(w.shape)}")
        if w.dtype != input.dtype:
            raise TypeError(f"{op}: weight is {w.dtype} but input is {input.dtype}; cast the weight")
    t = _data(target)
    if not hasattr(t, "dtype"):                     # a list or a number
        t = xp.asarray(t)
    index_shape = tuple(input.shape[:1]) + tuple(input.shape[2:]) if input.ndim > 1 else ()
    if t.dtype.kind in "iu":
        if tuple(t.shape) != index_shape:
            raise ValueError(f"{op}: class-index target must have shape {index_shape} for input of shape "
                             f"{input.shape} (class dim {0 if input.ndim == 1 else 1} removed), got {tuple(t.shape)}")
        t = xp.asarray(t)                          # on the input's device

        def out_of_range():
            return ((t < 0) | (t >= c)) & (t != ignore_index)
        if xp is np:
            bad = out_of_range()
            if bad.any():
                raise _bad_labels(op, t[bad], c, ignore_index)
            fn = CrossEntropy(t, w, reduction, label_smoothing, ignore_index, from_logits)
            return fn(input)
        # On the GPU an out-of-range index would wrap around (no bounds checks), and asking the
        # device now would stall the stream every step. So the check stays on the device: the
        # bad rows' loss is NaN, and reading the loss on the host (item(), numpy(): a sync
        # anyway) raises the IndexError when it finds a NaN caused by a bad label. (minivit.data
        # also validates a dataset's labels once, when it loads.) The fused kernels make those
        # NaN rows themselves; the reference code is given them.
        bad = None if fused_cuda.applies(_data(input)) else out_of_range().reshape(-1)
        fn = CrossEntropy(t, w, reduction, label_smoothing, ignore_index, from_logits, bad_rows=bad)
        out = fn(input)

        def check(value):
            if np.isnan(value).any():
                rows = bad if bad is not None else out_of_range().reshape(-1)
                labels = backend.to_numpy(t.reshape(-1)[rows])
                if labels.size:
                    raise _bad_labels(op, labels, c, ignore_index)
        defer_check(out, check)
        return out
    if t.dtype.kind == "f" and from_logits:
        if tuple(t.shape) != tuple(input.shape):
            raise ValueError(f"{op}: probability target must have the input's shape {input.shape}, got "
                             f"{tuple(t.shape)}; for class indices pass an integer tensor of shape {index_shape}")
        if t.dtype != input.dtype:
            raise TypeError(f"{op}: probability target is {t.dtype} but input is {input.dtype}; cast one of them")
        fn = CrossEntropy(None, w, reduction, label_smoothing, ignore_index, from_logits)
        return fn(input, target)
    kinds = "integer class indices" + (" or floating-point class probabilities" if from_logits else "")
    raise TypeError(f"{op}: target must hold {kinds}, got dtype {t.dtype}; e.g. target.astype(np.int64)")


def _bad_labels(op, labels, c, ignore_index) -> IndexError:
    """The error for class indices outside [0, C), naming them (and C)."""
    return IndexError(f"{op}: target class indices must be in [0, {c - 1}] for {c} classes (or ignore_index="
                      f"{ignore_index}), got {np.unique(labels)[:10].tolist()}")


def cross_entropy(input, target, weight=None, *, ignore_index=-100, reduction="mean",  # noqa: A002
                  label_smoothing=0.0):
    """``torch.nn.functional.cross_entropy`` on logits (N, C) / (N, C, d1, ...) / (C,).

    target: integer class indices (N,) / (N, d1, ...), or class probabilities with the
    input's shape (soft labels, e.g. from mixup). ``label_smoothing`` ε mixes the target
    with the uniform distribution: (1 − ε)·target + ε/C.
    """
    if amp._enabled:                                  # autocast: float32 (minivit.amp's policy)
        input, target, weight = amp.cast_inputs("cross_entropy", input, target, weight)
    return _class_loss("cross_entropy", input, target, weight, ignore_index, reduction,
                       label_smoothing, from_logits=True)


def nll_loss(input, target, weight=None, *, ignore_index=-100, reduction="mean"):  # noqa: A002
    """``torch.nn.functional.nll_loss``: input holds log-probabilities; loss_n = −w_{y_n}·input[n, y_n]."""
    if amp._enabled:                                  # autocast: float32 (minivit.amp's policy)
        input, weight = amp.cast_inputs("nll_loss", input, weight)
    return _class_loss("nll_loss", input, target, weight, ignore_index, reduction, 0.0, from_logits=False)


# =========================================================================== pointwise losses
def _reduce(xp, loss, reduction, batch=None):
    """Reduce a pointwise loss; returns (value, divisor) where divisor scales the backward."""
    if reduction == "none":
        return loss, 1
    n = {"sum": 1, "mean": loss.size, "batchmean": batch}[reduction]
    return xp.asarray(loss.sum() / loss.dtype.type(n), dtype=loss.dtype), n


class KLDiv(Function):
    """Pointwise KL term, x the log-probabilities of the model, t the target:

        log_target=False:  l = t·(log t − x),  with 0·log 0 = 0      ∂l/∂x = −t,    ∂l/∂t = log t + 1 − x
        log_target=True:   l = e^t·(t − x)                            ∂l/∂x = −e^t,  ∂l/∂t = e^t·(t − x + 1)

    At t = 0 the t-derivative of t·log t does not exist (it tends to −∞); PyTorch
    returns NaN there and so do we.
    """

    def __init__(self, reduction, log_target):
        self.reduction, self.log_target = reduction, log_target

    def forward(self, x, t):
        xp = get_array_module(x)
        self.x, self.t = x, t
        if self.log_target:
            self.et = xp.exp(t)
            loss = self.et * (t - x)
        else:
            self.logt = xp.log(xp.where(t == 0, t.dtype.type(1), t))   # log t, and 0 where t == 0
            loss = t * (self.logt - x)
        self.loss_shape = loss.shape
        batch = x.shape[0] if x.ndim > 0 else 1
        out, self.n = _reduce(xp, loss, self.reduction, batch)
        return out

    def backward(self, gy):
        xp = get_array_module(gy)
        g = xp.broadcast_to(gy / gy.dtype.type(self.n), self.loss_shape)
        x, t = self.x, self.t
        gx = gt = None
        if self.needs_grad[0]:
            gx = sum_to(-(self.et if self.log_target else t) * g, x.shape)
        if self.needs_grad[1]:
            if self.log_target:
                dt = self.et * (t - x + 1)
            else:
                dt = xp.where(t == 0, t.dtype.type(np.nan), self.logt + 1 - x)
            gt = sum_to(dt * g, t.shape)
        return gx, gt


def kl_div(input, target, reduction="mean", log_target=False):  # noqa: A002
    """``torch.nn.functional.kl_div``: Σ target·(log target − input), input being
    log-probabilities (and target too if ``log_target``).

    Use ``reduction='batchmean'`` for the true KL divergence per sample; 'mean'
    averages over every element (PyTorch's default, kept for parity).
    """
    _check_reduction("kl_div", reduction, _REDUCTIONS + ("batchmean",))
    if amp._enabled:                                  # autocast: float32 (minivit.amp's policy)
        input, target = amp.cast_inputs("kl_div", input, target)
    if not isinstance(target, Tensor):
        target = Tensor(get_array_module(_data(input)).asarray(target, dtype=input.dtype))
    for name, a in (("input", input), ("target", target)):
        if a.dtype.kind != "f":
            raise TypeError(f"kl_div: {name} must be floating point, got {a.dtype}")
    if input.dtype != target.dtype:
        raise TypeError(f"kl_div: input is {input.dtype} but target is {target.dtype}; cast one of them")
    try:
        np.broadcast_shapes(input.shape, target.shape)
    except ValueError:
        raise ValueError(f"kl_div: input shape {input.shape} and target shape {target.shape} "
                         f"do not broadcast") from None
    return KLDiv(reduction, log_target)(input, target)


class MSELoss(Function):
    """l = (x − t)²;  ∂l/∂x = 2(x − t) = −∂l/∂t."""

    def __init__(self, reduction):
        self.reduction = reduction

    def forward(self, x, t):
        self.shapes = x.shape, t.shape
        self.d = x - t
        out, self.n = _reduce(get_array_module(x), self.d * self.d, self.reduction)
        return out

    def backward(self, gy):
        gd = 2 * self.d * (gy / gy.dtype.type(self.n))
        return (sum_to(gd, self.shapes[0]) if self.needs_grad[0] else None,
                sum_to(-gd, self.shapes[1]) if self.needs_grad[1] else None)


def mse_loss(input, target, reduction="mean"):  # noqa: A002
    """``torch.nn.functional.mse_loss``: mean (or sum, or none) of (input − target)²."""
    _check_reduction("mse_loss", reduction)
    if amp._enabled:                                  # autocast: float32 (minivit.amp's policy)
        input, target = amp.cast_inputs("mse_loss", input, target)
    if not isinstance(target, Tensor):
        target = Tensor(get_array_module(_data(input)).asarray(target, dtype=input.dtype))
    if input.dtype != target.dtype:
        raise TypeError(f"mse_loss: input is {input.dtype} but target is {target.dtype}; cast one of them")
    if tuple(input.shape) != tuple(target.shape):
        try:
            np.broadcast_shapes(input.shape, target.shape)
        except ValueError:
            raise ValueError(f"mse_loss: input shape {input.shape} and target shape {target.shape} "
                             f"do not broadcast") from None
        warnings.warn(f"mse_loss: target shape {target.shape} differs from input shape {input.shape}; "
                      f"they are broadcast (as PyTorch does), which is rarely what you want", stacklevel=2)
    return MSELoss(reduction)(input, target)


__all__ = ["cross_entropy", "nll_loss", "kl_div", "mse_loss"]
