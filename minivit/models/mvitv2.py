"""MViT v2: Improved Multiscale Vision Transformers (Li et al., 2022, "MViTv2: Improved
Multiscale Vision Transformers for Classification and Detection"), built on MViT v1
(Fan et al., 2021, "Multiscale Vision Transformers").

A pyramid like PVT's or Swin's, but the resolution drops *inside* attention rather
than in a separate patch-merging layer. The first block of every stage after the
first pools its queries with stride 2 (:mod:`minivit.layers.pooling_attention`), so
its output has 4× fewer tokens; and it widens the channels (96 → 192 → 384 → 768
for MViTv2-T), so a block costs about the same in every stage::

    image → PatchEmbed (conv 7×7, stride 4, pad 3)          (B, 56·56, 96) at 224²
          → [MultiScaleBlock × depth_i]  for i = 0 … 3       56² → 28² → 14² → 7² tokens
          → LayerNorm → mean over tokens (or the class token) → head.fc

Each block is pre-norm, with pooled shortcuts where the attention changes shape
(timm's default ``expand_attn=True``: the attention widens C → C_out)::

    x_n = LN(x)
    x   = MaxPool(x or Linear(x_n)) + DropPath(PoolingAttention(x_n))    shortcut_pool_attn, shortcut_proj_attn
    x   = x + DropPath(MLP(LN(x)))

The shortcut is the *un-normalised* x when the width is unchanged, and
``shortcut_proj_attn(LN(x))`` when it grows (as the authors' code); a max-pool of
kernel s+1 and stride s (``shortcut_pool_attn``) brings it to the queries' grid.

MViTv2 needs no absolute position embedding (``use_abs_pos=False``): the
decomposed relative positions in every attention layer carry the positions, and
it has no class token by default (the head averages the final tokens).

The configuration is timm's ``MultiScaleVitCfg`` (same fields, same defaults, so a
timm cfg carries over field by field; timm's model does not keep its cfg, so
:mod:`minivit.convert.mvitv2` reads the fields back off its modules). Parameter
names are timm's::

    patch_embed.proj                                 Conv2d 3 → C₀, 7×7 stride 4
    cls_token, pos_embed                             only with use_cls_token / use_abs_pos
    stages.{i}.blocks.{j}.norm1 / .norm2             LayerNorms (eps 1e-6)
    stages.{i}.blocks.{j}.shortcut_proj_attn         Linear C → C_out, where the width grows
    stages.{i}.blocks.{j}.attn.qkv / .proj           see pooling_attention
    stages.{i}.blocks.{j}.attn.pool_{q,k,v}          depth-wise 3×3 convs (head_dim channels)
    stages.{i}.blocks.{j}.attn.norm_{q,k,v}          LayerNorms over head_dim
    stages.{i}.blocks.{j}.attn.rel_pos_h / _w        decomposed relative positions
    stages.{i}.blocks.{j}.mlp.fc1 / .fc2             MLP
    norm, head.fc
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import partial

import numpy as np

import minivit.functional as F
from minivit import nn
from minivit.layers.mlp import Mlp
from minivit.layers.patch_embed import check_image, to_2tuple
from minivit.layers.pooling_attention import MultiScaleAttention, WindowPool, pool_grid_tokens, pooled_size
from minivit.models.features import check_output_fmt, feature_take_indices
from minivit.models.registry import register_model


@dataclass
class MultiScaleVitCfg:
    """timm's configuration object, field for field. Per-stage widths and heads double
    every stage when given as one number; ``stride_kv`` (if None) follows from
    ``stride_kv_adaptive``: the key/value stride is divided by every query stride, so
    keys and values stay on about the same grid (56/4 = 14 → 28/2 = 14 → 14/1 …)."""
    depths: tuple = (2, 3, 16, 3)
    embed_dim: int | tuple = 96
    num_heads: int | tuple = 1
    mlp_ratio: float = 4.0
    pool_first: bool = False
    expand_attn: bool = True
    qkv_bias: bool = True
    use_cls_token: bool = False
    use_abs_pos: bool = False
    residual_pooling: bool = True
    mode: str = "conv"
    kernel_qkv: tuple = (3, 3)
    stride_q: tuple | None = ((1, 1), (2, 2), (2, 2), (2, 2))
    stride_kv: tuple | None = None
    stride_kv_adaptive: tuple | None = (4, 4)
    patch_kernel: tuple = (7, 7)
    patch_stride: tuple = (4, 4)
    patch_padding: tuple = (3, 3)
    pool_type: str = "max"
    rel_pos_type: str = "spatial"
    act_layer: str | tuple = "gelu"
    norm_layer: str | tuple = "layernorm"
    norm_eps: float = 1e-6

    def __post_init__(self):
        n = len(self.depths)
        if not isinstance(self.embed_dim, (tuple, list)):
            self.embed_dim = tuple(self.embed_dim * 2 ** i for i in range(n))
        if not isinstance(self.num_heads, (tuple, list)):
            self.num_heads = tuple(self.num_heads * 2 ** i for i in range(n))
        for name in ("embed_dim", "num_heads", "stride_q"):
            if len(getattr(self, name)) < n:
                raise ValueError(f"MultiScaleVitCfg: {name} has {len(getattr(self, name))} entries but there "
                                 f"are {n} stages (len(depths)); give one per stage")
        if self.stride_kv is None and self.stride_kv_adaptive is not None:
            s, strides = tuple(self.stride_kv_adaptive), []
            for i in range(n):
                if min(self.stride_q[i]) > 1:
                    s = tuple(max(s[d] // self.stride_q[i][d], 1) for d in range(len(s)))
                strides.append(s)
            self.stride_kv = tuple(strides)


class PatchEmbed(nn.Module):
    """Overlapping conv stem: (B, C_in, H, W) → tokens (B, H'·W', C) and the grid (H', W')."""

    def __init__(self, dim_in: int = 3, dim_out: int = 768, kernel=(7, 7), stride=(4, 4), padding=(3, 3)):
        super().__init__()
        self.kernel, self.stride, self.padding = to_2tuple(kernel), to_2tuple(stride), to_2tuple(padding)
        self.proj = nn.Conv2d(dim_in, dim_out, self.kernel, stride=self.stride, padding=self.padding)

    def output_size(self, H: int, W: int) -> tuple:
        return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip((H, W), self.kernel, self.stride, self.padding))

    def forward(self, x):
        x = self.proj(x)                                        # (B, C, H', W')
        return x.flatten(2).transpose(1, 2), tuple(x.shape[-2:])


class MultiScaleBlock(nn.Module):
    """Pooling-attention block: ``forward(x, feat_size)`` (B, [1 +] H·W, C) → ((B, [1 +] H'·W', C_out), (H', W')).

    ``expand_attn=True`` (MViTv2): the attention widens C → C_out and the MLP keeps
    C_out. ``False`` (MViT v1): the attention keeps C and the MLP widens, with its own
    shortcut projection ``shortcut_proj_mlp``.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, feat_size, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path: float = 0.0, norm_layer=nn.LayerNorm, kernel_q=(1, 1),
                 kernel_kv=(1, 1), stride_q=(1, 1), stride_kv=(1, 1), mode: str = "conv",
                 has_cls_token: bool = True, expand_attn: bool = False, rel_pos_type: str = "spatial",
                 residual_pooling: bool = True, act_layer=nn.GELU):
        super().__init__()
        proj_needed = dim != dim_out
        self.dim, self.dim_out, self.has_cls_token = dim, dim_out, has_cls_token
        self.norm1 = norm_layer(dim)
        self.shortcut_proj_attn = nn.Linear(dim, dim_out) if proj_needed and expand_attn else None
        stride_q = to_2tuple(stride_q)
        if np.prod(stride_q) > 1:           # bring the shortcut to the pooled query grid
            kernel_skip = tuple(s + 1 if s > 1 else s for s in stride_q)
            self.shortcut_pool_attn = WindowPool("max", kernel_skip, stride_q, tuple(k // 2 for k in kernel_skip))
        else:
            self.shortcut_pool_attn = None
        att_dim = dim_out if expand_attn else dim
        self.attn = MultiScaleAttention(
            dim, att_dim, feat_size, num_heads=num_heads, qkv_bias=qkv_bias, mode=mode, kernel_q=kernel_q,
            kernel_kv=kernel_kv, stride_q=stride_q, stride_kv=stride_kv, has_cls_token=has_cls_token,
            rel_pos_type=rel_pos_type, residual_pooling=residual_pooling, norm_layer=norm_layer)
        self.drop_path1 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(att_dim)
        self.shortcut_proj_mlp = nn.Linear(dim, dim_out) if proj_needed and not expand_attn else None
        self.mlp = Mlp(att_dim, int(att_dim * mlp_ratio), out_features=dim_out, act_layer=act_layer)
        self.drop_path2 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _shortcut_pool(self, x, feat_size):
        """Max-pool the grid tokens of the shortcut (the class token passes): (B, [1 +] H·W, C) → pooled."""
        if self.shortcut_pool_attn is None:
            return x
        return pool_grid_tokens(x, self.shortcut_pool_attn, tuple(feat_size), 1 if self.has_cls_token else 0)[0]

    def forward(self, x, feat_size):
        x_norm = self.norm1(x)
        # as the authors' code: the shortcut is the un-normalised x unless it needs a projection
        shortcut = x if self.shortcut_proj_attn is None else self.shortcut_proj_attn(x_norm)
        shortcut = self._shortcut_pool(shortcut, feat_size)             # (B, [1 +] H'W', C_att)
        x, feat_size = self.attn(x_norm, feat_size)
        x = shortcut + self.drop_path1(x)
        x_norm = self.norm2(x)
        shortcut = x if self.shortcut_proj_mlp is None else self.shortcut_proj_mlp(x_norm)
        x = shortcut + self.drop_path2(self.mlp(x_norm))
        return x, feat_size


class MultiScaleVitStage(nn.Module):
    """``depth`` blocks; the first pools the queries by ``stride_q`` and (with expand_attn) widens."""

    def __init__(self, dim: int, dim_out: int, depth: int, num_heads: int, feat_size, drop_path=0.0,
                 expand_attn: bool = False, stride_q=(1, 1), **block_kwargs):
        super().__init__()
        out_dims = (dim_out,) * depth if expand_attn else (dim,) * (depth - 1) + (dim_out,)
        blocks = []
        for i in range(depth):
            blocks.append(MultiScaleBlock(
                dim, out_dims[i], num_heads, feat_size, expand_attn=expand_attn,
                stride_q=stride_q if i == 0 else (1, 1),
                drop_path=drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path, **block_kwargs))
            dim = out_dims[i]
            if i == 0:
                feat_size = tuple(n // s for n, s in zip(feat_size, stride_q))
        self.blocks = nn.ModuleList(blocks)
        self.feat_size = feat_size

    def forward(self, x, feat_size):
        for blk in self.blocks:
            x, feat_size = blk(x, feat_size)
        return x, feat_size


class _Head(nn.Module):
    """timm's ``head = Sequential(drop, fc)``: keys ``head.fc.weight``, ``head.fc.bias``."""

    def __init__(self, num_features: int, num_classes: int, drop_rate: float):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x):
        return self.fc(self.drop(x))


_SUPPORTED = dict(pool_first=(False,), act_layer=("gelu",), norm_layer=("layernorm",))


class MultiScaleVit(nn.Module):
    """MViT v2 on (B, in_chans, H, W) images → logits (B, num_classes).

    ``cfg``: a :class:`MultiScaleVitCfg` (default: timm's, i.e. MViTv2-B's depths).
    ``img_size``: the input size; it fixes the token grid of every stage, which sizes the
    rel-pos tables, so the model only runs at that size. ``global_pool``: None picks
    'token' with a class token, else 'avg'; '' returns the normalised tokens' features.
    """

    def __init__(self, cfg: MultiScaleVitCfg | None = None, img_size=224, in_chans: int = 3,
                 global_pool: str | None = None, num_classes: int = 1000, drop_path_rate: float = 0.0,
                 drop_rate: float = 0.0):
        super().__init__()
        cfg = cfg if cfg is not None else MultiScaleVitCfg()
        for name, allowed in _SUPPORTED.items():
            if getattr(cfg, name) not in allowed:
                raise ValueError(f"MultiScaleVit: {name}={getattr(cfg, name)!r} is not supported by minivit "
                                 f"(supported: {', '.join(map(repr, allowed))})")
        if global_pool is None:
            global_pool = "token" if cfg.use_cls_token else "avg"
        if global_pool not in ("", "avg", "token") or (global_pool == "token" and not cfg.use_cls_token):
            raise ValueError(f"MultiScaleVit: global_pool={global_pool!r}: use 'avg', '' (none), or 'token' "
                             f"(which needs cfg.use_cls_token=True)")
        self.cfg, self.num_classes, self.in_chans, self.drop_rate = cfg, num_classes, in_chans, drop_rate
        self.global_pool, self.depths, self.expand_attn = global_pool, tuple(cfg.depths), cfg.expand_attn
        self.img_size = to_2tuple(img_size)
        norm_layer = partial(nn.LayerNorm, eps=cfg.norm_eps)

        embed_dim = cfg.embed_dim[0]
        self.patch_embed = PatchEmbed(in_chans, embed_dim, cfg.patch_kernel, cfg.patch_stride, cfg.patch_padding)
        grid = self.patch_embed.output_size(*self.img_size)
        if grid != tuple(n // s for n, s in zip(self.img_size, to_2tuple(cfg.patch_stride))):
            raise ValueError(f"MultiScaleVit: the stem turns img_size={self.img_size} into a {grid[0]}×{grid[1]} "
                             f"grid, not img_size // patch_stride as the rel-pos tables assume; use an image "
                             f"size divisible by patch_stride={cfg.patch_stride} (with padding = kernel // 2)")
        self.num_prefix_tokens = 1 if cfg.use_cls_token else 0
        self.cls_token = nn.Parameter(np.zeros((1, 1, embed_dim), dtype=np.float32)) if cfg.use_cls_token else None
        self.pos_embed = nn.Parameter(np.zeros((1, grid[0] * grid[1] + self.num_prefix_tokens, embed_dim),
                                               dtype=np.float32)) if cfg.use_abs_pos else None

        n = len(cfg.depths)
        rates = np.linspace(0, drop_path_rate, sum(cfg.depths)).tolist()   # linear over all blocks
        dpr = [rates[sum(cfg.depths[:i]):sum(cfg.depths[:i + 1])] for i in range(n)]
        self.grid_sizes, stages = [], []
        for i in range(n):
            dim_out = cfg.embed_dim[i] if cfg.expand_attn else cfg.embed_dim[min(i + 1, n - 1)]
            self._check_grid(i, grid, to_2tuple(cfg.stride_q[i]), to_2tuple(cfg.stride_kv[i]), cfg.kernel_qkv,
                             cfg.depths[i])
            stage = MultiScaleVitStage(
                embed_dim, dim_out, cfg.depths[i], cfg.num_heads[i], grid, drop_path=dpr[i],
                expand_attn=cfg.expand_attn, stride_q=cfg.stride_q[i], mlp_ratio=cfg.mlp_ratio,
                qkv_bias=cfg.qkv_bias, mode=cfg.mode, kernel_q=cfg.kernel_qkv, kernel_kv=cfg.kernel_qkv,
                stride_kv=cfg.stride_kv[i], has_cls_token=cfg.use_cls_token, rel_pos_type=cfg.rel_pos_type,
                residual_pooling=cfg.residual_pooling, norm_layer=norm_layer)
            stages.append(stage)
            embed_dim, grid = dim_out, stage.feat_size
            self.grid_sizes.append(grid)
        self.stages = nn.ModuleList(stages)
        # Stage i's map: stride patch_stride · Π stride_q[:i+1] (4, 8, 16, 32 for timm's configs).
        self.feature_info, stride = [], max(to_2tuple(cfg.patch_stride))
        for i, stage in enumerate(stages):
            stride *= max(to_2tuple(cfg.stride_q[i]))
            dim_out = cfg.embed_dim[i] if cfg.expand_attn else cfg.embed_dim[min(i + 1, n - 1)]
            self.feature_info.append(dict(num_chs=dim_out, reduction=stride, module=f"stages.{i}"))
        self.num_features = self.head_hidden_size = embed_dim
        self.norm = norm_layer(embed_dim)
        self.head = _Head(embed_dim, num_classes, drop_rate)
        self.init_weights()

    def _check_grid(self, i, grid, stride_q, stride_kv, kernel, depth):
        """Every pooling must divide the grid: timm sizes the rel-pos tables (and the next grid)
        as H // stride, while a strided k×k pooling with padding k // 2 gives ⌈H / stride⌉."""
        q_grid = tuple(n // s for n, s in zip(grid, stride_q))      # the grid of blocks 2, 3, …
        checks = [("stride_q", grid, stride_q), ("stride_kv", grid, stride_kv)]
        for name, g, s in checks + ([("stride_kv", q_grid, stride_kv)] if depth > 1 else []):
            real = tuple(pooled_size(n, k, st) for n, k, st in zip(g, to_2tuple(kernel), s))
            if min(g) < 1 or real != tuple(n // st for n, st in zip(g, s)):
                raise ValueError(f"MultiScaleVit: stage {i}'s {g[0]}×{g[1]} token grid does not divide by "
                                 f"{name}={s}; use an img_size whose stem grid "
                                 f"({self.patch_embed.output_size(*self.img_size)}) divides by the product "
                                 f"of the stride_q strides and by stride_kv")
        if self.cfg.rel_pos_type == "spatial" and grid[0] != grid[1]:
            raise ValueError(f"MultiScaleVit: spatial relative positions need square token grids (as timm), "
                             f"stage {i} has {grid[0]}×{grid[1]}; use a square img_size")

    def init_weights(self):
        """timm's init: Linear weights ~ trunc_normal(std .02), biases 0; class token and position
        embedding ~ trunc_normal(std .02); rel-pos tables likewise (in the layer); convs and
        LayerNorms keep their defaults."""
        def init(m):
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.apply(init)
        for p in (self.cls_token, self.pos_embed):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    def no_weight_decay(self) -> set:
        return {k for k, _ in self.named_parameters()
                if any(s in k for s in ("pos_embed", "rel_pos_h", "rel_pos_w", "cls_token"))}

    def forward_features(self, x):
        """Images (B, C, H, W) → normalised final tokens (B, [1 +] H'·W', C)."""
        check_image(x, self.img_size, self.in_chans, type(self).__name__)
        x, feat_size = self.patch_embed(x)                          # (B, HW, C₀)
        B = x.shape[0]
        if self.cls_token is not None:
            x = F.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1 + HW, C₀)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for stage in self.stages:
            x, feat_size = stage(x, feat_size)                      # (B, [1 +] H_i·W_i, C_i)
        return self.norm(x)

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """The stage maps picked by ``indices`` (see ``models/features.py``) as (B, C_i, H_i, W_i)
        without the class token, or with ``output_fmt='NLC'`` the tokens (B, [1 +] H_i·W_i, C_i)
        as the stage gives them; and, unless ``intermediates_only``, the normalised final tokens
        as ``forward_features``.

        ``norm=True`` applies the final LayerNorm to the last stage's output, as timm. Sizes:
        only ``img_size``: the relative-position tables of every attention layer are sized for
        the token grids it gives (as timm's MViT v2, which fixes the size the same way)."""
        check_output_fmt(output_fmt, ("NCHW", "NLC"), type(self).__name__)
        take, last = feature_take_indices(len(self.stages), indices)
        check_image(x, self.img_size, self.in_chans, type(self).__name__)
        x, feat_size = self.patch_embed(x)                          # (B, HW, C₀)
        B = x.shape[0]
        if self.cls_token is not None:
            x = F.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1 + HW, C₀)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        intermediates, n = [], len(self.stages)
        for i, stage in enumerate(self.stages):
            if stop_early and i > last:
                break
            x, feat_size = stage(x, feat_size)                      # (B, [1 +] H_i·W_i, C_i)
            if i in take:
                x_i = self.norm(x) if norm and i == n - 1 else x
                if output_fmt == "NCHW":
                    x_i = x_i[:, self.num_prefix_tokens:]           # (B, H_i·W_i, C_i)
                    x_i = x_i.reshape(B, feat_size[0], feat_size[1], -1).permute(0, 3, 1, 2)
                intermediates.append(x_i)
        if intermediates_only:
            return intermediates
        return (self.norm(x) if i == n - 1 else x), intermediates

    def forward_head(self, x, pre_logits: bool = False):
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)           # (B, C): mean of the grid tokens
        elif self.global_pool == "token":
            x = x[:, 0]                                             # (B, C): the class token
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _build(defaults: dict, kwargs: dict) -> MultiScaleVit:
    """A MultiScaleVit from a factory's cfg defaults; keyword arguments may override cfg
    fields (``depths=(1, 1)``) as well as constructor arguments, or pass a whole ``cfg``."""
    names = {f.name for f in fields(MultiScaleVitCfg)}
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    default_cfg, cfg = defaults.pop("cfg"), kwargs.pop("cfg", None)
    cfg = MultiScaleVitCfg(**{**default_cfg, **overrides}) if cfg is None else replace(cfg, **overrides)
    return MultiScaleVit(cfg, **{**defaults, **kwargs})


# =========================================================================== registered configurations
@register_model
def mvitv2_tiny(**kwargs):
    """MViT v2 for CIFAR-10 (32×32, 10 classes): 3,557,770 parameters (3.56M), 0.11 GMACs.

    Design for 32×32 inputs:

    * Stem: 3×3 conv, stride 2, padding 1 (ImageNet's 7×7 stride 4 would leave
      an 8×8 grid before any pooling): a 16×16 grid of 64-wide tokens.
    * Three stages, not four: query strides (1, 2, 2) give token grids
      16×16 → 8×8 → 4×4 (256, 64, 16 tokens), the 56 → 28 → 14 of MViTv2-T
      scaled down; a fourth stage would be 2×2.
    * Keys and values pooled with adaptive stride 2 (MViTv2 uses 4 at 224²), so
      stride 2, 1, 1 by stage: stage 1 attends its 256 queries to 8×8 = 64 keys;
      in stages 2 and 3 the first block attends its pooled queries to the
      previous grid (256 and 64 keys), the others to their own (64 and 16 keys),
      as MViTv2-T's stage 2 does at 224² (28² then 14² keys).
    * Widths 64 → 128 → 256 with 1, 2, 4 heads (head width 64, as MViTv2);
      depths 1, 2, 4 put most blocks in the last stage, as MViTv2-T's (1, 2, 5, 2).
      Each block ≈ 12·C² weights: the last stage holds 3.1M of the 3.56M.
    * No class token, mean-pooled head; decomposed rel-pos, residual pooling and
      conv pooling as MViTv2 (timm's defaults).
    """
    cfg = dict(depths=(1, 2, 4), embed_dim=(64, 128, 256), num_heads=(1, 2, 4),
               stride_q=((1, 1), (2, 2), (2, 2)), stride_kv_adaptive=(2, 2),
               patch_kernel=(3, 3), patch_stride=(2, 2), patch_padding=(1, 1))
    return _build(dict(cfg=cfg, img_size=32, num_classes=10, drop_path_rate=0.1), kwargs)


@register_model
def mvitv2_t_224(**kwargs):
    """MViTv2-T (paper Table 2, the ImageNet-1K comparison; timm's ``mvitv2_tiny``): depths
    1/2/5/2, widths 96/192/384/768, heads 1/2/4/8, query strides 1/2/2/2, key/value strides
    4/2/1/1, 224×224, 1000 classes.

    24,173,320 parameters (the paper: 24M; timm's mvitv2_tiny, key by key); 4.677 GMACs
    counted (the paper: 4.7G FLOPs, i.e. multiply-accumulates), of which 0.035G are the
    rel-pos products Q̂·R_h and Q̂·R_w."""
    return _build(dict(cfg=dict(depths=(1, 2, 5, 2)), img_size=224, num_classes=1000, drop_path_rate=0.1), kwargs)
