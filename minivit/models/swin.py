"""Swin Transformer: a hierarchical ViT with shifted windows (Liu et al., 2021, arXiv:2103.14030).

    image (B, 3, H, W)
      → patch embedding: P×P patches, linear to C, LayerNorm       (B, H/P, W/P, C)
      → stage 1: blocks at H/P × W/P, width C
      → stage i > 1: patch merging (2×2 → 1, width ×2), then blocks
      → LayerNorm → global average pool → linear head               (B, num_classes)

Tokens stay an (B, H, W, C) map throughout (NHWC, as timm), because windows,
shifts and merges are all spatial. A block is the ViT block with its MSA
replaced by window attention; blocks alternate between regular windows (W-MSA)
and windows shifted by ⌊M/2⌋ (SW-MSA), Swin eq. 3:

    ẑˡ   = W-MSA(LN(zˡ⁻¹)) + zˡ⁻¹          zˡ   = MLP(LN(ẑˡ)) + ẑˡ
    ẑˡ⁺¹ = SW-MSA(LN(zˡ)) + zˡ              zˡ⁺¹ = MLP(LN(ẑˡ⁺¹)) + ẑˡ⁺¹

Window attention, the relative position bias and the shift mask are in
:mod:`minivit.layers.window_attention`, patch merging in
:mod:`minivit.layers.patch_merging`. Parameter names and shapes are timm's
(``SwinTransformer`` in timm ≥ 1.0: the patch merging of stage i sits at the
*start* of stage i as ``layers.i.downsample``, and the classifier is
``head.fc``), so ``load_state_dict(timm_model.state_dict())`` works.

As in timm, a stage whose token grid is no larger than the window along an
axis uses one window covering that axis and does not shift along it (there is
nothing to shift to): at 224×224 with M = 7 the last stage's 7×7 grid is a
single window.
"""
from __future__ import annotations

import math

import numpy as np

from minivit import functional as F
from minivit import nn
from minivit.layers.mlp import Mlp
from minivit.layers.patch_embed import PatchEmbed, check_image, to_2tuple
from minivit.layers.patch_merging import PatchMerging
from minivit.layers.window_attention import WindowAttention, shifted_window_mask, shifted_window_order
from minivit.models.features import check_output_fmt, feature_take_indices
from minivit.models.registry import register_model


