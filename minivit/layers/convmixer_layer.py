"""ConvMixer's layer: "Patches Are All You Need?" (Trockman & Kolter, 2022, eq. 2-3).

After the patch embedding the whole network is one layer repeated, on a (B, C, h, w) grid
that never changes size:

    x' = BN(σ(DepthwiseConv_k(x))) + x       spatial mixing: each channel alone, over a k×k
                                             neighbourhood ("same" padding keeps h×w)
    y  = BN(σ(PointwiseConv(x')))            channel mixing: a 1×1 conv, C → C at every position

The depthwise conv plays the token-mixing MLP's part and the 1×1 conv the channel-mixing
MLP's, as in MLP-Mixer — but the token mixing is local (k×k) and shared over positions, so
it works at any resolution and costs k²·N·C instead of growing with the number of tokens.
Per layer: k²NC + NC² MACs, k²C + C² weights.

Written as timm writes it (nested Sequentials), so the state_dict keys are timm's:
``0.fn.0`` (depthwise conv), ``0.fn.2`` (its BatchNorm), ``1`` (pointwise conv), ``3`` (BatchNorm).
"""
from __future__ import annotations

from minivit import nn


class Residual(nn.Module):
    """fn(x) + x. timm's name for the wrapped module: ``fn``."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def convmixer_layer(dim: int, kernel_size: int = 9, act_layer=nn.GELU) -> nn.Sequential:
    """One ConvMixer layer on (B, C, h, w) → (B, C, h, w)."""
    return nn.Sequential(
        Residual(nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same"),    # depthwise: mixes space
            act_layer(),
            nn.BatchNorm2d(dim))),
        nn.Conv2d(dim, dim, kernel_size=1),                                 # pointwise: mixes channels
        act_layer(),
        nn.BatchNorm2d(dim))
