"""The transformer's feed-forward network: two linears with a GELU between (ViT eq. 3)."""
from __future__ import annotations

from minivit import nn


class Mlp(nn.Module):
    """fc1 → act → dropout → fc2 → dropout, on tokens (B, N, C) → (B, N, out_features).

    The hidden width is ``mlp_ratio × C`` (4× in ViT). Names follow timm
    (``mlp.fc1``, ``mlp.fc2``) so timm weights load unchanged.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer=nn.GELU, drop: float = 0.0, bias: bool = True):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
