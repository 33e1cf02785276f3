"""The compiled CPU kernels (minivit.functional.fused_cpu) against the NumPy code they sit beside:
exact GELU, layer norm and the depthwise conv, float32, each with the kernels switched on and off
(``fused_cpu.use_fused``), through the ops' own forward and backward. Also: the build is found
and used where a C compiler exists, and where none does (or it fails) the ops run their NumPy code
and ``status()`` says why."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.special as sp

import minivit.functional as F
from minivit import Tensor, backend, manual_seed
from minivit.functional import fused_cpu
from minivit.functional.activation import _gelu_float32

needs_kernels = pytest.mark.skipif(not fused_cpu.available(), reason=f"compiled CPU kernels {fused_cpu.status()}")


def _run(fn, arrays, g, *, fused, frozen=()):
    """(output, gradients, the output's op) of fn on fresh float32 leaves, the kernels switched on
    or off; the leaves at the indices in ``frozen`` need no gradient."""
    ts = [Tensor(np.asarray(a, dtype=np.float32), requires_grad=i not in frozen) for i, a in enumerate(arrays)]
    with fused_cpu.use_fused(fused):
        y = fn(*ts)
        op = y._ctx                                          # (backward lets the graph go)
        y.backward(np.asarray(g, dtype=np.float32))
    return y.data, [t.grad for t in ts], op


def test_the_kernels_build_where_there_is_a_c_compiler():
    if shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler on this machine")
    assert fused_cpu.available(), fused_cpu.status()
    assert fused_cpu.status().startswith("on (")


# =========================================================================== GELU
GELU_X = np.concatenate([np.linspace(-12, 12, 48001), np.random.default_rng(0).standard_normal(70000) * 3,
                         [0.0, -0.0, 1e-30, -1e-30, 6.0, -6.0, 30.0, -30.0]]).astype(np.float32)


@needs_kernels
def test_gelu_kernel_matches_the_numpy_fast_path():
    y, d = fused_cpu.gelu_forward(GELU_X)
    y_np, d_np = _gelu_float32(GELU_X)
    ulp = np.float32(2 ** -23)
    assert np.all(np.abs(y - y_np) <= 4 * ulp * np.maximum(np.abs(GELU_X), 1e-3))
    np.testing.assert_allclose(d, d_np, rtol=0, atol=4 * ulp)
    assert fused_cpu.gelu_forward(GELU_X, with_grad=False)[1] is None
    np.testing.assert_array_equal(fused_cpu.gelu_forward(GELU_X, with_grad=False)[0], y)


@needs_kernels
def test_gelu_kernel_is_as_accurate_as_the_numpy_code():
    """Against float64 truth (SciPy's Φ): no worse than 2× the NumPy path's largest error, and the
    far negative tail keeps its relative precision down to where e^(−x²/2) leaves float32's range."""
    x64 = GELU_X.astype(np.float64)
    truth = x64 * sp.ndtr(x64)
    y, d = fused_cpu.gelu_forward(GELU_X)
    y_np, _ = _gelu_float32(GELU_X)
    assert np.abs(y - truth).max() <= 2 * np.abs(y_np - truth).max() + 1e-12
    np.testing.assert_allclose(d, sp.ndtr(x64) + x64 * np.exp(-x64 ** 2 / 2) / np.sqrt(2 * np.pi), atol=3e-7)
    tail = (GELU_X < -4) & (GELU_X > -12)
    np.testing.assert_allclose(y[tail], truth[tail], rtol=3e-5)


@needs_kernels
def test_gelu_kernel_special_values_are_the_numpy_paths():
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, -30.0, 30.0, -1e-40], dtype=np.float32)
    with np.errstate(invalid="ignore"):
        y_np, d_np = _gelu_float32(x)
    y, d = fused_cpu.gelu_forward(x)
    np.testing.assert_array_equal(y, y_np)                   # inf, nan (−inf·0), nan, 0, −0, −0, 30, tiny
    np.testing.assert_array_equal(d, d_np)


