"""TimeSformer: "Is Space-Time Attention All You Need for Video Understanding?"
(Bertasius, Wang & Torresani, ICML 2021).

ViT on video, with as little change as possible (§3):

    a clip (T, C, H, W) → each frame cut into N = HW/P² patches, embedded by the same
    patch conv (ViT's E, per frame) → N·T tokens of width D, plus one class token
    z₀ = [x_class; x_(p,t) E + E_pos(p) + E_time(t)]       a spatial and a temporal embedding
    L blocks of space-time self-attention → the class token → LayerNorm → linear head

The paper compares ways of letting the tokens attend (§3, Table 1, Fig. 1); the
``attention_type`` argument picks one (Hugging Face's names):

* ``'divided_space_time'`` (the paper's best, "T+S"): per block, attention over time at each
  patch position, then over space within each frame
  (:class:`~minivit.layers.divided_space_time.DividedSpaceTimeBlock`); attention cost
  2·(N·T² + T·(N+1)²)·D per block;
* ``'joint_space_time'`` ("ST"): one attention over all 1 + N·T tokens, 2·(1 + NT)²·D —
  T times the divided cost's dominant term, and 2·(1+NT)² scores per head in memory;
* ``'space_only'`` ("S"): each frame is a separate image (a ViT over B·T images, each with
  its own class token); the frames' final tokens are averaged before the last LayerNorm.
  It never compares frames, so it cannot tell which way anything moves.

Tokens are patch-major (token 1 + n·T + t: patch n of frame t), as the released code and
Hugging Face's port; space-only keeps frames as separate sequences (B·T, 1 + N, D) and has
no temporal embedding. Input is (B, T, C, H, W), the layout of Hugging Face's port
(``pixel_values``); the released code's (B, C, T, H, W) is one ``permute(0, 2, 1, 3, 4)`` away.
Parameter names are the released code's (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``time_embed``, ``blocks.{i}.…``, ``norm``, ``head``); ``minivit.convert.timesformer``
renames Hugging Face's.
"""
from __future__ import annotations

from functools import partial

import numpy as np

import minivit.functional as F
from minivit import nn
from minivit.layers.block import Block
from minivit.layers.divided_space_time import DividedSpaceTimeBlock
from minivit.layers.patch_embed import PatchEmbed, check_clip, to_2tuple
from minivit.models.registry import register_model

ATTENTION_TYPES = ("divided_space_time", "space_only", "joint_space_time")
TIME_EMBED_INITS = ("zeros", "sincos", "normal")


