"""UNETR's convolutional blocks (Hatamizadeh et al., 2022, Fig. 2), with MONAI's names.

UNETR reads the ViT's token grids at four depths and turns each into a feature map of the
decoder's resolution; the decoder then climbs back to the input's resolution, concatenating
each level's skip map, as a U-Net:

    UnetrBasicBlock   the input volume itself, at full resolution: a conv block (encoder1)
    UnetrPrUpBlock    a token grid (B, hidden, D/16, H/16, W/16) lifted by a 2×2×2 stride-2
                      transposed conv, then ``num_layer`` × (transposed conv + conv block):
                      encoder2 (×8 in size, blocks 3), encoder3 (×4, block 6), encoder4 (×2, block 9)
    UnetrUpBlock      decoder step: transposed conv ×2, concatenate the skip, conv block
    UnetOutBlock      1×1×1 conv to the class logits

The "conv block" is nnU-Net's: UnetResBlock (conv3 → norm → LeakyReLU(0.01) → conv3 → norm,
plus the input, through a 1×1×1 conv + norm where the channel count changes, → LeakyReLU)
or, with ``res_block=False``, UnetBasicBlock (the same without the residual). Convolutions
have no bias (a norm follows each), except the output block's.

Names and state_dict keys are MONAI's (monai.networks.blocks.unetr_block and dynunet_block):
each conv sits inside a ``Convolution`` wrapper as ``.conv``, so a key reads
``decoder5.conv_block.conv1.conv.weight``. Every block works on 2-D (NCHW) or 3-D (NCDHW)
maps, chosen by ``spatial_dims``.
"""
from __future__ import annotations

import minivit.functional as F
from minivit import nn

NORMS = ("instance", "batch")


def _conv_cls(spatial_dims: int, transposed: bool = False):
    if spatial_dims == 3:
        return nn.ConvTranspose3d if transposed else nn.Conv3d
    if spatial_dims == 2:
        return nn.ConvTranspose2d if transposed else nn.Conv2d
    raise ValueError(f"UNETR blocks: spatial_dims must be 2 or 3, got {spatial_dims!r}")


def split_norm_name(norm_name):
    """MONAI's ``norm_name``: 'instance' | 'batch', or a (name, {kwargs}) pair → (name, kwargs)."""
    if isinstance(norm_name, str):
        name, kwargs = norm_name, {}
    elif isinstance(norm_name, (tuple, list)) and len(norm_name) == 2 and isinstance(norm_name[1], dict):
        name, kwargs = norm_name[0], dict(norm_name[1])
    else:
        raise ValueError(f"norm_name must be 'instance', 'batch' or a (name, {{kwargs}}) pair, got {norm_name!r}")
    name = name.lower()
    if name not in NORMS:
        raise ValueError(f"norm_name {name!r} is not supported: choose one of {NORMS}")
    return name, kwargs


def get_norm_layer(norm_name, spatial_dims: int, channels: int):
    """InstanceNorm{2,3}d (PyTorch's defaults: affine=False) or BatchNorm{2,3}d, as MONAI's factory."""
    name, kwargs = split_norm_name(norm_name)
    if name == "instance":
        cls = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
    else:
        cls = nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d
    try:
        return cls(channels, **kwargs)
    except TypeError as e:
        raise ValueError(f"norm_name {norm_name!r}: {cls.__name__} does not take these arguments ({e})") from None


class Convolution(nn.Module):
    """MONAI's wrapper around one conv (here always without norm, activation or dropout): ``.conv``.

    Same padding (kernel // 2) for the odd-kernel convs; the transposed ones (kernel = stride
    = 2) have no padding, so each doubles the size exactly."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 bias: bool = False, is_transposed: bool = False):
        super().__init__()
        cls = _conv_cls(spatial_dims, is_transposed)
        if is_transposed:
            self.conv = cls(in_channels, out_channels, kernel_size, stride=stride, bias=bias)
        else:
            self.conv = cls(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                            bias=bias)

    def forward(self, x):
        return self.conv(x)


class UnetBasicBlock(nn.Module):
    """conv → norm → lrelu → conv → norm → lrelu, no residual."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 norm_name):
        super().__init__()
        self.conv1 = Convolution(spatial_dims, in_channels, out_channels, kernel_size, stride)
        self.conv2 = Convolution(spatial_dims, out_channels, out_channels, kernel_size, 1)
        self.lrelu = nn.LeakyReLU(0.01)
        self.norm1 = get_norm_layer(norm_name, spatial_dims, out_channels)
        self.norm2 = get_norm_layer(norm_name, spatial_dims, out_channels)

    def forward(self, inp):
        out = self.lrelu(self.norm1(self.conv1(inp)))
        return self.lrelu(self.norm2(self.conv2(out)))


