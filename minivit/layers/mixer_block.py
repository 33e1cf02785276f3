"""MLP-Mixer's layer: token mixing, then channel mixing (Tolstikhin et al., 2021, eq. 1).

A ViT block mixes tokens with attention: each token's update is a weighted sum of all
tokens, with weights computed from the tokens themselves. A Mixer layer mixes them
with a plain MLP whose weights are *fixed* — learned, but the same for every image:

    U = X + W₂ σ(W₁ LayerNorm(X)ᵀ)ᵀ        token mixing:   X is (S, C), the MLP acts on each
                                            column (one channel across all S patches)
    Y = U + W₄ σ(W₃ LayerNorm(U))          channel mixing: the MLP acts on each row (one patch)

The token-mixing MLP is an ordinary MLP applied along the other axis: transpose the
(B, S, C) table to (B, C, S), run ``Mlp(S, D_S)`` on its last axis, transpose back.
Its weights are S×D_S matrices, so a Mixer is built for one number of patches, one
resolution. With D_S chosen independently of S (the paper's choice, §2), the cost
2·S·D_S·C + 2·S·C·D_C is linear in S — unlike attention's S².

timm's names: ``norm1``, ``mlp_tokens`` (``fc1``, ``fc2``), ``norm2``, ``mlp_channels``.
"""
from __future__ import annotations

from functools import partial

from minivit import nn
from minivit.layers.mlp import Mlp


def mixer_widths(dim: int, mlp_ratio) -> tuple[int, int]:
    """(D_S, D_C) from timm's ``mlp_ratio``: one number for both or a pair, each a multiple of
    the width C (timm: D_S = int(0.5·C), D_C = int(4·C) by default)."""
    r_tokens, r_channels = mlp_ratio if isinstance(mlp_ratio, (tuple, list)) else (mlp_ratio, mlp_ratio)
    return int(r_tokens * dim), int(r_channels * dim)


class MixerBlock(nn.Module):
    """One Mixer layer on tokens (B, S, C) → (B, S, C). ``seq_len`` is S, fixed at build time."""

    def __init__(self, dim: int, seq_len: int, mlp_ratio=(0.5, 4.0), norm_layer=partial(nn.LayerNorm, eps=1e-6),
                 act_layer=nn.GELU, drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        tokens_dim, channels_dim = mixer_widths(dim, mlp_ratio)
        self.seq_len = seq_len
        self.norm1 = norm_layer(dim)
        self.mlp_tokens = Mlp(seq_len, tokens_dim, act_layer=act_layer, drop=drop)      # S → D_S → S
        self.drop_path = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp_channels = Mlp(dim, channels_dim, act_layer=act_layer, drop=drop)      # C → D_C → C

    def token_mixing(self, x):
        """(B, S, C) → (B, S, C): the MLP along the token axis (each channel's S values)."""
        y = self.norm1(x).transpose(1, 2)                   # (B, C, S): one row per channel
        return self.mlp_tokens(y).transpose(1, 2)           # (B, C, S) → (B, S, C)

    def forward(self, x):
        if x.shape[1] != self.seq_len:
            raise ValueError(f"MixerBlock: got {x.shape[1]} tokens, but its token-mixing MLP was built for "
                             f"seq_len={self.seq_len}")
        x = x + self.drop_path(self.token_mixing(x))        # (B, S, C): patches talk to each other
        return x + self.drop_path(self.mlp_channels(self.norm2(x)))   # each patch's features mix
