"""torchvision's video MViT (``torchvision.models.video.MViT``) → minivit's, architecture only.

torchvision's model keeps neither its ``block_setting`` nor its flags, so they are read back
off its modules (no torch import): each block's heads and channels, its pooling convs' kernels
and strides (no pooling module: ``[]``, as torchvision's configs write it), the residual-pooling
and projection flags, the dropouts and the stochastic depth of the last block (the largest).
The parameter names are the same, so ``minivit.convert.from_torchvision`` then loads the
state_dict as is.
"""
from __future__ import annotations


def _unsupported(what):
    raise ValueError(f"minivit.convert.mvit_video: torchvision's MViT uses {what}, which minivit's MViT does "
                     f"not implement")


def _pool_geometry(pool) -> tuple:
    """(kernel, stride) lists of a torchvision ``Pool``'s conv; ``([], [])`` where there is none."""
    if pool is None:
        return [], []
    return list(pool.pool.kernel_size), list(pool.pool.stride)


def _p(module) -> float:
    """The p of a Dropout or StochasticDepth (0 where absent)."""
    return float(getattr(module, "p", 0.0) or 0.0)


def build_from_torchvision(tv):
    """The minivit MViT with ``tv``'s configuration (weights not loaded)."""
    from functools import partial

    from minivit import nn
    from minivit.models.mvit_video import MSBlockConfig, MViT

    blocks = list(tv.blocks)
    first = blocks[0]
    if type(first).__name__ != "MultiscaleBlock":
        _unsupported(f"a custom block class ({type(first).__name__})")
    if type(first.norm1).__name__ != "LayerNorm":
        _unsupported(f"norm_layer={type(first.norm1).__name__}")
    if tv.pos_encoding.spatial_pos is None or first.attn.rel_pos_h is not None:
        _unsupported("rel_pos_embed=True (MViT v2's decomposed 3-D relative positions)")
    setting = []
    for b in blocks:
        kernel_q, stride_q = _pool_geometry(b.attn.pool_q)
        kernel_kv, stride_kv = _pool_geometry(b.attn.pool_k)
        setting.append(MSBlockConfig(num_heads=b.attn.num_heads, input_channels=b.norm1.normalized_shape[0],
                                     output_channels=b.mlp[3].out_features, kernel_q=kernel_q,
                                     kernel_kv=kernel_kv, stride_q=stride_q, stride_kv=stride_kv))
    conv, pe = tv.conv_proj, tv.pos_encoding
    project = first.attn.project
    return MViT(
        spatial_size=tuple(n * s for n, s in zip(pe.spatial_size, conv.stride[1:])),
        temporal_size=pe.temporal_size * conv.stride[0], block_setting=setting,
        residual_pool=first.attn.residual_pool, residual_with_cls_embed=first.attn.residual_with_cls_embed,
        proj_after_attn=first.proj_after_attn, dropout=_p(tv.head[0]),
        attention_dropout=_p(project[1]) if len(project) > 1 else 0.0,
        stochastic_depth_prob=_p(blocks[-1].stochastic_depth), num_classes=tv.head[1].out_features,
        norm_layer=partial(nn.LayerNorm, eps=first.norm1.eps), patch_embed_kernel=tuple(conv.kernel_size),
        patch_embed_stride=tuple(conv.stride), patch_embed_padding=tuple(conv.padding),
        in_chans=conv.in_channels)
