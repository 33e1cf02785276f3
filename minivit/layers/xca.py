"""Cross-covariance attention (XCA), the token mixer of XCiT ("XCiT: Cross-Covariance Image
Transformers", El-Nouby et al., 2021, §3.2).

Self-attention compares *tokens*: the N × N Gram matrix Q Kᵀ. XCA compares *channels*:
within each head (width d = C / h) it builds the d × d cross-covariance matrix of the
L2-normalised keys and queries, and mixes the channels of V with it:

    Q̂ = Q / ‖Q‖,  K̂ = K / ‖K‖          (each channel normalised over the N tokens)
    A = softmax(K̂ᵀ Q̂ / τ)               (d × d per head, τ a learned temperature per head;
                                          each column a distribution over K's channels)
    XCA(Q, K, V) = V A                   (N × d: every token's channels re-mixed by A)

The code keeps the channels as rows, (B, h, d, N): A = softmax(t · q̂ k̂ᵀ) over the last
axis (K's channels), out = A v, and (A v)ᵀ = V Aᵀ is the paper's product. The parameter
``temperature`` t multiplies (t = 1/τ, as in the authors' code).

The N tokens never meet here: the map is d × d whatever the image size, so the cost is
*linear* in N (§3.2, "complexity analysis"; ``complexity.formulas.xca``):

    4NC²         the Q, K, V and output projections
    2NC²/h       q̂ k̂ᵀ and A v: N·d² each per head, h heads, d = C/h

instead of self-attention's 2N²C. The normalisation bounds every entry of q̂ k̂ᵀ to
[−1, 1] (cosine similarities), hence the learned temperature to sharpen the softmax.
Tokens talk to each other only implicitly here, through the statistics in A; XCiT adds
explicit local talk with the LPI convolutions (``xcit_blocks.py``).

Names are timm's (``qkv``, ``proj``, ``temperature`` of shape (h, 1, 1)), so timm's weights load.
"""
from __future__ import annotations

import numpy as np

import minivit.functional as F
from minivit import nn


def l2_normalize(x, dim: int = -1, eps: float = 1e-12):
    """x / max(‖x‖₂, eps) along ``dim`` (PyTorch's ``F.normalize``), from the engine's own ops.

    Written as x / √max(Σx², eps²): the same value (√ is monotone), but the gradient of the
    clamp is 0 below eps² before the square root sees it, so an all-zero row gives a zero
    gradient instead of 0·∞ = NaN.
    """
    sq = (x * x).sum(dim=dim, keepdim=True)
    return x / sq.clamp(min=eps * eps).sqrt()


class XCA(nn.Module):
    """Cross-covariance attention on tokens (B, N, C) → (B, N, C); heads must divide C.

    Set ``store_attn = True`` to keep the last channel-attention maps (B, h, d, d) in
    ``self.attn_map``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"XCA: dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        # τ, one per head, starts at 1 (no sharpening); shaped to broadcast over (B, h, d, d)
        self.temperature = nn.Parameter(np.ones((num_heads, 1, 1), dtype=np.float32))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.store_attn = False
        self.attn_map = None

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 4, 1).unbind(0)                     # each (B, h, d, N): channels as rows
        q = F.normalize(q, dim=-1)                                         # each channel: unit norm over N tokens
        k = F.normalize(k, dim=-1)                                         # (one op; l2_normalize written out)
        attn = (q @ k.transpose(-2, -1)) * self.temperature               # (B, h, d, d): cosines × t
        attn = F.softmax(attn, dim=-1)
        if self.store_attn:
            self.attn_map = attn.detach()
        attn = self.attn_drop(attn)
        x = attn @ v                                                       # (B, h, d, N)
        x = x.permute(0, 3, 1, 2).reshape(B, N, C)                         # (B, N, h, d) → heads side by side
        return self.proj_drop(self.proj(x))

    def no_weight_decay(self):
        return {"temperature"}

    def extra_repr(self):
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}"
