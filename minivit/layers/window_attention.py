"""Window attention (W-MSA / SW-MSA) with relative position bias, Swin §3.2.

Global MSA over h×w tokens costs 4hwC² + 2(hw)²C: quadratic in the number of
tokens. Swin cuts the (B, H, W, C) map into non-overlapping M×M windows and
runs MSA inside each window only (Swin eq. 1-2):

    Ω(MSA)   = 4hwC² + 2(hw)²C
    Ω(W-MSA) = 4hwC² + 2M²hwC          (linear in hw for a fixed M)

Inside a window, attention gets a learned bias that depends only on where the
key sits relative to the query (Swin eq. 4):

    Attention(Q, K, V) = SoftMax(QKᵀ/√d + B) V,      B ∈ ℝ^(M²×M²)

The relative offset along each axis lies in [−M+1, M−1], so all the values of
B come from a small table B̂ of (2M−1)² entries per head
(``relative_position_bias_table``), looked up with a fixed index
(``relative_position_index``, :func:`relative_position_index`).

Windows that never move would never exchange information. Every second block
shifts the map by ⌊M/2⌋ first (a cyclic ``roll``), so the new windows straddle
the old borders. After the roll, some windows hold pieces that were far apart
in the original map (the rows/columns that wrapped round); the additive mask of
:func:`shifted_window_mask` keeps those pieces from attending to each other, so
the cost stays that of W-MSA while the windows are effectively shifted (Swin
Fig. 4). The block that does roll → partition → attend → reverse → roll back is
``SwinTransformerBlock`` in :mod:`minivit.models.swin`.
"""
from __future__ import annotations

import numpy as np

import minivit.functional as F
from minivit import nn
from minivit.autograd import Tensor
from minivit.functional.attention import index_one_hot
from minivit.backend import get_array_module
from minivit.layers.patch_embed import to_2tuple

# The value timm (and the Swin authors) put on blocked pairs. Finite on purpose:
# added to logits of order 1, e^(−100) ≈ 4e-44 is an exact zero in float32 and
# negligible in float64, and unlike −inf it can never make a row of NaNs.
MASK_VALUE = -100.0


