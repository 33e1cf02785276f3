"""Convolution, pooling, padding, resizing (functional/conv.py): finite differences,
closed forms (conv as a matmul over patches, 1×1 conv as a linear map), PyTorch parity."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minivit as mv
from minivit import Tensor
from minivit.functional import conv as C
from minivit.testing import gradcheck

from conftest import torch_or_skip


def host(a):
    return mv.backend.to_numpy(a)


def t64(xp, arr, grad=True):
    return Tensor(xp.asarray(arr, dtype=np.float64), requires_grad=grad)


def _parity(xp, ours, theirs, arrays, atol=1e-10):
    """Run ours (minivit) and theirs (torch) on the same float64 arrays; compare the
    output and the gradient of every input under the same random output weighting."""
    torch = torch_or_skip()
    mine = [t64(xp, a) for a in arrays]
    ref = [torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in arrays]
    y, yt = ours(*mine), theirs(*ref)
    assert y.shape == tuple(yt.shape)
    np.testing.assert_allclose(host(y.data), yt.detach().numpy(), atol=atol, rtol=1e-10)
    g = np.random.default_rng(1).standard_normal(y.shape)
    y.backward(xp.asarray(g))
    yt.backward(torch.tensor(g))
    for i, (a, b) in enumerate(zip(mine, ref)):
        np.testing.assert_allclose(host(a.grad), b.grad.numpy(), atol=atol, rtol=1e-10,
                                   err_msg=f"gradient of input {i}")


# =========================================================================== conv2d
@st.composite
def conv_case(draw):
    """A random conv: groups from 1 to depthwise, size-1 dims, stride, padding, dilation."""
    groups = draw(st.integers(1, 3))
    cg, og = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    n = draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(st.sampled_from([1, 2, (1, 2), (2, 1)]))
    padding = draw(st.sampled_from([0, 1, 2, (0, 1), (2, 0)]))
    dilation = draw(st.sampled_from([1, 2, (1, 2)]))
    d = (dilation, dilation) if isinstance(dilation, int) else dilation
    p = (padding, padding) if isinstance(padding, int) else padding
    assume(d[0] * (kh - 1) + 1 <= h + 2 * p[0] and d[1] * (kw - 1) + 1 <= w + 2 * p[1])
    return dict(x=(n, groups * cg, h, w), w=(groups * og, cg, kh, kw), stride=stride, padding=padding,
                dilation=dilation, groups=groups, bias=draw(st.booleans()), transposed=draw(st.booleans()))


def _conv_inputs(xp, case, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case["x"])
    if case["transposed"]:               # stored as (N, C, W, H); the fn transposes it back
        x = np.ascontiguousarray(x.swapaxes(2, 3))
    arrays = [x, rng.standard_normal(case["w"])] + ([rng.standard_normal(case["w"][0])] if case["bias"] else [])
    return arrays


def _conv_fn(conv, case, transpose):
    kw = {k: case[k] for k in ("stride", "padding", "dilation", "groups")}

    def fn(x, w, b=None):
        if case["transposed"]:
            x = transpose(x)             # a non-contiguous input
        return conv(x, w, b, **kw)
    return fn


@given(case=conv_case(), seed=st.integers(0, 2**16))
@settings(max_examples=60)
def test_conv2d_gradcheck(xp, case, seed):
    arrays = _conv_inputs(xp, case, seed)
    gradcheck(_conv_fn(C.conv2d, case, lambda x: x.transpose(2, 3)), *[t64(xp, a) for a in arrays])


@given(case=conv_case(), seed=st.integers(0, 2**16))
@settings(max_examples=60)
def test_conv2d_parity_with_torch_random_shapes(xp, case, seed):
    tf = torch_or_skip().nn.functional
    arrays = _conv_inputs(xp, case, seed)
    _parity(xp, _conv_fn(C.conv2d, case, lambda x: x.transpose(2, 3)),
            _conv_fn(tf.conv2d, case, lambda x: x.transpose(2, 3)), arrays)


CONV_CASES = [  # (x shape, w shape, kwargs): the layer shapes the ViT zoo uses, small
    ((2, 3, 8, 8), (4, 3, 3, 3), dict()),
    ((2, 3, 8, 8), (4, 3, 4, 4), dict(stride=4)),                            # ViT patch embedding
    ((2, 4, 7, 7), (6, 4, 3, 3), dict(stride=2, padding=1)),
    ((1, 4, 9, 6), (4, 2, 3, 2), dict(padding=(2, 1), dilation=(2, 1), groups=2)),
    ((2, 6, 7, 7), (6, 1, 3, 3), dict(padding=1, groups=6)),                 # depthwise (CvT, PVT v2)
    ((2, 6, 7, 7), (6, 1, 3, 3), dict(stride=2, padding=1, groups=6)),       # strided depthwise
    ((2, 3, 8, 8), (6, 1, 3, 3), dict(stride=2, padding=1, groups=3)),       # depthwise ×2 (PiT pooling)
    ((2, 3, 7, 5), (5, 3, 4, 3), dict(padding="same", dilation=2)),
    ((2, 3, 7, 5), (5, 3, 4, 2), dict(padding="same")),                     # odd total: extra at the end
    ((2, 3, 7, 5), (5, 3, 3, 3), dict(padding="valid")),
    ((4, 6, 6), (4, 2, 3, 3), dict(padding=1, groups=2)),                   # unbatched (C, H, W)
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch's note about its own copy
@pytest.mark.parametrize("xs, ws, kw", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_parity_with_torch(xp, xs, ws, kw, bias):
    tf = torch_or_skip().nn.functional
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(xs), rng.standard_normal(ws)] + ([rng.standard_normal(ws[0])] if bias else [])
    _parity(xp, lambda *a: C.conv2d(*a, **kw), lambda *a: tf.conv2d(*a, **kw), arrays)


def _naive_conv(x, w, b, stride, padding, dilation, groups):
    """Conv as an explicit matmul over extracted patches, one output pixel at a time:
    y[n, o, i, j] = patch(n, group of o, i, j) · W[o].ravel() + b[o]."""
    (s, p, d) = stride, padding, dilation
    N, Cin, H, W = x.shape
    O, Cg, kh, kw = w.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    Ho = (H + 2 * p - d * (kh - 1) - 1) // s + 1
    Wo = (W + 2 * p - d * (kw - 1) - 1) // s + 1
    Og = O // groups
    y = np.zeros((N, O, Ho, Wo))
    patches = {}
    for n in range(N):
        for o in range(O):
            g = o // Og
            for i in range(Ho):
                for j in range(Wo):
                    rows = i * s + d * np.arange(kh)
                    cols = j * s + d * np.arange(kw)
                    patch = xp_[n, g * Cg:(g + 1) * Cg][:, rows][:, :, cols]
                    patches[n, o, i, j] = (g, rows, cols, patch)
                    y[n, o, i, j] = patch.ravel() @ w[o].ravel() + b[o]
    return y, patches, xp_.shape


@pytest.mark.parametrize("kw", [dict(stride=1, padding=0, dilation=1, groups=1),
                                dict(stride=2, padding=1, dilation=1, groups=2),
                                dict(stride=1, padding=2, dilation=2, groups=4)])
def test_conv2d_is_a_matmul_over_patches(xp, kw):
    """Forward equals the patch · weight definition; the gradients equal the closed forms
    ∂L/∂W[o] = Σ g[n,o,i,j]·patch(n,i,j) and ∂L/∂x = Σ g[n,o,i,j]·W[o] added onto each patch."""
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((4, 4 // kw["groups"], 3, 3)), rng.standard_normal(4)
    y_ref, patches, pad_shape = _naive_conv(x, w, b, **kw)
    X, Wt, B = t64(xp, x), t64(xp, w), t64(xp, b)
    y = C.conv2d(X, Wt, B, **kw)
    np.testing.assert_allclose(host(y.data), y_ref, atol=1e-12)
    g = rng.standard_normal(y_ref.shape)
    y.backward(xp.asarray(g))
    gw, gxp = np.zeros_like(w), np.zeros(pad_shape)
    for (n, o, i, j), (grp, rows, cols, patch) in patches.items():
        gw[o] += g[n, o, i, j] * patch
        Cg = w.shape[1]
        gxp[n, grp * Cg:(grp + 1) * Cg][:, rows[:, None], cols[None, :]] += g[n, o, i, j] * w[o]
    p = kw["padding"]
    gx = gxp[:, :, p:gxp.shape[2] - p, p:gxp.shape[3] - p]
    np.testing.assert_allclose(host(Wt.grad), gw, atol=1e-12)
    np.testing.assert_allclose(host(X.grad), gx, atol=1e-12)
    np.testing.assert_allclose(host(B.grad), g.sum(axis=(0, 2, 3)), atol=1e-12)


def test_conv1x1_is_a_linear_map_over_channels(xp):
    """A 1×1 conv is x·Wᵀ + b applied at every pixel: same values and same gradients
    as permute → matmul → permute back."""
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 5, 3, 4)), rng.standard_normal((7, 5, 1, 1)), rng.standard_normal(7)
    X1, W1, B1 = t64(xp, x), t64(xp, w), t64(xp, b)
    X2, W2, B2 = t64(xp, x), t64(xp, w), t64(xp, b)
    y1 = C.conv2d(X1, W1, B1)
    y2 = (X2.permute(0, 2, 3, 1) @ W2.reshape(7, 5).transpose(0, 1) + B2).permute(0, 3, 1, 2)
    np.testing.assert_allclose(host(y1.data), host(y2.data), atol=1e-12)
    g = xp.asarray(rng.standard_normal(y1.shape))
    y1.backward(g)
    y2.backward(g)
    for a, b_ in ((X1, X2), (W1, W2), (B1, B2)):
        np.testing.assert_allclose(host(a.grad), host(b_.grad), atol=1e-12)


def test_conv2d_only_requested_grads(xp):
    """A frozen weight (no grad) still gives the input its gradient, and vice versa."""
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    X, W = t64(xp, x), t64(xp, w, grad=False)
    C.conv2d(X, W, padding=1).sum().backward()
    assert X.grad is not None and W.grad is None
    X, W = t64(xp, x, grad=False), t64(xp, w)
    C.conv2d(X, W, padding=1).sum().backward()
    assert X.grad is None and W.grad is not None
    # ∂(Σy)/∂W[o, c, a, b] = Σ over all windows of x at that offset (stride 1, no padding here)
    X, W = t64(xp, x, grad=False), t64(xp, w)
    C.conv2d(X, W).sum().backward()
    expect = np.stack([x[0][:, a:a + 3, b:b + 3].sum(axis=(1, 2)) for a in range(3) for b in range(3)], -1)
    np.testing.assert_allclose(host(W.grad), np.broadcast_to(expect.reshape(2, 3, 3), (3, 2, 3, 3)), atol=1e-12)


# =========================================================================== pooling
@st.composite
def pool_case(draw, with_dilation=False):
    k = draw(st.sampled_from([1, 2, 3, (2, 3), (3, 1)]))
    kk = (k, k) if isinstance(k, int) else k
    stride = draw(st.sampled_from([None, 1, 2, (1, 2), 3]))
    d = draw(st.sampled_from([1, 2])) if with_dilation else 1
    ek = (d * (kk[0] - 1) + 1, d * (kk[1] - 1) + 1)
    p = (draw(st.integers(0, kk[0] // 2)), draw(st.integers(0, kk[1] // 2)))
    h = draw(st.integers(max(1, ek[0] - 2 * p[0]), 7))
    w = draw(st.integers(max(1, ek[1] - 2 * p[1]), 7))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w)
    kw = dict(kernel_size=k, stride=stride, padding=p, ceil_mode=draw(st.booleans()))
    if with_dilation:
        kw["dilation"] = d
    return shape, kw


@given(case=pool_case(), include=st.booleans(), seed=st.integers(0, 2**16))
@settings(max_examples=40)
def test_avg_pool2d_gradcheck(xp, case, include, seed):
    shape, kw = case
    x = np.random.default_rng(seed).standard_normal(shape)
    gradcheck(lambda x: C.avg_pool2d(x.transpose(2, 3), count_include_pad=include, **kw),
              t64(xp, x.swapaxes(2, 3).copy()))


@given(case=pool_case(), include=st.booleans(), seed=st.integers(0, 2**16))
@settings(max_examples=30)
def test_avg_pool2d_parity_with_torch(xp, case, include, seed):
    tf = torch_or_skip().nn.functional
    shape, kw = case
    x = np.random.default_rng(seed).standard_normal(shape)
    _parity(xp, lambda x: C.avg_pool2d(x, count_include_pad=include, **kw),
            lambda x: tf.avg_pool2d(x, count_include_pad=include, **kw), [x])


def test_avg_pool2d_divisor_override(xp):
    tf = torch_or_skip().nn.functional
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5))
    _parity(xp, lambda x: C.avg_pool2d(x, 3, 2, 1, divisor_override=4),
            lambda x: tf.avg_pool2d(x, 3, 2, 1, divisor_override=4), [x])


def _distinct(shape, seed):
    """Values 0.1 apart in random order: no ties, so no finite-difference step flips an argmax."""
    n = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(n).reshape(shape) * 0.1


@given(case=pool_case(with_dilation=True), seed=st.integers(0, 2**16))
@settings(max_examples=40)
def test_max_pool2d_gradcheck(xp, case, seed):
    shape, kw = case
    x = _distinct(shape, seed)
    assume(np.isfinite(host(C.max_pool2d(t64(xp, x, grad=False), **kw).data)).all())  # see below
    gradcheck(lambda x: C.max_pool2d(x.transpose(2, 3), **kw), t64(xp, x.swapaxes(2, 3).copy()))


@given(case=pool_case(with_dilation=True), seed=st.integers(0, 2**16), ties=st.booleans())
@settings(max_examples=30)
def test_max_pool2d_parity_with_torch(xp, case, seed, ties):
    """Values and indices as torch; with ties (values rounded to a few levels) the gradient
    still goes to the same element torch picks (the first max of the window)."""
    torch = torch_or_skip()
    shape, kw = case
    x = np.random.default_rng(seed).standard_normal(shape)
    if ties:
        x = np.round(x)
    # A dilated window can fall wholly in the padding (-inf out, no gradient); torch then
    # credits an out-of-range index. Leave that degenerate case out.
    assume(np.isfinite(host(C.max_pool2d(t64(xp, x, grad=False), **kw).data)).all())
    _parity(xp, lambda x: C.max_pool2d(x, **kw), lambda x: torch.nn.functional.max_pool2d(x, **kw), [x])
    _, idx = C.max_pool2d(t64(xp, x), return_indices=True, **kw)
    _, idx_t = torch.nn.functional.max_pool2d(torch.tensor(x), return_indices=True, **kw)
    np.testing.assert_array_equal(host(idx.data), idx_t.numpy())


def test_max_pool2d_tie_goes_to_first_in_window(xp):
    """A constant image: every window's gradient lands on its top-left element."""
    X = t64(xp, np.ones((1, 1, 4, 4)))
    C.max_pool2d(X, 2).sum().backward()
    expect = np.zeros((4, 4))
    expect[::2, ::2] = 1
    np.testing.assert_array_equal(host(X.grad)[0, 0], expect)


