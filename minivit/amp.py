"""Mixed precision: ``autocast`` (float16 compute) and ``GradScaler`` (dynamic loss scaling),
with PyTorch's names, arguments and recipe::

    scaler = amp.GradScaler()
    with amp.autocast():                     # matmuls in float16, the sensitive ops in float32
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()            # backward of loss · S: small gradients stay representable
    scaler.unscale_(optimizer)               # grads / S (only needed before clipping)
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)                   # skipped if any grad is inf/NaN
    scaler.update()                          # S halves after an overflow, doubles after 2000 clean steps

Why. float16 has 5 exponent bits and 10 mantissa bits: values from 6·10⁻⁸ (subnormal;
6·10⁻⁵ normal) to 65504, about 3 decimal digits. A GPU's tensor cores multiply it several
times faster than float32 and it halves the memory traffic, so the big matrix products
(linear, matmul, conv) gain most and suffer least: cuBLAS accumulates their dot products
in float32. Two things go wrong in pure float16:

* **Precision.** A weight update lr·g is often below one float16 ulp of the weight
  and would be lost, so the parameters stay float32 ("master weights"): autocast casts
  them to float16 on their way into each matmul, through the engine's differentiable
  cast, whose backward casts the gradient back. The optimizer only ever sees float32.
  Ops that sum many terms or exponentiate (softmax, log_softmax, layer/batch norm, the
  losses) lose too much in float16 or overflow (e^12 > 65504), so autocast runs them
  in float32. GELU too, for a minivit reason: its erf comes from SciPy/CuPy, which have
  no float16 kernel (SciPy would silently return float64).
* **Range.** Gradients of a loss averaged over a batch are often below 6·10⁻⁵ and
  flush to zero in float16. Multiplying the loss by S (2¹⁶ to start) multiplies every
  gradient by S on the way back and keeps them representable; ``unscale_`` divides by
  S again, in float32, before the update. If S was too big something overflowed to
  inf/NaN: that step is skipped and S halved. After ``growth_interval`` clean steps S
  doubles, so it hovers just below the overflow point ("dynamic" loss scaling,
  Micikevicius et al. 2018).

The cast policy (which op computes in which dtype) lives here, in one table; the
functional wrappers (``F.linear``, ``F.softmax``, ...) call :func:`cast_inputs` when
autocast is on, so with autocast off an op pays one global flag check.
"""
from __future__ import annotations

import contextlib

import numpy as np

from minivit import backend
from minivit.autograd import Tensor

# Read by every functional wrapper: the whole cost of autocast when it is off.
_enabled = False
_dtype = np.dtype(np.float16)

# PyTorch's CUDA autocast lists, cut down to minivit's ops.
# GEMMs: float16 inputs, float16 output (cuBLAS accumulates in float32).
LOWER_PRECISION_OPS = frozenset({"linear", "matmul", "conv1d", "conv2d", "conv3d", "conv_transpose2d",
                                 "conv_transpose3d"})
# Range- or precision-sensitive: float16 inputs are cast up to float32.
FLOAT32_OPS = frozenset({"softmax", "log_softmax", "layer_norm", "batch_norm", "instance_norm", "gelu",
                         "cross_entropy", "nll_loss", "kl_div", "mse_loss"})
# Everything else (add, mul, relu, dropout, reshapes, ...) runs in its inputs' dtype;
# mixed float16/float32 operands promote to float32, as NumPy and PyTorch do. Sums and
# means are not listed: NumPy accumulates float16 reductions in float32, and in the
# models they only see float32 tensors (norm outputs) anyway.


def _cast(a, dtype):
    # float64 is left alone, as in PyTorch: it means "exact on purpose" (gradient checks).
    if isinstance(a, Tensor) and a.dtype.kind == "f" and a.dtype != dtype and a.dtype != np.float64:
        return a.to(dtype=dtype)
    return a


def cast_inputs(op: str, *args) -> tuple:
    """``args`` cast for op ``op`` under the current autocast state (unchanged when it is off).

    Floating tensors of a :data:`LOWER_PRECISION_OPS` op become float16, float16 tensors
    of a :data:`FLOAT32_OPS` op float32; anything else (None, arrays, ints) passes as it is.
    The cast is ``Tensor.to``, so gradients flow back in the original dtype."""
    if not _enabled:
        return args
    if op in LOWER_PRECISION_OPS:
        dtype = _dtype
    elif op in FLOAT32_OPS:
        dtype = np.dtype(np.float32)
    else:
        raise ValueError(f"amp.cast_inputs: no autocast policy for op {op!r}; add it to "
                         f"LOWER_PRECISION_OPS or FLOAT32_OPS in minivit/amp.py")
    return tuple(_cast(a, dtype) for a in args)


