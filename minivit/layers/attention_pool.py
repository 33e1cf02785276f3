"""Attention pooling with a learned latent query: the "MAP" head ("multihead attention
pooling") of "Scaling Vision Transformers" (Zhai et al., 2022, §3.2), from Set Transformer's
pooling by multihead attention (Lee et al., 2019, PMA).

Instead of reading the class token or the mean token, a learned query ℓ (one vector, the
"latent" or "probe", not a function of the image) attends over the N tokens X (N × C); the
result then goes through a residual MLP, as the second half of a transformer block:

    Q = ℓ W_q          K = X W_k,  V = X W_v                  (latent_len × C, N × C, N × C)
    z = [softmax(Q_j K_jᵀ / √d) V_j]_j W_o                    (latent_len × C; heads j, d = C / heads)
    y = z + MLP(LN(z))                                        then y[0] (or the mean over latents)

The pooled vector is a weighted mean of the value vectors, the weights chosen per head by how
well each token matches the query, so the head can look at different tokens for different
images, and without a class token running through every block. The paper uses it for ViT-g
and calls it "MAP"; timm's ``global_pool='map'`` (SigLIP's heads use it too).

Parameter names are timm's ``AttentionPoolLatent``: ``latent`` (1, latent_len, latent_dim),
``q``, ``kv``, ``proj``, ``norm``, ``mlp.fc1``, ``mlp.fc2`` (and ``pos_embed`` with
``pos_embed='abs'``), so a timm state_dict loads unchanged.

Cost (multiply-accumulates) for L latents: kv 2NC², q and proj 2LC², attention 2LNC, MLP
2·mlp_ratio·LC²: linear in N, against the 4NC² + 2N²C of one more self-attention block.
"""
from __future__ import annotations

import numpy as np

import minivit.functional as F
from minivit import nn
from minivit.layers.mlp import Mlp


