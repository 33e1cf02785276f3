"""SegFormer from Hugging Face transformers' ``SegformerForSemanticSegmentation``, ``SegformerModel``
and ``SegformerForImageClassification``.

timm has no SegFormer, so the reference is Hugging Face's port. Transformers 5 renamed
its keys (``segformer.encoder.block.{i}.{j}`` became ``segformer.stages.{i}.blocks.{j}``);
this module follows the installed 5.x names. It reads the architecture off
``hf_model.config`` and the modules, builds the matching :class:`Segformer` (or, for
``SegformerModel``, the :class:`MixVisionTransformer` encoder; for
``SegformerForImageClassification``, the encoder with its ``head``), and renames the keys:

    Hugging Face (no segformer. in SegformerModel)                    minivit (no backbone. in the encoder alone)
    segformer.stages.{i}.patch_embeddings.proj / .layer_norm          backbone.stages.{i}.patch_embed.proj / .norm
    segformer.stages.{i}.blocks.{j}.…                                 backbone.stages.{i}.blocks.{j}.…
      layernorm_before / layernorm_after                                norm1 / norm2
      attention.q_proj / attention.o_proj                               attn.q / attn.proj
      attention.k_proj and attention.v_proj                             attn.kv (K rows, then V rows)
      attention.sequence_reduction.sequence_reduction / .layer_norm     attn.sr / attn.norm
      mlp.fc1 / mlp.dwconv.dwconv / mlp.fc2                             mlp.fc1 / mlp.dwconv / mlp.fc2
    segformer.stages.{i}.layer_norm                                   backbone.stages.{i}.norm
    decode_head.…                                                     decode_head.… (the same names)
    classifier (SegformerForImageClassification)                      head

Hugging Face's LayerNorms all have PyTorch's eps 1e-5 (its ``config.layer_norm_eps`` is
not used; the authors' blocks use 1e-6): the eps is read off the modules.

No torch import: the model is read through its attributes and ``state_dict()``.
"""
from __future__ import annotations

import re
from functools import partial

import numpy as np

from minivit import nn
from minivit.models.segformer import MixVisionTransformer, Segformer

SUPPORTED = ("SegformerForSemanticSegmentation", "SegformerModel", "SegformerForImageClassification")

_RENAMES = [
    (r"^classifier\.", "head."),
    (r"\.patch_embeddings\.layer_norm\.", ".patch_embed.norm."),
    (r"\.patch_embeddings\.proj\.", ".patch_embed.proj."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.q_proj\.", ".attn.q."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attn.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attn.norm."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^(backbone\.)?stages\.(\d+)\.layer_norm\.", r"\1stages.\2.norm."),
]


def hf_key_to_minivit(key: str, encoder_prefix: str = "backbone.") -> str:
    """One Hugging Face SegFormer key → minivit's; ``…attention.k_proj.…`` / ``v_proj`` map to
    ``…attn.kv.…`` (the two halves of one tensor, see :func:`convert_state_dict`). Hugging Face's
    ``segformer.`` becomes ``encoder_prefix``: ``backbone.`` in a :class:`Segformer`, ``""`` when
    the twin is the encoder itself (SegformerForImageClassification)."""
    key = re.sub(r"^segformer\.", encoder_prefix, key)
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return re.sub(r"\.attention\.[kv]_proj\.", ".attn.kv.", key)


def convert_state_dict(hf_state: dict, encoder_prefix: str = "backbone.") -> dict:
    """Rename a Hugging Face SegFormer state_dict ({key: array}); K and V side by side into ``kv``."""
    out = {}
    for k, v in hf_state.items():
        if ".attention.v_proj." in k:
            continue                                         # joined with its k_proj below
        if ".attention.k_proj." in k:
            v = np.concatenate([v, hf_state[k.replace(".k_proj.", ".v_proj.")]], axis=0)   # (2C, …): K, then V
        out[hf_key_to_minivit(k, encoder_prefix)] = v
    return out


def _check_config(cfg):
    def bad(option, value, fix):
        raise ValueError(f"from_transformers: SegFormer config {option}={value!r} is not supported; {fix}")
    if cfg.hidden_act != "gelu":
        bad("hidden_act", cfg.hidden_act, "minivit's Mix-FFN uses exact GELU ('gelu')")
    if not cfg.reshape_last_stage:
        bad("reshape_last_stage", cfg.reshape_last_stage, "only the (B, C, h, w) last stage (True) is supported")
    for i, (k, s) in enumerate(zip(cfg.patch_sizes, cfg.strides)):
        if k <= s:
            bad(f"patch_sizes[{i}]", k, f"the patch merging must overlap: patch_sizes[{i}] > strides[{i}]={s}")
    for name in ("hidden_sizes", "depths", "num_attention_heads", "sr_ratios", "mlp_ratios", "patch_sizes",
                 "strides"):
        if len(getattr(cfg, name)) != cfg.num_encoder_blocks:
            bad(name, list(getattr(cfg, name)), f"give num_encoder_blocks={cfg.num_encoder_blocks} entries")


def build_from_transformers(hf_model):
    """The minivit architecture matching ``hf_model`` (random weights)."""
    name = type(hf_model).__name__
    if name not in SUPPORTED:
        raise ValueError(f"from_transformers: expected one of {', '.join(SUPPORTED)}, got {name}")
    cfg = hf_model.config
    _check_config(cfg)
    encoder = hf_model if name == "SegformerModel" else hf_model.segformer
    eps = encoder.stages[0].layer_norm.eps                  # not cfg.layer_norm_eps: see the module doc
    args = dict(in_chans=cfg.num_channels, embed_dims=tuple(cfg.hidden_sizes), depths=tuple(cfg.depths),
                num_heads=tuple(cfg.num_attention_heads), sr_ratios=tuple(cfg.sr_ratios),
                mlp_ratios=tuple(float(r) for r in cfg.mlp_ratios), patch_sizes=tuple(cfg.patch_sizes),
                strides=tuple(cfg.strides), qkv_bias=True, proj_drop_rate=cfg.hidden_dropout_prob,
                attn_drop_rate=cfg.attention_probs_dropout_prob, drop_path_rate=cfg.drop_path_rate,
                norm_layer=partial(nn.LayerNorm, eps=eps))
    if name == "SegformerModel":
        return MixVisionTransformer(num_classes=0, **args)
    if name == "SegformerForImageClassification":              # token mean → Linear, no dropout
        return MixVisionTransformer(num_classes=cfg.num_labels, **args)
    return Segformer(num_classes=cfg.num_labels, decoder_dim=cfg.decoder_hidden_size,
                     decoder_dropout=cfg.classifier_dropout_prob, **args)


def from_transformers(hf_model, dtype=None):
    """The minivit twin of a Hugging Face SegFormer: same configuration, same weights (the
    decoder's BatchNorm running statistics included), in eval mode. dtype defaults to the
    Hugging Face model's own."""
    from minivit.convert import torch_state_dict
    model = build_from_transformers(hf_model)
    prefix = "" if type(hf_model).__name__ == "SegformerForImageClassification" else "backbone."
    state = convert_state_dict(torch_state_dict(hf_model), prefix)
    if dtype is None:
        dtype = next(iter(v.dtype for v in state.values() if v.dtype.kind == "f"), np.float32)
    model.to(dtype=dtype)
    model.load_state_dict(state)
    return model.eval()
