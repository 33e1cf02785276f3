"""Lesson 07_cvt: reference solutions of its exercises.

The notebook holds stubs that raise NotImplementedError; with MINIVIT_SOLUTIONS=1 (CI, and the
committed outputs) ``minivit.notebook.exercises`` swaps these in by name. Try the exercise first.
"""
import numpy as np


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
