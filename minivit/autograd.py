"""The autograd engine: a Tensor, a Function, the graph and backward.

A forward pass records, for every result, the Function that made it
(``tensor._ctx``) and that Function's inputs. ``loss.backward()`` then walks
this graph from the loss back to the leaves, calling each Function's
``backward`` with the gradient of its output and handing the gradients it
returns to its inputs (the chain rule, one op at a time).

Ops themselves live in :mod:`minivit.functional`, each as a ``Function``
subclass whose ``backward`` sits right under its ``forward``. This file knows
nothing about any particular op or model.
"""
from __future__ import annotations

import weakref

import numpy as np

from minivit import backend

_grad_enabled = True

# Checks whose answer lives on the device, deferred until the tensor's value is read on the
# host (item, numpy, tolist), which syncs anyway: so an op needs no sync of its own to
# validate its inputs on the GPU (cross_entropy's class indices). Keyed by the tensor's id,
# dropped with the tensor. A check gets the host value and raises if it finds a problem.
_deferred_checks: dict = {}


def defer_check(tensor: "Tensor", check) -> None:
    """Run ``check(host_value)`` when ``tensor``'s value is next read on the host."""
    key = id(tensor)
    _deferred_checks[key] = (weakref.ref(tensor, lambda _r, k=key: _deferred_checks.pop(k, None)), check)


def _run_deferred_check(tensor: "Tensor", value) -> None:
    entry = _deferred_checks.get(id(tensor))
    if entry is not None and entry[0]() is tensor:
        entry[1](value)




class no_grad:
    """Context manager (and decorator) that stops recording the graph, as ``torch.no_grad``."""

    def __enter__(self):
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._prev

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)
        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper


def is_grad_enabled() -> bool:
    return _grad_enabled


# Called as hook(function, inputs, output) after every op's forward; the
# complexity lab uses this to count the MACs of the ops that actually ran.
forward_hooks: list = []


