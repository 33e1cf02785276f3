"""A strict CuPy stand-in: NumPy underneath, CuPy's rules at the host/device boundary.

Why. minivit's GPU path only runs where a GPU is, and GPU time is scarce. Most GPU bugs are
not numerical but about the boundary between host and device: a NumPy array mixed into a
device op, an implicit conversion, a name or keyword CuPy lacks, a Python ``if`` on a device
value that stalls the GPU every step, an out-of-range index that wraps around instead of
raising, a kernel launched with the wrong argument types. This module finds those on the CPU.

How. ``install()`` puts modules named ``cupy`` and ``cupyx`` into ``sys.modules`` whose
arrays (:class:`ndarray`) wrap a NumPy array (they are not a subclass of it) and whose
functions call NumPy's. The rules, each as strict as CuPy (or stricter, where noted):

* implicit conversion to NumPy (``np.asarray(dev)``, a NumPy function or ufunc on a device
  array) raises CuPy's ``TypeError``; ``cupy.asnumpy`` / ``.get()`` are the explicit way.
  (Real CuPy dispatches ``np.exp(dev)`` to ``cupy.exp`` through NEP 13/18; minivit's rule is
  ``xp = get_array_module(x)``, so the stand-in refuses it; a NumPy scalar on the left,
  ``np.float32(2) * dev``, computes on the device as in CuPy.)
* a host NumPy array (or a list) mixed into a device op raises ``TypeError``; Python and
  NumPy scalars are fine, and ``cupy.asarray`` / ``cupy.array`` take host data (a copy).
* only the names, array attributes and keyword arguments of the installed real CuPy exist:
  they are read from ``cupy-cuda12x`` itself (it imports without a GPU) when installing.
* reductions and full integer indexing give 0-d device arrays, as CuPy's do.
* ``empty`` / ``empty_like`` / ``ndarray(shape)`` give poisoned memory (NaN, or a large
  integer), as GPU memory is never zeroed.
* out-of-range integer array indices wrap around (``a[idx]``, ``take``), as on the GPU.
* pickling a device array raises (stricter than CuPy, which pickles through a hidden
  ``.get()``): a checkpoint must move arrays to the host explicitly.
* ``RawKernel`` / ``ElementwiseKernel`` calls are checked against the kernel's C signature
  and launch geometry, then computed by a NumPy emulation of the kernel
  (:mod:`minivit.testing.kernel_emulation`).
* every device→host synchronisation (``bool``/``float``/``int``, ``.item()``, ``.get()``,
  ``.tolist()``, ``asnumpy``, boolean-mask indexing, ``nonzero``/``argwhere``/``unique``/
  ``where(cond)``, ``repr``/``str``/``format``, stream/device synchronize) is counted with the
  file:line that caused it, the first frame outside the stand-in and minivit/backend.py
  (iterating is not a sync: as in CuPy it yields device rows)::

      from minivit.testing import strict_cupy
      with strict_cupy.count_syncs() as syncs:
          train_step()
      assert syncs == [], syncs          # [(file, line, kind), ...]
      with strict_cupy.sync_budget(1, "an fp16 step"):   # or: fail listing the syncs past 1
          train_step()

cupy.cuda (one device, compute capability 9.0), cupy.random and the TF32 compute types are in
:mod:`minivit.testing.strict_cupy_cuda`. ``backend.is_strict_standin()`` tells minivit it runs on it
(``default_device()`` stays "cpu": it is no GPU to pick by itself; ``device="cuda"`` uses it).

Activate it with ``MINIVIT_STRICT_CUPY=1`` in the environment before ``minivit`` is imported
(``minivit.backend`` then calls :func:`install`); the test suite does so by itself where no
GPU is present (tests/conftest.py). Without ``cupy-cuda12x`` installed it is unavailable
(:func:`available` says why).
"""
from __future__ import annotations

import contextlib
import inspect
import operator
import re
import sys
import weakref
import types

import numpy as np

NOT_INSTALLED = "cupy-cuda12x not installed (pip install 'minivit[gpucheck]')"
IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly.")
# Frames skipped when a sync is attributed to a line: the stand-in's own, and minivit.backend's
# (its to_numpy / synchronize are the wrappers every caller goes through: the caller is the news).
_OWN_FILES = {__file__.replace(".pyc", ".py"),
              __file__.replace(".pyc", ".py").rsplit("testing", 1)[0] + "backend.py"}
_real = {}                      # what install() read from the real CuPy
_sync_logs: list[list] = []     # the open count_syncs() lists
_sync_total = [0]


# =========================================================================== errors
class StandinError(NotImplementedError):
    """A real CuPy name the stand-in does not emulate yet (add it here), or a kernel without an emulation."""


def _host_mixed(where: str, obj) -> TypeError:
    return TypeError(f"{where}: a host {type(obj).__module__}.{type(obj).__name__} was given where CuPy needs a "
                     f"device array (CuPy raises TypeError: Unsupported type {type(obj)!r}); move it to the "
                     f"device first with cupy.asarray()")