# =========================================================================== windows
def window_partition(x, window_size):
    """(B, H, W, C) → (B·nW, Mh, Mw, C): the non-overlapping windows, row by row.

    nW = (H/Mh)(W/Mw). Window k of image b is ``x[b, i·Mh:(i+1)·Mh, j·Mw:(j+1)·Mw]``
    with k = i·(W/Mw) + j, and windows of image b come before those of image b+1.
    """
    Mh, Mw = to_2tuple(window_size)
    B, H, W, C = x.shape
    if H % Mh or W % Mw:
        raise ValueError(f"window_partition: a {H}×{W} map cannot be cut into {Mh}×{Mw} windows; "
                         f"H and W must be multiples of the window size")
    x = x.reshape(B, H // Mh, Mh, W // Mw, Mw, C)         # (B, H/Mh, Mh, W/Mw, Mw, C)
    x = x.permute(0, 1, 3, 2, 4, 5)                        # (B, H/Mh, W/Mw, Mh, Mw, C)
    return x.reshape(-1, Mh, Mw, C)                        # (B·nW, Mh, Mw, C)


def window_reverse(windows, window_size, H: int, W: int):
    """(B·nW, Mh, Mw, C) → (B, H, W, C): puts the windows back; inverse of window_partition."""
    Mh, Mw = to_2tuple(window_size)
    C = windows.shape[-1]
    x = windows.reshape(-1, H // Mh, W // Mw, Mh, Mw, C)  # (B, H/Mh, W/Mw, Mh, Mw, C)
    x = x.permute(0, 1, 3, 2, 4, 5)                        # (B, H/Mh, Mh, W/Mw, Mw, C)
    return x.reshape(-1, H, W, C)


# =========================================================================== relative position index
def relative_position_index(win_h: int, win_w: int) -> np.ndarray:
    """(N, N) int64 with N = win_h·win_w: entry [i, j] is the row of the bias table
    holding B for query token i and key token j (tokens numbered row by row).

    With (y, x) the token's place in its window, the offset (Δy, Δx) = (y_i − y_j,
    x_i − x_j) has Δy ∈ [−Mh+1, Mh−1] and Δx ∈ [−Mw+1, Mw−1]; shifting both to
    start at 0 and reading them as digits of a number in base 2Mw−1 gives one
    index per offset in [0, (2Mh−1)(2Mw−1)):

        index = (Δy + Mh − 1)·(2Mw − 1) + (Δx + Mw − 1)
    """
    ys, xs = np.meshgrid(np.arange(win_h), np.arange(win_w), indexing="ij")
    ys, xs = ys.ravel(), xs.ravel()                        # (N,) each
    dy = ys[:, None] - ys[None, :]                         # (N, N)
    dx = xs[:, None] - xs[None, :]
    return ((dy + win_h - 1) * (2 * win_w - 1) + (dx + win_w - 1)).astype(np.int64)


# =========================================================================== shift mask
def shifted_window_order(H: int, W: int, window_size, shift_size):
    """Where SW-MSA's window tokens come from: (H·W,) int64, entry k = the row-major position in
    the (H, W) map of token k of the windows roll(−shift) then window_partition make (window
    after window, each row by row), or None when there is no shift. The same two steps applied
    to the positions 0..H·W−1 themselves; its argsort puts the windows back (reverse, roll back)."""
    sh, sw = to_2tuple(shift_size)
    if not (sh or sw):
        return None
    Mh, Mw = to_2tuple(window_size)
    pos = np.roll(np.arange(H * W).reshape(H, W), (-sh, -sw), axis=(0, 1))
    return pos.reshape(H // Mh, Mh, W // Mw, Mw).transpose(0, 2, 1, 3).reshape(-1)


def shifted_window_mask(H: int, W: int, window_size, shift_size, dtype=np.float32):
    """The additive attention mask of SW-MSA: (nW, N, N) of 0 (may attend) and −100
    (blocked), or None when there is no shift.

    After ``roll(x, (−sh, −sw))`` the last sh rows (and last sw columns) of the map
    are the first rows (columns) of the original, wrapped round. Label each token
    of the rolled map by its band along each axis,

        rows [0, H−Mh)       never share a window with wrapped rows,
        rows [H−Mh, H−sh)    the last window row, not wrapped,
        rows [H−sh, H)       wrapped round from the top,

    (the same three bands for columns, 3 × 3 = 9 regions). Two tokens in the same
    window were neighbours before the shift exactly when they carry the same label;
    all other pairs get −100 added to their logit.
    """
    Mh, Mw = to_2tuple(window_size)
    sh, sw = to_2tuple(shift_size)
    if not (sh or sw):
        return None

    def bands(n, m, s):
        band = np.zeros(n, dtype=np.int64)
        band[n - m:] = 1
        if s:
            band[n - s:] = 2
        return band

    labels = bands(H, Mh, sh)[:, None] * 3 + bands(W, Mw, sw)[None, :]          # (H, W) region id
    win = labels.reshape(H // Mh, Mh, W // Mw, Mw).transpose(0, 2, 1, 3)       # (H/Mh, W/Mw, Mh, Mw)
    win = win.reshape(-1, Mh * Mw)                                              # (nW, N)
    different = win[:, :, None] != win[:, None, :]                              # (nW, N, N)
    return np.where(different, MASK_VALUE, 0.0).astype(dtype)


# =========================================================================== the attention
class WindowAttention(nn.Module):
    """W-MSA with relative position bias on windows: (B·nW, N, C) → (B·nW, N, C), N = Mh·Mw.

    timm's names: ``qkv``, ``proj``, ``relative_position_bias_table`` ((2Mh−1)(2Mw−1), heads)
    and the non-persistent buffer ``relative_position_index`` (N, N).
    ``forward(x, mask)`` takes the (nW, N, N) shift mask, or None for plain W-MSA.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, window_size=7,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if head_dim is None and dim % num_heads:
            raise ValueError(f"WindowAttention: dim ({dim}) must be divisible by num_heads ({num_heads}), "
                             f"or pass head_dim")
        self.dim = dim
        self.window_size = to_2tuple(window_size)
        win_h, win_w = self.window_size
        self.window_area = win_h * win_w
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        attn_dim = self.head_dim * num_heads
        self.scale = self.head_dim ** -0.5

        # B̂: one learned bias per relative offset and head (Swin eq. 4).
        self.relative_position_bias_table = nn.Parameter(
            np.zeros(((2 * win_h - 1) * (2 * win_w - 1), num_heads), dtype=np.float32))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Fixed, recomputable from the window size: not saved (non-persistent, as timm).
        self.register_buffer("relative_position_index", relative_position_index(win_h, win_w), persistent=False)

        self.qkv = nn.Linear(dim, attn_dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(attn_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.store_attn = False
        self.attn_map = None
        self._heads = np.arange(num_heads)[:, None, None]                      # head index of the bias gather
        self._one_hot = (None, None)                                           # ((module, dtype), (T, N·N) 0/1)

    def relative_position_bias(self):
        """B for every (query, key) pair of a window: (heads, N, N), gathered from B̂."""
        # B[h, i, j] = B̂[index[i, j], h]: one gather with two index arrays that broadcast to
        # (heads, N, N) (the same as B̂[index.reshape(-1)].reshape(N, N, heads).permute(2, 0, 1)).
        idx = self.relative_position_index.data                                # (N, N)
        table = self.relative_position_bias_table
        xp = get_array_module(idx)
        if self.fused_bias:
            # The same gather as one op whose backward is one product with the index's one-hot
            # matrix (F.relative_position_bias), made once per device and dtype.
            key = (xp.__name__, table.dtype)
            if self._one_hot[0] != key:
                self._one_hot = (key, index_one_hot(idx, table.shape[0], table.dtype))
            return F.relative_position_bias(table, idx, self._one_hot[1])
        if get_array_module(self._heads) is not xp:                            # made once per device
            self._heads = xp.arange(self.num_heads)[:, None, None]             # (heads, 1, 1)
        return table[idx[None], self._heads]                                   # (heads, N, N)

    # True: the bias gathered by F.relative_position_bias (its gradient one GEMM, not a zero fill
    # and a scatter-add); False: by indexing. Equal (tests/test_models_swin.py).
    fused_bias = True

    # softmax(Q Kᵀ·scale + B) V as one op (F.scaled_dot_product_attention, the bias and mask as its
    # attn_mask), as timm's ``fused_attn``. False, store_attn, or attention dropout while training:
    # the steps written out below.
    fused_attn = True

    def forward(self, x, mask=None):
        B_, N, C = x.shape                                                     # B_ = B·nW
        if N != self.window_area:
            raise ValueError(f"WindowAttention: got {N} tokens per window, but the window is "
                             f"{self.window_size[0]}×{self.window_size[1]} = {self.window_area} tokens")
        h = self.num_heads
        # Everything added to the logits, built once on the small (nW, h, N, N) scale
        # so backward reduces over the batch once: the bias B and, shifted, the mask.
        bias = self.relative_position_bias()                                   # (h, N, N)
        nW = 1
        if mask is not None:
            mask = mask.data if isinstance(mask, Tensor) else x.xp.asarray(mask, dtype=x.dtype)
            nW = mask.shape[0]
            if B_ % nW:
                raise ValueError(f"WindowAttention: {B_} windows are not a whole number of images "
                                 f"of {nW} windows (the mask's first dim)")
            bias = bias + Tensor(mask[:, None])                                # (nW, h, N, N); the mask is a constant

        if self.fused_attn and not self.store_attn and (self.attn_drop.p == 0 or not self.training):
            # One op: softmax(Q Kᵀ·scale + bias) V from the packed qkv, the images' windows as
            # (B, nW) so that the (nW, h, N, N) bias broadcasts over the images and its gradient
            # sums over them; the head split and merge happen inside (the reference below writes
            # them out).
            x = F.qkv_attention(self.qkv(x), h, self.scale, attn_mask=bias)   # (B_, N, h·d)
            return self.proj_drop(self.proj(x))

        qkv = self.qkv(x).reshape(B_, N, 3, h, self.head_dim)                  # (B_, N, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                         # each (B_, h, N, d)
        attn = (q * self.scale) @ k.transpose(-2, -1)                          # (B_, h, N, N)
        if mask is None:
            attn = attn + bias
        else:
            attn = attn.reshape(B_ // nW, nW, h, N, N) + bias                  # (B, nW, h, N, N)
            attn = attn.reshape(B_, h, N, N)

        attn = F.softmax(attn, dim=-1)
        if self.store_attn:
            self.attn_map = attn.detach()
        attn = self.attn_drop(attn)
        x = attn @ v                                                           # (B_, h, N, d)
        x = x.transpose(1, 2).reshape(B_, N, h * self.head_dim)                # heads side by side
        return self.proj_drop(self.proj(x))

    def extra_repr(self):
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"
