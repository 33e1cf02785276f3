"""Lesson 03_vit: reference solutions of its exercises.

The notebook holds stubs that raise NotImplementedError; with MINIVIT_SOLUTIONS=1 (CI, and the
committed outputs) ``minivit.notebook.exercises`` swaps these in by name. Try the exercise first.
"""
import numpy as np


# Exercise 1: vit_params
def vit_params(img=32, patch=4, chans=3, D=256, depth=7, mlp_ratio=2.0, classes=10):
    N = (img // patch) ** 2
    hidden = int(D * mlp_ratio)
    embed = chans * patch * patch * D + D + D + (N + 1) * D          # conv + bias, cls token, pos embed
    block = 2 * 2 * D + (D * 3 * D + 3 * D) + (D * D + D) + (D * hidden + hidden) + (hidden * D + D)
    return embed + depth * block + 2 * D + D * classes + classes


# Exercise 2: vit_macs
def vit_macs(img=32, patch=4, chans=3, D=256, depth=7, mlp_ratio=2.0, classes=10):
    N = (img // patch) ** 2
    hidden = int(D * mlp_ratio)
    per_block = 4 * (N + 1) * D * D + 2 * (N + 1) ** 2 * D + 2 * (N + 1) * D * hidden
    return N * D * chans * patch * patch + depth * per_block + D * classes


# Exercise 3: avg_pool_logits
def avg_pool_logits(m, x):
    feats = m.forward_features(x)                        # (B, 1 + N, D): all tokens after the blocks
    pooled = feats[:, 1:].mean(dim=1)                    # mean over the patch tokens, (B, D)
    return m.head(m.fc_norm(pooled))


# Exercise 4: my_block
def my_block(blk, x, residual=True):
    a = blk.attn(blk.norm1(x))
    x = x + a if residual else a
    m = blk.mlp(blk.norm2(x))
    return x + m if residual else m


# Exercise 5: token_similarity
def token_similarity(z):
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)              # unit vectors (B, N, D)
    g = z @ z.transpose(0, 2, 1)                                   # all cosines (B, N, N)
    n = z.shape[1]
    return float(((g.sum((1, 2)) - n) / (n * (n - 1))).mean())     # without the N self-pairs
