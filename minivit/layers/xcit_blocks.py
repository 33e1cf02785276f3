"""XCiT's other building blocks ("XCiT: Cross-Covariance Image Transformers", El-Nouby et al.,
2021, §3 and Fig. 1): the convolutional patch embedding, the Fourier position encoding,
local patch interaction (LPI), the XCiT layer, and CaiT's class-attention layer.

    ConvPatchEmbed             image → tokens by log₂P stride-2 3×3 convs (+ BN, GELU between)
    PositionalEncodingFourier  sines/cosines of each token's (row, col), then a 1×1 conv to C
    LPI                        depthwise 3×3 conv → GELU → BN → depthwise 3×3 conv on the grid
    XCABlock                   x += γ₁·XCA(LN(x));  x += γ₃·LPI(LN(x));  x += γ₂·FFN(LN(x))
    ClassAttentionBlock        CaiT's class attention: only the class token queries, all tokens answer

Why LPI (§3.3): XCA mixes channels, not tokens — a token learns about the others only
through the d × d statistics. Two depthwise 3×3 convs give every token an explicit view
of its 8 neighbours for C·9 weights each (the cost of a convolution, linear in N).

Why class attention at the end (§3.3, after CaiT, Touvron et al. 2021): the patch tokens
are processed without a class token; two final layers let a class token attend over
the frozen patch tokens (a 1 × N attention), then the head reads the class token.

Constructor keywords and state_dict keys are timm's (``proj.0.0``/``proj.0.1`` for the first
conv and BN of the stem, ``token_projection``, ``conv1``/``bn``/``conv2``, ``gamma1``/``gamma3``/
``gamma2``, ``norm1``/``norm3``/``norm2``, ``local_mp``, ``attn.q``/``.k``/``.v``/``.proj``).
"""
from __future__ import annotations

import math
from functools import lru_cache, partial

import numpy as np

import minivit.functional as F
from minivit import backend, nn
from minivit.autograd import Tensor
from minivit.layers.mlp import Mlp
from minivit.layers.patch_embed import check_image, to_2tuple
from minivit.layers.xca import XCA


# =========================================================================== the stem
def conv3x3_bn(in_planes: int, out_planes: int, stride: int = 1):
    """3×3 conv (padding 1, no bias) + BatchNorm, timm's ``conv3x3``: keys ``0`` (conv), ``1`` (BN)."""
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(out_planes))