class AttentionPoolLatent(nn.Module):
    """Tokens (B, N, in_features) → pooled features (B, out_features), or (B, latent_len,
    out_features) with ``pool_type=''``.

    timm's arguments and defaults: ``embed_dim`` (width of q, k, v; default in_features),
    ``num_heads`` 8, ``mlp_ratio`` 4, ``qkv_bias``, ``q_proj`` (False: the latent is the query
    itself, no ``q`` linear), ``qk_norm`` (a LayerNorm over each head's q and k),
    ``latent_len`` 1, ``latent_dim`` (default embed_dim), ``pos_embed`` ('' or 'abs': a
    learned (feat_size, in_features) table added to the tokens), ``pool_type`` ('token':
    the first latent; 'avg': the mean over latents; '': all of them), ``norm_layer`` (the
    MLP's pre-norm; None is no norm, as timm), ``act_layer`` GELU, ``drop`` (after ``proj``).
    ``out_features=0`` keeps only the attention (no proj, norm or MLP: timm's pre-logits mode).
    ``store_attn = True`` keeps the last attention weights (B, h, latent_len, N) in ``self.attn_map``.
    """

    def __init__(self, in_features: int, out_features: int | None = None, embed_dim: int | None = None,
                 num_heads: int = 8, feat_size: int | None = None, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, q_proj: bool = True, qk_norm: bool = False, latent_len: int = 1,
                 latent_dim: int | None = None, pos_embed: str = "", pool_type: str = "token",
                 norm_layer=None, act_layer=nn.GELU, drop: float = 0.0):
        super().__init__()
        embed_dim = embed_dim or in_features
        out_features = in_features if out_features is None else out_features
        if embed_dim % num_heads:
            raise ValueError(f"AttentionPoolLatent: embed_dim ({embed_dim}) must be divisible by "
                             f"num_heads ({num_heads})")
        if embed_dim != in_features:
            # timm's kv takes embed_dim inputs (the tokens' width), so the two must agree.
            raise ValueError(f"AttentionPoolLatent: embed_dim ({embed_dim}) must equal in_features "
                             f"({in_features}), as timm's: leave embed_dim=None")
        if pool_type not in ("token", "avg", ""):
            raise ValueError(f"AttentionPoolLatent: pool_type must be 'token', 'avg' or '', got {pool_type!r}")
        if pos_embed not in ("", "abs"):
            raise ValueError(f"AttentionPoolLatent: pos_embed must be '' or 'abs', got {pos_embed!r}")
        if pos_embed == "abs" and feat_size is None:
            raise ValueError("AttentionPoolLatent: pos_embed='abs' needs feat_size (the number of tokens)")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.feat_size, self.pool = feat_size, pool_type
        self.latent_len = latent_len
        self.latent_dim = latent_dim or embed_dim
        if not q_proj and self.latent_dim != embed_dim:
            raise ValueError(f"AttentionPoolLatent: q_proj=False uses the latent as the query, so latent_dim "
                             f"({self.latent_dim}) must equal embed_dim ({embed_dim})")

        self.pos_embed = (nn.Parameter(np.zeros((feat_size, in_features), dtype=np.float32))
                          if pos_embed == "abs" else None)
        self.latent = nn.Parameter(np.zeros((1, latent_len, self.latent_dim), dtype=np.float32))
        self.q = nn.Linear(self.latent_dim, embed_dim, bias=qkv_bias) if q_proj else nn.Identity()
        self.kv = nn.Linear(embed_dim, embed_dim * 2, bias=qkv_bias)        # K and V side by side
        qk_norm_layer = norm_layer or nn.LayerNorm
        self.q_norm = qk_norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = qk_norm_layer(self.head_dim) if qk_norm else nn.Identity()
        if out_features > 0:
            self.proj = nn.Linear(embed_dim, out_features)
            self.proj_drop = nn.Dropout(drop)
            self.norm = norm_layer(out_features) if norm_layer is not None else nn.Identity()
            self.mlp = Mlp(out_features, int(out_features * mlp_ratio), out_features=out_features,
                           act_layer=act_layer)
        else:
            self.proj = nn.Identity()
            self.proj_drop = nn.Dropout(drop)
            self.norm = nn.Identity()
            self.mlp = None
            out_features = embed_dim
        self.out_features = out_features
        self.store_attn, self.attn_map = False, None
        self.init_weights()

    def init_weights(self):
        """timm's: latent ~ TruncNormal(std latent_dim^-½, cut at ±2σ), pos_embed ~ TruncNormal(std
        in_features^-½); the linears keep nn.Linear's init (the ViT re-initialises them)."""
        if self.pos_embed is not None:
            std = self.pos_embed.shape[1] ** -0.5
            nn.init.trunc_normal_(self.pos_embed, std=std, a=-2 * std, b=2 * std)
        std = self.latent_dim ** -0.5
        nn.init.trunc_normal_(self.latent, std=std, a=-2 * std, b=2 * std)

    def forward(self, x):
        B, N, C = x.shape
        if self.pos_embed is not None:
            if N != self.feat_size:
                raise ValueError(f"AttentionPoolLatent: got {N} tokens but pos_embed has {self.feat_size} "
                                 f"(feat_size): pass tokens of the size the pool was built for")
            x = x + self.pos_embed[None]                                         # (B, N, C)
        L, h, d = self.latent_len, self.num_heads, self.head_dim
        q = self.q(self.latent.expand(B, -1, -1))                                # (B, L, C)
        q = q.reshape(B, L, h, d).transpose(1, 2)                                # (B, h, L, d)
        kv = self.kv(x).reshape(B, N, 2, h, d).permute(2, 0, 3, 1, 4)            # (2, B, h, N, d)
        k, v = kv.unbind(0)                                                      # each (B, h, N, d)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.store_attn:                                                      # the steps written out
            attn = F.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)     # (B, h, L, N)
            self.attn_map = attn.detach()
            x = attn @ v                                                         # (B, h, L, d)
        else:
            x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)        # (B, h, L, d)
        x = x.transpose(1, 2).reshape(B, L, C)                                   # heads side by side
        x = self.proj_drop(self.proj(x))                                         # (B, L, out)
        if self.mlp is not None:
            x = x + self.mlp(self.norm(x))                                       # residual MLP
        if self.pool == "token":
            return x[:, 0]                                                       # (B, out)
        if self.pool == "avg":
            return x.mean(dim=1)                                                 # (B, out)
        return x                                                                 # (B, L, out)

    def extra_repr(self):
        return (f"num_heads={self.num_heads}, latent_len={self.latent_len}, latent_dim={self.latent_dim}, "
                f"pool_type={self.pool!r}")