SIZES = [(3, 4), 5, (None, 2), (7, 9), (1, 1), (10, 3), (4, None), (7, 7)]


@pytest.mark.parametrize("out", SIZES)
def test_adaptive_avg_pool2d_parity_with_torch(xp, out):
    """Non-divisible sizes (bins of unequal, overlapping length), bigger outputs than inputs."""
    tf = torch_or_skip().nn.functional
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 9))
    _parity(xp, lambda x: C.adaptive_avg_pool2d(x, out), lambda x: tf.adaptive_avg_pool2d(x, out), [x])


@given(h=st.integers(1, 7), w=st.integers(1, 7), oh=st.integers(1, 5), ow=st.integers(1, 5),
       seed=st.integers(0, 2**16))
@settings(max_examples=40)
def test_adaptive_avg_pool2d_gradcheck(xp, h, w, oh, ow, seed):
    x = np.random.default_rng(seed).standard_normal((2, 2, w, h))
    gradcheck(lambda x: C.adaptive_avg_pool2d(x.transpose(2, 3), (oh, ow)), t64(xp, x))


def test_adaptive_avg_pool2d_closed_forms(xp):
    """Divisible sizes are an avg_pool2d with kernel = stride = H/out; output 1×1 is the mean."""
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 12))
    X = t64(xp, x, grad=False)
    np.testing.assert_allclose(host(C.adaptive_avg_pool2d(X, (4, 3)).data),
                               host(C.avg_pool2d(X, (2, 4)).data), atol=1e-12)
    np.testing.assert_allclose(host(C.adaptive_avg_pool2d(X, 1).data)[..., 0, 0], x.mean(axis=(2, 3)), atol=1e-12)
    # Bins of PyTorch's rule for 5 → 3: [0, 2), [1, 4), [3, 5)
    y = C.adaptive_avg_pool2d(t64(xp, np.arange(5.0).reshape(1, 1, 1, 5), grad=False), (1, 3))
    np.testing.assert_allclose(host(y.data).ravel(), [0.5, 2.0, 3.5])


