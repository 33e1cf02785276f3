"""SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers
(Xie et al., NeurIPS 2021, arXiv:2105.15203).

Two parts, read beside the paper's §3 and Fig. 2:

**Mix Transformer encoder (MiT-B0 … B5, §3.1)** — a four-stage pyramid, each stage
(B, C_{i-1}, H, W) → (B, C_i, H/s_i, W/s_i) with strides 4, 8, 16, 32:

    overlapping patch merging   conv K=7, S=4, P=3 (stage 1); K=3, S=2, P=1 (stages 2-4), LayerNorm
    depth_i × [ x = x + Attn(LN(x)),  x = x + Mix-FFN(LN(x)) ]
    LayerNorm, back to (B, C_i, h, w)

* *Efficient self-attention* (eq. 2): the sequence of K and V is shortened R times,
  K̂ = Reshape(N/R, C·R)(K), K = Linear(C·R, C)(K̂), cutting attention from O(N²) to
  O(N²/R) (N = hw tokens). The paper's R = 64, 16, 4, 1 counts tokens; on the grid it is
  an sr×sr cell with ``sr_ratios`` = √R = 8, 4, 2, 1, i.e. a conv with kernel = stride =
  sr, then LayerNorm. This is exactly PVT's spatial-reduction attention, ``layers/sra.py``.
* *Mix-FFN* (eq. 3): x_out = MLP(GELU(Conv3×3(MLP(x_in)))) + x_in, the 3×3 conv
  depthwise; its zero padding leaks position information, so there is **no position
  encoding** and a model trained at one resolution runs at any other. This is PVT v2's
  convolutional feed-forward, ``layers/conv_mlp.py`` (MLP ratio 4 in every stage).

So a MiT stage is a PVT v2 stage (``models/pvt_v2.py``; the two papers share authors and
appeared a month apart) with every stage's patch embedding configurable,
and the blocks here *are* :class:`minivit.models.pvt_v2.Block`.

**All-MLP decoder (§3.2, eq. 4)** — with F_i the stage-i map (C_i channels, H/s_i × W/s_i):

    F̂_i = Linear(C_i, C)(F_i)              each stage to one width C (256 for B0/B1, 768 for B2-B5)
    F̂_i = Upsample(H/4 × W/4)(F̂_i)          bilinear, align_corners=False
    F  = Linear(4C, C)(Concat(F̂_i))        the "fuse" (a 1×1 conv, then BatchNorm and ReLU)
    M  = Linear(C, N_cls)(F)                the per-pixel classifier, at 1/4 resolution

The concatenation runs from the coarsest stage to the finest (F̂_4, F̂_3, F̂_2, F̂_1), as the
authors' code and Hugging Face's; the order fixes which columns of the fuse weights
see which stage.

:class:`Segformer` returns the logits at 1/4 of the input resolution, (B, N_cls, H/4, W/4),
as the authors' code and Hugging Face's do. For the loss (and at inference) the paper
upsamples them bilinearly to the label's size:
``F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)``.

Parameter names. The encoder reuses PVT v2's layers and so has timm's PVT v2 names
(``stages.i.patch_embed.proj``, ``stages.i.blocks.j.attn.q`` / ``kv`` / ``sr`` / ``norm`` /
``proj``, ``mlp.fc1`` / ``dwconv`` / ``fc2``, ``stages.i.norm``); the decoder has Hugging
Face transformers' names (``decode_head.linear_projections.i.proj``, ``linear_fuse``,
``batch_norm``, ``classifier``), a list rather than the authors' ``linear_c1`` …
``linear_c4`` so that any number of stages works. timm has no SegFormer;
``minivit.convert.from_transformers`` renames Hugging Face's encoder keys (and
concatenates its separate ``k_proj`` / ``v_proj`` into ``kv``), see ``convert/segformer.py``.
"""
from __future__ import annotations

from functools import partial

import numpy as np

import minivit.functional as F
from minivit import nn
from minivit.layers.overlap_patch_embed import OverlapPatchEmbed
from minivit.layers.patch_embed import check_image
from minivit.models.features import check_output_fmt, feature_take_indices
from minivit.models import pvt_v2
from minivit.models.pvt_v2 import Block
from minivit.models.registry import register_model


def _per_stage(v, n: int, name: str) -> tuple:
    return pvt_v2._per_stage(v, n, name, owner="MixVisionTransformer")


_init_weights = pvt_v2._init_weights      # the authors' init, as PVT v2's


