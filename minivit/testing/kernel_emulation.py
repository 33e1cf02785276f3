"""CuPy's kernel classes for the strict stand-in: checked launches, NumPy emulations.

A ``RawKernel`` call is checked the way the GPU would fail (or, worse, silently compute
garbage): the argument count and types against the kernel's C signature, parsed from
its source (``extern "C" __global__ void name(...)``, with the source's typedefs), arrays
C-contiguous (a kernel sees a bare pointer: strides are lost), and the launch geometry
against how the kernel maps threads to rows. Then a NumPy function registered under the
kernel's name computes what the CUDA C means. An ``ElementwiseKernel`` call is checked
as CuPy checks it (argument count, the type placeholders' dtypes, broadcasting, output
shapes) and then emulated the same way.

Each emulation below is written from the CUDA C of minivit.functional.fused_cuda, not from
the reference ops the kernels are tested against (so the test compares two things).
A kernel without an emulation raises :class:`~minivit.testing.strict_cupy.StandinError`.
"""
from __future__ import annotations

import math
import re

import numpy as np

from minivit.testing import strict_cupy as sc

# C scalar types → dtypes.
_C_TYPES = {
    "float": np.float32, "double": np.float64, "int": np.int32, "signed int": np.int32,
    "unsigned int": np.uint32, "unsigned": np.uint32, "long long": np.int64, "long long int": np.int64,
    "unsigned long long": np.uint64, "long": np.int64, "unsigned long": np.uint64, "short": np.int16,
    "unsigned short": np.uint16, "char": np.int8, "signed char": np.int8, "unsigned char": np.uint8,
    "bool": np.bool_, "__half": np.float16, "half": np.float16, "float16": np.float16,
    "int8_t": np.int8, "int16_t": np.int16, "int32_t": np.int32, "int64_t": np.int64, "uint8_t": np.uint8,
    "uint32_t": np.uint32, "uint64_t": np.uint64, "size_t": np.uint64, "ptrdiff_t": np.int64,
}
# What CuPy passes for a Python scalar argument (cupy/cuda/function.pyx, _pointer: a Python int,
# and so a bool too, becomes numpy.int64; a float numpy.float64; a complex numpy.complex128).
_PY_SCALARS = {bool: np.int64, int: np.int64, float: np.float64, complex: np.complex128}

_RAW: dict = {}
_ELEMENTWISE: dict = {}


def emulates(name: str, elementwise: bool = False):
    """Register a NumPy emulation of the kernel called ``name``."""
    def deco(fn):
        (_ELEMENTWISE if elementwise else _RAW)[name] = fn
        return fn
    return deco


def _no_emulation(kind, name):
    return sc.StandinError(f"{kind} {name!r} has no NumPy emulation in the strict CuPy stand-in: add one "
                           f"(@emulates({name!r}) in minivit/testing/kernel_emulation.py), written from its CUDA C")


# =========================================================================== RawKernel
def _parse_signature(code: str, name: str):
    """[(dtype, is_pointer, param_name), ...] of ``extern "C" __global__ void name(...)``."""
    m = re.search(r'extern\s+"C"\s+__global__\s+void\s+' + re.escape(name) + r"\s*\(([^)]*)\)", code)
    if not m:
        raise RuntimeError(f"kernel {name!r} is not defined in the source as extern \"C\" __global__ void "
                           f"{name}(...) (CuPy: cuModuleGetFunction fails with CUDA_ERROR_NOT_FOUND)")
    typedefs = dict((alias, base.strip()) for base, alias in re.findall(r"typedef\s+([\w\s]+?)\s+(\w+)\s*;", code))
    params = []
    for p in m.group(1).split(","):
        p = p.strip()
        if not p:
            continue
        pointer = p.count("*")
        words = [w for w in re.sub(r"[*&]", " ", p).split()
                 if w not in ("const", "__restrict__", "restrict", "volatile")]
        ctype, pname = " ".join(words[:-1]), words[-1]
        ctype = typedefs.get(ctype, ctype)
        if ctype not in _C_TYPES:
            raise sc.StandinError(f"kernel {name!r}: the stand-in does not know the C type {ctype!r} of {pname!r}")
        params.append((np.dtype(_C_TYPES[ctype]), pointer > 0, pname))
    return params


def _dims(what, v, name):
    if not isinstance(v, tuple) or not 1 <= len(v) <= 3 or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in v):
        raise ValueError(f"kernel {name!r}: {what} must be a tuple of 1 to 3 positive ints, got {v!r}")
    return tuple(int(d) for d in v) + (1,) * (3 - len(v))


