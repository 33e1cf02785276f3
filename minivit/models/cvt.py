"""CvT: the Convolutional vision Transformer (Wu et al., 2021, "CvT: Introducing
Convolutions to Vision Transformers").

CvT brings two ideas of CNNs into ViT, one per building block:

* **Convolutional token embedding** (:mod:`minivit.layers.conv_embed`): each
  stage starts with an overlapping strided conv + LayerNorm, so the token grid
  shrinks and the width grows stage by stage (56² × 64 → 28² × 192 → 14² × 384
  at 224² for CvT-13), a pyramid like a ResNet's.
* **Convolutional projection** (:mod:`minivit.layers.conv_projection`): q, k, v
  come from a depth-wise 3×3 conv + BatchNorm over the token map before the
  linear maps, with stride 2 for k and v (4× cheaper attention).

Together they make position embeddings unnecessary (the convs know where a
token is; CvT Table 5 shows removing them costs nothing), so CvT runs at any
image size. Only the last stage carries a class token; with it the head reads
the class token, without it the mean of the final tokens::

    x → [ConvEmbed → (cls ⊕) tokens → Block × depth_i]   for stages i = 0, 1, 2
      → LayerNorm(cls token, or all tokens) → mean over tokens → Linear head

Each Block is pre-norm (as ViT's), with the attention above and an MLP:

    x = x + DropPath(ConvAttn(LN(x)))
    x = x + DropPath(MLP(LN(x)))

Parameter names are the authors' released code's (``microsoft/CvT``,
``lib/models/cls_cvt.py``), which has no timm counterpart:

    stage{i}.patch_embed.proj / .norm               conv token embedding
    stage{i}.cls_token                              (1, 1, C), last stage only
    stage{i}.blocks.{j}.norm1 / .norm2              LayerNorms
    stage{i}.blocks.{j}.attn.conv_proj_{q,k,v}.conv depth-wise conv (C, 1, 3, 3), no bias
    stage{i}.blocks.{j}.attn.conv_proj_{q,k,v}.bn   BatchNorm2d (+ running stats)
    stage{i}.blocks.{j}.attn.proj_{q,k,v}           Linear C → C
    stage{i}.blocks.{j}.attn.proj                   Linear C → C
    stage{i}.blocks.{j}.mlp.fc1 / .fc2              MLP
    norm, head

:func:`minivit.convert.cvt.from_transformers` maps Hugging Face's names onto these.
"""
from __future__ import annotations

from functools import partial

import numpy as np

import minivit.functional as F
from minivit import nn
from minivit.layers.conv_embed import ConvEmbed
from minivit.layers.conv_projection import ConvProjectionAttention
from minivit.layers.mlp import Mlp
from minivit.layers.patch_embed import check_image, to_2tuple
from minivit.models.features import check_output_fmt, feature_take_indices
from minivit.models.registry import register_model


