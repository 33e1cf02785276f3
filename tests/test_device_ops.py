"""Device operations that a step must not spend, counted on the strict CuPy stand-in, and the
rule that lets the engine skip them safely: a leaf takes its gradient array without a copy
only when no other gradient shares that memory.

The counts are exact (each op's launches are fixed by its code), so a change that adds a copy
or misses a fused kernel fails here, long before a GPU shows it as time."""
import numpy as np
import pytest

import minivit.functional as F
from minivit import Tensor, backend
from minivit.functional import fused_cuda
from minivit.functional.activation import LogSoftmax, Softmax
from minivit.testing import strict_cupy

standin = pytest.mark.skipif(not backend.is_strict_standin(),
                             reason=strict_cupy.available() or "a real CuPy: launches are not counted")


def leaf(xp, *shape):
    return Tensor(xp.asarray(np.random.randn(*shape)), requires_grad=True)


def owner(a):
    while getattr(a, "base", None) is not None:
        a = a.base
    return a


def shares(a, b):
    return owner(a) is owner(b)


# --------------------------------------------------------------------------- the no-copy rule
def test_add_gives_each_leaf_its_own_array(xp):
    a, b = leaf(xp, 3), leaf(xp, 3)
    (a + b).backward(xp.ones(3))
    assert not shares(a.grad, b.grad)
    a.grad *= 10                                       # PyTorch's habit: in place on one .grad
    np.testing.assert_allclose(backend.to_numpy(b.grad), np.ones(3))


def test_views_of_one_gradient_are_copied_for_all_but_the_last(xp):
    # c's gradient reaches a as a reshape (a view) and b as the array itself: one memory, two leaves
    a, b = leaf(xp, 2, 3), leaf(xp, 6)
    c = a.reshape(6) + b
    g = xp.asarray(np.arange(6.0))
    c.backward(g)
    assert not shares(a.grad, b.grad)
    assert not shares(a.grad, g) and not shares(b.grad, g)     # the caller's array is never taken
    a.grad *= 0
    np.testing.assert_allclose(backend.to_numpy(b.grad), np.arange(6.0))


def test_slices_of_one_gradient_stay_apart(xp):
    # cat's backward hands out slices (views) of one array
    a, b = leaf(xp, 2), leaf(xp, 3)
    F.cat([a, b], dim=0).backward(xp.ones(5))
    assert not shares(a.grad, b.grad)
    b.grad *= 3
    np.testing.assert_allclose(backend.to_numpy(a.grad), np.ones(2))


def test_a_leafs_gradient_is_its_own_array(xp):
    # w's gradient is Gᵀ X, an array no one else holds (taken without a copy: counted below)
    x = Tensor(xp.asarray(np.random.randn(4, 3)))
    w = leaf(xp, 5, 3)
    y = F.linear(x, w)
    y.backward(xp.ones((4, 5)))
    expected = np.ones((4, 5)).T @ backend.to_numpy(x.data)
    np.testing.assert_allclose(backend.to_numpy(w.grad), expected)
    assert owner(w.grad) is w.grad


def test_retained_gradient_of_an_intermediate_is_its_own(xp):
    a = leaf(xp, 3)
    h = a * 2.0
    h.retain_grad()
    (h + 0.0).backward(xp.ones(3))
    h.grad *= 100
    np.testing.assert_allclose(backend.to_numpy(a.grad), np.full(3, 2.0))


def test_a_second_backward_accumulates_into_a_new_array(xp):
    x = Tensor(xp.asarray(np.random.randn(4, 3)))
    w = leaf(xp, 5, 3)
    F.linear(x, w).backward(xp.ones((4, 5)))
    first = w.grad
    F.linear(x, w).backward(xp.ones((4, 5)))
    np.testing.assert_allclose(backend.to_numpy(w.grad), 2 * backend.to_numpy(first))
    assert w.grad is not first


def test_model_gradients_never_share_memory(xp):
    from minivit.models import create_model
    model = create_model("vit_nano", num_classes=10).to(device="cuda" if xp is not np else "cpu")
    x = Tensor(xp.asarray(np.random.randn(2, 3, 32, 32).astype(np.float32)))
    F.cross_entropy(model(x), Tensor(xp.asarray(np.array([1, 2])))).backward()
    owners = [id(owner(p.grad)) for p in model.parameters()]
    assert all(p.grad is not None for p in model.parameters())
    assert len(set(owners)) == len(owners)


