"""Convolutional projection attention: CvT's multi-head self-attention (CvT §3.2).

ViT makes queries, keys and values with one linear map per token. CvT first
folds the tokens back into their 2-D map and runs a *depth-wise separable*
convolution per projection (eq. 2):

    x^{q/k/v} = Flatten(Conv2d(Reshape2D(x), s))

with Conv2d = depth-wise k×k conv → BatchNorm → point-wise (1×1) conv. The
point-wise conv on a flattened map is just a Linear on every token, so in code
it is three modules per projection:

    conv_proj_q.conv   depth-wise 3×3 conv (groups = C, no bias): mixes each
                       channel with its spatial neighbours — local context
    conv_proj_q.bn     BatchNorm2d over the map (the released code's "dw_bn")
    proj_q             Linear C → C (the point-wise conv)

and the same for k and v. Attention itself is the usual
``softmax(Q Kᵀ · scale) V`` per head, then the output projection ``proj``.

**Squeezed projection.** Keys and values are made with stride 2, queries with
stride 1: an H×W map gives N = HW queries but only ⌈H/2⌉⌈W/2⌉ ≈ N/4 keys and
values, so QKᵀ and AV cost 4× less (2N·(N/4)·C instead of 2N²C), for a small
loss in accuracy (CvT Table 7). The output still has one token per query, so
the residual connection is unchanged.

**Class token.** In CvT's last stage a class token rides along in front of the
map tokens. It has no place on the 2-D map, so it skips the convolutions and is
concatenated back in front of q, k and v before the linear projections.

**Scale.** The released code (and Hugging Face's port) scale the logits by
1/√C with C the *full* embedding width, not 1/√(C/heads) as in ViT; the
pretrained weights were trained that way, so we keep it (``self.scale``).

Names follow the authors' released code, so their checkpoints map one to one:
``conv_proj_q.conv``, ``conv_proj_q.bn``, …, ``proj_q``, ``proj_k``,
``proj_v``, ``proj``.
"""
from __future__ import annotations

import minivit.functional as F
from minivit import nn
from minivit.layers.conv_embed import conv_out_size


