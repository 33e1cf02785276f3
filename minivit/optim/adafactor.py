"""Adafactor (Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory
Cost"), as ``torch.optim.Adafactor``."""
from __future__ import annotations

import math

import numpy as np

from minivit.optim.optimizer import Optimizer


class Adafactor(Optimizer):
    r"""Adafactor, exactly as PyTorch's ``torch.optim.Adafactor`` (same arguments, same update).

    Adam keeps two full-size buffers per parameter (m and v): optimiser state twice the model.
    Adafactor keeps no first moment and, for a matrix G (n × m), only the row and column means
    of G² instead of the full second moment V: n + m numbers instead of n·m. For each parameter
    θ with gradient G at its step t = 1, 2, ... (γ lr, τ beta2_decay, ε₁ ε₂ eps, d, λ
    weight decay)::

        β̂₂ₜ = 1 − t^τ                          (τ = −0.8: β̂₂ = 0 at t = 1, → 1; paper §7)
        ρₜ  = min(γ, 1/√t)                      (relative step size, paper §8)
        αₜ  = max(ε₂, RMS(θₜ₋₁)) · ρₜ            (step size relative to the parameter's scale)
        θ  ← θ − γ·λ·θ                          (decoupled weight decay, as AdamW)
        matrix (ndim ≥ 2), over its last two dims:
            R ← β̂₂ₜ R + (1 − β̂₂ₜ) · mean_cols(G²)       (n × 1: row statistics)
            C ← β̂₂ₜ C + (1 − β̂₂ₜ) · mean_rows(G²)       (1 × m: column statistics)
            V̂ = R C / max(mean(R), ε₁)                  (the rank-1 estimate, below)
        vector (ndim ≤ 1):
            V̂ ← β̂₂ₜ V̂ + (1 − β̂₂ₜ) · G²
        U = G / max(√V̂, ε₁)
        Û = U / max(1, RMS(U) / d)               (update clipping, paper §6)
        θ ← θ − αₜ · Û

    The factored second moment (paper §3, written there with sums; here with means, which
    give the same matrix): the rank-1 matrix closest to V in the generalized
    Kullback-Leibler divergence is

        V̂ = (V 1ₘ)(1ₙᵀ V) / (1ₙᵀ V 1ₘ)            i.e.  V̂ᵢⱼ = rᵢ · cⱼ / r̄

    the outer product of the row means rᵢ and the column means cⱼ divided by the mean of all
    entries r̄ (the mean of the row means), which gets each row's and each column's mean right.
    R and C are linear in V, so running averages of R and C are the row and column means of
    the running average of V. A parameter with more than two dims (a conv kernel (O, I, kh,
    kw)) is a stack of matrices over its last two dims, each with its own R and C (PyTorch's
    choice; big_vision factors the two largest dims instead). For a 1×1 conv (O, I, 1, 1)
    those are 1 × 1, and R and C together hold twice the weight's size
    (``benchmarks/optimizer_memory.py``: ConvMixer's state is 91 % of AdamW's).

    As in PyTorch, and unlike the paper: ``lr`` caps ρₜ (the paper's constant 0.01, the
    default) and scales the weight decay; ε₁ (default the dtype's machine epsilon) bounds
    the denominators instead of being added to G² (PyTorch's docstring explains it); means,
    not sums. There is no momentum (the paper's β₁ = 0). ``foreach`` is accepted for
    PyTorch's signature and ignored: one readable loop over the parameters. State per
    parameter: ``step``, and ``row_var`` (…, n, 1) and ``col_var`` (…, 1, m) for a matrix or
    ``variance`` (its shape) for a vector (PyTorch's names).

    timm's ``AdafactorBigVision`` (the optimiser of "Scaling Vision Transformers" §3.4, from
    big_vision) is a different variant, not an option of this one: it factors the two
    largest dims when the smaller is ≥ ``min_dim_size_to_factor`` (16); adds ε to G²
    (1e-30) before the statistics; caps β₂ at 0.999 (``beta2_cap``); keeps a momentum (β₁ =
    0.9, by default in bfloat16, the paper's half-precision momentum); has no relative step
    size or parameter scaling (the step is lr · Û, so its lr is an absolute learning rate,
    default 1.0 under a schedule); clips only with ``clipping_threshold``; and decays θ by
    lr·λ after computing the update. No setting of either makes the two the same update
    (PyTorch's always scales by max(ε₂, RMS(θ)), big_vision's never), so parity is tested
    against ``torch.optim.Adafactor`` only.
    """

    def __init__(self, params, lr: float = 1e-2, beta2_decay: float = -0.8, eps=(None, 1e-3), d: float = 1.0,
                 weight_decay: float = 0.0, *, foreach: bool | None = None, maximize: bool = False):
        if not 0.0 <= lr:
            raise ValueError(f"invalid learning rate: {lr} (must be >= 0)")
        if not beta2_decay <= 0.0:
            raise ValueError(f"invalid beta2_decay: {beta2_decay} (must be <= 0; -0.8 is the paper's)")
        eps = tuple(eps)
        if len(eps) != 2 or (eps[0] is not None and eps[0] < 0.0) or eps[1] < 0.0:
            raise ValueError(f"invalid eps {eps}: expected (eps1 >= 0 or None, eps2 >= 0), e.g. (None, 1e-3)")
        if not d >= 1.0:
            raise ValueError(f"invalid clipping threshold d: {d} (must be >= 1)")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay value: {weight_decay} (must be >= 0)")
        super().__init__(params, dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
                                      foreach=foreach, maximize=maximize))

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            lr, tau, d, wd = group["lr"], group["beta2_decay"], group["d"], group["weight_decay"]
            eps1, eps2 = group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                xp = p.xp
                g = -p.grad if group["maximize"] else p.grad         # read only: may be shared
                state = self.state.get(p)
                if state is None:                                    # lazily: statistics = 0, t = 0
                    state = self.state[p] = {"step": 0}
                    if g.ndim > 1:
                        state["row_var"] = xp.zeros(g.shape[:-1] + (1,), dtype=g.dtype)           # (…, n, 1)
                        state["col_var"] = xp.zeros(g.shape[:-2] + (1, g.shape[-1]), dtype=g.dtype)  # (…, 1, m)
                    else:
                        state["variance"] = xp.zeros_like(g)
                state["step"] += 1
                _update(p.data, g, state, state["step"], lr, tau,
                        np.finfo(p.dtype).eps if eps1 is None else eps1, eps2, d, wd, xp)
        return loss


