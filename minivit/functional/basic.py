"""Elementary ops: arithmetic, reductions, shapes, joins — the ops behind Tensor's methods.

Each op is a ``Function`` with its backward right under its forward, and a
lowercase wrapper with PyTorch's name and argument order. Binary ops undo
broadcasting once, in backward, with ``sum_to``.
"""
from __future__ import annotations

import builtins
from collections import namedtuple

import numpy as np

from minivit import amp, backend
from minivit.autograd import Function, MultiOutputFunction, Tensor

get_array_module = backend.get_array_module


def _norm_dim(dim, ndim):
    return dim + ndim if dim < 0 else dim


def sum_to(g, shape):
    """Sum a broadcast gradient back down to ``shape`` (undoes NumPy broadcasting)."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and g.shape[lead + i] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape)


# =========================================================================== arithmetic
class Add(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, gy):
        return sum_to(gy, self.shapes[0]), sum_to(gy, self.shapes[1])


class Sub(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, gy):
        return sum_to(gy, self.shapes[0]), sum_to(-gy, self.shapes[1])


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        a, b = self.a, self.b
        return (sum_to(gy * b, a.shape) if self.needs_grad[0] else None,
                sum_to(gy * a, b.shape) if self.needs_grad[1] else None)


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, gy):
        a, b = self.a, self.b
        gb = sum_to(-gy * a / (b * b), b.shape) if self.needs_grad[1] else None
        return (sum_to(gy / b, a.shape) if self.needs_grad[0] else None), gb


class Pow(Function):
    """a ** b.  d/da = b·a^(b−1);  d/db = a^b·log a."""

    def forward(self, a, b):
        self.a, self.b = a, b
        self.y = a ** b
        return self.y

    def backward(self, gy):
        a, b = self.a, self.b
        xp = get_array_module(a)
        ga = sum_to(gy * b * a ** (b - 1), a.shape) if self.needs_grad[0] else None
        gb = None
        if self.needs_grad[1]:
            gb = sum_to(gy * self.y * xp.log(xp.where(a > 0, a, 1)), b.shape)
        return ga, gb


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


def add(a, b): return Add()(a, b)
def sub(a, b): return Sub()(a, b)
def mul(a, b): return Mul()(a, b)
def div(a, b): return Div()(a, b)
def pow(a, b): return Pow()(a, b)  # noqa: A001
def neg(x): return Neg()(x)


class MatMul(Function):
    """Batched, broadcasting matrix product (``torch.matmul``): (..., M, K) @ (..., K, N)."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, gy):
        a, b = self.a, self.b
        xp = get_array_module(gy)
        # Treat 1-D operands as a row (left) or a column (right), as matmul does.
        a2 = a.reshape(1, -1) if a.ndim == 1 else a
        b2 = b.reshape(-1, 1) if b.ndim == 1 else b
        batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        gy = gy.reshape(batch + (a2.shape[-2], b2.shape[-1]))
        ga = gb = None
        if self.needs_grad[0]:
            ga = sum_to(gy @ xp.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
        if self.needs_grad[1]:
            gb = sum_to(xp.swapaxes(a2, -1, -2) @ gy, b2.shape).reshape(b.shape)
        return ga, gb


def matmul(a, b):
    if amp._enabled:                                  # autocast: a float16 GEMM (minivit.amp's policy)
        a, b = amp.cast_inputs("matmul", a, b)
    return MatMul()(a, b)


# =========================================================================== elementwise math
class Exp(Function):
    def forward(self, x):
        self.y = get_array_module(x).exp(x)
        return self.y

    def backward(self, gy):
        return gy * self.y


class Log(Function):
    def forward(self, x):
        self.x = x
        return get_array_module(x).log(x)

    def backward(self, gy):
        return gy / self.x


class Sqrt(Function):
    def forward(self, x):
        self.y = get_array_module(x).sqrt(x)
        return self.y

    def backward(self, gy):
        return gy / (2 * self.y)


class Tanh(Function):
    def forward(self, x):
        self.y = get_array_module(x).tanh(x)
        return self.y

    def backward(self, gy):
        return gy * (1 - self.y * self.y)


class Abs(Function):
    def forward(self, x):
        self.x = x
        return get_array_module(x).abs(x)

    def backward(self, gy):
        return gy * get_array_module(gy).sign(self.x)


class Clamp(Function):
    """Gradient passes where the input is inside [min, max] (torch's convention at the edges)."""

    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi

    def forward(self, x):
        xp = get_array_module(x)
        self.mask = xp.ones(x.shape, dtype=bool)
        if self.lo is not None:
            self.mask &= x >= self.lo
        if self.hi is not None:
            self.mask &= x <= self.hi
        return xp.clip(x, self.lo, self.hi)

    def backward(self, gy):
        return gy * self.mask


class Where(Function):
    """``torch.where(cond, a, b)``; cond is a constant boolean array."""

    def __init__(self, cond):
        self.cond = cond

    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return get_array_module(a).where(self.cond, a, b)

    def backward(self, gy):
        zero = gy.dtype.type(0)
        xp = get_array_module(gy)
        return (sum_to(xp.where(self.cond, gy, zero), self.shapes[0]),
                sum_to(xp.where(self.cond, zero, gy), self.shapes[1]))


def exp(x): return Exp()(x)
def log(x): return Log()(x)
def sqrt(x): return Sqrt()(x)
def tanh(x): return Tanh()(x)
def abs(x): return Abs()(x)  # noqa: A001
def clamp(x, min=None, max=None): return Clamp(min, max)(x)  # noqa: A002


def where(condition, a, b):
    cond = condition.data if isinstance(condition, Tensor) else condition
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a = Tensor(a)
        if backend.device_of(cond) != a.device:         # two numbers and a GPU condition
            a = Tensor(backend.to_device(a.data, backend.device_of(cond)))
    return Where(cond)(a, b)


# =========================================================================== reductions
def _axes(dim, ndim):
    if dim is None:
        return tuple(range(ndim))
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return tuple(_norm_dim(d, ndim) for d in dims)


def _keepdim_shape(shape, axes):
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


class Sum(Function):
    def __init__(self, dim, keepdim):
        self.dim, self.keepdim = dim, keepdim

    def forward(self, x):
        self.shape = x.shape
        self.axes = _axes(self.dim, x.ndim)
        return x.sum(axis=self.axes, keepdims=self.keepdim)

    def backward(self, gy):
        xp = get_array_module(gy)
        return xp.broadcast_to(gy.reshape(_keepdim_shape(self.shape, self.axes)), self.shape)


class Mean(Sum):
    def forward(self, x):
        y = super().forward(x)
        self.n = int(np.prod([x.shape[a] for a in self.axes]))
        return y / x.dtype.type(self.n)

    def backward(self, gy):
        return super().backward(gy / gy.dtype.type(self.n))


class Amax(Function):
    """Max over dims; ties share the gradient equally (``torch.amax``)."""

    def __init__(self, dim, keepdim):
        self.dim, self.keepdim = dim, keepdim

    def forward(self, x):
        self.axes = _axes(self.dim, x.ndim)
        y = x.max(axis=self.axes, keepdims=True)
        self.mask = x == y
        return y if self.keepdim else y.reshape([s for i, s in enumerate(y.shape) if i not in self.axes])

    def backward(self, gy):
        gy = gy.reshape(_keepdim_shape(self.mask.shape, self.axes))
        count = self.mask.sum(axis=self.axes, keepdims=True)
        return self.mask * (gy / count.astype(gy.dtype))


class Gather(Function):
    """``torch.gather(x, dim, index)``: out[..i..] = x[..index[..i..]..] along dim."""

    def __init__(self, dim, index):
        self.dim, self.index = dim, index

    def forward(self, x):
        self.shape = x.shape
        return get_array_module(x).take_along_axis(x, self.index, axis=self.dim)

    def backward(self, gy):
        xp = get_array_module(gy)
        gx = xp.zeros(self.shape, dtype=gy.dtype)
        # Indices may repeat along dim: scatter with addition. The other axes are indexed
        # by broadcasting aranges (np.indices(shape, sparse=True), spelled out: CuPy's
        # indices has no sparse argument).
        nd = self.index.ndim
        idx = [xp.arange(n).reshape((1,) * d + (n,) + (1,) * (nd - d - 1))
               for d, n in enumerate(self.index.shape)]
        idx[self.dim] = self.index
        backend.scatter_add(gx, tuple(idx), gy)
        return gx


def sum(x, dim=None, keepdim=False): return Sum(dim, keepdim)(x)  # noqa: A001
def mean(x, dim=None, keepdim=False): return Mean(dim, keepdim)(x)
def amax(x, dim=None, keepdim=False): return Amax(dim, keepdim)(x)


def var(x, dim=None, keepdim=False, unbiased=True):
    """Variance as a composite of differentiable ops (no backward of its own needed)."""
    d = x - mean(x, dim, keepdim=True)
    n = int(np.prod([x.shape[a] for a in _axes(dim, x.ndim)]))
    return sum(d * d, dim, keepdim) / (n - 1 if unbiased else n)


def gather(x, dim, index):
    index = index.data if isinstance(index, Tensor) else index
    index = x.xp.asarray(index)                 # on x's device (a host index is copied over)
    return Gather(_norm_dim(dim, x.ndim), index)(x)


def argmax(x, dim=None, keepdim=False):
    data = x.data if isinstance(x, Tensor) else x
    if dim is None:
        return Tensor(data.argmax())
    return Tensor(data.argmax(axis=dim, keepdims=keepdim))


MaxResult = namedtuple("max", ["values", "indices"])


def max(x, dim=None, keepdim=False):  # noqa: A001
    """As ``torch.max``: without dim, the max (ties share the gradient); with dim,
    ``(values, indices)`` and the gradient goes to the index returned."""
    if dim is None:
        return amax(x)
    dim = _norm_dim(dim, x.ndim)
    idx = x.data.argmax(axis=dim)[(slice(None),) * dim + (None,)]
    values = gather(x, dim, idx)
    if not keepdim:
        values = squeeze(values, dim)
        idx = idx.squeeze(dim)
    return MaxResult(values, Tensor(idx))


# =========================================================================== shapes
class Reshape(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gy):
        return gy.reshape(self.in_shape)


class Permute(Function):
    def __init__(self, dims):
        self.dims = dims

    def forward(self, x):
        return x.transpose(self.dims)

    def backward(self, gy):
        return gy.transpose(np.argsort(self.dims))


class Expand(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.in_shape = x.shape
        return get_array_module(x).broadcast_to(x, self.shape)

    def backward(self, gy):
        return sum_to(gy, self.in_shape)


class GetItem(Function):
    """x[index]. Backward scatters into zeros; repeated integer indices add up."""

    def __init__(self, index):
        self.index = index

    def forward(self, x):
        self.shape = x.shape
        return x[self.index]

    def backward(self, gy):
        xp = get_array_module(gy)
        gx = xp.zeros(self.shape, dtype=gy.dtype)
        if _is_basic_index(self.index):
            gx[self.index] = gy  # slices and ints never repeat an element
        else:
            backend.scatter_add(gx, self.index, gy)
        return gx


def _is_basic_index(index):
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in items)


def _shape_arg(shape):
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)