class Launch:
    """A launch's grid and block dims (x, y, z), with the checks the emulations make."""

    def __init__(self, name, grid, block):
        self.name = name
        self.grid, self.block = _dims("grid", grid, name), _dims("block", block, name)
        b = self.block
        if b[0] * b[1] * b[2] > 1024 or b[0] > 1024 or b[1] > 1024 or b[2] > 64:
            raise ValueError(f"kernel {name!r}: block {block} is over the GPU's limits (1024 threads a block; "
                             f"z ≤ 64): cudaErrorInvalidConfiguration")
        if self.grid[1] > 65535 or self.grid[2] > 65535 or self.grid[0] > 2**31 - 1:
            raise ValueError(f"kernel {name!r}: grid {grid} is over the GPU's limits")

    def require(self, ok: bool, why: str):
        if not ok:
            raise ValueError(f"kernel {self.name!r} launched with grid {self.grid}, block {self.block}: {why}")


class RawKernel:
    """``cupy.RawKernel(code, name, options=...)``; a call ``k(grid, block, args)`` is checked, then emulated."""

    def __init__(self, code, name, options=(), backend="nvrtc", translate_cucomplex=False, *,
                 enable_cooperative_groups=False, jitify=False):
        self.code, self.name, self.options, self.backend = code, name, tuple(options), backend
        self._params = None

    def __call__(self, grid, block, args, *, shared_mem=0):
        if self._params is None:
            self._params = _parse_signature(self.code, self.name)
        if not isinstance(args, tuple):
            raise TypeError(f"kernel {self.name!r}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self._params):
            raise TypeError(f"kernel {self.name!r} takes {len(self._params)} arguments "
                            f"({', '.join(p[2] for p in self._params)}), got {len(args)}")
        values = [_raw_arg(self.name, p, a) for p, a in zip(self._params, args)]
        launch = Launch(self.name, grid, block)
        fn = _RAW.get(self.name)
        if fn is None:
            raise _no_emulation("RawKernel", self.name)
        with np.errstate(all="ignore"), sc._one_launch(f"RawKernel {self.name}"):   # no FP warnings on a GPU
            fn(launch, *values)


def _raw_arg(kname, param, a):
    dtype, pointer, pname = param
    where = f"kernel {kname!r}, argument {pname!r}"
    if pointer:
        if type(a) is not sc.ndarray:
            raise TypeError(f"{where}: a {dtype.name} pointer needs a device array, got {type(a).__name__}")
        if a.dtype != dtype:
            raise TypeError(f"{where}: the kernel reads {dtype.name} elements, the array holds {a.dtype.name}")
        if not a._a.flags.c_contiguous:
            raise ValueError(f"{where}: the array is not C-contiguous (strides {a.strides}); a kernel sees only "
                             f"its data pointer: pass xp.ascontiguousarray(...)")
        return a._a.reshape(-1)
    if type(a) is sc.ndarray or type(a) is np.ndarray:
        raise TypeError(f"{where}: the C parameter is a {dtype.name} scalar, got an array")
    given = _PY_SCALARS.get(type(a))
    given = np.dtype(given) if given is not None else getattr(a, "dtype", None)
    if given is None:
        raise TypeError(f"{where}: unsupported argument type {type(a).__name__}")
    if given != dtype:
        hint = (f"a Python {type(a).__name__} is passed as {given.name}" if type(a) in _PY_SCALARS
                else f"got {given.name}")
        raise TypeError(f"{where}: the C parameter is {dtype.name}, {hint}: pass np.{dtype.name}(...)")
    return dtype.type(a)


class RawModule:
    def __init__(self, *args, **kwargs):
        raise sc.StandinError("cupy.RawModule is not emulated by the strict stand-in")


class ReductionKernel:
    def __init__(self, *args, **kwargs):
        raise sc.StandinError("cupy.ReductionKernel is not emulated by the strict stand-in")


# =========================================================================== ElementwiseKernel
def _parse_params(spec: str):
    """'T x, float32 y, raw T z' → [(type, name, raw), ...]."""
    out = []
    for p in spec.split(","):
        words = p.split()
        if not words:
            continue
        raw = words[0] == "raw"
        if raw:
            words = words[1:]
        if len(words) != 2:
            raise ValueError(f"ElementwiseKernel: bad parameter {p.strip()!r}")
        out.append((words[0], words[1], raw))
    return out


def _named_dtype(t):
    """A concrete parameter type (float32, int32, float, ...) as a dtype; None for a type
    placeholder (CuPy: a one-character type specifier, such as T)."""
    if len(t) == 1:
        return None
    if t in _C_TYPES:
        return np.dtype(_C_TYPES[t])
    try:
        return np.dtype(t)
    except TypeError:
        raise TypeError(f"ElementwiseKernel: unknown type specifier {t!r}") from None


class ElementwiseKernel:
    """``cupy.ElementwiseKernel``: checked as CuPy checks a call, computed by the emulation of ``name``."""

    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True, preamble="",
                 no_return=False, return_tuple=False, loop_prep="", after_loop="", options=()):
        self.in_params, self.out_params = _parse_params(in_params), _parse_params(out_params)
        self.operation, self.name, self.preamble, self.options = operation, name, preamble, tuple(options)
        self.no_return, self.return_tuple = no_return, return_tuple
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        self.nargs = self.nin + self.nout

    def __call__(self, *args, size=None, block_size=None):
        if len(args) not in (self.nin, self.nargs):
            raise TypeError(f"Wrong number of arguments for {self.name!r}: {self.nin} or {self.nargs}, got {len(args)}")
        types = {}

        def bind(ptype, pname, dtype, weak):
            fixed = _named_dtype(ptype)
            if fixed is not None:
                return fixed
            if weak:
                return None
            if ptype in types and types[ptype] != dtype:
                raise TypeError(f"Type is mismatched. {pname} {dtype} {types[ptype]} (kernel {self.name!r})")
            types[ptype] = dtype
            return dtype

        for (ptype, pname, _), a in zip(self.in_params + self.out_params, args):
            if type(a) is np.ndarray or type(a) in (list, tuple):
                raise sc._host_mixed(f"ElementwiseKernel {self.name!r}, argument {pname!r}", a)
            if type(a) is sc.ndarray:
                bind(ptype, pname, a.dtype, False)
            elif isinstance(a, np.generic):
                bind(ptype, pname, a.dtype, False)
            elif not isinstance(a, (int, float, bool, complex)):
                raise TypeError(f"kernel {self.name!r}, argument {pname!r}: unsupported type {type(a).__name__}")

        def dtype_of(ptype):
            d = _named_dtype(ptype)
            if d is None:
                if ptype not in types:
                    raise TypeError(f"Cannot determine the type of {ptype} (kernel {self.name!r})")
                d = types[ptype]
            return d

        ins = args[:self.nin]
        arrays = [a._a for a, p in zip(ins, self.in_params) if type(a) is sc.ndarray and not p[2]]
        outs_given = args[self.nin:]
        for a, p in zip(outs_given, self.out_params):
            if type(a) is not sc.ndarray:
                raise TypeError(f"kernel {self.name!r}: output {p[1]!r} must be a device array, got {type(a).__name__}")
        try:
            shape = np.broadcast_shapes(*[a.shape for a in arrays], *[a.shape for a in outs_given])
        except ValueError:
            raise ValueError(f"Out shape is mismatched (kernel {self.name!r}): the shapes "
                             f"{[a.shape for a in arrays]} and outputs {[a.shape for a in outs_given]} do not broadcast") from None
        if size is not None:
            if arrays or outs_given:
                raise ValueError("ElementwiseKernel: size is given with array arguments")
            shape = (int(size),)
        for a, p in zip(outs_given, self.out_params):
            if a.shape != shape:
                raise ValueError(f"Out shape is mismatched: {p[1]!r} is {a.shape}, the broadcast shape is {shape}")
            if a.dtype != dtype_of(p[0]):
                raise TypeError(f"Type is mismatched. {p[1]} {a.dtype} {dtype_of(p[0])} (kernel {self.name!r})")
        in_vals = {}
        for (ptype, pname, raw), a in zip(self.in_params, ins):
            d = dtype_of(ptype)
            if type(a) is sc.ndarray:
                in_vals[pname] = a._a if raw else np.broadcast_to(a._a.astype(d, copy=False), shape)
            else:
                in_vals[pname] = d.type(a)
        fn = _ELEMENTWISE.get(self.name)
        if fn is None:
            raise _no_emulation("ElementwiseKernel", self.name)
        with np.errstate(all="ignore"), sc._one_launch(f"ElementwiseKernel {self.name}"):
            outs = list(outs_given) or [sc.empty(shape, dtype=dtype_of(p[0])) for p in self.out_params]
            fn(in_vals, {p[1]: o._a for p, o in zip(self.out_params, outs)})
        if self.no_return:
            return None
        if self.nout == 1 and not self.return_tuple:
            return outs[0]
        return tuple(outs)