@needs_kernels
def test_gelu_op_takes_the_kernel_and_its_gradient_matches():
    x = np.random.default_rng(1).standard_normal((4, 33, 70)) * 2
    g = np.random.default_rng(2).standard_normal(x.shape)
    (y_on, (gx_on,), op), (y_off, (gx_off,), _) = (_run(F.gelu, [x], g, fused=f) for f in (True, False))
    assert op.dydx is not None
    np.testing.assert_allclose(y_on, y_off, rtol=0, atol=4e-7 * 8)
    np.testing.assert_allclose(gx_on, gx_off, rtol=1e-6, atol=1e-6)
    with pytest.raises(AssertionError):                      # the comparison can fail: a wrong kernel shows
        np.testing.assert_allclose(gx_on, gx_off * 1.001, rtol=1e-6, atol=1e-6)


@needs_kernels
def test_gelu_kernel_takes_any_dense_layout_and_keeps_it():
    """An (N, C, H, W) view of channels-last memory (a conv's output on the CPU) goes through the kernel
    as it lies, and y and dy/dx come out in that layout; a strided (not dense) view runs the NumPy code."""
    x = np.ascontiguousarray(np.random.default_rng(4).standard_normal((2, 5, 6, 3)).astype(np.float32) * 3)
    view = x.transpose(0, 3, 1, 2)                                           # (2, 3, 5, 6), channels-last
    assert fused_cpu.applies(view, any_layout=True) and not fused_cpu.applies(view)
    y, d = fused_cpu.gelu_forward(view)
    assert y.strides == view.strides and d.strides == view.strides
    y_np, d_np = _gelu_float32(np.ascontiguousarray(view))
    np.testing.assert_allclose(y, y_np, rtol=0, atol=4 * 2 ** -23 * 9)
    np.testing.assert_allclose(d, d_np, rtol=0, atol=4 * 2 ** -23)
    assert not fused_cpu.applies(x[:, ::2], any_layout=True)                 # every other row: not dense
    g = np.random.default_rng(5).standard_normal(view.shape)
    (y_on, (gx_on,), _), (y_off, (gx_off,), _) = (_run(F.gelu, [view], g, fused=f) for f in (True, False))
    np.testing.assert_allclose(y_on, y_off, rtol=0, atol=4e-7 * 9)
    np.testing.assert_allclose(gx_on, gx_off, rtol=1e-6, atol=1e-6)


# =========================================================================== layer norm
@needs_kernels
@pytest.mark.parametrize("rows,d", [(1, 1), (5, 7), (40, 8), (300, 33), (2000, 64), (17, 1000)])
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
def test_layer_norm_kernels_match_the_numpy_code(rows, d, affine):
    rng = np.random.default_rng(rows + d)
    x = rng.standard_normal((rows, d)) * 3 + 1.5
    w = rng.standard_normal(d) if affine in ("both", "weight") else None
    b = rng.standard_normal(d) if affine in ("both", "bias") else None
    g = rng.standard_normal((rows, d))
    arrays = [x] + [a for a in (w, b) if a is not None]

    def fn(x, *p):
        it = iter(p)
        return F.layer_norm(x, (d,), next(it) if w is not None else None, next(it) if b is not None else None, eps=1e-5)
    y_on, g_on, op_on = _run(fn, arrays, g, fused=True)
    y_off, g_off, op_off = _run(fn, arrays, g, fused=False)
    assert op_on.fused_cpu and not op_off.fused_cpu
    np.testing.assert_allclose(y_on, y_off, rtol=1e-5, atol=2e-5)
    for a, r, name in zip(g_on, g_off, ["x", "first param", "second param"]):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4 * max(1.0, np.sqrt(rows)), err_msg=name)