def topological_order(root: "Tensor", all_inputs: bool = False) -> list:
    """Every vertex of the graph behind ``root``, each after all the vertices it was computed from.

    The vertices are leaf tensors (and constants) and, for results of ops, their
    :class:`Node` (``node.tensor`` is the tensor while something still holds it).
    A post-order depth-first search with an explicit stack, so a graph of any depth
    needs no recursion. By default only vertices that require a gradient are
    visited (what backward needs); ``all_inputs`` also includes constants.
    """
    order, seen, stack = [], set(), [(_vertex(root), False)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        if t._ctx is not None:
            stack.extend((x, False) for x in t._ctx.inputs
                         if (all_inputs or x.requires_grad) and id(x) not in seen)
    return order


class Node:
    """The graph's record of a tensor that an op made: its op (``_ctx``) and what backward
    needs to route a gradient to it, but not its data.

    An op keeps, on ``self``, only the arrays its backward uses (a Linear its input, a
    Softmax its output). If the graph kept every op's input tensors themselves, every
    intermediate result of a forward pass would stay alive until backward, needed or
    not (in a ViT: the scores before the softmax, every residual branch's output, ...).
    So an op's ``inputs`` hold these nodes instead: a result nobody saved is freed as
    soon as the Python code that made it lets go of it. This is PyTorch's design too
    (its ``grad_fn`` graph and "saved tensors"). Leaves (parameters, inputs) are kept
    as themselves: their ``.grad`` is where backward writes.
    """

    __slots__ = ("_ctx", "requires_grad", "dtype", "shape", "_ref", "_retains_grad")
    is_leaf = False

    def __init__(self, ctx: "Function", tensor: "Tensor"):
        self._ctx = ctx
        self.requires_grad = True
        self.dtype, self.shape = tensor.dtype, tensor.shape
        self._ref = weakref.ref(tensor)
        self._retains_grad = False

    @property
    def tensor(self):
        """The tensor itself while anything still holds it, else None (its data is gone)."""
        r = self._ref
        return r() if isinstance(r, weakref.ref) else r

    def __repr__(self):
        return f"Node({type(self._ctx).__name__ if self._ctx else 'freed'}, shape={tuple(self.shape)})"


def _vertex(t: "Tensor"):
    """What the graph holds for t: its Node while t's op is recorded, else t itself."""
    node = t._node
    return node if node is not None and node._ctx is not None else t


class Function:
    """One differentiable op.

    Subclasses implement ``forward(*arrays) -> array`` and
    ``backward(grad_out) -> grad or tuple of grads`` (one per input, ``None``
    where an input needs none). Whatever backward needs, forward keeps on
    ``self``. Non-tensor arguments (a dim, a stride) go to ``__init__``.
    ``self.needs_grad[i]`` (set before forward runs) says whether input i wants
    a gradient, so forward and backward can skip work nobody asked for.

    Call an op on tensors as ``Exp()(x)``, or as in PyTorch ``Exp.apply(x)``; keyword
    arguments of ``apply`` go to ``__init__`` (``Op.apply(x, y, k=v)`` is ``Op(k=v)(x, y)``).
    """

    inputs: tuple
    needs_grad: tuple

    @classmethod
    def apply(cls, *inputs, **options) -> "Tensor":
        """PyTorch's spelling: a fresh ``cls(**options)`` called on ``inputs`` (each call its own node)."""
        return cls(**options)(*inputs)

    def __call__(self, *inputs) -> "Tensor":
        ref = next(x for x in inputs if isinstance(x, Tensor))
        inputs = tuple(x if isinstance(x, Tensor) else _constant(x, ref) for x in inputs)
        # Known before forward, so forward can skip saving what no backward will use.
        self.needs_grad = tuple(_grad_enabled and x.requires_grad for x in inputs)
        out = Tensor(self.forward(*[x.data for x in inputs]))
        if any(self.needs_grad):
            self.inputs = tuple(_vertex(x) for x in inputs)    # leaves as themselves, results as Nodes
            out.requires_grad, out._ctx = True, self
        if forward_hooks:
            for hook in forward_hooks:
                hook(self, inputs, out)
        return out

    def forward(self, *xs):
        raise NotImplementedError

    def backward(self, gy):
        raise NotImplementedError


class MultiOutputFunction(Function):
    """An op with several results (``split``, ``unbind``): ``forward(*arrays)`` returns a
    tuple of arrays and ``backward(grads)`` gets a tuple with one gradient per result
    (``None`` for a result no gradient reached), returning the gradients of the inputs.

    In the graph the op is one vertex (a hub :class:`Node` with no tensor of its own);
    result i is a tensor whose op is a ``_Pick`` that routes its gradient to slot i of
    the hub. So backward runs once, with every result's gradient, after all of them are
    complete: one gradient for the input, not one zero-filled array per result added up.
    """

    def __call__(self, *inputs) -> tuple:
        ref = next(x for x in inputs if isinstance(x, Tensor))
        inputs = tuple(x if isinstance(x, Tensor) else _constant(x, ref) for x in inputs)
        self.needs_grad = tuple(_grad_enabled and x.requires_grad for x in inputs)
        outs = tuple(Tensor(a) for a in self.forward(*[x.data for x in inputs]))
        if any(self.needs_grad):
            self.inputs = tuple(_vertex(x) for x in inputs)
            hub = _HubNode(self, outs[0].dtype)
            for i, out in enumerate(outs):
                out.requires_grad, out._ctx = True, _Pick(hub, len(outs), i)
        if forward_hooks:
            for hook in forward_hooks:
                hook(self, inputs, outs)
        return outs


class _HubNode(Node):
    """The graph's vertex for a :class:`MultiOutputFunction`: its op, no tensor."""
    __slots__ = ()

    def __init__(self, ctx: "Function", dtype):
        self._ctx, self.requires_grad, self.dtype, self.shape = ctx, True, dtype, None
        self._ref, self._retains_grad = None, False


class _Parts:
    """The gradients of a multi-output op's results, slot by slot, as they arrive."""
    __slots__ = ("parts", "dtype")

    def __init__(self, parts: list, dtype):
        self.parts, self.dtype = parts, dtype

    def __add__(self, other: "_Parts") -> "_Parts":
        return _Parts([b if a is None else a if b is None else a + b for a, b in zip(self.parts, other.parts)],
                      self.dtype)


class _Pick(Function):
    """Result i of a multi-output op: passes its gradient on to slot i of the op's hub."""

    def __init__(self, hub: _HubNode, n: int, i: int):
        self.inputs, self.needs_grad, self.n, self.i = (hub,), (True,), n, i

    def backward(self, gy):
        parts = [None] * self.n
        parts[self.i] = gy
        return _Parts(parts, self.inputs[0].dtype)


def _owner(a):
    """The array that owns a's memory (a itself, or the base a view was taken from)."""
    while getattr(a, "base", None) is not None:
        a = a.base
    return a


def _plain(a) -> bool:
    """A C-contiguous, writable array: fit to be a .grad as it is (not a stride-0 broadcast view)."""
    flags = a.flags
    return flags.c_contiguous and getattr(flags, "writeable", True)


def _hold(held: dict, g, n: int) -> None:
    """Count n more pending gradients on the memory of g (each slot of a _Parts)."""
    for a in (g.parts if isinstance(g, _Parts) else (g,)):
        if a is not None:
            k = id(_owner(a))
            held[k] = held.get(k, 0) + n


def _release(held: dict, g) -> bool:
    """One pending gradient g is taken out; True when no other pending one shares its memory."""
    alone = True
    for a in (g.parts if isinstance(g, _Parts) else (g,)):
        if a is not None:
            k = id(_owner(a))
            held[k] = held.get(k, 0) - 1
            alone = alone and held[k] <= 0
    return alone


def _constant(x, ref: "Tensor") -> "Tensor":
    """A non-tensor operand (Python number or array) as a tensor on ref's device.
    Python numbers take ref's dtype, so ``x * 2.0`` keeps float32 float32."""
    xp = ref.xp
    if isinstance(x, (bool, int, float)):
        return Tensor(xp.asarray(x, dtype=ref.dtype))
    return Tensor(xp.asarray(x))


class Tensor:
    """An n-dimensional array (NumPy or CuPy) that can remember how it was made.

    ``data`` is the array, ``grad`` the gradient array after ``backward`` (same
    shape, or None). Tensors built from Python lists or numbers are float32,
    as in PyTorch; from arrays they keep the array's dtype.
    """

    __slots__ = ("data", "grad", "requires_grad", "_node", "_retains_grad", "__weakref__")
    # `ndarray op Tensor`: NumPy steps aside (returns NotImplemented) so Python
    # calls our reflected operator; CuPy honours __array_priority__.
    __array_ufunc__ = None
    __array_priority__ = 1000
    __hash__ = object.__hash__  # __eq__ is elementwise, identity stays hashable

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        xp = backend.get_array_module(data)
        if not isinstance(data, xp.ndarray):
            from_python = not isinstance(data, np.generic)  # NumPy scalars keep their dtype
            data = np.asarray(data)
            if from_python and dtype is None and data.dtype == np.float64:
                dtype = np.float32
        if dtype is not None and data.dtype != dtype:
            data = data.astype(dtype)
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, got dtype {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self._node = None                                  # a Node once an op records this tensor
        self._retains_grad = False

    # ---------------------------------------------------------------- array facts
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    device = property(lambda self: backend.device_of(self.data))
    xp = property(lambda self: backend.get_array_module(self.data))
    is_leaf = property(lambda self: self._ctx is None)

    @property
    def _ctx(self):
        """The Function that made this tensor (None for a leaf, or once backward freed the graph)."""
        return None if self._node is None else self._node._ctx

    @_ctx.setter
    def _ctx(self, fn):
        if fn is None:
            if self._node is not None:
                self._node._ctx = None
        else:
            self._node = Node(fn, self)

    def size(self, dim=None):
        return self.data.shape if dim is None else self.data.shape[dim]

    def numel(self) -> int:
        return int(self.data.size)

    def dim(self) -> int:
        return self.data.ndim

    def __len__(self):
        return len(self.data)

    def item(self):
        v = self.data.item()
        if _deferred_checks:
            _run_deferred_check(self, v)
        return v

    def numpy(self) -> np.ndarray:
        """The data as a host NumPy array (copied from the GPU when needed)."""
        a = backend.to_numpy(self.data)
        if _deferred_checks:
            _run_deferred_check(self, a)
        return a

    def tolist(self):
        return self.numpy().tolist()

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = ", device='cuda'" if self.device == "cuda" else ""
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        return f"tensor({body}{dev}{grad})"

    # ---------------------------------------------------------------- graph
    def detach(self) -> "Tensor":
        """The same data, cut off from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        self.requires_grad = flag
        return self

    def retain_grad(self):
        """Keep ``.grad`` on this non-leaf tensor too (leaves always keep theirs)."""
        self._retains_grad = True
        if self._node is not None:                         # the graph must reach this tensor itself
            self._node._retains_grad, self._node._ref = True, self

    def backward(self, grad=None, retain_graph: bool = False):
        """Fill ``.grad`` of every leaf this tensor depends on.

        The graph is walked iteratively (deep graphs hit no recursion limit) in
        reverse topological order, so a tensor used by several ops has the sum
        of all their gradients before its own op's backward runs. Afterwards the
        graph is freed, unless ``retain_graph``.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: "
                               "no input of the computation had requires_grad=True")
        xp = self.xp
        given = grad is not None
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a single-element "
                                   f"output, got shape {self.shape}; pass grad=")
            grad = xp.ones_like(self.data)
        else:
            grad = xp.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"grad has shape {grad.shape}, tensor has shape {self.shape}")

        # 1. Topological order: every tensor after the tensors it was computed from.
        order = topological_order(self)

        # 2. Reverse order: every user of t has run, so grads[t] is complete.
        #    (t is a leaf tensor, or the Node of an op's result: see Node.)
        #    `held` counts, per memory owner, the pending gradients in `grads` that use its memory
        #    (Add gives one array to both inputs; a reshape's gradient is a view). A leaf takes its
        #    gradient array as it is when nothing else holds that memory, and a copy otherwise,
        #    so no two .grad arrays ever share memory (an in-place `p.grad *= c` stays safe).
        held = {}
        grads = {id(_vertex(self)): grad}
        _hold(held, grad, 2 if given else 1)       # the caller's array is never taken
        for t in reversed(order):
            g = grads.pop(id(t), None)
            ctx = t._ctx
            if g is not None:
                alone = _release(held, g)
                if ctx is None or t._retains_grad:
                    target = t.tensor if isinstance(t, Node) else t
                    if target is not None:
                        if target.grad is not None:
                            target.grad = target.grad + g
                        elif alone and ctx is None and _plain(g):
                            target.grad = g
                        else:                       # shared, a broadcast view, or a non-leaf's g
                            target.grad = g.copy()  # (which goes on to its op): a copy
            if ctx is None:
                continue
            if g is not None:
                gxs = ctx.backward(tuple(g.parts) if isinstance(g, _Parts) else g)
                if not isinstance(gxs, tuple):
                    gxs = (gxs,)
                for x, gx in zip(ctx.inputs, gxs):
                    if gx is not None and x.requires_grad:
                        if gx.dtype != x.dtype:
                            # A gradient has its tensor's dtype, as in PyTorch. Under mixed
                            # precision a float16 activation that met a float32 one (x16 + x32
                            # is float32) would otherwise get a float32 gradient, and its own
                            # backward (a float16 GEMM) would silently run in float32.
                            gx = gx.astype(x.dtype)
                        k = id(x)
                        if k in grads:
                            old, grads[k] = grads[k], grads[k] + gx
                            _release(held, old)
                        else:
                            grads[k] = gx
                        _hold(held, grads[k], 1)
            if not retain_graph:
                t._ctx = None  # frees the op and every array it saved for backward

    # ---------------------------------------------------------------- device / dtype
    def to(self, device=None, dtype=None) -> "Tensor":
        """A copy on another device and/or dtype; differentiable, as in PyTorch."""
        return _ops.to(self, device=device, dtype=dtype)

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    def half(self):
        return self.to(dtype=np.float16)

    def cpu(self):
        return self.to(device="cpu")

    def cuda(self):
        return self.to(device="cuda")

    # ---------------------------------------------------------------- operators
    def __add__(self, o): return _ops.add(self, o)
    def __radd__(self, o): return _ops.add(o, self)
    def __sub__(self, o): return _ops.sub(self, o)
    def __rsub__(self, o): return _ops.sub(o, self)
    def __mul__(self, o): return _ops.mul(self, o)
    def __rmul__(self, o): return _ops.mul(o, self)
    def __truediv__(self, o): return _ops.div(self, o)
    def __rtruediv__(self, o): return _ops.div(o, self)
    def __pow__(self, o): return _ops.pow(self, o)
    def __rpow__(self, o): return _ops.pow(o, self)
    def __matmul__(self, o): return _ops.matmul(self, o)
    def __rmatmul__(self, o): return _ops.matmul(o, self)
    def __neg__(self): return _ops.neg(self)
    def __abs__(self): return _ops.abs(self)
    def __getitem__(self, index): return _ops.getitem(self, index)

    # Comparisons give boolean tensors outside the graph.
    def _cmp(self, o, op):
        return Tensor(op(self.data, o.data if isinstance(o, Tensor) else o))
    def __lt__(self, o): return self._cmp(o, lambda a, b: a < b)
    def __le__(self, o): return self._cmp(o, lambda a, b: a <= b)
    def __gt__(self, o): return self._cmp(o, lambda a, b: a > b)
    def __ge__(self, o): return self._cmp(o, lambda a, b: a >= b)
    def __eq__(self, o): return self._cmp(o, lambda a, b: a == b)
    def __ne__(self, o): return self._cmp(o, lambda a, b: a != b)

    # ---------------------------------------------------------------- methods (PyTorch's names)
    def reshape(self, *shape): return _ops.reshape(self, *shape)
    view = reshape
    def flatten(self, start_dim=0, end_dim=-1): return _ops.flatten(self, start_dim, end_dim)
    def unsqueeze(self, dim): return _ops.unsqueeze(self, dim)
    def squeeze(self, dim=None): return _ops.squeeze(self, dim)
    def transpose(self, dim0, dim1): return _ops.transpose(self, dim0, dim1)
    def permute(self, *dims): return _ops.permute(self, *dims)
    def expand(self, *shape): return _ops.expand(self, *shape)
    def contiguous(self): return self
    def sum(self, dim=None, keepdim=False): return _ops.sum(self, dim, keepdim)
    def mean(self, dim=None, keepdim=False): return _ops.mean(self, dim, keepdim)
    def var(self, dim=None, keepdim=False, unbiased=True): return _ops.var(self, dim, keepdim, unbiased)
    def max(self, dim=None, keepdim=False): return _ops.max(self, dim, keepdim)
    def amax(self, dim=None, keepdim=False): return _ops.amax(self, dim, keepdim)
    def argmax(self, dim=None, keepdim=False): return _ops.argmax(self, dim, keepdim)
    def exp(self): return _ops.exp(self)
    def log(self): return _ops.log(self)
    def sqrt(self): return _ops.sqrt(self)
    def tanh(self): return _ops.tanh(self)
    def abs(self): return _ops.abs(self)
    def clamp(self, min=None, max=None): return _ops.clamp(self, min, max)
    def roll(self, shifts, dims=None): return _ops.roll(self, shifts, dims)
    def split(self, split_size, dim=0): return _ops.split(self, split_size, dim)
    def chunk(self, chunks, dim=0): return _ops.chunk(self, chunks, dim)
    def unbind(self, dim=0): return _ops.unbind(self, dim)


# The ops need Tensor and Function, and Tensor's operators need the ops:
# import them last, once both classes exist.
from minivit.functional import basic as _ops  # noqa: E402