# =========================================================================== device→host syncs
def _caller(kind: str) -> tuple:
    """(file, line, kind) of the first frame outside the stand-in: the code that caused it."""
    f = sys._getframe(2)
    while f is not None and (f.f_code.co_filename in _OWN_FILES or f.f_code.co_filename == contextlib.__file__):
        f = f.f_back
    return (f.f_code.co_filename, f.f_lineno, kind) if f is not None else ("?", 0, kind)


def _sync(kind: str):
    """Count a device→host synchronisation, with the first frame outside the stand-in."""
    _sync_total[0] += 1
    if _sync_logs:
        rec = _caller(kind)
        for log in _sync_logs:
            log.append(rec)


def _remove(logs: list, log: list):
    """Remove ``log`` itself (not an equal list: nested counters' lists are often equal)."""
    del logs[next(i for i, x in enumerate(logs) if x is log)]


@contextlib.contextmanager
def count_syncs():
    """Record every device→host sync inside the block: yields a list of (file, line, kind), the line
    the first frame outside the stand-in and minivit/backend.py (whose helpers wrap the transfers)."""
    if not installed():
        raise RuntimeError("count_syncs counts the strict CuPy stand-in's syncs, and it is not installed "
                           "(MINIVIT_STRICT_CUPY=1 before importing minivit); skip such a test otherwise")
    log = []
    _sync_logs.append(log)
    try:
        yield log
    finally:
        _remove(_sync_logs, log)


# =========================================================================== device operations
# On a GPU every CuPy operation that computes or copies is (at least) one kernel launch, a few
# microseconds of Python, CuPy and driver time whatever its size: a small model's training step
# is bound by their number. The stand-in counts them: every result that owns fresh memory, every
# in-place write, every custom-kernel call and host→device copy. Views (reshape, transpose,
# basic slicing) launch nothing and are not counted. What one CuPy call does inside (a few
# launches for some reductions, none for a cached allocation) is not modelled: the count is
# one per operation, a lower bound of the launches on a GPU.
_launch_logs: list[list] = []
_muted = [0]


def _launch(kind: str = "op"):
    if _launch_logs and not _muted[0]:
        rec = _caller(kind)
        for log in _launch_logs:
            log.append(rec)


@contextlib.contextmanager
def count_launches():
    """Record every device operation inside the block: yields a list of (file, line, kind)."""
    log = []
    _launch_logs.append(log)
    try:
        yield log
    finally:
        _remove(_launch_logs, log)


@contextlib.contextmanager
def _one_launch(kind: str):
    """A custom kernel's call: one launch, whatever its NumPy emulation does inside."""
    _launch(kind)
    _muted[0] += 1
    try:
        yield
    finally:
        _muted[0] -= 1


@contextlib.contextmanager
def sync_budget(limit: int, what: str = "the block"):
    """Fail (AssertionError listing each sync's file:line) if the block syncs more than ``limit`` times::

        with strict_cupy.sync_budget(0, "an fp32 training step"):
            trainer.train_step(x, target, labels)
    """
    with count_syncs() as syncs:
        yield syncs
    if len(syncs) > limit:
        lines = "\n".join(f"  {f}:{n} ({k})" for f, n, k in syncs)
        raise AssertionError(f"{what}: {len(syncs)} device→host syncs, the budget is {limit}:\n{lines}")


def sync_count() -> int:
    """Syncs counted since the stand-in was installed (all threads, all code)."""
    return _sync_total[0]


# =========================================================================== wrapping
def _wrap(a: np.ndarray) -> "ndarray":
    d = object.__new__(ndarray)
    d._a = a
    if a.base is None:                          # owns its memory: the one that views' ``base`` names
        _owners[id(a)] = d
    _track(a)
    return d


# Device memory: the bytes of the live NumPy arrays that own device arrays' memory, and the
# largest that total has reached since the pool was last emptied, which is what CuPy's memory
# pool holds (freed blocks stay cached): cupy.get_default_memory_pool().total_bytes() reads it.
_mem = {"live": 0, "peak": 0}
_tracked: set = set()                           # id() of the owning NumPy arrays alive
_refs: dict = {}                                # id(weakref) -> (the weakref, id(owner), its bytes)


def _track(a: np.ndarray):
    while isinstance(a.base, np.ndarray):       # the buffer's owner (a view of a temporary holds it)
        a = a.base
    key = id(a)
    if a.base is not None or key in _tracked:
        return
    n = a.nbytes
    ref = weakref.ref(a, _untrack)              # (a weakref is cheaper than weakref.finalize)
    _refs[id(ref)] = (ref, key, n)
    _tracked.add(key)
    live = _mem["live"] = _mem["live"] + n
    if live > _mem["peak"]:
        _mem["peak"] = live


def _untrack(ref):
    _, key, n = _refs.pop(id(ref))
    _tracked.discard(key)
    _mem["live"] -= n


def memory_live_bytes() -> int:
    """Bytes of the device arrays alive now (their owning buffers)."""
    return _mem["live"]