@needs_kernels
def test_layer_norm_kernel_of_a_constant_row_and_frozen_params():
    """A constant row normalises to 0 (finite, 1/σ = 1/√ε); a frozen weight gets no gradient."""
    x = np.full((3, 16), 2.5)
    w, b = np.linspace(0.5, 2, 16), np.zeros(16)
    g = np.random.default_rng(3).standard_normal((3, 16))
    fn = lambda x, w, b: F.layer_norm(x, (16,), w, b)          # noqa: E731
    (y, grads, _), (y_ref, grads_ref, _) = (_run(fn, [x, w, b], g, fused=f, frozen=(1,)) for f in (True, False))
    assert np.all(np.isfinite(y)) and np.all(y == 0)
    assert grads[1] is None and grads_ref[1] is None
    np.testing.assert_allclose(grads[0], grads_ref[0], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(grads[2], grads_ref[2], rtol=1e-6)


# =========================================================================== depthwise conv
DW_CASES = [   # (N, C, H, W), kernel, stride, padding, dilation
    ((2, 32, 8, 8), (3, 3), 1, 1, 1),            # PVT v2's Mix-FFN conv
    ((3, 12, 9, 7), (3, 3), 2, 1, 1),            # CvT's strided k/v projection
    ((2, 5, 8, 9), (3, 2), 1, "same", 2),        # even kernel, dilated, uneven pads
    ((1, 6, 5, 5), (5, 5), 1, 0, 1),             # no padding
    ((2, 3, 6, 6), (3, 3), (1, 2), (2, 0), (1, 2)),
    ((2, 4, 4, 4), (3, 3), 1, 3, 1),             # padding past k − 1: outputs that read only padding
]


@needs_kernels
@pytest.mark.parametrize("case", DW_CASES, ids=range(len(DW_CASES)))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tokens", [True, False], ids=["channels-last", "nchw"])
def test_depthwise_kernels_match_the_numpy_code(case, bias, tokens):
    shape, k, stride, padding, dilation = case
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape)
    if tokens:                                   # an NCHW view of channels-last memory, as tokens give
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    w = rng.standard_normal((shape[1], 1) + k)
    arrays = [x, w] + ([rng.standard_normal(shape[1])] if bias else [])

    def conv(x, w, b=None):
        return F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=shape[1])
    y0 = conv(*[Tensor(np.asarray(a, dtype=np.float32)) for a in arrays])
    g = rng.standard_normal(y0.shape)
    y_on, g_on, op_on = _run(conv, arrays, g, fused=True)
    y_off, g_off, op_off = _run(conv, arrays, g, fused=False)
    assert op_on.depthwise == "cpu" and op_off.depthwise is True
    np.testing.assert_allclose(y_on, y_off, rtol=1e-5, atol=1e-5)
    for a, r, name in zip(g_on, g_off, ["x", "weight", "bias"]):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-4, err_msg=name)


@needs_kernels
def test_depthwise_kernel_with_a_frozen_weight_keeps_no_input():
    rng = np.random.default_rng(5)
    x = Tensor(rng.standard_normal((2, 4, 6, 6)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 1, 3, 3)).astype(np.float32))          # frozen
    y = F.conv2d(x, w, padding=1, groups=4)
    assert y._ctx.depthwise == "cpu" and y._ctx.dw_saved[0] is None          # x only for ∂W
    y.backward(np.ones(y.shape, dtype=np.float32))
    assert x.grad.shape == x.shape and x.grad.dtype == np.float32 and w.grad is None


# =========================================================================== max pooling
POOL_CASES = [   # (N, C, H, W), max_pool2d's arguments
    ((2, 5, 9, 8), dict(kernel_size=3, stride=2, padding=1)),             # MViTv2's pooled shortcut
    ((2, 4, 7, 7), dict(kernel_size=2)),                                   # windows that tile
    ((1, 3, 10, 9), dict(kernel_size=3, stride=1, padding=1, dilation=2)),
    ((2, 3, 7, 8), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
]


@needs_kernels
@pytest.mark.parametrize("case", POOL_CASES, ids=range(len(POOL_CASES)))
@pytest.mark.parametrize("tokens", [True, False], ids=["channels-last", "nchw"])
def test_max_pool_kernels_match_the_numpy_code(case, tokens):
    """The same maxima and winners (ties, −inf and NaN included), bit for bit; gradients equal up to
    the order in which overlapping windows add into one input."""
    shape, kw = case
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 0, 0, :3] = x[0, 0, 0, 0]                                          # a tie: the first one wins
    x[0, 1, :2, :2] = -np.inf
    x[-1, -1, 1, 1] = np.nan
    if tokens:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)

    def pool(t):
        return F.max_pool2d(t, **kw)
    y0 = pool(Tensor(x))
    g = rng.standard_normal(y0.shape)
    with np.errstate(invalid="ignore"):
        (y_on, (gx_on,), op_on), (y_off, (gx_off,), op_off) = (_run(pool, [x], g, fused=f) for f in (True, False))
    assert op_on.compiled and not op_off.compiled
    np.testing.assert_array_equal(y_on, y_off)
    np.testing.assert_array_equal(op_on.arg, op_off.arg)
    assert (y_on.transpose(0, 2, 3, 1) if tokens else y_on).flags.c_contiguous     # in x's layout
    np.testing.assert_allclose(gx_on, gx_off, rtol=1e-6, atol=1e-6)
    with fused_cpu.use_fused(True):
        _, idx_on = F.max_pool2d(Tensor(x), return_indices=True, **kw)
    with fused_cpu.use_fused(False):
        _, idx_off = F.max_pool2d(Tensor(x), return_indices=True, **kw)
    np.testing.assert_array_equal(idx_on.data, idx_off.data)


