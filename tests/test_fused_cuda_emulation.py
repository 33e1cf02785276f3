"""The row kernels of fused_cuda.py (softmax, log_softmax, layer norm), run on the CPU under a
thread-per-CUDA-thread emulation, against minivit's reference ops on NumPy.

``row_kernel_source(dtype)`` is compiled unchanged by g++ behind tests/cuda_emulation.hpp,
which gives each CUDA thread of a block its own std::thread and emulates __syncthreads,
__shfl_xor_sync, shared memory and threadIdx/blockIdx/blockDim/gridDim. The launches are
fused_cuda's own Python wrappers (softmax_forward, layer_norm_backward, ...), with their
grids and blocks from ``_row_launch``, their chunking of the parameter gradients and their
argument order; only the kernel object is swapped for the emulated one. Outputs are filled
with NaN before each launch, so an element a kernel forgets to write fails the comparison.

Row lengths from 1 to 9000 cover both block shapes of the launcher (a warp per row in
(32, 8) blocks up to 1024, a block of 256 or 1024 threads per row beyond) and, forced, the
other shape for each length (the kernels are written to be correct with either).

What this proves: the kernels' index arithmetic, reductions, shuffles and barriers compute
the right numbers, to float rounding, under one legal schedule of their threads; every output
element is written; no row's threads reach a barrier after some of them left. What it does
not: real GPU scheduling (warps here run in lockstep only at the shuffles), the GPU memory
model, speed, or NVRTC's code generation (tests/test_fused_cuda_compile.py compiles the same
source with NVRTC; tests/test_fused_cuda.py runs the kernels on a GPU).
"""
import ctypes
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest

import minivit.functional as F
from minivit import Tensor
from minivit.functional import fused_cuda

HERE = pathlib.Path(__file__).resolve().parent
DTYPES = [np.float32, np.float64]
ROW_LENGTHS = [1, 7, 32, 49, 64, 1000, 1024, 1025, 4097, 9000]
SHAPES = ["launcher", "other"]        # _row_launch's block shape for the row length, or the other one
CTYPES = {"long long": ctypes.c_longlong, "int": ctypes.c_int}
READ_AND_WRITTEN = {"running_mean", "running_var"}      # batch norm updates them in place


