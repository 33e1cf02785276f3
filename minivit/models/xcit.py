"""XCiT, the Cross-Covariance Image Transformer: "XCiT: Cross-Covariance Image Transformers"
(El-Nouby, Touvron, Caron, Bojanowski, Douze, Joulin, Laptev, Neverova, Synnaeve, Verbeek,
Jégou, 2021).

Self-attention costs 2N²C for N tokens: doubling the resolution makes it 16× dearer, which
is why ViT-style models use coarse 16×16 patches and why Swin and PVT restrict or shrink
the attention. XCiT "transposes" attention instead (§3.2): each head attends between its
d channels, a d × d map built from the keys' and queries' cross-covariance over the tokens,
so the cost is 2NC²/h — linear in N, like a convolution — while every token still
contributes to the map (``layers/xca.py``). What XCA gives up, direct token-to-token
exchange, local patch interaction (LPI, two depthwise 3×3 convs) puts back (§3.3).

    stem      : ConvPatchEmbed: log₂P stride-2 3×3 convs with BN and GELU  → (B, N, C), N = HW/P²
                + a Fourier position encoding (sinusoids → 1×1 conv), computed for any grid
    depth ×   : XCABlock      x += γ₁·XCA(LN x);  x += γ₃·LPI(LN x);  x += γ₂·FFN(LN x)
    then      : [cls; x] → cls_attn_layers × ClassAttentionBlock (CaiT: only the class token queries)
    head      : LayerNorm → class token → Linear

The patch tokens never see the class token while they are processed (CaiT's separation
of the two roles, §3.3); all learnable scales γ start at ``eta`` (1.0 in the released models).

Constructor keywords and state_dict keys are timm's ``Xcit`` (``patch_embed.proj.0.0``,
``pos_embed.token_projection``, ``cls_token``, ``blocks.0.attn.qkv``, ``blocks.0.attn.temperature``,
``blocks.0.local_mp.conv1``, ``blocks.0.gamma1``, ``cls_attn_blocks.0.attn.q``, ``norm``, ``head``).
"""
from __future__ import annotations

from functools import partial

import numpy as np

import minivit.functional as F
from minivit import nn
from minivit.layers.xcit_blocks import ClassAttentionBlock, ConvPatchEmbed, PositionalEncodingFourier, XCABlock
from minivit.models.registry import register_model