# =========================================================================== pad
PADS = [((1, 2), "constant", 0.0), ((1, 2, 0, 3), "constant", 1.5), ((-1, 2, 1, -2), "constant", 0.0),
        ((1, 2, 3, 1, 1, 0), "constant", -2.0), ((2, 1, 3, 0), "reflect", None),
        ((2, 3, 1, 0), "replicate", None), ((2, 3, 1, 4), "circular", None), ((0, 0, 0, 0), "constant", 0.0)]


@pytest.mark.parametrize("p, mode, value", PADS)
def test_pad_parity_with_torch(xp, p, mode, value):
    tf = torch_or_skip().nn.functional
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 6))
    kw = dict(mode=mode) if value is None else dict(mode=mode, value=value)
    _parity(xp, lambda x: C.pad(x, p, **kw), lambda x: tf.pad(x, p, **kw), [x])


@pytest.mark.parametrize("p, mode, value", PADS)
def test_pad_gradcheck(xp, p, mode, value):
    x = np.random.default_rng(1).standard_normal((2, 2, 6, 5))
    gradcheck(lambda x: C.pad(x.transpose(2, 3), p, mode=mode, value=value), t64(xp, x))


def test_pad_then_crop_is_identity(xp):
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5))
    y = C.pad(C.pad(t64(xp, x, grad=False), (1, 2, 3, 4), value=9.0), (-1, -2, -3, -4))
    np.testing.assert_array_equal(host(y.data), x)
    y = C.pad(t64(xp, x, grad=False), (1, 2, 3, 4), value=9.0)
    assert host(y.data)[:, :, :3].min() == 9.0 and y.shape == (2, 3, 11, 8)


