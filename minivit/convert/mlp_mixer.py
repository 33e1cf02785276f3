"""timm's MlpMixer → minivit's, architecture only.

The configuration is read from the torch model's attributes and submodules (no torch
import); ``minivit.convert.from_timm`` then loads the weights by name. timm's MLP-Mixer
family also holds ResMLP, gMLP and the gated variants (other block and MLP classes):
those raise, naming what minivit lacks.
"""
from __future__ import annotations

from functools import partial


def _p(module, name):
    """Dropout's p (or DropPath's drop_prob) of a timm submodule; Identity means 0."""
    m = getattr(module, name, None)
    return float(getattr(m, "p", getattr(m, "drop_prob", 0.0)) or 0.0)


def _activation(act, who):
    from minivit import nn
    name = type(act).__name__
    if name == "GELU" and getattr(act, "approximate", "none") in ("none", "tanh"):
        return partial(nn.GELU, approximate=act.approximate)
    if name == "ReLU":
        return nn.ReLU
    raise ValueError(f"minivit.convert.{who}: activation {act!r} is not supported (GELU or ReLU)")


def build_from_timm(tm):
    """The minivit MlpMixer with ``tm``'s configuration (weights not loaded)."""
    from minivit import nn
    from minivit.models.mlp_mixer import MlpMixer

    blk = tm.blocks[0]
    problems = []
    if type(blk).__name__ != "MixerBlock":
        problems.append(f"block {type(blk).__name__} (ResMLP, gMLP and friends; minivit has MixerBlock)")
    elif type(blk.mlp_tokens).__name__ != "Mlp" or type(blk.mlp_channels).__name__ != "Mlp":
        problems.append(f"MLP {type(blk.mlp_channels).__name__} (minivit has Mlp)")
    elif type(blk.norm1).__name__ != "LayerNorm":
        problems.append(f"norm layer {type(blk.norm1).__name__}")
    if type(tm.stem).__name__ != "PatchEmbed" or tm.stem.proj.bias is None:
        problems.append(f"stem {type(tm.stem).__name__} without a biased patch conv")
    if problems:
        raise ValueError("minivit.convert.mlp_mixer: timm's MlpMixer uses " + "; ".join(problems)
                         + ", which minivit's MlpMixer does not implement")
    dim = tm.embed_dim
    stem_norm = type(tm.stem.norm).__name__ != "Identity"
    return MlpMixer(
        num_classes=tm.num_classes, img_size=tuple(tm.stem.img_size), in_chans=tm.stem.proj.in_channels,
        patch_size=tuple(tm.stem.patch_size), num_blocks=len(tm.blocks), embed_dim=dim,
        mlp_ratio=(blk.mlp_tokens.fc1.out_features / dim, blk.mlp_channels.fc1.out_features / dim),
        norm_layer=partial(nn.LayerNorm, eps=blk.norm1.eps), act_layer=_activation(blk.mlp_channels.act, "mlp_mixer"),
        drop_rate=_p(tm, "head_drop"), proj_drop_rate=_p(blk.mlp_channels, "drop1"),
        drop_path_rate=_p(blk, "drop_path"), stem_norm=stem_norm, global_pool=tm.global_pool)
