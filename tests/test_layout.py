"""F.rearrange (one layout op = reshape → permute → reshape): every pattern the models use is
held equal to the reshape/permute chain it replaces, values and gradients (float64), on NumPy
and the CuPy stand-in; finite differences; the errors for bad patterns; Swin's bias gather."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit.functional as F
from minivit import backend
from minivit.autograd import Tensor
from minivit.functional.layout import Rearrange
from minivit.layers.window_attention import (WindowAttention, shifted_window_order, window_partition,
                                             window_reverse)
from minivit.testing import gradcheck


def host(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


def both(xp, shape, fast, chain, seed=0):
    """Values and input gradients of ``fast`` and ``chain`` on one random float64 input."""
    x0 = np.random.default_rng(seed).standard_normal(shape)
    results = []
    for fn in (fast, chain):
        x = Tensor(xp.asarray(x0), requires_grad=True)
        y = fn(x)
        g = np.random.default_rng(seed + 1).standard_normal(y.shape)   # the same upstream gradient for both
        (y * Tensor(xp.asarray(g))).sum().backward()
        results.append((host(y), host(x.grad), g))
    (y1, g1, _), (y2, g2, _) = results
    return y1, y2, g1, g2


def assert_same(xp, shape, fast, chain):
    y1, y2, g1, g2 = both(xp, shape, fast, chain)
    assert y1.shape == y2.shape
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(g1, g2)


@settings(max_examples=12, deadline=None)
@given(B=st.integers(1, 2), nh=st.integers(1, 3), nw=st.integers(1, 3), mh=st.integers(1, 3),
       mw=st.integers(1, 3), C=st.integers(1, 3))
def test_window_partition_and_reverse_as_one_op(xp, B, nh, nw, mh, mw, C):
    H, W = nh * mh, nw * mw
    assert_same(xp, (B, H, W, C),
                lambda x: F.rearrange(x, "b (h p) (w q) c -> (b h w) (p q) c", p=mh, q=mw),
                lambda x: window_partition(x, (mh, mw)).reshape(-1, mh * mw, C))
    assert_same(xp, (B * nh * nw, mh * mw, C),
                lambda t: F.rearrange(t, "(b h w) (p q) c -> b (h p) (w q) c", h=nh, w=nw, p=mh, q=mw),
                lambda t: window_reverse(t.reshape(-1, mh, mw, C), (mh, mw), H, W))


@pytest.mark.parametrize("B,nW,N,h,d", [(2, 4, 9, 3, 2), (1, 1, 5, 2, 4), (3, 2, 4, 1, 3)])
def test_head_split_and_merge_as_one_op(xp, B, nW, N, h, d):
    # qkv (B·nW, N, 3·h·d) → three (B, nW, h, N, d), as WindowAttention's fused path
    def chain(t):
        q, k, v = t.reshape(B * nW, N, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        return F.stack([u.reshape(B, nW, h, N, d) for u in (q, k, v)])
    assert_same(xp, (B * nW, N, 3 * h * d),
                lambda t: F.rearrange(t, "(b w) n (three h d) -> three b w h n d", w=nW, three=3, h=h), chain)
    assert_same(xp, (B, nW, h, N, d), lambda t: F.rearrange(t, "b w h n d -> (b w) n (h d)"),
                lambda t: t.reshape(B * nW, h, N, d).transpose(1, 2).reshape(B * nW, N, h * d))
    # SRA / CvT: (B, N, h·d) ↔ (B, h, N, d), and K/V together
    assert_same(xp, (B, N, h * d), lambda t: F.rearrange(t, "b n (h d) -> b h n d", h=h),
                lambda t: t.reshape(B, N, h, d).transpose(1, 2))
    assert_same(xp, (B, h, N, d), lambda t: F.rearrange(t, "b h n d -> b n (h d)"),
                lambda t: t.transpose(1, 2).reshape(B, N, h * d))
    assert_same(xp, (B, N, 2 * h * d), lambda t: F.rearrange(t, "b n (two h d) -> two b h n d", two=2, h=h),
                lambda t: t.reshape(B, -1, 2, h, d).permute(2, 0, 3, 1, 4))


@pytest.mark.parametrize("B,C,H,W", [(2, 3, 4, 5), (1, 1, 1, 1), (2, 4, 3, 3)])
def test_tokens_and_maps_as_one_op(xp, B, C, H, W):
    assert_same(xp, (B, H * W, C), lambda t: F.rearrange(t, "b (h w) c -> b c h w", h=H),
                lambda t: t.transpose(1, 2).reshape(B, C, H, W))
    assert_same(xp, (B, C, H, W), lambda t: F.rearrange(t, "b c h w -> b (h w) c"),
                lambda t: t.flatten(2).transpose(1, 2))


def test_patch_merging_as_one_op(xp):
    B, H, W, C = 2, 4, 6, 3
    assert_same(xp, (B, H, W, C), lambda t: F.rearrange(t, "b (h dy) (w dx) c -> b h w (dx dy c)", dy=2, dx=2),
                lambda t: t.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5)
                .reshape(B, H // 2, W // 2, 4 * C))


def test_rearrange_gradient_by_finite_differences():
    x = Tensor(np.random.default_rng(3).standard_normal((2, 6, 4)), requires_grad=True)
    gradcheck(lambda t: F.rearrange(t, "b (h p) (w q) -> (b w) (q p h)", p=3, q=2), x)


def test_rearrange_is_one_op_and_bad_patterns_say_what_is_wrong():
    x = Tensor(np.zeros((2, 6, 4)), requires_grad=True)
    y = F.rearrange(x, "b (h p) c -> b h (p c)", p=3)
    assert isinstance(y._ctx, Rearrange) and y.shape == (2, 2, 12)
    for pattern, sizes, words in [("b n c", {}, "'->'"),
                                  ("b n c -> b n", {}, "once on each side"),
                                  ("b n -> b n", {}, "names 2 dimensions"),
                                  ("b (h p) c -> b h p c", {}, "pass e.g."),
                                  ("b (h p) c -> b h p c", {"p": 4}, "does not split"),
                                  ("b (h p) c -> b h p c", {"h": 2, "p": 2}, "has size 4"),
                                  ("b n c -> b n c", {"z": 2}, "not in"),
                                  ("b (n c -> b n c", {}, "unclosed")]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(")):
            F.rearrange(x, pattern, **sizes)


@pytest.mark.parametrize("fused_bias", [True, False])
def test_swin_bias_gather_equals_reshape_permute(xp, fused_bias, monkeypatch):
    monkeypatch.setattr(WindowAttention, "fused_bias", fused_bias)
    attn = WindowAttention(8, num_heads=2, window_size=3).to(dtype=np.float64)
    attn.relative_position_bias_table.data = xp.asarray(
        np.random.default_rng(0).standard_normal(attn.relative_position_bias_table.shape))
    attn.relative_position_index.data = xp.asarray(host(attn.relative_position_index))
    N, h = 9, 2
    table = attn.relative_position_bias_table

    def chain(_):
        idx = attn.relative_position_index.data.reshape(-1)
        return table[idx].reshape(N, N, h).permute(2, 0, 1)

    g = xp.asarray(np.random.default_rng(1).standard_normal((h, N, N)))
    out = []
    for fn in (lambda _: attn.relative_position_bias(), chain):
        table.grad = None
        y = fn(None)
        (y * Tensor(g)).sum().backward()
        out.append((host(y), host(table.grad)))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- tokens in another order
@pytest.mark.parametrize("B,nh,nw,mh,mw,sh,sw,C", [(2, 4, 4, 4, 4, 2, 2, 3), (1, 2, 3, 3, 2, 1, 1, 2),
                                                   (2, 3, 2, 2, 3, 1, 0, 1), (1, 1, 2, 3, 3, 0, 2, 4)])
def test_shifted_partition_as_one_gather(xp, B, nh, nw, mh, mw, sh, sw, C):
    """Swin's roll(−shift) + window partition, and window reverse + roll(+shift), as one
    F.permute_tokens each: equal values and gradients (float64, exactly: data is only moved)."""
    H, W, N = nh * mh, nw * mw, mh * mw
    order = shifted_window_order(H, W, (mh, mw), (sh, sw))
    assert sorted(order) == list(range(H * W))
    order_d, inverse_d = xp.asarray(order), xp.asarray(np.argsort(order))
    assert_same(xp, (B, H, W, C),
                lambda x: F.permute_tokens(x, order_d, (-1, N, C), inverse_d),
                lambda x: F.rearrange(x.roll((-sh, -sw), dims=(1, 2)), "b (h p) (w q) c -> (b h w) (p q) c",
                                      p=mh, q=mw))
    assert_same(xp, (B * nh * nw, N, C),
                lambda t: F.permute_tokens(t.reshape(B, H * W, C), inverse_d, (B, H, W, C)),   # inverse made here
                lambda t: F.rearrange(t, "(b h w) (p q) c -> b (h p) (w q) c", h=nh, w=nw, p=mh,
                                      q=mw).roll((sh, sw), dims=(1, 2)))


def test_permute_tokens_gradient_and_errors():
    order = np.random.default_rng(0).permutation(6)
    x = Tensor(np.random.default_rng(1).standard_normal((2, 2, 3, 4)), requires_grad=True)
    gradcheck(lambda t: F.permute_tokens(t, order, (2, 6, 4)), x)
    assert shifted_window_order(4, 4, 2, 0) is None                     # no shift, no reordering
    with pytest.raises(ValueError, match="order must hold the 6 token positions"):
        F.permute_tokens(x, np.arange(5), (2, 5, 4))


def test_relative_position_bias_gradient_by_finite_differences():
    from minivit.layers.window_attention import relative_position_index
    idx = relative_position_index(2, 3)                                 # (6, 6) into a (3·5, h) table
    table = Tensor(np.random.default_rng(2).standard_normal((15, 2)), requires_grad=True)
    gradcheck(lambda t: F.relative_position_bias(t, idx), table)
    y = F.relative_position_bias(table, idx)
    np.testing.assert_array_equal(y.data, table.data[idx].transpose(2, 0, 1))
