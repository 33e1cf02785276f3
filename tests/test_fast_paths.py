"""The CPU fast paths beside the readable reference code of some ops: each must give what its
reference gives (the fast path switched off), and no op may write into its inputs or into the
gradient it is handed (the fast paths work in place on arrays they made themselves).

* GELU (exact, float32, CPU): Φ from a rational erfc instead of SciPy's erf; dy/dx saved.
* Conv2d, depthwise (CPU): one einsum over strided windows instead of im2col (float64; float32 takes
  the compiled loops where they build: tests/test_fused_cpu.py).
* Conv2d, groups = 1, channels-last input (CPU): channels-last columns (L, K) and output; padding,
  im2col and col2im in pieces of the batch on threads.
* BatchNorm (CPU, float32/float64, (N, C, ...)): per-channel sums from pieces of the batch on
  threads, fewer passes; the running statistics updated alike; a channels-last input keeps its layout.
* ReLU (CPU, contiguous or channels-last): the same two ufuncs in pieces on threads, layout kept.
* ConvStem (CPU): channels-last from the image on, every conv, BatchNorm and ReLU on that path.
* LayerNorm and softmax: in-place updates of fresh arrays (checked here for not touching inputs).
"""
import numpy as np
import pytest
import scipy.special as sp

import minivit.functional as F
from minivit import Tensor, backend
from minivit.autograd import Function
from minivit.functional.activation import GELU, _gelu_float32
from minivit.functional import fused_cpu
from minivit.functional.conv import Conv2d
from minivit.functional.norm import BatchNorm
from minivit.functional.activation import ReLU


def _grads(fn, arrays, g, dtype):
    """Output and input gradients of fn on fresh leaf tensors (CPU, dtype)."""
    ts = [Tensor(np.asarray(a, dtype=dtype), requires_grad=True) for a in arrays]
    y = fn(*ts)
    y.backward(np.asarray(g, dtype=dtype))
    return y.data, [t.grad for t in ts]


