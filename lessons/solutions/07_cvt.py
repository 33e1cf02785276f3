"""Lesson 07_cvt: reference solutions of its exercises.

The notebook holds stubs that raise NotImplementedError; with MINIVIT_SOLUTIONS=1 (CI, and the
committed outputs) ``minivit.notebook.exercises`` swaps these in by name. Try the exercise first.
"""
import numpy as np

import minivit.functional as F


# Exercise 1: grid_after
def grid_after(n, k, s, p):
    return (n + 2 * p - k) // s + 1


# Exercise 2: n_keys
def n_keys(h, w, s):
    return -(-h // s) * -(-w // s)  # ⌈h/s⌉·⌈w/s⌉


# Exercise 3: shuffle_pos_embed
def shuffle_pos_embed(model, perm):
    pos = model.pos_embed.data                   # (1, 1 + N, D)
    model.pos_embed.data = np.concatenate([pos[:, :1], pos[:, 1:][:, perm]], axis=1)


# Exercise 4: my_keys
def my_keys(layer, x, hw):
    B, N, C = x.shape
    H, W = hw
    grid = x.transpose(1, 2).reshape(B, C, H, W)                   # tokens → map
    cp = layer.conv_proj_k
    y = F.conv2d(grid, cp.conv.weight, None, stride=cp.stride, padding=cp.padding, groups=C)   # depthwise
    y = F.batch_norm(y, cp.bn.running_mean, cp.bn.running_var, cp.bn.weight, cp.bn.bias,
                     training=False, eps=cp.bn.eps)
    return F.linear(y.flatten(2).transpose(1, 2), layer.proj_k.weight, layer.proj_k.bias)