# =========================================================================== interpolate
INTERP = [dict(size=(5, 13), mode="bilinear", align_corners=False),
          dict(size=(5, 13), mode="bilinear", align_corners=True),
          dict(size=(3, 4), mode="bilinear", align_corners=False),
          dict(size=(3, 4), mode="bilinear", align_corners=True),
          dict(scale_factor=1.7, mode="bilinear"),
          dict(scale_factor=(0.5, 2.5), mode="bilinear", align_corners=True),
          dict(scale_factor=1.2, mode="bilinear"),          # output size = input size: a copy
          dict(size=(1, 1), mode="bilinear", align_corners=True),
          dict(size=(5, 13), mode="bicubic"), dict(size=(3, 4), mode="bicubic", align_corners=True),
          dict(scale_factor=1.3, mode="bicubic"),
          dict(size=(5, 13)), dict(scale_factor=2.3), dict(size=(3, 4), mode="area"),
          dict(size=(5, 13), mode="bilinear", antialias=True), dict(size=(3, 4), mode="bilinear", antialias=True),
          dict(size=(11, 13), mode="bicubic", antialias=True), dict(size=(3, 4), mode="bicubic", antialias=True),
          dict(scale_factor=(0.4, 1.7), mode="bicubic", align_corners=True, antialias=True)]


