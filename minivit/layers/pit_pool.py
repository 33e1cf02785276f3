"""PiT's pooling layer: shrink the token grid and widen the channels between stages.

A CNN halves the spatial size and doubles the channels from stage to stage; PiT
("Rethinking Spatial Dimensions of Vision Transformers", Heo et al. 2021, §3.2 and
Fig. 2c) gives a ViT the same pyramid. Between two transformer stages the spatial
tokens are put back on their (h, w) grid and pass through a *depthwise* convolution

    kernel = stride + 1 = 3,  padding = stride // 2 = 1,  stride = 2,  groups = C_in,
    out channels = C_out (= 2·C_in in the papers' models)

so (B, C, h, w) → (B, 2C, ⌈h/2⌉, ⌈w/2⌉). With groups = C_in each input channel is
filtered on its own by C_out/C_in kernels of 3×3: the conv mixes space, not channels,
and costs only C_out·9 weights. The class token has no place on the grid, so it is
widened by a plain linear layer C_in → C_out ("fc").

timm calls it ``Pooling`` (the PiT authors' code ``conv_head_pooling``); the names of
its two parts, ``conv`` and ``fc``, are timm's, so checkpoints load unchanged.
"""
from __future__ import annotations

from minivit import nn


class ConvHeadPooling(nn.Module):
    """Depthwise-conv pooling of spatial tokens + a linear for the class token(s).

    forward(x, cls_token):
        x          (B, C_in, h, w)   → (B, C_out, ⌊(h − 1)/stride⌋ + 1, ⌊(w − 1)/stride⌋ + 1)
        cls_token  (B, T, C_in)      → (B, T, C_out)     (T = 1, or 2 with a distillation token)
    """

    def __init__(self, in_feature: int, out_feature: int, stride: int = 2, padding_mode: str = "zeros"):
        super().__init__()
        if padding_mode != "zeros":
            raise ValueError(f"ConvHeadPooling: only padding_mode='zeros' is implemented, got {padding_mode!r}")
        if out_feature % in_feature:
            raise ValueError(f"ConvHeadPooling: out_feature ({out_feature}) must be a multiple of in_feature "
                             f"({in_feature}): the depthwise conv has groups = in_feature")
        self.in_feature, self.out_feature, self.stride = in_feature, out_feature, stride
        # kernel stride+1 with padding stride//2: neighbouring windows overlap by one pixel,
        # and every input pixel is seen (for stride 2: a 3×3 window moved 2 at a time).
        self.conv = nn.Conv2d(in_feature, out_feature, kernel_size=stride + 1, padding=stride // 2,
                              stride=stride, groups=in_feature)
        self.fc = nn.Linear(in_feature, out_feature)

    def forward(self, x, cls_token):
        if x.ndim != 4 or x.shape[1] != self.in_feature:
            raise ValueError(f"ConvHeadPooling: expected spatial tokens (B, {self.in_feature}, h, w), "
                             f"got shape {x.shape}")
        x = self.conv(x)                    # (B, C_out, h', w')
        cls_token = self.fc(cls_token)      # (B, T, C_out)
        return x, cls_token

    def extra_repr(self):
        return f"{self.in_feature} -> {self.out_feature}, stride={self.stride}"
