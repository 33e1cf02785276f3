"""Lesson 12_mvit: reference solutions of its exercises.

The notebook holds stubs that raise NotImplementedError; with MINIVIT_SOLUTIONS=1 (CI, and the
committed outputs) ``minivit.notebook.exercises`` swaps these in by name. Try the exercise first.
"""
import numpy as np

from minivit.layers.pooling_attention import MultiScaleAttention, rel_pos_index


# Exercise 1: pooled_side
def pooled_side(n, k, s):
    return (n + 2 * (k // 2) - k) // s + 1


# Exercise 2: rel_pos_params, joint_rel_pos_params
def rel_pos_params(n, d):
    return 2 * (2 * n - 1) * d              # R_h and R_w: one vector per offset along each axis


def joint_rel_pos_params(n, d):
    return (2 * n - 1) ** 2 * d             # one vector per 2-D offset


# Exercise 3: my_rel_pos
def my_rel_pos(layer, q, n):
    B, h, _, d = q.shape
    r_h = layer.rel_pos_h.numpy()[rel_pos_index(n, n)]          # (n, n, d): query row × key row
    r_w = layer.rel_pos_w.numpy()[rel_pos_index(n, n)]          # (n, n, d): query col × key col
    qg = q.reshape(B, h, n, n, d)                               # (B, h, row, col, d)
    e_h = np.einsum("bhyxc,ykc->bhyxk", qg, r_h)                # (B, h, n, n, key row)
    e_w = np.einsum("bhyxc,xkc->bhyxk", qg, r_w)                # (B, h, n, n, key col)
    e = e_h[..., :, None] + e_w[..., None, :]                   # (B, h, n, n, key row, key col)
    return e.reshape(B, h, n * n, n * n)


# Exercise 4: sra_like
def sra_like(C, heads, n, R):
    return MultiScaleAttention(C, C, (n, n), heads, kernel_kv=3, stride_kv=R, has_cls_token=False,
                               rel_pos_type="none", residual_pooling=False)
