"""Lesson 11_xcit: reference solutions of its exercises.

The notebook holds stubs that raise NotImplementedError; with MINIVIT_SOLUTIONS=1 (CI, and the
committed outputs) ``minivit.notebook.exercises`` swaps these in by name. Try the exercise first.
"""
import numpy as np

import minivit.functional as F
from minivit import analysis, no_grad
from minivit.layers import l2_normalize


# Exercise 1: xca_macs
def xca_macs(N, C, h):
    d = C // h
    return 3 * N * C * C + 2 * h * N * d * d + N * C * C      # qkv, q̂k̂ᵀ and AV per head, proj


# Exercise 2: my_xca
def my_xca(layer, x):
    B, N, C = x.shape
    h, d = layer.num_heads, layer.head_dim
    q, k, v = layer.qkv(x).reshape(B, N, 3, h, d).permute(2, 0, 3, 4, 1).unbind(0)   # (B, h, d, N) each
    attn = F.softmax((l2_normalize(q) @ l2_normalize(k).transpose(-2, -1)) * layer.temperature, dim=-1)
    out = (attn @ v).permute(0, 3, 1, 2).reshape(B, N, C)                           # (B, N, C)
    return layer.proj(out)


# Exercise 3: shuffled_output
def shuffled_output(layer, x, perm):
    return np.asarray(x)[:, perm]


# Exercise 4: entropy_at
def entropy_at(layer, x, t):
    old = layer.temperature.data.copy()
    layer.temperature.data[...] = t
    layer.store_attn = True
    try:
        layer.eval()
        with no_grad():
            layer(x)
        return analysis.attention_entropy(layer.attn_map.numpy())
    finally:
        layer.temperature.data[...] = old
        layer.store_attn = False
