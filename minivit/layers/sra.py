"""Spatial-reduction attention (SRA, PVT v1 §3.3) and linear SRA (PVT v2 §3.1).

A pyramid transformer keeps high-resolution tokens in its first stage (hw = 56×56
= 3136 tokens for a 224 image), where plain MSA's (hw)² attention matrix is too
expensive. SRA keeps the queries at full resolution and shrinks only the keys
and values. For tokens X (hw × C) on an h×w grid and reduction ratio R:

    Q = X W_q                                   (hw × C)
    SR(X) = LN(Reshape(X, R) W_s)               (hw/R² × C)      PVT v1 eq. (3)-(5)
    K, V = SR(X) W_k, SR(X) W_v                 (hw/R² × C)
    SRA(X) = [softmax(Q_j K_jᵀ / √d) V_j]_j W_o

``Reshape(X, R) W_s`` — cut the h×w grid into R×R cells and project each cell's
R²C values to C — is a convolution with kernel = stride = R (``sr``). With R = 1
there is no reduction and SRA is exactly MSA (with separate ``q`` and ``kv``
linears instead of one ``qkv``).

Cost (multiply-accumulates) with N = hw:

    projections   q: NC²   kv: 2NC²/R²   proj: NC²
    reduction     sr: (N/R²)·(R²C)·C = NC²  (for R > 1)
    attention     QKᵀ and AV: 2·N·(N/R²)·C = 2N²C/R²

The paper writes Ω(SRA) = 4hwC² + 2(hw)²C/R²: the projections and the reduction
conv together are (3 + 2/R²)·hwC² ≤ 3.5·hwC² for R ≥ 2, within the 4hwC² of MSA's
projections, and the quadratic term — the one that matters at high resolution — is
R² times smaller than MSA's 2(hw)²C.

Linear SRA (PVT v2, ``linear_attn=True``) replaces the strided conv with an
adaptive average pool to a fixed 7×7 grid, then a 1×1 conv, LayerNorm and GELU:

    SR(X) = GELU(LN(Conv1x1(AvgPool_7×7(X))))   (49 × C)

so K and V always have P² = 49 tokens and the cost is linear in hw:
q + proj 2hwC², pooling hwC, 1×1 conv + kv 3·49·C², attention 2·hw·49·C.

Parameter names are timm's ``pvt_v2.Attention`` (and the PVT v1 authors'):
``q``, ``kv``, ``sr``, ``norm``, ``act``, ``pool``, ``proj``.
"""
from __future__ import annotations

import minivit.functional as F
from minivit import nn


class SpatialReductionAttention(nn.Module):
    """SRA (or linear SRA) on tokens (B, N, C) laid out on a (H, W) grid → (B, N, C).

    ``forward(x, feat_size)`` takes the grid size (H, W) so the tokens can be put
    back on the grid for the reduction. With ``sr_ratio = 1`` and no
    ``linear_attn`` there is no reduction: then N need not be H·W (PVT v1's last
    stage has a class token in front of the H·W grid tokens).

    Set ``store_attn = True`` to keep the last attention weights (B, heads, N, N')
    in ``self.attn_map`` (N' = the reduced number of keys).
    """

    def __init__(self, dim: int, num_heads: int = 8, sr_ratio: int = 1, linear_attn: bool = False,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0, pool_size: int = 7):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"SpatialReductionAttention: dim ({dim}) must be divisible by num_heads ({num_heads})")
        if sr_ratio < 1:
            raise ValueError(f"SpatialReductionAttention: sr_ratio must be ≥ 1, got {sr_ratio}")
        self.dim, self.num_heads, self.sr_ratio, self.linear_attn = dim, num_heads, sr_ratio, linear_attn
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)      # K and V side by side
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # The reduction. Modules that are None are simply absent from the state dict, as in timm.
        self.pool = self.sr = self.norm = self.act = None
        if linear_attn:
            self.pool = nn.AdaptiveAvgPool2d(pool_size)
            self.sr = nn.Conv2d(dim, dim, kernel_size=1, stride=1)
            self.norm = nn.LayerNorm(dim)
            self.act = nn.GELU()
        elif sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        self.store_attn = False
        self.attn_map = None

    def reduce(self, x, feat_size):
        """The K/V source: (B, N, C) → (B, N', C), N' = ⌊H/R⌋·⌊W/R⌋, 49, or N (no reduction)."""
        if self.sr is None:
            return x
        B, N, C = x.shape
        H, W = feat_size
        if N != H * W:
            raise ValueError(f"SpatialReductionAttention: {N} tokens do not form the {H}×{W} grid that the "
                             f"spatial reduction needs (extra tokens such as a class token only work with "
                             f"sr_ratio=1 and linear_attn=False)")
        x = F.rearrange(x, "b (h w) c -> b c h w", h=H)      # back on the grid (B, C, H, W)
        if self.pool is not None:
            x = self.pool(x)                                 # (B, C, 7, 7): a fixed number of keys
        x = self.sr(x)                                       # (B, C, H/R, W/R), or (B, C, 7, 7)
        x = self.norm(F.rearrange(x, "b c h w -> b (h w) c"))  # (B, N', C)
        return self.act(x) if self.act is not None else x

    # softmax(Q Kᵀ·scale) V as one op (F.scaled_dot_product_attention), as timm's ``fused_attn``.
    # False, store_attn, or attention dropout while training: the steps written out below.
    fused_attn = True

    def forward(self, x, feat_size):
        B, N, C = x.shape
        kv = self.kv(self.reduce(x, feat_size))                                         # (B, N', 2C)
        if self.fused_attn and not self.store_attn and (self.attn_drop.p == 0 or not self.training):
            # the head split, unbind, attention and merge below as one op: (B, N, C), heads side by side
            x = F.q_kv_attention(self.q(x), kv, self.num_heads, scale=self.scale)
            return self.proj_drop(self.proj(x))
        # head split as one layout op each (F.rearrange = reshape → permute → reshape)
        q = F.rearrange(self.q(x), "b n (h d) -> b h n d", h=self.num_heads)            # (B, h, N, d)
        kv = F.rearrange(kv, "b n (two h d) -> two b h n d", two=2, h=self.num_heads)   # (2, B, h, N', d)
        k, v = kv.unbind(0)                                                             # each (B, h, N', d)
        attn = (q * self.scale) @ k.transpose(-2, -1)                                   # (B, h, N, N')
        attn = F.softmax(attn, dim=-1)
        if self.store_attn:
            self.attn_map = attn.detach()
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)                                 # heads side by side
        return self.proj_drop(self.proj(x))

    def extra_repr(self):
        return (f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}, "
                f"linear_attn={self.linear_attn}")