def _conv_case(case, out, bias, channels_last_input, seed):
    """(conv(x, w, b=None), [x, w(, b)]) for a case of DEPTHWISE or DENSE (out=None: depthwise)."""
    rng = np.random.default_rng(seed)
    N, C, H, W = case["shape"]
    x = rng.standard_normal(case["shape"])
    if channels_last_input:                      # an NCHW view of channels-last memory, as tokens give
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    O, groups = (C, C) if out is None else (out, 1)
    w = rng.standard_normal((O, C // groups) + case["k"])
    arrays = [x, w] + ([rng.standard_normal(O)] if bias else [])
    kw = {k: case[k] for k in ("stride", "padding", "dilation")}

    def conv(x, w, b=None):
        return F.conv2d(x, w, b, groups=groups, **kw)
    return conv, arrays


def _matches_reference(monkeypatch, switch, conv, arrays):
    """Output and every gradient equal (float64) with Conv2d.<switch> on and off."""
    y = conv(*[Tensor(a) for a in arrays])
    g = np.random.default_rng(0).standard_normal(y.shape)
    y_fast, grads_fast = _grads(conv, arrays, g, np.float64)
    monkeypatch.setattr(Conv2d, switch, False)
    y_ref, grads_ref = _grads(conv, arrays, g, np.float64)
    np.testing.assert_allclose(y_fast, y_ref, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(["x", "weight", "bias"], grads_fast, grads_ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f"gradient of {name}")


# =========================================================================== GELU
GELU_X = np.concatenate([np.linspace(-12, 12, 48001), np.random.default_rng(0).standard_normal(20000) * 3,
                         [0.0, -0.0, 1e-30, -1e-30, 6.0, -6.0, 30.0, -30.0]]).astype(np.float32)


def test_gelu_fast_path_matches_the_reference_to_float32_rounding(monkeypatch):
    g = np.random.default_rng(1).standard_normal(GELU_X.shape)
    y_fast, (gx_fast,) = _grads(F.gelu, [GELU_X], g, np.float32)
    monkeypatch.setattr(GELU, "fast_path", False)
    y_ref, (gx_ref,) = _grads(F.gelu, [GELU_X], g, np.float32)
    assert y_fast.dtype == gx_fast.dtype == np.float32
    # A few float32 ulps of the value (Φ ≤ 1, so |x|·ulp bounds the rounding of x·Φ).
    ulp = np.float32(2 ** -23)
    tol = 4 * ulp * np.maximum(np.abs(GELU_X), 1e-3)
    assert np.all(np.abs(y_fast - y_ref) <= tol)
    np.testing.assert_allclose(gx_fast, gx_ref, rtol=1e-5, atol=1e-6)


def test_gelu_fast_path_is_as_accurate_as_the_reference():
    """Against float64 truth (SciPy's Φ), the fast float32 GELU errs no more than the reference
    does, and in the far negative tail it keeps Φ's relative precision, where 1 + erf cannot."""
    x64 = GELU_X.astype(np.float64)
    truth = x64 * sp.ndtr(x64)
    dtruth = sp.ndtr(x64) + x64 * np.exp(-x64 ** 2 / 2) / np.sqrt(2 * np.pi)
    y, d = _gelu_float32(GELU_X)
    ref = GELU_X * (0.5 * (1 + sp.erf(GELU_X * np.float32(1 / np.sqrt(2)))))
    err_fast = np.abs(y - truth).max()
    err_ref = np.abs(ref - truth).max()
    assert err_fast <= 2 * err_ref + 1e-12
    np.testing.assert_allclose(d, dtruth, atol=3e-7)
    tail = (GELU_X < -4) & (GELU_X > -12)
    np.testing.assert_allclose(y[tail], truth[tail], rtol=3e-5)


def test_gelu_fast_path_special_values():
    with np.errstate(invalid="ignore"):
        y, d = _gelu_float32(np.array([np.inf, -np.inf, np.nan, 0.0], dtype=np.float32))
        ref = GELU(approximate="none")
        ref.fast_path = False
        ref.needs_grad = (False,)
        expect = ref.forward(np.array([np.inf, -np.inf, np.nan, 0.0], dtype=np.float32))
    np.testing.assert_array_equal(y, expect)                    # inf, nan (−inf·0), nan, 0
    assert d[3] == np.float32(0.5)


def test_gelu_fast_path_only_for_float32_on_cpu_and_not_for_tanh(monkeypatch):
    """float64 and the tanh form run the reference code: bit for bit what it gives alone."""
    x = np.random.default_rng(2).standard_normal((3, 5))
    g = np.random.default_rng(3).standard_normal((3, 5))
    for approximate in ("none", "tanh"):
        fn = lambda t: F.gelu(t, approximate=approximate)   # noqa: E731
        a = _grads(fn, [x], g, np.float64)
        monkeypatch.setattr(GELU, "fast_path", False)
        b = _grads(fn, [x], g, np.float64)
        monkeypatch.setattr(GELU, "fast_path", True)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1][0], b[1][0])


def test_gelu_fast_path_skips_the_derivative_without_grad():
    op = GELU("none")
    op.needs_grad = (False,)
    op.forward(np.ones(4, dtype=np.float32))
    assert op.dydx is None


# =========================================================================== depthwise conv
DEPTHWISE = [
    dict(shape=(3, 5, 7, 6), k=(3, 3), stride=1, padding=1, dilation=1),         # PVT v2's dwconv
    dict(shape=(2, 4, 9, 8), k=(3, 3), stride=2, padding=1, dilation=1),         # CvT's strided k/v projection
    dict(shape=(2, 3, 8, 9), k=(3, 2), stride=1, padding="same", dilation=2),    # even kernel: uneven 'same' pads
    dict(shape=(1, 6, 5, 5), k=(5, 5), stride=1, padding=0, dilation=1),         # no padding
    dict(shape=(2, 2, 6, 6), k=(3, 3), stride=(1, 2), padding=(2, 0), dilation=(1, 2)),
    dict(shape=(2, 3, 4, 4), k=(3, 3), stride=1, padding=3, dilation=1),         # padding larger than k−1
    dict(shape=(2, 4, 7, 6), k=(3, 3), stride=(2, 1), padding=1, dilation=(2, 1)),  # width stride 1: merged (w, c)
]


@pytest.mark.parametrize("case", DEPTHWISE, ids=range(len(DEPTHWISE)))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last_input", [False, True])
def test_depthwise_fast_path_matches_im2col(monkeypatch, case, bias, channels_last_input):
    conv, arrays = _conv_case(case, None, bias, channels_last_input, seed=4)
    _matches_reference(monkeypatch, "depthwise_fast_path", conv, arrays)


def test_depthwise_fast_path_is_taken_and_skips_unwanted_grads():
    rng = np.random.default_rng(5)
    x = Tensor(rng.standard_normal((2, 4, 6, 6)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 1, 3, 3)).astype(np.float32))          # frozen weight
    with fused_cpu.use_fused(False):                  # the einsum path (float32 otherwise takes the C loops)
        y = F.conv2d(x, w, padding=1, groups=4)
    assert y._ctx.depthwise is True and y._ctx.xpad is None                   # no input kept for ∂W
    assert y.dtype == np.float32
    y.backward(np.ones(y.shape, dtype=np.float32))
    assert x.grad.shape == x.shape and x.grad.dtype == np.float32 and w.grad is None
    # A channel multiplier (groups = C_in, C_out = 2·C_in) is not depthwise: im2col.
    z = F.conv2d(x, Tensor(rng.standard_normal((8, 1, 3, 3)).astype(np.float32)), padding=1, groups=4)
    assert not z._ctx.depthwise