def overflow_expected(enabled: bool = True):
    """A ``np.errstate`` that keeps NumPy quiet about float16 overflow in a scaled backward.

    An overflow there is part of dynamic loss scaling, not an error: the GradScaler finds
    the inf/NaN gradients, skips the step and lowers the scale. NumPy would print a
    RuntimeWarning for each (CuPy never warns; PyTorch neither)."""
    return np.errstate(over="ignore", invalid="ignore") if enabled else contextlib.nullcontext()


def is_autocast_enabled() -> bool:
    return _enabled


def get_autocast_dtype():
    return _dtype


class autocast:
    """Context manager (and decorator) that runs matmul-like ops in float16, as ``torch.autocast``.

    ``device_type`` is accepted for PyTorch's spelling (``autocast("cuda")``) and checked,
    but minivit's autocast covers arrays on every device. Only float16 exists: NumPy has
    no bfloat16. Nested regions restore the outer state on exit; ``enabled=False``
    turns autocast off inside an enabled region (e.g. for a float32 island).
    """

    def __init__(self, device_type: str | None = None, dtype="float16", enabled: bool = True):
        if device_type is not None and device_type not in backend.DEVICES:
            raise ValueError(f"autocast: device_type must be one of {backend.DEVICES} (or None), got "
                             f"{device_type!r}; the dtype goes in dtype=, e.g. autocast(dtype='float16')")
        try:
            dt = np.dtype(np.float16 if dtype is None else dtype)
        except TypeError:
            dt = None
        if dt != np.float16:
            raise ValueError(f"autocast: only dtype float16 is supported, got {dtype!r} "
                             "(NumPy and CuPy have no bfloat16)")
        self.dtype, self.enabled = dt, bool(enabled)

    def __enter__(self):
        global _enabled, _dtype
        self._prev = _enabled, _dtype
        _enabled, _dtype = self.enabled, self.dtype
        return self

    def __exit__(self, *exc):
        global _enabled, _dtype
        _enabled, _dtype = self._prev

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with autocast(dtype=self.dtype, enabled=self.enabled):
                return fn(*args, **kwargs)
        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper


# =========================================================================== loss scaling
_READY, _UNSCALED, _STEPPED = "ready", "unscaled", "stepped"


