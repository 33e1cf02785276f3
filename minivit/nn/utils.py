"""Gradient clipping, as ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``.

Both *replace* ``p.grad`` with a new array instead of scaling it in place:
the autograd engine may hand one gradient array to several tensors, and an
in-place change would silently scale the others too.
"""
from __future__ import annotations

import numpy as np

from minivit.autograd import Tensor


def _grads(parameters) -> list[Tensor]:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [p for p in parameters if p.grad is not None]


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False):
    r"""Rescale all gradients together so their global norm is at most ``max_norm``.

    The gradients are treated as one long vector::

        total_norm = ‖(‖g₁‖, ‖g₂‖, ...)‖          (the p-norm of the per-tensor p-norms)
        g ← g · min(1, max_norm / (total_norm + 1e-6))

    so the update keeps its direction and only its length is capped (Pascanu
    et al. 2013); the 1e-6 guards against dividing by zero. ``norm_type`` may
    be ``float("inf")`` (largest absolute entry).

    Returns the total norm *before* clipping as a 0-d array (NumPy or CuPy, the
    gradients' dtype) — not a Python float, so that on the GPU no
    synchronisation is forced; use ``float(...)`` to log it.
    """
    params = _grads(parameters)
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not params:
        return np.zeros((), dtype=np.float32)
    xp = params[0].xp
    norms = xp.stack([xp.linalg.norm(p.grad.ravel(), ord=norm_type) for p in params])
    total_norm = xp.asarray(xp.linalg.norm(norms, ord=norm_type))  # NumPy gives a scalar: make it 0-d
    if error_if_nonfinite and not bool(xp.isfinite(total_norm)):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is "
                           f"{float(total_norm)}, so they cannot be clipped; set "
                           "error_if_nonfinite=False to scale them by it anyway")
    # Always multiply (by 1 when the norm is small): branching on the value
    # would force a GPU -> host copy every step.
    clip_coef = xp.minimum(max_norm / (total_norm + 1e-6), 1.0)
    for p in params:
        p.grad = p.grad * clip_coef.astype(p.grad.dtype)  # a new array: never scale a shared grad in place
    return total_norm


def clip_grad_value_(parameters, clip_value: float):
    """Clamp every gradient entry to ``[-clip_value, clip_value]`` (new arrays, not in place)."""
    clip_value = float(clip_value)
    for p in _grads(parameters):
        p.grad = p.xp.clip(p.grad, -clip_value, clip_value)
