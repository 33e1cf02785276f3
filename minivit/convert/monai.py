"""MONAI's UNETR → minivit's ``UNETR`` (minivit.models.unetr), same configuration and weights.

The minivit model uses MONAI's module names, so the weights move with
``load_state_dict(monai_model.state_dict())``; this module reads the configuration back from the
MONAI model's layers (MONAI keeps few of its constructor arguments) and refuses, in one error
that names them all, the options minivit's UNETR does not have. torch is never imported: the
MONAI model is only read through its attributes.
"""
from __future__ import annotations

import math

_ACT_SLOPE = 0.01   # UnetResBlock/UnetBasicBlock's LeakyReLU


def _norm_name(norm, where: str, problems: list):
    """The ``norm_name`` that rebuilds a MONAI norm layer: 'instance' | 'batch' or (name, kwargs)."""
    kind = type(norm).__name__
    if kind.startswith("InstanceNorm"):
        name, default_affine, default_track = "instance", False, False
    elif kind.startswith("BatchNorm"):
        name, default_affine, default_track = "batch", True, True
    else:
        problems.append(f"{where} is {kind} (supported: InstanceNorm, BatchNorm)")
        return "instance"
    kwargs = {}
    if norm.eps != 1e-5:
        kwargs["eps"] = norm.eps
    if norm.momentum != 0.1:
        kwargs["momentum"] = norm.momentum
    if norm.affine != default_affine:
        kwargs["affine"] = norm.affine
    if norm.track_running_stats != default_track:
        kwargs["track_running_stats"] = norm.track_running_stats
    return (name, kwargs) if kwargs else name


def unetr_config(monai_model) -> dict:
    """UNETR's constructor arguments, read from a ``monai.networks.nets.UNETR``."""
    problems = []
    vit = monai_model.vit
    pe = vit.patch_embedding
    spatial_dims = len(monai_model.feat_size)
    if tuple(monai_model.patch_size) != (16,) * spatial_dims:
        problems.append(f"patch_size {tuple(monai_model.patch_size)} (UNETR's is 16)")
    if len(vit.blocks) != 12:
        problems.append(f"{len(vit.blocks)} transformer blocks (UNETR has 12)")
    if getattr(vit, "classification", False) or hasattr(vit, "cls_token"):
        problems.append("a ViT with a class token (classification=True)")
    proj_type = pe.proj_type
    if proj_type == "conv":
        in_channels = pe.patch_embeddings.in_channels
    else:
        in_channels = pe.patch_embeddings[1].in_features // math.prod(monai_model.patch_size)
    blk = vit.blocks[0]
    attn = blk.attn
    for name, bad in (("use_combined_linear=False", not getattr(attn, "use_combined_linear", True)),
                      ("include_fc=False", not getattr(attn, "include_fc", True)),
                      ("causal attention", getattr(attn, "causal", False)),
                      ("rel_pos_embedding", getattr(attn, "rel_positional_embedding", None) is not None),
                      ("attention_dtype", getattr(attn, "attention_dtype", None) is not None),
                      ("with_cross_attention=True", getattr(blk, "with_cross_attention", False))):
        if bad:
            problems.append(f"attention with {name}")
    if getattr(attn, "dim_head", None) is not None and attn.dim_head * attn.num_heads != monai_model.hidden_size:
        problems.append(f"dim_head {attn.dim_head} × {attn.num_heads} heads ≠ hidden_size")
    act = type(blk.mlp.fn).__name__
    if act != "GELU" or getattr(blk.mlp.fn, "approximate", "none") != "none":
        problems.append(f"MLP activation {act} (supported: GELU)")
    if getattr(pe, "pos_embed_type", "learnable") not in ("learnable", "none"):
        # a fixed (sin-cos / Fourier) table still loads as a weight, but is not trained in MONAI
        problems.append(f"pos_embed_type {pe.pos_embed_type!r} (supported: 'learnable')")
    layer = monai_model.encoder1.layer
    res_block = type(layer).__name__ == "UnetResBlock"
    norm_name = _norm_name(layer.norm1, "encoder1.layer.norm1", problems)
    if type(layer.lrelu).__name__ != "LeakyReLU" or layer.lrelu.negative_slope != _ACT_SLOPE:
        problems.append(f"conv-block activation {layer.lrelu!r} (supported: LeakyReLU(0.01))")
    enc2 = monai_model.encoder2
    conv_block = type(enc2.blocks[0]).__name__ == "Sequential"   # encoder2 always has 2 up-steps
    if problems:
        raise ValueError("from_monai: this UNETR uses options minivit's UNETR does not have: "
                         + "; ".join(problems))
    return dict(in_channels=in_channels, out_channels=monai_model.out.conv.conv.out_channels,
                img_size=tuple(f * 16 for f in monai_model.feat_size),
                feature_size=layer.conv1.conv.out_channels, hidden_size=monai_model.hidden_size,
                mlp_dim=blk.mlp.linear1.out_features, num_heads=attn.num_heads, proj_type=proj_type,
                norm_name=norm_name, conv_block=conv_block, res_block=res_block,
                dropout_rate=float(pe.dropout.p), spatial_dims=spatial_dims,
                qkv_bias=attn.qkv.bias is not None, save_attn=bool(attn.save_attn))


def build_from_monai(monai_model):
    """An untrained minivit UNETR with the MONAI model's configuration (weights: see from_monai)."""
    name = type(monai_model).__name__
    if name != "UNETR":
        raise ValueError(f"from_monai: no converter for MONAI's {name}; supported: UNETR")
    from minivit.models.unetr import UNETR
    return UNETR(**unetr_config(monai_model))
