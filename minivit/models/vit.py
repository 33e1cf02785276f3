"""The Vision Transformer (ViT): "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021).

The whole model is four equations (ViT §3.1, eq. 1-4):

    z₀ = [x_class; x_p¹E; x_p²E; …; x_pᴺE] + E_pos      patch tokens, a class token, positions
    z'ₗ = MSA(LN(zₗ₋₁)) + zₗ₋₁                           l = 1 … L
    zₗ  = MLP(LN(z'ₗ)) + z'ₗ
    y   = LN(z_L⁰)                                       the class token's final state → head

An image (C, H, W) is cut into N = HW/P² patches, each flattened and projected to
D channels (``PatchEmbed``); a learned class token is put in front; a position
embedding (learned, or fixed 2-D sin-cos) is added, because attention alone cannot
tell where a token came from; L pre-norm transformer blocks follow (``Block``), and
the class token — or, with ``global_pool='avg'``, the mean of the patch tokens, or with
``global_pool='map'`` a learned query attending over them (``layers/attention_pool.py``,
"Scaling Vision Transformers" §3.2) — feeds a linear classifier.

Constructor keywords and state_dict keys are timm's (``cls_token``, ``pos_embed``,
``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight``, ``norm``, ``fc_norm``,
``head``, ``attn_pool``), so ``load_state_dict(timm_model.state_dict())`` just works.
"""
from __future__ import annotations

from functools import partial

import numpy as np

import minivit.functional as F
from minivit import nn
from minivit.layers.attention_pool import AttentionPoolLatent
from minivit.layers.block import Block
from minivit.layers.patch_embed import PatchEmbed, check_image
from minivit.layers.pos_embed import resample_pos_embed, sincos_2d
from minivit.models.registry import register_model


