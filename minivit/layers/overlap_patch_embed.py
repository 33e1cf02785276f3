"""Overlapping patch embedding (PVT v2 §3.2, Fig. 1(a)).

ViT and PVT v1 cut the image into non-overlapping P×P patches (a conv with
kernel = stride = P), which loses the continuity of the image across patch
borders. PVT v2 uses a conv whose kernel is larger than its stride and
zero-pads it by ⌊kernel/2⌋, so neighbouring patches overlap:

    stem            kernel 7, stride 4, padding 3    (B, 3, H, W)    → (B, H/4, W/4, C₁)
    between stages  kernel 3, stride 2, padding 1    (B, Cᵢ, h, w)   → (B, h/2, w/2, Cᵢ₊₁)

then LayerNorm over the channels. Output size ⌈H/stride⌉ for the usual
odd kernel = 2·padding + 1 (⌊(H + 2p − k)/s⌋ + 1), so any input size works.

Names are timm's ``OverlapPatchEmbed``: ``proj`` (the conv) and ``norm``.
"""
from __future__ import annotations

from minivit import nn
from minivit.layers.patch_embed import to_2tuple


class OverlapPatchEmbed(nn.Module):
    """Conv (kernel ``patch_size`` > ``stride``, padding kernel//2) then LayerNorm.

    (B, C_in, H, W) → (B, H', W', embed_dim), channels last as in timm, so the
    caller can read the grid size off the shape before flattening to tokens.
    """

    def __init__(self, patch_size=7, stride: int = 4, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        patch_size = to_2tuple(patch_size)
        if max(patch_size) <= stride:
            raise ValueError(f"OverlapPatchEmbed: patch_size {patch_size} must be larger than stride {stride} "
                             f"for the patches to overlap; use PatchEmbed for non-overlapping patches")
        self.patch_size, self.stride, self.in_chans = patch_size, stride, in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=stride,
                              padding=(patch_size[0] // 2, patch_size[1] // 2))
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"OverlapPatchEmbed: expected (B, {self.in_chans}, H, W), got shape {x.shape}")
        x = self.proj(x)                                     # (B, C, H', W')
        return self.norm(x.permute(0, 2, 3, 1))              # (B, H', W', C): LayerNorm over channels
