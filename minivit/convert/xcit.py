"""timm's Xcit (XCiT) → minivit's, architecture only.

The configuration is read from the torch model's attributes and submodules (no torch
import); ``minivit.convert.from_timm`` then loads the weights by name. ``eta`` only sets
the initial γ, so it is not read: the loaded weights carry the trained values.
"""
from __future__ import annotations

from functools import partial


def _p(module, name):
    """Dropout's p (or DropPath's drop_prob) of a timm submodule; Identity means 0."""
    m = getattr(module, name, None)
    return float(getattr(m, "p", getattr(m, "drop_prob", 0.0)) or 0.0)


def _act_layer(act):
    """timm's activation module → minivit's act_layer (GELU, exact or tanh, only)."""
    from minivit import nn
    if type(act).__name__ != "GELU":
        raise ValueError(f"minivit.convert.xcit: act_layer={type(act).__name__} is not supported; "
                         f"minivit's Xcit implements act_layer=GELU only")
    approximate = getattr(act, "approximate", "none")
    return nn.GELU if approximate == "none" else partial(nn.GELU, approximate=approximate)


def _norm_layer(norm):
    from minivit import nn
    if type(norm).__name__ != "LayerNorm" or not norm.elementwise_affine:
        raise ValueError(f"minivit.convert.xcit: norm_layer={type(norm).__name__} is not supported; "
                         f"minivit's Xcit implements norm_layer=LayerNorm (with weight and bias) only")
    return partial(nn.LayerNorm, eps=norm.eps)


def build_from_timm(tm):
    """The minivit Xcit with ``tm``'s configuration (weights not loaded)."""
    from minivit.models.xcit import Xcit

    if tm.cls_attn_blocks is None:
        raise ValueError("minivit.convert.xcit: this timm Xcit has had its class-attention layers pruned "
                         "(prune_intermediate_layers); minivit's Xcit always has them")
    layers = list(tm.blocks) + list(tm.cls_attn_blocks)
    if not layers:
        raise ValueError("minivit.convert.xcit: a timm Xcit with depth=0 and cls_attn_layers=0 has no layer "
                         "to read num_heads and mlp_ratio from")
    first = layers[0]
    qkv_bias = (first.attn.qkv.bias if tm.blocks else first.attn.q.bias) is not None
    pe = tm.pos_embed
    if pe is not None and (pe.hidden_dim != 32 or pe.temperature != 10000):
        raise ValueError(f"minivit.convert.xcit: a Fourier position encoding with hidden_dim={pe.hidden_dim}, "
                         f"temperature={pe.temperature} is not supported (timm's Xcit builds 32 and 10000)")
    stem = tm.patch_embed.proj
    return Xcit(
        img_size=tuple(tm.patch_embed.img_size), patch_size=tm.patch_embed.patch_size,
        in_chans=stem[0][0].in_channels, num_classes=tm.num_classes, global_pool=tm.global_pool,
        embed_dim=tm.embed_dim, depth=len(tm.blocks), num_heads=first.attn.num_heads,
        mlp_ratio=first.mlp.fc1.out_features / first.mlp.fc1.in_features, qkv_bias=qkv_bias,
        drop_rate=_p(tm, "head_drop"), pos_drop_rate=_p(tm, "pos_drop"),
        proj_drop_rate=_p(first.attn, "proj_drop"), attn_drop_rate=_p(first.attn, "attn_drop"),
        drop_path_rate=_p(tm.blocks[0], "drop_path1") if len(tm.blocks) else 0.0,
        act_layer=_act_layer(stem[1] if len(stem) > 1 else first.mlp.act), norm_layer=_norm_layer(tm.norm),
        cls_attn_layers=len(tm.cls_attn_blocks), use_pos_embed=pe is not None,
        tokens_norm=bool(tm.cls_attn_blocks[0].tokens_norm) if len(tm.cls_attn_blocks) else False)