def memory_reset_peak() -> None:
    """The pool emptied of cached blocks: the peak starts again from what is alive."""
    _mem["peak"] = _mem["live"]


def memory_peak_bytes() -> int:
    return _mem["peak"]


# The device array that owns each NumPy array's memory, so that ``view.base`` is that array
# itself, as in CuPy (a new wrapper each time would make ``v.base is v.base`` false).
_owners: "weakref.WeakValueDictionary[int, ndarray]" = weakref.WeakValueDictionary()


def _base_kept(d: "ndarray"):
    """``d.base``, kept alive by d as CuPy's view keeps its base."""
    try:
        return d._base
    except AttributeError:
        d._base = _base_of(d._a)
        return d._base


def _base_of(a: np.ndarray):
    b = a.base
    if b is None:
        return None
    w = _owners.get(id(b))
    return w if w is not None and w._a is b else _wrap(b)


def _out(r):
    """A NumPy result as CuPy gives it: arrays and scalars become device arrays."""
    t = type(r)
    if t is np.ndarray:
        if _launch_logs and r.base is None:     # fresh memory: computed (or copied) on the device
            _launch()
        return _wrap(r)
    if isinstance(r, np.generic):
        _launch_logs and _launch()
        return _wrap(np.asarray(r))
    if t is tuple or t is list:
        return t(_out(v) for v in r)
    return r


def _shape_out(r, src):
    """``_out(r)`` for a shape function of src: a view launches nothing, but NumPy's reshape of an
    array it cannot view returns a copy that is itself a view (its base the copy): one launch."""
    if (_launch_logs and type(r) is np.ndarray and r.base is not None and type(src) is np.ndarray
            and not np.may_share_memory(r, src)):
        _launch()
    return _out(r)


def _same_or_out(r, args):
    """``_out(r)``, except that an input given back unchanged (``ascontiguousarray`` of a contiguous
    array, ``asarray`` of a device array) is that input, as CuPy returns it: no copy, no launch."""
    for a in args:
        if type(a) is ndarray and r is a._a:
            return a
    return _out(r)


def _in(x, where):
    """A device value as NumPy sees it; a host array is refused."""
    t = type(x)
    if t is ndarray:
        return x._a
    if t is np.ndarray:
        raise _host_mixed(where, x)
    if t is tuple or t is list:
        return t(_in(v, where) for v in x)
    return x


# Functions and methods whose arguments besides the array are shapes or axes: CuPy reads those
# on the host, so a host integer array there is a sequence of ints, not data.
_SHAPE_ARGS = frozenset("transpose reshape swapaxes moveaxis squeeze expand_dims broadcast_to zeros ones full "
                        "empty tile repeat sum mean max min prod std var all any argmax argmin flip roll "
                        "rollaxis permute_dims".split())


def _in_shape(x, where):
    """_in for the shape/axis arguments of _SHAPE_ARGS: host integer vectors become tuples of ints."""
    t = type(x)
    if t is np.ndarray and x.dtype.kind in "iu" and x.ndim <= 1:
        return tuple(x.tolist()) if x.ndim else int(x)
    if t is tuple or t is list:
        return t(_in_shape(v, where) for v in x)
    return _in(x, where)


def _in_kw(kwargs, where):
    return {k: _in(v, where) for k, v in kwargs.items()}


def _check_kwargs(where, kwargs, allowed):
    if allowed is not None:
        for k in kwargs:
            if k not in allowed:
                raise TypeError(f"{where}() got an unexpected keyword argument {k!r}: the installed CuPy "
                                f"{_real.get('version', '?')} does not take it (it takes {sorted(allowed)})")