def reshape(x, *shape): return Reshape(_shape_arg(shape))(x)


def flatten(x, start_dim=0, end_dim=-1):
    s, e = _norm_dim(start_dim, x.ndim), _norm_dim(end_dim, x.ndim)
    return reshape(x, x.shape[:s] + (-1,) + x.shape[e + 1:]) if x.ndim else reshape(x, 1)


def unsqueeze(x, dim):
    dim = _norm_dim(dim, x.ndim + 1)
    return reshape(x, x.shape[:dim] + (1,) + x.shape[dim:])


def squeeze(x, dim=None):
    if dim is None:
        return reshape(x, tuple(s for s in x.shape if s != 1))
    dim = _norm_dim(dim, x.ndim)
    if x.shape[dim] != 1:
        return x
    return reshape(x, x.shape[:dim] + x.shape[dim + 1:])


def permute(x, *dims):
    dims = tuple(_norm_dim(d, x.ndim) for d in _shape_arg(dims))
    return Permute(dims)(x)


def transpose(x, dim0, dim1):
    dims = list(range(x.ndim))
    d0, d1 = _norm_dim(dim0, x.ndim), _norm_dim(dim1, x.ndim)
    dims[d0], dims[d1] = dims[d1], dims[d0]
    return Permute(tuple(dims))(x)


