"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as ``torch.optim.AdamW``."""
from __future__ import annotations

import math

import numpy as np

from minivit import backend
from minivit.functional import fused_cuda
from minivit.optim.optimizer import FlatGroup, Optimizer, foreach_applies


class AdamW(Optimizer):
    r"""Adam with decoupled weight decay, exactly as PyTorch's AdamW.

    For each parameter p with gradient g, at its step t = 1, 2, ... (γ lr,
    λ weight decay, β₁ β₂ betas, ε eps)::

        p  ← p − γ·λ·p                       (decoupled decay: not mixed into g)
        m  ← β₁·m + (1 − β₁)·g               (first moment: running mean of g)
        v  ← β₂·v + (1 − β₂)·g²              (second moment: running mean of g²)
        v̂max ← max(v̂max, v)                  (amsgrad only; then used instead of v)
        p  ← p − γ/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)

    m and v start at 0, so early on they are biased towards 0; dividing by
    1 − βᵗ corrects that (Kingma & Ba 2015, §3). As in PyTorch, ε is added
    *after* the square root of the bias-corrected v. Plain Adam's L2 penalty
    (g ← g + λp) gets rescaled by 1/√v, so heavily-updated weights would be
    barely regularised; decoupling the decay from g fixes that.

    Updates are whole-array operations (``_update``, below), in place on ``p.data``,
    m and v; on the CPU a large parameter is cut into pieces that run on
    ``backend``'s threads. On the GPU the whole update of a parameter is one fused kernel instead
    (``fused_cuda.adamw_step``: these operations in this order, one pass).
    ``fused``, as PyTorch's: None (default) uses it wherever it can (float32 or
    float64 parameters on the GPU, unless MINIVIT_FUSED=0 switched the fused
    kernels off); False never; True always, and a parameter it cannot take is
    an error.

    ``foreach``, as PyTorch's: the multi-tensor step. The parameters of a group, and their m
    and v, become views of one flat array each (``FlatGroup``), so the whole group is updated
    by one ``_update`` (one fused kernel on the GPU) after one copy that gathers the gradients:
    on a GPU about 3 device operations per group instead of one or more per parameter. The
    numbers are the per-parameter loop's, element for element (the same operations in the same
    order). None (default) uses it where it applies (every parameter of the group has a
    gradient, one device, one floating dtype, the same step count), as PyTorch on CUDA; False
    never (the readable loop below).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, fused: bool | None = None,
                 foreach: bool | None = None):
        self.fused, self.foreach = fused, foreach
        self._flat: dict[int, FlatGroup] = {}
        if lr < 0.0:
            raise ValueError(f"invalid learning rate: {lr} (must be >= 0)")
        if eps < 0.0:
            raise ValueError(f"invalid epsilon value: {eps} (must be >= 0)")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {tuple(betas)}: both must be in [0, 1)")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay value: {weight_decay} (must be >= 0)")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad))

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, wd, amsgrad = group["eps"], group["weight_decay"], group["amsgrad"]
            if self.foreach is not False and self._step_foreach(group, lr, beta1, beta2, eps, wd, amsgrad):
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad                                   # read only: may be shared
                xp = p.xp
                state = self.state.get(p)
                if state is None:                            # lazily: m = v = 0, t = 0
                    state = self.state[p] = {"step": 0,
                                             "exp_avg": xp.zeros_like(p.data),
                                             "exp_avg_sq": xp.zeros_like(p.data)}
                    if amsgrad:
                        state["max_exp_avg_sq"] = xp.zeros_like(p.data)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                t = state["step"]                            # t ← t + 1
                vmax = state["max_exp_avg_sq"] if amsgrad else None
                if self._use_fused(p, g, m, v, vmax):        # all of _update, in one kernel
                    fused_cuda.adamw_step(p.data, g, m, v, vmax, t, lr, beta1, beta2, eps, wd)
                    continue

                arrays = (p.data, g, m, v, vmax)
                # On the CPU a large parameter is updated in pieces, over backend's threads.
                if xp is np and p.data.size >= 2 * _PIECE and all(
                        a is None or a.flags.c_contiguous for a in arrays):
                    flat = [None if a is None else a.reshape(-1) for a in arrays]
                    backend.parallel_pieces(
                        p.data.size, lambda lo, hi: _update_blocks(flat, lo, hi, t, lr, beta1, beta2, eps, wd),
                        min_size=_PIECE)
                else:
                    _update(*arrays, t, lr, beta1, beta2, eps, wd, xp)
        return loss

    def _step_foreach(self, group, lr, beta1, beta2, eps, wd, amsgrad) -> bool:
        """The whole group as one flat array (see ``foreach``); False where it does not apply."""
        params = group["params"]
        if not foreach_applies(params):
            return False
        steps = {self.state[p]["step"] if p in self.state else 0 for p in params}
        if len(steps) != 1:                      # parameters that joined late: the per-parameter loop
            return False
        names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
        key = id(group["params"])
        flat = self._flat.get(key)
        if flat is None or not flat.valid(params, self.state):
            flat = self._flat[key] = FlatGroup.build(params, self.state, names)
        t = steps.pop() + 1                      # t ← t + 1, for every parameter of the group
        for p in params:
            self.state[p]["step"] = t
        P, M, V = flat.flat["param"], flat.flat["exp_avg"], flat.flat["exp_avg_sq"]
        G, VM = flat.grads(params), flat.flat.get("max_exp_avg_sq")
        if self._use_fused(params[0], G, M, V, VM, P):
            fused_cuda.adamw_step(P, G, M, V, VM, t, lr, beta1, beta2, eps, wd)
        elif P.size >= 2 * _PIECE and params[0].xp is np:
            backend.parallel_pieces(P.size, lambda lo, hi: _update_blocks(
                (P, G, M, V, VM), lo, hi, t, lr, beta1, beta2, eps, wd), min_size=_PIECE)
        else:
            _update(P, G, M, V, VM, t, lr, beta1, beta2, eps, wd, params[0].xp)
        return True

    def _use_fused(self, p, g, m, v, vmax, data=None) -> bool:
        if self.fused is False:
            return False
        data = p.data if data is None else data              # (the flat array of a foreach step)
        arrays = (data, g, m, v) + (() if vmax is None else (vmax,))
        if self.fused is None:                               # cheap on the CPU: applies() is False first
            return fused_cuda.applies(*arrays) and all(a.shape == data.shape for a in arrays)
        with fused_cuda.use_fused(True):                     # fused=True: asked for explicitly
            if fused_cuda.applies(*arrays) and all(a.shape == data.shape for a in arrays):
                return True
        raise RuntimeError(f"AdamW(fused=True) needs float32 or float64 parameters, gradients and "
                           f"state of one dtype and shape on the GPU; got a parameter of shape "
                           f"{p.shape}, dtype {p.dtype} on {p.device} with a {g.dtype} gradient "
                           f"of shape {g.shape}: use fused=None (the default) to fall back to "
                           f"the unfused update, or move the model to 'cuda'")


_PIECE = 1 << 15        # elements: smaller parameters are updated whole, on the calling thread
_BLOCK = 1 << 16        # elements: a thread's piece goes through _update this many at a time


def _update_blocks(flat, lo, hi, t, lr, beta1, beta2, eps, wd):
    """_update on elements lo..hi-1 of the flat CPU arrays (p, g, m, v, vmax), a block at a time:
    its half-dozen temporaries then stay in the core's cache (and malloc reuses them) instead of
    being as large as the piece (fresh pages for each, a pass over memory for each). Elementwise,
    so the numbers are the whole update's, bit for bit (tests/test_optim_foreach.py)."""
    for a in range(lo, hi, _BLOCK):
        b = min(hi, a + _BLOCK)
        _update(*(None if x is None else x[a:b] for x in flat), t, lr, beta1, beta2, eps, wd, np)


