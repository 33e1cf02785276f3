"""timm's ConvMixer → minivit's, architecture only (read from the torch model's submodules,
no torch import); ``minivit.convert.from_timm`` then loads the weights by name."""
from __future__ import annotations


def build_from_timm(tm):
    """The minivit ConvMixer with ``tm``'s configuration (weights not loaded)."""
    from minivit.convert.mlp_mixer import _activation
    from minivit.models.convmixer import ConvMixer

    conv = tm.stem[0]
    dw = tm.blocks[0][0].fn[0]
    if tm.global_pool.pool_type not in ("avg", ""):
        raise ValueError(f"minivit.convert.convmixer: global_pool={tm.global_pool.pool_type!r} is not supported "
                         f"('avg' or '')")
    return ConvMixer(dim=tm.num_features, depth=len(tm.blocks), kernel_size=dw.kernel_size[0],
                     patch_size=conv.kernel_size[0], in_chans=conv.in_channels, num_classes=tm.num_classes,
                     global_pool=tm.global_pool.pool_type, drop_rate=float(tm.head_drop.p),
                     act_layer=_activation(tm.stem[1], "convmixer"))
