"""Stochastic gradient descent with momentum, as ``torch.optim.SGD``."""
from __future__ import annotations

from minivit.optim.optimizer import FlatGroup, Optimizer, foreach_applies, required


class SGD(Optimizer):
    r"""SGD with optional (Nesterov) momentum and L2 weight decay, exactly as PyTorch.

    For each parameter p with gradient g, at step t (μ momentum, τ dampening,
    λ weight decay, γ lr)::

        g ← g + λ·p                          (L2 penalty, coupled to the gradient)
        b ← g                     if t = 1   (the buffer starts at the first gradient)
        b ← μ·b + (1 − τ)·g       otherwise
        g ← g + μ·b  if nesterov  else  b
        p ← p − γ·g

    Sutskever et al. 2013 write momentum as v ← μv − γg; PyTorch (and so we)
    keep γ outside the buffer, which is the same when γ is constant.

    ``foreach`` (PyTorch's name): with momentum, the group's parameters and momentum buffers as
    views of one flat array each (``FlatGroup``, as AdamW's), so the group takes one pass of the
    same operations; the same numbers as the loop. None (default): where it applies; False: never.
    """

    def __init__(self, params, lr=required, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, foreach: bool | None = None):
        self.foreach, self._flat = foreach, {}
        if lr is not required and lr < 0.0:
            raise ValueError(f"invalid learning rate: {lr} (must be >= 0)")
        if momentum < 0.0:
            raise ValueError(f"invalid momentum value: {momentum} (must be >= 0)")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay value: {weight_decay} (must be >= 0)")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"Nesterov momentum requires momentum > 0 and dampening = 0, got "
                             f"momentum={momentum}, dampening={dampening}")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            lr, mu, tau = group["lr"], group["momentum"], group["dampening"]
            wd, nesterov = group["weight_decay"], group["nesterov"]
            if self.foreach is not False and mu != 0 and self._step_foreach(group, lr, mu, tau, wd, nesterov):
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad                                    # never changed in place: may be shared
                if wd != 0:
                    g = g + wd * p.data                       # g ← g + λp
                if mu != 0:
                    state = self.state.setdefault(p, {})
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = g.copy()   # b₁ = g₁
                    else:
                        buf *= mu                             # b ← μb ...
                        buf += (1 - tau) * g                  #   ... + (1 − τ)g
                    g = g + mu * buf if nesterov else buf     # Nesterov looks one step ahead
                p.data -= lr * g                              # p ← p − γg
        return loss

    def _step_foreach(self, group, lr, mu, tau, wd, nesterov) -> bool:
        """The loop above on one flat array per group; False where it does not apply."""
        params = group["params"]
        if not foreach_applies(params):
            return False
        started = {"momentum_buffer" in self.state.get(p, {}) for p in params}
        if len(started) != 1:
            return False
        first = not started.pop()
        key = id(group["params"])
        flat = self._flat.get(key)
        if flat is None or not flat.valid(params, self.state):
            flat = self._flat[key] = FlatGroup.build(params, self.state, ("momentum_buffer",))
        P, buf, g = flat.flat["param"], flat.flat["momentum_buffer"], flat.grads(params)
        if wd != 0:
            g = g + wd * P                                    # g ← g + λp
        if first:
            buf[...] = g                                      # b₁ = g₁
        else:
            buf *= mu
            buf += (1 - tau) * g
        g = g + mu * buf if nesterov else buf
        P -= lr * g
        return True