def _per_stage(value, n: int, name: str) -> list:
    """A setting for every stage: a scalar is repeated, a sequence must have one entry per stage."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"ConvolutionalVisionTransformer: {name} has {len(value)} entries {tuple(value)} "
                             f"but there are {n} stages (len(depths)); give one per stage or a single value")
        return list(value)
    return [value] * n


class CvTBlock(nn.Module):
    """Pre-norm transformer block with convolutional projection attention.

    ``forward(x, hw)``: tokens (B, [1 +] H·W, C) → same shape; ``hw`` is the token grid.
    One ``drop_path`` module serves both branches, as in the released code.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, act_layer=nn.GELU,
                 norm_layer=nn.LayerNorm, **attn_kwargs):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = ConvProjectionAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                            proj_drop=drop, **attn_kwargs)
        self.drop_path = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x, hw):
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class CvTStage(nn.Module):
    """One stage: (B, C_in, H, W) map → (B, C, H', W') map and the class token (B, 1, C) or None.

    ConvEmbed makes the tokens; the class token (if any) goes in front; the
    blocks run on the H'×W' grid; the map goes back out as an image for the
    next stage's ConvEmbed. (The released code calls this class VisionTransformer.)
    """

    def __init__(self, in_chans: int, embed_dim: int, depth: int, num_heads: int, patch_size, patch_stride,
                 patch_padding, mlp_ratio: float = 4.0, qkv_bias: bool = False, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rates=None, with_cls_token: bool = False,
                 act_layer=nn.GELU, norm_layer=nn.LayerNorm, **attn_kwargs):
        super().__init__()
        drop_path_rates = drop_path_rates or [0.0] * depth
        self.embed_dim = embed_dim
        self.patch_embed = ConvEmbed(patch_size, in_chans, embed_dim, patch_stride, patch_padding, norm_layer)
        if with_cls_token:
            self.cls_token = nn.Parameter(np.zeros((1, 1, embed_dim), dtype=np.float32))
        else:
            self.register_parameter("cls_token", None)
        self.pos_drop = nn.Dropout(drop_rate)  # the released code's name; there is no position embedding
        self.blocks = nn.ModuleList([
            CvTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
                     drop_path=drop_path_rates[j], act_layer=act_layer, norm_layer=norm_layer,
                     with_cls_token=with_cls_token, **attn_kwargs)
            for j in range(depth)])

    def forward(self, x):
        x, (H, W) = self.patch_embed(x)                         # (B, HW, C)
        B, _, C = x.shape
        if self.cls_token is not None:
            x = F.cat([self.cls_token.expand(B, -1, -1), x], dim=1)   # (B, 1 + HW, C)
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = blk(x, (H, W))
        cls = None
        if self.cls_token is not None:
            cls, x = x.split([1, H * W], dim=1)                 # (B, 1, C), (B, HW, C)
        return F.rearrange(x, "b (h w) c -> b c h w", h=H), cls  # back to a map for the next stage


