"""Pooling attention: MViT v2's multi-head pooling attention (MHPA, MViT §3.1; MViTv2 §4.1).

MViT shrinks the token grid *inside* attention. After the usual linear maps
Q, K, V = X W_q, X W_k, X W_v, each of the three is **pooled** on the token grid
before attention (MViT §3.1):

    Q̂ = LN(P_Q(Q)),   K̂ = LN(P_K(K)),   V̂ = LN(P_V(V))       P = a strided k×k pooling
    Attn(Q̂, K̂, V̂) = softmax(Q̂ K̂ᵀ / √d + E_rel) V̂

* **P_Q** sets the *output* resolution: stride 1 keeps the grid, stride 2 (the
  first block of every stage after the first) halves it — the pyramid of MViT.
* **P_K = P_V** only make attention cheaper: MViTv2 pools keys and values with an
  adaptive stride (4 in stage 1, then 2, 1, 1 as the queries shrink) so that
  every stage attends to about the same number of keys (56²/4² = 14² at 224²).

MViTv2's pooling P is a **depth-wise 3×3 conv** (``mode='conv'``) followed by a
LayerNorm, and it is shared by the heads: the conv has one filter per *head
channel* (d = C/h filters, not C), the heads are folded into the batch. (``'max'``
and ``'avg'`` pool without weights or LayerNorm, as MViT v1's ablations.)

Compared with its neighbours in minivit: PVT's SRA (:mod:`minivit.layers.sra`)
shrinks only K and V, with a *dense* R×R conv of stride R (C² weights per tap);
CvT's squeezed projection (:mod:`minivit.layers.conv_projection`) pools *before*
the linear maps with a depth-wise conv + BatchNorm; MViT pools *after* them, with a
depth-wise conv shared across heads + LayerNorm, and may pool Q too.

MViTv2 adds two things ("Improved pooling attention", §4.1):

* **Decomposed relative position embeddings.** The logit between query i and key
  j gets a term that depends on their offset on the grid, split into a vertical
  and a horizontal part:

      E_rel(i, j) = Q̂_i · R_h[h(i) − h(j)] + Q̂_i · R_w[w(i) − w(j)]

  ``rel_pos_h`` and ``rel_pos_w`` are tables of (2·max(q_size, kv_size) − 1) × d
  vectors, one per offset. When Q and K have different grid sizes the positions
  are put on a common scale first (the coarser grid's index times the ratio).
  The class token (if any) gets no positional term. As timm's default config
  (the authors' ``rel_pos_zero_init=False``): the tables start as
  trunc_normal(std .02), and are sized for the layer's grid (``feat_size //
  stride``), so the forward never interpolates them; timm resizes a table of
  another length only when loading a checkpoint (``checkpoint_filter_fn``).
* **Residual pooling connection.** The pooled query is added back to the
  attention output: Z = Attn(Q̂, K̂, V̂) + Q̂, which helps information
  flow through the pooled attention.

The output projection ``proj`` may widen C → C_out when the block grows the
width (timm's ``expand_attn``: then qkv maps C → 3·C_out already).

Names are timm's ``MultiScaleAttention`` (and the authors'): ``qkv``, ``proj``,
``pool_q``, ``pool_k``, ``pool_v``, ``norm_q``, ``norm_k``, ``norm_v``,
``rel_pos_h``, ``rel_pos_w``.
"""
from __future__ import annotations

import numpy as np

import minivit.functional as F
from minivit import nn
from minivit.layers.patch_embed import to_2tuple

MODES = ("conv", "max", "avg")