class MixTransformerStage(nn.Module):
    """One MiT stage: overlapping patch merging → blocks → LayerNorm; (B, C_in, H, W) → (B, C, h, w)."""

    def __init__(self, dim_in: int, dim: int, depth: int, patch_size: int = 3, stride: int = 2,
                 num_heads: int = 1, sr_ratio: int = 1, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path=(),
                 norm_layer=partial(nn.LayerNorm, eps=1e-6)):
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(patch_size=patch_size, stride=stride, in_chans=dim_in, embed_dim=dim)
        self.blocks = nn.ModuleList([
            Block(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, sr_ratio=sr_ratio, qkv_bias=qkv_bias,
                  proj_drop=proj_drop, attn_drop=attn_drop, drop_path=drop_path[j] if drop_path else 0.0,
                  norm_layer=norm_layer)
            for j in range(depth)])
        self.norm = norm_layer(dim)

    def forward(self, x):
        x = self.patch_embed(x)                              # (B, C_in, H, W) → (B, h, w, C)
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)                           # (B, N, C) tokens, row by row
        for blk in self.blocks:
            x = blk(x, (H, W))
        x = self.norm(x)
        return x.reshape(B, H, W, C).permute(0, 3, 1, 2)     # (B, C, h, w)


class MixVisionTransformer(nn.Module):
    """The MiT encoder: (B, in_chans, H, W) → four maps (B, C_i, H/s_i, W/s_i), any H, W.

    ``forward_intermediates`` / ``forward_features`` give the stage maps / the last one
    (timm's feature API, ``models/features.py``). With ``num_classes > 0`` it is also the
    ImageNet classifier the authors pre-train it as (global average pool of the last map,
    one Linear); the default 0 is the encoder alone, as SegFormer uses it and as the
    paper counts its parameters.

    ``patch_sizes`` / ``strides`` are per stage; None is the paper's 7/4 for the first
    stage and 3/2 for the others, whatever the number of stages;
    ``norm_layer`` is the blocks' and the stages' LayerNorm (the authors' eps 1e-6;
    Hugging Face's port uses PyTorch's default 1e-5, which its converter reads off the
    modules); the patch embeddings' LayerNorm has eps 1e-5 in both.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 0, embed_dims=(64, 128, 320, 512),
                 depths=(3, 4, 6, 3), num_heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1), mlp_ratios=4.0,
                 patch_sizes=None, strides=None, qkv_bias: bool = True, drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6)):
        super().__init__()
        depths = tuple(depths)
        S = len(depths)
        name = type(self).__name__
        embed_dims = _per_stage(embed_dims, S, "embed_dims")
        num_heads = _per_stage(num_heads, S, "num_heads")
        sr_ratios = _per_stage(sr_ratios, S, "sr_ratios")
        mlp_ratios = _per_stage(mlp_ratios, S, "mlp_ratios")
        patch_sizes = _per_stage((7,) + (3,) * (S - 1) if patch_sizes is None else patch_sizes, S, "patch_sizes")
        strides = _per_stage((4,) + (2,) * (S - 1) if strides is None else strides, S, "strides")
        for i, (k, s) in enumerate(zip(patch_sizes, strides)):
            if k <= s:
                raise ValueError(f"{name}: stage {i} has patch_sizes[{i}]={k} ≤ strides[{i}]={s}; the patch "
                                 f"merging must overlap (kernel > stride, e.g. 7/4 or 3/2)")
        self.in_chans, self.num_classes, self.depths, self.embed_dims = in_chans, num_classes, depths, embed_dims
        # Stochastic depth grows linearly over all blocks, 0 → drop_path_rate (as the authors' code).
        dpr = [float(p) for p in np.linspace(0, drop_path_rate, sum(depths))]
        stages, dim_in, start, reduction = [], in_chans, 0, 1
        self.feature_info = []
        for i in range(S):
            stages.append(MixTransformerStage(
                dim_in, embed_dims[i], depths[i], patch_size=patch_sizes[i], stride=strides[i],
                num_heads=num_heads[i], sr_ratio=sr_ratios[i], mlp_ratio=mlp_ratios[i], qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[start:start + depths[i]],
                norm_layer=norm_layer))
            dim_in, start, reduction = embed_dims[i], start + depths[i], reduction * strides[i]
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.ModuleList(stages)
        self.num_features = embed_dims[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self):
        self.apply(_init_weights)

    def no_weight_decay(self) -> set:
        """Nothing: no position embeddings, no tokens."""
        return set()

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """The stage maps (B, C_i, H/s_i, W/s_i) picked by ``indices`` (see ``models/features.py``)
        and, unless ``intermediates_only``, the last map. Each stage ends in its own LayerNorm,
        so ``norm`` changes nothing."""
        check_output_fmt(output_fmt, ("NCHW",), type(self).__name__)
        take, last = feature_take_indices(len(self.stages), indices)
        check_image(x, None, self.in_chans, type(self).__name__)
        intermediates = []
        for i, stage in enumerate(self.stages):
            if stop_early and i > last:
                break
            x = stage(x)                                     # (B, C_i, H/s_i, W/s_i)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_features(self, x):
        return self.forward_intermediates(x, indices=1, intermediates_only=True)[0]   # (B, C_4, H/32, W/32)

    def forward_head(self, x, pre_logits: bool = False):
        x = self.head_drop(x.mean(dim=(-1, -2)))            # (B, C_4): global average pool
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class SegformerMLP(nn.Module):
    """One stage's projection to the decoder width: (B, C_i, h, w) → (B, C, h, w), a Linear per pixel."""

    def __init__(self, input_dim: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(input_dim, embed_dim)

    def forward(self, x):
        B, _, H, W = x.shape
        x = self.proj(x.flatten(2).transpose(1, 2))          # (B, hw, C)
        return x.transpose(1, 2).reshape(B, -1, H, W)        # (B, C, h, w)


class SegformerHead(nn.Module):
    """The all-MLP decoder (eq. 4): stage maps [(B, C_i, H/s_i, W/s_i)] → logits (B, num_classes, H/s_1, W/s_1).

    Every map is projected to ``embed_dim`` channels and resized (bilinear,
    align_corners=False) to the first (finest) map's size; the maps are concatenated
    coarsest first, fused by a 1×1 conv without bias + BatchNorm + ReLU, and classified by a
    1×1 conv after dropout (the authors' 0.1).
    """

    def __init__(self, in_channels, embed_dim: int = 256, num_classes: int = 150, dropout: float = 0.1):
        super().__init__()
        in_channels = tuple(in_channels)
        self.in_channels, self.embed_dim, self.num_classes = in_channels, embed_dim, num_classes
        self.linear_projections = nn.ModuleList([SegformerMLP(c, embed_dim) for c in in_channels])
        self.linear_fuse = nn.Conv2d(embed_dim * len(in_channels), embed_dim, kernel_size=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(embed_dim)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    def forward(self, features):
        if len(features) != len(self.linear_projections):
            raise ValueError(f"SegformerHead: got {len(features)} feature maps but was built for "
                             f"{len(self.linear_projections)} stages (in_channels={self.in_channels})")
        size = tuple(features[0].shape[-2:])                 # (H/4, W/4): the finest map
        maps = []
        for f, mlp in zip(features, self.linear_projections):
            f = mlp(f)                                       # (B, C, h_i, w_i)
            if tuple(f.shape[-2:]) != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)   # (B, C, H/4, W/4)
            maps.append(f)
        x = self.linear_fuse(F.cat(maps[::-1], dim=1))       # (B, S·C, H/4, W/4) → (B, C, H/4, W/4)
        x = self.dropout(self.activation(self.batch_norm(x)))
        return self.classifier(x)                            # (B, num_classes, H/4, W/4)


class Segformer(nn.Module):
    """SegFormer: (B, in_chans, H, W) → per-pixel logits (B, num_classes, H/4, W/4) (with the paper's
    stride-4 first stage), any H, W.

    ``backbone`` is the :class:`MixVisionTransformer`, ``decode_head`` the :class:`SegformerHead`.
    The logits are at 1/4 resolution; upsample them to the label size for the loss (module doc).
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 150, embed_dims=(64, 128, 320, 512),
                 depths=(3, 4, 6, 3), num_heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1), mlp_ratios=4.0,
                 patch_sizes=None, strides=None, qkv_bias: bool = True,
                 decoder_dim: int = 768, decoder_dropout: float = 0.1, proj_drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6)):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.backbone = MixVisionTransformer(
            in_chans=in_chans, num_classes=0, embed_dims=embed_dims, depths=depths, num_heads=num_heads,
            sr_ratios=sr_ratios, mlp_ratios=mlp_ratios, patch_sizes=patch_sizes, strides=strides,
            qkv_bias=qkv_bias, proj_drop_rate=proj_drop_rate, attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate, norm_layer=norm_layer)
        self.decode_head = SegformerHead(self.backbone.embed_dims, embed_dim=decoder_dim, num_classes=num_classes,
                                         dropout=decoder_dropout)
        self.apply(_init_weights)                            # the decoder's layers initialised like the encoder's
        # ... except the classifier: N(0, 2/fan_out) with fan_out = num_classes gives it a std of 0.6
        # (logits up to ±26 and a first loss of 11.8 on 5 classes, measured); mmsegmentation's decode
        # heads start it at N(0, 0.01²), HF at N(0, 0.02²): the first logits are then near 0.
        nn.init.normal_(self.decode_head.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.decode_head.classifier.bias)

    def no_weight_decay(self) -> set:
        return set()

    def forward_features(self, x):
        """The encoder's stage maps, finest first: [(B, C_i, H/s_i, W/s_i)]."""
        return self.backbone.forward_intermediates(x, intermediates_only=True)

    def forward(self, x):
        return self.decode_head(self.forward_features(x))   # (B, num_classes, H/4, W/4)


# --------------------------------------------------------------------------- configurations
# The paper's appendix ("detailed settings of the MiT series"): every stage has MLP
# ratio 4, heads (1, 2, 5, 8), reduction ratios (8, 4, 2, 1), patch merging 7/4 then 3/2.
_MIT = {
    "b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "b1": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2)),
    "b2": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
    "b3": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 18, 3)),
    "b4": dict(embed_dims=(64, 128, 320, 512), depths=(3, 8, 27, 3)),
    "b5": dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3)),
}
_DECODER_DIM = {"b0": 256, "b1": 256, "b2": 768, "b3": 768, "b4": 768, "b5": 768}


