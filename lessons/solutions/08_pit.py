"""Lesson 08_pit: reference solutions of its exercises.

The notebook holds stubs that raise NotImplementedError; with MINIVIT_SOLUTIONS=1 (CI, and the
committed outputs) ``minivit.notebook.exercises`` swaps these in by name. Try the exercise first.
"""
import numpy as np

import minivit.functional as F


# Exercise 1: pooled_side
def pooled_side(n):
    return (n - 1) // 2 + 1  # ⌊(n + 2 − 3)/2⌋ + 1


# Exercise 2: pooling_params
def pooling_params(c_in, c_out):
    return c_out * 9 + c_out + c_in * c_out + c_out  # dw conv + bias, fc + bias


# Exercise 3: uniform_distance
def uniform_distance(h, w):
    ys, xs = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
    p = np.stack([ys.ravel(), xs.ravel()], 1)                        # (hw, 2) positions in grid sides
    return float(np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1)).mean())


# Exercise 4: my_pit_pool
def my_pit_pool(layer, x, cls):
    y = F.conv2d(x, layer.conv.weight, layer.conv.bias, stride=2, padding=1, groups=x.shape[1])   # depthwise
    return y, F.linear(cls, layer.fc.weight, layer.fc.bias)
