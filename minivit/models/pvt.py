"""PVT: Pyramid Vision Transformer (Wang et al., ICCV 2021, arXiv:2102.12122).

ViT keeps one resolution (14×14 tokens for a 224 image) all the way through.
PVT builds a CNN-like pyramid instead: four stages at strides 4, 8, 16, 32
(56×56 → 28×28 → 14×14 → 7×7 tokens at 224), with widths growing as the grid
shrinks, so the early stages see fine detail and the model yields multi-scale
feature maps for detection and segmentation. Each stage i (§3.2, Fig. 3):

    patch embedding   non-overlapping P_i×P_i patches (P₁ = 4, then 2, 2, 2) → Linear → LayerNorm
    + position        a learned embedding per stage, E_pos_i (h_i·w_i × C_i)
    depth_i × block   x = x + DropPath(SRA(LN(x)));  x = x + DropPath(MLP(LN(x)))
    reshape           tokens back to a (B, C_i, h_i, w_i) map for the next stage

On a 56×56 grid plain attention would need a 3136×3136 matrix per head, so the
blocks use **spatial-reduction attention** (``layers/sra.py``) with reduction
ratios R = 8, 4, 2, 1: the keys and values come from a grid R times coarser —
7×7 in every stage at 224. The class token joins only in the last stage (as in
the paper); after a final LayerNorm the head reads it.

For inputs of another size (dense prediction) the position embeddings are
resized bilinearly to the new grid (``layers.pos_embed.resample_pos_embed``),
as the authors do; the input size must still be a multiple of the total stride
P₁·2³.

Names are the authors' (github.com/whai362/PVT, ``classification/pvt.py``), so
their checkpoints load: ``patch_embed1..4`` (``.proj`` conv, ``.norm``),
``pos_embed1..4``, ``block1..4`` (``.j.norm1``, ``.attn.q``, ``.attn.kv``,
``.attn.sr``, ``.attn.norm``, ``.attn.proj``, ``.norm2``, ``.mlp.fc1``,
``.mlp.fc2``), ``norm``, ``cls_token``, ``head``. timm has no PVT v1. Constructor
keywords follow timm's style (``embed_dims``, ``depths``, ``sr_ratios``, …).
"""
from __future__ import annotations

from functools import partial

import numpy as np

import minivit.functional as F
from minivit import nn
from minivit.layers.mlp import Mlp
from minivit.layers.patch_embed import PatchEmbed, check_image, to_2tuple
from minivit.layers.pos_embed import resample_pos_embed
from minivit.layers.sra import SpatialReductionAttention
from minivit.models.features import check_output_fmt, feature_take_indices
from minivit.models.registry import register_model