def _params(obj):
    """The keyword names a real CuPy callable takes (None: unknown, or **kwargs)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        first = (getattr(obj, "__doc__", None) or "").lstrip().split("\n", 1)[0]
        m = re.match(r"[\w.]+\((.*)\)", first)
        if not m:
            return None
        names = set()
        for p in m.group(1).replace("\\", "").split(","):
            p = p.strip()
            if p.startswith("**"):
                return None
            if p in ("/", "*", "self", "") or p.startswith("*"):
                continue
            names.add(re.split(r"[=:\s]", p, maxsplit=1)[0])
        return frozenset(names)
    ps = sig.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in ps):
        return None
    return frozenset(p.name for p in ps if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _max_positional(obj):
    """How many positional arguments a real CuPy function takes (None: unknown, or *args)."""
    try:
        ps = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in ps):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in ps)


def _check_positional(where, n, most):
    if most is not None and n > most:
        raise TypeError(f"{where}() takes at most {most} positional arguments in the installed CuPy "
                        f"{_real.get('version', '?')}, {n} were given")


# NumPy functions that give a Python bool/int where CuPy gives a 0-d device array (reading it syncs).
_DEVICE_SCALAR_RESULT = frozenset({"array_equal", "array_equiv", "allclose", "count_nonzero"})


def _function(where, npf, allowed, most=None):
    """A CuPy function computed by NumPy's ``npf``: keywords and the number of positional
    arguments checked against the real one's, host arrays refused."""
    if where.rsplit(".", 1)[-1] in _DEVICE_SCALAR_RESULT:
        def g(*args, **kwargs):
            _check_kwargs(where, kwargs, allowed)
            _check_positional(where, len(args), most)
            with np.errstate(all="ignore"):
                r = npf(*_in(args, where), **_in_kw(kwargs, where))
            return _wrap(np.asarray(r)) if isinstance(r, (bool, int, float, np.generic)) else _out(r)
        g.__name__ = where.rsplit(".", 1)[-1]
        return g
    if where.rsplit(".", 1)[-1] in _SHAPE_ARGS:
        def f(a, *args, **kwargs):
            _check_kwargs(where, kwargs, allowed)
            _check_positional(where, 1 + len(args), most)
            src = _in(a, where)
            return _shape_out(npf(src, *_in_shape(args, where), **{k: _in_shape(v, where) for k, v in kwargs.items()}), src)
        f.__name__ = f.__qualname__ = where.rsplit(".", 1)[-1]
        return f

    def f(*args, **kwargs):
        if most is not None and len(args) > most:
            _check_positional(where, len(args), most)
        with np.errstate(all="ignore"):         # a GPU has no floating-point warnings
            if kwargs:
                _check_kwargs(where, kwargs, allowed)
                out = kwargs.get("out")
                r = npf(*_in(args, where), **_in_kw(kwargs, where))
                if type(out) is ndarray and r is out._a:
                    _launch_logs and _launch()
                    return out
                return _same_or_out(r, args)
            return _same_or_out(npf(*_in(args, where)), args)
    f.__name__ = f.__qualname__ = where.rsplit(".", 1)[-1]
    f.__doc__ = f"Stand-in for {where} (NumPy underneath)."
    return f


class ufunc:
    """A CuPy ufunc: like a function, and lists are refused too (CuPy's ufuncs take no sequences)."""

    def __init__(self, name, npu, allowed):
        self.name, self._u, self._allowed = name, npu, allowed
        self.nin, self.nout, self.nargs, self.types = npu.nin, npu.nout, npu.nargs, npu.types
        self.__name__ = name

    def _args(self, args):
        out = []
        for a in args:
            t = type(a)
            if t is ndarray:
                out.append(a._a)
            elif t is np.ndarray or t is list or t is tuple:
                raise _host_mixed(f"cupy.{self.name}", a)
            else:
                out.append(a)
        return out

    def __call__(self, *args, **kwargs):
        with np.errstate(all="ignore"):         # a GPU has no floating-point warnings
            if kwargs:
                _check_kwargs(f"cupy.{self.name}", kwargs, self._allowed)
                out = kwargs.get("out")
                r = self._u(*self._args(args), **_in_kw(kwargs, f"cupy.{self.name}"))
                if type(out) is ndarray and r is out._a:
                    _launch_logs and _launch()
                    return out
                return _out(r)
            return _out(self._u(*self._args(args)))

    def reduce(self, a, *args, **kwargs):
        return _out(self._u.reduce(*self._args((a,)), *_in(args, self.name), **_in_kw(kwargs, self.name)))

    def accumulate(self, a, *args, **kwargs):
        return _out(self._u.accumulate(*self._args((a,)), *_in(args, self.name), **_in_kw(kwargs, self.name)))

    def outer(self, a, b, **kwargs):
        return _out(self._u.outer(*self._args((a, b)), **_in_kw(kwargs, self.name)))

    def at(self, a, indices, b=None):
        a_ = self._args((a,))[0]
        self._u.at(a_, _index(a_, indices)[0], *(() if b is None else (_in(b, self.name),)))

    def __repr__(self):
        return f"<ufunc 'cupy_{self.name}' (strict stand-in)>"


# =========================================================================== indexing
_SIMPLE_INDEX = (int, slice, type(None), type(Ellipsis), np.integer)


def _index(a: np.ndarray, key):
    """A CuPy index as NumPy needs it: device arrays unwrapped, integer arrays wrapped around
    each axis's length (the GPU does not check bounds). Returns (key, has_boolean_mask)."""
    tup = key if type(key) is tuple else (key,)
    if all(isinstance(k, _SIMPLE_INDEX) for k in tup):
        return key, False
    ks = []
    for k in tup:
        if type(k) is ndarray:
            k = k._a
        elif type(k) is list:
            k = np.asarray([_in(v, "indexing") for v in k])
        ks.append(k)
    consumed = sum(k.ndim if isinstance(k, np.ndarray) and k.dtype == np.bool_ else 1
                   for k in ks if k is not None and k is not Ellipsis)
    axis, mask = 0, False
    for i, k in enumerate(ks):
        if k is None:
            continue
        if k is Ellipsis:
            axis += a.ndim - consumed
            continue
        if isinstance(k, np.ndarray):
            if k.dtype == np.bool_:
                mask = True
                axis += k.ndim
                continue
            if k.dtype.kind in "iu" and axis < a.ndim and a.shape[axis] > 0:
                ks[i] = np.mod(k, a.shape[axis])
        axis += 1
    return tuple(ks), mask