class VisionTransformer(nn.Module):
    """ViT on images (B, in_chans, H, W) → logits (B, num_classes).

    Arguments are timm's. ``pos_embed``: ``'learn'`` (a Parameter, as ViT/DeiT),
    ``'sincos'`` (fixed 2-D sin-cos, a non-persistent buffer: nothing to learn or
    save; the class token's entry is zero, as in MAE) or ``'none'``.
    ``global_pool``: ``'token'`` (the class token), ``'avg'`` (mean of the patch
    tokens; the final LayerNorm then moves after the pooling and is called
    ``fc_norm``, as timm) or ``'map'`` (multihead attention pooling: a learned latent
    query attends over the patch tokens, then a residual MLP, timm's
    ``AttentionPoolLatent`` as ``attn_pool``, with the model's heads, MLP ratio and
    norm). ``drop_path_rate`` grows linearly from 0 at the first block to its value at
    the last. ``dynamic_img_size=True`` accepts any image size
    divisible by the patch size (a conv stem's total stride), resizing the position embedding to the new grid
    (bilinear for a learned one, recomputed for sin-cos); otherwise the input must be
    ``img_size``. ``embed_layer``: what turns the image into tokens, called as
    ``embed_layer(img_size=, patch_size=, in_chans=, embed_dim=)`` (timm's argument), e.g. a
    convolutional stem (``vit_nano``); None is ViT's patchify conv, ``PatchEmbed``.
    """

    # Tokens in front of the patch tokens besides the class token (DeiT adds one).
    num_extra_tokens = 0

    def __init__(self, img_size=224, patch_size=16, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "token", embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, init_values: float | None = None,
                 class_token: bool = True, pos_embed: str = "learn", dynamic_img_size: bool = False,
                 drop_rate: float = 0.0, pos_drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, norm_layer=None, act_layer=None,
                 weight_init: str = "", embed_layer=None):
        super().__init__()
        if global_pool not in ("token", "avg", "map"):
            raise ValueError(f"{type(self).__name__}: global_pool must be 'token', 'avg' or 'map', "
                             f"got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError(f"{type(self).__name__}: global_pool='token' needs the class token; "
                             f"pass class_token=True or global_pool='avg'")
        if pos_embed is None:  # e.g. `--model-kwargs pos_embed=none`, which parses to None
            pos_embed = "none"
        if pos_embed not in ("learn", "sincos", "none", ""):
            raise ValueError(f"{type(self).__name__}: pos_embed must be 'learn', 'sincos' or 'none', got {pos_embed!r}")
        if weight_init not in ("", "skip"):
            raise ValueError(f"{type(self).__name__}: weight_init must be '' (timm's default) or 'skip', "
                             f"got {weight_init!r}")
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        act_layer = act_layer or nn.GELU
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.num_features = self.embed_dim = embed_dim
        self.has_class_token = class_token
        self.num_prefix_tokens = int(class_token) + self.num_extra_tokens
        self.pos_embed_type = pos_embed or "none"
        self.dynamic_img_size = dynamic_img_size

        # z₀ (eq. 1): patch tokens, prefix tokens, position embedding
        self.patch_embed = (embed_layer or PatchEmbed)(img_size=img_size, patch_size=patch_size,
                                                       in_chans=in_chans, embed_dim=embed_dim)
        if embed_layer is not None and dynamic_img_size:
            if not hasattr(self.patch_embed, "grid_of"):
                raise ValueError(f"{type(self).__name__}: dynamic_img_size=True needs the plain patch embedding "
                                 f"(embed_layer=None) or a HybridEmbed (a conv stem)")
            self.patch_embed.dynamic_img_size = True            # the stem takes any size its stride divides
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(np.zeros((1, 1, embed_dim), dtype=np.float32)) if class_token else None
        embed_len = num_patches + self.num_prefix_tokens
        if self.pos_embed_type == "learn":
            self.pos_embed = nn.Parameter(np.zeros((1, embed_len, embed_dim), dtype=np.float32))
        elif self.pos_embed_type == "sincos":
            # A function of the grid, not a weight: recomputed on load, so not in the state_dict.
            self.register_buffer("pos_embed", self._sincos(self.patch_embed.grid_size), persistent=False)
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(pos_drop_rate)

        # eq. 2-3: L blocks; stochastic depth rate grows linearly with depth (DeiT's recipe)
        dpr = [float(r) for r in np.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                  attn_drop=attn_drop_rate, init_values=init_values, drop_path=dpr[i],
                  norm_layer=norm_layer, act_layer=act_layer)
            for i in range(depth)])

        # eq. 4: final LayerNorm (before pooling for the token, after it for the average) and head
        use_fc_norm = global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else norm_layer(embed_dim)
        # 'map': attention pooling over the patch tokens (after the final norm, as timm)
        self.attn_pool = (AttentionPoolLatent(embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                              norm_layer=norm_layer, act_layer=act_layer)
                          if global_pool == "map" else None)
        self.fc_norm = norm_layer(embed_dim) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        if weight_init != "skip":
            self.init_weights()

    # ------------------------------------------------------------------ setup
    def _sincos(self, grid_size):
        """(1, prefix + h·w, D) fixed embedding; prefix tokens get zeros (they have no position)."""
        grid = sincos_2d(grid_size[0], grid_size[1], self.embed_dim)                 # (h·w, D)
        prefix = np.zeros((self.num_prefix_tokens, self.embed_dim), dtype=grid.dtype)
        return np.concatenate([prefix, grid])[None]

    def init_weights(self):
        """timm's ViT init: position embedding ~ TruncNormal(std .02), class token ~ N(0, 1e-6²),
        every Linear ~ TruncNormal(std .02) with zero bias; LayerNorms 1/0 and the patch conv
        keep their PyTorch defaults; the attention pool's latent query keeps its own init."""
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self):
        """Embeddings that say *where* or *which token*: no weight decay (timm's set), and the
        attention pool's latent query, a token too (big_vision decays only kernels; timm's set
        leaves it out and so decays it)."""
        return {"pos_embed", "cls_token", "dist_token", "attn_pool.latent"}

    # ------------------------------------------------------------------ forward
    def _embed_patches(self, x):
        """(B, C, H, W) → patch tokens (B, N, D) and their grid (h, w)."""
        if not self.dynamic_img_size:
            return self.patch_embed(x), self.patch_embed.grid_size
        if hasattr(self.patch_embed, "grid_of"):                        # a conv stem (HybridEmbed)
            return self.patch_embed(x), self.patch_embed.grid_of(x)
        # Any size the patches tile: skip PatchEmbed's fixed-size check, keep the others.
        name = type(self).__name__
        check_image(x, None, self.in_chans, name)
        P = self.patch_embed.patch_size
        if x.shape[2] % P[0] or x.shape[3] % P[1]:
            raise ValueError(f"{name}: input {x.shape[2]}×{x.shape[3]} is not divisible by the patch size "
                             f"{P[0]}×{P[1]}; resize or pad the image to a multiple of the patch size")
        x = self.patch_embed.proj(x)                                    # (B, D, h, w)
        grid = tuple(x.shape[2:])
        return self.patch_embed.norm(x.flatten(2).transpose(1, 2)), grid   # (B, N, D)

    def _prefix_tokens(self, B):
        """The learned tokens put in front of the patch tokens, each (B, 1, D)."""
        return [self.cls_token.expand(B, -1, -1)] if self.cls_token is not None else []

    def _pos_embed(self, x, grid):
        """Eq. 1: put the prefix tokens in front, then add the position embedding (timm's order:
        the class token has a position entry too)."""
        tokens = self._prefix_tokens(x.shape[0])
        if tokens:
            x = F.cat(tokens + [x], dim=1)                              # (B, prefix + N, D)
        if self.pos_embed is not None:
            pos = self.pos_embed
            if tuple(grid) != tuple(self.patch_embed.grid_size):       # only with dynamic_img_size
                if self.pos_embed_type == "sincos":
                    pos = x.xp.asarray(self._sincos(grid), dtype=x.dtype)
                else:
                    pos = resample_pos_embed(pos, grid, self.patch_embed.grid_size, self.num_prefix_tokens)
            x = x + pos
        return self.pos_drop(x)

    def forward_features(self, x):
        """(B, C, H, W) → all tokens after the blocks and the final norm, (B, prefix + N, D)."""
        x, grid = self._embed_patches(x)
        x = self._pos_embed(x, grid)
        x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x, pre_logits: bool = False):
        """Tokens (B, prefix + N, D) → logits (B, num_classes), or the pooled features (B, D)."""
        if self.global_pool == "token":
            x = x[:, 0]                                                 # the class token, (B, D)
        elif self.global_pool == "map":
            x = self.attn_pool(x[:, self.num_prefix_tokens:])           # latent query's result, (B, D)
        else:
            x = x[:, self.num_prefix_tokens:].mean(dim=1)               # mean patch token, (B, D)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# =========================================================================== configurations
