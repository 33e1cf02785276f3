"""MViT v1 on video: Multiscale Vision Transformers (Fan et al., 2021, "Multiscale Vision
Transformers"), as torchvision's ``torchvision.models.video.MViT`` builds it.

A clip (B, 3, T, H, W) is cut into overlapping space-time cubes by one 3-D convolution
(3×7×7, stride 2×4×4 for MViT-B: 16×224² → 8×56×56 = 25,088 tokens of width 96), a class
token goes in front, and a *separable* position embedding is added:

    E_pos(t, y, x) = E_time[t] + E_space[y·W + x]            (the class token: its own E_cls)

— T + H·W vectors instead of T·H·W, so it grows with the clip's length and area separately.
Then 16 **multiscale blocks** in four stages. Each is a pre-norm transformer block whose
attention is multi-head **pooling attention** (MHPA, §3.1; :mod:`minivit.layers.pooling_attention`
holds the 2-D form): after the linear maps, Q, K and V are each pooled on the (T, H, W) token grid
by a depth-wise 3×3×3 conv shared by the heads, then LayerNormed; the class token passes by::

    x_n = LN(x)
    x   = MaxPool(x) + DropPath(Proj(softmax(P_Q(Q) P_K(K)ᵀ/√d) P_V(V)))       pool_skip, attn
    x   = x or Linear(LN(x)) + DropPath(MLP(LN(x)))                             project, mlp

* **Resolution.** P_Q has stride 1×2×2 in the first block of stages 2-4 (torchvision's
  ``stride_q``): the block's output has 4× fewer tokens (8×56² → 8×28² → 8×14² → 8×7²), and
  its shortcut is max-pooled (kernel s + 1, stride s) to match. Time is never pooled.
* **Keys and values** are pooled more, with a stride divided by the query stride at every stage
  (``stride_kv`` 1×8×8, 1×4×4, 1×2×2, 1×1×1, "adaptive" in the authors' code): each query attends
  to an 8×7×7 grid of 392 keys, not 25,088 (8×14×14 in a stage's first block, which pools the
  previous stage's finer grid).
* **Channels** double at the *end* of each stage: the last block's MLP widens (96 → 192 …
  → 768) and its shortcut goes through ``project`` (a Linear on LN(x)); the heads double with
  them (1, 2, 4, 8), so every head is 96 wide. (v2 widens in the attention instead,
  ``proj_after_attn=True``, as :mod:`minivit.models.mvitv2` with ``expand_attn``.)

The final LayerNorm'd class token goes to the head (dropout 0.5, Linear). MViT-B 16×4 (16
frames, every 4th): 36,610,672 parameters, 70.6 GMACs per view (counted; see models/papers.py).

The configuration is torchvision's: one :class:`MSBlockConfig` *per block* (heads, input and output
channels, q and kv pooling kernels and strides; an empty list means no pooling), and the model
flags ``residual_pool`` (MViT v2's Z = Attn + Q̂; off in v1), ``residual_with_cls_embed`` (whether
that residual includes the class token), ``proj_after_attn`` (widen in the attention rather than
the MLP). v2's decomposed 3-D relative positions (``rel_pos_embed=True``) are not implemented.
The input is torchvision's (B, C, T, H, W); a (B, C, H, W) batch is read as one frame, as there.

Parameter names are torchvision's, so its state_dict loads as is::

    conv_proj                                        Conv3d 3 → C₀, 3×7×7 stride 2×4×4
    pos_encoding.class_token / .class_pos            (C₀,) each
    pos_encoding.spatial_pos / .temporal_pos         (H'·W', C₀), (T', C₀)
    blocks.{i}.norm1 / .norm2                        LayerNorms (eps 1e-6)
    blocks.{i}.attn.qkv, .attn.project.0             Linear C → 3C, C → C
    blocks.{i}.attn.pool_{q,k,v}.pool                depth-wise Conv3d (head_dim channels, no bias)
    blocks.{i}.attn.pool_{q,k,v}.norm_act.0          LayerNorm over head_dim
    blocks.{i}.mlp.0 / .mlp.3                        Linear C → 4C → C_out (GELU between)
    blocks.{i}.project                               Linear C → C_out, where the width grows
    norm, head.1

``minivit.convert.from_torchvision`` builds the model from a torchvision ``MViT`` and loads it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np

import minivit.functional as F
from minivit import nn
from minivit.layers.patch_embed import check_clip, to_2tuple
from minivit.layers.pooling_attention import pool_grid_tokens
from minivit.models.registry import register_model


@dataclass
class MSBlockConfig:
    """One block, torchvision's fields: an empty kernel/stride list means 1 (no pooling)."""
    num_heads: int
    input_channels: int
    output_channels: int
    kernel_q: list = field(default_factory=list)
    kernel_kv: list = field(default_factory=list)
    stride_q: list = field(default_factory=list)
    stride_kv: list = field(default_factory=list)


