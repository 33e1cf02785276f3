"""Semantic FPN: a simple segmentation decoder over any pyramid backbone of minivit.

Kirillov, Girshick, He, Dollár, "Panoptic Feature Pyramid Networks" (CVPR 2019), §3: the
semantic-segmentation branch on a Feature Pyramid Network (Lin et al., CVPR 2017). The PVT
paper (Wang et al. 2021, §5.3) and PVT v2 use exactly this head to compare backbones on
ADE20K; so does Swin's ablation table. Two parts:

* **FPN neck** (Lin et al. §3): the backbone's stage maps C_i (B, C_i, H/s_i, W/s_i) each go
  through a lateral 1×1 conv to ``fpn_channels``; top-down, from the coarsest, each level is
  upsampled ×2 (nearest) and added to the next finer lateral; a 3×3 conv on each sum gives
  P_i (B, fpn_channels, H/s_i, W/s_i).
* **semantic head** (Kirillov et al. Fig. 3): each P_i goes through as many
  [3×3 conv, norm, ReLU, 2× bilinear upsample] stages as it takes to reach the finest level's
  scale (P at 1/4 gets one conv and no upsample, 1/8 one upsample, 1/16 two, 1/32 three);
  the maps are summed elementwise and a 1×1 conv gives the per-pixel class logits, at the
  finest level's stride (1/4 of the input for a stride-4 stem, as in the paper). The loss
  upsamples them bilinearly to the label size (:func:`minivit.losses.upsample_logits`).

Differences from the paper, for a CPU: channels 64 (neck) and 64 (head) instead of 256
and 128; BatchNorm instead of GroupNorm in the head (minivit has no GroupNorm layer; the
trainer's batches are 16-64 images, where BatchNorm is well-behaved).

The state_dict keys follow mmsegmentation's FPN + FPNHead: ``backbone.model.*`` (the
classifier's own keys, so a trained classifier's weights load into ``backbone.model``),
``neck.lateral_convs.i``, ``neck.fpn_convs.i``, ``decode_head.scale_heads.i.*``,
``decode_head.conv_seg``.
"""
from __future__ import annotations

import minivit.functional as F
from minivit import nn
from minivit.models.features import FeatureGetterNet
from minivit.models.registry import create_model, register_model


class FPN(nn.Module):
    """The neck: lateral 1×1 convs, top-down nearest upsampling and addition, 3×3 output convs."""

    def __init__(self, in_channels, out_channels: int = 64):
        super().__init__()
        self.lateral_convs = nn.ModuleList([nn.Conv2d(c, out_channels, 1) for c in in_channels])
        self.fpn_convs = nn.ModuleList([nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels])

    def forward(self, feats):
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]     # (B, D, H/s_i, W/s_i)
        for i in range(len(laterals) - 1, 0, -1):                              # coarsest → finest
            up = F.interpolate(laterals[i], size=tuple(laterals[i - 1].shape[2:]), mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals)]         # P_i


