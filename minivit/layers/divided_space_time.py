"""Divided space-time attention: TimeSformer's block ("Is Space-Time Attention All You Need for
Video Understanding?", Bertasius, Wang & Torresani, ICML 2021, §3 and Fig. 1).

A clip of T frames, each cut into N patches, gives N·T tokens. Joint space-time attention
lets every token attend to all N·T others: 2·(NT)²·D multiply-accumulates for QKᵀ and AV.
Divided attention factorises it into two attentions per block (the paper's eq. 7-8):

    time:   each patch position n attends over its own T frames            N sequences of T
    space:  each frame t attends over its N patches (+ the class token)    T sequences of 1 + N

so the attention term falls to 2·(N·T² + T·(N+1)²)·D; the paper's Table 1 shows divided is both
cheaper and more accurate on Kinetics-400 than joint and space-only attention.

Details of the released code (facebookresearch/TimeSformer, and Hugging Face's port), kept:

* the tokens are **patch-major**: token 1 + n·T + t is patch n of frame t (token 0 is the
  class token), so a time sequence is a contiguous run of T tokens;
* the class token is **left out of the time attention**; for the space attention it is
  copied into every frame's sequence and the T outputs for it are **averaged**;
* the time attention's output passes through one more linear map, ``temporal_fc`` (in
  addition to the attention's own ``proj``), before its residual sum — the released code
  zero-initialises it in every block but the first, so the block starts as the image block;
* one pre-norm per attention (``temporal_norm1``, ``norm1``) and one before the MLP (``norm2``).

Parameter names are the released code's (timm has no TimeSformer): ``temporal_norm1``,
``temporal_attn.{qkv,proj}``, ``temporal_fc``, ``norm1``, ``attn.{qkv,proj}``, ``norm2``,
``mlp.{fc1,fc2}``.
"""
from __future__ import annotations

from functools import partial

import minivit.functional as F
from minivit import nn
from minivit.layers.attention import Attention
from minivit.layers.mlp import Mlp


class DividedSpaceTimeBlock(nn.Module):
    """One TimeSformer block on (B, 1 + N·T, D) patch-major tokens → the same shape."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 act_layer=nn.GELU, norm_layer=partial(nn.LayerNorm, eps=1e-6)):
        super().__init__()
        # time attention: each patch position over its T frames
        self.temporal_norm1 = norm_layer(dim)
        self.temporal_attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                       proj_drop=proj_drop)
        self.temporal_fc = nn.Linear(dim, dim)
        # space attention: each frame over its N patches and the class token
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                              proj_drop=proj_drop)
        self.drop_path = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)

    def forward(self, x, num_frames: int):
        B, L, D = x.shape
        T = num_frames
        if (L - 1) % T:
            raise ValueError(f"DividedSpaceTimeBlock: {L} tokens is not 1 + N·T for num_frames={T}; "
                             f"pass the class token followed by N patches of each of the {T} frames")
        N = (L - 1) // T
        cls, xt = x[:, :1], x[:, 1:]                                        # (B, 1, D), (B, N·T, D)

        # time: patch-major tokens are already N runs of T frames
        t = xt.reshape(B * N, T, D)                                         # (B·N, T, D)
        t = self.drop_path(self.temporal_attn(self.temporal_norm1(t)))
        xt = xt + self.temporal_fc(t.reshape(B, N * T, D))                  # (B, N·T, D)

        # space: regroup by frame, the class token copied into each frame's sequence
        s = xt.reshape(B, N, T, D).permute(0, 2, 1, 3).reshape(B * T, N, D)   # (B·T, N, D)
        s = F.cat([cls.expand(B, T, D).reshape(B * T, 1, D), s], dim=1)      # (B·T, 1 + N, D)
        s = self.drop_path(self.attn(self.norm1(s)))
        cls_res = s[:, 0].reshape(B, T, D).mean(dim=1, keepdim=True)        # (B, 1, D): mean over frames
        s = s[:, 1:].reshape(B, T, N, D).permute(0, 2, 1, 3).reshape(B, N * T, D)   # back to patch-major
        x = F.cat([cls + cls_res, xt + s], dim=1)                           # (B, 1 + N·T, D)

        return x + self.drop_path(self.mlp(self.norm2(x)))