def pooled_size(n: int, kernel: int, stride: int) -> int:
    """Grid length after a k×k pooling of stride s with timm's padding k // 2."""
    return (n + 2 * (kernel // 2) - kernel) // stride + 1


def pool_grid_tokens(t, pool, grid, n_prefix: int = 0):
    """Pool the grid tokens of a sequence on their grid; the prefix (class) tokens pass.

    ``t`` (…, n_prefix + Π grid, d), the grid (H, W) or (T, H, W) in row-major token order;
    ``pool`` maps (b, d, *grid) → (b, d, *grid'), a pooling or depth-wise conv of any number of
    dims. Every leading axis (batch, heads) is folded into b. Returns ((…, n_prefix + Π grid', d),
    grid'). MViT v1/v2's pooling of q, k, v and of the block shortcut, in 2-D and 3-D.
    """
    *lead, N, d = t.shape
    n = int(np.prod(grid))
    if N != n_prefix + n:
        raise ValueError(f"pool_grid_tokens: {N} tokens do not make {n_prefix} prefix tokens and a "
                         f"{'×'.join(map(str, grid))} grid")
    if n_prefix:
        prefix, t = t.split([n_prefix, n], dim=-2)                  # (…, n_prefix, d), (…, Π grid, d)
    b = int(np.prod(lead))
    t = t.transpose(-2, -1).reshape(b, d, *grid)                    # (b, d, *grid)
    t = pool(t)                                                     # (b, d, *grid')
    grid = tuple(t.shape[2:])
    t = t.reshape(*lead, d, int(np.prod(grid))).transpose(-2, -1)   # (…, Π grid', d)
    if n_prefix:
        t = F.cat([prefix, t], dim=-2)                              # (…, n_prefix + Π grid', d)
    return t, grid


def rel_pos_index(q_n: int, k_n: int):
    """(q_n, k_n) integer offsets into a rel-pos table of 2·max(q_n, k_n) − 1 rows.

    Query i sits at i·r_q and key j at j·r_k on a common scale (the coarser grid's
    positions are stretched by the size ratio); the offset is shifted to be ≥ 0.
    Float arithmetic then truncation, exactly as timm's ``cal_rel_pos_type``.
    """
    q_ratio, k_ratio = max(k_n / q_n, 1.0), max(q_n / k_n, 1.0)
    dist = np.arange(q_n)[:, None] * q_ratio - np.arange(k_n)[None, :] * k_ratio
    dist += (k_n - 1) * k_ratio
    return dist.astype(np.int64)


class MultiScaleAttention(nn.Module):
    """Pooling attention on tokens (B, [1 +] H·W, C) → ((B, [1 +] H'·W', C_out), (H', W')).

    ``forward(x, feat_size)``: ``feat_size = (H, W)`` is the token grid of x; the
    returned grid is the pooled query grid (H' = H / stride_q).

    ``feat_size`` at construction is the grid the layer is built for: it sizes the
    rel-pos tables (square grids only, as timm). ``has_cls_token``: the first token
    skips the pooling and the positional term. ``store_attn = True`` keeps the last
    attention weights (B, h, N_q, N_kv) in ``self.attn_map``.
    """

    def __init__(self, dim: int, dim_out: int, feat_size, num_heads: int = 8, qkv_bias: bool = True,
                 mode: str = "conv", kernel_q=(1, 1), kernel_kv=(1, 1), stride_q=(1, 1), stride_kv=(1, 1),
                 has_cls_token: bool = True, rel_pos_type: str = "spatial", residual_pooling: bool = True,
                 norm_layer=nn.LayerNorm):
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"MultiScaleAttention: dim_out ({dim_out}) must be divisible by num_heads ({num_heads})")
        if mode not in MODES:
            raise ValueError(f"MultiScaleAttention: mode={mode!r} is not supported; minivit implements "
                             f"{', '.join(map(repr, MODES))} ('conv_unshared' pools after the heads are split "
                             f"in timm's MultiScaleAttention, so its C_out-channel convs do not fit the "
                             f"d-channel head maps there either)")
        if rel_pos_type not in ("spatial", "none", ""):
            raise ValueError(f"MultiScaleAttention: rel_pos_type={rel_pos_type!r} is not supported; "
                             f"use 'spatial' (MViTv2's decomposed relative positions) or 'none'")
        kernel_q, kernel_kv = to_2tuple(kernel_q), to_2tuple(kernel_kv)
        stride_q, stride_kv = to_2tuple(stride_q), to_2tuple(stride_kv)
        self.dim, self.dim_out, self.num_heads = dim, dim_out, num_heads
        self.head_dim = dim_out // num_heads
        self.scale = self.head_dim ** -0.5
        self.has_cls_token, self.mode, self.residual_pooling = has_cls_token, mode, residual_pooling
        self.kernel_q, self.kernel_kv, self.stride_q, self.stride_kv = kernel_q, kernel_kv, stride_q, stride_kv

        self.qkv = nn.Linear(dim, 3 * dim_out, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)

        # A 1×1 kernel of stride 1 pools nothing: no module then (as timm; absent from the state dict).
        do_q = np.prod(kernel_q) > 1 or np.prod(stride_q) > 1
        do_kv = np.prod(kernel_kv) > 1 or np.prod(stride_kv) > 1
        self.pool_q = self._pool(kernel_q, stride_q) if do_q else None
        self.pool_k = self._pool(kernel_kv, stride_kv) if do_kv else None
        self.pool_v = self._pool(kernel_kv, stride_kv) if do_kv else None
        with_norm = mode == "conv"
        self.norm_q = norm_layer(self.head_dim) if do_q and with_norm else None
        self.norm_k = norm_layer(self.head_dim) if do_kv and with_norm else None
        self.norm_v = norm_layer(self.head_dim) if do_kv and with_norm else None

        self.rel_pos_type = rel_pos_type
        self.rel_pos_h = self.rel_pos_w = None
        if rel_pos_type == "spatial":
            feat_size = to_2tuple(feat_size)
            if feat_size[0] != feat_size[1]:
                raise ValueError(f"MultiScaleAttention: spatial relative positions need a square token grid "
                                 f"(as timm), got feat_size={feat_size}")
            q_size, kv_size = feat_size[0] // stride_q[1], feat_size[0] // stride_kv[1]
            rel_sp_dim = 2 * max(q_size, kv_size) - 1                     # every offset −(n−1) … n−1
            self.rel_pos_h = nn.Parameter(np.zeros((rel_sp_dim, self.head_dim), dtype=np.float32))
            self.rel_pos_w = nn.Parameter(np.zeros((rel_sp_dim, self.head_dim), dtype=np.float32))
            nn.init.trunc_normal_(self.rel_pos_h, std=0.02)               # timm: trunc_normal_tf_, std .02
            nn.init.trunc_normal_(self.rel_pos_w, std=0.02)
        self.store_attn = False
        self.attn_map = None

    def _pool(self, kernel, stride):
        padding = tuple(k // 2 for k in kernel)
        if self.mode == "conv":     # depth-wise over the head_dim channels, shared by all heads
            return nn.Conv2d(self.head_dim, self.head_dim, kernel, stride=stride, padding=padding,
                             groups=self.head_dim, bias=False)
        return WindowPool(self.mode, kernel, stride, padding)

    def _pool_tokens(self, t, pool, norm, hw):
        """Pool one of q, k, v: (B, h, [1 +] H·W, d) → ((B, h, [1 +] H'·W', d), (H', W'))."""
        if pool is not None:                                       # heads folded into the batch
            t, hw = pool_grid_tokens(t, pool, tuple(hw), 1 if self.has_cls_token else 0)   # (B, h, [1 +] H'W', d)
        if norm is not None:
            t = norm(t)                                            # LayerNorm over d
        return t, tuple(hw)

    def rel_pos_bias(self, q, q_size, k_size):
        """E_rel for the grid tokens: (B, h, N_q, N_kv) logits, zero in the class token's row and column.

        From the pooled (unscaled) queries q (B, h, [1 +] q_h·q_w, d): with R_h = rel_pos_h[idx_h]
        (q_h, k_h, d), E_h[b, n, y, x, j] = Σ_c q[b, n, y, x, c]·R_h[y, j, c] — a batched matmul
        per query row y (and likewise E_w per query column x); E_rel = E_h ⊕ E_w on the (k_h, k_w) grid.
        """
        (q_h, q_w), (k_h, k_w) = q_size, k_size
        B, h, _, d = q.shape
        n_cls = 1 if self.has_cls_token else 0
        xp = q.xp
        r_h = self.rel_pos_h[xp.asarray(rel_pos_index(q_h, k_h))]            # (q_h, k_h, d)
        r_w = self.rel_pos_w[xp.asarray(rel_pos_index(q_w, k_w))]            # (q_w, k_w, d)
        r_q = q[:, :, n_cls:].reshape(B, h, q_h, q_w, d)
        e_h = r_q @ r_h.transpose(1, 2)                                       # (B, h, q_h, q_w, k_h)
        e_w = (r_q.transpose(2, 3) @ r_w.transpose(1, 2)).transpose(2, 3)     # (B, h, q_h, q_w, k_w)
        bias = e_h.reshape(B, h, q_h, q_w, k_h, 1) + e_w.reshape(B, h, q_h, q_w, 1, k_w)
        bias = bias.reshape(B, h, q_h * q_w, k_h * k_w)                        # (B, h, N_q, N_kv) grid part
        if n_cls:
            bias = F.pad(bias, (1, 0, 1, 0))                                  # nothing for the class token
        return bias

    # softmax(Q Kᵀ·scale + E_rel) V as one op (F.scaled_dot_product_attention; the max is
    # subtracted inside). False, store_attn: the steps written out below.
    fused_attn = True

    def forward(self, x, feat_size):
        B, N, _ = x.shape
        H, W = feat_size
        n_cls = 1 if self.has_cls_token else 0
        if N != n_cls + H * W or x.shape[-1] != self.dim:
            raise ValueError(f"MultiScaleAttention: expected (B, {n_cls} + {H}·{W}, {self.dim}) tokens for a "
                             f"{H}×{W} grid{' with a class token' if n_cls else ''}, got shape {x.shape}")
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                             # each (B, h, N, d)
        q, q_size = self._pool_tokens(q, self.pool_q, self.norm_q, (H, W))  # (B, h, N_q, d)
        k, k_size = self._pool_tokens(k, self.pool_k, self.norm_k, (H, W))  # (B, h, N_kv, d)
        v, _ = self._pool_tokens(v, self.pool_v, self.norm_v, (H, W))
        bias = self.rel_pos_bias(q, q_size, k_size) if self.rel_pos_h is not None else None

        if self.fused_attn and not self.store_attn:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)   # (B, h, N_q, d)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)                   # (B, h, N_q, N_kv)
            if bias is not None:
                attn = attn + bias
            attn = F.softmax(attn, dim=-1)
            if self.store_attn:
                self.attn_map = attn.detach()
            out = attn @ v                                                  # (B, h, N_q, d)
        if self.residual_pooling:
            out = out + q                                                   # residual pooling: Z = Attn + Q̂
        out = out.transpose(1, 2).reshape(B, -1, self.dim_out)              # heads side by side (B, N_q, C_out)
        return self.proj(out), q_size

    def extra_repr(self):
        return (f"dim={self.dim}, dim_out={self.dim_out}, num_heads={self.num_heads}, mode={self.mode!r}, "
                f"stride_q={self.stride_q}, stride_kv={self.stride_kv}, has_cls_token={self.has_cls_token}")


class WindowPool(nn.Module):
    """Max or average pooling of a map (no weights): ``mode='max'`` / ``'avg'``."""

    def __init__(self, mode, kernel, stride, padding):
        super().__init__()
        self.mode, self.kernel, self.stride, self.padding = mode, kernel, stride, padding

    def forward(self, x):
        pool = F.max_pool2d if self.mode == "max" else F.avg_pool2d
        return pool(x, self.kernel, self.stride, self.padding)
