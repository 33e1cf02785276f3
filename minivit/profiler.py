"""Where a training step's time goes, op type by op type.

Every op is a :class:`~minivit.autograd.Function` subclass with a ``forward``
and a ``backward``. While an :class:`OpProfiler` is active, each of those
methods is replaced by a wrapper that reads the clock around it (after
synchronising the GPU, so the time is the op's own and not whatever was still
queued). On exit the original methods are put back: code that is not being
profiled runs the unwrapped methods, at full speed.

What the ops do not account for is reported too, so the table adds up to the
step time:

* forward, outside the ops: the models' Python code, ``Module.__call__``,
  ``Function.__call__`` (making the output Tensor, recording the graph);
* backward, outside the ops: the engine itself (the topological sort of the
  graph, adding up the gradients of tensors used more than once);
* the optimizer: ``zero_grad`` and the update.

    with OpProfiler(device) as prof:
        with prof.phase("forward"):
            loss = loss_fn(model(x), y)
        with prof.phase("backward"):
            loss.backward()
        with prof.phase("optimizer"):
            opt.zero_grad(); opt.step()
    print(prof.table())
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np

from minivit import backend
from minivit.autograd import Function

_PHASES = ("forward", "backward", "optimizer")
_OUTSIDE = {                   # the rows for time outside the ops (explained under the table)
    "forward": "(forward: outside ops)",
    "backward": "(backward: engine)",
    "optimizer": "(optimizer)",
}
_LEGEND = ("(forward: outside ops) = the models' Python code, Module.__call__ and Function.__call__; "
           "(backward: engine) = graph walk and adding up gradients; (optimizer) = zero_grad + step")


def _function_classes(cls=Function):
    """Every Function subclass defined so far, depth first."""
    for sub in cls.__subclasses__():
        yield sub
        yield from _function_classes(sub)


class OpProfiler:
    """Times every op's forward and backward by type while active (a context manager).

    ``phase(name)`` (``"forward"``, ``"backward"``, ``"optimizer"``) times a whole
    phase of the step; ``table()`` / ``rows()`` give the per-op times of the
    recorded steps, with the time outside the ops of each phase as extra rows.
    Times are sums over all recorded steps; ``steps`` counts them.
    """

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.ops: dict = {}                    # op name -> {"calls", "forward", "backward", "dtypes", "upcast"}
        self.phases = {p: 0.0 for p in _PHASES}
        self.steps = 0
        self._inside = False                   # an op is being timed: nested calls are its own time
        self._saved = []

    # ------------------------------------------------------------------ installing the wrappers
    def __enter__(self):
        for cls in list(_function_classes()):
            for kind in ("forward", "backward"):
                if kind in cls.__dict__:
                    orig = cls.__dict__[kind]
                    self._saved.append((cls, kind, orig))
                    setattr(cls, kind, self._wrap(orig, kind))
        return self

    def __exit__(self, *exc):
        for cls, kind, orig in reversed(self._saved):
            setattr(cls, kind, orig)
        self._saved = []

    def _record(self, fn):
        name = type(fn).__name__
        rec = self.ops.get(name)
        if rec is None:
            rec = self.ops[name] = {"calls": 0, "forward": 0.0, "backward": 0.0, "dtypes": set(), "upcast": 0}
        return rec

    def _wrap(self, orig, kind):
        prof = self
        sync = backend.synchronize

        def timed(fn, *args, **kwargs):
            # A subclass's forward may call its parent's (Mean → Sum), an op another op's
            # (QKVAttention → ScaledDotProductAttention, with keywords): only the outermost
            # call is timed, under the class that was really called.
            if prof._inside:
                return orig(fn, *args, **kwargs)
            prof._inside = True
            try:
                sync(prof.device)
                t0 = time.perf_counter()
                out = orig(fn, *args, **kwargs)
                sync(prof.device)
                dt = time.perf_counter() - t0
            finally:
                prof._inside = False
            rec = prof._record(fn)
            rec[kind] += dt
            if kind == "forward":
                rec["calls"] += 1
                dtype = getattr(out, "dtype", None)
                if dtype is not None:
                    rec["dtypes"].add(str(dtype))
                    # float32 in, float64 out: an accidental upcast (slow, and wrong for fp32 runs)
                    if dtype == np.float64 and any(getattr(a, "dtype", None) == np.float32 for a in args):
                        rec["upcast"] += 1
            return out

        timed.__name__, timed.__doc__ = orig.__name__, orig.__doc__
        timed.__wrapped__ = orig
        return timed

    # ------------------------------------------------------------------ phases of a step
    @contextmanager
    def phase(self, name: str):
        if name not in self.phases:
            raise ValueError(f"unknown phase {name!r}: use one of {_PHASES}")
        backend.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            backend.synchronize(self.device)
            self.phases[name] += time.perf_counter() - t0
            if name == "forward":
                self.steps += 1

    # ------------------------------------------------------------------ results
    @property
    def total(self) -> float:
        """Seconds per step over the recorded phases."""
        return sum(self.phases.values()) / max(self.steps, 1)

    def rows(self) -> list:
        """Per-step rows, slowest first: dicts with name, calls, forward, backward, total (s),
        share (of the profiled step), dtypes (the ops' output dtypes) and upcasts (float32 in,
        float64 out). The rows for time outside the ops come last; all rows sum to ``total``."""
        n = max(self.steps, 1)
        rows = []
        op_time = {"forward": 0.0, "backward": 0.0}
        for name, r in self.ops.items():
            f, b = r["forward"] / n, r["backward"] / n
            op_time["forward"] += f
            op_time["backward"] += b
            rows.append(dict(name=name, calls=r["calls"] / n, forward=f, backward=b, total=f + b,
                             dtypes=sorted(r["dtypes"]), upcasts=r["upcast"] // n))
        rows.sort(key=lambda r: -r["total"])
        for p in _PHASES:
            rest = self.phases[p] / n - op_time.get(p, 0.0)
            rows.append(dict(name=_OUTSIDE[p], calls=None, forward=rest if p == "forward" else 0.0,
                             backward=rest if p == "backward" else 0.0, total=rest, dtypes=[], upcasts=0))
        total = self.total
        for r in rows:
            r["share"] = r["total"] / total if total > 0 else 0.0
        return rows

    def table(self, top: int | None = None) -> str:
        """The rows as text: ms per step, share of the step, the ops' output dtypes."""
        rows = self.rows()
        ops, rest = rows[:-len(_PHASES)], rows[-len(_PHASES):]
        if top is not None and len(ops) > top:
            others = ops[top:]
            ops = ops[:top] + [dict(name=f"({len(others)} other op types)", calls=sum(r["calls"] for r in others),
                                    forward=sum(r["forward"] for r in others),
                                    backward=sum(r["backward"] for r in others),
                                    total=sum(r["total"] for r in others), share=sum(r["share"] for r in others),
                                    dtypes=sorted({d for r in others for d in r["dtypes"]}),
                                    upcasts=sum(r["upcasts"] for r in others))]
        lines = [f"{'op':<26} {'calls':>6} {'fwd ms':>9} {'bwd ms':>9} {'total ms':>9} {'share':>6}  dtypes",
                 "-" * 88]
        for r in ops + rest:
            name = r["name"]
            calls = "" if r["calls"] is None else f"{r['calls']:.0f}"
            flag = f"  UPCAST x{r['upcasts']}" if r["upcasts"] else ""
            lines.append(f"{name:<26} {calls:>6} {1e3 * r['forward']:>9.2f} {1e3 * r['backward']:>9.2f} "
                         f"{1e3 * r['total']:>9.2f} {r['share']:>6.1%}  {','.join(r['dtypes'])}{flag}")
        lines.append("-" * 88)
        lines.append(f"{'profiled step':<26} {'':>6} {'':>9} {'':>9} {1e3 * self.total:>9.2f} {1:>6.0%}"
                     f"  (mean of {self.steps} steps)")
        lines.append(_LEGEND)
        return "\n".join(lines)
