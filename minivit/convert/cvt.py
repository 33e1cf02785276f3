"""CvT from Hugging Face transformers' ``CvtForImageClassification``.

timm has no CvT, so the reference is Hugging Face's port of the authors' code.
Its modules are nested and named differently, but hold exactly the same
tensors; this module (a) reads the architecture off ``hf_model.config`` and the
modules themselves and builds the matching :class:`ConvolutionalVisionTransformer`,
and (b) renames Hugging Face's state_dict keys to ours (the released code's):

    Hugging Face                                                       minivit
    cvt.encoder.stages.{i}.embedding.convolution_embeddings.projection stage{i}.patch_embed.proj
    cvt.encoder.stages.{i}.embedding.convolution_embeddings.normalization
                                                                       stage{i}.patch_embed.norm
    cvt.encoder.stages.{i}.cls_token                                   stage{i}.cls_token
    cvt.encoder.stages.{i}.layers.{j}.…                                stage{i}.blocks.{j}.…
      layernorm_before / layernorm_after                                 norm1 / norm2
      attention.attention.convolution_projection_query
        .convolution_projection.convolution / .normalization             attn.conv_proj_q.conv / .bn
      (…_key, …_value likewise)                                          attn.conv_proj_k / conv_proj_v
      attention.attention.projection_query / _key / _value               attn.proj_q / proj_k / proj_v
      attention.output.dense                                             attn.proj
      intermediate.dense / output.dense                                  mlp.fc1 / mlp.fc2
    layernorm                                                          norm
    classifier                                                         head

Differences from Hugging Face's code worth knowing (none changes eval-mode outputs):

* ``config.layer_norm_eps`` (1e-12) is not used by Hugging Face's CvT: its
  LayerNorms are built with PyTorch's default eps 1e-5. We read eps off the
  modules, so the twin matches whatever they hold.
* Hugging Face gives every block of stage i the drop-path rate
  ``linspace(0, drop_path_rate[i], depth[i])[i]`` and applies it after the
  MLP's residual sum; the released code (and minivit) uses
  ``linspace(0, drop_path_rate[i], depth[i])[j]`` for block j, on each branch.
  Stochastic depth only acts in training, so eval outputs are identical.

No torch import: the model is read through its attributes and ``state_dict()``.
"""
from __future__ import annotations

import re
from functools import partial

import numpy as np

from minivit import nn
from minivit.models.cvt import ConvolutionalVisionTransformer

# Hugging Face key → minivit key, applied in order (each a regex substitution).
_RENAMES = [
    (r"^cvt\.encoder\.stages\.(\d+)\.", r"stage\1."),
    (r"\.embedding\.convolution_embeddings\.projection\.", ".patch_embed.proj."),
    (r"\.embedding\.convolution_embeddings\.normalization\.", ".patch_embed.norm."),
    (r"\.layers\.(\d+)\.", r".blocks.\1."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.attention\.convolution_projection_(q)uery\.convolution_projection\.", r".attn.conv_proj_\1."),
    (r"\.attention\.attention\.convolution_projection_(k)ey\.convolution_projection\.", r".attn.conv_proj_\1."),
    (r"\.attention\.attention\.convolution_projection_(v)alue\.convolution_projection\.", r".attn.conv_proj_\1."),
    (r"\.(conv_proj_[qkv])\.convolution\.", r".\1.conv."),
    (r"\.(conv_proj_[qkv])\.normalization\.", r".\1.bn."),
    (r"\.attention\.attention\.projection_(q)uery\.", r".attn.proj_\1."),
    (r"\.attention\.attention\.projection_(k)ey\.", r".attn.proj_\1."),
    (r"\.attention\.attention\.projection_(v)alue\.", r".attn.proj_\1."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]


def hf_key_to_minivit(key: str) -> str:
    """One Hugging Face CvT state_dict key → the matching minivit key."""
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def convert_state_dict(hf_state: dict) -> dict:
    """Rename a Hugging Face CvT state_dict (``{key: array}``) to minivit's keys."""
    return {hf_key_to_minivit(k): v for k, v in hf_state.items()}


def build_from_transformers(hf_model, img_size=None) -> ConvolutionalVisionTransformer:
    """The minivit architecture matching ``hf_model`` (random weights)."""
    name = type(hf_model).__name__
    if name != "CvtForImageClassification":
        raise ValueError(f"from_transformers: expected transformers' CvtForImageClassification, got {name}")
    cfg = hf_model.config
    methods = tuple(cfg.qkv_projection_method)
    if any(m != "dw_bn" for m in methods):
        raise ValueError(f"from_transformers: only the 'dw_bn' q/k/v projection is supported, the config has "
                         f"qkv_projection_method={methods}")
    eps = hf_model.layernorm.eps            # not cfg.layer_norm_eps: see the module doc
    head = hf_model.classifier
    num_classes = head.out_features if hasattr(head, "out_features") else 0
    return ConvolutionalVisionTransformer(
        img_size=img_size, in_chans=cfg.num_channels, num_classes=num_classes,
        embed_dims=tuple(cfg.embed_dim), depths=tuple(cfg.depth), num_heads=tuple(cfg.num_heads),
        mlp_ratio=tuple(cfg.mlp_ratio), qkv_bias=tuple(cfg.qkv_bias), drop_rate=tuple(cfg.drop_rate),
        attn_drop_rate=tuple(cfg.attention_drop_rate), drop_path_rate=tuple(cfg.drop_path_rate),
        patch_sizes=tuple(cfg.patch_sizes), patch_strides=tuple(cfg.patch_stride),
        patch_paddings=tuple(cfg.patch_padding), kernel_qkv=tuple(cfg.kernel_qkv), stride_kv=tuple(cfg.stride_kv),
        stride_q=tuple(cfg.stride_q), padding_kv=tuple(cfg.padding_kv), padding_q=tuple(cfg.padding_q),
        cls_token=tuple(cfg.cls_token), qkv_proj_method=methods, norm_layer=partial(nn.LayerNorm, eps=eps))


def from_transformers(hf_model, dtype=None, img_size=None) -> ConvolutionalVisionTransformer:
    """The minivit twin of a Hugging Face ``CvtForImageClassification``: same configuration,
    same weights (BatchNorm running stats included), in eval mode.

    dtype defaults to the Hugging Face model's own (float32 or float64). ``img_size``
    (None: any size) is only the size the twin checks its inputs against.
    """
    from minivit.convert import torch_state_dict
    model = build_from_transformers(hf_model, img_size=img_size)
    state = convert_state_dict(torch_state_dict(hf_model))
    if dtype is None:
        dtype = next(iter(v.dtype for v in state.values() if v.dtype.kind == "f"), np.float32)
    model.to(dtype=dtype)
    model.load_state_dict(state)
    return model.eval()
