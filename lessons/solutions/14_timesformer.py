"""Lesson 14_timesformer: reference solutions of its exercises.

The notebook holds stubs that raise NotImplementedError; with MINIVIT_SOLUTIONS=1 (CI, and the
committed outputs) ``minivit.notebook.exercises`` swaps these in by name. Try the exercise first.
"""
import minivit as mv


# Exercise 1: time_sequences, frame_sequences
def time_sequences(x, T):
    B, L, D = x.shape
    N = (L - 1) // T
    return x[:, 1:].reshape(B * N, T, D)                                   # patch-major: N runs of T frames


def frame_sequences(x, T):
    B, L, D = x.shape
    N = (L - 1) // T
    return x[:, 1:].reshape(B, N, T, D).permute(0, 2, 1, 3).reshape(B * T, N, D)


# Exercise 2: no_time_block
def no_time_block(blk, x, T):
    B, L, D = x.shape
    N = (L - 1) // T
    cls, xt = x[:, :1], x[:, 1:]
    s = xt.reshape(B, N, T, D).permute(0, 2, 1, 3).reshape(B * T, N, D)    # (B·T, N, D): one frame each
    s = mv.cat([cls.expand(B, T, D).reshape(B * T, 1, D), s], dim=1)
    s = blk.attn(blk.norm1(s))
    cls = cls + s[:, 0].reshape(B, T, D).mean(dim=1, keepdim=True)
    xt = xt + s[:, 1:].reshape(B, T, N, D).permute(0, 2, 1, 3).reshape(B, N * T, D)
    y = mv.cat([cls, xt], dim=1)
    return y + blk.mlp(blk.norm2(y))


# Exercise 3: divided_minus_joint
def divided_minus_joint(N, T, C):
    divided = 4 * N * T * C * C + 2 * N * T * T * C + N * T * C * C + 4 * N * T * C * C + 2 * T * N * N * C
    joint = 4 * N * T * C * C + 2 * (N * T) ** 2 * C
    return divided - joint
