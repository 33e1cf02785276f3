"""Lesson 10_mixers: reference solutions of its exercises.

The notebook holds stubs that raise NotImplementedError; with MINIVIT_SOLUTIONS=1 (CI, and the
committed outputs) ``minivit.notebook.exercises`` swaps these in by name. Try the exercise first.
"""
import minivit.functional as F


# Exercise 1: mixer_params
def mixer_params(S, C, D_S, D_C):
    norms = 2 * 2 * C                                   # norm1, norm2: weight and bias
    tokens = (S * D_S + D_S) + (D_S * S + S)            # S → D_S → S: the only term that depends on S
    channels = (C * D_C + D_C) + (D_C * C + C)          # C → D_C → C
    return norms + tokens + channels


# Exercise 2: my_token_mixing
def my_token_mixing(block, x):
    mlp = block.mlp_tokens
    y = block.norm1(x).transpose(1, 2)                  # (B, C, S): tokens on the last axis
    y = F.linear(F.gelu(F.linear(y, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)
    return y.transpose(1, 2)                            # (B, S, C)


# Exercise 3: convmixer_side
def convmixer_side(depth, k):
    return depth * (k - 1) + 1


# Exercise 4: no_norm_mixing
def no_norm_mixing(block, x):
    return block.mlp_tokens(x.transpose(1, 2)).transpose(1, 2)