def expand(x, *shape):
    shape = _shape_arg(shape)
    lead = len(shape) - x.ndim
    shape = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(shape))
    return Expand(shape)(x)


def getitem(x, index):
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    elif isinstance(index, list):
        index = x.xp.asarray(index)
    return GetItem(index)(x)


class Roll(Function):
    """``torch.roll``: cyclic shift (Swin's shifted windows); backward rolls back."""

    def __init__(self, shifts, dims):
        self.shifts, self.dims = shifts, dims

    def forward(self, x):
        return get_array_module(x).roll(x, self.shifts, axis=self.dims)

    def backward(self, gy):
        neg = tuple(-s for s in self.shifts) if isinstance(self.shifts, tuple) else -self.shifts
        return get_array_module(gy).roll(gy, neg, axis=self.dims)


def roll(x, shifts, dims=None):
    if isinstance(shifts, list):
        shifts = tuple(shifts)
    if isinstance(dims, list):
        dims = tuple(dims)
    return Roll(shifts, dims)(x)


# =========================================================================== joining and splitting
class Cat(Function):
    def __init__(self, dim):
        self.dim = dim

    def forward(self, *xs):
        self.sizes = [x.shape[self.dim] for x in xs]
        return get_array_module(*xs).concatenate(xs, axis=self.dim)

    def backward(self, gy):
        xp = get_array_module(gy)
        return tuple(xp.split(gy, np.cumsum(self.sizes)[:-1].tolist(), axis=self.dim))