@pytest.mark.parametrize("kw", INTERP, ids=str)
def test_interpolate_parity_with_torch(xp, kw):
    tf = torch_or_skip().nn.functional
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 9))
    _parity(xp, lambda x: C.interpolate(x, **kw), lambda x: tf.interpolate(x, **kw), [x])


@pytest.mark.parametrize("kw", INTERP[::3], ids=str)
def test_interpolate_gradcheck(xp, kw):
    x = np.random.default_rng(1).standard_normal((1, 2, 7, 9))
    gradcheck(lambda x: C.interpolate(x, **kw), t64(xp, x))


def test_interpolate_closed_forms(xp):
    """Upsampling a constant image keeps it constant; align_corners=True keeps the corners."""
    X = t64(xp, np.full((1, 1, 3, 4), 2.5), grad=False)
    for mode in ("bilinear", "bicubic", "nearest"):
        np.testing.assert_allclose(host(C.interpolate(X, size=(7, 5), mode=mode).data), 2.5, atol=1e-12)
    x = np.random.default_rng(0).standard_normal((1, 1, 3, 4))
    y = host(C.interpolate(t64(xp, x, grad=False), size=(8, 9), mode="bilinear", align_corners=True).data)
    np.testing.assert_allclose(y[0, 0, [0, 0, -1, -1], [0, -1, 0, -1]], x[0, 0, [0, 0, -1, -1], [0, -1, 0, -1]])