def _mit(variant: str, **kwargs) -> MixVisionTransformer:
    return MixVisionTransformer(**{**_MIT[variant], **kwargs})


def _segformer(variant: str, **kwargs) -> Segformer:
    return Segformer(**{**_MIT[variant], "decoder_dim": _DECODER_DIM[variant], **kwargs})


@register_model
def mit_b0(**kwargs) -> MixVisionTransformer:
    """MiT-B0 encoder (no classifier): 3.32M parameters (paper: 3.3M)."""
    return _mit("b0", **kwargs)


@register_model
def mit_b1(**kwargs) -> MixVisionTransformer:
    """MiT-B1 encoder: 13.15M parameters (paper: 13.1M)."""
    return _mit("b1", **kwargs)


@register_model
def mit_b2(**kwargs) -> MixVisionTransformer:
    """MiT-B2 encoder: 24.2M parameters (paper: 24.2M)."""
    return _mit("b2", **kwargs)


@register_model
def mit_b3(**kwargs) -> MixVisionTransformer:
    """MiT-B3 encoder: 44.0M parameters (paper: 44.0M)."""
    return _mit("b3", **kwargs)


@register_model
def mit_b4(**kwargs) -> MixVisionTransformer:
    """MiT-B4 encoder: 60.8M parameters (paper: 60.8M)."""
    return _mit("b4", **kwargs)


