"""timm's VisionTransformer / VisionTransformerDistilled (DeiT) → minivit's, architecture only.

The configuration is read from the torch model's attributes and submodules (no torch
import); ``minivit.convert.from_timm`` then loads the weights by name. timm's ViT has
many options minivit does not implement (register tokens, pre-norm, q/k norm, PRR
pooling, …): each one found raises, naming it, rather than building a model that
silently computes something else.
"""
from __future__ import annotations


def _p(module, name, default=0.0):
    """Dropout's p (or DropPath's drop_prob) of a timm submodule; Identity means 0."""
    m = getattr(module, name, None)
    return float(getattr(m, "p", getattr(m, "drop_prob", default)) or 0.0)


def _check_supported(tm):
    name = type(tm).__name__
    problems = []
    if getattr(tm, "reg_token", None) is not None:
        problems.append("register tokens (reg_tokens > 0)")
    if getattr(tm, "no_embed_class", False):
        problems.append("no_embed_class=True")
    if type(tm.norm_pre).__name__ != "Identity":
        problems.append("pre_norm=True")
    if tm.global_pool not in ("token", "avg", "map"):
        problems.append(f"global_pool={tm.global_pool!r} (minivit has 'token', 'avg' and 'map')")
    elif tm.global_pool == "map":
        problems += _attn_pool_problems(tm)
    fc_norm = type(tm.fc_norm).__name__ != "Identity"
    norm = type(tm.norm).__name__ != "Identity"
    if (tm.global_pool == "avg") != fc_norm or fc_norm == norm:
        problems.append("a final norm placement other than timm's default (fc_norm / final_norm)")
    pe = tm.patch_embed
    if type(pe).__name__ == "HybridEmbed":
        problems += _stem_problems(pe)
    elif type(pe.norm).__name__ != "Identity" or pe.proj.bias is None:
        problems.append("a patch-embedding norm or a bias-free patch embedding")
    if type(tm.patch_drop).__name__ != "Identity":
        problems.append("patch dropout")
    blk = tm.blocks[0]
    for part in ("q_norm", "k_norm", "norm"):
        if type(getattr(blk.attn, part, None)).__name__ not in ("Identity", "NoneType"):
            problems.append(f"attention {part}")
    if type(getattr(blk.mlp, "norm", None)).__name__ not in ("Identity", "NoneType"):
        problems.append("MLP norm (scale_mlp_norm)")
    if type(blk.mlp).__name__ != "Mlp" or type(blk).__name__ != "Block":
        problems.append(f"block {type(blk).__name__} / MLP {type(blk.mlp).__name__} (minivit has Block + Mlp)")
    act = blk.mlp.act
    if type(act).__name__ != "GELU" or getattr(act, "approximate", "none") != "none":
        problems.append(f"MLP activation {act!r} (minivit's ViT uses exact GELU)")
    if getattr(blk.attn.proj, "bias", 0) is None:
        problems.append("proj_bias=False")
    if type(blk.norm1).__name__ != "LayerNorm":
        problems.append(f"norm layer {type(blk.norm1).__name__}")
    if problems:
        raise ValueError(f"minivit.convert.vit: timm's {name} uses " + "; ".join(problems)
                         + ", which minivit's VisionTransformer does not implement")


def _attn_pool_problems(tm) -> list:
    """What of timm's attention pool differs from the one minivit's ViT builds for 'map'."""
    ap = tm.attn_pool
    if type(ap).__name__ != "AttentionPoolLatent":
        return [f"attention pool {type(ap).__name__} (minivit has AttentionPoolLatent)"]
    fc1 = getattr(ap.mlp, "fc1", None)
    if (ap.latent.shape[1] != 1 or ap.pos_embed is not None or type(ap.q).__name__ != "Linear"
            or type(ap.q_norm).__name__ != "Identity" or ap.pool != "token" or ap.mlp is None
            or ap.num_heads != tm.blocks[0].attn.num_heads or type(ap.norm).__name__ != "LayerNorm"
            or fc1 is None or fc1.out_features != tm.blocks[0].mlp.fc1.out_features):
        return ["an attention pool other than the one timm's global_pool='map' builds (one latent, "
                "q projection, no q/k norm or position embedding, the blocks' heads and MLP width)"]
    return []


