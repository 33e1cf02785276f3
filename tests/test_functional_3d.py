"""The engine's extra dimension (functional/convnd.py, norm.instance_norm, conv.interpolate on 5-D):
conv1d/conv3d, conv_transpose2d/3d, max/avg_pool3d, instance_norm, trilinear/nearest resizing.
Finite differences in float64 on NumPy and CuPy, hypothesis shapes, closed forms (an explicit
loop, the adjoint identity, 1×1×1 conv as a matmul) and float64 parity with PyTorch."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minivit as mv
from minivit import Tensor
from minivit import functional as F
from minivit.complexity import count_macs
from minivit.testing import gradcheck

from conftest import torch_or_skip


def host(a):
    return mv.backend.to_numpy(a)


def t64(xp, arr, grad=True):
    return Tensor(xp.asarray(arr, dtype=np.float64), requires_grad=grad)


def _parity(xp, ours, theirs, arrays, atol=1e-10):
    """Run ours (minivit) and theirs (torch) on the same float64 arrays; compare the output
    and the gradient of every input (input, weight, bias) under the same random weighting."""
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


def _rand(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in shapes]


def _span(k, d):
    return d * (k - 1) + 1


# =========================================================================== conv3d
@st.composite
def conv3d_case(draw):
    """A random conv3d: groups, size-1 dims, per-dim stride, padding and dilation, bias or not."""
    groups = draw(st.integers(1, 2))
    cg, og = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    spatial = tuple(draw(st.integers(1, 4)) for _ in range(3))
    k = tuple(draw(st.integers(1, 2)) for _ in range(3))
    s = tuple(draw(st.integers(1, 2)) for _ in range(3))
    p = tuple(draw(st.integers(0, 1)) for _ in range(3))
    d = tuple(draw(st.integers(1, 2)) for _ in range(3))
    assume(all(_span(ki, di) <= n + 2 * pi for ki, di, n, pi in zip(k, d, spatial, p)))
    return dict(x=(draw(st.integers(1, 2)), groups * cg) + spatial, w=(groups * og, cg) + k,
                kw=dict(stride=s, padding=p, dilation=d, groups=groups), bias=draw(st.booleans()))


def _conv_arrays(case, seed):
    shapes = [case["x"], case["w"]] + ([case["w"][0]] if case["bias"] else [])
    return _rand(seed, *shapes)


@given(case=conv3d_case(), seed=st.integers(0, 2**16))
@settings(deadline=None, max_examples=12)
def test_conv3d_gradcheck(xp, case, seed):
    gradcheck(lambda *a: F.conv3d(*a, **case["kw"]), *[t64(xp, a) for a in _conv_arrays(case, seed)])


@given(case=conv3d_case(), seed=st.integers(0, 2**16))
@settings(deadline=None, max_examples=20)
def test_conv3d_parity_with_torch_random_shapes(xp, case, seed):
    tf = torch_or_skip().nn.functional
    _parity(xp, lambda *a: F.conv3d(*a, **case["kw"]), lambda *a: tf.conv3d(*a, **case["kw"]),
            _conv_arrays(case, seed))


CONV3D_CASES = [  # (x shape, w shape, kwargs)
    ((2, 3, 4, 6, 6), (4, 3, 2, 3, 3), dict(padding=1)),
    ((1, 3, 4, 8, 8), (6, 3, 2, 4, 4), dict(stride=(2, 4, 4))),                # a video tubelet embedding
    ((2, 4, 5, 5, 5), (4, 1, 3, 3, 3), dict(padding=1, groups=4)),              # depthwise
    ((2, 4, 5, 6, 4), (6, 2, 3, 2, 2), dict(stride=(2, 1, 1), padding=(1, 0, 1), dilation=(1, 2, 1), groups=2)),
    ((2, 3, 5, 4, 6), (5, 3, 2, 3, 4), dict(padding="same", dilation=(2, 1, 1))),  # odd total: extra at the end
    ((2, 3, 5, 4, 6), (5, 3, 3, 3, 3), dict(padding="valid")),
    ((3, 4, 5, 6), (2, 3, 3, 3, 3), dict(padding=1)),                           # unbatched (C, D, H, W)
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("xs, ws, kw", CONV3D_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv3d_parity_with_torch(xp, xs, ws, kw, bias):
    tf = torch_or_skip().nn.functional
    arrays = _rand(0, xs, ws, *([(ws[0],)] if bias else []))
    _parity(xp, lambda *a: F.conv3d(*a, **kw), lambda *a: tf.conv3d(*a, **kw), arrays)


def test_conv3d_matches_an_explicit_loop(xp):
    """y[n, o, t, i, j] = Σ over the group's channels and the kernel of x_pad · W, plus b, written
    as loops over every output element (no torch needed)."""
    x, w, b = _rand(3, (1, 4, 4, 5, 3), (4, 2, 2, 3, 2), (4,))
    s, p, d, G = (2, 1, 1), (1, 0, 1), (1, 2, 1), 2
    y = host(F.conv3d(t64(xp, x, False), t64(xp, w, False), t64(xp, b, False), s, p, d, G).data)
    xpad = np.pad(x, [(0, 0), (0, 0)] + [(pi, pi) for pi in p])
    Og, Cg = 2, 2
    expect = np.zeros(y.shape)
    for o in range(4):
        g = o // Og
        for t, i, j in np.ndindex(*y.shape[2:]):
            acc = b[o]
            for c, a, bb, cc in np.ndindex(Cg, 2, 3, 2):
                pos = (t * s[0] + a * d[0], i * s[1] + bb * d[1], j * s[2] + cc * d[2])
                acc += xpad[(0, g * Cg + c) + pos] * w[o, c, a, bb, cc]
            expect[0, o, t, i, j] = acc
    np.testing.assert_allclose(y, expect, atol=1e-12)


def test_conv3d_1x1x1_is_a_matmul_over_channels(xp):
    x, w = _rand(4, (2, 3, 2, 3, 4), (5, 3, 1, 1, 1))
    y = F.conv3d(t64(xp, x, False), t64(xp, w, False))
    np.testing.assert_allclose(host(y.data), np.einsum("ncdhw,oc->nodhw", x, w[:, :, 0, 0, 0]), atol=1e-12)


def test_conv1d_parity_with_torch(xp):
    tf = torch_or_skip().nn.functional
    for kw in (dict(padding="same", dilation=2), dict(stride=2, padding=1, groups=3)):
        arrays = _rand(5, (2, 3, 9), (6, 3 // kw.get("groups", 1), 4), (6,))
        _parity(xp, lambda *a: F.conv1d(*a, **kw), lambda *a: tf.conv1d(*a, **kw), arrays)


# =========================================================================== conv_transpose2d / 3d
@st.composite
def conv_transpose_case(draw, nd):
    """A random transposed conv, output_padding < max(stride, dilation) as PyTorch requires."""
    groups = draw(st.integers(1, 2))
    cg, og = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    spatial = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    k = tuple(draw(st.integers(1, 3 if nd == 2 else 2)) for _ in range(nd))
    s = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    d = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    p = tuple(draw(st.integers(0, 1)) for _ in range(nd))
    op = tuple(draw(st.integers(0, max(si, di) - 1)) for si, di in zip(s, d))
    out = [(n - 1) * si - 2 * pi + di * (ki - 1) + oi + 1 for n, si, pi, di, ki, oi in zip(spatial, s, p, d, k, op)]
    assume(min(out) >= 1)
    return dict(x=(draw(st.integers(1, 2)), groups * cg) + spatial, w=(groups * cg, og) + k,
                kw=dict(stride=s, padding=p, output_padding=op, groups=groups, dilation=d),
                bias=draw(st.booleans()), b=(groups * og,))


def _ct_arrays(case, seed):
    return _rand(seed, case["x"], case["w"], *([case["b"]] if case["bias"] else []))


_CT = {2: "conv_transpose2d", 3: "conv_transpose3d"}


@pytest.mark.parametrize("nd", [2, 3])
@given(data=st.data(), seed=st.integers(0, 2**16))
@settings(deadline=None, max_examples=12)
def test_conv_transpose_gradcheck(xp, nd, data, seed):
    case = data.draw(conv_transpose_case(nd))
    fn = getattr(F, _CT[nd])
    gradcheck(lambda *a: fn(*a, **case["kw"]), *[t64(xp, a) for a in _ct_arrays(case, seed)])


@pytest.mark.parametrize("nd", [2, 3])
@given(data=st.data(), seed=st.integers(0, 2**16))
@settings(deadline=None, max_examples=20)
def test_conv_transpose_parity_with_torch_random_shapes(xp, nd, data, seed):
    tf = torch_or_skip().nn.functional
    case = data.draw(conv_transpose_case(nd))
    ours, theirs = getattr(F, _CT[nd]), getattr(tf, _CT[nd])
    _parity(xp, lambda *a: ours(*a, **case["kw"]), lambda *a: theirs(*a, **case["kw"]), _ct_arrays(case, seed))


CT_CASES = [  # (x shape, w shape, kwargs)
    ((2, 4, 5, 5), (4, 3, 2, 2), dict(stride=2)),                                  # UNet's 2× up-conv
    ((2, 4, 3, 4), (4, 2, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ((1, 4, 3, 3), (4, 1, 3, 3), dict(stride=2, padding=1, groups=4)),             # depthwise
    ((1, 2, 3, 4), (2, 3, 3, 2), dict(output_padding=1, dilation=2)),   # output_padding ≥ stride, < dilation
    ((4, 3, 3), (4, 2, 2, 2), dict(stride=(1, 2))),                                # unbatched (C, H, W)
    ((2, 4, 2, 3, 3), (4, 3, 2, 2, 2), dict(stride=2)),                            # UNETR's 2× up-conv
    ((1, 4, 2, 3, 2), (4, 2, 3, 3, 2), dict(stride=(1, 2, 2), padding=(1, 1, 0), output_padding=(0, 1, 1), groups=2)),
    ((1, 2, 2, 2, 3), (2, 2, 2, 2, 2), dict(dilation=(2, 1, 1), padding=1)),
]


@pytest.mark.parametrize("xs, ws, kw", CT_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose_parity_with_torch(xp, xs, ws, kw, bias):
    tf = torch_or_skip().nn.functional
    name = _CT[len(ws) - 2]
    G = kw.get("groups", 1)
    arrays = _rand(0, xs, ws, *([(ws[1] * G,)] if bias else []))
    _parity(xp, lambda *a: getattr(F, name)(*a, **kw), lambda *a: getattr(tf, name)(*a, **kw), arrays)


@pytest.mark.parametrize("nd", [2, 3])
def test_conv_transpose_is_the_adjoint_of_conv(xp, nd):
    """⟨conv(z, W), x⟩ = ⟨z, conv_transpose(x, W)⟩ for every z and x: the transposed conv is the
    conv's adjoint (with output_padding, the extra end positions are ones the conv never reads)."""
    conv, convt = (F.conv2d, F.conv_transpose2d) if nd == 2 else (F.conv3d, F.conv_transpose3d)
    s, p, d, G = (2,) * nd, (1,) * nd, (1,) * (nd - 1) + (2,), 2
    x, w = _rand(6, (2, 4) + (3,) * nd, (4, 3) + (3,) * nd)       # W (C_in=4, C_out/G=3, k...)
    X, Wt = t64(xp, x, False), t64(xp, w, False)
    y = convt(X, Wt, stride=s, padding=p, output_padding=(1,) * nd, groups=G, dilation=d)   # (2, 6, ...)
    z = np.random.default_rng(7).standard_normal(y.shape)
    cz = conv(t64(xp, z, False), Wt, stride=s, padding=p, dilation=d, groups=G)
    assert cz.shape == x.shape
    np.testing.assert_allclose(float((host(cz.data) * x).sum()), float((z * host(y.data)).sum()), rtol=1e-12)


