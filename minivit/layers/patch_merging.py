"""Patch merging: Swin's downsampling between stages (Swin §3.1, "Patch Merging").

Each 2×2 group of neighbouring tokens becomes one token: their four C-vectors
are concatenated (4C), layer-normalised, and a linear layer without bias maps
4C → 2C. The token grid halves along each axis and the width doubles, as a
strided convolution does in a CNN, which is what makes Swin hierarchical
(H/4 → H/8 → H/16 → H/32 for the 224 models).

Order of the four neighbours in the concatenation (the original Swin code's,
and so the order checkpoints expect): (0,0), (1,0), (0,1), (1,1) — (row, col)
offsets inside the 2×2 group, the row offset changing fastest.
"""
from __future__ import annotations

from minivit import functional as F
from minivit import nn


class PatchMerging(nn.Module):
    """(B, H, W, C) → (B, H/2, W/2, out_dim), out_dim = 2C by default.

    timm's names: ``norm`` (LayerNorm(4C)), ``reduction`` (Linear(4C, out_dim, bias=False)).
    """

    def __init__(self, dim: int, out_dim: int | None = None, norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.out_dim = out_dim or 2 * dim
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, self.out_dim, bias=False)

    def forward(self, x):
        B, H, W, C = x.shape
        if H % 2 or W % 2:
            raise ValueError(f"PatchMerging: a {H}×{W} token grid cannot be merged in 2×2 groups; "
                             f"H and W must be even (choose an image size divisible by "
                             f"patch_size × 2^(stages−1))")
        if C != self.dim:
            raise ValueError(f"PatchMerging: expected {self.dim} channels (B, H, W, C), got shape {x.shape}")
        # reshape to (B, H/2, dy, W/2, dx, C), permute to (B, H/2, W/2, dx, dy, C) (dy fastest, timm's
        # order), merge the last three: one layout op
        x = F.rearrange(x, "b (h dy) (w dx) c -> b h w (dx dy c)", dy=2, dx=2)  # (B, H/2, W/2, 4C)
        return self.reduction(self.norm(x))                 # (B, H/2, W/2, out_dim)

    def extra_repr(self):
        return f"dim={self.dim}, out_dim={self.out_dim}"