# =========================================================================== the device array
class ndarray:
    """A device array: a NumPy array behind CuPy's rules (not an ndarray subclass)."""

    __slots__ = ("_a", "_base", "__weakref__")
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise StandinError("cupy.ndarray(memptr=..., strides=...) is not emulated")
        self._a = _poison(np.empty(shape, dtype=dtype, order=order))
        _track(self._a)

    # ---- attributes (host metadata: no sync)
    shape = property(lambda self: self._a.shape, lambda self, s: setattr(self._a, "shape", s))
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: _Flags(self._a.flags))
    T = property(lambda self: _wrap(self._a.T))
    mT = property(lambda self: _wrap(self._a.mT))
    base = property(lambda self: _base_kept(self))
    device = property(lambda self: sys.modules["cupy"].cuda.Device(0))
    data = property(lambda self: _MemoryPointer(self._a))
    __cuda_array_interface__ = property(lambda self: {**self._a.__array_interface__, "version": 3})

    def __len__(self):
        return len(self._a)

    # ---- the boundary
    def __array__(self, *args, **kwargs):
        raise TypeError(IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # A NumPy scalar on the left (np.float32(2) * dev) reaches here; CuPy computes it on the
        # device (NEP 13), so does the stand-in. Any other NumPy ufunc on a device array is refused.
        if (method == "__call__" and not kwargs and len(inputs) == 2
                and any(isinstance(i, np.generic) for i in inputs)
                and all(type(i) is ndarray or isinstance(i, (np.generic, int, float, complex)) for i in inputs)):
            return getattr(sys.modules["cupy"], ufunc.__name__)(*inputs)
        raise TypeError(f"numpy.{ufunc.__name__} on a device array: {IMPLICIT} "
                        f"(use xp = backend.get_array_module(x) and xp.{ufunc.__name__})")

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} on a device array: {IMPLICIT} "
                        f"(use xp = backend.get_array_module(x) and xp.{func.__name__})")

    def __reduce_ex__(self, protocol):
        raise TypeError("a device array cannot be pickled by the strict stand-in (real CuPy copies it to "
                        "the host behind your back): move it to the host explicitly with .get() or "
                        "backend.to_numpy() first")

    __reduce__ = __reduce_ex__

    def __copy__(self):
        return _wrap(self._a.copy())

    def __deepcopy__(self, memo):
        return _wrap(self._a.copy())

    def get(self, stream=None, order="C", out=None, blocking=True):
        _sync("get")
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        if type(arr) is not np.ndarray:
            raise TypeError(f"ndarray.set needs a numpy.ndarray, got {type(arr)}")
        if arr.shape != self.shape:
            raise ValueError(f"shape mismatch: {arr.shape} vs {self.shape}")
        self._a[...] = arr

    def item(self, *args):
        _sync("item")
        return self._a.item(*args)

    def tolist(self):
        _sync("tolist")
        return self._a.tolist()

    def __bool__(self):
        _sync("bool")
        return bool(self._a)

    def __float__(self):
        _sync("float")
        return float(self._a)

    def __int__(self):
        _sync("int")
        return int(self._a)

    def __complex__(self):
        _sync("complex")
        return complex(self._a)

    def __index__(self):
        if self._a.dtype.kind not in "iub":
            raise TypeError("only integer scalar arrays can be converted to a scalar index")
        _sync("index")
        return operator.index(self._a)

    def __repr__(self):
        _sync("repr")
        return repr(self._a)

    def __str__(self):
        _sync("str")
        return str(self._a)

    def __format__(self, spec):
        _sync("format")
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __iter__(self):
        # As CuPy: the rows, as device arrays (no sync by itself).
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self._a.shape[0]))

    def __contains__(self, value):
        return bool((self == value).any())

    # ---- indexing
    def __getitem__(self, key):
        key, mask = _index(self._a, key)
        if mask:
            _sync("boolean mask indexing")
        return _out(self._a[key])

    def __setitem__(self, key, value):
        key, _ = _index(self._a, key)
        t = type(value)
        self._a[key] = value._a if t is ndarray else _in(value, "ndarray.__setitem__") if t is list else value
        _launch_logs and _launch()

    # ---- methods with CuPy semantics
    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        r = self._a.astype(dtype, order=order, copy=copy, **({} if casting is None else {"casting": casting}))
        if _launch_logs and r is not self._a:
            _launch()
        return _wrap(r)

    def take(self, indices, axis=None, out=None):
        return take(self, indices, axis=axis, out=out)

    def nonzero(self):
        _sync("nonzero")
        return _out(self._a.nonzero())

    def fill(self, value):
        self._a.fill(value._a if type(value) is ndarray else value)
        _launch_logs and _launch()

    def copy(self, order="C"):
        _launch_logs and _launch()
        return _wrap(self._a.copy(order=order))

    def scatter_add(self, slices, value):
        _scatter(np.add, self, slices, value)

    def scatter_max(self, slices, value):
        _scatter(np.maximum, self, slices, value)

    def scatter_min(self, slices, value):
        _scatter(np.minimum, self, slices, value)

    def __getattr__(self, name):
        # Every other name of the real cupy.ndarray, made on first use and kept on the class.
        if name.startswith("__") or name not in _real.get("ndarray", ()):
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r} (the installed CuPy "
                                 f"{_real.get('version', '?')} has none)")
        if not hasattr(np.ndarray, name):
            raise StandinError(f"cupy.ndarray.{name} exists in CuPy but the strict stand-in does not emulate "
                               f"it: add it to minivit/testing/strict_cupy.py")
        if callable(getattr(np.ndarray, name)):
            setattr(ndarray, name, _method(name))
        else:
            setattr(ndarray, name, property(lambda self: _out(getattr(self._a, name))))
        return getattr(self, name)


