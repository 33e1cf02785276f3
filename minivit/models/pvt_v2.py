"""PVT v2: Improved Baselines with Pyramid Vision Transformer (Wang et al., 2021, arXiv:2106.13797).

PVT v1 (``models/pvt.py``) is a four-stage pyramid of transformer blocks with
spatial-reduction attention. PVT v2 keeps the pyramid and changes three things:

1. **Overlapping patch embedding** (§3.2): convs with kernel > stride
   (7×7 stride 4 for the stem, 3×3 stride 2 between stages), see
   ``layers/overlap_patch_embed.py``.
2. **Convolutional feed-forward** (§3.3): a 3×3 depthwise conv inside the MLP,
   see ``layers/conv_mlp.py``. It carries position information, so there are
   **no position embeddings** and the model runs at any input size.
3. **Linear SRA** (§3.1, the "-Li" models): keys/values average-pooled to 7×7,
   so attention costs O(hw) instead of O((hw)²), see ``layers/sra.py``.

Each stage (B, C_in, H, W) → (B, C, H/s, W/s):

    downsample (overlapping patch embedding)  → tokens (B, hw, C)
    depth × [x = x + DropPath(SRA(LN(x))),  x = x + DropPath(ConvFFN(LN(x)))]
    LayerNorm, back to (B, C, h, w)

and the head averages the last stage's feature map and applies one Linear.

Class name, constructor keywords and state_dict keys are timm's
``PyramidVisionTransformerV2`` (``patch_embed``, ``stages.i.downsample``,
``stages.i.blocks.j.attn.q``, ``stages.i.norm``, ``head``), so timm's weights load
unchanged (``minivit.convert.from_timm``). Two keywords are ours, for small
inputs: ``patch_size``/``patch_stride`` of the stem (timm fixes 7 and 4), and the
nominal ``img_size`` (nothing in PVT v2 depends on it).
"""
from __future__ import annotations

from functools import partial

import numpy as np

import minivit.functional as F
from minivit import nn
from minivit.layers.conv_mlp import MlpWithDepthwiseConv
from minivit.layers.overlap_patch_embed import OverlapPatchEmbed
from minivit.layers.patch_embed import check_image, to_2tuple
from minivit.layers.sra import SpatialReductionAttention
from minivit.models.features import check_output_fmt, feature_take_indices
from minivit.models.registry import register_model


def _per_stage(v, n: int, name: str, owner: str = "PyramidVisionTransformerV2") -> tuple:
    """A number → the same for every stage; a sequence must have one entry per stage (``owner``
    names the class in the error)."""
    if isinstance(v, (int, float)):
        return (v,) * n
    v = tuple(v)
    if len(v) != n:
        raise ValueError(f"{owner}: {name} has {len(v)} entries {v} but there are {n} stages "
                         f"(len(depths)); give one per stage")
    return v


