"""PVT v2's convolutional feed-forward network (PVT v2 §3.3, Fig. 1(b)).

PVT v1 uses ViT's MLP and fixed-size learned position embeddings. PVT v2 drops
the position embeddings and puts a 3×3 depthwise convolution between the two
linears instead:

    FFN(X) = FC2(GELU(DWConv3×3(FC1(X))))

The zero-padded conv gives each token its neighbours and, through the padding,
where the image border is — enough position information for the model to
work at any input size. A depthwise conv (groups = channels) costs only
9·hw·C_hidden multiply-accumulates, next to the linears' 2·hw·C·C_hidden.

In the linear-SRA variant (PVT v2-Li) the authors add a ReLU after FC1
(``extra_relu``; timm's ``relu``, an Identity otherwise).

Names are timm's ``MlpWithDepthwiseConv``: ``fc1``, ``relu``, ``dwconv``, ``act``,
``fc2`` (the authors' checkpoints say ``dwconv.dwconv``; timm renames it).
"""
from __future__ import annotations

import minivit.functional as F
from minivit import nn


class MlpWithDepthwiseConv(nn.Module):
    """fc1 → (ReLU) → depthwise 3×3 conv → act → dropout → fc2 → dropout.

    ``forward(x, feat_size)``: tokens (B, N, C_in) on a (H, W) grid with N = H·W
    → (B, N, C_out).
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer=nn.GELU, drop: float = 0.0, extra_relu: bool = False):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.relu = nn.ReLU() if extra_relu else nn.Identity()
        # groups = channels: each hidden channel gets its own 3×3 filter; padding 1 keeps H×W.
        self.dwconv = nn.Conv2d(hidden_features, hidden_features, 3, 1, 1, bias=True, groups=hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x, feat_size):
        H, W = feat_size
        x = self.fc1(x)                                      # (B, N, Ch)
        B, N, C = x.shape
        if N != H * W:
            raise ValueError(f"MlpWithDepthwiseConv: {N} tokens do not form the {H}×{W} grid given as feat_size")
        # tokens back on the grid (B, Ch, H, W), the depthwise conv, and back to tokens (B, N, Ch): one op
        # (F.conv2d_tokens = rearrange, conv2d, rearrange)
        conv = self.dwconv
        x = F.conv2d_tokens(self.relu(x), (H, W), conv.weight, conv.bias, conv.stride, conv.padding,
                            conv.dilation, conv.groups)
        x = self.drop(self.act(x))
        return self.drop(self.fc2(x))                        # (B, N, C_out)