# =========================================================================== dtype, shapes, errors
OPS = [lambda x, w: C.conv2d(x, w, padding=1), lambda x, w: C.conv2d(x, w[:, :1], padding=1, groups=4),
       lambda x, w: C.avg_pool2d(x, 2), lambda x, w: C.max_pool2d(x, 3, 2, 1),
       lambda x, w: C.adaptive_avg_pool2d(x, 3), lambda x, w: C.pad(x, (1, 1, 2, 0)),
       lambda x, w: C.pad(x, (1, 1, 2, 0), mode="reflect"),
       lambda x, w: C.interpolate(x, size=(7, 3), mode="bilinear"),
       lambda x, w: C.interpolate(x, size=(7, 3), mode="bicubic", antialias=True)]


@pytest.mark.parametrize("op", range(len(OPS)))
def test_float32_stays_float32(xp, op):
    rng = np.random.default_rng(0)
    x = Tensor(xp.asarray(rng.standard_normal((2, 4, 5, 6)), dtype=np.float32), requires_grad=True)
    w = Tensor(xp.asarray(rng.standard_normal((4, 4, 3, 3)), dtype=np.float32), requires_grad=True)
    y = OPS[op](x, w)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32
    if w.grad is not None:
        assert w.grad.dtype == np.float32


def test_unbatched_input_matches_batched(xp):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((4, 6, 5)), rng.standard_normal((2, 4, 3, 3))
    X3, X4, W = t64(xp, x, grad=False), t64(xp, x[None], grad=False), t64(xp, w, grad=False)
    for f in (lambda x: C.conv2d(x, W, stride=2), lambda x: C.avg_pool2d(x, 2), lambda x: C.max_pool2d(x, 2),
              lambda x: C.adaptive_avg_pool2d(x, (2, 3))):
        np.testing.assert_array_equal(host(f(X3).data), host(f(X4).data)[0])


@pytest.mark.parametrize("call, match", [
    (lambda x, w: C.conv2d(x[0, 0], w), r"4-D \(N, C, H, W\).*got shape \(6, 6\)"),
    (lambda x, w: C.conv2d(x, w[:, :2]), r"input has 4 channels.*groups=1 expects.*2"),
    (lambda x, w: C.conv2d(x, Tensor(np.zeros((3, 2, 3, 3))), groups=2), r"groups=2 must divide.*output channels \(3"),
    (lambda x, w: C.conv2d(x, w, groups=3), r"groups=3 must divide.*input channels \(4\)"),
    (lambda x, w: C.conv2d(x, Tensor(np.zeros((2, 4, 7, 7)))), r"kernel 7x7.*larger than the padded input 6x6"),
    (lambda x, w: C.conv2d(x, Tensor(np.zeros((2, 4, 3, 3))), dilation=3), r"spans 7x7.*padded input 6x6"),
    (lambda x, w: C.conv2d(x, w, padding="same", stride=2), r"'same' needs stride 1"),
    (lambda x, w: C.conv2d(x, w, Tensor(np.zeros(3))), r"bias must have shape \(2,\)"),
    (lambda x, w: C.conv2d(x, w, stride=0), r"stride must be positive"),
    (lambda x, w: C.avg_pool2d(x, 2, padding=2), r"padding.*half"),
    (lambda x, w: C.max_pool2d(x, 7), r"larger than the padded input"),
    (lambda x, w: C.max_pool2d(x[0, 0], 2), r"4-D"),
    (lambda x, w: C.pad(x, (1, 2, 3)), r"even length"),
    (lambda x, w: C.pad(x, (6, 0), mode="reflect"), r"smaller than the dim's size 6"),
    (lambda x, w: C.interpolate(x, size=(2, 2), scale_factor=2), r"exactly one"),
])
def test_errors_name_the_problem(call, match):
    x = Tensor(np.zeros((1, 4, 6, 6)))
    w = Tensor(np.zeros((2, 4, 3, 3)))
    with pytest.raises(ValueError, match=match):
        call(x, w)
