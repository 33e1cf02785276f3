"""Multi-head self-attention (MSA), the heart of the Vision Transformer.

For tokens X (N × C) and each head h with width d = C / heads (ViT eq. 5-7):

    Q = X W_q,  K = X W_k,  V = X W_v                       (one Linear makes all three)
    A = softmax(Q Kᵀ / √d)                                  (N × N attention weights)
    SA(X) = A V,   MSA(X) = [SA_1(X); …; SA_heads(X)] W_o

Cost (multiply-accumulates): 4NC² for the four projections + 2N²C for QKᵀ and AV,
the ``4hwC² + 2(hw)²C`` of the Swin paper with N = hw — quadratic in the number of tokens.
"""
from __future__ import annotations

import minivit.functional as F
from minivit import nn


class Attention(nn.Module):
    """MSA on (B, N, C) → (B, N, C). timm's names: ``qkv``, ``proj``.

    Set ``store_attn = True`` to keep the last attention weights (B, heads, N, N)
    in ``self.attn_map`` (the lessons draw them).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5          # 1/√d keeps the logits' variance ≈ 1
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.store_attn = False
        self.attn_map = None

    # The attention as one op (F.qkv_attention: the steps below with a hand-derived backward,
    # no split copies), as timm's ``fused_attn``. False, store_attn, or attention dropout while
    # training: the steps written out.
    fused_attn = True

    def forward(self, x):
        B, N, C = x.shape
        if self.fused_attn and not self.store_attn and (self.attn_drop.p == 0 or not self.training):
            x = F.qkv_attention(self.qkv(x), self.num_heads, self.scale)   # (B, N, C)
            return self.proj_drop(self.proj(x))
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)   # (B, N, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                      # each (B, h, N, d)
        attn = (q * self.scale) @ k.transpose(-2, -1)                       # (B, h, N, N)
        attn = F.softmax(attn, dim=-1)
        if self.store_attn:
            self.attn_map = attn.detach()
        attn = self.attn_drop(attn)
        x = attn @ v                                                        # (B, h, N, d)
        x = x.transpose(1, 2).reshape(B, N, C)                              # heads side by side
        return self.proj_drop(self.proj(x))