# =========================================================================== row kernels of fused_cuda
def _rows_launch(L: Launch, M: int, D: int):
    """ROW_OR_RETURN: row = blockIdx.x * blockDim.y + threadIdx.y, one warp (blockDim.x == 32, eight rows a
    block) or one whole block (blockDim.y == 1) per row, threadIdx.x striding along the row."""
    bx, by, bz = L.block
    L.require(bz == 1 and L.grid[1] == 1 and L.grid[2] == 1, "the row kernels use only x of the grid and x, y of the block")
    L.require(bx % 32 == 0, "blockDim.x must be a whole number of warps (the row reductions shuffle over 32 lanes)")
    L.require(by == 1 or bx == 32, "several rows a block need one warp a row (blockDim.x == 32): row_sum's shared "
                                   "buffer is one per block")
    L.require(L.grid[0] * by >= M, f"covers {L.grid[0] * by} rows of {M}")
    return M, D


def _size(L, what, a, n):
    L.require(a.size >= n, f"{what} holds {a.size} elements, the kernel touches {n}")


def _as_rows(a, M, D):
    return a[:M * D].reshape(M, D)


@emulates("softmax_forward")
def _softmax_forward(L, x, y, M, D, log_softmax, scale, bias, bias_rows):
    M, D = _rows_launch(L, int(M), int(D))
    _size(L, "x", x, M * D)
    _size(L, "y", y, M * D)
    xr, yr = _as_rows(x, M, D) * scale, _as_rows(y, M, D)         # the scaled row, rounded to T
    if bias_rows:                                                  # row r takes bias row r % bias_rows
        R = int(bias_rows)
        _size(L, "bias", bias, R * D)
        xr = xr + _as_rows(bias, R, D)[np.arange(M) % R]
    m = xr.max(axis=1, keepdims=True)
    s = np.exp(xr - m).sum(axis=1, keepdims=True)
    yr[...] = (xr - m) - np.log(s) if log_softmax else np.exp(xr - m) / s