# =========================================================================== channels-last conv
DENSE = [
    dict(shape=(3, 4, 8, 8), out=6, k=(3, 3), stride=2, padding=1, dilation=1),   # PVT v2's overlapping patch embed
    dict(shape=(2, 5, 8, 8), out=3, k=(4, 4), stride=4, padding=0, dilation=1),   # patches that tile the image
    dict(shape=(2, 3, 8, 6), out=4, k=(2, 2), stride=2, padding=0, dilation=1),   # PVT's reduction conv, H ≠ W
    dict(shape=(2, 3, 9, 9), out=4, k=(4, 4), stride=4, padding=0, dilation=1),   # tiles leaving a border unread
    dict(shape=(2, 3, 7, 8), out=5, k=(3, 2), stride=1, padding="same", dilation=2),
    dict(shape=(1, 2, 6, 7), out=3, k=(3, 3), stride=(1, 2), padding=(2, 0), dilation=(1, 2)),
    dict(shape=(2, 4, 4, 4), out=2, k=(2, 2), stride=2, padding=1, dilation=1),   # tiles of the padded input
]


@pytest.mark.parametrize("case", DENSE, ids=range(len(DENSE)))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last_input", [False, True])
def test_channels_last_conv_matches_the_reference_layout(monkeypatch, case, bias, channels_last_input):
    conv, arrays = _conv_case(case, case["out"], bias, channels_last_input, seed=8)
    y = conv(*[Tensor(a, requires_grad=True) for a in arrays])
    assert y._ctx.channels_last == channels_last_input               # NCHW inputs keep the NCHW layout
    assert y.data.transpose(0, 2, 3, 1).flags.c_contiguous == channels_last_input
    _matches_reference(monkeypatch, "channels_last_path", conv, arrays)


def test_channels_last_conv_passes_a_gradient_check():
    from minivit.testing import gradcheck
    rng = np.random.default_rng(9)
    x = np.ascontiguousarray(rng.standard_normal((2, 3, 5, 5)).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    w, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    xt = Tensor(x, requires_grad=True)
    assert xt.data.transpose(0, 2, 3, 1).flags.c_contiguous
    assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
                     xt, Tensor(w, requires_grad=True), Tensor(b, requires_grad=True))