class ConvPatchEmbed(nn.Module):
    """XCiT's stem: log₂P convs of 3×3, stride 2, each with BN, GELU
    between them, the widths doubling up to ``embed_dim``: for P = 16,
    3 → C/8 → C/4 → C/2 → C, and the grid shrinks 2× per conv: (B, 3, H, W) → (B, H/P · W/P, C).

    timm builds P = 16 (4 convs) and P = 8 (3 convs) and refuses other sizes; the same rule
    gives P = 4 (2 convs: 3 → C/2 → C) and P = 2, which minivit allows for small images
    (``xcit_tiny``). forward returns the tokens and the grid (Hp, Wp), as timm's.
    """

    def __init__(self, img_size=224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 act_layer=nn.GELU):
        super().__init__()
        n = int(round(math.log2(patch_size))) if patch_size >= 2 else 0
        if patch_size < 2 or 2 ** n != patch_size:
            raise ValueError(f"ConvPatchEmbed: patch_size must be a power of two (2, 4, 8 or 16: one stride-2 "
                             f"conv per halving), got {patch_size}")
        if embed_dim % 2 ** (n - 1):
            raise ValueError(f"ConvPatchEmbed: embed_dim ({embed_dim}) must be divisible by {2 ** (n - 1)} "
                             f"(the first of the {n} convs has embed_dim/{2 ** (n - 1)} channels)")
        self.img_size, self.patch_size, self.in_chans = to_2tuple(img_size), patch_size, in_chans
        for s in self.img_size:
            if s % patch_size:
                raise ValueError(f"ConvPatchEmbed: img_size {self.img_size} is not divisible by patch_size "
                                 f"{patch_size}; pick an image size that is a multiple of it")
        self.grid_size = tuple(s // patch_size for s in self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        layers, c = [], in_chans
        for i in range(n):
            out = embed_dim // 2 ** (n - 1 - i)                  # C/2^(n−1), …, C/2, C
            if i:
                layers.append(act_layer())                       # GELU between the convs, none after the last
            layers.append(conv3x3_bn(c, out, stride=2))
            c = out
        self.proj = nn.Sequential(*layers)

    def forward(self, x):
        check_image(x, None, self.in_chans, "Xcit")
        H, W = x.shape[2:]
        P = self.patch_size
        if H % P or W % P:
            raise ValueError(f"Xcit: input is {H}×{W}, but the conv patch embedding (patch_size={P}) needs a "
                             f"height and width divisible by {P}; resize or crop the input to a multiple of {P}")
        x = self.proj(x)                                         # (B, C, H/P, W/P)
        Hp, Wp = x.shape[2], x.shape[3]
        return x.flatten(2).transpose(1, 2), (Hp, Wp)            # (B, N, C), the grid


# =========================================================================== position encoding
@lru_cache(maxsize=32)
def fourier_features(H: int, W: int, hidden_dim: int = 32, temperature: float = 10000.0,
                     eps: float = 1e-6) -> np.ndarray:
    """(2·hidden_dim, H, W) float32: the "Attention is all you need" sinusoids of each grid
    cell's row (first hidden_dim channels) and column (the rest), in float32 as timm computes them.

    Rows and columns are numbered 1…H and 1…W and scaled to (0, 2π]; channel 2j holds
    sin(pos/ω_j), channel 2j+1 cos(pos/ω_j), with ω_j = temperature^(2j/hidden_dim).
    sin and cos are evaluated in float64 and rounded (correctly rounded float32 values):
    torch's float32 sin/cos may differ from them in the last bit (≤ 6e-8).
    """
    f32 = np.float32

    def angles(n):
        pos = np.arange(1, n + 1, dtype=f32)
        pos = pos / (pos[-1] + f32(eps)) * f32(2 * math.pi)     # (n,) in (0, 2π]
        i = np.arange(hidden_dim)
        expo = (2 * (i // 2)).astype(f32) / f32(hidden_dim)
        dim_t = (temperature ** expo.astype(np.float64)).astype(f32)     # pairs share a frequency
        return (pos[:, None] / dim_t).astype(np.float64)                  # (n, hidden_dim)

    def embed(a):                                                # (n, hidden) → sin on even, cos on odd
        return np.stack([np.sin(a[:, 0::2]), np.cos(a[:, 1::2])], axis=-1).reshape(len(a), -1).astype(f32)

    ey, ex = embed(angles(H)), embed(angles(W))                  # (H, hidden), (W, hidden)
    pos = np.concatenate([np.broadcast_to(ey[:, None, :], (H, W, hidden_dim)),
                          np.broadcast_to(ex[None, :, :], (H, W, hidden_dim))], axis=-1)
    out = np.ascontiguousarray(pos.transpose(2, 0, 1))            # (2·hidden, H, W)
    out.flags.writeable = False                                  # cached: shared between calls
    return out


class PositionalEncodingFourier(nn.Module):
    """XCiT's position encoding: fixed Fourier features of the grid position, mapped
    to the width C by a learned 1×1 conv ``token_projection``. Computed for any grid, so
    the model takes any image size (a multiple of the patch size).

    forward(B, H, W) → (B, C, H, W), as timm's.
    """

    def __init__(self, hidden_dim: int = 32, dim: int = 768, temperature: float = 10000):
        super().__init__()
        self.token_projection = nn.Conv2d(hidden_dim * 2, dim, kernel_size=1)
        self.hidden_dim, self.dim, self.temperature = hidden_dim, dim, temperature

    def forward(self, B: int, H: int, W: int):
        w = self.token_projection.weight
        feats = fourier_features(H, W, self.hidden_dim, float(self.temperature))
        feats = Tensor(backend.to_device(feats[None].astype(w.dtype), backend.device_of(w.data)))
        pos = self.token_projection(feats)                       # (1, C, H, W)
        return pos.expand(B, -1, -1, -1)                         # (B, C, H, W)


# =========================================================================== XCiT layer
class LPI(nn.Module):
    """Local patch interaction (§3.3): tokens (B, N, C) back on their (H, W) grid, then
    depthwise 3×3 conv → GELU → BatchNorm → depthwise 3×3 conv, and back to (B, N, C)."""

    def __init__(self, in_features: int, out_features: int | None = None, act_layer=nn.GELU,
                 kernel_size: int = 3):
        super().__init__()
        out_features = out_features or in_features
        padding = kernel_size // 2
        self.conv1 = nn.Conv2d(in_features, in_features, kernel_size, padding=padding, groups=in_features)
        self.act = act_layer()
        self.bn = nn.BatchNorm2d(in_features)
        self.conv2 = nn.Conv2d(in_features, out_features, kernel_size, padding=padding, groups=out_features)

    def forward(self, x, H: int, W: int):
        B, N, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, H, W)                # tokens → grid
        x = self.conv2(self.bn(self.act(self.conv1(x))))         # (B, C, H, W)
        return x.reshape(B, C, N).transpose(1, 2)                # grid → tokens (B, N, C)


def _layer_scale(dim: int, eta: float):
    """γ, one per channel, initialised to eta (CaiT's LayerScale; eta = 1 in the released models)."""
    return nn.Parameter(np.full(dim, eta, dtype=np.float32))


class XCABlock(nn.Module):
    """One XCiT layer (Fig. 1) on (B, N, C) with its grid (H, W):

        x = x + γ₁ ⊙ XCA(LN₁(x))
        x = x + γ₃ ⊙ LPI(LN₃(x))
        x = x + γ₂ ⊙ FFN(LN₂(x))

    (the LPI norm and scale are number 3 in the authors' code, which timm keeps for its weights).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 act_layer=nn.GELU, norm_layer=partial(nn.LayerNorm, eps=1e-6), eta: float = 1.0):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = XCA(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm3 = norm_layer(dim)
        self.local_mp = LPI(dim, act_layer=act_layer)
        self.drop_path3 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.gamma1, self.gamma3, self.gamma2 = (_layer_scale(dim, eta) for _ in range(3))

    def forward(self, x, H: int, W: int):
        x = x + self.drop_path1(self.gamma1 * self.attn(self.norm1(x)))
        x = x + self.drop_path3(self.gamma3 * self.local_mp(self.norm3(x), H, W))
        x = x + self.drop_path2(self.gamma2 * self.mlp(self.norm2(x)))
        return x                                                 # (B, N, C)


# =========================================================================== class attention
class ClassAttention(nn.Module):
    """CaiT's class attention (timm's ``ClassAttn``): the class token x[:, 0] is the only query;
    keys and values come from all N tokens. (B, N, C) → (B, 1, C), the new class token.
    Cost: N·C² for K and V each, 2C² for q and proj, 2N·C for the 1 × N attention."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ClassAttention: dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        h, d = self.num_heads, self.head_dim
        q = self.q(x[:, 0]).reshape(B, 1, h, d).permute(0, 2, 1, 3)    # (B, h, 1, d): the class token asks
        k = self.k(x).reshape(B, N, h, d).permute(0, 2, 1, 3)           # (B, h, N, d)
        v = self.v(x).reshape(B, N, h, d).permute(0, 2, 1, 3)           # (B, h, N, d)
        attn = F.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)  # (B, h, 1, N)
        x_cls = self.attn_drop(attn) @ v                                # (B, h, 1, d)
        x_cls = x_cls.transpose(1, 2).reshape(B, 1, C)
        return self.proj_drop(self.proj(x_cls))                         # (B, 1, C)