# --------------------------------------------------------------------------- counted launches
def _launches(fn):
    with strict_cupy.count_launches() as log:
        fn()
    return [kind for _, _, kind in log]


@standin
@pytest.mark.parametrize("op", [Softmax, LogSoftmax])
def test_softmax_over_minus_one_takes_the_fused_kernels(op):
    xp = backend.xp_for("cuda")
    x = xp.asarray(np.random.randn(2, 3, 4, 5).astype(np.float32))
    g = xp.ones_like(x)
    for dim in (-1, 3):
        f = op(dim)
        fwd = _launches(lambda: f.forward(x))
        bwd = _launches(lambda: f.backward(g))
        assert fwd == ["RawKernel softmax_forward"], (dim, fwd)
        assert bwd == ["RawKernel softmax_backward"], (dim, bwd)


def _f32_leaves(xp, n, *shape):
    rng = np.random.default_rng(len(shape))
    return [Tensor(xp.asarray(rng.standard_normal(shape).astype(np.float32)), requires_grad=True) for _ in range(n)]


@standin
@pytest.mark.parametrize("masked", [False, True])
def test_attention_uses_the_fused_softmax_and_scales_once(masked):
    xp = backend.xp_for("cuda")
    q, k, v = _f32_leaves(xp, 3, 2, 2, 5, 4)
    mask = Tensor(xp.asarray(np.random.default_rng(1).standard_normal((5, 5)).astype(np.float32)),
                  requires_grad=True) if masked else None           # a learned bias (Swin's)
    out = []
    fwd = _launches(lambda: out.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))
    g = xp.ones((2, 2, 5, 4), dtype=np.float32)
    bwd = _launches(lambda: out[0].backward(g))
    assert fwd.count("RawKernel softmax_forward") == 1 and bwd.count("RawKernel softmax_backward") == 1
    if not masked:
        # Q Kᵀ, the softmax kernel taking c·S, A V; dV = Aᵀ dO, dA = dO Vᵀ, the kernel giving c·dS,
        # dQ, dK: no copies into the leaves
        assert len(fwd) == 3 and len(bwd) == 5, (fwd, bwd)
    else:
        # the bias added in the kernel too, after the scale; backward's kernel writes dS (the
        # bias's gradient) beside c·dS, and the (5, 5) bias sums dS over the batch and heads
        assert len(fwd) == 3 and len(bwd) == 6, (fwd, bwd)


@standin
@pytest.mark.parametrize("mask_shape", [None, (7, 7), (1, 3, 7, 7), (4, 3, 7, 7), (4, 1, 1, 7)], ids=str)
def test_scale_in_the_softmax_kernel_changes_no_bit(mask_shape):
    """The kernels' c·S + M and c·dS (and dS, the bias's gradient) round as the separate passes do:
    fused and reference agree exactly. Scores (2, 4, 3, 7, 7): a (4, 3, 7, 7) bias broadcasts over
    the first dim as Swin's (nW, h, N, N) over the images; a (4, 1, 1, 7) one is not a trailing
    block of the scores and takes the separate passes (still equal)."""
    xp = backend.xp_for("cuda")
    results = []
    for fused in (True, False):
        q, k, v = _f32_leaves(xp, 3, 2, 4, 3, 7, 8)
        mask = None if mask_shape is None else Tensor(
            xp.asarray(np.random.default_rng(1).standard_normal(mask_shape).astype(np.float32)), requires_grad=True)
        with fused_cuda.use_fused(fused):
            calls = _launches(lambda: results.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)))
            o = results.pop()
            o.backward(xp.asarray(np.random.default_rng(2).standard_normal(o.shape).astype(np.float32)))
        if fused:
            in_kernel = mask_shape is None or fused_cuda.bias_fits((2, 4, 3, 7, 7), mask_shape)
            assert len(calls) == (3 if in_kernel else 5), calls
        results.append([backend.to_numpy(a) for a in (o.data, q.grad, k.grad, v.grad)]
                       + ([] if mask is None else [backend.to_numpy(mask.grad)]))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_bias_fits_takes_trailing_blocks_only():
    assert fused_cuda.bias_fits((2, 4, 3, 7, 7), (4, 3, 7, 7))
    assert fused_cuda.bias_fits((2, 4, 3, 7, 7), (1, 1, 7, 7))
    assert fused_cuda.bias_fits((2, 4, 3, 7, 7), (7,))
    assert not fused_cuda.bias_fits((2, 4, 3, 7, 7), (4, 1, 7, 7))     # a broadcast dim inside
    assert not fused_cuda.bias_fits((2, 4, 3, 7, 7), (3, 7, 1))
    assert not fused_cuda.bias_fits((3, 7, 7), (2, 3, 7, 7))            # larger than the scores