class Xcit(nn.Module):
    """XCiT on images (B, in_chans, H, W) → logits (B, num_classes); H and W any multiple of
    ``patch_size`` (the position encoding is computed for the grid at hand; ``img_size`` only
    checks the stem).

    ``global_pool``: 'token' (the class token, the paper's), 'avg' (mean of the patch tokens
    after the class-attention layers) or '' (the head on every token). ``drop_path_rate`` is
    the same for every XCiT layer (not linear in depth, as in the authors' code); the
    class-attention layers have none. ``tokens_norm``: see ``ClassAttentionBlock``.
    """

    def __init__(self, img_size=224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "token", embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 pos_drop_rate: float = 0.0, proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, act_layer=None, norm_layer=None, cls_attn_layers: int = 2,
                 use_pos_embed: bool = True, eta: float = 1.0, tokens_norm: bool = False):
        super().__init__()
        if global_pool not in ("", "avg", "token"):
            raise ValueError(f"Xcit: global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        if embed_dim % num_heads:
            raise ValueError(f"Xcit: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        act_layer = act_layer or nn.GELU
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1

        self.patch_embed = ConvPatchEmbed(img_size, patch_size, in_chans, embed_dim, act_layer=act_layer)
        self.cls_token = nn.Parameter(np.zeros((1, 1, embed_dim), dtype=np.float32))
        self.pos_embed = PositionalEncodingFourier(dim=embed_dim) if use_pos_embed else None
        self.pos_drop = nn.Dropout(pos_drop_rate)

        common = dict(num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                      attn_drop=attn_drop_rate, act_layer=act_layer, norm_layer=norm_layer, eta=eta)
        self.blocks = nn.ModuleList([XCABlock(embed_dim, drop_path=drop_path_rate, **common)
                                     for _ in range(depth)])
        self.cls_attn_blocks = nn.ModuleList([ClassAttentionBlock(embed_dim, tokens_norm=tokens_norm, **common)
                                              for _ in range(cls_attn_layers)])
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self):
        """timm's XCiT init: class token ~ TruncNormal(std .02), every Linear ~ TruncNormal(std .02)
        with zero bias; convs and norms keep their PyTorch defaults, γ = eta, temperature = 1."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self):
        """The class token, the position encoding's projection (timm's ``pos_embed.*``) and XCA's
        temperatures (the authors' ``XCA.no_weight_decay``); biases and norms are skipped anyway."""
        return {"cls_token", "pos_embed.token_projection.weight", "temperature"}

    def forward_features(self, x):
        """(B, C_in, H, W) → all tokens after the class-attention layers and the final norm, (B, 1 + N, C)."""
        B = x.shape[0]
        x, (Hp, Wp) = self.patch_embed(x)                                # (B, N, C), grid Hp × Wp
        if self.pos_embed is not None:
            pos = self.pos_embed(B, Hp, Wp)                              # (B, C, Hp, Wp)
            x = x + pos.flatten(2).transpose(1, 2)                       # (B, N, C)
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = blk(x, Hp, Wp)
        x = self.forward_cls(x)                                          # (B, 1 + N, C)
        return self.norm(x)

    def forward_cls(self, x):
        """Prepend the class token and run the class-attention layers: (B, N, C) → (B, 1 + N, C)."""
        x = F.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.cls_attn_blocks:
            x = blk(x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)                # (B, C)
        elif self.global_pool == "token":
            x = x[:, 0]                                                  # (B, C)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# =========================================================================== configurations
def _xcit(defaults, kwargs):
    return Xcit(**dict(defaults, **kwargs))


@register_model
def xcit_tiny(**kwargs):
    """CIFAR-10 XCiT: XCiT-N12's layers (width 128, 12 XCiT layers, 4 heads of 32 channels,
    2 class-attention layers, MLP ratio 4) on a stem made for 32×32: 2,903,674 parameters.

    The paper's P = 16 stem would leave a 2×2 grid of a 32×32 image, P = 8 (timm's other
    stem) 4×4 = 16 tokens, too few for LPI's 3×3 convs to mean much. The same stem rule with
    two stride-2 convs (3 → 64 → 128) gives P = 4: an 8×8 grid of 64 tokens, the grid of
    ``vit_tiny`` and ``pit_tiny``'s middle stage. XCA does not care about N (a 32 × 32 map per
    head whatever the grid), so the tokens cost only in the linear layers and convs.
    """
    return _xcit(dict(img_size=32, patch_size=4, num_classes=10, embed_dim=128, depth=12, num_heads=4,
                      eta=1.0, tokens_norm=False), kwargs)


@register_model
def xcit_nano_12_p16_224(**kwargs):
    """XCiT-N12/16 (XCiT Table 1: 3.05M, 0.56 GMACs): width 128, 12 layers, 4 heads, 14×14 tokens."""
    return _xcit(dict(patch_size=16, embed_dim=128, depth=12, num_heads=4, eta=1.0, tokens_norm=False), kwargs)


@register_model
def xcit_tiny_12_p16_224(**kwargs):
    """XCiT-T12/16 (6.7M, 1.24 GMACs): width 192, 12 layers, 4 heads (48 channels each)."""
    return _xcit(dict(patch_size=16, embed_dim=192, depth=12, num_heads=4, eta=1.0, tokens_norm=True), kwargs)


@register_model
def xcit_small_12_p16_224(**kwargs):
    """XCiT-S12/16 (26M, 4.8 GMACs): width 384, 12 layers, 8 heads (48 channels each)."""
    return _xcit(dict(patch_size=16, embed_dim=384, depth=12, num_heads=8, eta=1.0, tokens_norm=True), kwargs)