class UnetResBlock(UnetBasicBlock):
    """conv → norm → lrelu → conv → norm, + residual (conv3 1×1 + norm3 when channels or stride
    change), → lrelu. (B, in, *S) → (B, out, *S/stride). The basic block's layers, and the shortcut."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 norm_name):
        super().__init__(spatial_dims, in_channels, out_channels, kernel_size, stride, norm_name)
        self.downsample = in_channels != out_channels or stride != 1
        if self.downsample:
            self.conv3 = Convolution(spatial_dims, in_channels, out_channels, 1, stride)
            self.norm3 = get_norm_layer(norm_name, spatial_dims, out_channels)

    def forward(self, inp):
        out = self.lrelu(self.norm1(self.conv1(inp)))
        out = self.norm2(self.conv2(out))
        residual = self.norm3(self.conv3(inp)) if self.downsample else inp
        return self.lrelu(out + residual)


def _conv_block(res_block: bool, *args):
    return UnetResBlock(*args) if res_block else UnetBasicBlock(*args)


class UnetrBasicBlock(nn.Module):
    """encoder1: one conv block on the input volume, at full resolution; ``.layer``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 norm_name, res_block: bool = False):
        super().__init__()
        self.layer = _conv_block(res_block, spatial_dims, in_channels, out_channels, kernel_size, stride, norm_name)

    def forward(self, inp):
        return self.layer(inp)


class UnetrPrUpBlock(nn.Module):
    """A token grid (B, hidden, *G) → (B, out, *G·2^(num_layer+1)): ``transp_conv_init``, then
    ``blocks``: num_layer × [transposed conv, conv block] (conv_block=True) or × transposed conv."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, num_layer: int, kernel_size: int,
                 stride: int, upsample_kernel_size: int, norm_name, conv_block: bool = False,
                 res_block: bool = False):
        super().__init__()
        up = upsample_kernel_size
        self.transp_conv_init = Convolution(spatial_dims, in_channels, out_channels, up, up, is_transposed=True)
        if conv_block:
            self.blocks = nn.ModuleList([
                nn.Sequential(
                    Convolution(spatial_dims, out_channels, out_channels, up, up, is_transposed=True),
                    _conv_block(res_block, spatial_dims, out_channels, out_channels, kernel_size, stride, norm_name))
                for _ in range(num_layer)])
        else:
            self.blocks = nn.ModuleList([
                Convolution(spatial_dims, out_channels, out_channels, up, up, is_transposed=True)
                for _ in range(num_layer)])

    def forward(self, x):
        x = self.transp_conv_init(x)
        for blk in self.blocks:
            x = blk(x)
        return x


class UnetrUpBlock(nn.Module):
    """Decoder step: (B, in, *S) → transposed conv → (B, out, *2S), cat skip (B, out, *2S) on
    channels → conv block (2·out → out)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int,
                 upsample_kernel_size: int, norm_name, res_block: bool = False):
        super().__init__()
        up = upsample_kernel_size
        self.transp_conv = Convolution(spatial_dims, in_channels, out_channels, up, up, is_transposed=True)
        self.conv_block = _conv_block(res_block, spatial_dims, 2 * out_channels, out_channels, kernel_size, 1,
                                      norm_name)

    def forward(self, inp, skip):
        out = self.transp_conv(inp)                  # (B, out, *2S)
        out = F.cat([out, skip], dim=1)              # (B, 2·out, *2S)
        return self.conv_block(out)


class UnetOutBlock(nn.Module):
    """1×1(×1) conv with bias to the class logits: (B, C, *S) → (B, out_channels, *S)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = Convolution(spatial_dims, in_channels, out_channels, 1, 1, bias=True)

    def forward(self, inp):
        return self.conv(inp)
