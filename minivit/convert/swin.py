"""timm's ``SwinTransformer`` → minivit's: read the configuration off the torch model.

timm stores few constructor arguments, so most are read back from the modules
they built (all through attributes: no torch import here). The window size of
each stage is read from its blocks: that is the window after timm's "no larger
than the grid" rule, and building with it gives the same windows and shifts.
"""
from __future__ import annotations

from minivit.models.swin import SwinTransformer


def _unsupported(what: str):
    raise ValueError(f"convert.swin: the timm model uses {what}, which minivit's SwinTransformer does not "
                     f"implement; build the timm model without it")


def _drop_prob(module) -> float:
    return float(getattr(module, "drop_prob", 0.0))   # nn.Identity where the rate was 0


def build_from_timm(torch_model) -> SwinTransformer:
    """The minivit SwinTransformer with the same architecture as ``torch_model`` (weights not copied)."""
    pe = torch_model.patch_embed
    if getattr(torch_model, "dynamic_img_size", False):
        _unsupported("dynamic_img_size / strict_img_size=False (masks built per input size)")
    if type(pe.norm).__name__ != "LayerNorm":
        _unsupported(f"a patch-embedding norm of type {type(pe.norm).__name__}")
    stages = list(torch_model.layers)
    depths = [len(s.blocks) for s in stages]
    if not all(depths):
        _unsupported("a stage with no blocks")
    firsts = [s.blocks[0] for s in stages]
    for b in firsts:
        if getattr(b, "always_partition", False):
            _unsupported("always_partition=True")
        if type(b.norm1).__name__ != "LayerNorm" or b.norm1.eps != 1e-5:
            _unsupported(f"block norms other than LayerNorm(eps=1e-5) ({b.norm1!r})")
        if type(b.mlp.act).__name__ != "GELU" or getattr(b.mlp.act, "approximate", "none") != "none":
            _unsupported(f"an MLP activation other than exact GELU ({b.mlp.act!r})")

    num_heads = [b.attn.num_heads for b in firsts]
    dims = [b.dim for b in firsts]
    head_dim = [b.attn.qkv.out_features // 3 // h for b, h in zip(firsts, num_heads)]
    mlp_ratio = []
    for b, d in zip(firsts, dims):
        hidden = b.mlp.fc1.out_features
        ratio = hidden / d
        if int(d * ratio) != hidden:
            _unsupported(f"an MLP width {hidden} that no mlp_ratio reproduces for dim {d}")
        mlp_ratio.append(ratio)
    last = stages[-1].blocks[-1]
    global_pool = getattr(torch_model, "global_pool", "avg")
    return SwinTransformer(
        img_size=tuple(pe.img_size), patch_size=tuple(pe.patch_size), in_chans=torch_model.in_chans,
        num_classes=torch_model.num_classes, global_pool=global_pool, embed_dim=int(torch_model.embed_dim),
        depths=depths, num_heads=num_heads,
        head_dim=[None if hd * h == d else hd for hd, h, d in zip(head_dim, num_heads, dims)],
        window_size=[tuple(b.attn.window_size) for b in firsts], mlp_ratio=mlp_ratio,
        qkv_bias=firsts[0].attn.qkv.bias is not None,
        drop_rate=float(torch_model.head.drop.p), proj_drop_rate=float(firsts[0].attn.proj_drop.p),
        attn_drop_rate=float(firsts[0].attn.attn_drop.p), drop_path_rate=_drop_prob(last.drop_path1),
        weight_init="skip")
