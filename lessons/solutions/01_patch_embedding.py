"""Lesson 01_patch_embedding: reference solutions of its exercises.

The notebook holds stubs that raise NotImplementedError; with MINIVIT_SOLUTIONS=1 (CI, and the
committed outputs) ``minivit.notebook.exercises`` swaps these in by name. Try the exercise first.
"""
import numpy as np


# Exercise 1: my_patchify
def my_patchify(x, P):
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // P, P, W // P, P)            # split rows and columns into (grid, inside)
    x = x.transpose(0, 2, 4, 1, 3, 5)                    # (B, h, w, C, P, P)
    return x.reshape(B, (H // P) * (W // P), C * P * P)


# Exercise 2: vit_b16_counts
def vit_b16_counts():
    n_224 = (224 // 16) ** 2
    patch_len = 3 * 16 * 16
    pos_rows_384 = (384 // 16) ** 2 + 1
    return n_224, patch_len, pos_rows_384


# Exercise 3: sincos_dot
def sincos_dot(offset, dim, temperature=10000.0):
    omega = 1.0 / temperature ** (np.arange(dim // 2) / (dim / 2))
    return np.cos(offset * omega).sum()
