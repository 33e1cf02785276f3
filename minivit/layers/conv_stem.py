"""A convolutional stem in place of the patchify layer ("Early Convolutions Help Transformers
See Better", Xiao et al., 2021).

ViT's patch embedding is one conv with kernel = stride = P: a 16×16 (or, on CIFAR, 4×4)
window read once, with nothing to tell neighbouring patches apart but the position
embedding. Xiao et al. replace it with a few 3×3 convs (stride 2 where the resolution
must drop), each followed by BatchNorm and ReLU, and one last 1×1 conv to the width D.
Their ViT_C trains faster, is far less sensitive to the optimiser's settings, and
reaches better accuracy for the same compute — the convs give it the locality prior a
small dataset cannot teach it in a few epochs. The Compact Convolutional Transformers
(Hassani et al., 2021), who train CIFAR-10 on a CPU, use the same kind of tokenizer.

The stem here is timm's: ``ConvStem`` (a stack of ``ConvNormAct``; the last conv has a
bias and neither norm nor activation) inside ``HybridEmbed`` (a CNN feature map →
tokens), with timm's module and parameter names, so a model built with it loads
timm's ``VisionTransformer(embed_layer=partial(HybridEmbed, backbone=ConvStem(...)))``
weights unchanged:

    patch_embed.backbone.{i}.conv.weight, patch_embed.backbone.{i}.bn.{weight,bias,running_*}
"""
from __future__ import annotations

from minivit import backend, nn
from minivit.layers.patch_embed import check_image, to_2tuple


class ConvNormAct(nn.Module):
    """conv (k×k, "same" padding ⌊(k − 1)/2⌋, no bias) → BatchNorm → ReLU, as timm's ``ConvNormAct``;
    with ``apply_norm=apply_act=False`` just the conv (then with a bias, as timm's last stem conv)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 bias: bool = False, apply_norm: bool = True, apply_act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=(kernel_size - 1) // 2, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels) if apply_norm else nn.Identity()
        self.act = nn.ReLU() if apply_act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))                 # (B, C_out, H/s, W/s)


class ConvStem(nn.Sequential):
    """``len(channels)`` ConvNormActs; the last is a plain conv with a bias (timm's ``ConvStem``).

    ``channels``, ``kernel_size``, ``stride``: one entry per layer (an int kernel size applies
    to all). The stem's total stride is the product of the strides.
    """

    def __init__(self, in_chans: int = 3, channels=(32, 64, 128, 128), kernel_size=(3, 3, 3, 1),
                 stride=(1, 2, 2, 1)):
        depth = len(channels)
        if isinstance(kernel_size, int):
            kernel_size = (kernel_size,) * depth
        if not depth == len(kernel_size) == len(stride):
            raise ValueError(f"ConvStem: channels {tuple(channels)}, kernel_size {tuple(kernel_size)} and "
                             f"stride {tuple(stride)} must have one entry per layer")
        layers, c = [], in_chans
        for i, (o, k, s) in enumerate(zip(channels, kernel_size, stride)):
            last = i == depth - 1
            layers.append(ConvNormAct(c, int(o), int(k), int(s), bias=last, apply_norm=not last, apply_act=not last))
            c = int(o)
        super().__init__(*layers)
        self.channels, self.strides = tuple(int(c) for c in channels), tuple(int(s) for s in stride)

    # On the CPU the stem runs channels-last: the image batch is copied once into (B, H, W, C)
    # memory (still shaped (B, C, H, W)), and then every conv takes its channels-last path
    # (functional/conv.py), and BatchNorm and ReLU theirs, each keeping the layout; the last
    # conv's output is then tokens (B, N, D) without a copy. In NCHW instead, every conv
    # transposes its output (C_out, B·H·W) back into (B, C_out, H, W) and its gradient the other
    # way. The values are the same either way (tests/test_fast_paths.py). False: NCHW throughout.
    channels_last = True

    def forward(self, x):
        if self.channels_last and x.ndim == 4 and backend.device_of(x.data) == "cpu":
            B, C, H, W = x.shape
            x = x.permute(0, 2, 3, 1).reshape(B, H * W * C).reshape(B, H, W, C).permute(0, 3, 1, 2)
        return super().forward(x)                           # (B, C_out, H/s, W/s)


class HybridEmbed(nn.Module):
    """A CNN ``backbone``'s feature map → tokens (B, N, D), as timm's ``HybridEmbed`` with
    ``patch_size=1``: each pixel of the final feature map is a token. ``proj=True`` adds a 1×1
    conv to ``embed_dim``; ``proj=False`` needs the backbone to end at ``embed_dim`` channels.
    ``dynamic_img_size=True`` (set by a ViT built with it) takes any image size the stem's total
    stride divides (progressive resizing trains on smaller images), the grid following the size.
    """

    def __init__(self, backbone: ConvStem, img_size=224, patch_size=1, in_chans: int = 3,
                 embed_dim: int = 768, proj: bool = True, bias: bool = True, dynamic_img_size: bool = False):
        super().__init__()
        self.dynamic_img_size = dynamic_img_size
        if to_2tuple(patch_size) != (1, 1):
            raise ValueError(f"HybridEmbed: only patch_size=1 (a token per feature-map pixel), got {patch_size}")
        stride = 1
        for s in backbone.strides:
            stride *= s
        self.img_size = to_2tuple(img_size)
        for n in self.img_size:
            if n % stride:
                raise ValueError(f"HybridEmbed: img_size {self.img_size} is not divisible by the stem's "
                                 f"total stride {stride}")
        self.backbone, self.in_chans = backbone, in_chans
        self.patch_size = (stride, stride)                  # what one token sees a stride of
        self.grid_size = tuple(n // stride for n in self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        feature_dim = backbone.channels[-1]
        if proj:
            self.proj = nn.Conv2d(feature_dim, embed_dim, 1, bias=bias)
        elif feature_dim != embed_dim:
            raise ValueError(f"HybridEmbed: proj=False needs the stem to end at embed_dim={embed_dim} "
                             f"channels, it ends at {feature_dim}")
        else:
            self.proj = nn.Identity()
        self.norm = nn.Identity()

    def grid_of(self, x):
        """The token grid (H/s, W/s) of an image batch x, checked: its built size, or with
        ``dynamic_img_size`` any size the stem's total stride s divides."""
        name = type(self).__name__
        if not self.dynamic_img_size:
            check_image(x, self.img_size, self.in_chans, name)
            return self.grid_size
        check_image(x, None, self.in_chans, name)
        s = self.patch_size[0]
        if x.shape[2] % s or x.shape[3] % s:
            raise ValueError(f"{name}: input {x.shape[2]}×{x.shape[3]} is not divisible by the stem's total stride "
                             f"{s}; resize or pad the image to a multiple of {s}")
        return (x.shape[2] // s, x.shape[3] // s)

    def forward(self, x):
        self.grid_of(x)
        x = self.proj(self.backbone(x))                     # (B, D, H/s, W/s)
        return x.flatten(2).transpose(1, 2)                 # (B, N, D)