@standin
def test_packed_attention_lays_out_its_gradient_in_one_copy():
    xp = backend.xp_for("cuda")
    (qkv,) = _f32_leaves(xp, 1, 2, 5, 3 * 8)
    out = F.qkv_attention(qkv, 2)
    g = xp.ones((2, 5, 8), dtype=np.float32)
    bwd = _launches(lambda: out.backward(g))
    # dV, dA, the softmax kernel, dQ, dK (written into one buffer), one copy to (B, N, 3, h, d)
    assert len(bwd) == 6, bwd
    (q,) = _f32_leaves(xp, 1, 2, 5, 8)
    (kv,) = _f32_leaves(xp, 1, 2, 3, 2 * 8)
    out = F.q_kv_attention(q, kv, 2)
    bwd = _launches(lambda: out.backward(g))
    # the same five, dK and dV laid out by one copy, dQ by another
    assert len(bwd) == 7, bwd


@standin
def test_layer_norm_backward_sums_its_chunks_in_one_kernel():
    xp = backend.xp_for("cuda")
    (x,) = _f32_leaves(xp, 1, 300, 16)                 # 300 rows: ten chunks of the parameter gradients
    w, b = _f32_leaves(xp, 2, 16)
    y = F.layer_norm(x, (16,), w, b)
    g = xp.ones((300, 16), dtype=np.float32)
    bwd = _launches(lambda: y.backward(g))
    assert bwd == ["RawKernel layer_norm_backward_all", "ElementwiseKernel minivit_chunk_sums"], bwd
    assert not shares(w.grad, b.grad)
    x64, w64, b64 = (Tensor(backend.to_numpy(t.data).astype(np.float64), requires_grad=True) for t in (x, w, b))
    F.layer_norm(x64, (16,), w64, b64).backward(np.ones((300, 16)))
    for got, want in ((w.grad, w64.grad), (b.grad, b64.grad)):
        np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-4, atol=1e-4)


@standin
@pytest.mark.parametrize("m, d", [(300, 16), (37, 40), (5, 1024), (9, 1030)])
def test_layer_norm_backward_in_one_launch_equals_its_two_kernels(m, d):
    """∂x and the chunks' partial sums in one launch (rows ≤ 1024) compute exactly what
    layer_norm_backward and layer_norm_param_grads compute launched one after the other."""
    xp = backend.xp_for("cuda")
    rng = np.random.default_rng(m + d)
    x2, gy2 = (xp.asarray(rng.standard_normal((m, d)).astype(np.float32)) for _ in range(2))
    w = xp.asarray(rng.standard_normal(d).astype(np.float32))
    _, mean, rstd = fused_cuda.layer_norm_forward(x2, w, None, 1e-5)
    got = _launches(lambda: fused_cuda.layer_norm_backward(gy2, x2, w, mean, rstd))
    one = d <= 1024
    assert got[0] == ("RawKernel layer_norm_backward_all" if one else "RawKernel layer_norm_backward"), got
    assert len(got) == (1 if one else 2) + (m > 32), got          # + the chunk sums when there are chunks
    gx, gw, gb = fused_cuda.layer_norm_backward(gy2, x2, w, mean, rstd)
    gx_alone, _, _ = fused_cuda.layer_norm_backward(gy2, x2, w, mean, rstd, need_params=False)
    _, gw_alone, gb_alone = fused_cuda.layer_norm_backward(gy2, x2, w, mean, rstd, need_x=False)
    for a, b in ((gx, gx_alone), (gw, gw_alone), (gb, gb_alone)):
        np.testing.assert_array_equal(backend.to_numpy(a), backend.to_numpy(b))