class ConvProjection(nn.Module):
    """The "dw_bn" projection: (B, C, H, W) → tokens (B, H'·W', C), H' = ⌊(H + 2p − k)/s⌋ + 1.

    A depth-wise conv (one k×k filter per channel, no bias: BatchNorm's shift
    would cancel it) followed by BatchNorm2d, then read row by row as tokens.
    ``forward(tokens, hw)`` takes the tokens (B, H·W, C) of an H×W grid instead
    and does the same as one op (the attention's fused path).
    """

    def __init__(self, dim: int, kernel_size: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.conv = nn.Conv2d(dim, dim, kernel_size, stride=stride, padding=padding, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def output_size(self, H: int, W: int) -> tuple:
        return tuple(conv_out_size(n, self.kernel_size, self.stride, self.padding) for n in (H, W))

    def forward(self, x, hw=None):
        if hw is not None:                          # x: tokens (B, H·W, C) on the grid hw, the same steps
            conv = self.conv                        # as one op: conv → BatchNorm → tokens (F.conv2d_tokens)
            return F.conv2d_tokens(x, hw, conv.weight, None, conv.stride, conv.padding, groups=conv.groups,
                                   batch_norm=self.bn.batch_norm_args())
        x = self.bn(self.conv(x))                   # (B, C, H', W')
        return F.rearrange(x, "b c h w -> b (h w) c")  # (B, H'·W', C)


class ConvProjectionAttention(nn.Module):
    """Multi-head attention with convolutional projections, on tokens (B, [1 +] H·W, C) → same shape.

    ``forward(x, hw)`` takes the token grid ``hw = (H, W)`` so the tokens can be
    folded back into a map. ``with_cls_token``: the first token is a class token
    that skips the convolutions. ``store_attn = True`` keeps the last attention
    weights (B, heads, N_q, N_kv) in ``self.attn_map``.
    """

    def __init__(self, dim: int, num_heads: int = 1, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, method: str = "dw_bn", kernel_size: int = 3, stride_kv: int = 2,
                 stride_q: int = 1, padding_kv: int = 1, padding_q: int = 1, with_cls_token: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ConvProjectionAttention: dim ({dim}) must be divisible by num_heads ({num_heads})")
        if method != "dw_bn":
            raise ValueError(f"ConvProjectionAttention: only the 'dw_bn' projection (depth-wise conv + "
                             f"BatchNorm, used by every released CvT) is implemented, got method={method!r}")
        if stride_q != 1 or 2 * padding_q != kernel_size - 1:
            # Each query becomes one output token, added to its input token by the
            # residual connection: the query map must keep the input's H×W grid.
            raise ValueError(f"ConvProjectionAttention: the query projection must keep the token grid "
                             f"(stride_q=1 and padding_q=(kernel_size-1)/2) for the residual connection; "
                             f"got stride_q={stride_q}, padding_q={padding_q}, kernel_size={kernel_size}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.scale = dim ** -0.5            # the released code's 1/√C (full width), see the module doc
        self.with_cls_token = with_cls_token
        self.conv_proj_q = ConvProjection(dim, kernel_size, stride_q, padding_q)
        self.conv_proj_k = ConvProjection(dim, kernel_size, stride_kv, padding_kv)
        self.conv_proj_v = ConvProjection(dim, kernel_size, stride_kv, padding_kv)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.store_attn = False
        self.attn_map = None

    def _heads(self, x):
        return F.rearrange(x, "b n (h d) -> b h n d", h=self.num_heads)        # (B, h, N, d): one layout op

    # Projections and attention in fewer, larger ops (F.conv2d_tokens, F.heads_attention), as timm's
    # ``fused_attn``. False, store_attn, or attention dropout while training: the steps written out below.
    fused_attn = True

    def forward(self, x, hw):
        H, W = hw
        B, N, C = x.shape
        n_cls = 1 if self.with_cls_token else 0
        if N != n_cls + H * W or C != self.dim:
            raise ValueError(f"ConvProjectionAttention: expected (B, {n_cls} + {H}·{W}, {self.dim}) tokens "
                             f"for a {H}×{W} grid{' with a class token' if n_cls else ''}, got shape {x.shape}")
        if n_cls:
            cls, x = x.split([1, H * W], dim=1)                     # (B, 1, C), (B, HW, C)
        if self.fused_attn and not self.store_attn and (self.attn_drop.p == 0 or not self.training):
            # The steps below, with fewer ops: each projection's conv → BN → tokens as one op, the
            # head splits, attention and merge as one (F.heads_attention); tests hold the two equal.
            q, k, v = (p(x, hw) for p in (self.conv_proj_q, self.conv_proj_k, self.conv_proj_v))
            if n_cls:
                q, k, v = (F.cat([cls, t], dim=1) for t in (q, k, v))
            x = F.heads_attention(self.proj_q(q), self.proj_k(k), self.proj_v(v), self.num_heads, scale=self.scale)
            return self.proj_drop(self.proj(x))                     # (B, N, C)
        x = F.rearrange(x, "b (h w) c -> b c h w", h=H)             # tokens → 2-D map
        q = self.conv_proj_q(x)                                     # (B, HW, C): stride 1
        k = self.conv_proj_k(x)                                     # (B, ~HW/4, C): squeezed, stride 2
        v = self.conv_proj_v(x)
        if n_cls:                                                   # class token skips the convs
            q, k, v = (F.cat([cls, t], dim=1) for t in (q, k, v))
        q = self._heads(self.proj_q(q))                             # (B, h, Nq, d)
        k = self._heads(self.proj_k(k))                             # (B, h, Nkv, d)
        v = self._heads(self.proj_v(v))
        attn = (q @ k.transpose(-2, -1)) * self.scale               # (B, h, Nq, Nkv)
        attn = F.softmax(attn, dim=-1)
        if self.store_attn:
            self.attn_map = attn.detach()
        attn = self.attn_drop(attn)
        x = attn @ v                                                # (B, h, Nq, d)
        x = x.transpose(1, 2).reshape(B, N, C)                      # heads side by side
        return self.proj_drop(self.proj(x))
