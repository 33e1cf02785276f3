"""The papers' building blocks, one module each, written to be read beside the paper."""
from minivit.layers.attention import Attention  # noqa: F401
from minivit.layers.block import Block, LayerScale  # noqa: F401
from minivit.layers.mlp import Mlp  # noqa: F401
from minivit.layers.patch_embed import PatchEmbed, check_image, patchify, to_2tuple  # noqa: F401
from minivit.layers.pos_embed import resample_pos_embed, sincos_1d, sincos_2d  # noqa: F401
