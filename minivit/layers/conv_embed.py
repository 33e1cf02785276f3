"""Convolutional token embedding: CvT's replacement for ViT's patch embedding (CvT §3.1).

ViT cuts the image into non-overlapping P×P patches (a conv with kernel =
stride = P). CvT instead runs an *overlapping* strided convolution over a 2-D
map, kernel s × s with stride s − o (o > 0 pixels of overlap), and normalises
each output position with LayerNorm over its channels:

    f(x_{i−1}) ∈ R^{H_i × W_i × C_i},   H_i = ⌊(H_{i−1} + 2p − s) / stride⌋ + 1

(stage 1 of CvT-13: 7×7, stride 4, padding 2, so 224 → 56; stages 2-3:
3×3, stride 2, padding 1, halving the grid). Each stage starts with one, so
CvT is a pyramid: fewer, wider tokens stage by stage, like a CNN. Because the
conv already encodes *where* a token is (zero padding makes the borders
distinguishable, overlapping windows tie neighbours together), CvT has no
position embedding at all, and the model takes any image size.

Names follow the authors' released code: ``proj`` (the conv), ``norm``.
"""
from __future__ import annotations

import minivit.functional as F
from minivit import nn
from minivit.layers.patch_embed import to_2tuple


def conv_out_size(n: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a conv along one axis: ⌊(n + 2·padding − kernel) / stride⌋ + 1."""
    return (n + 2 * padding - kernel) // stride + 1


class ConvEmbed(nn.Module):
    """(B, C_in, H, W) → tokens (B, H'·W', D) and the grid size (H', W').

    The tokens are the conv's output map read row by row (``b c h w -> b (h w) c``),
    each LayerNorm-ed over its D channels. The stage needs the grid size to fold
    the tokens back into a map for the convolutional projections, so it is
    returned too.
    """

    def __init__(self, patch_size=7, in_chans: int = 3, embed_dim: int = 64, stride=4, padding=2,
                 norm_layer=nn.LayerNorm):
        super().__init__()
        self.patch_size, self.stride, self.padding = to_2tuple(patch_size), to_2tuple(stride), to_2tuple(padding)
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.stride,
                              padding=self.padding)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def output_size(self, H: int, W: int) -> tuple:
        """The token grid (H', W') this embedding makes from an H×W map."""
        return tuple(conv_out_size(n, k, s, p) for n, k, s, p
                     in zip((H, W), self.patch_size, self.stride, self.padding))

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"ConvEmbed: expected a (B, {self.in_chans}, H, W) map, got shape {x.shape}")
        Ho, Wo = self.output_size(*x.shape[2:])
        if Ho < 1 or Wo < 1:
            raise ValueError(f"ConvEmbed: a {x.shape[2]}×{x.shape[3]} map is too small for kernel "
                             f"{self.patch_size}, stride {self.stride}, padding {self.padding} "
                             f"(it would give a {Ho}×{Wo} grid); use a larger image")
        x = self.proj(x)                                # (B, D, H', W'), overlapping windows
        x = F.rearrange(x, "b d h w -> b (h w) d")      # (B, H'·W', D): one token per position
        return self.norm(x), (Ho, Wo)                   # LayerNorm over each token's channels