@standin
def test_linear_backward_spends_no_copy_on_the_parameters():
    xp = backend.xp_for("cuda")
    x = Tensor(xp.asarray(np.random.randn(4, 3).astype(np.float32)))
    w = Tensor(xp.asarray(np.random.randn(5, 3).astype(np.float32)), requires_grad=True)
    b = Tensor(xp.asarray(np.zeros(5, np.float32)), requires_grad=True)
    y = F.linear(x, w, b)
    g = xp.ones((4, 5), dtype=np.float32)
    assert len(_launches(lambda: y.backward(g))) == 2            # Gᵀ X and Σ_rows G, nothing else


# --------------------------------------------------------------------------- col2im when windows tile
@pytest.mark.parametrize("shape, k, pad, groups", [
    ((2, 4, 8, 8), 2, 0, 1),            # a patch embedding: 2×2 windows tile 8×8
    ((2, 4, 9, 7), 2, 0, 2),            # a row and a column past the last window: read by none
    ((1, 3, 6, 6), 4, 1, 1),            # padding inside the tiles
    ((2, 4, 8, 8), 4, 0, 4),            # depthwise (SRA's reduction with groups)
])
def test_tiling_col2im_equals_the_loop(xp, shape, k, pad, groups):
    from minivit.functional.conv import Conv2d
    x = Tensor(xp.asarray(np.random.randn(*shape)), requires_grad=True)
    w = Tensor(xp.asarray(np.random.randn(6 if groups == 1 else shape[1], shape[1] // groups, k, k)),
               requires_grad=True)
    grads = []
    for fast in (True, False):
        Conv2d.tiling_fast_path = fast
        try:
            x.grad = w.grad = None
            y = F.conv2d(x, w, stride=k, padding=pad, groups=groups)
            y.backward(xp.asarray(np.random.default_rng(1).standard_normal(y.shape)))
            grads.append((backend.to_numpy(x.grad), backend.to_numpy(w.grad)))
        finally:
            Conv2d.tiling_fast_path = True
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-12, atol=1e-12)


@standin
def test_tiling_conv_backward_moves_columns_in_one_copy():
    xp = backend.xp_for("cuda")
    x = Tensor(xp.asarray(np.random.randn(2, 4, 8, 8).astype(np.float32)), requires_grad=True)
    w = Tensor(xp.asarray(np.random.randn(6, 4, 2, 2).astype(np.float32)))
    y = F.conv2d(x, w, stride=2)
    g = xp.ones(y.shape, dtype=np.float32)
    # gy's layout (G, Og, L) copy, Wᵀ·g, the one copy into place: not a zero fill and 4 adds
    assert len(_launches(lambda: y.backward(g))) == 3


@standin
def test_standin_counts_a_reshape_that_has_to_copy():
    xp = backend.xp_for("cuda")
    a = xp.asarray(np.ones((4, 6), np.float32))
    assert _launches(lambda: a.reshape(2, 12)) == []                  # a view
    assert _launches(lambda: a.T.reshape(24)) == ["op"]               # NumPy copies (and calls it a view)
    assert _launches(lambda: xp.reshape(a.T, (24,))) == ["op"]


def test_a_broadcast_gradient_becomes_a_writable_array(xp):
    # sum's backward hands back a stride-0 broadcast of one number: the leaf must own real memory
    w = leaf(xp, 3, 4)
    w.sum().backward()
    assert w.grad.flags.c_contiguous
    w.grad *= 2
    np.testing.assert_allclose(backend.to_numpy(w.grad), np.full((3, 4), 2.0))


# --------------------------------------------------------------------------- token ops: one op for three
def _grads_of(xp, fn, *leaves):
    for t in leaves:
        t.grad = None
    y = fn()
    y.backward(xp.asarray(np.random.default_rng(2).standard_normal(y.shape)))
    return backend.to_numpy(y.data), [backend.to_numpy(t.grad) for t in leaves]


@pytest.mark.parametrize("hw, k, stride, pad, groups, bias", [
    ((4, 5), 3, 1, 1, 6, True),          # Mix-FFN's depthwise 3×3
    ((4, 4), 2, 2, 0, 1, False),         # a strided dense conv (SRA's reduction)
    ((3, 5), 3, 2, 1, 2, True),          # grouped, strided, padded
])
def test_conv2d_tokens_equals_rearrange_conv_rearrange(xp, hw, k, stride, pad, groups, bias):
    H, W = hw
    x = Tensor(xp.asarray(np.random.randn(2, H * W, 6)), requires_grad=True)
    w = Tensor(xp.asarray(np.random.randn(6, 6 // groups, k, k)), requires_grad=True)
    b = Tensor(xp.asarray(np.random.randn(6)), requires_grad=True) if bias else None
    leaves = (x, w) + ((b,) if bias else ())

    def three():
        m = F.rearrange(x, "b (h w) c -> b c h w", h=H)
        return F.rearrange(F.conv2d(m, w, b, stride, pad, 1, groups), "b c h w -> b (h w) c")

    def one():
        return F.conv2d_tokens(x, hw, w, b, stride, pad, 1, groups)
    y1, g1 = _grads_of(xp, one, *leaves)
    y3, g3 = _grads_of(xp, three, *leaves)
    np.testing.assert_allclose(y1, y3, rtol=1e-12, atol=1e-12)
    for a, c in zip(g1, g3):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)


def test_q_kv_attention_equals_the_composed_ops(xp):
    h = 2
    q = Tensor(xp.asarray(np.random.randn(2, 6, 8)), requires_grad=True)
    kv = Tensor(xp.asarray(np.random.randn(2, 3, 16)), requires_grad=True)

    def composed():
        qh = F.rearrange(q, "b n (h d) -> b h n d", h=h)
        k, v = F.rearrange(kv, "b n (two h d) -> two b h n d", two=2, h=h).unbind(0)
        return F.rearrange(F.scaled_dot_product_attention(qh, k, v), "b h n d -> b n (h d)")
    y1, g1 = _grads_of(xp, lambda: F.q_kv_attention(q, kv, h), q, kv)
    y3, g3 = _grads_of(xp, composed, q, kv)
    np.testing.assert_allclose(y1, y3, rtol=1e-12, atol=1e-12)
    for a, c in zip(g1, g3):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="kv of shape"):
        F.q_kv_attention(q, kv[:, :, :8], h)


@pytest.mark.parametrize("name, limit", [("pvt_v2_tiny", 139), ("cvt_tiny", 158)])   # 278 and 317 on 2 December
def test_forward_graph_ops_halved(name, limit):
    from minivit import autograd
    from minivit.models import create_model
    model = create_model(name)
    model.train()
    ops = []
    autograd.forward_hooks.append(lambda op, inputs, out: ops.append(type(op).__name__))
    try:
        model(Tensor(np.random.randn(2, 3, 32, 32).astype(np.float32)))
    finally:
        autograd.forward_hooks.pop()
    assert len(ops) <= limit, len(ops)


def test_heads_attention_equals_the_composed_ops(xp):
    h = 2
    q = Tensor(xp.asarray(np.random.randn(2, 6, 8)), requires_grad=True)
    k = Tensor(xp.asarray(np.random.randn(2, 3, 8)), requires_grad=True)
    v = Tensor(xp.asarray(np.random.randn(2, 3, 8)), requires_grad=True)

    def composed():
        qh, kh, vh = (F.rearrange(t, "b n (h d) -> b h n d", h=h) for t in (q, k, v))
        return F.rearrange(F.scaled_dot_product_attention(qh, kh, vh, scale=0.3), "b h n d -> b n (h d)")
    y1, g1 = _grads_of(xp, lambda: F.heads_attention(q, k, v, h, scale=0.3), q, k, v)
    y3, g3 = _grads_of(xp, composed, q, k, v)
    np.testing.assert_allclose(y1, y3, rtol=1e-12, atol=1e-12)
    for a, c in zip(g1, g3):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="k, v both of shape"):
        F.heads_attention(q, k, v[:, :2], h)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("hw, stride", [((4, 5), 1), ((5, 5), 2)])    # CvT's q and its squeezed k, v
def test_conv2d_tokens_with_batch_norm_equals_the_separate_ops(xp, training, hw, stride):
    """conv → BatchNorm → tokens as one op (CvT's projection): output, every gradient and the running
    statistics it leaves equal those of conv2d, batch_norm and rearrange, in float64."""
    H, W = hw
    rng = np.random.default_rng(5)
    x = Tensor(xp.asarray(rng.standard_normal((3, H * W, 4))), requires_grad=True)
    w = Tensor(xp.asarray(rng.standard_normal((4, 1, 3, 3))), requires_grad=True)
    bw = Tensor(xp.asarray(rng.uniform(0.5, 1.5, 4)), requires_grad=True)
    bb = Tensor(xp.asarray(rng.standard_normal(4)), requires_grad=True)
    stats = {}

    def bn_args(name):
        rm, rv = stats.setdefault(name, (xp.asarray(np.linspace(-0.2, 0.3, 4)), xp.asarray(np.linspace(0.5, 2.0, 4))))
        return (rm, rv, bw, bb, training, 0.1, 1e-5)

    def separate():
        m = F.conv2d(F.rearrange(x, "b (h w) c -> b c h w", h=H), w, None, stride, 1, 1, 4)
        return F.rearrange(F.batch_norm(m, *bn_args("separate")), "b c h w -> b (h w) c")

    def one():
        return F.conv2d_tokens(x, hw, w, None, stride, 1, groups=4, batch_norm=bn_args("one"))
    y1, g1 = _grads_of(xp, one, x, w, bw, bb)
    y3, g3 = _grads_of(xp, separate, x, w, bw, bb)
    np.testing.assert_allclose(y1, y3, rtol=1e-11, atol=1e-12)
    for a, c in zip(g1, g3):
        np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-12)
    for a, c in zip(stats["one"], stats["separate"]):
        np.testing.assert_allclose(backend.to_numpy(a), backend.to_numpy(c), rtol=1e-12)
    assert training != np.allclose(backend.to_numpy(stats["one"][0]), np.linspace(-0.2, 0.3, 4))   # updated