def _pools(kernel, stride) -> bool:
    """torchvision's rule: a pooling module exists unless kernel and stride are both all ones."""
    return int(np.prod(kernel)) > 1 or int(np.prod(stride)) > 1


class Pool(nn.Module):
    """A pooling on the (T, H, W) grid of tokens (…, 1 + T·H·W, C), the class token passing by,
    then an optional norm (on every token): torchvision's ``Pool``, names ``pool``, ``norm_act.0``.
    ``forward(x, thw)`` → (pooled tokens, (T', H', W'))."""

    def __init__(self, pool: nn.Module, norm: nn.Module | None = None):
        super().__init__()
        self.pool = pool
        self.norm_act = nn.Sequential(norm) if norm is not None else None

    def forward(self, x, thw):
        x, thw = pool_grid_tokens(x, self.pool, tuple(thw), n_prefix=1)    # (…, 1 + T'H'W', C)
        return (self.norm_act(x) if self.norm_act is not None else x), thw


class MultiscaleAttention(nn.Module):
    """Multi-head pooling attention on a (T, H, W) grid: ``forward(x, thw)`` (B, 1 + T·H·W, C) →
    ((B, 1 + T'·H'·W', C_out), (T', H', W')), the grid of the pooled queries.

    Q, K, V pooled by depth-wise Conv3d + LayerNorm over the head_dim channels, shared by the heads
    (padding kernel // 2). ``residual_pool`` adds the pooled queries to the output (MViT v2), to
    the class token's row too with ``residual_with_cls_embed``. ``dropout`` follows ``project``.
    """

    def __init__(self, embed_dim: int, output_dim: int, num_heads: int, kernel_q=(), kernel_kv=(), stride_q=(),
                 stride_kv=(), residual_pool: bool = False, residual_with_cls_embed: bool = True,
                 dropout: float = 0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        if output_dim % num_heads:
            raise ValueError(f"MultiscaleAttention: output_dim ({output_dim}) must be divisible by num_heads "
                             f"({num_heads})")
        self.embed_dim, self.output_dim, self.num_heads = embed_dim, output_dim, num_heads
        self.head_dim = output_dim // num_heads
        self.scaler = self.head_dim ** -0.5
        self.residual_pool, self.residual_with_cls_embed = residual_pool, residual_with_cls_embed
        self.qkv = nn.Linear(embed_dim, 3 * output_dim)
        self.project = nn.Sequential(nn.Linear(output_dim, output_dim), *([nn.Dropout(dropout)] if dropout > 0 else []))
        self.pool_q = self._pool(kernel_q, stride_q, norm_layer) if _pools(kernel_q, stride_q) else None
        pool_kv = _pools(kernel_kv, stride_kv)
        self.pool_k = self._pool(kernel_kv, stride_kv, norm_layer) if pool_kv else None
        self.pool_v = self._pool(kernel_kv, stride_kv, norm_layer) if pool_kv else None

    def _pool(self, kernel, stride, norm_layer):
        kernel, stride = tuple(kernel) or (1, 1, 1), tuple(stride) or (1, 1, 1)
        conv = nn.Conv3d(self.head_dim, self.head_dim, kernel, stride=stride, padding=tuple(k // 2 for k in kernel),
                         groups=self.head_dim, bias=False)
        return Pool(conv, norm_layer(self.head_dim))

    def forward(self, x, thw):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        k_thw = thw                                                          # q, k, v each (B, h, N, d)
        if self.pool_k is not None:
            k, k_thw = self.pool_k(k, thw)                                   # (B, h, 1 + N_kv, d)
        if self.pool_v is not None:
            v, _ = self.pool_v(v, thw)
        if self.pool_q is not None:
            q, thw = self.pool_q(q, thw)                                     # (B, h, 1 + N_q, d)
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scaler)      # (B, h, 1 + N_q, d)
        if self.residual_pool:                                               # Z = Attn(Q̂, K̂, V̂) + Q̂
            if self.residual_with_cls_embed:
                x = x + q
            else:                                                            # the class token's row left out
                x = F.cat([x[:, :, :1], x[:, :, 1:] + q[:, :, 1:]], dim=2)
        x = x.transpose(1, 2).reshape(B, -1, self.output_dim)                # heads side by side (B, 1 + N_q, C)
        return self.project(x), thw

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, output_dim={self.output_dim}, num_heads={self.num_heads}"


class MultiscaleBlock(nn.Module):
    """Pre-norm block with pooling attention: ``forward(x, thw)`` (B, 1 + T·H·W, C_in) →
    ((B, 1 + T'·H'·W', C_out), (T', H', W')).

    v1 (``proj_after_attn=False``): the attention keeps C_in, the MLP widens to C_out and the
    MLP's shortcut is ``project(LN(x))``; v2 widens in the attention and projects its shortcut.
    The attention's shortcut is max-pooled to the query grid when ``stride_q`` > 1.
    """

    def __init__(self, cnf: MSBlockConfig, residual_pool: bool = False, residual_with_cls_embed: bool = True,
                 proj_after_attn: bool = False, dropout: float = 0.0, stochastic_depth_prob: float = 0.0,
                 norm_layer=nn.LayerNorm):
        super().__init__()
        self.proj_after_attn = proj_after_attn
        self.pool_skip = None
        if int(np.prod(cnf.stride_q)) > 1:
            kernel_skip = tuple(s + 1 if s > 1 else s for s in cnf.stride_q)
            self.pool_skip = Pool(nn.MaxPool3d(kernel_skip, stride=tuple(cnf.stride_q),
                                               padding=tuple(k // 2 for k in kernel_skip)))
        attn_dim = cnf.output_channels if proj_after_attn else cnf.input_channels
        self.norm1 = norm_layer(cnf.input_channels)
        self.norm2 = norm_layer(attn_dim)
        self.attn = MultiscaleAttention(
            cnf.input_channels, attn_dim, cnf.num_heads, kernel_q=cnf.kernel_q, kernel_kv=cnf.kernel_kv,
            stride_q=cnf.stride_q, stride_kv=cnf.stride_kv, residual_pool=residual_pool,
            residual_with_cls_embed=residual_with_cls_embed, dropout=dropout, norm_layer=norm_layer)
        # torchvision.ops.MLP: Linear, GELU, Dropout, Linear, Dropout (keys mlp.0, mlp.3)
        self.mlp = nn.Sequential(nn.Linear(attn_dim, 4 * attn_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * attn_dim, cnf.output_channels), nn.Dropout(dropout))
        self.stochastic_depth = nn.DropPath(stochastic_depth_prob)   # per sample, both branches
        self.project = (nn.Linear(cnf.input_channels, cnf.output_channels)
                        if cnf.input_channels != cnf.output_channels else None)

    def forward(self, x, thw):
        x_norm1 = self.norm1(x)
        x_attn, thw_new = self.attn(x_norm1, thw)                               # (B, 1 + N', C_attn)
        if self.project is not None and self.proj_after_attn:
            x = self.project(x_norm1)
        x_skip = x if self.pool_skip is None else self.pool_skip(x, thw)[0]     # (B, 1 + N', C_attn)
        x = x_skip + self.stochastic_depth(x_attn)
        x_norm2 = self.norm2(x)
        x_proj = self.project(x_norm2) if self.project is not None and not self.proj_after_attn else x
        return x_proj + self.stochastic_depth(self.mlp(x_norm2)), thw_new      # (B, 1 + N', C_out)


class PositionalEncoding(nn.Module):
    """The class token and the separable space-time position embedding (§4.1):
    (B, T·H·W, C) → (B, 1 + T·H·W, C), token 1 + t·HW + p getting temporal_pos[t] + spatial_pos[p]
    and the class token class_pos."""

    def __init__(self, embed_size: int, spatial_size, temporal_size: int):
        super().__init__()
        self.spatial_size, self.temporal_size = tuple(spatial_size), temporal_size
        H, W = self.spatial_size
        self.class_token = nn.Parameter(np.zeros(embed_size, dtype=np.float32))
        self.spatial_pos = nn.Parameter(np.zeros((H * W, embed_size), dtype=np.float32))
        self.temporal_pos = nn.Parameter(np.zeros((temporal_size, embed_size), dtype=np.float32))
        self.class_pos = nn.Parameter(np.zeros(embed_size, dtype=np.float32))

    def forward(self, x):
        B, _, C = x.shape
        T, HW = self.temporal_size, self.spatial_pos.shape[0]
        x = F.cat([self.class_token.reshape(1, 1, C).expand(B, 1, C), x], dim=1)       # (B, 1 + THW, C)
        pos = (self.temporal_pos.reshape(T, 1, C) + self.spatial_pos.reshape(1, HW, C)).reshape(T * HW, C)
        return x + F.cat([self.class_pos.reshape(1, C), pos], dim=0)                    # (1 + THW, C) broadcast


class MViT(nn.Module):
    """MViT on clips (B, in_chans, T, H, W) → logits (B, num_classes); torchvision's arguments.

    ``spatial_size`` (H, W) and ``temporal_size`` T are the clip the model is built for: the
    position embedding has one entry per cell of the stem's grid, so only that size runs.
    ``block_setting``: one :class:`MSBlockConfig` per block (see :func:`mvit_v1_block_setting`).
    ``dropout``: before the head (torchvision's default 0.5); ``attention_dropout``: after each
    block's output projection and MLP layers; ``stochastic_depth_prob`` grows linearly from 0 at
    the first block to its value at the last. ``rel_pos_embed=True`` (MViT v2's 3-D relative
    positions) is not implemented.
    """

    task = "video"              # what the trainer reads (python -m minivit.train --task video)
    clip_layout = "BCTHW"       # torchvision's; the trainer's clips are (B, T, C, H, W) and get permuted

    def __init__(self, spatial_size=(224, 224), temporal_size: int = 16, block_setting=None,
                 residual_pool: bool = False, residual_with_cls_embed: bool = True, rel_pos_embed: bool = False,
                 proj_after_attn: bool = False, dropout: float = 0.5, attention_dropout: float = 0.0,
                 stochastic_depth_prob: float = 0.0, num_classes: int = 400, norm_layer=None,
                 patch_embed_kernel=(3, 7, 7), patch_embed_stride=(2, 4, 4), patch_embed_padding=(1, 3, 3),
                 in_chans: int = 3):
        super().__init__()
        block_setting = list(block_setting) if block_setting is not None else mvit_v1_block_setting()
        if not block_setting:
            raise ValueError("MViT: block_setting is empty; give one MSBlockConfig per block")
        if rel_pos_embed:
            raise ValueError("MViT: rel_pos_embed=True (MViT v2's decomposed 3-D relative positions) is not "
                             "implemented in minivit; MViT v1's separable absolute embedding (False) is")
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self.spatial_size, self.temporal_size = to_2tuple(spatial_size), temporal_size
        self.num_classes, self.in_chans = num_classes, in_chans
        self.block_setting = block_setting
        self.residual_pool, self.residual_with_cls_embed = residual_pool, residual_with_cls_embed
        self.proj_after_attn = proj_after_attn

        C0 = block_setting[0].input_channels
        self.conv_proj = nn.Conv3d(in_chans, C0, patch_embed_kernel, stride=patch_embed_stride,
                                   padding=patch_embed_padding)
        size = (temporal_size,) + self.spatial_size
        grid = tuple(n // s for n, s in zip(size, self.conv_proj.stride))
        real = tuple((n + 2 * p - k) // s + 1 for n, k, s, p in
                     zip(size, self.conv_proj.kernel_size, self.conv_proj.stride, self.conv_proj.padding))
        if real != grid or min(grid) < 1:
            raise ValueError(f"MViT: the stem turns a {'×'.join(map(str, size))} clip (T×H×W) into a "
                             f"{'×'.join(map(str, real))} grid, but the position embedding is sized "
                             f"size // stride = {'×'.join(map(str, grid))} (as torchvision); use sizes divisible "
                             f"by patch_embed_stride={tuple(self.conv_proj.stride)}")
        self.pos_encoding = PositionalEncoding(C0, grid[1:], grid[0])

        n = len(block_setting)
        blocks = []
        for i, cnf in enumerate(block_setting):
            if i and cnf.input_channels != block_setting[i - 1].output_channels:
                raise ValueError(f"MViT: block {i} takes {cnf.input_channels} channels but block {i - 1} gives "
                                 f"{block_setting[i - 1].output_channels}")
            blocks.append(MultiscaleBlock(
                cnf, residual_pool=residual_pool, residual_with_cls_embed=residual_with_cls_embed,
                proj_after_attn=proj_after_attn, dropout=attention_dropout,
                stochastic_depth_prob=stochastic_depth_prob * i / max(n - 1, 1), norm_layer=norm_layer))
        self.blocks = nn.ModuleList(blocks)
        self.num_features = block_setting[-1].output_channels
        self.norm = norm_layer(self.num_features)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, num_classes))
        self.init_weights()

    def init_weights(self):
        """torchvision's init: Linear weights ~ trunc_normal(std .02) with zero bias, LayerNorms 1/0,
        the class token and position embeddings ~ trunc_normal(std .02); convs keep their default."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for p in self.pos_encoding.parameters():
            nn.init.trunc_normal_(p, std=0.02)

    def no_weight_decay(self) -> set:
        return {f"pos_encoding.{k}" for k, _ in self.pos_encoding.named_parameters()}

    # ------------------------------------------------------------------ forward
    def _check_clip(self, x):
        if x.ndim == 4:                     # (B, C, H, W): one frame, as torchvision
            x = x.unsqueeze(2)
        check_clip(x, self.temporal_size, self.spatial_size, self.in_chans, type(self).__name__, layout="BCTHW",
                   names=("temporal_size", "spatial_size"))
        return x

    def forward_features(self, x):
        """Clip (B, C, T, H, W) → the final normalised tokens (B, 1 + T'·H'·W', C_last), class token first."""
        x = self._check_clip(x)
        x = self.conv_proj(x)                                           # (B, C₀, T', H', W')
        thw = tuple(x.shape[2:])
        x = self.pos_encoding(x.flatten(2).transpose(1, 2))             # (B, 1 + T'H'W', C₀)
        for block in self.blocks:
            x, thw = block(x, thw)                                      # (B, 1 + T_i·H_i·W_i, C_i)
        return self.norm(x)

    def forward_head(self, x, pre_logits: bool = False):
        x = x[:, 0]                                                     # (B, C): the class token
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# =========================================================================== configurations
def mvit_v1_block_setting(depths=(1, 2, 11, 2), embed_dim: int = 96, num_heads: int = 1, kernel=(3, 3, 3),
                          stride_q=(1, 2, 2), stride_kv=(1, 8, 8)) -> list:
    """MViT v1's blocks from its stages (the paper's MViT-B, torchvision's lists for mvit_v1_b).

    Stage i has ``depths[i]`` blocks at width embed_dim·2^i with num_heads·2^i heads; its first
    block (stages 2, 3, …) pools the queries by ``stride_q`` with ``kernel``; its last block widens
    to the next stage's width (the MLP does, v1), except in the last stage. Keys and values are
    pooled with ``kernel`` in every block, the stride starting at ``stride_kv`` and divided by
    ``stride_q`` every stage (never below 1), so the key/value grid keeps its size from stage to stage.
    """
    blocks, s_kv, n = [], tuple(stride_kv), len(depths)
    for i, depth in enumerate(depths):
        dim, heads = embed_dim * 2 ** i, num_heads * 2 ** i
        if i:
            s_kv = tuple(max(a // b, 1) for a, b in zip(s_kv, stride_q))
        for j in range(depth):
            pool_q = i > 0 and j == 0
            out = dim * 2 if j == depth - 1 and i < n - 1 else dim
            blocks.append(MSBlockConfig(heads, dim, out, kernel_q=list(kernel) if pool_q else [],
                                        kernel_kv=list(kernel), stride_q=list(stride_q) if pool_q else [],
                                        stride_kv=list(s_kv)))
    return blocks


def _mvit(defaults: dict, kwargs: dict) -> MViT:
    """A factory's MViT; ``drop_path_rate`` (the trainer's --drop-path) is stochastic_depth_prob."""
    if "drop_path_rate" in kwargs:
        kwargs["stochastic_depth_prob"] = kwargs.pop("drop_path_rate")
    return MViT(**dict(defaults, **kwargs))


@register_model
def mvit_v1_b(**kwargs):
    """MViT-B 16×4 (the paper's Kinetics-400 table; torchvision's ``mvit_v1_b``, block for block):
    depths 1/2/11/2, widths 96/192/384/768, heads 1/2/4/8, 16 frames of 224², 400 classes,
    stochastic depth 0.2, head dropout 0.5. 36,610,672 parameters; 70.6 GMACs per view (one clip)."""
    return _mvit(dict(spatial_size=(224, 224), temporal_size=16, block_setting=mvit_v1_block_setting(),
                      residual_pool=False, residual_with_cls_embed=False, stochastic_depth_prob=0.2,
                      num_classes=400), kwargs)


@register_model
def mvit_v1_tiny(**kwargs):
    """An MViT v1 for 8-frame 32×32 clips on a CPU (the generated motion clips, ``minivit.data.motion``;
    two classes): 291,122 parameters, 14.8M MACs per clip.

    Design: the stem is MViT-B's cube shrunk to the frame — 3×5×5, stride 2×4×4 (padding 1×2×2):
    4×8×8 = 256 tokens of width 24. A cube spans 3 frames, so it sees a shape move 2-4 px
    within its window: the first layer can already tell the direction. Three stages, depths
    1/1/2, widths 24/48/96, heads 1/2/4 (head width 24): queries pooled 1×2×2 at the first block
    of stages 2 and 3 (4×8² → 4×4² → 4×2² tokens); keys and values pooled with the 3×3×3 kernel
    and stride 1×4×4, then 1×2×2, then 1×1×1, as MViT-B's 1×8×8 … 1×1×1 at 224²: 16 keys per query
    in the first and last block, 64 in the two pooling blocks (they pool the previous, finer grid).
    The last stage has two blocks, not one: a stage's first block pools the grid tokens' queries,
    and in a one-block last stage only the class token's query would reach the head (the pooling
    conv would get no gradient). No dropout or stochastic depth (a few epochs on 2,000 clips).
    """
    blocks = mvit_v1_block_setting(depths=(1, 1, 2), embed_dim=24, num_heads=1, stride_kv=(1, 4, 4))
    return _mvit(dict(spatial_size=(32, 32), temporal_size=8, block_setting=blocks, residual_pool=False,
                      residual_with_cls_embed=False, dropout=0.0, num_classes=2, patch_embed_kernel=(3, 5, 5),
                      patch_embed_stride=(2, 4, 4), patch_embed_padding=(1, 2, 2)), kwargs)