def _rms(a, xp):
    """Root mean square of all entries: a 0-d array on a's device (no host round trip)."""
    return xp.sqrt(xp.mean(a * a))


def _update(p, g, state, t, lr, tau, eps1, eps2, d, wd, xp):
    """One Adafactor step, in place on p and the statistics in ``state``."""
    one_minus_beta2 = t ** tau                            # 1 − β̂₂ₜ = t^τ
    rho = min(lr, 1.0 / math.sqrt(t))                     # ρₜ
    alpha = xp.maximum(_rms(p, xp), eps2) * rho           # αₜ, from θₜ₋₁ (before the decay)
    if wd != 0:
        p *= 1 - lr * wd                                  # θ ← θ − γλθ
    g2 = g * g
    if g.ndim > 1:
        R, C = state["row_var"], state["col_var"]
        R += one_minus_beta2 * (g2.mean(axis=-1, keepdims=True) - R)     # (…, n, 1) running row means
        C += one_minus_beta2 * (g2.mean(axis=-2, keepdims=True) - C)     # (…, 1, m) running column means
        r_bar = xp.maximum(R.mean(axis=-2, keepdims=True), eps1)         # (…, 1, 1) mean of all entries
        v_hat = R * C / r_bar                                            # (…, n, m) rank 1: rᵢ cⱼ / r̄
    else:
        v = state["variance"]
        v += one_minus_beta2 * (g2 - v)                                  # running mean of G²
        v_hat = v
    u = g / xp.sqrt(xp.maximum(v_hat, eps1 * eps1))                      # U = G / max(√V̂, ε₁)
    u /= xp.maximum(_rms(u, xp) / d, 1.0)                                # clip: RMS(Û) ≤ d
    p -= alpha * u                                                       # θ ← θ − αₜ Û