def _update(p, g, m, v, vmax, t, lr, beta1, beta2, eps, wd, xp):
    """One AdamW step, in place on the arrays p, m, v (and vmax with amsgrad)."""
    if wd != 0:
        p *= 1 - lr * wd                         # p ← p − γλp  (decoupled decay)
    m *= beta1                                   # m ← β₁m ...
    m += (1 - beta1) * g                         #   ... + (1 − β₁)g
    v *= beta2                                   # v ← β₂v ...
    v += (1 - beta2) * (g * g)                   #   ... + (1 − β₂)g²
    if vmax is not None:
        xp.maximum(vmax, v, out=vmax)            # v̂max ← max(v̂max, v)
        v = vmax                                 # normalise by the largest v so far
    bias_correction1 = 1 - beta1 ** t            # 1 − β₁ᵗ
    bias_correction2 = 1 - beta2 ** t            # 1 − β₂ᵗ
    step_size = lr / bias_correction1            # γ / (1 − β₁ᵗ)
    denom = xp.sqrt(v)                           # √v ...
    denom /= math.sqrt(bias_correction2)         #   ... / √(1 − β₂ᵗ)  (= √v̂)
    denom += eps                                 #   ... + ε
    p -= step_size * (m / denom)                 # p ← p − γ m̂ / (√v̂ + ε)