class ScaleHead(nn.Module):
    """[3×3 conv, BatchNorm, ReLU, ×2 bilinear upsample] × ``num_upsample`` (at least one conv)."""

    def __init__(self, in_channels: int, channels: int, num_upsample: int):
        super().__init__()
        layers = []
        for k in range(max(num_upsample, 1)):
            layers += [nn.Conv2d(in_channels if k == 0 else channels, channels, 3, padding=1, bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU()]
            if num_upsample > 0:
                layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class FPNHead(nn.Module):
    """Kirillov et al.'s semantic branch: every level to the finest scale, summed, classified."""

    def __init__(self, in_channels: int, strides, channels: int = 64, num_classes: int = 5,
                 drop_rate: float = 0.0):
        super().__init__()
        finest = strides[0]
        ups = []
        for s in strides:
            n = (s // finest).bit_length() - 1                                # log2(s / finest)
            if finest * 2 ** n != s:
                raise ValueError(f"FPNHead: feature strides must be the finest one times powers of 2, got {strides}")
            ups.append(n)
        self.scale_heads = nn.ModuleList([ScaleHead(in_channels, channels, n) for n in ups])
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats):
        out = self.scale_heads[0](feats[0])                                   # (B, channels, H/s_0, W/s_0)
        for head, p in zip(self.scale_heads[1:], feats[1:]):
            y = head(p)
            if tuple(y.shape[2:]) != tuple(out.shape[2:]):                    # odd sizes: align to the finest
                y = F.interpolate(y, size=tuple(out.shape[2:]), mode="bilinear", align_corners=False)
            out = out + y
        return self.conv_seg(self.dropout(out))                                # (B, K, H/s_0, W/s_0)


class SemanticFPN(nn.Module):
    """Backbone (``features_only``) → FPN neck → semantic head: images (B, 3, H, W) → logits
    (B, num_classes, H/s, W/s), s the backbone's finest stride.

    ``backbone``: a registered pyramid model's name (built with ``backbone_kwargs`` and wrapped
    with ``create_model(..., features_only=True, out_indices=out_indices)``) or a
    :class:`FeatureGetterNet` already built."""

    task = "segmentation"       # what python -m minivit.train --task segmentation checks

    def __init__(self, backbone="pvt_v2_tiny", num_classes: int = 5, fpn_channels: int = 64,
                 head_channels: int = 64, backbone_kwargs: dict | None = None, out_indices=None,
                 drop_rate: float = 0.0, in_chans: int = 3):
        super().__init__()
        if isinstance(backbone, str):
            kwargs = dict(backbone_kwargs or {})
            kwargs.setdefault("num_classes", 0)
            kwargs.setdefault("in_chans", in_chans)
            backbone = create_model(backbone, features_only=True, out_indices=out_indices, **kwargs)
        if not isinstance(backbone, FeatureGetterNet):
            raise ValueError(f"SemanticFPN: backbone must be a pyramid model's name or a features_only model, "
                             f"got {type(backbone).__name__}; e.g. create_model('pvt_v2_tiny', features_only=True)")
        self.num_classes = num_classes
        self.backbone = backbone
        channels, strides = backbone.feature_info.channels(), backbone.feature_info.reduction()
        self.output_stride = strides[0]
        self.neck = FPN(channels, fpn_channels)
        self.decode_head = FPNHead(fpn_channels, strides, head_channels, num_classes, drop_rate)

    def forward(self, x):
        feats = self.backbone(x)                                               # [(B, C_i, H/s_i, W/s_i)]
        return self.decode_head(self.neck(feats))                              # (B, K, H/s_0, W/s_0)


def _fpn(backbone: str, backbone_defaults: dict, kwargs) -> SemanticFPN:
    backbone_kwargs = {**backbone_defaults, **kwargs.pop("backbone_kwargs", {})}
    for key in ("img_size", "drop_path_rate"):                                 # the trainer's flags
        if key in kwargs:
            backbone_kwargs[key] = kwargs.pop(key)
    return SemanticFPN(backbone, backbone_kwargs=backbone_kwargs, **kwargs)


@register_model
def fpn_pvt_v2_tiny(**kwargs) -> SemanticFPN:
    """Semantic FPN on PVT v2 (B0's widths and depths, ``pvt_v2_tiny``) for 64×64 images and the
    ``shapes`` set's 5 classes: the paper's stride-4 stem (7×7 conv, stride 4), so the four stages
    are 16×16, 8×8, 4×4, 2×2 (strides 4-32, as PVT's ADE20K setting) and the logits are 16×16."""
    return _fpn("pvt_v2_tiny", dict(patch_size=7, patch_stride=4, img_size=64), kwargs)


@register_model
def fpn_swin_tiny(**kwargs) -> SemanticFPN:
    """Semantic FPN on Swin (``swin_tiny``'s widths, depths (2, 6, 2), window 4) for 64×64 images:
    patch 4, so the three stages are 16×16, 8×8, 4×4 (strides 4, 8, 16) and the logits 16×16."""
    return _fpn("swin_tiny", dict(patch_size=4, img_size=64), kwargs)