@pytest.mark.parametrize("case", [DENSE[0], DENSE[4], DENSE[6]], ids=["stride2-pad1", "dilated-same", "tiles-padded"])
def test_channels_last_conv_threaded_columns_equal_one_piece(monkeypatch, case):
    """Padding, im2col and col2im in pieces of the batch on threads give the very numbers of one piece
    (each image's copies and adds are the same operations in the same order), float32, batch 7."""
    monkeypatch.setattr(backend, "get_num_threads", lambda: 3)
    conv, arrays = _conv_case(dict(case, shape=(7,) + case["shape"][1:]), case["out"], True, True, seed=10)
    g = np.random.default_rng(1).standard_normal(conv(*[Tensor(a) for a in arrays]).shape)
    y_t, grads_t = _grads(conv, arrays, g, np.float32)
    monkeypatch.setattr(Conv2d, "threaded_columns", False)
    y_1, grads_1 = _grads(conv, arrays, g, np.float32)
    np.testing.assert_array_equal(y_t, y_1)
    for a, b in zip(grads_t, grads_1):
        np.testing.assert_array_equal(a, b)


def test_batch_norm_block_sums_match_float64_sums(monkeypatch):
    """BatchNorm's float32 channels-last sums by blocks of rows agree with NumPy's float64 sums
    to float32 rounding, on an input whose mean is far from 0 (where one float32 sum would drift),
    with more rows than one block."""
    rng = np.random.default_rng(11)
    x0 = (rng.standard_normal((32, 24, 24, 8)) * 2 + 30).astype(np.float32)       # 18,432 rows of 8
    x0 = x0.transpose(0, 3, 1, 2)                                                 # NCHW view, channels-last
    g = rng.standard_normal(x0.shape).astype(np.float32)
    blocks = _bn_run(x0, g, True, True)
    monkeypatch.setattr(BatchNorm, "block_sums", False)
    plain = _bn_run(x0, g, True, True)
    for a, r in zip(blocks, plain):
        np.testing.assert_allclose(a, r, rtol=0, atol=2e-5 * max(1.0, np.abs(r).max()))


