"""Position embeddings: learned (ViT, DeiT, PVT) and fixed sinusoidal (Transformer, MAE).

Self-attention is permutation-equivariant, so without a position signal the
model cannot tell where a patch came from. ViT adds a learned vector per
position; the 2-D sinusoidal alternative encodes (row, col) with sines and
cosines of geometrically spaced frequencies and has nothing to learn.
"""
from __future__ import annotations

import numpy as np

import minivit.functional as F


def sincos_1d(positions, dim: int, temperature: float = 10000.0):
    """(len(positions), dim): [sin(p·ω_k), cos(p·ω_k)] with ω_k = 1/temperature^(k/(dim/2))."""
    if dim % 2:
        raise ValueError(f"sincos_1d: dim must be even, got {dim}")
    omega = 1.0 / temperature ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
    angles = np.outer(np.asarray(positions, dtype=np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(grid_h: int, grid_w: int, dim: int, temperature: float = 10000.0):
    """(grid_h·grid_w, dim) fixed embedding: half the channels encode the row, half the column."""
    if dim % 4:
        raise ValueError(f"sincos_2d: dim must be divisible by 4, got {dim}")
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    emb = np.concatenate([sincos_1d(rows.ravel(), dim // 2, temperature),
                          sincos_1d(cols.ravel(), dim // 2, temperature)], axis=1)
    return emb.astype(np.float32)


def resample_pos_embed(pos_embed, new_size, old_size, num_prefix_tokens: int = 0, mode: str = "bilinear"):
    """Resize a learned (1, prefix + h·w, C) position embedding to a new grid, differentiably.

    The grid part is viewed as a (1, C, h, w) image and interpolated (PVT does this
    with bilinear interpolation for dense prediction at other resolutions); class or
    distillation tokens in front are kept as they are.
    """
    (oh, ow), (nh, nw) = old_size, new_size
    if (oh, ow) == (nh, nw):
        return pos_embed
    C = pos_embed.shape[-1]
    prefix = pos_embed[:, :num_prefix_tokens]
    grid = pos_embed[:, num_prefix_tokens:]
    if grid.shape[1] != oh * ow:
        raise ValueError(f"resample_pos_embed: {grid.shape[1]} grid tokens do not form a {oh}×{ow} grid")
    grid = grid.reshape(1, oh, ow, C).permute(0, 3, 1, 2)                       # (1, C, h, w)
    grid = F.interpolate(grid, size=(nh, nw), mode=mode, align_corners=False)   # (1, C, h', w')
    grid = grid.permute(0, 2, 3, 1).reshape(1, nh * nw, C)
    return F.cat([prefix, grid], dim=1) if num_prefix_tokens else grid
