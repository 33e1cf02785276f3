"""timm's ConvMixer → minivit's, architecture only (read from the torch model's submodules,
no torch import); ``minivit.convert.from_timm`` then loads the weights by name."""
from __future__ import annotations


def build_from_timm(tm):
    """The minivit ConvMixer with ``tm``'s configuration (weights not loaded)."""
    from minivit.convert.mlp_mixer import _activation
    from minivit.models.convmixer import ConvMixer

    conv = tm.stem[0]
    dw = tm.blocks[0][0].fn[0]
    pool = tm.global_pool if hasattr(tm, "global_pool") else tm.pooling    # timm < 1.0.31 calls it `pooling`
    if pool.pool_type not in ("avg", ""):
        raise ValueError(f"minivit.convert.convmixer: global_pool={pool.pool_type!r} is not supported "
                         f"('avg' or '')")
    if pool.pool_type == "" and type(pool.flatten).__name__ == "Flatten":
        raise ValueError("minivit.convert.convmixer: this timm ConvMixer flattens the unpooled (C, h, w) grid "
                         "(timm < 1.0.31 does); minivit's keeps it, as timm >= 1.0.31 does: upgrade timm "
                         "(pip install 'timm>=1.0.31') or convert a model with global_pool='avg'")
    return ConvMixer(dim=tm.num_features, depth=len(tm.blocks), kernel_size=dw.kernel_size[0],
                     patch_size=conv.kernel_size[0], in_chans=conv.in_channels, num_classes=tm.num_classes,
                     global_pool=pool.pool_type, drop_rate=float(tm.head_drop.p),
                     act_layer=_activation(tm.stem[1], "convmixer"))