class ClassAttentionBlock(nn.Module):
    """CaiT's class-attention layer as XCiT uses it, on [cls; patches] (B, 1 + N, C).

    Only the class token is updated by attention and FFN. Two details are the authors' code,
    kept by timm (its released weights were trained with them):

    - after the attention the patch tokens become x + γ₁ ⊙ LN₁(x) (their normalised copy is
      concatenated to the attention output before the residual);
    - ``tokens_norm=True`` passes all tokens through LN₂, False only the class token; then the
      patch tokens are added to themselves (x_res + x), i.e. doubled.

    The first changes the keys and values that the next class-attention layer reads (the
    doubling does not: LN₁ undoes a scale); both change what ``global_pool='avg'`` averages.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 act_layer=nn.GELU, norm_layer=partial(nn.LayerNorm, eps=1e-6), eta: float | None = 1.0,
                 tokens_norm: bool = False):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = ClassAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                   proj_drop=proj_drop)
        self.drop_path1 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if eta is not None:
            self.gamma1, self.gamma2 = _layer_scale(dim, eta), _layer_scale(dim, eta)
        else:                                                    # no LayerScale
            self.gamma1 = self.gamma2 = 1.0
        self.tokens_norm = tokens_norm

    def forward(self, x):
        x_norm1 = self.norm1(x)                                           # (B, 1 + N, C)
        x_attn = F.cat([self.attn(x_norm1), x_norm1[:, 1:]], dim=1)       # new class token; patches normalised
        x = x + self.drop_path1(self.gamma1 * x_attn)
        if self.tokens_norm:
            x = self.norm2(x)
        else:
            x = F.cat([self.norm2(x[:, 0:1]), x[:, 1:]], dim=1)
        x_res = x
        cls_token = self.gamma2 * self.mlp(x[:, 0:1])                      # (B, 1, C): FFN on the class token only
        x = F.cat([cls_token, x[:, 1:]], dim=1)
        return x_res + self.drop_path2(x)                                 # (B, 1 + N, C)