def _method(name):
    allowed = _real["ndarray_kwargs"].get(name)
    where = f"cupy.ndarray.{name}"
    if name in _SHAPE_ARGS:
        def m(self, *args, **kwargs):
            _check_kwargs(where, kwargs, allowed)
            return _shape_out(getattr(self._a, name)(*_in_shape(args, where), **{k: _in_shape(v, where) for k, v in kwargs.items()}),
                              self._a)
        m.__name__ = name
        return m

    def m(self, *args, **kwargs):
        with np.errstate(all="ignore"):         # a GPU has no floating-point warnings
            if kwargs:
                _check_kwargs(where, kwargs, allowed)
                return _out(getattr(self._a, name)(*_in(args, where), **_in_kw(kwargs, where)))
            return _out(getattr(self._a, name)(*_in(args, where)))
    m.__name__ = name
    return m


def _other(op, other, compare):
    """What CuPy does with an operand of another type: defer to one of higher __array_priority__
    (minivit's Tensor), refuse the rest (comparisons fall back to Python's identity rules)."""
    if compare or getattr(other, "__array_priority__", -1) > ndarray.__array_priority__:
        return NotImplemented
    raise TypeError(f"cupy.ndarray {op.__name__}: Unsupported type {type(other)!r}")


def _binary(op, reflected=False, compare=False):
    def m(self, other):
        t = type(other)
        if t is ndarray:
            o = other._a
        elif isinstance(other, (int, float, complex, np.generic)):
            o = other
        elif t is np.ndarray or t is list or t is tuple:
            raise _host_mixed(f"cupy.ndarray {op.__name__}", other)
        else:
            return _other(op, other, compare)
        with np.errstate(all="ignore"):         # a GPU has no floating-point warnings
            return _out(op(o, self._a) if reflected else op(self._a, o))
    return m


def _inplace(op):
    def m(self, other):
        t = type(other)
        if t is ndarray:
            other = other._a
        elif t is np.ndarray or t is list or t is tuple:
            raise _host_mixed(f"cupy.ndarray {op.__name__}", other)
        elif not isinstance(other, (int, float, complex, np.generic)):
            return _other(op, other, False)
        with np.errstate(all="ignore"):
            op(self._a, other)
        _launch_logs and _launch()
        return self
    return m


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
              "lshift", "rshift"):
    _op = getattr(operator, _name + "_" if _name in ("and", "or") else _name)
    setattr(ndarray, f"__{_name}__", _binary(_op))
    setattr(ndarray, f"__r{_name}__", _binary(_op, reflected=True))
    setattr(ndarray, f"__i{_name}__", _inplace(getattr(operator, f"i{_name}")))
for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(ndarray, f"__{_name}__", _binary(getattr(operator, _name), compare=True))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", (lambda op: lambda self: _out(np.asarray(op(self._a))))(getattr(operator, _name)))
ndarray.__divmod__ = _binary(divmod)


class _Flags:
    """CuPy's array flags: c_contiguous, f_contiguous and owndata only."""

    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, f):
        self.c_contiguous, self.f_contiguous, self.owndata = f.c_contiguous, f.f_contiguous, f.owndata

    def __getitem__(self, name):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[name]


class _MemoryPointer:
    """``a.data``: only ``ptr`` (an address, for aliasing checks)."""

    def __init__(self, a):
        self.ptr = a.__array_interface__["data"][0]
        self.mem = self


# =========================================================================== the functions that differ from NumPy's
def _poison(a: np.ndarray) -> np.ndarray:
    """Fill fresh memory with garbage, as the GPU leaves it: NaN, or a large integer."""
    k = a.dtype.kind
    if k in "fc":
        a.fill(np.nan)
    elif k in "iu":
        a.fill(np.iinfo(a.dtype).max - 7)
    elif k == "b":
        a.fill(True)
    return a


def empty(shape, dtype=float, order="C"):
    return _wrap(_poison(np.empty(shape, dtype=dtype, order=order)))


def empty_like(prototype, dtype=None, order="K", subok=None, shape=None):
    return _wrap(_poison(np.empty_like(_in(prototype, "cupy.empty_like"), dtype=dtype, order=order, shape=shape)))