def _stem_problems(pe) -> list:
    """What of a timm HybridEmbed minivit's conv stem (layers/conv_stem.py) does not implement."""
    bb = pe.backbone
    if type(bb).__name__ != "ConvStem":
        return [f"a hybrid backbone {type(bb).__name__} (minivit has timm's ConvStem)"]
    problems = []
    if tuple(pe.patch_size) != (1, 1) or getattr(pe, "dynamic_img_pad", False):
        problems.append("a hybrid embedding with patch_size > 1 or dynamic padding")
    for i, layer in enumerate(bb):
        c, last = layer.conv, i == len(bb) - 1
        k = c.kernel_size[0]
        if (c.kernel_size[1] != k or c.stride[0] != c.stride[1] or c.padding != ((k - 1) // 2,) * 2
                or c.dilation != (1, 1) or c.groups != 1 or (c.bias is not None) != last):
            problems.append(f"stem conv {i} ({c}): minivit's stem has square 'same'-padded convs, "
                            f"a bias on the last only")
        bn = type(layer.bn).__name__
        act = type(getattr(layer.bn, "act", None)).__name__
        if (bn == "BatchNormAct2d") == last or (not last and act != "ReLU"):
            problems.append(f"stem layer {i} norm {bn} / activation {act} (minivit: BatchNorm + ReLU, "
                            f"the last layer a plain conv)")
    return problems


def _stem_embed_layer(pe):
    """minivit's HybridEmbed(ConvStem) with the configuration of timm's, as an ``embed_layer``."""
    from functools import partial

    from minivit.layers.conv_stem import ConvStem, HybridEmbed
    convs = [layer.conv for layer in pe.backbone]
    stem = ConvStem(convs[0].in_channels, channels=[c.out_channels for c in convs],
                    kernel_size=[c.kernel_size[0] for c in convs], stride=[c.stride[0] for c in convs])
    proj = type(pe.proj).__name__ != "Identity"
    return partial(HybridEmbed, stem, proj=proj, bias=proj and pe.proj.bias is not None)


def _in_chans(pe) -> int:
    if type(pe).__name__ == "HybridEmbed":
        return pe.backbone[0].conv.in_channels
    return pe.proj.in_channels


def build_from_timm(tm):
    """The minivit VisionTransformer(Distilled) with ``tm``'s configuration (weights not loaded)."""
    from minivit.models.deit import VisionTransformerDistilled
    from minivit.models.vit import VisionTransformer

    _check_supported(tm)
    blk = tm.blocks[0]
    ls = getattr(blk, "ls1", None)
    gamma = getattr(ls, "gamma", None)
    kwargs = dict(
        img_size=tuple(tm.patch_embed.img_size), patch_size=tuple(tm.patch_embed.patch_size),
        in_chans=_in_chans(tm.patch_embed), num_classes=tm.num_classes, global_pool=tm.global_pool,
        embed_dim=tm.embed_dim, depth=len(tm.blocks), num_heads=blk.attn.num_heads,
        mlp_ratio=blk.mlp.fc1.out_features / tm.embed_dim, qkv_bias=blk.attn.qkv.bias is not None,
        # the value is overwritten by the loaded gamma; only "LayerScale or not" matters here
        init_values=float(gamma.detach().reshape(-1)[0]) if gamma is not None else None,
        class_token=tm.cls_token is not None, pos_embed="learn" if tm.pos_embed is not None else "none",
        dynamic_img_size=bool(getattr(tm, "dynamic_img_size", False)),
        drop_rate=_p(tm, "head_drop"), pos_drop_rate=_p(tm, "pos_drop"), proj_drop_rate=_p(blk.attn, "proj_drop"),
        attn_drop_rate=_p(blk.attn, "attn_drop"), drop_path_rate=_p(tm.blocks[-1], "drop_path1"),
        norm_layer=None, weight_init="skip")
    if type(tm.patch_embed).__name__ == "HybridEmbed":
        kwargs["embed_layer"] = _stem_embed_layer(tm.patch_embed)
        kwargs["patch_size"] = 1
    eps = blk.norm1.eps
    if eps != 1e-6:
        from functools import partial
        from minivit import nn
        kwargs["norm_layer"] = partial(nn.LayerNorm, eps=eps)
    if type(tm).__name__ == "VisionTransformerDistilled":
        model = VisionTransformerDistilled(**kwargs)
        model.set_distilled_training(bool(tm.distilled_training))   # behave as the twin does
        return model
    return VisionTransformer(**kwargs)