# =========================================================================== pooling 3-D
@st.composite
def pool3d_case(draw, with_dilation=False):
    spatial = tuple(draw(st.integers(1, 5)) for _ in range(3))
    k = tuple(draw(st.integers(1, 3)) for _ in range(3))
    s = tuple(draw(st.integers(1, 3)) for _ in range(3))
    p = tuple(draw(st.integers(0, ki // 2)) for ki in k)
    d = tuple(draw(st.integers(1, 2)) for _ in range(3)) if with_dilation else (1, 1, 1)
    assume(all(_span(ki, di) <= n + 2 * pi for ki, di, n, pi in zip(k, d, spatial, p)))
    kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=draw(st.booleans()))
    if with_dilation:
        kw["dilation"] = d
    return (draw(st.integers(1, 2)), 2) + spatial, kw


def _distinct(shape, seed):
    """Values 0.1 apart in random order: no ties, so no finite-difference step flips an argmax."""
    n = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(n).reshape(shape) * 0.1


@given(case=pool3d_case(with_dilation=True), seed=st.integers(0, 2**16))
@settings(deadline=None, max_examples=15)
def test_max_pool3d_gradcheck(xp, case, seed):
    shape, kw = case
    x = _distinct(shape, seed)
    # a dilated window wholly in the padding gives −inf (as torch): no finite differences there
    assume(np.isfinite(host(F.max_pool3d(t64(xp, x, grad=False), **kw).data)).all())
    gradcheck(lambda x: F.max_pool3d(x, **kw), t64(xp, x))


@given(case=pool3d_case(with_dilation=True), seed=st.integers(0, 2**16), ties=st.booleans())
@settings(deadline=None, max_examples=20)
def test_max_pool3d_parity_with_torch(xp, case, seed, ties):
    """Values, gradients and indices as torch; with ties (values rounded to a few levels) the
    gradient goes to the element torch picks (the first max in window order)."""
    torch = torch_or_skip()
    shape, kw = case
    x = np.random.default_rng(seed).standard_normal(shape)
    if ties:
        x = np.round(x)
    assume(np.isfinite(host(F.max_pool3d(t64(xp, x, grad=False), **kw).data)).all())
    _parity(xp, lambda x: F.max_pool3d(x, **kw), lambda x: torch.nn.functional.max_pool3d(x, **kw), [x])
    _, idx = F.max_pool3d(t64(xp, x), return_indices=True, **kw)
    _, idx_t = torch.nn.functional.max_pool3d(torch.tensor(x), return_indices=True, **kw)
    np.testing.assert_array_equal(host(idx.data), idx_t.numpy())


@given(case=pool3d_case(), include=st.booleans(), seed=st.integers(0, 2**16))
@settings(deadline=None, max_examples=12)
def test_avg_pool3d_gradcheck(xp, case, include, seed):
    shape, kw = case
    x = np.random.default_rng(seed).standard_normal(shape)
    gradcheck(lambda x: F.avg_pool3d(x, count_include_pad=include, **kw), t64(xp, x))


@given(case=pool3d_case(), include=st.booleans(), seed=st.integers(0, 2**16))
@settings(deadline=None, max_examples=20)
def test_avg_pool3d_parity_with_torch(xp, case, include, seed):
    tf = torch_or_skip().nn.functional
    shape, kw = case
    # torch's avg_pool3d (unlike its avg_pool2d and max_pool3d) refuses a kernel larger than the
    # unpadded input; ours allows it, and test_avg_pool3d_gradcheck covers that case
    assume(all(n >= k for n, k in zip(shape[2:], kw["kernel_size"])))
    x = np.random.default_rng(seed).standard_normal(shape)
    _parity(xp, lambda x: F.avg_pool3d(x, count_include_pad=include, **kw),
            lambda x: tf.avg_pool3d(x, count_include_pad=include, **kw), [x])


def test_pool3d_closed_forms(xp):
    """kernel = stride = 2 without padding: block means and block maxima by reshaping; unbatched
    input and divisor_override as torch."""
    x = np.random.default_rng(8).standard_normal((2, 3, 4, 6, 2))
    X = t64(xp, x, grad=False)
    blocks = x.reshape(2, 3, 2, 2, 3, 2, 1, 2)
    np.testing.assert_allclose(host(F.avg_pool3d(X, 2).data), blocks.mean(axis=(3, 5, 7)), atol=1e-12)
    np.testing.assert_array_equal(host(F.max_pool3d(X, 2).data), blocks.max(axis=(3, 5, 7)))
    np.testing.assert_array_equal(host(F.max_pool3d(X[0], 2).data), blocks.max(axis=(3, 5, 7))[0])
    tf = torch_or_skip().nn.functional
    _parity(xp, lambda x: F.avg_pool3d(x, 3, 2, 1, divisor_override=5),
            lambda x: tf.avg_pool3d(x, 3, 2, 1, divisor_override=5), _rand(8, (1, 2, 4, 5, 3)))


# =========================================================================== instance_norm
IN_SHAPES = [(2, 3, 5), (2, 3, 3, 4), (2, 3, 2, 3, 2)]


@pytest.mark.parametrize("shape", IN_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_instance_norm_gradcheck(xp, shape, affine, use_input_stats):
    x, w, b, rm = _rand(9, shape, (3,), (3,), (3,))
    rv = np.random.default_rng(10).uniform(0.5, 2.0, 3)
    params = [t64(xp, w), t64(xp, b)] if affine else []

    def fn(x, *p):
        return F.instance_norm(x, xp.asarray(rm.copy()), xp.asarray(rv.copy()), *(p or (None, None)),
                               use_input_stats=use_input_stats)
    gradcheck(fn, t64(xp, x), *params)


@pytest.mark.parametrize("shape", IN_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_instance_norm_parity_with_torch(xp, shape, affine, use_input_stats):
    """Output, gradients and (with input statistics) the running statistics' update as torch."""
    torch = torch_or_skip()
    x, w, b, rm = _rand(11, shape, (3,), (3,), (3,))
    rv = np.random.default_rng(12).uniform(0.5, 2.0, 3)
    ours_rm, ours_rv = xp.asarray(rm.copy()), xp.asarray(rv.copy())
    their_rm, their_rv = torch.tensor(rm.copy()), torch.tensor(rv.copy())
    kw = dict(use_input_stats=use_input_stats, momentum=0.3, eps=1e-4)
    _parity(xp, lambda x, *p: F.instance_norm(x, ours_rm, ours_rv, *(p or (None, None)), **kw),
            lambda x, *p: torch.nn.functional.instance_norm(x, their_rm, their_rv, *(p or (None, None)), **kw),
            [x, w, b] if affine else [x])
    np.testing.assert_allclose(host(ours_rm), their_rm.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(host(ours_rv), their_rv.numpy(), rtol=1e-12, atol=1e-14)
    if use_input_stats:
        assert not np.allclose(host(ours_rm), rm)          # the update did happen


@given(shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
                       st.integers(1, 3)), seed=st.integers(0, 2**16))
@settings(deadline=None, max_examples=10)
def test_instance_norm_gradcheck_random_shapes(xp, shape, seed):
    assume(np.prod(shape[2:]) > 1)
    x = np.random.default_rng(seed).standard_normal(shape)
    w, b = _rand(seed + 1, shape[1:2], shape[1:2])
    gradcheck(lambda x, w, b: F.instance_norm(x, weight=w, bias=b), t64(xp, x), t64(xp, w), t64(xp, b))


def test_instance_norm_normalises_each_instance(xp):
    """Each (sample, channel) slice comes out with mean 0 and biased variance 1/(1 + eps/var)."""
    x = np.random.default_rng(13).standard_normal((2, 3, 4, 5, 2)) * 3 + 1
    y = host(F.instance_norm(t64(xp, x, False), eps=1e-5).data)
    np.testing.assert_allclose(y.mean(axis=(2, 3, 4)), 0, atol=1e-12)
    var = x.var(axis=(2, 3, 4))
    np.testing.assert_allclose(y.var(axis=(2, 3, 4)), var / (var + 1e-5), rtol=1e-12)


# =========================================================================== interpolate on 5-D
INTERP3D = [dict(size=(5, 3, 6)), dict(scale_factor=2), dict(scale_factor=(1.5, 0.6, 1.7)),
            dict(size=(3, 7, 2), mode="trilinear"), dict(scale_factor=(2, 1.5, 0.5), mode="trilinear"),
            dict(size=(1, 6, 5), mode="trilinear", align_corners=True),
            dict(scale_factor=2, mode="trilinear", align_corners=True),
            dict(scale_factor=(1.3, 1.7, 0.7), mode="trilinear", recompute_scale_factor=True)]


@pytest.mark.parametrize("kw", INTERP3D)
def test_interpolate_5d_parity_with_torch(xp, kw):
    tf = torch_or_skip().nn.functional
    x = _rand(14, (2, 2, 3, 4, 3))
    _parity(xp, lambda x: F.interpolate(x, **kw), lambda x: tf.interpolate(x, **kw), x)


@pytest.mark.parametrize("kw", INTERP3D)
def test_interpolate_5d_gradcheck(xp, kw):
    x = _rand(15, (1, 2, 3, 4, 3))[0]
    gradcheck(lambda x: F.interpolate(x, **kw), t64(xp, x))


@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
       out=st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)),
       mode=st.sampled_from(["nearest", "trilinear"]), ac=st.booleans(), seed=st.integers(0, 2**16))
@settings(deadline=None, max_examples=20)
def test_interpolate_5d_random_shapes(xp, shape, out, mode, ac, seed):
    tf = torch_or_skip().nn.functional
    kw = dict(size=out, mode=mode, align_corners=ac if mode == "trilinear" else None)
    x = np.random.default_rng(seed).standard_normal((1, 2) + shape)
    _parity(xp, lambda x: F.interpolate(x, **kw), lambda x: tf.interpolate(x, **kw), [x])
    gradcheck(lambda x: F.interpolate(x, **kw), t64(xp, x))


def test_interpolate_5d_closed_forms(xp):
    """A constant volume stays constant; nearest ×2 repeats every voxel twice per dim;
    trilinear with align_corners reproduces a linear function of the coordinates exactly."""
    X = t64(xp, np.full((1, 1, 2, 3, 2), 2.5), False)
    for mode in ("nearest", "trilinear"):
        np.testing.assert_allclose(host(F.interpolate(X, size=(4, 5, 3), mode=mode).data), 2.5, atol=1e-12)
    x = np.random.default_rng(16).standard_normal((1, 2, 2, 3, 2))
    y = host(F.interpolate(t64(xp, x, False), scale_factor=2).data)
    np.testing.assert_array_equal(y, x.repeat(2, 2).repeat(2, 3).repeat(2, 4))
    d, h, w = np.meshgrid(np.arange(3.0), np.arange(4.0), np.arange(2.0), indexing="ij")
    lin = (1 + 2 * d - h + 0.5 * w)[None, None]
    y = host(F.interpolate(t64(xp, lin, False), size=(5, 7, 3), mode="trilinear", align_corners=True).data)
    D, H, W = np.meshgrid(np.linspace(0, 2, 5), np.linspace(0, 3, 7), np.linspace(0, 1, 3), indexing="ij")
    np.testing.assert_allclose(y[0, 0], 1 + 2 * D - H + 0.5 * W, atol=1e-12)


# =========================================================================== MACs
def test_macs_of_conv3d_and_transposed_convs(xp):
    """conv3d: every output value sums C_in/groups·kD·kH·kW products, as conv2d's are counted;
    a transposed conv: every input value is spread by C_out/groups·Πk products."""
    x = t64(xp, np.zeros((2, 4, 4, 6, 6)), False)
    w = t64(xp, np.zeros((8, 2, 3, 3, 3)), False)
    r = count_macs(lambda x: F.conv3d(x, w, padding=1, groups=2), x)
    assert r.by_kind["conv"] == (2 * 8 * 4 * 6 * 6) * (2 * 27)        # outputs × (C_in/G · 27)
    wt = t64(xp, np.zeros((4, 3, 2, 2, 2)), False)                     # C_in 4, C_out/G 3
    r = count_macs(lambda x: F.conv_transpose3d(x, wt, stride=2), x)
    assert r.by_kind["conv"] == (2 * 4 * 4 * 6 * 6) * (3 * 8)         # inputs × (C_out/G · 8)
    w2 = t64(xp, np.zeros((4, 5, 2, 2)), False)
    r = count_macs(lambda x: F.conv_transpose2d(x, w2, stride=2), t64(xp, np.zeros((1, 4, 3, 3)), False))
    assert r.total == 1 * 4 * 3 * 3 * 5 * 4 == 720


# =========================================================================== errors
@pytest.mark.parametrize("call, match", [
    (lambda X: F.conv3d(X[0, 0], mv.zeros(2, 3, 1, 1, 1, dtype=np.float64)), r"5-D \(N, C, D, H, W\).*got shape"),
    (lambda X: F.conv3d(X, mv.zeros(2, 2, 1, 1, 1, dtype=np.float64)), r"3 channels.*weight.shape\[1\]"),
    (lambda X: F.conv3d(X, mv.zeros(2, 3, 9, 1, 1, dtype=np.float64)), r"larger than the padded input"),
    (lambda X: F.conv3d(X, mv.zeros(4, 1, 1, 1, 1, dtype=np.float64), groups=2), r"groups=2 must divide"),
    (lambda X: F.conv3d(X, mv.zeros(2, 3, 1, 1, 1, dtype=np.float64), padding="same", stride=2), r"stride 1"),
    (lambda X: F.conv3d(X, mv.zeros(2, 3, 1, 1, 1)), r"float64 but weight is float32"),
    (lambda X: F.conv_transpose3d(X, mv.zeros(3, 2, 2, 2, 2, dtype=np.float64), stride=2, output_padding=2),
     r"output_padding .* smaller than either stride"),
    (lambda X: F.conv_transpose3d(X, mv.zeros(2, 2, 2, 2, 2, dtype=np.float64)), r"weight.shape\[0\] is 2"),
    (lambda X: F.conv_transpose3d(X, mv.zeros(3, 2, 1, 1, 1, dtype=np.float64), padding=3), r"not positive"),
    (lambda X: F.max_pool3d(X, 2, padding=2), r"half the kernel size"),
    (lambda X: F.avg_pool3d(X, (2, 2)), r"tuple of 3 ints"),
    (lambda X: F.instance_norm(X[:, :, :1, :1, :1]), r"more than 1 spatial element"),
    (lambda X: F.instance_norm(X, use_input_stats=False), r"needs running_mean and running_var"),
    (lambda X: F.instance_norm(X[0, 0, 0]), r"at least one spatial dim"),
    (lambda X: F.interpolate(X, scale_factor=2, mode="bilinear"), r"'nearest' or 'trilinear'"),
    (lambda X: F.interpolate(X[0], scale_factor=2, mode="trilinear"), r"needs a 5-D"),
    (lambda X: F.interpolate(X, size=(2, 2)), r"3 numbers"),
])
def test_errors_are_one_clear_line(call, match):
    X = Tensor(np.zeros((1, 3, 4, 4, 4)))
    with pytest.raises((ValueError, TypeError), match=match) as e:
        call(X)
    assert "\n" not in str(e.value)
