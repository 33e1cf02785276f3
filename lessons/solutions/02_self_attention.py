"""Lesson 02_self_attention: reference solutions of its exercises.

The notebook holds stubs that raise NotImplementedError; with MINIVIT_SOLUTIONS=1 (CI, and the
committed outputs) ``minivit.notebook.exercises`` swaps these in by name. Try the exercise first.
"""
import numpy as np


# Exercise 1: single_head_attention
def single_head_attention(X, W_qkv, W_o):
    # X (N, C); W_qkv (3C, C); W_o (C, C) — PyTorch layout (out, in)
    C = X.shape[1]
    Q, K, V = X @ W_qkv[:C].T, X @ W_qkv[C:2 * C].T, X @ W_qkv[2 * C:].T
    S = Q @ K.T / np.sqrt(C)
    A = np.exp(S - S.max(1, keepdims=True))
    A /= A.sum(1, keepdims=True)
    return (A @ V) @ W_o.T


# Exercise 2: crossover
def crossover(C, patch=16):
    n_star = 2 * C
    side = patch * np.sqrt(n_star)
    return n_star, side


# Exercise 3: permuted_output
def permuted_output(layer, X, perm):
    return layer(X[:, list(perm)]).numpy()


# Exercise 4: softmax_entropy
def softmax_entropy(S):
    P = np.exp(S - S.max(-1, keepdims=True))         # a stable softmax, row by row
    P /= P.sum(-1, keepdims=True)
    return float(-(P * np.log(P + 1e-30)).sum(-1).mean())


# Exercise 5: softmax_vjp
def softmax_vjp(A, dA):
    return A * (dA - (dA * A).sum(-1, keepdims=True))     # A ⊙ (dA − rowsum(dA ⊙ A))