def sincos_table(length: int, dim: int) -> np.ndarray:
    """The Transformer's sinusoidal table (Vaswani et al., 2017), (length, dim) float32: row t is
    sin(t·ωᵢ) in the first ⌈dim/2⌉ columns and cos(t·ωᵢ) in the rest, ωᵢ = 10000^(−2i/dim). Every row
    differs from every other, and each column changes smoothly with t."""
    ang = np.arange(length)[:, None] / 10000.0 ** (np.arange((dim + 1) // 2)[None] * 2 / dim)
    return np.concatenate([np.sin(ang), np.cos(ang[:, :dim // 2])], axis=1).astype(np.float32)


class TimeSformer(nn.Module):
    """TimeSformer on clips (B, T, in_chans, H, W) → logits (B, num_classes).

    Arguments are the released code's (``img_size``, ``patch_size``, ``num_frames``,
    ``attention_type``, ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``qkv_bias``,
    ``drop_rate``, ``attn_drop_rate``, ``drop_path_rate``). ``drop_path_rate`` grows
    linearly from 0 at the first block to its value at the last (the released code's default
    is 0.1; 0 here, as minivit's ViT). The clip must have ``num_frames`` frames of ``img_size``:
    the time embedding has one entry per frame.

    Initialisation for training from scratch (not the released code's; its init is the default,
    and converted weights replace the init anyway): ``time_embed_init`` is ``'zeros'`` (the released
    code's: the model starts exactly blind to frame order), ``'sincos'`` (the Transformer's
    sinusoidal table, :func:`sincos_table`, times ``time_embed_scale``) or ``'normal'`` (a normal of
    std ``time_embed_scale`` cut at ±2 std); ``init_std`` is the std of every Linear weight (the
    released code's 0.02, chosen for width 768). ``timesformer_tiny`` learns the motion clips with
    ``time_embed_init='sincos', init_std=0.125`` (``benchmarks/video_runs.py``), not with the released init.
    """

    task = "video"          # what the trainer reads (python -m minivit.train --task video)

    def __init__(self, img_size=224, patch_size=16, in_chans: int = 3, num_classes: int = 400,
                 num_frames: int = 8, attention_type: str = "divided_space_time", embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_layer=None, act_layer=None, time_embed_init: str = "zeros", time_embed_scale: float = 1.0,
                 init_std: float = 0.02):
        super().__init__()
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(f"TimeSformer: attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}")
        if num_frames < 1:
            raise ValueError(f"TimeSformer: num_frames must be at least 1, got {num_frames}")
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        act_layer = act_layer or nn.GELU
        self.num_classes, self.in_chans, self.num_frames = num_classes, in_chans, num_frames
        self.attention_type = attention_type
        if time_embed_init not in TIME_EMBED_INITS:
            raise ValueError(f"TimeSformer: time_embed_init must be one of {TIME_EMBED_INITS}, got {time_embed_init!r}")
        self.time_embed_init, self.time_embed_scale = time_embed_init, float(time_embed_scale)
        self.init_std = float(init_std)
        self.num_features = self.embed_dim = embed_dim
        self.img_size = to_2tuple(img_size)

        # z₀: the same patch conv on every frame, a class token, space and time embeddings
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(np.zeros((1, 1, embed_dim), dtype=np.float32))
        self.pos_embed = nn.Parameter(np.zeros((1, num_patches + 1, embed_dim), dtype=np.float32))
        self.pos_drop = nn.Dropout(drop_rate)
        if attention_type != "space_only":
            self.time_embed = nn.Parameter(np.zeros((1, num_frames, embed_dim), dtype=np.float32))
            self.time_drop = nn.Dropout(drop_rate)
        else:
            self.time_embed = None

        dpr = [float(r) for r in np.linspace(0, drop_path_rate, depth)]
        if attention_type == "divided_space_time":
            blocks = [DividedSpaceTimeBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                            proj_drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i],
                                            act_layer=act_layer, norm_layer=norm_layer) for i in range(depth)]
        else:   # joint and space-only: the plain ViT block, on different token sets
            blocks = [Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=drop_rate,
                            attn_drop=attn_drop_rate, drop_path=dpr[i], act_layer=act_layer,
                            norm_layer=norm_layer) for i in range(depth)]
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self):
        """The released code's init: position embedding and class token ~ TruncNormal(std .02),
        time embedding zeros, every Linear ~ TruncNormal(std .02) with zero bias, LayerNorms 1/0;
        with divided attention, ``temporal_fc`` is zero in every block but the first, so each
        later block starts as an image block (its time branch adds nothing). ``time_embed_init``
        and ``init_std`` change the time embedding's start and the Linear weights' std (class docstring)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.time_embed is not None and self.time_embed_init == "sincos":
            self.time_embed.data[...] = self.time_embed_scale * sincos_table(self.num_frames, self.embed_dim)[None]
        elif self.time_embed is not None and self.time_embed_init == "normal":
            s = self.time_embed_scale
            nn.init.trunc_normal_(self.time_embed, std=s, a=-2 * s, b=2 * s)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=self.init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.attention_type == "divided_space_time":
            for blk in list(self.blocks)[1:]:
                nn.init.zeros_(blk.temporal_fc.weight)
                nn.init.zeros_(blk.temporal_fc.bias)

    def no_weight_decay(self):
        """Embeddings that say where, when or which token: no weight decay (the released code's set)."""
        return {"pos_embed", "cls_token"} | ({"time_embed"} if self.time_embed is not None else set())

    # ------------------------------------------------------------------ forward
    def _check_clip(self, x):
        check_clip(x, self.num_frames, self.img_size, self.in_chans, type(self).__name__)

    def forward_tokens(self, x):
        """Clip (B, T, C, H, W) → the tokens after the last block, before any pooling or norm:
        (B, 1 + N·T, D) patch-major, or for ``space_only`` one sequence per frame (B·T, 1 + N, D)."""
        self._check_clip(x)
        B, T, C, H, W = x.shape
        D = self.embed_dim
        x = self.patch_embed(x.reshape(B * T, C, H, W))                     # (B·T, N, D)
        N = x.shape[1]
        cls = self.cls_token.expand(B * T, 1, D)
        x = self.pos_drop(F.cat([cls, x], dim=1) + self.pos_embed)          # (B·T, 1 + N, D), per frame
        if self.attention_type == "space_only":
            for blk in self.blocks:
                x = blk(x)                                                  # each frame alone
            return x
        # One clip sequence: the class token (same in every frame: keep one), then patch-major tokens.
        cls = x[:B, :1]                                                     # (B, 1, D)
        x = x[:, 1:].reshape(B, T, N, D).permute(0, 2, 1, 3)                # (B, N, T, D)
        x = self.time_drop(x + self.time_embed.reshape(1, 1, T, D))
        x = F.cat([cls, x.reshape(B, N * T, D)], dim=1)                     # (B, 1 + N·T, D)
        for blk in self.blocks:
            x = blk(x, T) if self.attention_type == "divided_space_time" else blk(x)
        return x

    def forward_features(self, x):
        """Clip → all tokens after the final norm: (B, 1 + N·T, D), or (B, 1 + N, D) for
        ``space_only``, whose frames' tokens are averaged first (the released code's order)."""
        B = x.shape[0]
        x = self.forward_tokens(x)
        if self.attention_type == "space_only":
            x = x.reshape(B, self.num_frames, x.shape[1], x.shape[2]).mean(dim=1)   # (B, 1 + N, D)
        return self.norm(x)

    def forward_head(self, x, pre_logits: bool = False):
        """Tokens → logits (B, num_classes) from the class token, or its features (B, D)."""
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# =========================================================================== configurations
def _timesformer(defaults, kwargs):
    return TimeSformer(**dict(defaults, **kwargs))


@register_model
def timesformer_base_patch16_224(**kwargs):
    """TimeSformer at the paper's default (§4, Table 1): ViT-B/16 (12 blocks, D = 768, 12 heads,
    MLP 3072) on 8 frames of 224×224, divided space-time attention, Kinetics-400's 400 classes.
    121.4M parameters (ViT-B's 86.6M plus, per block, the time attention and ``temporal_fc``:
    5D² + 6D ≈ 2.95M) and about 196 GMACs per view (ViT-B's 17.6 per frame × 8, plus
    5D² per token per block for the time branch's linear maps)."""
    return _timesformer(dict(img_size=224, patch_size=16, num_frames=8, num_classes=400, embed_dim=768, depth=12,
                             num_heads=12), kwargs)


@register_model
def timesformer_tiny(**kwargs):
    """A TimeSformer for 8-frame 32×32 clips on a CPU (the generated motion clips,
    ``minivit.data.motion``): 231,874 parameters with divided attention (148,162 joint,
    147,650 space-only).

    Design: patch 8 gives a 4×4 grid per frame, 8 × 16 = 128 tokens. A shape of 5-9 px covers
    one to four patches and moves 1-2 px a frame, so it shifts *within* a patch from frame to
    frame: the patch conv (64 filters on 8×8×3 pixels) encodes where in the patch it sits, and
    the time attention at that patch position compares the frames. Patch 4 (an 8×8 grid, 512
    tokens, as ``vit_tiny`` on CIFAR-10) works too but is slow on a CPU: a training step of 32
    clips took 2.8 s divided and 25 s joint (2·513² scores a head a block), about 24× and 300×
    the 0.115 s and 0.083 s of this model (``benchmarks/video_runs.py`` on a quiet machine; the
    patch-4 times were taken on a loaded one). Width 64 (2 heads of 32), 4 blocks, MLP ratio 2. Per clip (counted, and equal
    to ``formulas.timesformer_exact``): divided 31.1M MACs, joint 27.0M, space-only 20.6M; the
    attention scores alone, per block, 2·(16·8² + 8·17²)·64 = 0.43M divided against
    2·129²·64 = 2.13M joint — at 128 tokens the linear maps, which divided has more of, still
    dominate. Two classes: the two directions of ``minivit.data.motion``.

    Built with the released code's init (zero time embedding, Linear std 0.02) it starts exactly
    blind to frame order and does not learn the motion clips; ``benchmarks/video_runs.py`` trains it
    with ``time_embed_init='sincos', init_std=0.125`` (its docstring has the measurements).
    """
    return _timesformer(dict(img_size=32, patch_size=8, num_frames=8, num_classes=2, embed_dim=64, depth=4,
                             num_heads=2, mlp_ratio=2.0), kwargs)
