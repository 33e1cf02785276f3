"""TimeSformer from Hugging Face transformers' ``TimesformerForVideoClassification``.

timm has no TimeSformer; Hugging Face's port of the released code holds the same tensors
under other names. This module reads the architecture off ``hf_model.config`` and renames
the state_dict keys to the released code's (minivit's):

    Hugging Face                                          minivit
    timesformer.embeddings.patch_embeddings.projection    patch_embed.proj
    timesformer.embeddings.cls_token                      cls_token
    timesformer.embeddings.position_embeddings            pos_embed
    timesformer.embeddings.time_embeddings                time_embed
    timesformer.encoder.layer.{i}.…                       blocks.{i}.…
      layernorm_before / layernorm_after                    norm1 / norm2
      attention.attention.qkv / attention.output.dense      attn.qkv / attn.proj
      temporal_layernorm                                    temporal_norm1
      temporal_attention.attention.qkv / .output.dense      temporal_attn.qkv / temporal_attn.proj
      temporal_dense                                        temporal_fc
      intermediate.dense / output.dense                     mlp.fc1 / mlp.fc2
    timesformer.layernorm                                 norm
    classifier                                            head

What to know about Hugging Face's port (transformers 5.x):

* Token order: both are patch-major (token 1 + n·T + t is patch n of frame t); the class
  token skips the time attention and is averaged over the frames after the space attention.
* ``attention_type='space_only'``: Hugging Face runs the frames as separate sequences, as
  the released code does, but then never averages them: its head reads every frame's class
  token and returns (B·T, num_labels) logits. The released code (and minivit) averages the
  frames' tokens before the final LayerNorm and returns (B, num_classes). The weights are the
  same; the frame logits of Hugging Face are ``head(norm(model.forward_tokens(x))[:, 0])``.
* Hugging Face interpolates the position and time embeddings (nearest) for other frame
  sizes and counts; minivit asks for the sizes the model was built for.

No torch import: the model is read through its attributes and ``state_dict()``.
"""
from __future__ import annotations

import re
from functools import partial

import numpy as np

from minivit import nn
from minivit.models.timesformer import TimeSformer

# Hugging Face key → minivit key, applied in order (each a regex substitution).
_RENAMES = [
    (r"^timesformer\.embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^timesformer\.embeddings\.cls_token$", "cls_token"),
    (r"^timesformer\.embeddings\.position_embeddings$", "pos_embed"),
    (r"^timesformer\.embeddings\.time_embeddings$", "time_embed"),
    (r"^timesformer\.encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.temporal_layernorm\.", ".temporal_norm1."),
    (r"\.temporal_attention\.attention\.qkv\.", ".temporal_attn.qkv."),
    (r"\.temporal_attention\.output\.dense\.", ".temporal_attn.proj."),
    (r"\.temporal_dense\.", ".temporal_fc."),
    (r"\.attention\.attention\.qkv\.", ".attn.qkv."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"^timesformer\.layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]


def hf_key_to_minivit(key: str) -> str:
    """One Hugging Face TimeSformer state_dict key → the matching minivit key."""
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def convert_state_dict(hf_state: dict) -> dict:
    """Rename a Hugging Face TimeSformer state_dict (``{key: array}``) to minivit's keys."""
    return {hf_key_to_minivit(k): v for k, v in hf_state.items()}


def build_from_transformers(hf_model) -> TimeSformer:
    """The minivit architecture matching ``hf_model`` (random weights)."""
    name = type(hf_model).__name__
    if name != "TimesformerForVideoClassification":
        raise ValueError(f"timesformer_from_transformers: expected transformers' "
                         f"TimesformerForVideoClassification, got {name}")
    cfg = hf_model.config
    if cfg.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"timesformer_from_transformers: hidden_act {cfg.hidden_act!r} is not supported; "
                         f"use 'gelu' (exact) or 'gelu_pytorch_tanh'")
    act = nn.GELU if cfg.hidden_act == "gelu" else partial(nn.GELU, approximate="tanh")
    head = hf_model.classifier
    num_classes = head.out_features if hasattr(head, "out_features") else 0
    if cfg.intermediate_size % cfg.hidden_size:
        raise ValueError(f"timesformer_from_transformers: intermediate_size {cfg.intermediate_size} is not a "
                         f"multiple of hidden_size {cfg.hidden_size}; minivit's Mlp width is mlp_ratio × D")
    return TimeSformer(
        img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=cfg.num_channels, num_classes=num_classes,
        num_frames=cfg.num_frames, attention_type=cfg.attention_type, embed_dim=cfg.hidden_size,
        depth=cfg.num_hidden_layers, num_heads=cfg.num_attention_heads,
        mlp_ratio=cfg.intermediate_size / cfg.hidden_size, qkv_bias=cfg.qkv_bias,
        drop_rate=cfg.hidden_dropout_prob, attn_drop_rate=cfg.attention_probs_dropout_prob,
        drop_path_rate=cfg.drop_path_rate, norm_layer=partial(nn.LayerNorm, eps=cfg.layer_norm_eps),
        act_layer=act)


def from_transformers(hf_model, dtype=None) -> TimeSformer:
    """The minivit twin of a Hugging Face ``TimesformerForVideoClassification``: same
    configuration, same weights, in eval mode. dtype defaults to the Hugging Face model's own."""
    from minivit.convert import torch_state_dict
    model = build_from_transformers(hf_model)
    state = convert_state_dict(torch_state_dict(hf_model))
    if dtype is None:
        dtype = next(iter(v.dtype for v in state.values() if v.dtype.kind == "f"), np.float32)
    model.to(dtype=dtype)
    model.load_state_dict(state)
    return model.eval()
