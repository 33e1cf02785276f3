"""UNETR: a ViT encoder over 3-D patches with a convolutional U-Net decoder
(Hatamizadeh et al., "UNETR: Transformers for 3D Medical Image Segmentation", WACV 2022).

A volume (B, C_in, D, H, W) is cut into 16³ patches, each linearly embedded (a stride-16 conv)
plus a learned position embedding: N = DHW/16³ tokens of width ``hidden_size``, then 12 pre-norm
transformer blocks (ViT eq. 2-3). The decoder reads the tokens after blocks 3, 6, 9 and 12
(z3, z6, z9, z12), reshaped into grids (B, hidden, D/16, H/16, W/16) (paper §3.2):

    z12 (LayerNorm'd) ─ decoder5: ×2 + cat(encoder4(z9))  ─→ (B, 8F, D/8, …)
                        decoder4: ×2 + cat(encoder3(z6))  ─→ (B, 4F, D/4, …)
                        decoder3: ×2 + cat(encoder2(z3))  ─→ (B, 2F, D/2, …)
                        decoder2: ×2 + cat(encoder1(x))   ─→ (B,  F, D,   …)
                        out: 1×1×1 conv                   ─→ (B, out_channels, D, H, W)

with F = ``feature_size``; encoder4/3/2 lift a token grid by ×2, ×4, ×8 with stacks of 2×2×2
transposed convolutions (minivit.layers.unetr_blocks). Four ×2 steps undo the 16³ patch, so the
patch size is 16 (MONAI's class fixes it too) and every side of ``img_size`` must be a multiple of 16.

Arguments and state_dict keys are MONAI's ``monai.networks.nets.UNETR`` (the reference
implementation): ``vit.patch_embedding.patch_embeddings.weight``, ``vit.blocks.3.attn.qkv.weight``,
``vit.blocks.3.mlp.linear1.weight``, ``encoder2.blocks.0.1.conv1.conv.weight``, … so
``model.load_state_dict(monai_model.state_dict())`` loads (``minivit.convert.from_monai`` builds
the twin). ``spatial_dims=2`` gives the 2-D variant (16×16 patches of an image).
"""
from __future__ import annotations

import math

import numpy as np

import minivit.functional as F
from minivit import nn
from minivit.layers.unetr_blocks import (UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock,
                                         split_norm_name)
from minivit.models.registry import register_model

PATCH = 16          # UNETR's patch side (four ×2 decoder steps undo it)
NUM_LAYERS = 12     # transformer blocks; the skips come from blocks 3, 6, 9 and 12
PROJ_TYPES = ("conv", "perceptron")


def _tuple(v, n, name):
    if isinstance(v, int):
        return (v,) * n
    v = tuple(v)
    if len(v) != n or not all(isinstance(i, int) for i in v):
        raise ValueError(f"UNETR: {name} must be an int or {n} ints, got {v!r}")
    return v