class GradScaler:
    """Dynamic loss scaling, as ``torch.amp.GradScaler`` (same arguments, state and rules).

    The scale S starts at ``init_scale``. ``update()`` multiplies it by ``backoff_factor``
    after a step whose gradients held an inf/NaN (that step was skipped), and by
    ``growth_factor`` after ``growth_interval`` clean steps in a row. S is kept as a
    float32 number, as PyTorch keeps it, so the two follow the same sequence.
    ``enabled=False`` makes every method a pass-through (``scale`` returns the loss,
    ``step`` just calls ``optimizer.step()``), so one training loop serves both precisions.

    Cost: ``step()`` reads one boolean back from the device (did any gradient overflow?),
    one host sync per step, as PyTorch's ``step`` does too; to skip an update the host
    has to know.
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        if not growth_factor > 1.0:
            raise ValueError(f"GradScaler: growth_factor must be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"GradScaler: backoff_factor must be in (0, 1), got {backoff_factor}")
        if int(growth_interval) < 1:
            raise ValueError(f"GradScaler: growth_interval must be a positive int, got {growth_interval}")
        self._enabled = bool(enabled)
        self._scale = float(np.float32(init_scale))
        self._growth_factor, self._backoff_factor = float(growth_factor), float(backoff_factor)
        self._growth_interval = int(growth_interval)
        self._growth_tracker = 0              # clean steps since the last change of S
        self._per_optimizer = {}              # id(optimizer) -> {"stage", "found_inf"} for this iteration

    def is_enabled(self) -> bool:
        return self._enabled

    def get_scale(self) -> float:
        """The current scale S (1.0 when disabled, as PyTorch)."""
        return self._scale if self._enabled else 1.0

    def scale(self, outputs):
        """``outputs`` · S: a tensor, or a list/tuple of them. A float16 loss is cast to float32
        first (2¹⁶ itself overflows float16, whose largest value is 65504)."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        if not isinstance(outputs, Tensor):
            raise TypeError(f"GradScaler.scale expects a Tensor (the loss), got {type(outputs).__name__}")
        if outputs.dtype == np.float16:
            outputs = outputs.to(dtype=np.float32)
        return outputs * self._scale

    def _state(self, optimizer) -> dict:
        return self._per_optimizer.setdefault(id(optimizer), {"stage": _READY, "found_inf": None})

    def unscale_(self, optimizer):
        """Divide this optimizer's gradients by S (in place of ``p.grad``), noting any inf/NaN.

        Call it before anything that reads gradient magnitudes (clipping); ``step`` calls it
        if you did not. Once per optimizer between two ``update()`` calls. New gradient
        arrays are assigned, never scaled in place: the engine may share one array between
        tensors. With the default factors S is a power of two: the division is exact."""
        if not self._enabled:
            return
        state = self._state(optimizer)
        if state["stage"] == _UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update(); "
                               "call it once per step, before clipping, and let step() use the result")
        if state["stage"] == _STEPPED:
            raise RuntimeError("unscale_() is being called after step(): call scaler.unscale_(optimizer) "
                               "before scaler.step(optimizer), then scaler.update()")
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        runs = {}                                # (device, dtype) -> its parameters, in order
        for p in params:
            runs.setdefault((p.device, p.grad.dtype), []).append(p)
        finite = []                              # device bools: no sync here
        for run in runs.values():
            unscale = _unscale_flat if len(run) > 1 else _unscale_each
            finite.append(unscale(run, 1.0 / self._scale))
        if finite:
            xp = backend.get_array_module(finite[0])
            state["found_inf"] = ~xp.stack(finite).all()
        else:
            state["found_inf"] = np.bool_(False)
        state["stage"] = _UNSCALED

    def step(self, optimizer, *args, **kwargs):
        """``optimizer.step()`` unless a gradient is inf/NaN (then the step is skipped and None
        returned). Unscales first if ``unscale_`` was not called this iteration."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        state = self._state(optimizer)
        if state["stage"] == _STEPPED:
            raise RuntimeError("step() has already been called since the last update(): call "
                               "scaler.update() once per iteration, after scaler.step(optimizer)")
        if state["stage"] == _READY:
            self.unscale_(optimizer)
        retval = None
        # The one host sync per step; the host bool replaces the device flag, so update()
        # does not read the device again.
        state["found_inf"] = bool(state["found_inf"])
        if not state["found_inf"]:
            retval = optimizer.step(*args, **kwargs)
        state["stage"] = _STEPPED
        return retval

    def update(self, new_scale: float | None = None):
        """Adjust S for the next iteration (or set it to ``new_scale``); call once per iteration."""
        if not self._enabled:
            return
        if new_scale is not None:
            self._scale = float(np.float32(new_scale))
        else:
            checks = [s["found_inf"] for s in self._per_optimizer.values() if s["found_inf"] is not None]
            if not checks:
                raise RuntimeError("No inf checks were recorded prior to update(): call scaler.step(optimizer) "
                                   "(or scaler.unscale_(optimizer)) before scaler.update()")
            found_inf = any(bool(f) for f in checks)              # host bools after step(): no new sync
            # PyTorch's _amp_update_scale_: the product in double, stored as float32, so both
            # give the same numbers even for factors like 0.3.
            if found_inf:
                self._scale = float(np.float32(self._scale * self._backoff_factor))
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker == self._growth_interval:
                    with np.errstate(over="ignore"):              # S stays put if it would overflow
                        grown = np.float32(self._scale * self._growth_factor)
                    if np.isfinite(grown):
                        self._scale = float(grown)
                    self._growth_tracker = 0
        self._per_optimizer = {}

    def state_dict(self) -> dict:
        """PyTorch's keys; an empty dict when disabled (as PyTorch)."""
        if not self._enabled:
            return {}
        return {"scale": self._scale, "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict: dict):
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was saved from a disabled "
                               "instance of GradScaler.")
        self._scale = float(np.float32(state_dict["scale"]))
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._growth_tracker = int(state_dict["_growth_tracker"])


__all__ = ["autocast", "GradScaler", "cast_inputs", "is_autocast_enabled", "get_autocast_dtype",
           "LOWER_PRECISION_OPS", "FLOAT32_OPS"]


def _unscale_each(params, inv_scale: float):
    """The reference: each gradient times 1/S (a new array), and whether all of them are finite,
    as a device bool. Three operations per parameter."""
    finite = []
    for p in params:
        g = p.grad
        p.grad = g * g.dtype.type(inv_scale)
        finite.append(p.xp.isfinite(p.grad).all())
    return p.xp.stack(finite).all() if len(finite) > 1 else finite[0]


def _unscale_flat(params, inv_scale: float):
    """The same for gradients of one device and dtype as whole-array operations: concatenated
    into one new flat array (one copy), multiplied by 1/S in place, checked once; each ``p.grad``
    then is a view of its slice. Four operations for any number of parameters, where the
    reference takes three a parameter (on an H200 the optimizer took 9–15 ms of an fp16 step
    against 1–1.3 ms in fp32, README's First GPU contact). The same multiplications, so the same
    numbers, as ``_unscale_each`` (a test holds them equal)."""
    xp = params[0].xp
    flat = xp.concatenate([p.grad.reshape(-1) for p in params])        # (Σ sizes,), our own array
    flat *= flat.dtype.type(inv_scale)
    lo = 0
    for p in params:
        n = p.grad.size
        p.grad = flat[lo:lo + n].reshape(p.grad.shape)
        lo += n
    return xp.isfinite(flat).all()
