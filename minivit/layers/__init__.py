"""The papers' building blocks, one module each, written to be read beside the paper."""
from minivit.layers.attention import Attention  # noqa: F401
from minivit.layers.attention_pool import AttentionPoolLatent  # noqa: F401
from minivit.layers.block import Block, LayerScale  # noqa: F401
from minivit.layers.conv_embed import ConvEmbed, conv_out_size  # noqa: F401
from minivit.layers.conv_mlp import MlpWithDepthwiseConv  # noqa: F401
from minivit.layers.conv_projection import ConvProjection, ConvProjectionAttention  # noqa: F401
from minivit.layers.mlp import Mlp  # noqa: F401
from minivit.layers.overlap_patch_embed import OverlapPatchEmbed  # noqa: F401
from minivit.layers.patch_embed import PatchEmbed, check_image, patchify, to_2tuple  # noqa: F401
from minivit.layers.patch_merging import PatchMerging  # noqa: F401
from minivit.layers.pit_pool import ConvHeadPooling  # noqa: F401
from minivit.layers.pos_embed import resample_pos_embed, sincos_1d, sincos_2d  # noqa: F401
from minivit.layers.sra import SpatialReductionAttention  # noqa: F401
from minivit.layers.window_attention import (WindowAttention, relative_position_index,  # noqa: F401
                                             shifted_window_mask, window_partition, window_reverse)
from minivit.layers.divided_space_time import DividedSpaceTimeBlock  # noqa: F401
from minivit.layers.xca import XCA, l2_normalize  # noqa: F401
from minivit.layers.xcit_blocks import (LPI, ClassAttention, ClassAttentionBlock, ConvPatchEmbed,  # noqa: F401
                                        PositionalEncodingFourier, XCABlock, fourier_features)