def _host_ok(a):
    """Host data allowed (the explicit host→device transfer), device arrays unwrapped."""
    if type(a) is ndarray:
        return a._a
    if type(a) in (list, tuple):
        return type(a)(_host_ok(v) for v in a)
    return a


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    host = type(obj) is not ndarray
    return _wrap(np.array(_host_ok(obj), dtype=dtype, copy=True if host else copy, order=order, ndmin=ndmin))


def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    if type(a) is ndarray:
        return _wrap(np.asarray(a._a, dtype=dtype, order=order, copy=copy))
    # host → device: always a copy (device memory is never the host's)
    return _wrap(np.array(_host_ok(a), dtype=dtype, order=order if order not in (None, "A") else "K", copy=True))


asanyarray = asarray


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if type(a) is ndarray:
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)


def get_array_module(*args):
    for a in args:
        if type(a) is ndarray:
            return sys.modules["cupy"]
    return np


def take(a, indices, axis=None, out=None):
    a_ = _in(a, "cupy.take")
    ind = indices._a if type(indices) is ndarray else np.asarray(_in(indices, "cupy.take"))
    r = np.take(a_, ind, axis=axis, mode="wrap") if a_.size else np.take(a_, ind, axis=axis)
    if out is not None:
        out._a[...] = r
        return out
    return _out(r)


def take_along_axis(a, indices, axis):
    a_, i_ = _in(a, "cupy.take_along_axis"), _in(indices, "cupy.take_along_axis")
    if axis is None:
        a_, axis = a_.reshape(-1), 0
    n = a_.shape[axis]
    return _out(np.take_along_axis(a_, np.mod(i_, n) if n else i_, axis=axis))


def _syncing(name, npf):
    allowed = _real["kwargs"].get(name)

    def f(*args, **kwargs):
        _check_kwargs(f"cupy.{name}", kwargs, allowed)
        _sync(name)
        return _out(npf(*_in(args, f"cupy.{name}"), **_in_kw(kwargs, f"cupy.{name}")))
    f.__name__ = name
    return f


def where(condition, x=None, y=None):
    if x is None and y is None:
        _sync("where")
        return _out(np.nonzero(_in(condition, "cupy.where")))
    return _out(np.where(*_in((condition, x, y), "cupy.where")))


def _scatter(op, a, slices, value):
    if type(a) is not ndarray:
        raise _host_mixed("cupyx.scatter_*", a)
    key, mask = _index(a._a, slices)
    if mask:
        _sync("boolean mask indexing")
    _launch_logs and _launch()                  # one kernel (cupyx.scatter_add's atomic adds)
    op.at(a._a, key, value._a if type(value) is ndarray else _in(value, "cupyx.scatter_*"))


def scatter_add(a, slices, value):
    _scatter(np.add, a, slices, value)


def scatter_max(a, slices, value):
    _scatter(np.maximum, a, slices, value)


def scatter_min(a, slices, value):
    _scatter(np.minimum, a, slices, value)