class Block(nn.Module):
    """PVT v2 block on tokens (B, N, C) on a (H, W) grid: SRA and the conv feed-forward, pre-norm."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, sr_ratio: int = 1,
                 linear_attn: bool = False, qkv_bias: bool = False, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, act_layer=nn.GELU,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6)):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = SpatialReductionAttention(dim, num_heads=num_heads, sr_ratio=sr_ratio, linear_attn=linear_attn,
                                              qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = MlpWithDepthwiseConv(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop,
                                        extra_relu=linear_attn)
        self.drop_path2 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, feat_size):
        x = x + self.drop_path1(self.attn(self.norm1(x), feat_size))
        x = x + self.drop_path2(self.mlp(self.norm2(x), feat_size))
        return x


class PyramidVisionTransformerStage(nn.Module):
    """One pyramid stage: (B, C_in, H, W) — or (B, H, W, C) from the stem — → (B, C, h, w).

    ``downsample`` (a 3×3 stride-2 overlapping patch embedding) is None in stage 0,
    whose input is already the stem's (B, H, W, C) output.
    """

    def __init__(self, dim: int, dim_out: int, depth: int, downsample: bool = True, num_heads: int = 8,
                 sr_ratio: int = 1, linear_attn: bool = False, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path=0.0,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6)):
        super().__init__()
        if downsample:
            self.downsample = OverlapPatchEmbed(patch_size=3, stride=2, in_chans=dim, embed_dim=dim_out)
        else:
            if dim != dim_out:
                raise ValueError(f"PyramidVisionTransformerStage: without downsample dim ({dim}) must equal "
                                 f"dim_out ({dim_out})")
            self.downsample = None
        self.blocks = nn.ModuleList([
            Block(dim_out, num_heads=num_heads, mlp_ratio=mlp_ratio, sr_ratio=sr_ratio, linear_attn=linear_attn,
                  qkv_bias=qkv_bias, proj_drop=proj_drop, attn_drop=attn_drop,
                  drop_path=drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path,
                  norm_layer=norm_layer)
            for i in range(depth)])
        self.norm = norm_layer(dim_out)

    def forward(self, x):
        if self.downsample is not None:
            x = self.downsample(x)                           # (B, C, H, W) → (B, h, w, C)
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)                           # (B, N, C) tokens, row by row
        for blk in self.blocks:
            x = blk(x, (H, W))
        x = self.norm(x)
        return F.rearrange(x, "b (h w) c -> b c h w", h=H)   # (B, C, h, w) for the next stage


def _init_weights(m):
    """timm's (and the authors', SegFormer's too): Linear ~ trunc_normal(std .02), bias 0; Conv ~
    N(0, 2/fan_out) (He init by fan-out, fan_out = k·k·C_out/groups), bias 0; LayerNorm weight 1,
    bias 0 (their default)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class PyramidVisionTransformerV2(nn.Module):
    """PVT v2: (B, in_chans, H, W) → logits (B, num_classes); any H, W.

    ``forward_features`` gives the last stage's map (B, embed_dims[-1], H/32, W/32)
    (with the default stem), ``forward_head`` averages it and applies ``head``.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 depths=(3, 4, 6, 3), embed_dims=(64, 128, 256, 512), num_heads=(1, 2, 4, 8),
                 sr_ratios=(8, 4, 2, 1), mlp_ratios=(8.0, 8.0, 4.0, 4.0), qkv_bias: bool = True,
                 linear: bool = False, drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6),
                 patch_size: int = 7, patch_stride: int = 4, img_size=224):
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"PyramidVisionTransformerV2: global_pool must be 'avg' or '' (none), got {global_pool!r}")
        depths = tuple(depths)
        S = len(depths)
        embed_dims = _per_stage(embed_dims, S, "embed_dims")
        num_heads = _per_stage(num_heads, S, "num_heads")
        sr_ratios = _per_stage(sr_ratios, S, "sr_ratios")
        mlp_ratios = _per_stage(mlp_ratios, S, "mlp_ratios")
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.depths, self.embed_dims, self.linear = depths, embed_dims, linear
        self.img_size = to_2tuple(img_size) if img_size is not None else None   # nominal only

        self.patch_embed = OverlapPatchEmbed(patch_size=patch_size, stride=patch_stride, in_chans=in_chans,
                                             embed_dim=embed_dims[0])
        # Stochastic depth grows linearly over all blocks, 0 → drop_path_rate (as timm).
        dpr = np.split(np.linspace(0, drop_path_rate, sum(depths)), np.cumsum(depths)[:-1])
        stages, prev_dim = [], embed_dims[0]
        for i in range(S):
            stages.append(PyramidVisionTransformerStage(
                prev_dim, embed_dims[i], depths[i], downsample=i > 0, num_heads=num_heads[i],
                sr_ratio=sr_ratios[i], linear_attn=linear, mlp_ratio=mlp_ratios[i], qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=[float(p) for p in dpr[i]],
                norm_layer=norm_layer))
            prev_dim = embed_dims[i]
        self.stages = nn.Sequential(*stages)
        # Stage i's map: stride patch_stride·2^i (4, 8, 16, 32 with timm's stem), its own LayerNorm applied.
        self.feature_info = [dict(num_chs=embed_dims[i], reduction=patch_stride * 2 ** i, module=f"stages.{i}")
                             for i in range(S)]

        self.num_features = embed_dims[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self):
        self.apply(_init_weights)

    def no_weight_decay(self) -> set:
        """Nothing: PVT v2 has no position embeddings or tokens (timm returns an empty set too)."""
        return set()

    def forward_features(self, x):
        check_image(x, None, self.in_chans, type(self).__name__)
        x = self.patch_embed(x)                              # (B, H/4, W/4, C₁)
        return self.stages(x)                                # (B, C₄, H/32, W/32)

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """The stage maps (B, C_i, H/s_i, W/s_i) picked by ``indices`` (see ``models/features.py``),
        and, unless ``intermediates_only``, the last map as ``forward_features`` gives it.

        As timm: every stage already ends in its own LayerNorm, so ``norm`` changes nothing;
        any input size works (no position embeddings)."""
        check_output_fmt(output_fmt, ("NCHW",), type(self).__name__)
        take, last = feature_take_indices(len(self.stages), indices)
        check_image(x, None, self.in_chans, type(self).__name__)
        x = self.patch_embed(x)                              # (B, H/4, W/4, C₁)
        intermediates = []
        for i, stage in enumerate(self.stages):
            if stop_early and i > last:
                break
            x = stage(x)                                     # (B, C_i, H/s_i, W/s_i)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_head(self, x, pre_logits: bool = False):
        if self.global_pool == "avg":
            x = x.mean(dim=(-1, -2))                         # (B, C₄): global average pool
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _pvt_v2(**kwargs) -> PyramidVisionTransformerV2:
    return PyramidVisionTransformerV2(**kwargs)


# --------------------------------------------------------------------------- CIFAR-10
@register_model
def pvt_v2_tiny(**kwargs) -> PyramidVisionTransformerV2:
    """PVT v2 for CIFAR-10 (32×32, 10 classes): 3.01M parameters (B0's widths and depths).

    At 224 the 7×7 stride-4 stem gives a 56×56 first stage and the pyramid runs
    56 → 28 → 14 → 7. At 32×32 that stem would leave 8×8 → 1×1, so the stem here
    is a 3×3 stride-2 overlapping conv (padding 1): stages 16×16 → 8×8 → 4×4 → 2×2,
    the same 8× shrink from first stage to last as at 224. The SR ratios
    (8, 4, 2, 1) at 224 give every stage the same 7×7 grid of keys; here
    (4, 2, 1, 1) give 4×4 keys in stages 1-3 (and the whole 2×2 grid in stage 4).
    Widths (32, 64, 160, 256), heads (1, 2, 5, 8), MLP ratios (8, 8, 4, 4), two
    blocks per stage, as PVTv2-B0.
    """
    args = dict(depths=(2, 2, 2, 2), embed_dims=(32, 64, 160, 256), num_heads=(1, 2, 5, 8),
                sr_ratios=(4, 2, 1, 1), mlp_ratios=(8, 8, 4, 4), patch_size=3, patch_stride=2,
                num_classes=10, img_size=32)
    return _pvt_v2(**{**args, **kwargs})


# --------------------------------------------------------------------------- ImageNet (224)
# Parameter counts (1000 classes), PVT v2 paper Table 1 / 2. For B0 and B1 the paper
# lists 3.4M and 13.1M, but the authors' released models (and timm) have 3.7M and
# 14.0M; these configurations are the released ones.
@register_model
def pvt_v2_b0_224(**kwargs) -> PyramidVisionTransformerV2:
    """PVTv2-B0: 3.67M parameters (paper table: 3.4M; released code: 3.7M)."""
    args = dict(depths=(2, 2, 2, 2), embed_dims=(32, 64, 160, 256), num_heads=(1, 2, 5, 8))
    return _pvt_v2(**{**args, **kwargs})


@register_model
def pvt_v2_b1_224(**kwargs) -> PyramidVisionTransformerV2:
    """PVTv2-B1: 14.0M parameters (paper table: 13.1M; released code: 14.0M)."""
    args = dict(depths=(2, 2, 2, 2), embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8))
    return _pvt_v2(**{**args, **kwargs})


@register_model
def pvt_v2_b2_224(**kwargs) -> PyramidVisionTransformerV2:
    """PVTv2-B2: 25.4M parameters."""
    args = dict(depths=(3, 4, 6, 3), embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8))
    return _pvt_v2(**{**args, **kwargs})


@register_model
def pvt_v2_b2_li_224(**kwargs) -> PyramidVisionTransformerV2:
    """PVTv2-B2-Li (linear SRA, ReLU in the feed-forward): 22.6M parameters."""
    args = dict(depths=(3, 4, 6, 3), embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), linear=True)
    return _pvt_v2(**{**args, **kwargs})


@register_model
def pvt_v2_b3_224(**kwargs) -> PyramidVisionTransformerV2:
    """PVTv2-B3: 45.2M parameters."""
    args = dict(depths=(3, 4, 18, 3), embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8))
    return _pvt_v2(**{**args, **kwargs})


@register_model
def pvt_v2_b4_224(**kwargs) -> PyramidVisionTransformerV2:
    """PVTv2-B4: 62.6M parameters."""
    args = dict(depths=(3, 8, 27, 3), embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8))
    return _pvt_v2(**{**args, **kwargs})


@register_model
def pvt_v2_b5_224(**kwargs) -> PyramidVisionTransformerV2:
    """PVTv2-B5: 82.0M parameters (MLP ratio 4 in every stage)."""
    args = dict(depths=(3, 6, 40, 3), embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8),
                mlp_ratios=(4, 4, 4, 4))
    return _pvt_v2(**{**args, **kwargs})