@emulates("softmax_backward")
def _softmax_backward(L, gy, y, gx, gu, M, D, log_softmax, scale, write_unscaled):
    M, D = _rows_launch(L, int(M), int(D))
    for what, a in (("gy", gy), ("y", y), ("gx", gx)):
        _size(L, what, a, M * D)
    g, yr, gxr = _as_rows(gy, M, D), _as_rows(y, M, D), _as_rows(gx, M, D)
    if log_softmax:
        t = g - np.exp(yr) * g.sum(axis=1, keepdims=True)
    else:
        t = g * yr - yr * (g * yr).sum(axis=1, keepdims=True)
    if write_unscaled:
        _size(L, "gu", gu, M * D)
        _as_rows(gu, M, D)[...] = t
    gxr[...] = t * scale


@emulates("layer_norm_forward")
def _layer_norm_forward(L, x, w, b, y, mean, rstd, M, D, eps, has_w, has_b):
    M, D = _rows_launch(L, int(M), int(D))
    T = x.dtype.type
    for what, a in (("x", x), ("y", y)):
        _size(L, what, a, M * D)
    for what, a, used in (("w", w, has_w), ("b", b, has_b)):
        if used:
            _size(L, what, a, D)
    _size(L, "mean", mean, M)
    _size(L, "rstd", rstd, M)
    xr = _as_rows(x, M, D)
    mu = xr.sum(axis=1, keepdims=True) / T(D)
    c = xr - mu
    var = (c * c).sum(axis=1, keepdims=True) / T(D)
    r = T(1) / np.sqrt(var + eps)
    v = (xr - mu) * r
    if has_w:
        v = v * w[:D]
    if has_b:
        v = v + b[:D]
    _as_rows(y, M, D)[...] = v
    mean[:M] = mu[:, 0]
    rstd[:M] = r[:, 0]


@emulates("layer_norm_backward")
def _layer_norm_backward(L, gy, x, w, mean, rstd, gx, M, D, has_w):
    M, D = _rows_launch(L, int(M), int(D))
    _ln_input_grad(L, gy, x, w, mean, rstd, gx, M, D, has_w)


def _ln_input_grad(L, gy, x, w, mean, rstd, gx, M, D, has_w):
    """ln_input_grad for rows 0..M-1: g' = gy*w, xhat = (x - mu)*rstd, gx = ((g' - mean g') - xhat*mean(g'xhat))*rstd."""
    T = x.dtype.type
    for what, a in (("gy", gy), ("x", x), ("gx", gx)):
        _size(L, what, a, M * D)
    _size(L, "mean", mean, M)
    _size(L, "rstd", rstd, M)
    if has_w:
        _size(L, "w", w, D)
    g = _as_rows(gy, M, D) * w[:D] if has_w else _as_rows(gy, M, D)
    mu, r = mean[:M, None], rstd[:M, None]
    xhat = (_as_rows(x, M, D) - mu) * r
    mean_g = g.sum(axis=1, keepdims=True) / T(D)
    mean_gx = (g * xhat).sum(axis=1, keepdims=True) / T(D)
    _as_rows(gx, M, D)[...] = ((g - mean_g) - xhat * mean_gx) * r


@emulates("layer_norm_param_grads")
def _layer_norm_param_grads(L, gy, x, mean, rstd, part_w, part_b, M, D, rows_per_chunk):
    """Block (32, 8): threadIdx.x a column of the 32-column tile blockIdx.x, threadIdx.y striding
    (by 8: the shared sw[8][32]) down the rows of chunk blockIdx.y; one partial sum per (chunk, column)."""
    M, D, rpc = int(M), int(D), int(rows_per_chunk)
    L.require(L.block == (32, 8, 1), "the kernel's shared tiles are sw[8][32]: block must be (32, 8)")
    L.require(L.grid[0] * 32 >= D, f"covers {L.grid[0] * 32} columns of {D}")
    L.require(rpc >= 1 and L.grid[1] * rpc >= M, f"{L.grid[1]} chunks of {rpc} rows cover {L.grid[1] * rpc} of {M}")
    _ln_param_partials(L, gy, x, mean, rstd, part_w, part_b, M, D, rpc, L.grid[1])