def fuse(*args, **kwargs):
    """cupy.fuse: the function itself (its cupy calls are checked one by one)."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda f: f


def as_strided(x, shape=None, strides=None):
    return _wrap(np.lib.stride_tricks.as_strided(_in(x, "cupy.lib.stride_tricks.as_strided"), shape, strides))


# =========================================================================== modules
class _Module(types.ModuleType):
    """A stand-in module: its names are the real CuPy module's, made on first use from
    ``over`` (the stand-in's own), NumPy's same-named objects (as CuPy re-exports them) or
    wrapped NumPy functions."""

    def __init__(self, name, real, np_mod, over):
        super().__init__(name, f"Strict stand-in for {name} (NumPy underneath).")
        self._real_names = frozenset(dir(real)) if real is not None else frozenset()
        self._real_mod, self._np_mod = real, np_mod
        self.__dict__.update(over)
        self.__minivit_strict_standin__ = True

    def __getattr__(self, name):
        if name.startswith("__") or name not in self._real_names:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r} (the installed CuPy "
                                 f"{_real.get('version', '?')} has none)")
        r = getattr(self._real_mod, name)
        n = getattr(self._np_mod, name, None) if self._np_mod is not None else None
        if n is not None and (r is n or isinstance(r, (int, float, str)) or
                              (isinstance(r, type) and issubclass(r, np.generic))):
            v = n
        elif n is not None and callable(n) and type(r).__name__ in ("ufunc", "_GUFunc") and isinstance(n, np.ufunc):
            v = ufunc(name, n, _params(r))
        elif n is not None and callable(n) and callable(r) and not isinstance(r, type):
            v = _function(f"{self.__name__}.{name}", n, _params(r), _max_positional(r))
        else:
            raise StandinError(f"{self.__name__}.{name} exists in CuPy but the strict stand-in does not emulate it: "
                               f"add it to minivit/testing/strict_cupy.py")
        setattr(self, name, v)
        return v


def available() -> str | None:
    """None when the stand-in can be installed, else why not."""
    if "cupy" in sys.modules and getattr(sys.modules["cupy"], "__minivit_strict_standin__", False):
        return None
    try:
        import cupy  # noqa: F401
        import cupyx  # noqa: F401
    except Exception:
        return NOT_INSTALLED
    return None


def installed() -> bool:
    return getattr(sys.modules.get("cupy"), "__minivit_strict_standin__", False)


def install():
    """Put the stand-in's ``cupy`` and ``cupyx`` into sys.modules (once); returns the cupy module.

    Raises ImportError when the real cupy-cuda12x is not importable (its names are the rules)."""
    if installed():
        return sys.modules["cupy"]
    try:
        import cupy as real
        import cupyx as real_x
        import cupyx.scipy.special as real_special
        from cupy._core import _routines_linalg as real_linalg
    except Exception as e:
        raise ImportError(f"{NOT_INSTALLED}: {e}") from e
    import scipy
    import scipy.special

    _real["version"] = real.__version__
    _real["ndarray"] = frozenset(dir(real.ndarray))
    _real["ndarray_kwargs"] = {n: _params(getattr(real.ndarray, n, None)) for n in _real["ndarray"]
                               if not n.startswith("__")}
    _real["kwargs"] = {n: _params(getattr(real, n)) for n in dir(real) if callable(getattr(real, n, None))}
    _real["RandomState"] = frozenset(dir(real.random.RandomState))
    # The stand-in's own array attributes and operators, less those this CuPy lacks (e.g. __index__:
    # operator.index(dev) raises on CuPy; __imatmul__: `a @= b` makes a new array there).
    keep = {"_a", "_base", "__slots__", "__weakref__", "__module__", "__doc__", "__qualname__", "__getattr__",
            "__init__", "__hash__", "__dict__", "__firstlineno__", "__static_attributes__"}
    for name in list(vars(ndarray)):
        if name not in keep and name not in _real["ndarray"]:
            delattr(ndarray, name)
    real_modules = {k: v for k, v in sys.modules.items() if k.split(".")[0] in ("cupy", "cupyx")}
    for k in real_modules:
        del sys.modules[k]

    from minivit.testing import kernel_emulation as kern
    _OWN_FILES.add(kern.__file__.replace(".pyc", ".py"))

    from minivit.testing import strict_cupy_cuda as rt
    _OWN_FILES.add(rt.__file__.replace(".pyc", ".py"))
    cuda, runtime, curand = rt.cuda_modules(real)
    core, linalg_mod = rt.core_modules(real_linalg)

    stride_tricks = _Module("cupy.lib.stride_tricks", real.lib.stride_tricks, np.lib.stride_tricks,
                            {"as_strided": as_strided})
    lib = _Module("cupy.lib", real.lib, None, {"stride_tricks": stride_tricks})
    random = rt.random_module(real.random)
    linalg = _Module("cupy.linalg", real.linalg, np.linalg, {})
    fft = _Module("cupy.fft", real.fft, np.fft, {})
    kern_over = {"RawKernel": kern.RawKernel, "ElementwiseKernel": kern.ElementwiseKernel,
                 "ReductionKernel": kern.ReductionKernel, "RawModule": kern.RawModule}
    over = dict(ndarray=ndarray, ufunc=ufunc, empty=empty, empty_like=empty_like, array=array, asarray=asarray,
                asanyarray=asanyarray, asnumpy=asnumpy, get_array_module=get_array_module, take=take,
                take_along_axis=take_along_axis, where=where, fuse=fuse, cuda=cuda, random=random, lib=lib,
                linalg=linalg, fft=fft, _core=core, __version__=real.__version__,
                get_default_memory_pool=lambda: rt.memory_pool,
                get_default_pinned_memory_pool=lambda: rt.pinned_pool, is_available=lambda: True, **kern_over)
    # Routines whose output size depends on the data: CuPy reads it back from the device.
    for name, npf in (("nonzero", np.nonzero), ("argwhere", np.argwhere), ("flatnonzero", np.flatnonzero),
                      ("unique", np.unique), ("extract", np.extract), ("compress", np.compress)):
        over[name] = _syncing(name, npf)
    cupy = _Module("cupy", real, np, over)
    special = _Module("cupyx.scipy.special", real_special, scipy.special, {})
    cupyx_scipy = _Module("cupyx.scipy", real_x.scipy, None, {"special": special})
    cupyx = _Module("cupyx", real_x, None, {"scatter_add": scatter_add, "scatter_max": scatter_max,
                                             "scatter_min": scatter_min, "scipy": cupyx_scipy})
    sys.modules.update({
        "cupy": cupy, "cupy.cuda": cuda, "cupy.cuda.runtime": runtime, "cupy.cuda.curand": curand,
        "cupy.cuda.cublas": cuda.cublas, "cupy.cuda.nvrtc": cuda.nvrtc, "cupy.cuda.nccl": cuda.nccl,
        "cupy._core": core, "cupy._core._routines_linalg": linalg_mod, "cupy.lib": lib,
        "cupy.lib.stride_tricks": stride_tricks, "cupy.random": random, "cupy.linalg": linalg,
        "cupy.fft": fft, "cupyx": cupyx, "cupyx.scipy": cupyx_scipy, "cupyx.scipy.special": special})
    return cupy
