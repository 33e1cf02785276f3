"""Swin's layers: window partition/reverse, the relative position index, the shifted-window
mask (against an independent construction), WindowAttention, the roll + mask block and
PatchMerging — gradient checks in float64 and parity with timm (skipped without torch/timm)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivit import backend
from minivit.autograd import Tensor
from minivit.layers.patch_merging import PatchMerging
from minivit.layers.window_attention import (MASK_VALUE, WindowAttention, relative_position_index,
                                             shifted_window_mask, window_partition, window_reverse)
from minivit.models.swin import SwinTransformerBlock
from minivit.testing import gradcheck, gradcheck_directional
from tests.conftest import torch_or_skip


def host(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


def timm_swin():
    torch_or_skip()
    pytest.importorskip("timm")
    from timm.models import swin_transformer
    return swin_transformer


# =========================================================================== partition / reverse
@settings(max_examples=15)
@given(B=st.integers(1, 2), nh=st.integers(1, 3), nw=st.integers(1, 3), mh=st.integers(1, 4),
       mw=st.integers(1, 4), C=st.integers(1, 3))
def test_window_partition_cuts_blocks_and_reverse_restores(xp, B, nh, nw, mh, mw, C):
    H, W = nh * mh, nw * mw
    x = xp.asarray(np.random.randn(B, H, W, C))
    win = window_partition(Tensor(x), (mh, mw))
    assert win.shape == (B * nh * nw, mh, mw, C)
    for b in range(B):
        for i in range(nh):
            for j in range(nw):   # window k = i·nw + j of image b, read straight off the map
                k = b * nh * nw + i * nw + j
                np.testing.assert_array_equal(host(win)[k], host(x)[b, i * mh:(i + 1) * mh, j * mw:(j + 1) * mw])
    np.testing.assert_array_equal(host(window_reverse(win, (mh, mw), H, W)), host(x))


def test_window_partition_backward(xp):
    # Weights on the output make the order of the windows (and of their tokens) matter.
    x = Tensor(xp.asarray(np.random.randn(1, 4, 6, 2)), requires_grad=True)
    w = Tensor(xp.asarray(np.random.randn(4, 2, 3, 2)))
    gradcheck(lambda x: window_partition(x, (2, 3)) * w, x)
    v = Tensor(xp.asarray(np.random.randn(1, 4, 6, 2)))
    gradcheck(lambda x: window_reverse(x.reshape(4, 2, 3, 2), (2, 3), 4, 6) * v, x)


def test_window_partition_error_names_sizes():
    with pytest.raises(ValueError, match=r"5×8 map cannot be cut into 4×4 windows"):
        window_partition(Tensor(np.zeros((1, 5, 8, 2))), 4)


# =========================================================================== relative position index
def test_relative_position_index_m2_hand_built():
    # Tokens of a 2×2 window, row by row: 0=(0,0) 1=(0,1) 2=(1,0) 3=(1,1). The offset
    # (Δy, Δx) = (y_i − y_j, x_i − x_j) ∈ {−1, 0, 1}² is stored at (Δy+1)·3 + (Δx+1).
    expected = np.array([[4, 3, 1, 0],     # i=(0,0): j offsets (0,0) (0,−1) (−1,0) (−1,−1)
                         [5, 4, 2, 1],     # i=(0,1): (0,1) (0,0) (−1,1) (−1,0)
                         [7, 6, 4, 3],     # i=(1,0): (1,0) (1,−1) (0,0) (0,−1)
                         [8, 7, 5, 4]])    # i=(1,1): (1,1) (1,0) (0,1) (0,0)
    idx = relative_position_index(2, 2)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, expected)


@settings(max_examples=10)
@given(mh=st.integers(1, 5), mw=st.integers(1, 5))
def test_relative_position_index_is_one_entry_per_offset(mh, mw):
    idx = relative_position_index(mh, mw)
    N = mh * mw
    ys, xs = np.divmod(np.arange(N), mw)
    offsets = np.stack([ys[:, None] - ys[None, :], xs[:, None] - xs[None, :]], -1).reshape(-1, 2)
    flat = idx.reshape(-1)
    # Same offset ⇔ same entry, and every one of the (2Mh−1)(2Mw−1) entries is used.
    same_offset = (offsets[:, None] == offsets[None, :]).all(-1)
    np.testing.assert_array_equal(flat[:, None] == flat[None, :], same_offset)
    assert sorted(set(flat.tolist())) == list(range((2 * mh - 1) * (2 * mw - 1)))


@pytest.mark.parametrize("mh,mw", [(2, 2), (3, 5), (7, 7)])
def test_relative_position_index_matches_timm(mh, mw):
    swin = timm_swin()
    np.testing.assert_array_equal(relative_position_index(mh, mw), swin.get_relative_position_index(mh, mw).numpy())


# =========================================================================== the shift mask
def mask_from_original_adjacency(H, W, mh, mw, sh, sw):
    """An independent construction: after roll(x, (−sh, −sw)) the token at (i, j) came from
    ((i+sh) mod H, (j+sw) mod W). Two tokens of a window may attend iff they lay within one
    window's span of each other in the original (un-rolled) map, i.e. they were neighbours."""
    nW = (H // mh) * (W // mw)
    N = mh * mw
    allowed = np.zeros((nW, N, N), dtype=bool)
    for wi in range(H // mh):
        for wj in range(W // mw):
            cells = [(wi * mh + a, wj * mw + b) for a in range(mh) for b in range(mw)]
            orig = [((i + sh) % H, (j + sw) % W) for i, j in cells]
            for p, (yp, xp_) in enumerate(orig):
                for q, (yq, xq) in enumerate(orig):
                    allowed[wi * (W // mw) + wj, p, q] = abs(yp - yq) < mh and abs(xp_ - xq) < mw
    return allowed


CASES = [(8, 8, 4, 4, 2, 2), (12, 12, 4, 4, 2, 2), (8, 12, 4, 4, 2, 2), (14, 14, 7, 7, 3, 3),
         (4, 8, 4, 4, 0, 2), (12, 9, 4, 3, 2, 1), (6, 6, 3, 3, 1, 1)]


@pytest.mark.parametrize("H,W,mh,mw,sh,sw", CASES)
def test_shift_mask_equals_independent_construction(H, W, mh, mw, sh, sw):
    mask = shifted_window_mask(H, W, (mh, mw), (sh, sw))
    allowed = mask_from_original_adjacency(H, W, mh, mw, sh, sw)
    assert mask.shape == allowed.shape and mask.dtype == np.float32
    assert set(np.unique(mask).tolist()) <= {0.0, MASK_VALUE}
    np.testing.assert_array_equal(mask == 0, allowed)


@pytest.mark.parametrize("H,W,mh,mw,sh,sw", CASES)
def test_shift_mask_blocks_exactly_cross_region_pairs(H, W, mh, mw, sh, sw):
    # Regions of the rolled map: wrapped round or not, along each axis.
    mask = shifted_window_mask(H, W, (mh, mw), (sh, sw), dtype=np.float64)
    rows = np.arange(H) >= H - sh if sh else np.zeros(H, bool)
    cols = np.arange(W) >= W - sw if sw else np.zeros(W, bool)
    region = rows[:, None] * 2 + cols[None, :]
    win = window_partition(Tensor(region[None, :, :, None].astype(np.float64)), (mh, mw)).numpy()
    win = win.reshape(-1, mh * mw)
    cross = win[:, :, None] != win[:, None, :]
    np.testing.assert_array_equal(mask == MASK_VALUE, cross)
    assert cross.any()                      # the case really has a wrapped region
    assert (mask == 0).sum() == mask.size - cross.sum()


def test_shift_mask_is_none_without_shift():
    assert shifted_window_mask(8, 8, 4, 0) is None


@pytest.mark.parametrize("res,ws,shift", [((8, 8), 4, (2, 2)), ((14, 14), 7, (3, 3)), ((4, 8), 4, (2, 2)),
                                          ((12, 9), (4, 3), (2, 1)), ((8, 8), 4, (1, 3)), ((4, 4), 7, (3, 3))])
def test_block_mask_matches_timm(res, ws, shift):
    swin = timm_swin()
    theirs = swin.SwinTransformerBlock(8, res, num_heads=2, window_size=ws, shift_size=shift)
    ours = SwinTransformerBlock(8, res, num_heads=2, window_size=ws, shift_size=shift)
    assert ours.window_size == tuple(theirs.window_size) and ours.shift_size == tuple(theirs.shift_size)
    if theirs.attn_mask is None:
        assert ours.attn_mask is None
    else:
        np.testing.assert_array_equal(ours.attn_mask.numpy(), theirs.attn_mask.numpy())
    assert "attn_mask" not in ours.state_dict() and "attn.relative_position_index" not in ours.state_dict()


def test_block_window_and_shift_rule():
    # Grid larger than the window: window M, shift ⌊M/2⌋ (SW-MSA) ...
    b = SwinTransformerBlock(8, (8, 8), num_heads=2, window_size=4, shift_size=2)
    assert b.window_size == (4, 4) and b.shift_size == (2, 2) and b.attn_mask.shape == (4, 16, 16)
    # ... grid equal to (or smaller than) the window: one window of the whole grid, no shift.
    b = SwinTransformerBlock(8, (4, 4), num_heads=2, window_size=7, shift_size=3)
    assert b.window_size == (4, 4) and b.shift_size == (0, 0) and b.attn_mask is None
    assert b.attn.relative_position_bias_table.shape == (7 * 7, 2)
    # Mixed: no shift along the short axis only.
    b = SwinTransformerBlock(8, (4, 8), num_heads=2, window_size=4, shift_size=2)
    assert b.window_size == (4, 4) and b.shift_size == (0, 2)


# =========================================================================== window attention
def test_window_attention_matches_timm(xp, device):
    torch = torch_or_skip()
    swin = timm_swin()
    for with_mask in (False, True):
        theirs = swin.WindowAttention(8, num_heads=2, window_size=4).double()
        with torch.no_grad():
            theirs.relative_position_bias_table.normal_()       # a bias that matters
        ours = WindowAttention(8, num_heads=2, window_size=4)
        ours.to(device=device, dtype=np.float64)
        ours.load_state_dict(theirs.state_dict())
        mask = shifted_window_mask(8, 8, 4, 2, dtype=np.float64) if with_mask else None
        x_np = np.random.randn(2 * 4, 16, 8)
        x = Tensor(xp.asarray(x_np), requires_grad=True)
        tx = torch.tensor(x_np, requires_grad=True)
        y = ours(x, None if mask is None else Tensor(xp.asarray(mask)))
        ty = theirs(tx, None if mask is None else torch.tensor(mask))
        np.testing.assert_allclose(host(y), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
        g = np.random.randn(*y.shape)
        y.backward(xp.asarray(g))
        ty.backward(torch.tensor(g))
        np.testing.assert_allclose(host(x.grad), tx.grad.numpy(), rtol=1e-9, atol=1e-12)
        ours_p = dict(ours.named_parameters())
        for name, p in theirs.named_parameters():
            np.testing.assert_allclose(host(ours_p[name].grad), p.grad.numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg=name)


def test_window_attention_gradcheck_with_mask(xp):
    attn = WindowAttention(4, num_heads=2, window_size=2, qkv_bias=True).to(dtype=np.float64)
    attn.to(device="cuda" if xp is not np else "cpu")
    attn.relative_position_bias_table.data[...] = xp.asarray(np.random.randn(9, 2))
    mask = Tensor(xp.asarray(shifted_window_mask(4, 4, 2, 1, dtype=np.float64)))   # (4, 4, 4)
    x = Tensor(xp.asarray(np.random.randn(4, 4, 4)), requires_grad=True)
    # The bias table is perturbed in place by gradcheck like any input.
    gradcheck(lambda x, table: attn(x, mask), x, attn.relative_position_bias_table)


def test_window_attention_keeps_float32_and_checks_tokens():
    attn = WindowAttention(8, num_heads=2, window_size=4)
    y = attn(Tensor(np.random.randn(3, 16, 8).astype(np.float32)))
    assert y.dtype == np.float32 and y.shape == (3, 16, 8)
    with pytest.raises(ValueError, match="got 9 tokens per window.*4×4 = 16"):
        attn(Tensor(np.random.randn(3, 9, 8).astype(np.float32)))


def test_window_attention_masked_pairs_get_no_weight():
    attn = WindowAttention(4, num_heads=1, window_size=2)
    attn.store_attn = True
    mask = shifted_window_mask(4, 4, 2, 1)
    attn(Tensor(np.random.randn(4, 4, 4).astype(np.float32)), Tensor(mask))
    a = attn.attn_map.numpy()                                   # (4, 1, 4, 4)
    assert (a[:, 0][mask != 0] < 1e-30).all()
    np.testing.assert_allclose(a.sum(-1), 1, rtol=1e-6)


# =========================================================================== the shifted block
def test_shifted_block_gradcheck_directional(xp, device):
    block = SwinTransformerBlock(8, (8, 8), num_heads=2, window_size=4, shift_size=2, mlp_ratio=2.0)
    block.to(device=device, dtype=np.float64)
    assert block.shift_size == (2, 2) and block.attn_mask is not None     # roll + mask path
    for p in block.parameters():                                          # move off the init's symmetries
        p.data[...] = p.data + 0.1 * xp.asarray(np.random.randn(*p.shape))
    x = Tensor(xp.asarray(np.random.randn(2, 8, 8, 8)), requires_grad=True)
    gradcheck_directional(lambda x, *ps: block(x), x, *block.parameters(), n_directions=3)


def test_shifted_block_matches_timm(xp, device):
    torch = torch_or_skip()
    swin = timm_swin()
    theirs = swin.SwinTransformerBlock(8, (8, 12), num_heads=2, window_size=4, shift_size=2).double().eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = SwinTransformerBlock(8, (8, 12), num_heads=2, window_size=4, shift_size=2)
    ours.to(device=device, dtype=np.float64)
    ours.load_state_dict(theirs.state_dict())
    x_np = np.random.randn(2, 8, 12, 8)
    x = Tensor(xp.asarray(x_np), requires_grad=True)
    tx = torch.tensor(x_np, requires_grad=True)
    y, ty = ours(x), theirs(tx)
    np.testing.assert_allclose(host(y), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = np.random.randn(*y.shape)
    y.backward(xp.asarray(g))
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(host(x.grad), tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="built for a 8×12 token grid"):
        ours(Tensor(xp.asarray(np.random.randn(1, 8, 8, 8))))


# =========================================================================== patch merging
def test_patch_merging_concatenates_neighbours_in_swin_order(xp):
    pm = PatchMerging(3).to(dtype=np.float64)
    pm.to(device="cuda" if xp is not np else "cpu")
    x = xp.asarray(np.random.randn(2, 4, 6, 3))
    y = pm(Tensor(x))
    assert y.shape == (2, 2, 3, 6)
    xn = host(x)
    # Swin's order: x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]
    cat = np.concatenate([xn[:, 0::2, 0::2], xn[:, 1::2, 0::2], xn[:, 0::2, 1::2], xn[:, 1::2, 1::2]], -1)
    mu, var = cat.mean(-1, keepdims=True), cat.var(-1, keepdims=True)
    normed = (cat - mu) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(host(y), normed @ host(pm.reduction.weight).T, rtol=1e-10, atol=1e-12)
    assert pm.reduction.bias is None


def test_patch_merging_matches_timm(xp, device):
    torch = torch_or_skip()
    swin = timm_swin()
    theirs = swin.PatchMerging(4).double()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = PatchMerging(4)
    ours.to(device=device, dtype=np.float64)
    ours.load_state_dict(theirs.state_dict())
    x_np = np.random.randn(2, 6, 4, 4)
    x = Tensor(xp.asarray(x_np), requires_grad=True)
    tx = torch.tensor(x_np, requires_grad=True)
    y, ty = ours(x), theirs(tx)
    np.testing.assert_allclose(host(y), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = np.random.randn(*y.shape)
    y.backward(xp.asarray(g))
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(host(x.grad), tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(host(dict(ours.named_parameters())[name].grad), p.grad.numpy(),
                                   rtol=1e-9, atol=1e-12, err_msg=name)


def test_patch_merging_odd_grid_error():
    with pytest.raises(ValueError, match=r"5×4 token grid cannot be merged"):
        PatchMerging(2)(Tensor(np.zeros((1, 5, 4, 2), dtype=np.float32)))
