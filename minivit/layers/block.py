"""The pre-norm transformer block (ViT eq. 2-3):

    x = x + DropPath(MSA(LN(x)))
    x = x + DropPath(MLP(LN(x)))
"""
from __future__ import annotations

from functools import partial

from minivit import nn
from minivit.layers.attention import Attention
from minivit.layers.mlp import Mlp


class LayerScale(nn.Module):
    """Per-channel learnable scale γ ⊙ x (CaiT); timm's ``ls1``/``ls2`` with ``gamma``."""

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        import numpy as np
        self.gamma = nn.Parameter(np.full(dim, init_values, dtype=np.float32))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    """One ViT block on (B, N, C) → (B, N, C); timm's names (norm1, attn, ls1, drop_path1, …)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, init_values: float | None = None,
                 drop_path: float = 0.0, act_layer=nn.GELU, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                 attn_layer=Attention):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn_layer(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x