def _vit(defaults, kwargs):
    return VisionTransformer(**dict(defaults, **kwargs))


@register_model
def vit_tiny(**kwargs):
    """CIFAR-10 ViT in the spirit of ViT-Lite-7/4 (Hassani et al., "Escaping the Big Data Paradigm
    with Compact Transformers", 2021): 3,722,250 parameters.

    Design for 32×32: patch 4 gives an 8×8 grid of 64 tokens (patch 16 would leave 2×2 = 4
    tokens, far too coarse); 7 blocks of width 256 with 4 heads of 64 channels; MLP ratio 2
    (512 hidden) keeps the count near ViT-Lite's 3.7M, for which the CCT paper reports about
    91 % on CIFAR-10 trained from scratch (300 epochs, heavy augmentation). Unlike ViT-Lite
    (sequence pooling) it keeps ViT's class token, so ``deit_tiny`` is this backbone plus one
    token and one head.
    """
    return _vit(dict(img_size=32, patch_size=4, num_classes=10, embed_dim=256, depth=7, num_heads=4,
                     mlp_ratio=2.0), kwargs)


@register_model
def vit_nano(stem_channels=(32, 64, 128), stem_stride=(1, 2, 2), **kwargs):
    """A small CIFAR-10 ViT with a convolutional stem (Xiao et al., 2021; ``layers/conv_stem.py``):
    384,682 parameters, the size of the Compact Convolutional Transformers' CCT-2/3x2 (0.28M).

    The stem: a 3×3 conv + BatchNorm + ReLU per entry of ``stem_channels`` (stride
    ``stem_stride``: 32×32 → 32 → 16 → 8), then a 1×1 conv to the width D = 128, so the
    encoder gets an 8×8 grid of 64 tokens, as ``vit_tiny``'s 4×4 patches give, but each token
    has seen a 15×15 pixel neighbourhood through three nonlinear layers instead of one
    linear map of its 4×4 patch. Then 2 blocks of width 128 (2 heads of 64, MLP ratio 2), no
    class token: the head reads the mean token (``global_pool='avg'``), as CCT's sequence
    pooling does in spirit. Built for the CPU speedrun (README: "Results on a CPU").

    timm's twin: ``VisionTransformer(img_size=32, patch_size=1, embed_dim=128, depth=2, num_heads=2,
    mlp_ratio=2, class_token=False, global_pool='avg', embed_layer=partial(HybridEmbed,
    backbone=ConvStem(depth=4, channels=(32, 64, 128, 128), kernel_size=(3, 3, 3, 1),
    stride=(1, 2, 2, 1)), proj=False))``, same state_dict keys.
    """
    from minivit.layers.conv_stem import ConvStem, HybridEmbed

    cfg = dict(dict(img_size=32, patch_size=1, num_classes=10, embed_dim=128, depth=2, num_heads=2,
                    mlp_ratio=2.0, class_token=False, global_pool="avg"), **kwargs)
    n = len(stem_channels)
    if len(stem_stride) != n:
        raise ValueError(f"vit_nano: stem_channels {tuple(stem_channels)} and stem_stride {tuple(stem_stride)} "
                         f"need one entry per conv layer")
    stem = ConvStem(cfg.get("in_chans", 3), channels=(*stem_channels, cfg["embed_dim"]),
                    kernel_size=(3,) * n + (1,), stride=(*stem_stride, 1))
    return VisionTransformer(**cfg, embed_layer=partial(HybridEmbed, stem, proj=False))


@register_model
def vit_base_16_224(**kwargs):
    """ViT-B/16 at 224×224 (ViT Table 1: 12 layers, D = 768, MLP 3072, 12 heads; 86.6M)."""
    return _vit(dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12), kwargs)