def _params(source):
    """{kernel name: [(C type, name), ...]} of every extern "C" kernel in the source."""
    kernels = {}
    for name, plist in re.findall(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', source):
        params = []
        for p in plist.split(","):
            *typ, pname = p.replace("__restrict__", "").split()
            params.append((" ".join(t for t in typ if t != "const").replace(" *", "*"), pname))
        kernels[name] = params
    return kernels


def _build(dtype, out_dir):
    """g++ the row kernels of ``dtype`` with the emulation header into a shared library."""
    source = fused_cuda.row_kernel_source(dtype)
    kernels = _params(source)
    wrappers = "".join(
        f'extern "C" void emu_{name}(unsigned emu_gx, unsigned emu_gy, unsigned emu_bx, unsigned emu_by, '
        f'{", ".join(f"{t} {n}" for t, n in params)}) {{\n'
        f'    emu::launch(emu_gx, emu_gy, emu_bx, emu_by, [=] {{ {name}({", ".join(n for _, n in params)}); }});\n}}\n'
        for name, params in kernels.items())
    cpp = out_dir / f"rows_{np.dtype(dtype).name}.cpp"
    cpp.write_text('#include "cuda_emulation.hpp"\n' + source + "\n" + wrappers)
    lib = out_dir / f"rows_{np.dtype(dtype).name}.so"
    # -ffp-contract=off: no a*b+c contraction, as the kernels' --fmad=false
    cmd = ["g++", "-std=c++17", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-pthread",
           f"-I{HERE}", str(cpp), "-o", str(lib)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"g++ failed on the {np.dtype(dtype).name} row kernels:\n{done.stderr[-4000:]}"
    return ctypes.CDLL(str(lib)), kernels


class EmulatedKernel:
    """Stands in for the cupy.RawKernel of one row kernel: ``k(grid, block, args)``."""

    def __init__(self, lib, name, params, dtype):
        self.name, self.params, self.dtype = name, params, np.dtype(dtype)
        self.lib = lib
        scalar = ctypes.c_float if self.dtype == np.float32 else ctypes.c_double
        self.fn = getattr(lib, f"emu_{name}")
        self.fn.argtypes = [ctypes.c_uint] * 4 + [
            ctypes.c_void_p if t.endswith("*") else scalar if t == "T" else CTYPES[t] for t, _ in params]
        self.fn.restype = None
        lib.emu_error.restype = ctypes.c_char_p
        lib.emu_reset.argtypes = [ctypes.c_double]
        self.launches = []
        self.timeout_s = 120.0          # a barrier not reached by every thread by then: a deadlock
        plist = re.search(rf'void\s+{name}\s*\(([^)]*)\)', fused_cuda.row_kernel_source(dtype)).group(1)
        self.outputs = {p.split()[-1] for p in plist.split(",") if "*" in p and "const" not in p}

    def __call__(self, grid, block, args):
        assert len(args) == len(self.params), (self.name, len(args), len(self.params))
        (gx, gy), (bx, by) = (tuple(grid) + (1,))[:2], (tuple(block) + (1,))[:2]
        values = []
        for (typ, pname), a in zip(self.params, args):
            if typ.endswith("*"):
                assert isinstance(a, np.ndarray) and a.dtype == self.dtype and a.flags.c_contiguous, \
                    f"{self.name}: {pname} must be a C-contiguous {self.dtype} array"
                if pname in self.outputs and pname not in READ_AND_WRITTEN:
                    a.fill(np.nan)                 # an element the kernel does not write stays NaN
                values.append(a.ctypes.data)
            else:
                values.append(float(a) if typ == "T" else int(a))
        self.lib.emu_reset(self.timeout_s)
        self.fn(gx, gy, bx, by, *values)
        self.launches.append(((gx, gy), (bx, by)))
        err = self.lib.emu_error().decode()
        assert not err, f"{self.name} {self.dtype} grid {grid} block {block}: {err}"


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """{dtype char: {kernel name: EmulatedKernel}}, built once per test module."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    out = tmp_path_factory.mktemp("cuda_emulation")
    kernels = {}
    for dtype in DTYPES:
        lib, params = _build(dtype, out)
        kernels[np.dtype(dtype).char] = {n: EmulatedKernel(lib, n, p, dtype) for n, p in params.items()}
    return kernels


def _host_chunk_sums(pw, pb, chunks, gw, gb):
    """The stand-in's emulation of the chunk-sums kernel, called on host arrays."""
    from minivit.testing import kernel_emulation
    kernel_emulation._chunk_sums({"pw": pw, "pb": pb, "chunks": chunks}, {"gw": gw, "gb": gb})


@pytest.fixture
def on_emulator(emulated, monkeypatch):
    """fused_cuda's wrappers launch the emulated kernels; ``shape`` picks the block shape."""
    monkeypatch.setattr(fused_cuda, "_row_kernel", lambda name, char: emulated[char][name])
    # layer norm's chunk sums are an ElementwiseKernel (the stand-in's emulation, tests/test_device_ops.py):
    # here, on host arrays, the same sums chunk after chunk
    monkeypatch.setattr(fused_cuda, "_chunk_sums_kernel", lambda: _host_chunk_sums)
    real = fused_cuda._row_launch

    def use(shape):
        def launch(m, d):
            grid, block = real(m, d)
            if shape == "other":
                if block[0] == 32:                                # a warp per row -> a block of 256 per row
                    return (m,), (256, 1)
                return ((m + 7) // 8,), (32, 8)                   # a block per row -> a warp per row
            return grid, block
        monkeypatch.setattr(fused_cuda, "_row_launch", launch)
    return use


def assert_close(actual, expected, dtype, what):
    """As tests/test_fused_cuda.py: a relative tolerance of float rounding, the absolute
    part relative to the largest value (row sums cancel)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == dtype, what
    tol = 2e-5 if dtype == np.float32 else 1e-12
    big = max(float(np.abs(expected).max()), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * big, err_msg=what)


def _rows(d, shape):
    """Rows per test: with a warp per row, two blocks' worth, spare warps in the last block;
    with a block per row (up to 1024 std::threads each), two rows."""
    warp_per_row = (d <= fused_cuda._LONG_ROW) == (shape == "launcher")
    return 11 if warp_per_row else 2


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("d", ROW_LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_softmax_kernels_on_the_emulator(on_emulator, emulated, dtype, d, shape):
    on_emulator(shape)
    kernels = [emulated[np.dtype(dtype).char][k] for k in ("softmax_forward", "softmax_backward")]
    for k in kernels:
        k.launches.clear()
    rng = np.random.default_rng(d)
    x = (rng.standard_normal((_rows(d, shape), d)) * 4).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    for log, op in ((False, F.softmax), (True, F.log_softmax)):
        t = Tensor(x.copy(), requires_grad=True)
        y_ref = op(t, dim=-1)
        y_ref.backward(g)
        y = fused_cuda.softmax_forward(x, log=log)
        assert_close(y, y_ref.data, dtype, f"{op.__name__} d={d} ({shape} block shape): output")
        gx = fused_cuda.softmax_backward(g, y, log=log)
        assert_close(gx, t.grad, dtype, f"{op.__name__} d={d} ({shape} block shape): gradient")
    block = (tuple(fused_cuda._row_launch(*x.shape)[1]) + (1,))[:2]
    assert [b for k in kernels for _, b in k.launches] == [block] * 4      # 2 forward, 2 backward launches
    assert (block[0] == 32) == ((d <= fused_cuda._LONG_ROW) == (shape == "launcher"))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("d", [7, 49, 1025])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_softmax_with_scale_and_bias_on_the_emulator(on_emulator, dtype, d, shape):
    """Attention's form: softmax(c·S + M) with M's rows repeating over the leading rows, and the
    backward's c·dS beside dS, against the reference passes."""
    on_emulator(shape)
    rng = np.random.default_rng(d + 2)
    rows = _rows(d, shape)
    bias_rows = 2 if rows % 2 == 0 else 1
    x = (rng.standard_normal((rows // bias_rows, bias_rows, d)) * 4).astype(dtype)
    bias = rng.standard_normal((bias_rows, d)).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    c = dtype(0.3)
    t = Tensor(x.copy(), requires_grad=True)
    y_ref = F.softmax(t * c + Tensor(bias), dim=-1)
    y_ref.backward(g)
    y = fused_cuda.softmax_forward(x, scale=c, bias=bias)
    assert_close(y, y_ref.data, dtype, f"softmax(c·x + bias) d={d} ({shape} block shape)")
    gsc, gs = fused_cuda.softmax_backward(g, y, scale=c, unscaled=True)
    assert_close(gsc, t.grad, dtype, f"c·dS d={d} ({shape})")
    assert_close(gs, t.grad / c, dtype, f"dS d={d} ({shape})")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("d", ROW_LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_layer_norm_kernels_on_the_emulator(on_emulator, dtype, d, shape):
    on_emulator(shape)
    rng = np.random.default_rng(d + 1)
    m, eps = _rows(d, shape), 1e-5
    x = (rng.standard_normal((m, d)) * 3 + 1).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    for affine in (True, False):
        w = (rng.standard_normal(d) + 1).astype(dtype) if affine else None
        b = rng.standard_normal(d).astype(dtype) if affine else None
        tx = Tensor(x.copy(), requires_grad=True)
        tw, tb = (Tensor(p.copy(), requires_grad=True) if p is not None else None for p in (w, b))
        y_ref = F.layer_norm(tx, (d,), tw, tb, eps)
        y_ref.backward(g)
        what = f"layer norm d={d} {'affine' if affine else 'plain'} ({shape} block shape)"
        y, mean, rstd = fused_cuda.layer_norm_forward(x, w, b, eps)
        assert_close(y, y_ref.data, dtype, f"{what}: output")
        assert_close(mean, x.mean(axis=1, dtype=np.float64).astype(dtype), dtype, f"{what}: mean")
        var = ((x.astype(np.float64) - x.mean(axis=1, keepdims=True, dtype=np.float64)) ** 2).mean(axis=1)
        assert_close(rstd, (1 / np.sqrt(var + eps)).astype(dtype), dtype, f"{what}: rstd")
        # The parameter gradients' launch does not depend on the row shape: once per length, and
        # not for 9000 (282 blocks of 256 threads, 5 s; 49, 1025 and 4097 end in partial tiles too).
        params = affine and shape == "launcher" and d < 8192
        gx, gw, gb = fused_cuda.layer_norm_backward(g, x, w, mean, rstd, need_params=params)
        assert_close(gx, tx.grad, dtype, f"{what}: gradient of x")
        if params:
            assert_close(gw, tw.grad, dtype, f"{what}: gradient of the weight")
            assert_close(gb, tb.grad, dtype, f"{what}: gradient of the bias")


@pytest.mark.parametrize("m, d", [(300, 49), (100, 64), (40, 1025)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_layer_norm_param_grads_over_several_chunks(on_emulator, emulated, dtype, m, d):
    """Enough rows for several row chunks (grid.y > 1) and a partial last column tile."""
    on_emulator("launcher")
    rng = np.random.default_rng(m)
    x = rng.standard_normal((m, d)).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    w, b = (rng.standard_normal(d) + 1).astype(dtype), rng.standard_normal(d).astype(dtype)
    tx, tw, tb = (Tensor(a.copy(), requires_grad=True) for a in (x, w, b))
    F.layer_norm(tx, (d,), tw, tb, 1e-5).backward(g)
    _, mean, rstd = fused_cuda.layer_norm_forward(x, w, b, 1e-5)
    kernel = emulated[np.dtype(dtype).char]["layer_norm_param_grads"]
    kernel.launches.clear()
    _, gw, gb = fused_cuda.layer_norm_backward(g, x, w, mean, rstd, need_x=False)
    (gx_blocks, chunks), _ = kernel.launches[-1]
    assert chunks > 1 and gx_blocks == -(-d // 32)
    assert_close(gw, tw.grad, dtype, f"layer norm param grads m={m} d={d}: weight")
    assert_close(gb, tb.grad, dtype, f"layer norm param grads m={m} d={d}: bias")
    # with ∂x, rows of at most 1024: one launch whose extra blocks do the same chunks
    both = emulated[np.dtype(dtype).char]["layer_norm_backward_all"]
    both.launches.clear()
    gx2, gw2, gb2 = fused_cuda.layer_norm_backward(g, x, w, mean, rstd)
    assert len(both.launches) == (d <= fused_cuda._LONG_ROW)
    if both.launches:
        assert both.launches[-1][0][0] == -(-m // 8) + chunks * -(-d // 32)
    assert_close(gx2, tx.grad, dtype, f"layer norm m={m} d={d}: gradient of x")
    np.testing.assert_array_equal(gw2, gw)
    np.testing.assert_array_equal(gb2, gb)


@pytest.mark.parametrize("shape", [(3, 2, 5), (5, 3), (4, 3, 8, 8), (2, 2, 190, 190)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_batch_norm_kernels_on_the_emulator(on_emulator, emulated, dtype, shape):
    """One block per channel: 256 threads, and 1024 for the last shape's 72,200 values a channel."""
    on_emulator("launcher")
    rng = np.random.default_rng(len(shape))
    C = shape[1]
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    for affine in (True, False):
        w = (rng.standard_normal(C) + 1).astype(dtype) if affine else None
        b = rng.standard_normal(C).astype(dtype) if affine else None
        stats = [rng.standard_normal(C).astype(dtype), (rng.random(C) + 0.5).astype(dtype)]
        ref_stats = [s.copy() for s in stats]
        tx = Tensor(x.copy(), requires_grad=True)
        tw, tb = (Tensor(p.copy(), requires_grad=True) if p is not None else None for p in (w, b))
        y_ref = F.batch_norm(tx, ref_stats[0], ref_stats[1], tw, tb, training=True, momentum=0.1)
        y_ref.backward(g)
        what = f"batch norm {shape} {'affine' if affine else 'plain'}"
        y, mean, rstd, var, updated = fused_cuda.batch_norm_forward(x, w, b, stats[0], stats[1], 1e-5, 0.1)
        assert updated
        assert_close(y, y_ref.data, dtype, f"{what}: output")
        for a, r, name in zip(stats, ref_stats, ("running mean", "running variance")):
            assert_close(a, r, dtype, f"{what}: {name}")
        gx, gw, gb = fused_cuda.batch_norm_backward(g, x, w, mean, rstd)
        assert_close(gx, tx.grad, dtype, f"{what}: gradient of x")
        if affine:
            assert_close(gw, tw.grad, dtype, f"{what}: gradient of the weight")
            assert_close(gb, tb.grad, dtype, f"{what}: gradient of the bias")
    block = emulated[np.dtype(dtype).char]["batch_norm_forward"].launches[-1][1]
    assert block == ((1024 if x.size // C > 65536 else 256), 1)


# --------------------------------------------------------------------------- the emulation can fail
BROKEN = {
    # the partial sums of the last warp are dropped: a wrong row sum whenever a block has > 1 warp
    "a reduction that skips a warp": ("lane < (int)(blockDim.x >> 5) ? buf[lane] : (T)0",
                                      "lane < (int)(blockDim.x >> 5) - 1 ? buf[lane] : (T)0"),
    # the last element of each row is never written
    "a loop that stops one short": ("for (int j = threadIdx.x; j < D; j += blockDim.x) yr[j] = exp(SCORE(j) - m) / s;",
                                    "for (int j = threadIdx.x; j < D - 1; j += blockDim.x) yr[j] = exp(SCORE(j) - m) / s;"),
    # one thread leaves its row before the others reach a barrier
    "a thread that returns early": ("    const T* xr = x + row * D;\n    T* yr = y + row * D;\n    T m = NEG_INF;",
                                    "    if (threadIdx.x == 5) return;\n    const T* xr = x + row * D;\n"
                                    "    T* yr = y + row * D;\n    T m = NEG_INF;"),
    # lane 0 shuffles alone while its warp waits at __syncthreads: a deadlock on a GPU
    "a shuffle in divergent code": ("    if (lane == 0) buf[warp] = v;\n    __syncthreads();\n    return warp_max(",
                                    "    if (lane == 0) buf[warp] = warp_max(v);\n    __syncthreads();\n    return warp_max("),
}


EXPECTED = {"a reduction that skips a warp": "Mismatched elements", "a loop that stops one short": "nan",
            "a thread that returns early": "had returned",
            "a shuffle in divergent code": "deadlock"}


@pytest.mark.parametrize("bug", sorted(BROKEN))
def test_a_broken_kernel_fails_on_the_emulator(bug, tmp_path, monkeypatch):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    old, new = BROKEN[bug]
    real_source = fused_cuda.row_kernel_source
    assert old in real_source(np.float32), f"the kernel source changed: update BROKEN[{bug!r}]"
    monkeypatch.setattr(fused_cuda, "row_kernel_source", lambda dtype: real_source(dtype).replace(old, new))
    lib, params = _build(np.float32, tmp_path)
    kernel = EmulatedKernel(lib, "softmax_forward", params["softmax_forward"], np.float32)
    monkeypatch.setattr(fused_cuda, "_row_kernel", lambda name, char: kernel)
    kernel.timeout_s = 1.0
    x = np.random.default_rng(0).standard_normal((2, 1025)).astype(np.float32)
    with pytest.raises(AssertionError, match=EXPECTED[bug]):
        y = fused_cuda.softmax_forward(x)
        assert_close(y, F.softmax(Tensor(x), dim=-1).data, np.float32, bug)


DEPTHWISE = [   # (N, C, H, W), kernel, stride, padding (top, bottom, left, right), dilation
    ((2, 3, 6, 5), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),         # PVT v2's Mix-FFN conv
    ((2, 4, 7, 8), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),         # CvT's strided projection
    ((1, 2, 8, 9), (3, 2), (1, 2), (2, 2, 0, 1), (2, 1)),         # uneven pads, dilation, strides
    ((2, 5, 4, 4), (3, 3), (1, 1), (3, 3, 3, 3), (1, 1)),         # padding larger than k − 1
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", DEPTHWISE, ids=range(len(DEPTHWISE)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_depthwise_conv_kernels_on_the_emulator(on_emulator, emulated, dtype, case, channels_last, bias):
    """The depthwise kernels' CUDA C, through fused_cuda's wrappers, against the CPU conv: output,
    ∂x (in the input's layout), ∂w and ∂b; every output element written (NaN-filled first)."""
    on_emulator("launcher")
    shape, k, stride, pads, dilation = case
    N, C, H, W = shape
    rng = np.random.default_rng(C)
    x = rng.standard_normal(shape).astype(dtype)
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    w = rng.standard_normal((C, 1) + k).astype(dtype)
    b = rng.standard_normal(C).astype(dtype) if bias else None
    xt, wt = Tensor(x.copy(), requires_grad=True), Tensor(w, requires_grad=True)
    bt = Tensor(b, requires_grad=True) if bias else None
    y_ref = F.conv2d(F.pad(xt, (pads[2], pads[3], pads[0], pads[1])), wt, bt,        # uneven pads: F.pad first
                     stride=stride, dilation=dilation, groups=C)
    g = rng.standard_normal(y_ref.shape).astype(dtype)
    y_ref.backward(g)
    y, xm, x_cl = fused_cuda.depthwise_conv_forward(x, w, b, stride, dilation, pads)
    assert x_cl == int(channels_last) and y.shape == y_ref.shape == (N, C) + y.shape[2:]
    assert_close(np.asarray(y), y_ref.data, dtype, f"depthwise {case}: output")
    gx, gw, gb = fused_cuda.depthwise_conv_backward(g, xm, x_cl, x.shape, w, stride, dilation, pads, True, True, bias)
    assert gx.transpose(0, 2, 3, 1).flags.c_contiguous == channels_last    # ∂x in the input's layout
    assert_close(np.asarray(gx), xt.grad, dtype, f"depthwise {case}: ∂x")
    assert_close(gw, wt.grad, dtype, f"depthwise {case}: ∂w")
    if bias:
        assert_close(gb, bt.grad, dtype, f"depthwise {case}: ∂b")
