"""MLP-Mixer: "An all-MLP Architecture for Vision" (Tolstikhin et al., 2021).

ViT without attention. The image becomes S patch tokens of width C as in ViT (a conv with
kernel = stride = P, ``PatchEmbed``), then L identical Mixer layers (``MixerBlock``), each
a token-mixing MLP across the S patches and a channel-mixing MLP across the C features,
both pre-LayerNorm and residual; then LayerNorm, the mean over the patches, a linear head:

    X₀ = PatchEmbed(image)                      (B, S, C)    no class token, no position embedding
    Xₗ = MixerBlock(Xₗ₋₁)                      l = 1 … L
    y  = head(mean_S LayerNorm(X_L))            (B, num_classes)

No position embedding is needed: the token-mixing MLP's weights are indexed by position
(its S inputs are the S patches in a fixed order), so it knows where each token came
from. The price: the model is built for one S, one resolution.

Constructor keywords and state_dict keys are timm's ``MlpMixer`` (``stem.proj``,
``blocks.0.mlp_tokens.fc1``, ``norm``, ``head``), so timm's weights load unchanged.
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np

from minivit import nn
from minivit.layers.mixer_block import MixerBlock
from minivit.layers.patch_embed import PatchEmbed, check_image
from minivit.models.registry import register_model


class MlpMixer(nn.Module):
    """MLP-Mixer on images (B, in_chans, H, W) → logits (B, num_classes).

    Arguments are timm's: ``num_blocks`` (L), ``embed_dim`` (C), ``mlp_ratio`` (D_S/C, D_C/C),
    ``stem_norm`` (a LayerNorm after the patch embedding), ``global_pool`` ('avg' or ''), ``nlhb``
    (the head's bias starts at −log(num_classes)). ``drop_path_rate`` is the same in every
    block, as timm's.
    """

    def __init__(self, num_classes: int = 1000, img_size=224, in_chans: int = 3, patch_size: int = 16,
                 num_blocks: int = 8, embed_dim: int = 512, mlp_ratio=(0.5, 4.0),
                 norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU, drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, drop_path_rate: float = 0.0, nlhb: bool = False,
                 stem_norm: bool = False, global_pool: str = "avg"):
        super().__init__()
        if global_pool not in ("", "avg"):
            raise ValueError(f"MlpMixer: global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.num_features = self.embed_dim = embed_dim
        self.stem = PatchEmbed(img_size, patch_size, in_chans, embed_dim, norm_layer=norm_layer if stem_norm else None)
        self.blocks = nn.Sequential(*[
            MixerBlock(embed_dim, self.stem.num_patches, mlp_ratio, norm_layer=norm_layer, act_layer=act_layer,
                       drop=proj_drop_rate, drop_path=drop_path_rate)
            for _ in range(num_blocks)])
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights(nlhb)

    def init_weights(self, nlhb: bool = False):
        """timm's Mixer init (the JAX original's): every Linear ~ Xavier-uniform, the MLPs' biases
        ~ N(0, 1e-6²), the head all zeros (bias −log(num_classes) with ``nlhb``); the patch conv ~
        LeCun normal (truncated normal, variance 1/fan_in), zero bias; LayerNorms 1/0."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name == "head":
                    nn.init.zeros_(m.weight)
                    nn.init.constant_(m.bias, -math.log(self.num_classes) if nlhb else 0.0)
                    continue
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    if "mlp" in name:
                        nn.init.normal_(m.bias, std=1e-6)
                    else:
                        nn.init.zeros_(m.bias)
        conv = self.stem.proj
        fan_in = int(np.prod(conv.weight.shape[1:]))
        # truncated at ±2σ; .87962566 is the std of a unit normal truncated there (timm's lecun_normal_)
        std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
        nn.init.trunc_normal_(conv.weight, std=std, a=-2 * std, b=2 * std)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)

    def no_weight_decay(self):
        return set()

    def forward_features(self, x):
        """(B, C_in, H, W) → the tokens after the last layer and the norm, (B, S, C)."""
        if x.ndim == 4 and x.shape[1] == self.in_chans and tuple(x.shape[2:]) != tuple(self.stem.img_size):
            h, w = self.stem.img_size
            got = (x.shape[2] // self.stem.patch_size[0]) * (x.shape[3] // self.stem.patch_size[1])
            raise ValueError(
                f"MlpMixer: the token-mixing MLPs were built for {h}×{w} images ({self.stem.num_patches} patches); "
                f"a {x.shape[2]}×{x.shape[3]} input would give {got}. Resize the input to {h}×{w}, or build the "
                f"model with img_size={tuple(x.shape[2:])} (new token-mixing weights: trained ones do not carry over)")
        check_image(x, self.stem.img_size, self.in_chans, "MlpMixer")
        x = self.stem(x)                                      # (B, S, C)
        x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x, pre_logits: bool = False):
        if self.global_pool == "avg":
            x = x.mean(dim=1)                                 # (B, C): the mean over the patches
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# =========================================================================== configurations
def _mixer(defaults, kwargs):
    return MlpMixer(**dict(defaults, **kwargs))


@register_model
def mixer_tiny(**kwargs):
    """CIFAR-10 MLP-Mixer: 4×4 patches → 8×8 = 64 tokens, width C = 192, 8 layers, D_S = 96,
    D_C = 768 (timm's ratios 0.5 and 4): 2,484,426 parameters, 170M MACs.

    Patch 4 gives the 64 tokens that ``vit_tiny`` works on, so the two differ only in how
    tokens mix. Mixer-S/16 (C = 512) would be 18.5M parameters here too — almost all in the
    channel MLPs, which do not depend on the resolution; C = 192 brings it near ViT-Tiny's
    width. The token MLPs are small: 64 → 96 → 64, 12.4K parameters each, but they are what
    ties the model to 32×32.
    """
    return _mixer(dict(img_size=32, patch_size=4, num_blocks=8, embed_dim=192, num_classes=10), kwargs)


@register_model
def mixer_s32_224(**kwargs):
    """Mixer-S/32 (MLP-Mixer Table 1: 19.1M): 32×32 patches → 49 tokens, C 512, 8 layers."""
    return _mixer(dict(patch_size=32, num_blocks=8, embed_dim=512), kwargs)


@register_model
def mixer_s16_224(**kwargs):
    """Mixer-S/16 (MLP-Mixer Table 1: 18.5M): 16×16 patches → 196 tokens, C 512, D_S 256, D_C 2048, 8 layers."""
    return _mixer(dict(patch_size=16, num_blocks=8, embed_dim=512), kwargs)


@register_model
def mixer_b16_224(**kwargs):
    """Mixer-B/16 (MLP-Mixer Table 1: 59.9M): C 768, D_S 384, D_C 3072, 12 layers."""
    return _mixer(dict(patch_size=16, num_blocks=12, embed_dim=768), kwargs)