# =========================================================================== the ViT, with MONAI's names
class Patchify(nn.Module):
    """MONAI's perceptron patch embedding's reshape (einops' 'b c (h p1) (w p2) (d p3) -> b (h w d)
    (p1 p2 p3 c)'): (B, C, *S) → (B, N, P^dims·C), each patch's voxels channel-last."""

    def __init__(self, patch_size):
        super().__init__()
        self.patch_size = tuple(patch_size)

    def forward(self, x):
        B, C, *S = x.shape
        n = len(S)
        grid = [s // p for s, p in zip(S, self.patch_size)]
        shape = [B, C]
        for g, p in zip(grid, self.patch_size):
            shape += [g, p]
        x = x.reshape(*shape)                                        # (B, C, g1, p1, g2, p2, …)
        order = [0] + [2 + 2 * i for i in range(n)] + [3 + 2 * i for i in range(n)] + [1]
        x = x.permute(*order)                                        # (B, g1, g2, …, p1, p2, …, C)
        return x.reshape(B, math.prod(grid), math.prod(self.patch_size) * C)


class PatchEmbeddingBlock(nn.Module):
    """(B, C, *S) → (B, N, hidden): stride-16 conv (``proj_type='conv'``) or patchify + Linear
    ('perceptron'), plus the learned ``position_embeddings`` (1, N, hidden), then dropout."""

    def __init__(self, in_channels: int, img_size, patch_size, hidden_size: int, proj_type: str = "conv",
                 dropout_rate: float = 0.0, spatial_dims: int = 3):
        super().__init__()
        self.proj_type = proj_type
        self.n_patches = math.prod(s // p for s, p in zip(img_size, patch_size))
        if proj_type == "conv":
            conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
            self.patch_embeddings = conv(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        else:
            self.patch_embeddings = nn.Sequential(Patchify(patch_size),
                                                  nn.Linear(in_channels * math.prod(patch_size), hidden_size))
            nn.init.trunc_normal_(self.patch_embeddings[1].weight, std=0.02)
            nn.init.zeros_(self.patch_embeddings[1].bias)
        self.position_embeddings = nn.Parameter(np.zeros((1, self.n_patches, hidden_size), dtype=np.float32))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x):
        x = self.patch_embeddings(x)
        if self.proj_type == "conv":
            x = x.flatten(2).transpose(1, 2)                         # (B, hidden, *G) → (B, N, hidden)
        return self.dropout(x + self.position_embeddings)


class MLPBlock(nn.Module):
    """linear1 → GELU → drop1 → linear2 → drop2, on (B, N, hidden)."""

    def __init__(self, hidden_size: int, mlp_dim: int, dropout_rate: float = 0.0):
        super().__init__()
        mlp_dim = mlp_dim or hidden_size
        self.linear1 = nn.Linear(hidden_size, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, hidden_size)
        self.fn = nn.GELU()
        self.drop1 = nn.Dropout(dropout_rate)
        self.drop2 = nn.Dropout(dropout_rate)

    def forward(self, x):
        return self.drop2(self.linear2(self.drop1(self.fn(self.linear1(x)))))


class SABlock(nn.Module):
    """Multi-head self-attention on (B, N, hidden), MONAI's names: ``qkv`` (laid out
    (3, heads, head_dim) along its output, as timm's), ``out_proj``. ``save_attn=True`` keeps
    the last attention weights (B, heads, N, N) in ``att_mat``."""

    def __init__(self, hidden_size: int, num_heads: int, dropout_rate: float = 0.0, qkv_bias: bool = False,
                 save_attn: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.dim_head = hidden_size // num_heads
        self.scale = self.dim_head ** -0.5
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.drop_output = nn.Dropout(dropout_rate)
        self.drop_weights = nn.Dropout(dropout_rate)
        self.save_attn = save_attn
        self.att_mat = None

    def forward(self, x):
        B, N, C = x.shape
        if not self.save_attn and (self.drop_weights.p == 0 or not self.training):
            x = F.qkv_attention(self.qkv(x), self.num_heads, self.scale)         # (B, N, C), one op
            return self.drop_output(self.out_proj(x))
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.dim_head)      # (B, N, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                          # each (B, h, N, d)
        att = F.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)         # (B, h, N, N)
        if self.save_attn:
            self.att_mat = att.detach()
        x = self.drop_weights(att) @ v                                          # (B, h, N, d)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.drop_output(self.out_proj(x))


class TransformerBlock(nn.Module):
    """x + attn(norm1(x)), then x + mlp(norm2(x)). ``norm_cross_attn`` is MONAI's unused
    cross-attention norm, kept so the state_dict keys match (it takes no part in forward)."""

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int, dropout_rate: float = 0.0,
                 qkv_bias: bool = False, save_attn: bool = False):
        super().__init__()
        self.mlp = MLPBlock(hidden_size, mlp_dim, dropout_rate)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.attn = SABlock(hidden_size, num_heads, dropout_rate, qkv_bias, save_attn)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.norm_cross_attn = nn.LayerNorm(hidden_size)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """MONAI's ViT backbone as UNETR uses it (no class token, no head): (B, C, *S) →
    (LayerNorm'd last tokens (B, N, hidden), [the tokens after every block])."""

    def __init__(self, in_channels: int, img_size, patch_size, hidden_size: int = 768, mlp_dim: int = 3072,
                 num_layers: int = 12, num_heads: int = 12, proj_type: str = "conv", dropout_rate: float = 0.0,
                 spatial_dims: int = 3, qkv_bias: bool = False, save_attn: bool = False):
        super().__init__()
        self.patch_embedding = PatchEmbeddingBlock(in_channels, img_size, patch_size, hidden_size, proj_type,
                                                   dropout_rate, spatial_dims)
        self.blocks = nn.ModuleList([TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias,
                                                      save_attn) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, x):
        x = self.patch_embedding(x)                                  # (B, N, hidden)
        hidden_states_out = []
        for blk in self.blocks:
            x = blk(x)
            hidden_states_out.append(x)
        return self.norm(x), hidden_states_out


