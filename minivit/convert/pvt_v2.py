"""timm's ``PyramidVisionTransformerV2`` → minivit's, architecture only.

Everything is read off the timm model's submodules (timm does not keep all of
its constructor arguments); ``convert.from_timm`` then loads the weights, whose
names are the same on both sides.
"""
from __future__ import annotations

from functools import partial

from minivit import nn
from minivit.models.pvt_v2 import PyramidVisionTransformerV2


def _p(module) -> float:
    """The probability of a Dropout / DropPath, 0 for an Identity."""
    return float(getattr(module, "p", getattr(module, "drop_prob", 0.0)) or 0.0)


def build_from_timm(torch_model) -> PyramidVisionTransformerV2:
    stages = list(torch_model.stages)
    depths = tuple(len(s.blocks) for s in stages)
    if 0 in depths:
        raise ValueError(f"pvt_v2.build_from_timm: stages without blocks are not supported (depths {depths})")
    attns = [s.blocks[0].attn for s in stages]
    embed_dims = tuple(a.dim for a in attns)
    num_heads = tuple(a.num_heads for a in attns)
    linear = attns[0].pool is not None
    # With linear SRA the ratio is unused (the keys are always pooled to 7×7); 1 builds the same weights.
    sr_ratios = tuple(1 if linear or a.sr is None else int(a.sr.kernel_size[0]) for a in attns)
    mlp_ratios = tuple(s.blocks[0].mlp.fc1.out_features / d for s, d in zip(stages, embed_dims))
    last = stages[-1].blocks[-1]
    stem = torch_model.patch_embed.proj
    eps = stages[0].blocks[0].norm1.eps
    return PyramidVisionTransformerV2(
        in_chans=stem.in_channels, num_classes=torch_model.num_classes, global_pool=torch_model.global_pool,
        depths=depths, embed_dims=embed_dims, num_heads=num_heads, sr_ratios=sr_ratios, mlp_ratios=mlp_ratios,
        qkv_bias=attns[0].q.bias is not None, linear=linear, drop_rate=_p(torch_model.head_drop),
        proj_drop_rate=_p(attns[0].proj_drop), attn_drop_rate=_p(attns[0].attn_drop),
        drop_path_rate=_p(last.drop_path1), norm_layer=partial(nn.LayerNorm, eps=eps),
        patch_size=int(stem.kernel_size[0]), patch_stride=int(stem.stride[0]))