# =========================================================================== batch norm, ReLU
def _bn_run(x0, g, training, affine, want_param_grads=True):
    """batch_norm's output, gradients and updated running statistics, on fresh copies."""
    C = x0.shape[1]
    dt = x0.dtype
    x = Tensor(x0.copy(), requires_grad=True)
    w = Tensor(np.linspace(0.5, 1.5, C).astype(dt), requires_grad=want_param_grads) if affine else None
    b = Tensor(np.linspace(-1, 1, C).astype(dt), requires_grad=want_param_grads) if affine else None
    rm, rv = np.linspace(-0.2, 0.2, C).astype(dt), np.linspace(0.5, 2.0, C).astype(dt)
    y = F.batch_norm(x, rm, rv, w, b, training=training, momentum=0.1, eps=1e-5)
    y.backward(g)
    grads = [x.grad] + ([w.grad, b.grad] if affine else [])
    return [y.data] + grads + [rm, rv]


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (64, 16, 16, 16), (5, 4, 7), (2, 3, 2, 2, 3)])
@pytest.mark.parametrize("training", [True, False], ids=["batch-stats", "running-stats"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_batch_norm_fast_path_matches_the_reference(monkeypatch, shape, training, affine):
    """Output, ∂x, ∂w, ∂b and the running statistics: float64 to 1e-12, float32 to float32 rounding,
    a channels-last view as well as contiguous memory; large inputs split over threads."""
    rng = np.random.default_rng(3)
    for dt, tol in ((np.float64, 1e-12), (np.float32, 3e-5)):
        x0 = (rng.standard_normal(shape) * 3 + 1).astype(dt)
        g = rng.standard_normal(shape).astype(dt)
        if len(shape) == 4:                       # an NCHW view of channels-last memory, too
            x0 = np.ascontiguousarray(x0.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        fast = _bn_run(x0, g, training, affine, want_param_grads=training)
        monkeypatch.setattr(BatchNorm, "fast_path", False)
        ref = _bn_run(x0, g, training, affine, want_param_grads=training)
        monkeypatch.undo()
        for a, r in zip(fast, ref):
            if r is None:                         # no parameter gradients in eval mode here
                assert a is None
                continue
            assert a.dtype == r.dtype and a.shape == r.shape
            np.testing.assert_allclose(a, r, rtol=0, atol=tol * max(1.0, np.abs(r).max()))


def test_batch_norm_fast_path_is_taken_only_where_it_applies(monkeypatch):
    """Taken for a float32/64 (N, C, ...) training input; not for (N, C), float16, or eval-mode
    parameter gradients (those need x̂ from the running statistics: the reference computes them)."""
    taken = []
    orig = BatchNorm._cpu_forward
    monkeypatch.setattr(BatchNorm, "_cpu_forward", lambda self, *a: taken.append(1) or orig(self, *a))
    rm, rv = np.zeros(3), np.ones(3)
    cases = [((4, 3, 2, 2), np.float32, True, True), ((4, 3), np.float64, True, False),
             ((4, 3, 2, 2), np.float16, True, False), ((4, 3, 2, 2), np.float64, False, False)]
    for shape, dt, training, expect in cases:
        taken.clear()
        w = Tensor(np.ones(3, dt), requires_grad=True)
        F.batch_norm(Tensor(np.ones(shape, dt)), rm.astype(dt), rv.astype(dt), w, None, training=training)
        assert bool(taken) == expect, (shape, dt, training)


def test_batch_norm_fast_path_passes_a_gradient_check():
    from minivit.testing import gradcheck
    rng = np.random.default_rng(4)
    x = Tensor(rng.standard_normal((3, 4, 3, 2)), requires_grad=True)
    w = Tensor(rng.standard_normal(4), requires_grad=True)
    b = Tensor(rng.standard_normal(4), requires_grad=True)
    assert gradcheck(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), x, w, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_fast_path_matches_the_reference(monkeypatch, dtype):
    """Equal bit for bit (NaN stays NaN, 0 gets no gradient), on an array big enough for threads."""
    x0 = np.random.default_rng(5).standard_normal((64, 32, 16, 16)).astype(dtype)
    x0.flat[:3] = (0.0, -0.0, np.nan)
    g = np.random.default_rng(6).standard_normal(x0.shape).astype(dtype)
    fast_y, (fast_g,) = _grads(F.relu, [x0], g, dtype)
    monkeypatch.setattr(ReLU, "fast_path", False)
    ref_y, (ref_g,) = _grads(F.relu, [x0], g, dtype)
    np.testing.assert_array_equal(fast_y, ref_y)
    np.testing.assert_array_equal(fast_g, ref_g)
    assert not np.signbit(fast_y.flat[1])                 # max(-0.0, 0) is +0.0 on both paths


def _channels_last(a):
    return a.ndim == 4 and not a.flags.c_contiguous and a.transpose(0, 2, 3, 1).flags.c_contiguous


@pytest.mark.parametrize("op", ["batch_norm", "relu"])
def test_channels_last_input_keeps_its_layout(monkeypatch, op):
    """A channels-last (N, C, H, W) view in, a channels-last output and gradient out, with the
    reference's values: the next conv then reads it without a copy (the conv stem's chain)."""
    rng = np.random.default_rng(7)
    x0 = np.ascontiguousarray(rng.standard_normal((64, 40, 8, 8)).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    g = np.ascontiguousarray(rng.standard_normal((64, 8, 8, 40))).transpose(0, 3, 1, 2)
    fn = (F.relu if op == "relu" else
          lambda x: F.batch_norm(x, None, None, Tensor(np.linspace(0.5, 1.5, 40)), None, training=True))
    seen = []

    class Probe(Function):                                  # identity; records the gradient the op hands back
        def forward(self, a):
            return a

        def backward(self, gy):
            seen.append(gy)
            return gy
    x = Tensor(x0, requires_grad=True)
    y = fn(Probe()(x))
    y.backward(g)
    assert _channels_last(y.data) and _channels_last(seen[0])
    monkeypatch.setattr(ReLU if op == "relu" else BatchNorm, "fast_path", False)
    ref_y, (ref_g,) = _grads(fn, [x0], g, np.float64)
    np.testing.assert_allclose(y.data, ref_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad, ref_g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_conv_stem_channels_last_matches_nchw(monkeypatch, training):
    """vit_nano's stem run channels-last (the CPU default) and NCHW: the same tokens and the same
    gradient for every parameter (float64), and channels-last is what every conv actually took."""
    from minivit.layers.conv_stem import ConvStem, HybridEmbed
    from minivit.models import create_model
    model = create_model("vit_nano").to(dtype=np.float64)
    model.train(training)
    x = np.random.default_rng(8).standard_normal((4, 3, 32, 32))
    g = np.random.default_rng(9).standard_normal((4, 10))
    taken = []
    orig = Conv2d._channels_last_forward
    monkeypatch.setattr(Conv2d, "_channels_last_forward", lambda self, *a: taken.append(1) or orig(self, *a))
    results = []
    for flag in (True, False):
        monkeypatch.setattr(ConvStem, "channels_last", flag)
        state = {k: v.copy() for k, v in model.state_dict().items()}
        for p in model.parameters():
            p.grad = None
        y = model(Tensor(x))
        y.backward(g)
        results.append((y.data, [p.grad for p in model.parameters()],
                        {k: v.copy() for k, v in model.state_dict().items()}))
        model.load_state_dict(state)
        if flag:
            assert len(taken) == 4 and isinstance(model.patch_embed, HybridEmbed)
    (ya, ga, sa), (yb, gb, sb) = results
    np.testing.assert_allclose(ya, yb, rtol=1e-11, atol=1e-12)
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    for k in sa:                                            # BatchNorm's running statistics, too
        np.testing.assert_allclose(sa[k], sb[k], rtol=1e-12, atol=1e-12, err_msg=k)


# =========================================================================== inputs stay untouched
def _ops():
    rng = np.random.default_rng(6)
    return {
        "gelu": (F.gelu, [rng.standard_normal((4, 5, 6))]),
        "softmax": (lambda x: F.softmax(x, dim=-1), [rng.standard_normal((4, 5, 6))]),
        "softmax_dim0": (lambda x: F.softmax(x, dim=0), [rng.standard_normal((4, 5))]),
        "layer_norm": (lambda x, w, b: F.layer_norm(x, (6,), w, b),
                       [rng.standard_normal((4, 5, 6)), rng.standard_normal(6), rng.standard_normal(6)]),
        "layer_norm_plain": (lambda x: F.layer_norm(x, (5, 6)), [rng.standard_normal((4, 5, 6))]),
        "depthwise": (lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=3),
                      [rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((3, 1, 3, 3)), rng.standard_normal(3)]),
        "conv_channels_last": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
                               [np.ascontiguousarray(rng.standard_normal((2, 5, 5, 3))).transpose(0, 3, 1, 2),
                                rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)]),
        "batch_norm": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                       [rng.standard_normal((4, 3, 5, 5)), rng.standard_normal(3), rng.standard_normal(3)]),
        "relu": (F.relu, [rng.standard_normal((64, 32, 16, 16))]),
        "conv_patches": (lambda x, w, b: F.conv2d(x, w, b, stride=2),
                         [rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((4, 3, 2, 2)), rng.standard_normal(4)]),
    }


@pytest.mark.parametrize("name", sorted(_ops()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ops_do_not_write_into_inputs_or_the_incoming_gradient(name, dtype):
    fn, arrays = _ops()[name]
    ts = [Tensor(np.asarray(a, dtype=dtype), requires_grad=True) for a in arrays]
    before = [t.data.copy() for t in ts]
    y = fn(*ts)
    y_before = y.data.copy()
    g = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
    g_before = g.copy()
    y.backward(g)
    for t, b in zip(ts, before):
        np.testing.assert_array_equal(t.data, b)
        assert t.grad.dtype == dtype
    np.testing.assert_array_equal(g, g_before)
    np.testing.assert_array_equal(y.data, y_before)       # backward does not change the output either


# =========================================================================== the engine's allocator setting
def test_keeping_freed_memory_is_on_by_default_on_linux_and_can_be_switched_off():
    import os
    import subprocess
    import sys
    code = "import minivit.backend as a; print(a.malloc_settings)"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    env = dict(os.environ, MINIVIT_KEEP_FREED_MEMORY="0")
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert off.strip() == "None"
    if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert "trim_threshold" in on