# =========================================================================== sizes
def _per_stage(value, num_stages: int, name: str) -> tuple:
    """An int/float for every stage, or one per stage (timm's to_ntuple)."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            raise ValueError(f"SwinTransformer: {name} has {len(value)} entries for {num_stages} stages "
                             f"(len(depths)); give one value or one per stage")
        return tuple(value)
    return (value,) * num_stages


def _stage_window_sizes(window_size, num_stages: int) -> tuple:
    """One (Mh, Mw) per stage from an int, an (h, w) pair, or one int/pair per stage (as timm:
    a sequence of two ints is always one (h, w) window)."""
    if not isinstance(window_size, (list, tuple)):
        window_size = (window_size,) * num_stages
    elif len(window_size) == 2 and not isinstance(window_size[0], (list, tuple)):
        window_size = (tuple(window_size),) * num_stages
    if len(window_size) != num_stages:
        raise ValueError(f"SwinTransformer: window_size {window_size} gives {len(window_size)} stage windows "
                         f"for {num_stages} stages; give one window size or one per stage")
    out = tuple(to_2tuple(w) for w in window_size)
    if any(m <= 0 for ws in out for m in ws):
        raise ValueError(f"SwinTransformer: window sizes must be positive, got {out}")
    return out


def window_and_shift(resolution, window_size, shift_size=None):
    """timm's rule: along an axis whose grid is no larger than the window, the window
    becomes the whole axis and there is no shift (nothing to shift to); otherwise the
    window stays and the shift is ``shift_size`` (default ⌊M/2⌋, the paper's)."""
    window_size = to_2tuple(window_size)
    shift_size = tuple(w // 2 for w in window_size) if shift_size is None else to_2tuple(shift_size)
    window = tuple(r if r <= w else w for r, w in zip(resolution, window_size))
    shift = tuple(0 if r <= w else s for r, w, s in zip(resolution, window, shift_size))
    return window, shift


def stage_resolutions(img_size, patch_size, window_sizes) -> list:
    """The token grid of every stage, or a ValueError that names the constraint and the sizes.

    Stage 0 sees the (H/P, W/P) patch grid; every later stage halves it (patch
    merging needs an even grid), and every stage's grid must be a whole number of
    windows. For stages larger than their window that is: the image size must be
    divisible by patch_size × window_size × 2^(stages−1).
    """
    (H, W), (ph, pw) = to_2tuple(img_size), to_2tuple(patch_size)
    S = len(window_sizes)
    uniform = len(set(window_sizes)) == 1
    # With one window size for all stages the deepest stage sets the divisor; with one
    # per stage, every stage i needs P·M_i·2^i.
    need_h = math.lcm(*(ph * m[0] * 2 ** i for i, m in enumerate(window_sizes)))
    need_w = math.lcm(*(pw * m[1] * 2 ** i for i, m in enumerate(window_sizes)))

    def fail(reason):
        sugg = (max(need_h, round(H / need_h) * need_h), max(need_w, round(W / need_w) * need_w))
        if uniform:
            (Mh, Mw), two = window_sizes[0], 2 ** (S - 1)
            wins = f"window_size {Mh}×{Mw}"
            need = f"patch_size × window_size × 2^(stages−1) = {ph}·{Mh}·{two} = {need_h}"
            if (ph, Mh) != (pw, Mw):
                need += f" for the height and {pw}·{Mw}·{two} = {need_w} for the width"
        else:
            wins = f"window sizes {list(window_sizes)}"
            need = f"patch_size × window_size(stage i) × 2^i for every stage i: {need_h}×{need_w}"
        raise ValueError(
            f"SwinTransformer: img_size {H}×{W} does not fit patch_size {ph}×{pw}, {wins} and {S} stages: "
            f"{reason}. The image size must be divisible by {need} (a stage whose grid is not larger "
            f"than its window uses one window of the whole grid); e.g. "
            f"img_size={sugg[0] if sugg[0] == sugg[1] else sugg}, or change patch_size, window_size "
            f"or the number of stages")

    if H % ph or W % pw:
        fail(f"the image is not a whole number of {ph}×{pw} patches")
    res, out = (H // ph, W // pw), []
    for i, ws in enumerate(window_sizes):
        if i > 0:
            if res[0] % 2 or res[1] % 2:
                fail(f"stage {i - 1}'s {res[0]}×{res[1]} token grid is odd, so patch merging cannot halve it")
            res = (res[0] // 2, res[1] // 2)
        win, _ = window_and_shift(res, ws)
        if res[0] % win[0] or res[1] % win[1]:
            fail(f"stage {i}'s {res[0]}×{res[1]} token grid is not a whole number of {win[0]}×{win[1]} windows")
        out.append(res)
    return out


# =========================================================================== the block
class SwinTransformerBlock(nn.Module):
    """One Swin block on a (B, H, W, C) map → (B, H, W, C) (Swin eq. 3):

        x = x + DropPath(roll⁻¹(reverse(W-MSA(partition(roll(LN(x))), mask))))
        x = x + DropPath(MLP(LN(x)))

    With ``shift_size`` 0 this is W-MSA; with M/2 it is SW-MSA, and the (nW, N, N)
    mask for the fixed input resolution is built once here (buffer ``attn_mask``,
    non-persistent as in timm, None without a shift).
    """

    def __init__(self, dim: int, input_resolution, num_heads: int = 4, head_dim: int | None = None,
                 window_size=7, shift_size=0, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 act_layer=nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.input_resolution = to_2tuple(input_resolution)
        self.window_size, self.shift_size = window_and_shift(self.input_resolution, window_size, shift_size)
        self.window_area = self.window_size[0] * self.window_size[1]
        self.mlp_ratio = mlp_ratio

        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, num_heads=num_heads, head_dim=head_dim, window_size=self.window_size,
                                    qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()

        H, W = self.input_resolution
        self.register_buffer("attn_mask", shifted_window_mask(H, W, self.window_size, self.shift_size),
                             persistent=False)
        # The fast path's shifted partition: for each window token, the map position it comes from.
        order = shifted_window_order(H, W, self.window_size, self.shift_size)
        self.register_buffer("window_order", order, persistent=False)
        self.register_buffer("window_order_inverse", None if order is None else np.argsort(order),
                             persistent=False)

    # True: with a shift, roll + partition (and reverse + roll back) as one gather each
    # (F.permute_tokens with window_order), one copy where the steps below make two. The same
    # numbers (tests/test_models_swin.py); False: the steps as the paper writes them.
    fused_shift = True

    def _attn(self, x):
        """(Shifted) window attention on the map: (B, H, W, C) → (B, H, W, C)."""
        B, H, W, C = x.shape
        (sh, sw), (Mh, Mw) = self.shift_size, self.window_size
        if self.fused_shift and self.window_order is not None:
            order, inverse = self.window_order.data, self.window_order_inverse.data
            windows = F.permute_tokens(x, order, (-1, Mh * Mw, C), inverse)          # (B·nW, N, C)
            windows = self.attn(windows, mask=self.attn_mask)                       # (B·nW, N, C)
            return F.permute_tokens(windows.reshape(B, H * W, C), inverse, (B, H, W, C), order)
        if sh or sw:
            x = x.roll((-sh, -sw), dims=(1, 2))                            # cyclic shift (Swin Fig. 4)
        # window_partition(x) then (B·nW, N, C), as one op (F.rearrange; tests/test_layout.py
        # holds it equal to window_partition's reshape/permute chain)
        windows = F.rearrange(x, "b (h p) (w q) c -> (b h w) (p q) c", p=Mh, q=Mw)  # (B·nW, N, C)
        windows = self.attn(windows, mask=self.attn_mask)                   # (B·nW, N, C)
        x = F.rearrange(windows, "(b h w) (p q) c -> b (h p) (w q) c",      # window_reverse: (B, H, W, C)
                        h=H // Mh, w=W // Mw, p=Mh, q=Mw)
        if sh or sw:
            x = x.roll((sh, sw), dims=(1, 2))                               # undo the shift
        return x

    def forward(self, x):
        B, H, W, C = x.shape
        if (H, W) != self.input_resolution:
            raise ValueError(f"SwinTransformerBlock: built for a {self.input_resolution[0]}×"
                             f"{self.input_resolution[1]} token grid (its shift mask depends on it), "
                             f"got {H}×{W} (input shape {x.shape})")
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        # The MLP acts on each token alone, so it takes the (B, H, W, C) map as it is (timm
        # reshapes to (B, H·W, C) and back: the same numbers, two ops more).
        return x + self.drop_path2(self.mlp(self.norm2(x)))                 # (B, H, W, C)

    def extra_repr(self):
        return (f"dim={self.dim}, input_resolution={self.input_resolution}, window_size={self.window_size}, "
                f"shift_size={self.shift_size}, mlp_ratio={self.mlp_ratio}")


class SwinTransformerStage(nn.Module):
    """One stage: optional patch merging (``downsample``), then ``depth`` blocks alternating
    W-MSA and SW-MSA: (B, H, W, dim) → (B, H/2, W/2, out_dim) (or H, W without downsampling)."""

    def __init__(self, dim: int, out_dim: int, input_resolution, depth: int, downsample: bool = True,
                 num_heads: int = 4, head_dim: int | None = None, window_size=7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path=0.0,
                 norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.input_resolution = to_2tuple(input_resolution)
        self.output_resolution = (tuple(r // 2 for r in self.input_resolution) if downsample
                                  else self.input_resolution)
        self.depth = depth
        window_size = to_2tuple(window_size)
        shift_size = tuple(w // 2 for w in window_size)
        if downsample:
            self.downsample = PatchMerging(dim, out_dim=out_dim, norm_layer=norm_layer)
        else:
            if dim != out_dim:
                raise ValueError(f"SwinTransformerStage: without downsampling dim ({dim}) must equal "
                                 f"out_dim ({out_dim})")
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            SwinTransformerBlock(out_dim, self.output_resolution, num_heads=num_heads, head_dim=head_dim,
                                 window_size=window_size, shift_size=0 if i % 2 == 0 else shift_size,
                                 mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop,
                                 attn_drop=attn_drop,
                                 drop_path=drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path,
                                 norm_layer=norm_layer)
            for i in range(depth)])

    def forward(self, x):
        return self.blocks(self.downsample(x))


# =========================================================================== embedding and head
class PatchEmbedNHWC(PatchEmbed):
    """timm's ``PatchEmbed(output_fmt='NHWC')``: conv P×P/stride P, then LayerNorm over
    channels of the (B, H/P, W/P, C) map. Names ``proj``, ``norm``."""

    def __init__(self, img_size=224, patch_size=4, in_chans: int = 3, embed_dim: int = 96, norm_layer=None):
        super().__init__(img_size, patch_size, in_chans, embed_dim, norm_layer=norm_layer, flatten=False)

    def forward(self, x):
        check_image(x, self.img_size, self.in_chans, "SwinTransformer")
        x = self.proj(x)                                   # (B, C, H/P, W/P)
        return self.norm(x.permute(0, 2, 3, 1))            # (B, H/P, W/P, C)


class ClassifierHead(nn.Module):
    """Global average pool over the map, dropout, linear: (B, H, W, C) → (B, num_classes).
    timm's ``ClassifierHead`` for NHWC input; its one weight is ``fc``."""

    def __init__(self, in_features: int, num_classes: int, pool_type: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        if pool_type not in ("avg", ""):
            raise ValueError(f"ClassifierHead: global_pool must be 'avg' or '' (no pooling), got {pool_type!r}")
        self.in_features, self.pool_type = in_features, pool_type
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x, pre_logits: bool = False):
        if self.pool_type == "avg":
            x = x.mean(dim=(1, 2))                         # (B, C)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


# =========================================================================== the model
class SwinTransformer(nn.Module):
    """Swin Transformer with timm's constructor arguments and state_dict.

    Input (B, in_chans, H, W) NCHW → logits (B, num_classes). ``depths`` and
    ``num_heads`` have one entry per stage; stage i has width embed_dim·2^i.
    ``window_size`` is an int, an (h, w) pair, or one per stage; ``mlp_ratio``
    and ``head_dim`` one value or one per stage. ``drop_path_rate`` rises linearly
    from 0 at the first block to the value given at the last (stochastic depth).
    """

    def __init__(self, img_size=224, patch_size=4, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", embed_dim: int = 96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                 head_dim=None, window_size=7, mlp_ratio=4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 norm_layer=nn.LayerNorm, weight_init: str = ""):
        super().__init__()
        if not isinstance(embed_dim, int):
            raise ValueError(f"SwinTransformer: embed_dim must be an int (stage i has width embed_dim·2^i), "
                             f"got {embed_dim!r}")
        depths = tuple(depths)
        S = self.num_layers = len(depths)
        num_heads = _per_stage(num_heads, S, "num_heads")
        head_dim = _per_stage(head_dim, S, "head_dim")
        mlp_ratio = _per_stage(mlp_ratio, S, "mlp_ratio")
        window_sizes = _stage_window_sizes(window_size, S)
        self.img_size, self.patch_size = to_2tuple(img_size), to_2tuple(patch_size)
        resolutions = stage_resolutions(self.img_size, self.patch_size, window_sizes)

        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.embed_dim = embed_dim
        dims = [embed_dim * 2 ** i for i in range(S)]
        self.num_features = self.head_hidden_size = dims[-1]
        self.window_sizes, self.resolutions = window_sizes, resolutions

        self.patch_embed = PatchEmbedNHWC(self.img_size, self.patch_size, in_chans, embed_dim,
                                          norm_layer=norm_layer)
        # Stochastic depth: 0 at the first block, drop_path_rate at the last.
        dpr = np.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.Sequential(*[
            SwinTransformerStage(dims[max(i - 1, 0)], dims[i], resolutions[max(i - 1, 0)], depths[i],
                                 downsample=i > 0, num_heads=num_heads[i], head_dim=head_dim[i],
                                 window_size=window_sizes[i], mlp_ratio=mlp_ratio[i], qkv_bias=qkv_bias,
                                 proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                                 drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], norm_layer=norm_layer)
            for i in range(S)])
        # Stage i's map (NHWC inside, NCHW out): stride P·2^i, width embed_dim·2^i.
        self.feature_info = [dict(num_chs=dims[i], reduction=max(self.patch_size) * 2 ** i, module=f"layers.{i}")
                             for i in range(S)]
        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        if weight_init not in ("", "skip"):
            raise ValueError(f"SwinTransformer: weight_init must be '' (timm's default) or 'skip', "
                             f"got {weight_init!r}")
        if weight_init != "skip":
            self.init_weights()

    def init_weights(self):
        """timm's default: every Linear weight ~ trunc_normal(std=.02), biases 0; the relative
        position bias tables trunc_normal(std=.02) (done in WindowAttention); LayerNorms 1 and 0;
        the patch-embedding conv keeps PyTorch's default init."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        return self

    def no_weight_decay(self) -> set:
        """The relative position bias tables (timm's set): biases of logits, not weights to shrink."""
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    def forward_features(self, x):
        """(B, in_chans, H, W) → the final normalised map (B, H/(P·2^(S−1)), W/(P·2^(S−1)), C_S)."""
        x = self.patch_embed(x)                            # (B, H/P, W/P, C)
        x = self.layers(x)                                 # (B, h, w, C·2^(S−1))
        return self.norm(x)

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """The stage maps picked by ``indices`` (see ``models/features.py``) as NCHW
        (B, C_i, H/s_i, W/s_i) — or as the stages hold them, (B, H/s_i, W/s_i, C_i), with
        ``output_fmt='NHWC'`` (timm's ``features_only`` Swin returns that layout) — and, unless
        ``intermediates_only``, the final normalised NHWC map as ``forward_features`` gives it.

        ``norm=True`` applies the final LayerNorm to the last stage's map (the only one it is
        sized for), as timm. Sizes: only ``img_size`` — the window partition, shift masks and
        patch merging of every stage are fixed at construction (as timm's default
        ``strict_img_size``). For another size build the model with that ``img_size`` and load
        the same state_dict: no parameter depends on the image size."""
        check_output_fmt(output_fmt, ("NCHW", "NHWC"), type(self).__name__)
        take, last = feature_take_indices(len(self.layers), indices)
        x = self.patch_embed(x)                            # (B, H/P, W/P, C)
        intermediates = []
        for i, stage in enumerate(self.layers):
            if stop_early and i > last:
                break
            x = stage(x)                                   # (B, H/s_i, W/s_i, C_i)
            if i in take:
                x_i = self.norm(x) if norm and i == len(self.layers) - 1 else x
                intermediates.append(x_i.permute(0, 3, 1, 2) if output_fmt == "NCHW" else x_i)
        if intermediates_only:
            return intermediates
        return (self.norm(x) if i == len(self.layers) - 1 else x), intermediates

    def forward_head(self, x, pre_logits: bool = False):
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# =========================================================================== configurations
def _swin(defaults: dict, overrides: dict) -> SwinTransformer:
    return SwinTransformer(**{**defaults, **overrides})


@register_model
def swin_tiny(**kwargs) -> SwinTransformer:
    """Swin for CIFAR-10 (32×32, 10 classes): 3.04M parameters (3,040,694).

    Design for 32×32 images:

    - patch_size 2 → a 16×16 token grid (P = 4, as at 224, would leave 8×8 tokens
      and a 2×2 grid after two merges: too coarse for 32-pixel objects).
    - window_size 4 → 4×4 windows of 16 tokens; 16 windows at stage 1, 4 at stage 2.
      Shifting by 2 lets information cross windows as in the paper.
    - three stages, grids 16×16 → 8×8 → 4×4 (widths 64 → 128 → 256). The last
      stage's 4×4 grid equals the window, so it is one global window with no
      shift. A fourth stage would see 2×2 tokens at width 512, adding ~3M
      parameters for almost no spatial information.
    - depths (2, 6, 2), heads (2, 4, 8) (head width 32, the paper's), most depth in
      the middle stage as in Swin-T's (2, 2, 6, 2); mlp_ratio 4; drop_path 0.1.

    For scale: a Swin of this size (patch 2, window 4, a few million parameters)
    has been reported at 94.46% CIFAR-10 accuracy after 100 epochs with strong
    augmentation.
    """
    return _swin(dict(img_size=32, patch_size=2, in_chans=3, num_classes=10, embed_dim=64, depths=(2, 6, 2),
                      num_heads=(2, 4, 8), window_size=4, mlp_ratio=4.0, drop_path_rate=0.1), kwargs)


@register_model
def swin_t_224(**kwargs) -> SwinTransformer:
    """Swin-T (Swin Table 1): C = 96, depths (2, 2, 6, 2), M = 7, 224×224: 28.3M parameters.
    timm: ``swin_tiny_patch4_window7_224``. drop_path 0.2 as the paper trains it."""
    return _swin(dict(img_size=224, patch_size=4, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                      window_size=7, drop_path_rate=0.2), kwargs)


@register_model
def swin_s_224(**kwargs) -> SwinTransformer:
    """Swin-S: C = 96, depths (2, 2, 18, 2), M = 7, 224×224: 49.6M parameters.
    timm: ``swin_small_patch4_window7_224``. drop_path 0.3 as the paper."""
    return _swin(dict(img_size=224, patch_size=4, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                      window_size=7, drop_path_rate=0.3), kwargs)


@register_model
def swin_b_224(**kwargs) -> SwinTransformer:
    """Swin-B: C = 128, depths (2, 2, 18, 2), M = 7, 224×224: 87.8M parameters.
    timm: ``swin_base_patch4_window7_224``. drop_path 0.5 as the paper."""
    return _swin(dict(img_size=224, patch_size=4, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                      window_size=7, drop_path_rate=0.5), kwargs)