@needs_kernels
def test_max_pool_kernel_is_not_taken_where_the_batch_is_not_outermost():
    x = np.random.default_rng(8).standard_normal((4, 3, 6, 6)).astype(np.float32).transpose(1, 0, 2, 3)
    y = F.max_pool2d(Tensor(np.ascontiguousarray(x).transpose(1, 0, 2, 3), requires_grad=True), kernel_size=2)
    assert y._ctx.compiled is False


@needs_kernels
def test_results_do_not_depend_on_the_thread_count():
    """Elementwise and per-row results are the same bits with 1 and 2 threads."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((64, 64, 48)).astype(np.float32)
    w, b = rng.standard_normal(48).astype(np.float32), rng.standard_normal(48).astype(np.float32)
    taps = rng.standard_normal((3, 3, 48)).astype(np.float32)
    x_cl = x.reshape(64, 8, 8, 48)
    out = []
    for n in (1, 2):
        before = backend.get_num_threads()
        backend.set_num_threads(n)
        try:
            out.append((fused_cpu.gelu_forward(x), fused_cpu.layer_norm_forward(x.reshape(-1, 48), w, b, 1e-5),
                        fused_cpu.depthwise_conv_forward(x_cl, taps, b, (8, 8), (1, 1), (1, 1), (1, 1, 1, 1))))
        finally:
            backend.set_num_threads(before)
    (g1, l1, c1), (g2, l2, c2) = out
    for a, b_ in zip(g1 + l1 + (c1,), g2 + l2 + (c2,)):
        np.testing.assert_array_equal(a, b_)


@needs_kernels
def test_a_pvt_v2_training_step_is_the_same_with_and_without_the_kernels():
    """GELU, layer norm and the depthwise conv all on the kernels: loss and every gradient of a
    small PVT v2 agree with the NumPy code's to float32 rounding."""
    import minivit.models as models
    results = []
    for fused in (True, False):
        manual_seed(0)
        model = models.create_model("pvt_v2_tiny", num_classes=10, embed_dims=(16, 32), depths=(1, 1),
                                    num_heads=(1, 2), mlp_ratios=(4, 4), sr_ratios=(2, 1))
        x = Tensor(np.random.default_rng(7).standard_normal((4, 3, 32, 32)).astype(np.float32))
        with fused_cpu.use_fused(fused):
            loss = F.cross_entropy(model(x), Tensor(np.arange(4) % 10))
            loss.backward()
        results.append((float(loss.data), {n: p.grad for n, p in model.named_parameters()}))
    (l_on, g_on), (l_off, g_off) = results
    assert abs(l_on - l_off) < 1e-5
    for name in g_off:
        scale = float(np.abs(g_off[name]).max()) + 1e-6
        np.testing.assert_allclose(g_on[name], g_off[name], rtol=0, atol=1e-4 * scale, err_msg=name)


# =========================================================================== no compiler
def _status_in_subprocess(tmp_path, env):
    code = ("import numpy as np, minivit.functional as F; from minivit import Tensor; "
            "from minivit.functional import fused_cpu; "
            "y = F.gelu(Tensor(np.linspace(-3, 3, 7, dtype=np.float32))); "
            "print(fused_cpu.status()); print(float(y.data[-1]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MINIVIT_CACHE": str(tmp_path), **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_without_a_compiler_the_ops_run_their_numpy_code_and_say_so(tmp_path):
    status, last = _status_in_subprocess(tmp_path, {"CC": str(tmp_path / "no-such-cc")})
    assert status.startswith("off: no C compiler") and abs(float(last) - 3 * sp.ndtr(3)) < 1e-5
    assert not list(tmp_path.glob("*.so"))


def test_a_failing_build_and_the_switch(tmp_path):
    if shutil.which("false") is None:
        pytest.skip("no `false` command")
    status, _ = _status_in_subprocess(tmp_path, {"CC": "false"})
    assert status.startswith("off: false failed")
    status, _ = _status_in_subprocess(tmp_path, {"MINIVIT_FUSED_CPU": "0"})
    assert status == "switched off"