class Block(nn.Module):
    """PVT v1 block on tokens (B, N, C) on a (H, W) grid: SRA and ViT's MLP, pre-norm (paper eq. 2-3
    with SRA in place of MSA)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, sr_ratio: int = 1,
                 qkv_bias: bool = False, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 act_layer=nn.GELU, norm_layer=partial(nn.LayerNorm, eps=1e-6)):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = SpatialReductionAttention(dim, num_heads=num_heads, sr_ratio=sr_ratio, qkv_bias=qkv_bias,
                                              attn_drop=attn_drop, proj_drop=drop)
        self.drop_path1 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.drop_path2 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, feat_size):
        x = x + self.drop_path1(self.attn(self.norm1(x), feat_size))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


class PyramidVisionTransformer(nn.Module):
    """PVT v1: (B, in_chans, H, W) → logits (B, num_classes).

    Built for ``img_size``; other sizes that are multiples of the total stride
    ``patch_size · 2^(num_stages-1)`` work with resized position embeddings.
    The class defaults are PVT-Small; all the paper's models use ``qkv_bias=True``
    and LayerNorm eps 1e-6 in the blocks (the patch embeddings' and the SRA's
    LayerNorms keep PyTorch's 1e-5, as in the authors' code).
    """

    def __init__(self, img_size=224, patch_size: int = 4, in_chans: int = 3, num_classes: int = 1000,
                 embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8.0, 8.0, 4.0, 4.0),
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                 depths=(3, 4, 6, 3), sr_ratios=(8, 4, 2, 1), num_stages: int = 4):
        super().__init__()
        for name, v in (("embed_dims", embed_dims), ("num_heads", num_heads), ("mlp_ratios", mlp_ratios),
                        ("depths", depths), ("sr_ratios", sr_ratios)):
            if len(v) != num_stages:
                raise ValueError(f"PyramidVisionTransformer: {name} has {len(v)} entries {tuple(v)}, "
                                 f"need one per stage (num_stages={num_stages})")
        if sr_ratios[-1] != 1:
            raise ValueError(f"PyramidVisionTransformer: the last stage carries the class token, which has no "
                             f"place on the grid that spatial reduction needs; use sr_ratios[-1] = 1 "
                             f"(got {tuple(sr_ratios)})")
        self.img_size = to_2tuple(img_size)
        self.patch_size, self.in_chans, self.num_classes = patch_size, in_chans, num_classes
        self.num_stages, self.depths, self.embed_dims = num_stages, tuple(depths), tuple(embed_dims)
        self.patch_sizes = (patch_size,) + (2,) * (num_stages - 1)
        self.stride = patch_size * 2 ** (num_stages - 1)        # total downsampling of the last stage
        for s in self.img_size:
            if s % self.stride:
                raise ValueError(f"PyramidVisionTransformer: img_size {self.img_size} must be divisible by the "
                                 f"total stride {self.stride} (= patch_size {patch_size} · 2^{num_stages - 1})")
        dpr = np.linspace(0, drop_path_rate, sum(depths))     # stochastic depth: 0 → rate over all blocks
        grid, cur = self.img_size, 0
        self.grid_sizes = []
        for i in range(num_stages):
            p = self.patch_sizes[i]
            grid = (grid[0] // p, grid[1] // p)
            self.grid_sizes.append(grid)
            # img_size=None: this model checks and resizes for itself (see forward_features).
            setattr(self, f"patch_embed{i + 1}", PatchEmbed(None, p, in_chans if i == 0 else embed_dims[i - 1],
                                                            embed_dims[i], norm_layer=nn.LayerNorm))
            n_tokens = grid[0] * grid[1] + (1 if i == num_stages - 1 else 0)   # + the class token
            setattr(self, f"pos_embed{i + 1}", nn.Parameter(np.zeros((1, n_tokens, embed_dims[i]), np.float32)))
            setattr(self, f"pos_drop{i + 1}", nn.Dropout(drop_rate))
            setattr(self, f"block{i + 1}", nn.ModuleList([
                Block(embed_dims[i], num_heads[i], mlp_ratio=mlp_ratios[i], sr_ratio=sr_ratios[i],
                      qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
                      drop_path=float(dpr[cur + j]), norm_layer=norm_layer)
                for j in range(depths[i])]))
            cur += depths[i]
        # Stage i's map: stride patch_size·2^i, width embed_dims[i]; module: its blocks.
        self.feature_info = [dict(num_chs=embed_dims[i], reduction=patch_size * 2 ** i, module=f"block{i + 1}")
                             for i in range(num_stages)]
        self.norm = norm_layer(embed_dims[-1])
        self.cls_token = nn.Parameter(np.zeros((1, 1, embed_dims[-1]), np.float32))
        self.num_features = embed_dims[-1]
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self):
        """The authors': position embeddings and class token ~ trunc_normal(std .02); Linear ~
        trunc_normal(std .02), bias 0; LayerNorm weight 1, bias 0; convs keep PyTorch's default."""
        for i in range(self.num_stages):
            nn.init.trunc_normal_(getattr(self, f"pos_embed{i + 1}"), std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

        def init(m):
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(init)

    def no_weight_decay(self) -> set:
        """Position embeddings and the class token (the authors exclude only ``cls_token``,
        noting that excluding the position embeddings too "may be better")."""
        return {"cls_token"} | {f"pos_embed{i + 1}" for i in range(self.num_stages)}

    def _pos_embed(self, i: int, grid):
        """Stage i's position embedding for a (h, w) grid, bilinearly resized if the grid
        differs from the one it was learned for (the class token's entry is kept)."""
        pos = getattr(self, f"pos_embed{i + 1}")
        prefix = 1 if i == self.num_stages - 1 else 0
        return resample_pos_embed(pos, grid, self.grid_sizes[i], num_prefix_tokens=prefix, mode="bilinear")

    def forward_features(self, x):
        """(B, C, H, W) → the last stage's tokens after the final norm (B, 1 + h·w, C₄), class token first."""
        name = type(self).__name__
        check_image(x, None, self.in_chans, name)
        B, _, H, W = x.shape
        if H % self.stride or W % self.stride:
            raise ValueError(f"{name}: input {H}×{W} is not divisible by the total stride {self.stride} "
                             f"(patch_size {self.patch_size} · 2^{self.num_stages - 1}); resize or pad the "
                             f"input to a multiple of {self.stride}")
        for i in range(self.num_stages):
            p = self.patch_sizes[i]
            x = getattr(self, f"patch_embed{i + 1}")(x)        # (B, h·w, C_i)
            H, W = H // p, W // p
            if i == self.num_stages - 1:                      # the class token joins in the last stage
                x = F.cat([self.cls_token.expand(B, -1, -1), x], dim=1)   # (B, 1 + h·w, C)
            x = getattr(self, f"pos_drop{i + 1}")(x + self._pos_embed(i, (H, W)))
            for blk in getattr(self, f"block{i + 1}"):
                x = blk(x, (H, W))
            if i < self.num_stages - 1:
                x = x.transpose(1, 2).reshape(B, -1, H, W)     # (B, C_i, h, w) for the next patch embedding
        return self.norm(x)

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """The stage maps (B, C_i, H/s_i, W/s_i) picked by ``indices`` (see ``models/features.py``),
        and, unless ``intermediates_only``, the final tokens as ``forward_features`` gives them.

        Stage i's map is its tokens after its blocks. The classifier's last stage carries the
        class token, which attends with the grid tokens there and is left out of the map (the
        authors' detection backbone instead drops the class token from the model altogether,
        a different function). ``norm=True`` applies the final LayerNorm to the last stage's
        map, as timm does for its pyramid transformers. timm has no PVT v1. Sizes: any
        multiple of the total stride, with the position embeddings resized bilinearly as in
        ``forward``."""
        check_output_fmt(output_fmt, ("NCHW",), type(self).__name__)
        take, last = feature_take_indices(self.num_stages, indices)
        name = type(self).__name__
        check_image(x, None, self.in_chans, name)
        B, _, H, W = x.shape
        if H % self.stride or W % self.stride:
            raise ValueError(f"{name}: input {H}×{W} is not divisible by the total stride {self.stride} "
                             f"(patch_size {self.patch_size} · 2^{self.num_stages - 1}); resize or pad the "
                             f"input to a multiple of {self.stride}")
        intermediates, S = [], self.num_stages
        for i in range(S):
            if stop_early and i > last:
                break
            p = self.patch_sizes[i]
            x = getattr(self, f"patch_embed{i + 1}")(x)        # (B, h·w, C_i)
            H, W = H // p, W // p
            if i == S - 1:                                    # the class token joins in the last stage
                x = F.cat([self.cls_token.expand(B, -1, -1), x], dim=1)   # (B, 1 + h·w, C)
            x = getattr(self, f"pos_drop{i + 1}")(x + self._pos_embed(i, (H, W)))
            for blk in getattr(self, f"block{i + 1}"):
                x = blk(x, (H, W))
            grid = x
            if i == S - 1:
                grid = (self.norm(x) if norm else x)[:, 1:]   # (B, h·w, C): without the class token
            grid = grid.transpose(1, 2).reshape(B, -1, H, W)  # (B, C_i, h, w)
            if i in take:
                intermediates.append(grid)
            x = grid if i < S - 1 else x                      # the map feeds the next patch embedding
        if intermediates_only:
            return intermediates
        return (self.norm(x) if i == S - 1 else x), intermediates

    def forward_head(self, x, pre_logits: bool = False):
        x = x[:, 0]                                           # (B, C): the class token
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------- CIFAR-10
@register_model
def pvt_tiny(**kwargs) -> PyramidVisionTransformer:
    """PVT v1 for CIFAR-10 (32×32, 10 classes): 2.71M parameters.

    At 224 the 4×4 stem patches give 56×56 → 28 → 14 → 7 token grids. At 32×32
    that would end at 1×1, so the stem takes 2×2 patches: 16×16 → 8×8 → 4×4 → 2×2
    (the same 8× shrink from first stage to last). The paper's ratios R = (8, 4,
    2, 1) reduce every stage's keys to the same 7×7 grid; the analogue here is
    R = (4, 2, 1, 1): 4×4 keys in stages 1-3 and the full 2×2 grid (+ class
    token) in stage 4. Widths (32, 64, 160, 256), heads (1, 2, 5, 8), MLP ratios
    (8, 8, 4, 4), two blocks per stage — PVT-Tiny's depth at half its width.
    """
    args = dict(img_size=32, patch_size=2, num_classes=10, embed_dims=(32, 64, 160, 256),
                num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), depths=(2, 2, 2, 2), sr_ratios=(4, 2, 1, 1))
    return PyramidVisionTransformer(**{**args, **kwargs})


