"""timm's PoolingVisionTransformer (PiT) → minivit's, architecture only.

The configuration is read from the torch model's attributes and submodules (no torch
import); ``minivit.convert.from_timm`` then loads the weights by name.
"""
from __future__ import annotations


def _p(module, name):
    """Dropout's p (or DropPath's drop_prob) of a timm submodule; Identity means 0."""
    m = getattr(module, name, None)
    return float(getattr(m, "p", getattr(m, "drop_prob", 0.0)) or 0.0)


def build_from_timm(tm):
    """The minivit PoolingVisionTransformer with ``tm``'s configuration (weights not loaded)."""
    from minivit.models.pit import PoolingVisionTransformer

    if tm.global_pool != "token":
        raise ValueError(f"minivit.convert.pit: timm's PiT has global_pool={tm.global_pool!r}; "
                         f"minivit's PiT implements 'token' only")
    stages = list(tm.transformers)
    pools = [s.pool for s in stages[1:]]
    if any(p.conv.padding_mode != "zeros" or p.conv.stride != (2, 2) for p in pools):
        raise ValueError("minivit.convert.pit: minivit's PiT pools with stride 2 and zero padding only")
    first = stages[0].blocks[0]
    last = stages[-1].blocks[-1]
    conv = tm.patch_embed.conv
    if conv.padding not in ((0, 0), 0):
        raise ValueError(f"minivit.convert.pit: a stem with padding {conv.padding} is not supported")
    model = PoolingVisionTransformer(
        img_size=tuple(tm.patch_embed.img_size), patch_size=tuple(tm.patch_embed.patch_size),
        stride=conv.stride[0], base_dims=tuple(tm.base_dims), depth=tuple(len(s.blocks) for s in stages),
        heads=tuple(tm.heads), mlp_ratio=first.mlp.fc1.out_features / first.mlp.fc1.in_features,
        num_classes=tm.num_classes, in_chans=conv.in_channels, global_pool=tm.global_pool,
        distilled=tm.head_dist is not None, drop_rate=_p(tm, "head_drop"), pos_drop_rate=_p(tm, "pos_drop"),
        proj_drop_rate=_p(first.attn, "proj_drop"), attn_drop_rate=_p(first.attn, "attn_drop"),
        drop_path_rate=_p(last, "drop_path1"))
    model.set_distilled_training(bool(tm.distilled_training))        # behave as the twin does
    return model