# =========================================================================== UNETR
class UNETR(nn.Module):
    """UNETR on volumes (B, in_channels, *img_size) → per-voxel logits (B, out_channels, *img_size).

    MONAI's arguments: ``feature_size`` F (decoder widths F, 2F, 4F, 8F), ``hidden_size``,
    ``mlp_dim``, ``num_heads`` of the ViT, ``proj_type`` ('conv' or 'perceptron'; ``pos_embed``
    is its old name), ``norm_name`` ('instance', 'batch' or (name, {kwargs})), ``conv_block``
    (conv blocks in the skip stacks), ``res_block`` (residual conv blocks), ``dropout_rate`` (in the
    ViT), ``spatial_dims`` (3, or 2 for images), ``qkv_bias``, ``save_attn``.
    """

    def __init__(self, in_channels: int, out_channels: int, img_size, feature_size: int = 16,
                 hidden_size: int = 768, mlp_dim: int = 3072, num_heads: int = 12, proj_type: str = "conv",
                 norm_name="instance", conv_block: bool = True, res_block: bool = True, dropout_rate: float = 0.0,
                 spatial_dims: int = 3, qkv_bias: bool = False, save_attn: bool = False, pos_embed: str | None = None):
        super().__init__()
        if pos_embed is not None:                    # MONAI < 1.3 called proj_type pos_embed
            proj_type = pos_embed
        if spatial_dims not in (2, 3):
            raise ValueError(f"UNETR: spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if not 0 <= dropout_rate <= 1:
            raise ValueError(f"UNETR: dropout_rate must be in [0, 1], got {dropout_rate}")
        if hidden_size % num_heads:
            raise ValueError(f"UNETR: hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        if proj_type not in PROJ_TYPES:
            raise ValueError(f"UNETR: proj_type must be one of {PROJ_TYPES}, got {proj_type!r}")
        split_norm_name(norm_name)                   # fails early on a bad name
        img_size = _tuple(img_size, spatial_dims, "img_size")
        if any(s % PATCH or s < PATCH for s in img_size):
            raise ValueError(f"UNETR: every side of img_size must be a positive multiple of the patch size "
                             f"{PATCH} (the decoder's four ×2 steps undo it), got {img_size}; pad or crop the "
                             f"volume, e.g. to {tuple(max(PATCH, -(-s // PATCH) * PATCH) for s in img_size)}")
        self.in_channels, self.out_channels, self.img_size = in_channels, out_channels, img_size
        self.num_classes = out_channels
        self.spatial_dims, self.hidden_size, self.num_layers = spatial_dims, hidden_size, NUM_LAYERS
        self.patch_size = (PATCH,) * spatial_dims
        self.feat_size = tuple(s // PATCH for s in img_size)
        self.vit = ViT(in_channels, img_size, self.patch_size, hidden_size, mlp_dim, NUM_LAYERS, num_heads,
                       proj_type, dropout_rate, spatial_dims, qkv_bias, save_attn)
        d, F_ = spatial_dims, feature_size
        self.encoder1 = UnetrBasicBlock(d, in_channels, F_, 3, 1, norm_name, res_block=res_block)
        self.encoder2 = UnetrPrUpBlock(d, hidden_size, 2 * F_, 2, 3, 1, 2, norm_name, conv_block, res_block)
        self.encoder3 = UnetrPrUpBlock(d, hidden_size, 4 * F_, 1, 3, 1, 2, norm_name, conv_block, res_block)
        self.encoder4 = UnetrPrUpBlock(d, hidden_size, 8 * F_, 0, 3, 1, 2, norm_name, conv_block, res_block)
        self.decoder5 = UnetrUpBlock(d, hidden_size, 8 * F_, 3, 2, norm_name, res_block)
        self.decoder4 = UnetrUpBlock(d, 8 * F_, 4 * F_, 3, 2, norm_name, res_block)
        self.decoder3 = UnetrUpBlock(d, 4 * F_, 2 * F_, 3, 2, norm_name, res_block)
        self.decoder2 = UnetrUpBlock(d, 2 * F_, F_, 3, 2, norm_name, res_block)
        self.out = UnetOutBlock(d, F_, out_channels)

    def proj_feat(self, x):
        """Tokens (B, N, hidden) → the grid (B, hidden, *feat_size) (row-major patch order)."""
        B = x.shape[0]
        x = x.reshape(B, *self.feat_size, self.hidden_size)          # (B, g1, g2, g3, hidden)
        return x.permute(0, self.spatial_dims + 1, *range(1, self.spatial_dims + 1))

    def forward(self, x_in):
        expect = (self.in_channels, *self.img_size)
        if x_in.ndim != self.spatial_dims + 2 or tuple(x_in.shape[1:]) != expect:
            raise ValueError(f"UNETR: expected input (B, {', '.join(map(str, expect))}), got shape "
                             f"{tuple(x_in.shape)}; build the model with img_size= the volume's size")
        x, hidden = self.vit(x_in)                                   # (B, N, hidden), 12 × (B, N, hidden)
        enc1 = self.encoder1(x_in)                                   # (B, F, *S)
        enc2 = self.encoder2(self.proj_feat(hidden[3]))              # (B, 2F, *S/2)
        enc3 = self.encoder3(self.proj_feat(hidden[6]))              # (B, 4F, *S/4)
        enc4 = self.encoder4(self.proj_feat(hidden[9]))              # (B, 8F, *S/8)
        dec4 = self.proj_feat(x)                                     # (B, hidden, *S/16)
        dec3 = self.decoder5(dec4, enc4)                             # (B, 8F, *S/8)
        dec2 = self.decoder4(dec3, enc3)                             # (B, 4F, *S/4)
        dec1 = self.decoder3(dec2, enc2)                             # (B, 2F, *S/2)
        out = self.decoder2(dec1, enc1)                              # (B, F, *S)
        return self.out(out)                                         # (B, out_channels, *S)


def _unetr(defaults: dict, kwargs: dict) -> UNETR:
    kwargs.pop("pretrained_cfg", None)
    if "num_classes" in kwargs:                  # the trainer's name for out_channels
        kwargs["out_channels"] = kwargs.pop("num_classes")
    return UNETR(**{**defaults, **kwargs})


@register_model
def unetr_btcv(**kwargs):
    """The paper's BTCV model (Hatamizadeh et al. §4.2): 96³ CT crops, 1 channel in, 14 classes
    (13 organs + background), feature_size 16, ViT-B (hidden 768, MLP 3072, 12 heads, 12 blocks),
    instance norm, residual conv blocks: 92,802,478 parameters, the count of MONAI's UNETR built
    with the same arguments (tests/test_models_unetr.py), 18,432 of them MONAI's unused
    cross-attention norms."""
    return _unetr(dict(in_channels=1, out_channels=14, img_size=96, feature_size=16, hidden_size=768,
                       mlp_dim=3072, num_heads=12, norm_name="instance", res_block=True), kwargs)


@register_model
def unetr_tiny(**kwargs):
    """A CPU-sized UNETR for the generated 32³ volumes (minivit.data.volumes): 1 channel in, 4
    classes (background + 3 shapes).

    Design: the patch stays 16³ (the decoder's four ×2 steps are UNETR), so a 32³ volume is a
    2×2×2 grid of 8 tokens and the transformer is almost free; the cost is the conv decoder at
    the volume's own resolution, which scales with feature_size² × voxels. feature_size 8 keeps
    the full-resolution convs at 8 channels (32³ × 27 × 8 × 8 ≈ 57M MACs for one 3³ conv) and
    the widest decoder level at 64 channels on 4³; hidden 96 with 4 heads of 24 and a 4× MLP is
    the smallest ViT that still has several heads and is wider than the 64-channel skip it feeds.
    """
    return _unetr(dict(in_channels=1, out_channels=4, img_size=32, feature_size=8, hidden_size=96, mlp_dim=384,
                       num_heads=4, norm_name="instance", res_block=True), kwargs)