def _ln_param_partials(L, gy, x, mean, rstd, part_w, part_b, M, D, rpc, chunks):
    """ln_param_partials for every (tile, chunk): the column sums of gy*xhat and gy over each chunk's rows."""
    for what, a in (("gy", gy), ("x", x)):
        _size(L, what, a, M * D)
    _size(L, "mean", mean, M)
    _size(L, "rstd", rstd, M)
    _size(L, "part_w", part_w, chunks * D)
    _size(L, "part_b", part_b, chunks * D)
    g = _as_rows(gy, M, D)
    xhat = (_as_rows(x, M, D) - mean[:M, None]) * rstd[:M, None]
    pw, pb = _as_rows(part_w, chunks, D), _as_rows(part_b, chunks, D)
    for c in range(chunks):
        lo, hi = c * rpc, min(M, (c + 1) * rpc)
        pw[c] = (g[lo:hi] * xhat[lo:hi]).sum(axis=0)
        pb[c] = g[lo:hi].sum(axis=0)


@emulates("layer_norm_backward_all")
def _layer_norm_backward_all(L, gy, x, w, mean, rstd, gx, part_w, part_b, M, D, has_w, row_blocks, rows_per_chunk):
    """Blocks [0, row_blocks): layer_norm_backward's rows (a warp each, eight a block); the rest
    layer_norm_param_grads' (tile, chunk) blocks, p = blockIdx.x - row_blocks → (p % tiles, p / tiles)."""
    M, D, rb, rpc = int(M), int(D), int(row_blocks), int(rows_per_chunk)
    L.require(L.block == (32, 8, 1), "a warp a row and the sw[8][32] tiles: block must be (32, 8)")
    L.require(L.grid[1] == 1 and L.grid[2] == 1, "the kernel uses only x of the grid")
    L.require(D <= 1024, f"rows of {D} > 1024 need a block each, not a warp")
    L.require(rb * 8 >= M, f"{rb} row blocks cover {rb * 8} rows of {M}")
    tiles = -(-D // 32)
    chunks, spare = divmod(L.grid[0] - rb, tiles)
    L.require(spare == 0 and chunks >= 1, f"{L.grid[0] - rb} parameter blocks are not a whole number of "
                                          f"chunks of {tiles} tiles")
    L.require(rpc >= 1 and chunks * rpc >= M, f"{chunks} chunks of {rpc} rows cover {chunks * rpc} of {M}")
    _ln_input_grad(L, gy, x, w, mean, rstd, gx, M, D, has_w)
    _ln_param_partials(L, gy, x, mean, rstd, part_w, part_b, M, D, rpc, chunks)


def _channels_launch(L: Launch, N: int, C: int, S: int):
    """The batch-norm kernels: one block per channel (blockIdx.x), blockDim.x threads striding over
    the channel's N*S elements and reducing with row_sum (whole warps, one shared buffer a block)."""
    bx, by, bz = L.block
    L.require(by == 1 and bz == 1 and L.grid[1] == 1 and L.grid[2] == 1,
              "the batch-norm kernels use x of the grid (a channel each) and x of the block")
    L.require(bx % 32 == 0, "blockDim.x must be a whole number of warps (row_sum shuffles over 32 lanes)")
    L.require(L.grid[0] == C, f"one block per channel: grid {L.grid[0]} for {C} channels")
    return N, C, S


def _channels(a, N, C, S):
    """The (N, C, S) array behind a kernel's pointer, as (C, N*S): each channel's elements."""
    return a[:N * C * S].reshape(N, C, S).transpose(1, 0, 2).reshape(C, N * S)


@emulates("batch_norm_forward")
def _batch_norm_forward(L, x, w, b, y, mean, rstd, var_out, running_mean, running_var, N, C, S, eps, has_w, has_b,
                        has_running, keep, m, m_unbiased):
    N, C, S = _channels_launch(L, int(N), int(C), int(S))
    T = x.dtype.type
    for what, a in (("x", x), ("y", y)):
        _size(L, what, a, N * C * S)
    for what, a, used in (("w", w, has_w), ("b", b, has_b), ("mean", mean, 1), ("rstd", rstd, 1),
                          ("var", var_out, 1), ("running_mean", running_mean, has_running),
                          ("running_var", running_var, has_running)):
        if used:
            _size(L, what, a, C)
    xc = _channels(x, N, C, S)                                   # (C, n)
    n = T(N * S)
    mu = xc.sum(axis=1) / n
    d = xc - mu[:, None]
    var = (d * d).sum(axis=1) / n
    r = T(1) / np.sqrt(var + eps)
    v = (xc - mu[:, None]) * r[:, None]
    if has_w:
        v = v * w[:C, None]
    if has_b:
        v = v + b[:C, None]
    y[:N * C * S] = v.reshape(C, N, S).transpose(1, 0, 2).reshape(-1)
    mean[:C], rstd[:C], var_out[:C] = mu, r, var
    if has_running:
        running_mean[:C] = running_mean[:C] * keep + m * mu
        running_var[:C] = running_var[:C] * keep + m_unbiased * var


@emulates("batch_norm_backward")
def _batch_norm_backward(L, gy, x, w, mean, rstd, gx, gw, gb, N, C, S, has_w, need_x):
    N, C, S = _channels_launch(L, int(N), int(C), int(S))
    T = x.dtype.type
    for what, a, used in (("gy", gy, 1), ("x", x, 1), ("gx", gx, need_x)):
        if used:
            _size(L, what, a, N * C * S)
    for what, a, used in (("w", w, has_w), ("mean", mean, 1), ("rstd", rstd, 1), ("gw", gw, 1), ("gb", gb, 1)):
        if used:
            _size(L, what, a, C)
    g = _channels(gy, N, C, S)
    xhat = (_channels(x, N, C, S) - mean[:C, None]) * rstd[:C, None]
    gp = g * w[:C, None] if has_w else g
    gw[:C] = (g * xhat).sum(axis=1)
    gb[:C] = g.sum(axis=1)
    if need_x:
        n = T(N * S)
        mean_g = gp.sum(axis=1, keepdims=True) / n
        mean_gx = (gp * xhat).sum(axis=1, keepdims=True) / n
        v = ((gp - mean_g) - xhat * mean_gx) * rstd[:C, None]
        gx[:N * C * S] = v.reshape(C, N, S).transpose(1, 0, 2).reshape(-1)


# =========================================================================== GELU and AdamW (ElementwiseKernels)
def _erf(x):
    import scipy.special
    return scipy.special.erf(x)


def _gelu_common(x, approximate):
    T = x.dtype.type
    if approximate == "none":
        return T(0.5) * (T(1) + _erf(x * T(1 / math.sqrt(2))))            # Φ(x)
    return np.tanh(T(math.sqrt(2 / math.pi)) * (x + ((T(0.044715) * x) * x) * x))


def _gelu(approximate, backward):
    def fn(ins, outs):
        x = ins["x"]
        T = x.dtype.type
        c = _gelu_common(x, approximate)
        if not backward:
            outs["y"][...] = x * c if approximate == "none" else (T(0.5) * x) * (T(1) + c)
        elif approximate == "none":
            outs["gx"][...] = ins["gy"] * (c + x * (T(1 / math.sqrt(2 * math.pi)) * np.exp((T(-0.5) * x) * x)))
        else:
            outs["gx"][...] = ins["gy"] * (T(0.5) * (T(1) + c) + ((T(0.5) * x) * (T(1) - c * c))
                                           * (T(math.sqrt(2 / math.pi)) * (T(1) + (T(3 * 0.044715) * x) * x)))
    return fn


for _a in ("none", "tanh"):
    emulates(f"minivit_gelu_{_a}", elementwise=True)(_gelu(_a, False))
    emulates(f"minivit_gelu_{_a}_backward", elementwise=True)(_gelu(_a, True))


def _adamw(amsgrad):
    def fn(ins, o):
        g = ins["grad"]
        o["p"][...] = o["p"] * ins["decay"]
        o["exp_avg"][...] = o["exp_avg"] * ins["beta1"] + ins["one_minus_beta1"] * g
        o["exp_avg_sq"][...] = o["exp_avg_sq"] * ins["beta2"] + ins["one_minus_beta2"] * (g * g)
        v = o["exp_avg_sq"]
        if amsgrad:
            m, e = o["max_exp_avg_sq"], o["exp_avg_sq"]
            o["max_exp_avg_sq"][...] = np.where((m >= e) | (m != m), m, e)
            v = o["max_exp_avg_sq"]
        denom = np.sqrt(v) / ins["sqrt_bias_correction2"] + ins["eps"]
        o["p"][...] = o["p"] - ins["step_size"] * (o["exp_avg"] / denom)
    return fn


@emulates("minivit_keep_mask", elementwise=True)
def _keep_mask(ins, outs):
    outs["mask"][...] = np.where(ins["u"] < ins["keep"], ins["scale"], outs["mask"].dtype.type(0))


@emulates("minivit_col2im", elementwise=True)
def _col2im(ins, outs):
    N, C, H, W, kh, kw, sh, sw, dh, dw, pt, pl, Ho, Wo = (int(ins[k]) for k in (
        "N", "C", "H", "W", "kh", "kw", "sh", "sw", "dh", "dw", "pad_top", "pad_left", "Ho", "Wo"))
    g = ins["gcols"].reshape(-1)[:C * kh * kw * N * Ho * Wo].reshape(C, kh, kw, N, Ho, Wo)
    out = outs["gx"]
    s = np.zeros((N, C, H, W), dtype=out.dtype)
    for a in range(kh):                                 # the C loops' order
        ty = np.arange(H) + pt - a * dh
        iy = np.nonzero((ty >= 0) & (ty % sh == 0) & (ty // sh < Ho))[0]
        for b in range(kw):
            tx = np.arange(W) + pl - b * dw
            ix = np.nonzero((tx >= 0) & (tx % sw == 0) & (tx // sw < Wo))[0]
            tap = g[:, a, b].transpose(1, 0, 2, 3)      # (N, C, Ho, Wo)
            s[:, :, iy[:, None], ix[None, :]] += tap[:, :, (ty[iy] // sh)[:, None], (tx[ix] // sw)[None, :]]
    out[...] = s.transpose(0, 2, 3, 1) if ins["channels_last"] else s


def _class_q(ins, y, C, T):
    """(Q (M, C) of the kept, in-range rows; keep; bad) as fused_cuda's _CLASS_Q and loop compute them."""
    keep = y != ins["ignore_index"]
    bad = keep & ((y < 0) | (y >= C))
    q = np.where(np.arange(C)[None, :] == y[:, None], ins["one_minus_eps"], T(0)) + ins["eps_over_c"]
    if ins["has_w"]:
        q = q * ins["w"].reshape(-1)[:C]
    return q.astype(T, copy=False), keep, bad


@emulates("minivit_class_nll", elementwise=True)
def _class_nll(ins, outs):
    T = ins["logp"].dtype.type
    C = int(ins["C"])
    y = ins["t"].astype(np.int64)
    M = y.shape[0]
    logp = ins["logp"].reshape(-1)[:M * C].reshape(M, C)
    q, keep, bad = _class_q(ins, y, C, T)
    s, loss = np.zeros(M, T), np.zeros(M, T)
    for c in range(C):                                  # the C loop's order
        s += q[:, c]
        loss += q[:, c] * logp[:, c]
    w_y = ins["w"].reshape(-1)[np.clip(y, 0, C - 1)] if ins["has_w"] else np.ones(M, T)
    outs["loss"][...] = np.where(keep, np.where(bad, T(np.nan), -loss), T(0))
    outs["weight"][...] = np.where(keep, np.where(bad, T(1), w_y), T(0))
    outs["qsum"][...] = np.where(keep, np.where(bad, T(np.nan), s), T(0))


@emulates("minivit_class_nll_backward", elementwise=True)
def _class_nll_backward(ins, outs):
    logp = ins["logp"]
    T = logp.dtype.type
    M, C = logp.shape
    y = ins["t"].reshape(-1)[:M].astype(np.int64)
    q, keep, bad = _class_q(ins, y, C, T)
    q = np.where(keep[:, None], q, T(0))
    q = np.where(bad[:, None], T(np.nan), q)
    gy = ins["gy"].reshape(-1)
    g = gy[:M] if ins["gy_per_row"] else np.full(M, gy[0], dtype=T)
    if ins["mean"]:
        g = g / ins["denom"].reshape(-1)[0]
    if ins["from_logits"]:
        outs["gx"][...] = (np.exp(logp) * ins["qsum"].reshape(-1)[:M, None] - q) * g[:, None]
    else:
        outs["gx"][...] = -q * g[:, None]


@emulates("minivit_chunk_sums", elementwise=True)
def _chunk_sums(ins, outs):
    d = outs["gw"].shape[0]
    for p, g in (("pw", "gw"), ("pb", "gb")):
        rows = ins[p].reshape(-1)[:int(ins["chunks"]) * d].reshape(-1, d)
        s = rows[0].copy()
        for r in rows[1:]:                              # chunk after chunk, as the C loop
            s += r
        outs[g][...] = s


emulates("minivit_adamw", elementwise=True)(_adamw(False))
emulates("minivit_adamw_amsgrad", elementwise=True)(_adamw(True))


# =========================================================================== depthwise conv
def _dw_launch(L: Launch, two_d: bool = False):
    bx, by, bz = L.block
    L.require(by == 1 and bz == 1 and L.grid[2] == 1 and (two_d or L.grid[1] == 1),
              "the depthwise kernels use x of the block and x of the grid (and y for the chunks)")


def _dw_map(a, cl, N, C, H, W):
    """The (N, C, H, W) map a flat array holds, NCHW or channels-last, as fused_cuda's map_at reads it."""
    a = a[:N * C * H * W]
    return a.reshape(N, H, W, C).transpose(0, 3, 1, 2) if cl else a.reshape(N, C, H, W)


def _dw_taps(n_out, n_in, pad, k, s, d):
    """For each tap a: (output positions whose tap a reads inside the input, the input rows read)."""
    for a in range(k):
        src = np.arange(n_out) * s - pad + a * d
        ok = (src >= 0) & (src < n_in)
        yield a, np.nonzero(ok)[0], src[ok]


def _dw_pairs(Ho, Wo, H, W, kh, kw, sh, sw, dh, dw, pt, pl):
    """(a, bb, output rows, output columns, input rows, input columns) of every tap, in the C
    loops' order (a, then bb), as index arrays ready for an open-mesh gather."""
    for a, oy, iy in _dw_taps(Ho, H, int(pt), kh, int(sh), int(dh)):
        for bb, ox, ix in _dw_taps(Wo, W, int(pl), kw, int(sw), int(dw)):
            yield a, bb, (oy[:, None], ox[None, :]), (iy[:, None], ix[None, :])


def _dw_check(L, sizes, **arrays):
    """The launch's shape, and each named array at least as large as the kernel reads it."""
    for what, a in arrays.items():
        _size(L, what, a, sizes[what])


@emulates("depthwise_forward")
def _depthwise_forward(L, x, w, b, y, N, C, H, W, Ho, Wo, kh, kw, sh, sw, dh, dw, pt, pl, x_cl, has_b):
    _dw_launch(L)
    N, C, H, W, Ho, Wo, kh, kw = (int(v) for v in (N, C, H, W, Ho, Wo, kh, kw))
    _dw_check(L, {"x": N * C * H * W, "y": N * Ho * Wo * C, "w": C * kh * kw, "b": C},
              x=x, y=y, w=w, **({"b": b} if has_b else {}))
    xm, wt = _dw_map(x, x_cl, N, C, H, W), w[:C * kh * kw].reshape(C, kh, kw)
    s = np.zeros((N, C, Ho, Wo), dtype=y.dtype)
    for a, bb, out, src in _dw_pairs(Ho, Wo, H, W, kh, kw, sh, sw, dh, dw, pt, pl):
        s[(slice(None), slice(None)) + out] += xm[(slice(None), slice(None)) + src] * wt[:, a, bb][None, :, None, None]
    if has_b:
        s = s + b[:C][None, :, None, None]
    y[:N * Ho * Wo * C] = s.transpose(0, 2, 3, 1).reshape(-1)


@emulates("depthwise_input_grad")
def _depthwise_input_grad(L, g, w, gx, N, C, H, W, Ho, Wo, kh, kw, sh, sw, dh, dw, pt, pl, g_cl, x_cl):
    _dw_launch(L)
    N, C, H, W, Ho, Wo, kh, kw = (int(v) for v in (N, C, H, W, Ho, Wo, kh, kw))
    _dw_check(L, {"g": N * Ho * Wo * C, "gx": N * C * H * W, "w": C * kh * kw}, g=g, gx=gx, w=w)
    gm, wt = _dw_map(g, g_cl, N, C, Ho, Wo), w[:C * kh * kw].reshape(C, kh, kw)
    s = np.zeros((N, C, H, W), dtype=gx.dtype)
    for a, bb, out, src in _dw_pairs(Ho, Wo, H, W, kh, kw, sh, sw, dh, dw, pt, pl):   # each tap adds onto
        s[(slice(None), slice(None)) + src] += gm[(slice(None), slice(None)) + out] * wt[:, a, bb][None, :, None, None]
    gx[:N * C * H * W] = (s.transpose(0, 2, 3, 1) if x_cl else s).reshape(-1)      # the pixel it read


@emulates("depthwise_param_grads")
def _depthwise_param_grads(L, g, x, part, N, C, H, W, Ho, Wo, kh, kw, sh, sw, dh, dw, pt, pl, g_cl, x_cl, chunk,
                           taps_out):
    _dw_launch(L, two_d=True)
    N, C, H, W, Ho, Wo, kh, kw, chunk, taps_out = (int(v) for v in (N, C, H, W, Ho, Wo, kh, kw, chunk, taps_out))
    K, n_pos, chunks = kh * kw, N * Ho * Wo, L.grid[1]
    L.require(taps_out in (K, K + 1), f"taps_out {taps_out}: the {K} taps, and the bias or not")
    L.require(chunk >= 1 and chunks * chunk >= n_pos, f"{chunks} chunks of {chunk} positions cover "
              f"{chunks * chunk} of {n_pos}")
    _dw_check(L, {"g": n_pos * C, "x": N * C * H * W, "part": chunks * taps_out * C}, g=g, x=x, part=part)
    gm, xm = _dw_map(g, g_cl, N, C, Ho, Wo), _dw_map(x, x_cl, N, C, H, W)
    prods = np.zeros((taps_out, N, Ho, Wo, C), dtype=part.dtype)            # each tap's g·x per position
    for a, bb, out, src in _dw_pairs(Ho, Wo, H, W, kh, kw, sh, sw, dh, dw, pt, pl):
        t = gm[(slice(None), slice(None)) + out] * xm[(slice(None), slice(None)) + src]   # (N, C, oy, ox)
        prods[a * kw + bb][(slice(None),) + out] = t.transpose(0, 2, 3, 1)
    if taps_out == K + 1:
        prods[K] = gm.transpose(0, 2, 3, 1)
    prods = prods.reshape(taps_out, n_pos, C)
    out = part[:chunks * taps_out * C].reshape(chunks, taps_out, C)
    for p in range(chunks):
        out[p] = prods[:, p * chunk:(p + 1) * chunk].sum(axis=1)