class Stack(Function):
    def __init__(self, dim):
        self.dim = dim

    def forward(self, *xs):
        return get_array_module(*xs).stack(xs, axis=self.dim)

    def backward(self, gy):
        return tuple(gy.take(i, axis=self.dim) for i in range(gy.shape[self.dim]))


def cat(tensors, dim=0):
    tensors = list(tensors)
    return Cat(_norm_dim(dim, tensors[0].ndim))(*tensors)


def stack(tensors, dim=0):
    tensors = list(tensors)
    return Stack(_norm_dim(dim, tensors[0].ndim + 1))(*tensors)


class Split(MultiOutputFunction):
    """x cut along ``dim`` into pieces of the given sizes (``squeeze``: pieces of size 1 with
    the dim dropped, as ``unbind``). The pieces are views. Backward writes every piece's
    gradient into one array (zeros only where a piece got none), where ``split_simple``'s
    getitems each make a zero-filled array of x's size and the engine adds them up."""

    def __init__(self, dim, sizes, squeeze=False):
        self.dim, self.sizes, self.squeeze = dim, sizes, squeeze
        lead, starts = (slice(None),) * dim, np.cumsum([0] + list(sizes))
        self.index = [lead + ((int(a),) if squeeze else (slice(int(a), int(b)),)) for a, b in zip(starts, starts[1:])]

    def forward(self, x):
        self.shape = x.shape
        return tuple(x[i] for i in self.index)

    def backward(self, grads):
        g0 = next(g for g in grads if g is not None)
        xp = get_array_module(g0)
        gx = (xp.empty if all(g is not None for g in grads) else xp.zeros)(self.shape, dtype=g0.dtype)
        for i, g in zip(self.index, grads):
            if g is not None:
                gx[i] = g
        return gx