# --------------------------------------------------------------------------- ImageNet (224)
def _pvt_224(depths, **kwargs) -> PyramidVisionTransformer:
    args = dict(patch_size=4, embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
                qkv_bias=True, depths=depths, sr_ratios=(8, 4, 2, 1))
    return PyramidVisionTransformer(**{**args, **kwargs})


@register_model
def pvt_v1_tiny_224(**kwargs) -> PyramidVisionTransformer:
    """PVT-Tiny: depths (2, 2, 2, 2), 13.2M parameters (paper Table 1-2)."""
    return _pvt_224((2, 2, 2, 2), **kwargs)


@register_model
def pvt_v1_small_224(**kwargs) -> PyramidVisionTransformer:
    """PVT-Small: depths (3, 4, 6, 3), 24.5M parameters."""
    return _pvt_224((3, 4, 6, 3), **kwargs)


@register_model
def pvt_v1_medium_224(**kwargs) -> PyramidVisionTransformer:
    """PVT-Medium: depths (3, 4, 18, 3), 44.2M parameters."""
    return _pvt_224((3, 4, 18, 3), **kwargs)


@register_model
def pvt_v1_large_224(**kwargs) -> PyramidVisionTransformer:
    """PVT-Large: depths (3, 8, 27, 3), 61.4M parameters."""
    return _pvt_224((3, 8, 27, 3), **kwargs)
