"""ConvMixer: "Patches Are All You Need?" (Trockman & Kolter, 2022).

The paper's question: how much of ViT's success comes from attention, and how much from
cutting the image into patches? ConvMixer keeps ViT's and MLP-Mixer's plan — patches
first, then the same layer at one resolution, mixing space and channels in turn — and
uses nothing but convolutions, BatchNorm and an activation:

    z₀ = BN(σ(Conv_{P, stride P}(image)))        (B, C, H/P, W/P)   the patch embedding
    zₗ = ConvMixerLayer(zₗ₋₁)                    l = 1 … depth      (``layers/convmixer_layer.py``)
    y  = head(mean over h·w of z_depth)

A model is named ConvMixer-C/depth (width and depth); the kernel size k and patch size P
complete it. Unlike a Mixer it takes any image size: nothing depends on the number of
patches.

Constructor keywords and state_dict keys are timm's ``ConvMixer`` (``stem.0``, ``stem.2``,
``blocks.0.0.fn.0``, ``blocks.0.1``, ``blocks.0.3``, ``head``), so timm's weights load unchanged.
"""
from __future__ import annotations

from minivit import nn
from minivit.layers.convmixer_layer import convmixer_layer
from minivit.layers.patch_embed import check_image
from minivit.models.registry import register_model


class ConvMixer(nn.Module):
    """ConvMixer on images (B, in_chans, H, W) → logits (B, num_classes); timm's arguments:
    ``dim`` (C), ``depth``, ``kernel_size`` (k), ``patch_size`` (P), ``act_layer`` (GELU, or ReLU
    for ConvMixer-768/32), ``global_pool`` ('avg' or '' for the unpooled grid). Initialisation
    is PyTorch's default for every layer, as in timm and the paper's code."""

    def __init__(self, dim: int, depth: int, kernel_size: int = 9, patch_size: int = 7, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: str = "avg", drop_rate: float = 0.0, act_layer=nn.GELU):
        super().__init__()
        if global_pool not in ("", "avg"):
            raise ValueError(f"ConvMixer: global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.num_features = dim
        self.patch_size, self.kernel_size = patch_size, kernel_size
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size),
            act_layer(),
            nn.BatchNorm2d(dim))
        self.blocks = nn.Sequential(*[convmixer_layer(dim, kernel_size, act_layer) for _ in range(depth)])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def no_weight_decay(self):
        return set()

    def forward_features(self, x):
        """(B, C_in, H, W) → (B, C, ⌊H/P⌋, ⌊W/P⌋): the grid after the last layer."""
        check_image(x, None, self.in_chans, "ConvMixer")
        if x.shape[2] < self.patch_size or x.shape[3] < self.patch_size:
            raise ValueError(f"ConvMixer: a {x.shape[2]}×{x.shape[3]} image is smaller than one "
                             f"{self.patch_size}×{self.patch_size} patch; give at least {self.patch_size}×"
                             f"{self.patch_size} pixels or build the model with a smaller patch_size")
        return self.blocks(self.stem(x))                    # (B, C, h, w), the same h, w throughout

    def forward_head(self, x, pre_logits: bool = False):
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))                          # (B, C)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# =========================================================================== configurations
def _convmixer(defaults, kwargs):
    return ConvMixer(**dict(defaults, **kwargs))


@register_model
def convmixer_tiny(**kwargs):
    """CIFAR-10 ConvMixer-256/16, k = 5, P = 4: an 8×8 grid, 1,191,178 parameters, 76M MACs.

    The paper's CIFAR-10 models use P = 1 or 2 (ConvMixer-256/8, k = 5, P = 2 reaches 92.5% in 25
    epochs on a GPU with the authors' recipe): small patches matter more to ConvMixer than depth.
    On minivit's CPU path P = 2 keeps 256 positions × 256 channels per image in every layer,
    and one training epoch takes most of an hour on two cores: 17 images/s against 63 for P = 4
    (``python -m minivit.bench --model convmixer_tiny --model-kwargs patch_size=2 --batch-size 64
    --threads 2 --steps 3 --warmup 1``, and the same with ``patch_size=4``; the project's 2-core CPU). P = 4 gives ViT's 8×8 grid, where the other CIFAR variants work, and
    trains at the speed of the other variants; depth 16 (instead of 8) puts it in their 1–6M
    parameter range. k = 5 then covers more than half of the grid per layer: 2 layers see all of it.
    """
    return _convmixer(dict(dim=256, depth=16, kernel_size=5, patch_size=4, num_classes=10), kwargs)


@register_model
def convmixer_1536_20(**kwargs):
    """ConvMixer-1536/20 (ConvMixer Table 1: 51.6M): k = 9, P = 7 → 32×32 patches, GELU."""
    return _convmixer(dict(dim=1536, depth=20, kernel_size=9, patch_size=7), kwargs)


@register_model
def convmixer_768_32(**kwargs):
    """ConvMixer-768/32 (ConvMixer Table 1: 21.1M): k = 7, P = 7, ReLU."""
    return _convmixer(dict(dim=768, depth=32, kernel_size=7, patch_size=7, act_layer=nn.ReLU), kwargs)
