"""The fused CUDA kernels (minivit.functional.fused_cuda) against the reference code they stand in
for. Every GPU check runs an op twice on the same GPU arrays, once with the kernels and once with
them switched off (``fused_cuda.use_fused(False)``: the readable reference code, on CuPy), and
the two must agree to rounding: values and every gradient, float32 and float64, row lengths from
1 to 9000 (a warp per row up to 1024, a block of 256 or 1024 threads beyond), with batch dims.

These need CuPy: a GPU, or else the strict CuPy stand-in (tests/conftest.py), where each kernel
call is checked against its C signature and launch geometry and computed by a NumPy emulation
written from its CUDA C (minivit/testing/kernel_emulation.py); they skip without cupy-cuda12x.
The checks at the end (switches, CPU arrays never taking a kernel) run everywhere.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minivit.functional as F
from minivit import Tensor, backend, optim
from minivit.functional import fused_cuda
from minivit.functional.activation import GELU
from minivit.testing import strict_cupy

DTYPES = [np.float32, np.float64]
ROW_LENGTHS = [1, 7, 32, 49, 64, 1000, 1024, 1025, 4097, 9000]   # 49: Swin's 7×7 windows
SHAPES = [(1,), (7,), (3, 32), (37, 49), (2, 3, 64), (5, 1000), (9, 1024), (3, 1025), (2, 4097),
          (2, 9000), (17, 1), (2, 3, 49, 49)]


@pytest.fixture(scope="module")
def cp():
    if not backend.cupy_available():
        pytest.skip(strict_cupy.available() or "CuPy with a GPU is not available")
    return backend.xp_for("cuda")


def _tol(dtype):
    return 2e-5 if dtype == np.float32 else 1e-12


def assert_close(actual, expected, dtype, what="", scale=1.0):
    """Equal NaNs and infinities; finite values within a relative tolerance of float rounding,
    the absolute part relative to the largest finite value (sums cancel)."""
    a, b = backend.to_numpy(actual), backend.to_numpy(expected)
    assert a.shape == b.shape and a.dtype == b.dtype == dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    finite = np.isfinite(b)
    big = float(np.abs(b[finite]).max()) if finite.any() else 1.0
    tol = _tol(dtype) * scale
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(big, 1.0), err_msg=what)


def _run(cp, fn, arrays, g, dtype, fused, requires_grad=True):
    """fn's output and its inputs' gradients (host arrays), the kernels on or off."""
    ts = [Tensor(cp.asarray(np.asarray(a, dtype=dtype)), requires_grad=requires_grad) for a in arrays]
    with fused_cuda.use_fused(fused):
        y = fn(*ts)
        if requires_grad:
            y.backward(cp.asarray(np.asarray(g, dtype=dtype)))
    return backend.to_numpy(y.data), [None if t.grad is None else backend.to_numpy(t.grad) for t in ts]


def _compare(cp, fn, arrays, dtype, what, scale=1.0, seed=0, param_scale=None):
    """fn on the GPU with the kernels and without: outputs and gradients agree. The gradients
    of inputs after the first (parameters) get ``param_scale`` (sums over many rows)."""
    with np.errstate(all="ignore"), fused_cuda.use_fused(False):
        y_shape = fn(*[Tensor(np.asarray(a, dtype=dtype)) for a in arrays]).shape   # on the CPU: just the shape
    g = np.random.default_rng(seed).standard_normal(y_shape)
    y_fused, g_fused = _run(cp, fn, arrays, g, dtype, True)
    y_ref, g_ref = _run(cp, fn, arrays, g, dtype, False)
    assert_close(y_fused, y_ref, dtype, f"{what}: output", scale)
    for i, (a, b) in enumerate(zip(g_fused, g_ref)):
        s = scale if i == 0 or param_scale is None else param_scale
        assert_close(a, b, dtype, f"{what}: gradient of input {i}", s)


def _spy(monkeypatch, name):
    """Count the calls of fused_cuda.<name> (the Function classes look it up at call time)."""
    calls = []
    real = getattr(fused_cuda, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(fused_cuda, name, spy)
    return calls


# =========================================================================== softmax / log_softmax
SOFTMAXES = {"softmax": F.softmax, "log_softmax": F.log_softmax}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", sorted(SOFTMAXES))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_softmax_kernels_match_the_reference(cp, monkeypatch, op, dtype, shape):
    x = np.random.default_rng(1).standard_normal(shape) * 4
    fwd, bwd = _spy(monkeypatch, "softmax_forward"), _spy(monkeypatch, "softmax_backward")
    _compare(cp, lambda t: SOFTMAXES[op](t, dim=-1), [x], dtype, f"{op} {shape}")
    assert len(fwd) == 1 and len(bwd) == 1                      # the fused run took the kernels, once each


@given(batch=st.lists(st.integers(1, 5), max_size=3), d=st.sampled_from(ROW_LENGTHS),
       dtype=st.sampled_from(DTYPES), op=st.sampled_from(sorted(SOFTMAXES)), seed=st.integers(0, 99))
def test_softmax_kernels_match_the_reference_on_any_shape(cp, batch, d, dtype, op, seed):
    x = np.random.default_rng(seed).standard_normal(tuple(batch) + (d,)) * 5
    _compare(cp, lambda t: SOFTMAXES[op](t, dim=-1), [x], dtype, f"{op} {x.shape}", seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", sorted(SOFTMAXES))
@pytest.mark.parametrize("d", [5, 49, 2000])
def test_softmax_kernels_with_masks_and_large_values(cp, op, dtype, d):
    """−inf entries (masked keys) give exact zeros (−inf for log_softmax); a fully masked row is
    NaN in both; logits far beyond exp's range (1e4, 80 > log(float32 max)) stay finite because
    the row max is subtracted; a NaN spoils its row only."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, d)) * 3
    x[0, : d // 2] = -np.inf
    x[1, :] = -np.inf
    x[2, 1] = 1e4
    x[3, :] = 80.0
    x[4, :] += 1e3
    x[5, 0] = np.nan
    x[6, :] = -100.0                                # Swin's shifted-window mask value
    x[6, -1] = 0.0
    with np.errstate(all="ignore"):
        _compare(cp, lambda t: SOFTMAXES[op](t, dim=-1), [x], dtype, f"{op} special values")
        y, _ = _run(cp, lambda t: SOFTMAXES[op](t, dim=-1), [x], np.ones(x.shape), dtype, True)
    prob = np.exp(y) if op == "log_softmax" else y
    assert (prob[0, : d // 2] == 0).all() and np.isnan(y[1]).all() and np.isnan(y[5]).all()
    np.testing.assert_allclose(prob[[0, 2, 3, 4, 6, 7]].sum(axis=1), 1, rtol=_tol(dtype) * 10)
    assert prob[2, 1] == 1 and np.allclose(prob[3], 1 / d)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_kernels_on_non_contiguous_input(cp, dtype):
    x = np.random.default_rng(3).standard_normal((6, 5, 40))
    fn = lambda t: F.softmax(t.permute(2, 1, 0), dim=-1)     # noqa: E731  (a strided view)
    _compare(cp, fn, [x], dtype, "softmax of a permuted view")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_over_another_dim_runs_the_reference(cp, monkeypatch, dtype):
    calls = _spy(monkeypatch, "softmax_forward")
    x = np.random.default_rng(4).standard_normal((4, 6, 5))
    _compare(cp, lambda t: F.softmax(t, dim=1), [x], dtype, "softmax dim=1")
    assert calls == []


def test_attention_softmax_with_bias_and_mask_matches_the_reference(cp):
    """As Swin's window attention calls it: logits + relative position bias + shift mask."""
    rng = np.random.default_rng(5)
    logits, bias = rng.standard_normal((4, 3, 49, 49)), rng.standard_normal((3, 49, 49))
    mask = np.where(rng.random((4, 1, 49, 49)) < 0.3, -100.0, 0.0)

    def attn(q, b, m):
        return F.softmax(q + b + m, dim=-1)
    for dtype in DTYPES:
        _compare(cp, attn, [logits, bias, mask], dtype, "attention softmax")


# =========================================================================== layer norm
AFFINE = ["weight_and_bias", "weight", "bias", "none"]


def _layer_norm(shape, affine, n_dims=1):
    ns = shape[len(shape) - n_dims:]

    def fn(x, *params):
        it = iter(params)
        w = next(it) if affine in ("weight_and_bias", "weight") else None
        b = next(it) if affine in ("weight_and_bias", "bias") else None
        return F.layer_norm(x, ns, w, b)
    rng = np.random.default_rng(6)
    params = [rng.standard_normal(ns) + 1 for _ in range({"weight_and_bias": 2, "weight": 1, "bias": 1,
                                                            "none": 0}[affine])]
    return fn, params


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("shape", SHAPES + [(5000, 96), (300, 1, 7)], ids=str)
def test_layer_norm_kernels_match_the_reference(cp, monkeypatch, shape, affine, dtype):
    fn, params = _layer_norm(shape, affine)
    x = np.random.default_rng(7).standard_normal(shape) * 2 + 3          # a mean far from 0
    fwd, bwd = _spy(monkeypatch, "layer_norm_forward"), _spy(monkeypatch, "layer_norm_backward")
    # ∂w, ∂b sum over all rows, in another order than the reference's: more rounding
    rows = int(np.prod(shape[:-1]))
    _compare(cp, fn, [x] + params, dtype, f"layer_norm {shape} {affine}", scale=10,
             param_scale=10 * max(1.0, rows ** 0.25))
    assert len(fwd) == 1 and len(bwd) == 1


@given(batch=st.lists(st.integers(1, 6), max_size=3), d=st.sampled_from(ROW_LENGTHS),
       dtype=st.sampled_from(DTYPES), affine=st.sampled_from(AFFINE), seed=st.integers(0, 99))
def test_layer_norm_kernels_match_the_reference_on_any_shape(cp, batch, d, dtype, affine, seed):
    shape = tuple(batch) + (d,)
    fn, params = _layer_norm(shape, affine)
    x = np.random.default_rng(seed).standard_normal(shape) * 3 - 1
    rows = int(np.prod(shape[:-1]))
    _compare(cp, fn, [x] + params, dtype, f"layer_norm {shape} {affine}", scale=10,
             param_scale=10 * max(1.0, rows ** 0.25), seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_kernels_over_several_dims_and_constant_rows(cp, dtype):
    fn, params = _layer_norm((4, 5, 6), "weight_and_bias", n_dims=2)
    x = np.random.default_rng(8).standard_normal((4, 5, 6))
    x[1] = 2.5                                                  # a constant slice: x̂ = 0, finite
    _compare(cp, fn, [x] + params, dtype, "layer_norm over (5, 6)", scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_kernels_skip_unwanted_gradients(cp, dtype):
    """A frozen weight and bias get no gradient; the input's still matches the reference."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((10, 33))
    w, b = (Tensor(cp.asarray(rng.standard_normal(33).astype(dtype))) for _ in range(2))
    g = cp.asarray(rng.standard_normal((10, 33)).astype(dtype))
    out = {}
    for fused in (True, False):
        t = Tensor(cp.asarray(x.astype(dtype)), requires_grad=True)
        with fused_cuda.use_fused(fused):
            F.layer_norm(t, (33,), w, b).backward(g)
        out[fused] = t.grad
    assert w.grad is None and b.grad is None
    assert_close(out[True], out[False], dtype, "input gradient", scale=10)
    # and the reverse: only the parameters want gradients
    wp = Tensor(w.data.copy(), requires_grad=True)
    with fused_cuda.use_fused(True):
        F.layer_norm(Tensor(cp.asarray(x.astype(dtype))), (33,), wp, b).backward(g)
    with fused_cuda.use_fused(False):
        wr = Tensor(w.data.copy(), requires_grad=True)
        F.layer_norm(Tensor(cp.asarray(x.astype(dtype))), (33,), wr, b).backward(g)
    assert_close(wp.grad, wr.grad, dtype, "weight gradient", scale=10)


# =========================================================================== batch norm
BN_SHAPES = [(8, 3), (4, 5, 7), (16, 4, 8, 8), (3, 2, 1, 1), (2, 3, 200, 200), (64, 16, 4, 4)]   # n up to 80,000


def _batch_norm(cp, C, affine, dtype, momentum=0.1, stats_dtype=None):
    """F.batch_norm in training as a function of (x, *params), and its two running statistics."""
    rng = np.random.default_rng(11)
    sd = stats_dtype or dtype
    running = [cp.asarray(rng.standard_normal(C).astype(sd)), cp.asarray((rng.random(C) + 0.5).astype(sd))]

    def fn(x, *params):
        it = iter(params)
        w = next(it) if affine in ("weight_and_bias", "weight") else None
        b = next(it) if affine in ("weight_and_bias", "bias") else None
        return F.batch_norm(x, running[0], running[1], w, b, training=True, momentum=momentum)
    params = [rng.standard_normal(C) + 1 for _ in range({"weight_and_bias": 2, "weight": 1, "bias": 1,
                                                           "none": 0}[affine])]
    return fn, params, running


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batch_norm_kernels_match_the_reference(cp, monkeypatch, shape, affine, dtype):
    x = np.random.default_rng(12).standard_normal(shape) * 2 + 3                 # a mean far from 0
    n = shape[0] * int(np.prod(shape[2:]))
    g = np.random.default_rng(13).standard_normal(shape)
    out = {}
    for fused in (True, False):
        fn, params, running = _batch_norm(cp, shape[1], affine, dtype)
        fwd, bwd = _spy(monkeypatch, "batch_norm_forward"), _spy(monkeypatch, "batch_norm_backward")
        y, grads = _run(cp, fn, [x] + params, g, dtype, fused)
        assert (len(fwd), len(bwd)) == ((1, 1) if fused else (0, 0))
        out[fused] = y, grads, [backend.to_numpy(r) for r in running]
    (y1, g1, r1), (y0, g0, r0) = out[True], out[False]
    assert_close(y1, y0, dtype, f"batch_norm {shape} {affine}: output", scale=10)
    assert_close(g1[0], g0[0], dtype, "input gradient", scale=10 * max(1.0, n ** 0.25))
    for i, (a, b) in enumerate(zip(g1[1:], g0[1:])):                             # sums over n values
        assert_close(a, b, dtype, f"parameter gradient {i}", scale=10 * max(1.0, n ** 0.5))
    for a, b, what in zip(r1, r0, ("running_mean", "running_var")):
        assert_close(a, b, dtype, what, scale=10)
    assert not np.allclose(r1[0], backend.to_numpy(_batch_norm(cp, shape[1], affine, dtype)[2][0]))   # they moved


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_kernels_leave_other_dtypes_statistics_to_the_caller(cp, dtype):
    """Running statistics of another dtype than x (float32 buffers, a float64 input): the kernel
    skips them and the op updates them as the reference does."""
    other = np.float32 if dtype == np.float64 else np.float64
    x = np.random.default_rng(14).standard_normal((6, 3, 5))
    res = {}
    for fused in (True, False):
        fn, params, running = _batch_norm(cp, 3, "weight_and_bias", dtype, stats_dtype=other)
        y, _ = _run(cp, fn, [x] + params, np.ones((6, 3, 5)), dtype, fused)
        res[fused] = y, [backend.to_numpy(r) for r in running]
    assert_close(res[True][0], res[False][0], dtype, "output", scale=10)
    for a, b in zip(res[True][1], res[False][1]):                 # x's rounding: the statistics come from it
        assert a.dtype == other
        np.testing.assert_allclose(a, b, rtol=10 * _tol(dtype), atol=10 * _tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_kernels_skip_unwanted_gradients_and_evaluation(cp, monkeypatch, dtype):
    rng = np.random.default_rng(15)
    x = cp.asarray(rng.standard_normal((4, 3, 5, 5)).astype(dtype))
    w, b = (Tensor(cp.asarray(rng.standard_normal(3).astype(dtype)), requires_grad=True) for _ in range(2))
    rm, rv = cp.zeros(3, dtype=dtype), cp.ones(3, dtype=dtype)
    F.batch_norm(Tensor(x), rm, rv, w, b, training=True).sum().backward()      # no input gradient wanted
    assert w.grad is not None and b.grad is not None
    gw = {}
    for fused in (True, False):
        w.grad = b.grad = None
        with fused_cuda.use_fused(fused):
            F.batch_norm(Tensor(x), cp.zeros(3, dtype=dtype), cp.ones(3, dtype=dtype), w, b, training=True).sum().backward()
        gw[fused] = w.grad
    assert_close(gw[True], gw[False], dtype, "weight gradient", scale=100)
    calls = _spy(monkeypatch, "batch_norm_forward")
    F.batch_norm(Tensor(x), rm, rv, w, b, training=False)                       # evaluation: the reference
    assert calls == []


# =========================================================================== GELU
GELU_VALUES = np.concatenate([np.linspace(-12, 12, 4801), [0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_kernels_match_the_reference(cp, monkeypatch, approximate, dtype):
    fwd, bwd = _spy(monkeypatch, "gelu_forward"), _spy(monkeypatch, "gelu_backward")
    fn = lambda t: F.gelu(t, approximate=approximate)   # noqa: E731
    _compare(cp, fn, [GELU_VALUES], dtype, f"gelu {approximate}")
    _compare(cp, fn, [GELU_VALUES[:4800].reshape(4, 30, 40)], dtype, f"gelu {approximate} 3-d")
    assert len(fwd) == 2 and len(bwd) == 2


@given(shape=st.lists(st.integers(1, 70), min_size=0, max_size=3), dtype=st.sampled_from(DTYPES),
       approximate=st.sampled_from(["none", "tanh"]), seed=st.integers(0, 99))
def test_gelu_kernels_match_the_reference_on_any_shape(cp, shape, dtype, approximate, seed):
    x = np.random.default_rng(seed).standard_normal(tuple(shape)) * 4
    _compare(cp, lambda t: F.gelu(t, approximate=approximate), [x], dtype, f"gelu {approximate}", seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_kernels_special_values_and_no_saved_derivative(cp, approximate, dtype):
    x = cp.asarray(np.array([np.inf, -np.inf, np.nan, 0.0, 40.0, -40.0], dtype=dtype))
    out = {}
    for fused in (True, False):
        op = GELU(approximate)
        op.needs_grad = (True,)
        with fused_cuda.use_fused(fused):
            y = op.forward(x)
            out[fused] = (backend.to_numpy(y), backend.to_numpy(op.backward(cp.ones_like(x))))
    np.testing.assert_array_equal(out[True][0], out[False][0])
    np.testing.assert_array_equal(out[True][1], out[False][1])
    op = GELU(approximate)
    op.needs_grad = (True,)
    with fused_cuda.use_fused(True):
        op.forward(x)
    assert op.fused and op.dydx is None and op.x is x           # only a reference to the input


# =========================================================================== AdamW
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("foreach", [False, None])
def test_adamw_kernel_matches_the_reference_step_for_step(cp, monkeypatch, dtype, amsgrad, weight_decay, foreach):
    """Same operations in the same order, no FMA: expected bit for bit; checked to a few ulps. One
    kernel per parameter (foreach=False), or one for the whole group (the multi-tensor default)."""
    rng = np.random.default_rng(10)
    shapes = [(7, 5), (13,), (3, 4, 5), (1,), (300, 301)]
    init = [rng.standard_normal(s) for s in shapes]
    fused_params = [Tensor(cp.asarray(a.astype(dtype)), requires_grad=True) for a in init]
    ref_params = [Tensor(cp.asarray(a.astype(dtype)), requires_grad=True) for a in init]
    opt = optim.AdamW(fused_params, lr=3e-3, weight_decay=weight_decay, amsgrad=amsgrad, foreach=foreach)
    ref = optim.AdamW(ref_params, lr=3e-3, weight_decay=weight_decay, amsgrad=amsgrad, fused=False, foreach=False)
    calls = _spy(monkeypatch, "adamw_step")
    n_steps = 6
    for step in range(n_steps):
        for pf, pr in zip(fused_params, ref_params):
            g = cp.asarray((rng.standard_normal(pf.shape) * 10.0 ** rng.integers(-5, 2)).astype(dtype))
            pf.grad, pr.grad = g, g.copy()
        for group in opt.param_groups + ref.param_groups:
            group["lr"] = 3e-3 * (step + 1) / n_steps                # a warmup: lr changes every step
        opt.step()
        ref.step()
    assert len(calls) == n_steps * (len(shapes) if foreach is False else 1)
    tol = 1e-6 if dtype == np.float32 else 1e-15
    for i, (pf, pr) in enumerate(zip(fused_params, ref_params)):
        np.testing.assert_allclose(backend.to_numpy(pf.data), backend.to_numpy(pr.data), rtol=tol, atol=tol * 1e-3,
                                   err_msg=f"parameter {i}")
        assert opt.state[pf]["step"] == ref.state[pr]["step"] == n_steps
        for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ()):
            np.testing.assert_allclose(backend.to_numpy(opt.state[pf][key]), backend.to_numpy(ref.state[pr][key]),
                                       rtol=tol, atol=0, err_msg=f"{key} of parameter {i}")


def test_adamw_kernel_leaves_the_gradient_alone(cp):
    p = Tensor(cp.asarray(np.ones(10, dtype=np.float32)), requires_grad=True)
    g = cp.asarray(np.linspace(-1, 1, 10).astype(np.float32))
    p.grad = g
    before = g.copy()
    optim.AdamW([p], lr=0.1, fused=True).step()
    assert bool((g == before).all()) and not bool((p.data == 1).all())


# =========================================================================== a whole model
@pytest.mark.parametrize("name", ["vit_tiny", "swin_tiny", "pvt_v2_tiny", "cvt_tiny"])
def test_model_gradients_and_update_match_the_reference(cp, name):
    """One float64 training step of a small model (norms, GELU, attention softmax with Swin's
    bias and mask, cross-entropy, AdamW): loss, every gradient and every updated weight agree."""
    import minivit.models  # noqa: F401  (registers the models)
    from minivit.models.registry import create_model

    rng = np.random.default_rng(11)
    x = cp.asarray(rng.standard_normal((2, 3, 32, 32)))
    labels = cp.asarray(np.array([3, 7]))
    results = {}
    for fused in (True, False):
        backend.manual_seed(0)
        model = create_model(name).to(device="cuda", dtype=np.float64).eval()    # eval: no dropout draws
        opt = optim.AdamW(model.parameters(), lr=1e-3)
        with fused_cuda.use_fused(fused):
            loss = F.cross_entropy(model(Tensor(x)), labels)
            loss.backward()
            grads = {n: backend.to_numpy(p.grad) for n, p in model.named_parameters()}
            opt.step()
        results[fused] = (float(loss.data), grads, {n: backend.to_numpy(p.data) for n, p in model.named_parameters()})
    (loss_f, grads_f, params_f), (loss_r, grads_r, params_r) = results[True], results[False]
    assert loss_f == pytest.approx(loss_r, rel=1e-12)
    largest = max(float(np.abs(g).max()) for g in grads_r.values())
    for n in grads_r:
        scale = max(float(np.abs(grads_r[n]).max()), 1e-30)
        if scale <= 1e-12 * largest:        # zero in exact arithmetic (CvT's key BatchNorm bias): rounding noise
            assert float(np.abs(grads_f[n]).max()) <= 1e-12 * largest, n
            continue
        np.testing.assert_allclose(grads_f[n], grads_r[n], rtol=1e-8, atol=1e-9 * scale, err_msg=n)
        np.testing.assert_allclose(params_f[n], params_r[n], rtol=1e-9, atol=1e-10, err_msg=n)   # lr 1e-3


# =========================================================================== depthwise conv
DEPTHWISE = [   # (N, C, H, W), kernel, stride, padding, dilation
    ((3, 5, 7, 6), (3, 3), 1, 1, 1),                  # PVT v2's Mix-FFN conv
    ((2, 4, 9, 8), (3, 3), 2, 1, 1),                  # CvT's strided k/v projection
    ((2, 3, 8, 9), (3, 2), 1, "same", 2),             # even kernel: uneven 'same' pads, dilation
    ((1, 6, 5, 5), (5, 5), 1, 0, 1),                  # no padding
    ((2, 2, 6, 7), (3, 3), (1, 2), (2, 0), (1, 2)),
    ((2, 3, 4, 4), (3, 3), 1, 3, 1),                  # padding larger than k − 1
    ((4, 64, 8, 8), (3, 3), 1, 1, 1),                 # several chunks of positions for ∂w
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", DEPTHWISE, ids=range(len(DEPTHWISE)))
def test_depthwise_conv_kernels_match_the_reference(cp, monkeypatch, case, bias, layout, dtype):
    """One kernel each way (and the parameter gradients' partial sums) against im2col on the GPU:
    values, ∂x in the input's layout, ∂w, ∂b; NCHW input or tokens' channels-last memory."""
    shape, k, stride, padding, dilation = case
    N, C, H, W = shape
    calls = _spy(monkeypatch, "depthwise_conv_forward")
    rng = np.random.default_rng(C)
    x = rng.standard_normal((N, H, W, C) if layout == "channels_last" else shape)
    arrays = [x, rng.standard_normal((C, 1) + k)] + ([rng.standard_normal(C)] if bias else [])

    def conv(x, w, b=None):
        if layout == "channels_last":                 # an NCHW view of channels-last memory, as tokens give
            x = x.permute(0, 3, 1, 2)
        return F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=C)
    _compare(cp, conv, arrays, dtype, f"depthwise {case}", param_scale=10.0)
    assert len(calls) >= 1                            # the fused run took the kernel


@pytest.mark.parametrize("dtype", DTYPES)
def test_depthwise_conv_kernels_skip_unwanted_gradients(cp, dtype):
    """A frozen filter: no input kept for ∂w, ∂b still right; no gradients wanted: none computed."""
    rng = np.random.default_rng(3)
    x_np, w_np, b_np = rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((4, 1, 3, 3)), rng.standard_normal(4)
    results = {}
    for fused in (True, False):
        with fused_cuda.use_fused(fused):
            x = Tensor(cp.asarray(x_np.astype(dtype)), requires_grad=True)
            w = Tensor(cp.asarray(w_np.astype(dtype)))                      # frozen
            b = Tensor(cp.asarray(b_np.astype(dtype)), requires_grad=True)
            y = F.conv2d(x, w, b, padding=1, groups=4)
            if fused:
                assert y._ctx.depthwise == "cuda" and y._ctx.dw_saved[0] is None
            y.backward(cp.ones(y.shape, dtype=dtype))
            assert w.grad is None
            results[fused] = (y.data, x.grad, b.grad)
    for a, b_ in zip(results[True], results[False]):
        assert_close(a, b_, dtype, "frozen filter", scale=10.0)


@pytest.mark.skipif(not backend.is_strict_standin(), reason="counts the strict CuPy stand-in's device operations")
def test_depthwise_conv_is_three_kernels_and_a_sum_a_step():
    """PVT v2's Mix-FFN conv on tokens: forward one kernel; backward ∂x, the partial sums, their
    sum and ∂w's transpose: about five device operations, where im2col took a dozen and held the columns."""
    cp = backend.xp_for("cuda")
    rng = np.random.default_rng(0)
    x = Tensor(cp.asarray(rng.standard_normal((2, 16, 32)).astype(np.float32)), requires_grad=True)
    w = Tensor(cp.asarray(rng.standard_normal((32, 1, 3, 3)).astype(np.float32)), requires_grad=True)
    b = Tensor(cp.asarray(rng.standard_normal(32).astype(np.float32)), requires_grad=True)
    with strict_cupy.count_launches() as fwd:
        y = F.conv2d_tokens(x, (4, 4), w, b, padding=1, groups=32)
    g = cp.ones(y.shape, dtype=np.float32)
    with strict_cupy.count_launches() as bwd:
        y.backward(g)
    kinds = [k for _, _, k in fwd]
    assert "RawKernel depthwise_forward" in kinds and len(kinds) <= 3, kinds
    kinds = [k for _, _, k in bwd]
    assert {"RawKernel depthwise_input_grad", "RawKernel depthwise_param_grads"} <= set(kinds) and len(kinds) <= 7, kinds


# =========================================================================== everywhere (no GPU needed)
def test_cpu_arrays_never_take_the_kernels(monkeypatch):
    assert not fused_cuda.applies(np.ones(3, dtype=np.float32))
    calls = [_spy(monkeypatch, n) for n in ("softmax_forward", "softmax_backward", "layer_norm_forward",
                                            "layer_norm_backward", "gelu_forward", "gelu_backward", "adamw_step")]
    x = Tensor(np.random.default_rng(12).standard_normal((3, 8)).astype(np.float32), requires_grad=True)
    w = Tensor(np.ones(8, dtype=np.float32), requires_grad=True)
    loss = (F.softmax(F.gelu(F.layer_norm(x, (8,), w)), dim=-1) * F.log_softmax(x, dim=-1)).sum()
    loss.backward()
    optim.AdamW([x, w]).step()
    assert all(c == [] for c in calls)


def test_fused_cuda_imports_and_builds_its_sources_without_cupy():
    for dtype, ctype in ((np.float32, "float"), (np.float64, "double")):
        src = fused_cuda.row_kernel_source(dtype)
        assert src.startswith(f"typedef {ctype} T;")
        for name in ("softmax_forward", "softmax_backward", "layer_norm_forward", "layer_norm_backward",
                     "layer_norm_param_grads"):
            assert f'extern "C" __global__ void {name}(' in src


def test_use_fused_switches_and_restores():
    before = fused_cuda.enabled
    with fused_cuda.use_fused(False):
        assert fused_cuda.enabled is False
        assert not fused_cuda.applies(np.ones(2))
        with fused_cuda.use_fused(True):
            assert fused_cuda.enabled is True
        assert fused_cuda.enabled is False
    assert fused_cuda.enabled == before


@pytest.mark.parametrize("value,expected", [(None, "True"), ("1", "True"), ("0", "False")])
def test_environment_switch(value, expected):
    env = {k: v for k, v in os.environ.items() if k != "MINIVIT_FUSED"}
    if value is not None:
        env["MINIVIT_FUSED"] = value
    code = "from minivit.functional import fused_cuda; print(fused_cuda.enabled)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == expected


def test_adamw_fused_true_needs_the_gpu():
    p = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    p.grad = np.ones(3, dtype=np.float32)
    with pytest.raises(RuntimeError, match=r"AdamW\(fused=True\) needs .* on the GPU"):
        optim.AdamW([p], fused=True).step()
    optim.AdamW([p], fused=False).step()                        # the reference update, as always
    assert (p.data < 1).all()
