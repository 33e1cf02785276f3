"""timm's MultiScaleVit (MViT v2) → minivit's, architecture only.

timm keeps the whole architecture in one ``MultiScaleVitCfg`` dataclass, which
timm's model does not store; minivit's mirrors it field for field, so the
configuration is read back from the model's modules (no torch import) and
``minivit.convert.from_timm`` then loads the weights by name.
"""
from __future__ import annotations


def _p(module, name):
    """Dropout's p (or DropPath's drop_prob) of a timm submodule; Identity means 0."""
    m = getattr(module, name, None)
    return float(getattr(m, "p", getattr(m, "drop_prob", 0.0)) or 0.0)


def _unsupported(what):
    raise ValueError(f"minivit.convert.mvitv2: timm's model uses {what}, which minivit's MultiScaleVit does not "
                     f"implement")


def build_from_timm(tm):
    """The minivit MultiScaleVit with ``tm``'s configuration (weights not loaded)."""
    from minivit.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

    stages = list(tm.stages)
    blocks = [b for s in stages for b in s.blocks]
    first = blocks[0]
    attn = first.attn
    if type(attn).__name__ != "MultiScaleAttention":
        _unsupported(f"pool_first=True ({type(attn).__name__}: q, k, v pooled before the linear maps)")
    if attn.mode not in ("conv", "max", "avg"):
        _unsupported(f"mode={attn.mode!r}")
    if type(first.mlp.act).__name__ != "GELU":
        _unsupported(f"act_layer={type(first.mlp.act).__name__}")
    if type(first.norm1).__name__ != "LayerNorm":
        _unsupported(f"norm_layer={type(first.norm1).__name__}")
    conv = tm.patch_embed.proj

    pools = [p for b in blocks for p in (b.attn.pool_q, b.attn.pool_k) if p is not None]
    k = getattr(pools[0], "kernel_size", 1) if pools else 1
    kernel = tuple(k) if isinstance(k, (tuple, list)) else (k, k)
    cfg = MultiScaleVitCfg(
        depths=tuple(len(s.blocks) for s in stages),
        # expand_attn: stage i works at width embed_dim[i]; else (v1) stage i starts at embed_dim[i]
        embed_dim=tuple(s.blocks[-1].dim_out if tm.expand_attn else s.blocks[0].dim for s in stages),
        num_heads=tuple(s.blocks[0].attn.num_heads for s in stages),
        mlp_ratio=first.mlp.fc1.out_features / first.mlp.fc1.in_features,
        expand_attn=tm.expand_attn, qkv_bias=attn.qkv.bias is not None, use_cls_token=tm.cls_token is not None,
        use_abs_pos=tm.pos_embed is not None, residual_pooling=attn.residual_pooling, mode=attn.mode,
        kernel_qkv=kernel, stride_q=tuple(_stride(s.blocks[0].attn.pool_q) for s in stages),
        stride_kv=tuple(_stride(s.blocks[0].attn.pool_k) for s in stages), patch_kernel=tuple(conv.kernel_size),
        patch_stride=tuple(conv.stride), patch_padding=tuple(conv.padding),
        rel_pos_type=attn.rel_pos_type if attn.rel_pos_type == "spatial" else "none",
        norm_eps=first.norm1.eps)
    H, W = (n * s for n, s in zip(_grid(tm), conv.stride))
    return MultiScaleVit(cfg, img_size=(H, W), in_chans=conv.in_channels, global_pool=tm.global_pool,
                         num_classes=tm.num_classes, drop_rate=_p(tm.head, "drop"),
                         drop_path_rate=_p(blocks[-1], "drop_path1"))


def _stride(pool) -> tuple:
    """A pooling module's (sh, sw); a missing pool (1×1 kernel, stride 1) is stride 1."""
    s = getattr(pool, "stride", 1) if pool is not None else 1
    return tuple(s) if isinstance(s, (tuple, list)) else (s, s)


def _grid(tm):
    """The stem's token grid timm was built for (timm does not store img_size), read off the
    first rel-pos table, of 2·max(n // s_q, n // s_kv) − 1 rows, or off the position embedding."""
    attn = tm.stages[0].blocks[0].attn
    if getattr(attn, "rel_pos_h", None) is not None:
        size = (attn.rel_pos_h.shape[0] + 1) // 2                    # max(n // s_q, n // s_kv)
        n = size * min(_stride(attn.pool_q)[0], _stride(attn.pool_k)[0])
        return n, n
    if tm.pos_embed is not None:
        n = int(round((tm.pos_embed.shape[1] - tm.num_prefix_tokens) ** 0.5))
        return n, n
    raise ValueError("minivit.convert.mvitv2: cannot tell the image size of a timm MultiScaleVit without "
                     "rel-pos tables or a position embedding; build minivit's MultiScaleVit directly")