def test_conv2d_tokens_batch_norm_checks_its_arguments():
    x, w = Tensor(np.zeros((2, 16, 4))), Tensor(np.zeros((4, 1, 3, 3)))
    with pytest.raises(ValueError, match=r"running_mean must have shape \(4,\)"):
        F.conv2d_tokens(x, (4, 4), w, groups=4, padding=1,
                        batch_norm=(np.zeros(3), np.ones(4), None, None, True, 0.1, 1e-5))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.conv2d_tokens(Tensor(np.zeros((1, 1, 4))), (1, 1), w, groups=4, padding=1,
                        batch_norm=(None, None, None, None, True, 0.1, 1e-5))


@pytest.mark.parametrize("case", ["plain", "cls"])
def test_cvt_attention_one_op_path_equals_the_written_out_steps_and_keeps_bn_statistics(monkeypatch, case):
    """CvT's attention with projections and attention as one op each vs the written-out steps
    (``fused_attn``): output, gradients and the BatchNorms' running statistics, float64, training."""
    from minivit.layers import ConvProjectionAttention
    cls_tok = case == "cls"
    results = []
    for fused in (True, False):
        monkeypatch.setattr(ConvProjectionAttention, "fused_attn", fused)
        np.random.seed(3)
        layer = ConvProjectionAttention(8, num_heads=2, stride_kv=2, with_cls_token=cls_tok).to(dtype=np.float64)
        layer.train()
        x = Tensor(np.random.default_rng(4).standard_normal((2, int(cls_tok) + 25, 8)), requires_grad=True)
        y, (gx,) = _grads_of(np, lambda: layer(x, (5, 5)), x)
        results.append((y, gx, {n: backend.to_numpy(p.grad) for n, p in layer.named_parameters()},
                        {n: backend.to_numpy(b.data).copy() for n, b in layer.named_buffers()}))
    (ya, ga, pa, ba), (yb, gb, pb, bb) = results
    np.testing.assert_allclose(ya, yb, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(ga, gb, rtol=1e-9, atol=1e-12)
    for n in pb:
        np.testing.assert_allclose(pa[n], pb[n], rtol=1e-9, atol=1e-12, err_msg=n)
    assert set(ba) == set(bb) and any("num_batches_tracked" in n for n in ba)
    for n in bb:
        np.testing.assert_allclose(ba[n], bb[n], rtol=1e-12, err_msg=n)


# --------------------------------------------------------------------------- cross-entropy on a GPU
@standin
@pytest.mark.parametrize("shape", [(6, 5), (2, 5, 3, 3)], ids=["rows", "maps"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing, weighted, ignore", [(0.0, False, -100), (0.1, True, 2), (0.1, False, 2)])
@pytest.mark.parametrize("logits", [True, False], ids=["cross_entropy", "nll_loss"])
def test_fused_cross_entropy_equals_the_reference(shape, reduction, smoothing, weighted, ignore, logits):
    """class_nll's two kernels (Q never built) against the reference code, float64, on the stand-in."""
    from minivit.functional import fused_cuda
    xp = backend.xp_for("cuda")
    rng = np.random.default_rng(len(shape) + int(weighted))
    x = rng.standard_normal(shape)
    tshape = shape[:1] + shape[2:]
    t = rng.integers(0, 5, tshape)
    t.reshape(-1)[1] = 2                                  # one ignored row where ignore = 2
    w = Tensor(xp.asarray(rng.random(5) + 0.5)) if weighted else None
    g = xp.asarray(rng.standard_normal(tshape)) if reduction == "none" else None
    results, launches = [], []
    for fused in (True, False):
        xt = Tensor(xp.asarray(x), requires_grad=True)
        with fused_cuda.use_fused(fused):
            inp = xt if logits else F.log_softmax(xt, dim=1)
            loss_fn = F.cross_entropy if logits else F.nll_loss
            kw = dict(label_smoothing=smoothing) if logits else {}
            with strict_cupy.count_launches() as fwd:
                loss = loss_fn(inp, xp.asarray(t), w, ignore_index=ignore, reduction=reduction, **kw)
            loss.backward(g)
        results.append((backend.to_numpy(loss.data), backend.to_numpy(xt.grad)))
        launches.append(len(fwd))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    if logits:
        # log-softmax, the rows' kernel, then the sum, or the two sums and the division (maps: one
        # copy before, classes to the last axis); the reference spends 20 or more
        expected = {"none": 2, "sum": 3, "mean": 4}[reduction] + (len(shape) > 2)
        assert launches[0] == expected and launches[1] >= 20, launches


@standin
def test_fused_cross_entropy_finds_a_bad_label():
    xp = backend.xp_for("cuda")
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)), requires_grad=True)
    loss = F.cross_entropy(x, xp.asarray(np.array([0, 3, 1, -100])))
    with pytest.raises(IndexError, match=r"in \[0, 2\] for 3 classes.*\[3\]"):
        loss.item()


