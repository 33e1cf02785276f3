"""Lesson 06_swin: reference solutions of its exercises.

The notebook holds stubs that raise NotImplementedError; with MINIVIT_SOLUTIONS=1 (CI, and the
committed outputs) ``minivit.notebook.exercises`` swaps these in by name. Try the exercise first.
"""
import numpy as np


# Exercise 1: n_windows
def n_windows(h, w, M):
    return max(h // M, 1) * max(w // M, 1)


# Exercise 2: rel_index
def rel_index(dy, dx, M):
    return (dy + M - 1) * (2 * M - 1) + (dx + M - 1)


# Exercise 3: wmsa_is_cheaper
def wmsa_is_cheaper(h, w, M):
    return h * w > M * M  # 2(hw)²C > 2M²hwC


# Exercise 4: my_shifted_window_mask
def my_shifted_window_mask(H, W, M, s):
    labels = np.zeros((H, W), dtype=np.int64)
    bands = (slice(0, -M), slice(-M, -s), slice(-s, None))
    for i, rows in enumerate(bands):
        for j, cols in enumerate(bands):
            labels[rows, cols] = 3 * i + j
    win = labels.reshape(H // M, M, W // M, M).transpose(0, 2, 1, 3).reshape(-1, M * M)   # (nW, N)
    return np.where(win[:, :, None] == win[:, None, :], 0.0, -100.0).astype(np.float32)


# Exercise 5: crossing_mass
def crossing_mass(attn, mask):
    blocked = (mask < 0)[:, None]                          # (nW, 1, N, N): pairs the mask blocks
    return float((attn * blocked).sum(-1).mean())