def _split_sizes(x, split_size_or_sections, dim):
    n = x.shape[dim]
    if isinstance(split_size_or_sections, int):
        return [builtins.min(split_size_or_sections, n - i) for i in range(0, n, split_size_or_sections)]
    sizes = list(split_size_or_sections)
    if builtins.sum(sizes) != n:
        raise ValueError(f"split sizes {sizes} do not add up to dimension {dim}'s size {n}")
    return sizes


def split(x, split_size_or_sections, dim=0):
    """As ``torch.split``: chunks of a given size, or of the sizes listed (one op, :class:`Split`)."""
    dim = _norm_dim(dim, x.ndim)
    return Split(dim, _split_sizes(x, split_size_or_sections, dim))(x)


def split_simple(x, split_size_or_sections, dim=0):
    """``split`` written as one getitem per piece: the engine adds up their gradients."""
    dim = _norm_dim(dim, x.ndim)
    out, start = [], 0
    for s in _split_sizes(x, split_size_or_sections, dim):
        out.append(getitem(x, (slice(None),) * dim + (slice(start, start + s),)))
        start += s
    return tuple(out)


def chunk(x, chunks, dim=0):
    n = x.shape[_norm_dim(dim, x.ndim)]
    return split(x, -(-n // chunks), dim)


def unbind(x, dim=0):
    """As ``torch.unbind``: the slices along ``dim``, that dim removed (one op, :class:`Split`)."""
    dim = _norm_dim(dim, x.ndim)
    return Split(dim, [1] * x.shape[dim], squeeze=True)(x)


def unbind_simple(x, dim=0):
    """``unbind`` written as one getitem per slice."""
    dim = _norm_dim(dim, x.ndim)
    return tuple(getitem(x, (slice(None),) * dim + (i,)) for i in range(x.shape[dim]))


# =========================================================================== device and dtype
class To(Function):
    def __init__(self, device, dtype):
        self.device, self.dtype = device, dtype

    def forward(self, x):
        self.src = backend.device_of(x), x.dtype
        y = x if self.dtype is None else x.astype(self.dtype, copy=False)
        return y if self.device is None else backend.to_device(y, self.device)

    def backward(self, gy):
        device, dtype = self.src
        return backend.to_device(gy, device).astype(dtype, copy=False)


def to(x, device=None, dtype=None):
    if device is not None:
        backend.check_device(device)
    return To(device, dtype)(x)


# =========================================================================== creation
def tensor(data, dtype=None, device=None, requires_grad=False) -> Tensor:
    """``torch.tensor``: a new leaf tensor from a list, scalar or array.

    ``device=None`` keeps the data where it is, as PyTorch does for a tensor: a CuPy
    array stays on the GPU; lists, numbers and NumPy arrays are on the CPU."""
    t = Tensor(data, dtype=dtype)
    if device is not None and device != t.device:
        t = Tensor(backend.to_device(t.data, device))
    return t.requires_grad_(requires_grad)


def _factory(fill):
    def make(*shape, dtype=np.float32, device="cpu", requires_grad=False):
        xp = backend.xp_for(device)
        return Tensor(fill(xp, _shape_arg(shape), dtype), requires_grad=requires_grad)
    return make


zeros = _factory(lambda xp, s, d: xp.zeros(s, dtype=d))
ones = _factory(lambda xp, s, d: xp.ones(s, dtype=d))
randn = _factory(lambda xp, s, d: xp.random.standard_normal(s).astype(d))
rand = _factory(lambda xp, s, d: xp.random.random_sample(s).astype(d))