# --------------------------------------------------------------------------- col2im on a GPU
@standin
@pytest.mark.parametrize("shape, k, stride, pad, dil, groups", [
    ((2, 4, 9, 7), 3, 2, 1, 1, 1),      # PiT's pooling conv shape: overlapping windows, stride 2
    ((2, 4, 8, 8), 3, 1, 1, 1, 4),      # depthwise, Mix-FFN's
    ((1, 3, 11, 10), 7, 4, 3, 1, 1),    # PVT v2's overlapping patch embedding
    ((2, 4, 9, 9), 3, 2, 2, 2, 2),      # dilated, grouped, padded past the windows
])
@pytest.mark.parametrize("tokens", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_col2im_kernel_equals_the_loop(monkeypatch, shape, k, stride, pad, dil, groups, tokens, dtype):
    """One kernel, bit for bit the loop's sums, ∂x in the input's memory layout. (A depthwise conv
    takes its own kernels on a GPU; here they are off, so that it goes through im2col and col2im.)"""
    from minivit.functional import fused_cuda
    from minivit.functional.conv import Conv2d
    monkeypatch.setattr(Conv2d, "depthwise_fast_path", False)
    xp = backend.xp_for("cuda")
    rng = np.random.default_rng(k)
    N, C, H, W = shape
    x0 = rng.standard_normal((N, H, W, C) if tokens else shape).astype(dtype)
    w0 = rng.standard_normal((6 if groups == 1 else C, C // groups, k, k)).astype(dtype)
    grads, launches = [], []
    for fused in (True, False):
        xt = Tensor(xp.asarray(x0), requires_grad=True)
        x = xt.permute(0, 3, 1, 2) if tokens else xt           # tokens viewed as an image
        w = Tensor(xp.asarray(w0), requires_grad=True)
        with fused_cuda.use_fused(fused):
            y = F.conv2d(x, w, stride=stride, padding=pad, dilation=dil, groups=groups)
            g = xp.asarray(np.random.default_rng(1).standard_normal(y.shape).astype(dtype))
            bwd = _launches(lambda: y.backward(g))
        grads.append((backend.to_numpy(xt.grad), backend.to_numpy(w.grad)))
        launches.append(bwd.count("ElementwiseKernel minivit_col2im"))
    np.testing.assert_array_equal(grads[0][0], grads[1][0])
    np.testing.assert_array_equal(grads[0][1], grads[1][1])
    assert launches == [1, 0]


@standin
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_mask_is_one_kernel_and_the_reference_mask(dtype):
    from minivit.functional import fused_cuda
    from minivit.functional.activation import _keep_mask
    xp = backend.xp_for("cuda")
    masks, launches = [], []
    for fused in (True, False):
        backend.manual_seed(3)
        with fused_cuda.use_fused(fused):
            log = _launches(lambda: masks.append(_keep_mask(xp, (4, 1, 1), 0.6, np.dtype(dtype))))
        launches.append(log)
    np.testing.assert_array_equal(backend.to_numpy(masks[0]), backend.to_numpy(masks[1]))
    assert masks[0].dtype == dtype and set(backend.to_numpy(masks[0]).ravel()) <= {0.0, dtype(1 / 0.6)}
    # the mask in one kernel where the reference takes two (the comparison, the scaled cast)
    assert launches[0] == ["ElementwiseKernel minivit_keep_mask"] and len(launches[1]) == 2, launches


# --------------------------------------------------------------------------- a whole training step
# Device operations of one step on 2 December 2026 (engine e81f55c^, counted by the stand-in; the
# README's table) and the bound held here: half of it. swin_tiny's 1,207 counts the ten scatter-adds
# of its bias gradients (one kernel each), which the stand-in missed until 4 December (1,197 then;
# the engine of 2 December runs them: ten backend.scatter_add calls a step, and no other model any).
STEP_OPS_2_DECEMBER = {"vit_tiny": 688, "deit_tiny": 710, "pvt_tiny": 1130, "pvt_v2_tiny": 1429,
                       "swin_tiny": 1207, "cvt_tiny": 2261, "pit_tiny": 1233, "resnet_teacher": 1326}
STEP_OPS_LIMIT = {m: n // 2 for m, n in STEP_OPS_2_DECEMBER.items()}


@standin
@pytest.mark.parametrize("name", sorted(STEP_OPS_LIMIT))
def test_training_step_device_ops(name):
    """forward, cross-entropy, backward and AdamW on the stand-in, after a warm-up step (as
    benchmarks/launch_counts.py counts them; the count does not depend on the batch)."""
    from minivit.models import create_model
    from minivit.optim import AdamW
    xp = backend.xp_for("cuda")
    backend.manual_seed(0)
    model = create_model(name).to(device="cuda")
    rng = np.random.default_rng(0)
    x = Tensor(xp.asarray(rng.standard_normal((2, 3, 32, 32)).astype(np.float32)))
    y = Tensor(xp.asarray(rng.integers(0, 10, 2)))
    opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    model.train()

    def step():
        out = model(x)
        out = sum(out) / len(out) if isinstance(out, tuple) else out      # DeiT's two heads
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    step()
    n = len(_launches(step))
    assert n <= STEP_OPS_LIMIT[name], f"{name}: {n} device operations a step, the bound is {STEP_OPS_LIMIT[name]}"