@register_model
def mit_b5(**kwargs) -> MixVisionTransformer:
    """MiT-B5 encoder: 81.4M parameters (paper: 81.4M)."""
    return _mit("b5", **kwargs)


@register_model
def segformer_b0(**kwargs) -> Segformer:
    """SegFormer-B0 for ADE20K (150 classes, decoder width 256): 3.75M parameters (paper: 3.8M)."""
    return _segformer("b0", **kwargs)


@register_model
def segformer_b1(**kwargs) -> Segformer:
    """SegFormer-B1 (150 classes, decoder width 256)."""
    return _segformer("b1", **kwargs)


@register_model
def segformer_b2(**kwargs) -> Segformer:
    """SegFormer-B2 (150 classes, decoder width 768)."""
    return _segformer("b2", **kwargs)


@register_model
def segformer_b3(**kwargs) -> Segformer:
    """SegFormer-B3 (150 classes, decoder width 768)."""
    return _segformer("b3", **kwargs)


@register_model
def segformer_b4(**kwargs) -> Segformer:
    """SegFormer-B4 (150 classes, decoder width 768)."""
    return _segformer("b4", **kwargs)


@register_model
def segformer_b5(**kwargs) -> Segformer:
    """SegFormer-B5 (150 classes, decoder width 768)."""
    return _segformer("b5", **kwargs)


@register_model
def segformer_tiny(**kwargs) -> Segformer:
    """SegFormer for a CPU and 64×64 images (also runs at 32×32).

    B0's layout with every width halved: widths (16, 32, 80, 128), heads (1, 2, 5, 8)
    (head dim 16 throughout, B0's is 32), two blocks per stage, decoder width 128
    (B0: 256). The patch merging stays the paper's (7/4, then 3/2), so the logits are
    at 1/4 resolution as in the paper: a 64×64 image gives stages of 16², 8², 4², 2²
    and 16×16 logits. The reduction ratios (8, 4, 2, 1) were chosen for 128² → 16²
    grids at 512 (every stage then attends to ≤ 16×16 keys); at 64 they would leave 2×2
    keys, so here they are (4, 2, 1, 1): 4×4 keys in stages 1 and 2 and the full 4×4
    and 2×2 grids in stages 3 and 4. No dropout in the decoder for such a small model
    (pass decoder_dropout=0.1 for the paper's). 150 classes (ADE20K) unless
    ``num_classes`` says otherwise.
    """
    args = dict(embed_dims=(16, 32, 80, 128), depths=(2, 2, 2, 2), num_heads=(1, 2, 5, 8),
                sr_ratios=(4, 2, 1, 1), decoder_dim=128, decoder_dropout=0.0, drop_path_rate=0.0)
    return Segformer(**{**args, **kwargs})
