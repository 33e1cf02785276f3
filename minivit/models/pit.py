"""PiT, the Pooling-based Vision Transformer: "Rethinking Spatial Dimensions of Vision
Transformers" (Heo et al., 2021).

A ViT keeps the same number of tokens and channels from its first block to its last.
CNNs do not: ResNet halves the resolution and doubles the channels stage by stage,
and the PiT paper shows (§3.1, Fig. 3) that this spatial-reduction "pyramid" helps a
transformer too — better accuracy and generalisation at a lower cost. PiT is a ViT in
three stages with pooling between them (Fig. 1c):

    stem     : conv k = patch_size, stride = stride (overlapping patches)   → (B, D₁, h, w)
               + a learned position embedding shaped like the grid (1, D₁, h, w)
    stage s  : [cls; flatten(x)] → depth[s] ViT blocks at width D_s = base_dims[s]·heads[s]
    pooling  : depthwise conv, stride 2, D_s → D_{s+1} on the grid; a Linear on the class token
               (``ConvHeadPooling``; h, w → ⌈h/2⌉, ⌈w/2⌉)
    head     : LayerNorm on the class token → Linear

Every head keeps the same width (base_dims[s] = 32 or 48 or 64 channels per head) while
the heads double — so does D — as the grid shrinks 4×: the tokens get fewer and richer.

Constructor keywords and state_dict keys are timm's (``patch_embed.conv``, ``pos_embed``
(1, D, h, w), ``cls_token``, ``transformers.0.blocks.0.attn.qkv``,
``transformers.1.pool.conv``/``.fc``, ``norm``, ``head``, ``head_dist``).
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np

import minivit.functional as F
from minivit import nn
from minivit.layers.block import Block
from minivit.layers.patch_embed import check_image, to_2tuple
from minivit.layers.pit_pool import ConvHeadPooling
from minivit.models.features import check_output_fmt, feature_take_indices
from minivit.models.registry import register_model


class ConvEmbedding(nn.Module):
    """PiT's stem: one conv with kernel ``patch_size`` and ``stride`` (overlapping patches when
    stride < patch_size), no padding: (B, C, H, W) → (B, D, h, w), h = ⌊(H − P)/stride⌋ + 1.
    timm's name for the conv: ``conv``."""

    def __init__(self, in_channels: int, out_channels: int, img_size=224, patch_size: int = 16,
                 stride: int = 8):
        super().__init__()
        self.img_size, self.patch_size, self.stride = to_2tuple(img_size), to_2tuple(patch_size), stride
        if any(s < p for s, p in zip(self.img_size, self.patch_size)):
            raise ValueError(f"ConvEmbedding: img_size {self.img_size} is smaller than patch_size {self.patch_size}")
        self.height = math.floor((self.img_size[0] - self.patch_size[0]) / stride + 1)
        self.width = math.floor((self.img_size[1] - self.patch_size[1]) / stride + 1)
        self.grid_size = (self.height, self.width)
        self.in_chans = in_channels
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=patch_size, stride=stride)

    def forward(self, x):
        # The grid position embedding fixes the image size.
        check_image(x, self.img_size, self.in_chans, "PoolingVisionTransformer")
        return self.conv(x)                                             # (B, D, h, w)


class Transformer(nn.Module):
    """One PiT stage (timm's and the PiT authors' name): optional pooling, then ViT blocks on
    the class token(s) and the spatial tokens together.

    forward(x, cls_tokens):  x (B, C_in, h, w), cls_tokens (B, T, C_in)
                          →  x (B, C, h', w'), cls_tokens (B, T, C) with C = base_dim·heads.
    """

    def __init__(self, base_dim: int, depth: int, heads: int, mlp_ratio: float, pool=None,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path_prob=None):
        super().__init__()
        embed_dim = base_dim * heads
        drop_path_prob = drop_path_prob or [0.0] * depth
        self.pool = pool                 # ConvHeadPooling between stages, None in the first
        self.norm = nn.Identity()        # timm keeps a (parameter-free) slot here; PiT uses none
        self.blocks = nn.Sequential(*[
            Block(embed_dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=proj_drop, attn_drop=attn_drop,
                  drop_path=drop_path_prob[i], norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for i in range(depth)])

    def forward(self, x, cls_tokens):
        T = cls_tokens.shape[1]
        if self.pool is not None:
            x, cls_tokens = self.pool(x, cls_tokens)                   # (B, C, h', w'), (B, T, C)
        B, C, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)                                # (B, h·w, C): grid → tokens
        x = F.cat([cls_tokens, x], dim=1)                               # (B, T + h·w, C)
        x = self.blocks(self.norm(x))
        cls_tokens, x = x[:, :T], x[:, T:]
        x = x.transpose(1, 2).reshape(B, C, H, W)                       # tokens → grid, for the next pooling
        return x, cls_tokens