class ConvolutionalVisionTransformer(nn.Module):
    """CvT on (B, in_chans, H, W) images → logits (B, num_classes).

    Per-stage settings (``embed_dims``, ``depths``, ``num_heads``, ``patch_sizes``,
    ``patch_strides``, ``patch_paddings``, and also ``mlp_ratio``, ``qkv_bias``,
    ``drop_rate``, ``attn_drop_rate``, ``kernel_qkv``, ``stride_kv``, ``stride_q``,
    ``padding_kv``, ``padding_q``) take one value per stage or a single value for all.

    ``cls_token``: True puts a class token in the last stage only (as every
    released CvT); a per-stage sequence of bools is also accepted (a class token
    of an earlier stage is dropped at that stage's end, as in the released code).

    ``drop_path_rate``: within stage i the rate grows linearly from 0 to p_i over
    its blocks (the released code). A per-stage sequence gives the p_i; a single
    float p means [0, …, 0, p], the released configs' choice (stochastic depth
    only in the deep last stage).

    ``img_size``: the input size the model is checked against (CvT itself has no
    position embedding and works at any size large enough for its strides);
    ``None`` accepts any size.
    """

    def __init__(self, img_size=224, in_chans: int = 3, num_classes: int = 1000, embed_dims=(64, 192, 384),
                 depths=(1, 2, 10), num_heads=(1, 3, 6), mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.1, patch_sizes=(7, 3, 3), patch_strides=(4, 2, 2),
                 patch_paddings=(2, 1, 1), kernel_qkv=3, stride_kv=2, stride_q=1, padding_kv=1, padding_q=1,
                 cls_token=True, qkv_proj_method="dw_bn", act_layer=nn.GELU,
                 norm_layer=partial(nn.LayerNorm, eps=1e-5)):
        super().__init__()
        n = len(depths)
        if n < 1:
            raise ValueError("ConvolutionalVisionTransformer: depths must list at least one stage")
        s = {name: _per_stage(v, n, name) for name, v in dict(
            embed_dims=embed_dims, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, patch_sizes=patch_sizes,
            patch_strides=patch_strides, patch_paddings=patch_paddings, kernel_qkv=kernel_qkv,
            stride_kv=stride_kv, stride_q=stride_q, padding_kv=padding_kv, padding_q=padding_q,
            qkv_proj_method=qkv_proj_method).items()}
        cls_tokens = _per_stage(cls_token, n, "cls_token") if isinstance(cls_token, (list, tuple)) \
            else [False] * (n - 1) + [bool(cls_token)]
        dpr = _per_stage(drop_path_rate, n, "drop_path_rate") if isinstance(drop_path_rate, (list, tuple)) \
            else [0.0] * (n - 1) + [drop_path_rate]

        self.num_classes, self.in_chans, self.num_stages = num_classes, in_chans, n
        self.img_size = to_2tuple(img_size) if img_size is not None else None
        self.embed_dims, self.depths = list(s["embed_dims"]), list(depths)
        self.num_features = self.embed_dims[-1]
        self.uses_cls_token = cls_tokens[-1]                    # does the head read a class token?

        chans = in_chans
        for i in range(n):
            stage = CvTStage(
                chans, s["embed_dims"][i], depths[i], s["num_heads"][i], s["patch_sizes"][i],
                s["patch_strides"][i], s["patch_paddings"][i], mlp_ratio=s["mlp_ratio"][i],
                qkv_bias=s["qkv_bias"][i], drop_rate=s["drop_rate"][i], attn_drop_rate=s["attn_drop_rate"][i],
                drop_path_rates=np.linspace(0, dpr[i], depths[i]).tolist(), with_cls_token=cls_tokens[i],
                act_layer=act_layer, norm_layer=norm_layer, method=s["qkv_proj_method"][i],
                kernel_size=s["kernel_qkv"][i], stride_kv=s["stride_kv"][i], stride_q=s["stride_q"][i],
                padding_kv=s["padding_kv"][i], padding_q=s["padding_q"][i])
            setattr(self, f"stage{i}", stage)                   # the released code's names: stage0, stage1, …
            chans = s["embed_dims"][i]
        # Stage i's map: stride Π patch_strides[:i+1] (4, 8, 16 for CvT-13), width embed_dims[i].
        self.feature_info, stride = [], 1
        for i in range(n):
            stride *= s["patch_strides"][i]
            self.feature_info.append(dict(num_chs=s["embed_dims"][i], reduction=stride, module=f"stage{i}"))
        self.norm = norm_layer(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

        self.grid_sizes = None                                  # token grid per stage, for the built img_size
        if self.img_size is not None:
            self.grid_sizes, hw = [], self.img_size
            for i in range(n):
                hw = self.stages[i].patch_embed.output_size(*hw)
                if min(hw) < 1:
                    raise ValueError(f"ConvolutionalVisionTransformer: img_size={self.img_size} is too small: "
                                     f"stage {i}'s conv embedding leaves a {hw[0]}×{hw[1]} grid; use larger "
                                     f"images or smaller patch_strides")
                self.grid_sizes.append(tuple(hw))
        self.init_weights()

    @property
    def stages(self) -> list:
        return [getattr(self, f"stage{i}") for i in range(self.num_stages)]

    def init_weights(self):
        """The released code's init: Linear weights ~ trunc_normal(std .02) with zero bias,
        LayerNorm/BatchNorm weight 1 and bias 0, class tokens ~ trunc_normal(std .02);
        convs keep PyTorch's default (Kaiming-uniform)."""
        def init(m):
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(init)
        for stage in self.stages:
            if stage.cls_token is not None:
                nn.init.trunc_normal_(stage.cls_token, std=0.02)

    def no_weight_decay(self) -> set:
        return {f"stage{i}.cls_token" for i, st in enumerate(self.stages) if st.cls_token is not None}

    def forward_features(self, x):
        """Images (B, C, H, W) → normalised final tokens: (B, 1, C) (class token) or (B, H'·W', C)."""
        check_image(x, self.img_size, self.in_chans, type(self).__name__)
        cls = None
        for stage in self.stages:
            x, cls = stage(x)                                   # (B, C_i, H_i, W_i), (B, 1, C_i) or None
        if self.uses_cls_token:
            return self.norm(cls)                               # (B, 1, C)
        return self.norm(F.rearrange(x, "b c h w -> b (h w) c"))  # (B, H'W', C)

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """The stage maps (B, C_i, H_i, W_i) picked by ``indices`` (see ``models/features.py``:
        each stage's tokens after its blocks, a class token left out — Hugging Face's
        ``CvtModel`` hidden states), and, unless ``intermediates_only``, the final features as
        ``forward_features``.

        timm has no CvT; as timm does for Swin and MViT v2, ``norm=True`` applies the final
        LayerNorm (over channels, at every position) to the last stage's map. Sizes: any
        H, W the strided convs leave a grid for (no position embeddings), whatever ``img_size``."""
        check_output_fmt(output_fmt, ("NCHW",), type(self).__name__)
        take, last = feature_take_indices(self.num_stages, indices)
        check_image(x, None, self.in_chans, type(self).__name__)
        intermediates, cls = [], None
        for i, stage in enumerate(self.stages):
            if stop_early and i > last:
                break
            x, cls = stage(x)                                   # (B, C_i, H_i, W_i), (B, 1, C_i) or None
            if i in take:
                x_i = x
                if norm and i == self.num_stages - 1:
                    x_i = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)   # LayerNorm over C
                intermediates.append(x_i)
        if intermediates_only:
            return intermediates
        if i < self.num_stages - 1:
            return x, intermediates
        final = self.norm(cls) if self.uses_cls_token else self.norm(F.rearrange(x, "b c h w -> b (h w) c"))
        return final, intermediates

    def forward_head(self, x, pre_logits: bool = False):
        x = x.mean(dim=1)                                       # (B, C): the class token, or the token mean
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# =========================================================================== registered configurations
@register_model
def cvt_tiny(**kwargs):
    """CvT for CIFAR-10 (32×32, 10 classes): 4,024,970 parameters (4.02M).

    Design for 32×32 inputs:

    * Stem: 3×3 conv, stride 2, padding 1 (ImageNet's 7×7 stride 4 would leave
      an 8×8 grid after one step). Stages 2-3 keep CvT's 3×3 stride-2 embedding,
      so the token grids are 16×16 → 8×8 → 4×4 (256, 64, 16 tokens): the same
      pyramid CvT-13 has at 56 → 28 → 14, scaled down.
    * Keys/values squeezed with stride 2 in stages 1-2 (256 → 64 and 64 → 16
      key tokens), but not in stage 3: a 4×4 map squeezed to 2×2 would leave the
      16 queries only 4 keys (+ class token), and attention over 17 tokens is
      cheap anyway (stride_kv = (2, 2, 1)).
    * Widths 64 → 128 → 256 with head width 64 (1, 2, 4 heads) as CvT; depths
      1, 2, 4 put most blocks in the last stage as CvT-13 does (1, 2, 10). The
      last stage holds 3.5M of the 4.0M weights (each block ≈ 12·C² = 0.79M).
    * Class token in the last stage, drop path 0.1 there (the released configs').
    """
    cfg = dict(img_size=32, num_classes=10, embed_dims=(64, 128, 256), depths=(1, 2, 4), num_heads=(1, 2, 4),
               patch_sizes=(3, 3, 3), patch_strides=(2, 2, 2), patch_paddings=(1, 1, 1), stride_kv=(2, 2, 1),
               drop_path_rate=0.1)
    return ConvolutionalVisionTransformer(**{**cfg, **kwargs})


@register_model
def cvt_13_224(**kwargs):
    """CvT-13 (paper Table 2): widths 64/192/384, depths 1/2/10, heads 1/3/6, 224×224, 1000 classes.

    19,997,480 parameters (the paper: 20M; as Hugging Face's ``microsoft/cvt-13``)."""
    cfg = dict(img_size=224, num_classes=1000, embed_dims=(64, 192, 384), depths=(1, 2, 10), num_heads=(1, 3, 6),
               drop_path_rate=0.1)
    return ConvolutionalVisionTransformer(**{**cfg, **kwargs})


@register_model
def cvt_21_224(**kwargs):
    """CvT-21 (paper Table 2): widths 64/192/384, depths 1/4/16, heads 1/3/6, 224×224, 1000 classes.

    31,622,696 parameters (the paper: 32M; as Hugging Face's ``microsoft/cvt-21``)."""
    cfg = dict(img_size=224, num_classes=1000, embed_dims=(64, 192, 384), depths=(1, 4, 16), num_heads=(1, 3, 6),
               drop_path_rate=0.1)
    return ConvolutionalVisionTransformer(**{**cfg, **kwargs})