class PoolingVisionTransformer(nn.Module):
    """PiT on images (B, in_chans, H, W) → logits (B, num_classes).

    Arguments are timm's: ``base_dims`` (channels per head, per stage), ``depth`` and
    ``heads`` per stage; stage s has width base_dims[s]·heads[s]. ``distilled=True`` adds
    a distillation token and ``head_dist`` as DeiT: training mode then returns
    ``(cls_logits, dist_logits)``, eval mode their average. ``drop_path_rate`` grows
    linearly over all blocks of all stages.
    """

    def __init__(self, img_size=224, patch_size: int = 16, stride: int = 8, stem_type: str = "overlap",
                 base_dims=(48, 48, 48), depth=(2, 6, 4), heads=(2, 4, 8), mlp_ratio: float = 4.0,
                 num_classes: int = 1000, in_chans: int = 3, global_pool: str = "token", distilled: bool = False,
                 drop_rate: float = 0.0, pos_drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        if global_pool != "token":
            raise ValueError(f"PoolingVisionTransformer: only global_pool='token' is supported, got {global_pool!r}")
        if stem_type != "overlap":
            raise ValueError(f"PoolingVisionTransformer: only stem_type='overlap' exists, got {stem_type!r}")
        if not len(base_dims) == len(depth) == len(heads):
            raise ValueError(f"PoolingVisionTransformer: base_dims {tuple(base_dims)}, depth {tuple(depth)} and "
                             f"heads {tuple(heads)} must have one entry per stage")
        self.base_dims, self.heads = tuple(base_dims), tuple(heads)
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.num_tokens = 2 if distilled else 1
        embed_dim = base_dims[0] * heads[0]

        self.patch_embed = ConvEmbedding(in_chans, embed_dim, img_size, patch_size, stride)
        h, w = self.patch_embed.grid_size
        self.pos_embed = nn.Parameter(np.zeros((1, embed_dim, h, w), dtype=np.float32))   # one per grid cell
        self.cls_token = nn.Parameter(np.zeros((1, self.num_tokens, embed_dim), dtype=np.float32))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        # stochastic depth: linear over all blocks, then cut into stages
        dpr = [float(r) for r in np.linspace(0, drop_path_rate, sum(depth))]
        bounds = np.cumsum([0, *depth])
        stages, prev_dim = [], embed_dim
        for i in range(len(depth)):
            embed_dim = base_dims[i] * heads[i]
            pool = ConvHeadPooling(prev_dim, embed_dim, stride=2) if i > 0 else None
            stages.append(Transformer(base_dims[i], depth[i], heads[i], mlp_ratio, pool=pool,
                                      proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                                      drop_path_prob=dpr[bounds[i]:bounds[i + 1]]))
            prev_dim = embed_dim
        self.transformers = nn.ModuleList(stages)
        # Stage i's map: stride·2^i nominally (timm's numbers; the stem has no padding, so the
        # grid is ⌊(H − P)/stride⌋ + 1, then halved rounding up, e.g. 27, 14, 7 at 224).
        self.feature_info = [dict(num_chs=base_dims[i] * heads[i], reduction=stride * 2 ** i,
                                  module=f"transformers.{i}") for i in range(len(depth))]
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.num_features = self.embed_dim = embed_dim

        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = None
        if distilled:
            self.head_dist = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.distilled_training = True  # as our DeiT: with distilled=True, training returns both logits
        self.init_weights()

    def init_weights(self):
        """timm's PiT init: position embedding and class token(s) ~ TruncNormal(std .02);
        Linear and Conv2d keep PyTorch's default init, LayerNorm 1/0."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    def set_distilled_training(self, enable: bool = True):
        self.distilled_training = enable

    def forward_features(self, x):
        """(B, C, H, W) → the class token(s) after the last stage and the final norm, (B, T, D)."""
        x = self.patch_embed(x)                                         # (B, D₁, h, w)
        x = self.pos_drop(x + self.pos_embed)
        cls_tokens = self.cls_token.expand(x.shape[0], -1, -1)          # (B, T, D₁)
        for stage in self.transformers:
            x, cls_tokens = stage(x, cls_tokens)
        return self.norm(cls_tokens)

    def _pos_embed(self, grid):
        """The (1, D₁, h, w) position embedding for a stem grid ``grid``: bilinearly resized
        (align_corners=False) when it differs from the one it was learned for."""
        if tuple(grid) == tuple(self.pos_embed.shape[2:]):
            return self.pos_embed
        return F.interpolate(self.pos_embed, size=tuple(grid), mode="bilinear", align_corners=False)

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """The stage maps (B, D_i, h_i, w_i) picked by ``indices`` (see ``models/features.py``:
        each stage's spatial tokens after its blocks, the class token(s) left out), and, unless
        ``intermediates_only``, the normalised class token(s) (B, T, D) as ``forward_features``.

        As timm, ``norm`` changes nothing (the final LayerNorm is for the class token only).
        Sizes: any H, W ≥ patch_size; off ``img_size`` the grid position embedding is
        resized bilinearly (timm's PiT only runs at its ``img_size``; the classifier's
        ``forward`` here keeps that check too)."""
        check_output_fmt(output_fmt, ("NCHW",), type(self).__name__)
        take, last = feature_take_indices(len(self.transformers), indices)
        name = type(self).__name__
        check_image(x, None, self.in_chans, name)
        P = self.patch_embed.patch_size
        if x.shape[2] < P[0] or x.shape[3] < P[1]:
            raise ValueError(f"{name}: input {x.shape[2]}×{x.shape[3]} is smaller than the stem's patch {P}; "
                             f"use images of at least {P[0]}×{P[1]}")
        x = self.patch_embed.conv(x)                                    # (B, D₁, h, w)
        x = self.pos_drop(x + self._pos_embed(x.shape[2:]))
        cls_tokens = self.cls_token.expand(x.shape[0], -1, -1)          # (B, T, D₁)
        intermediates = []
        for i, stage in enumerate(self.transformers):
            if stop_early and i > last:
                break
            x, cls_tokens = stage(x, cls_tokens)                        # (B, D_i, h_i, w_i), (B, T, D_i)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return (self.norm(cls_tokens) if i == len(self.transformers) - 1 else cls_tokens), intermediates

    def forward_head(self, x, pre_logits: bool = False):
        if self.head_dist is None:
            x = self.head_drop(x[:, 0])                                 # (B, D)
            return x if pre_logits else self.head(x)
        x, x_dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
        if pre_logits:
            return (x + x_dist) / 2
        x, x_dist = self.head(x), self.head_dist(x_dist)
        if self.distilled_training and self.training:
            return x, x_dist
        return (x + x_dist) / 2

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# =========================================================================== configurations
def _pit(defaults, kwargs):
    return PoolingVisionTransformer(**dict(defaults, **kwargs))


@register_model
def pit_tiny(**kwargs):
    """CIFAR-10 PiT: PiT-Ti's stages (base_dims 32, heads 2/4/8 → widths 64/128/256, depths
    2/6/4, MLP ratio 4) on a stem made for 32×32: 4,514,506 parameters.

    PiT-Ti's stem at 224 is a 16×16 conv with stride 8 (patch = 2 × stride, overlapping)
    → 27×27 → 14×14 → 7×7 tokens. The same shape at 32×32 is a 4×4 conv with stride 2:
    (32 − 4)/2 + 1 = 15, and the 15 windows cover all 32 pixels exactly ((15 − 1)·2 + 4 = 32),
    so the pyramid is 15×15 → 8×8 → 4×4 tokens (225 → 64 → 16), the same ratio of tokens
    to image as ViT-Lite's 8×8 in the middle stage. (A 16×16 first grid would need padding,
    which timm's PiT stem does not have.)
    """
    return _pit(dict(img_size=32, patch_size=4, stride=2, base_dims=(32, 32, 32), depth=(2, 6, 4),
                     heads=(2, 4, 8), mlp_ratio=4, num_classes=10), kwargs)


@register_model
def pit_ti_224(**kwargs):
    """PiT-Ti (PiT Table 2: 4.9M): stem 16/8 → 27×27, widths 64/128/256, depths 2/6/4."""
    return _pit(dict(patch_size=16, stride=8, base_dims=(32, 32, 32), depth=(2, 6, 4), heads=(2, 4, 8)), kwargs)


@register_model
def pit_xs_224(**kwargs):
    """PiT-XS (10.6M): widths 96/192/384, depths 2/6/4."""
    return _pit(dict(patch_size=16, stride=8, base_dims=(48, 48, 48), depth=(2, 6, 4), heads=(2, 4, 8)), kwargs)


@register_model
def pit_s_224(**kwargs):
    """PiT-S (23.5M): widths 144/288/576, depths 2/6/4."""
    return _pit(dict(patch_size=16, stride=8, base_dims=(48, 48, 48), depth=(2, 6, 4), heads=(3, 6, 12)), kwargs)


@register_model
def pit_b_224(**kwargs):
    """PiT-B (73.8M): stem 14/7 → 31×31 → 16×16 → 8×8, widths 256/512/1024, depths 3/6/4."""
    return _pit(dict(patch_size=14, stride=7, base_dims=(64, 64, 64), depth=(3, 6, 4), heads=(4, 8, 16)), kwargs)
