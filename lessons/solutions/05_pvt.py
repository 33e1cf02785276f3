"""Lesson 05_pvt: reference solutions of its exercises.

The notebook holds stubs that raise NotImplementedError; with MINIVIT_SOLUTIONS=1 (CI, and the
committed outputs) ``minivit.notebook.exercises`` swaps these in by name. Try the exercise first.
"""
import minivit.functional as F


# Exercise 1: kv_tokens
def kv_tokens(h, w, R):
    return (h // R) * (w // R)  # one key per R×R cell


# Exercise 2: my_sra_macs
def my_sra_macs(h, w, C, R):
    n, nr = h * w, (h // R) * (w // R)
    reduction = n * C * C if R > 1 else 0                  # conv R×R/R: nr outputs × C × (C·R²) inputs
    return n * C * C + reduction + 2 * nr * C * C + 2 * n * nr * C + n * C * C


# Exercise 3: shared_columns
def shared_columns(k, s):
    return max(k - s, 0)


# Exercise 4: my_sra_reduce
def my_sra_reduce(layer, x, hw):
    B, N, C = x.shape
    H, W = hw
    grid = x.transpose(1, 2).reshape(B, C, H, W)                  # back on the grid
    R = layer.sr.weight.shape[-1]
    y = F.conv2d(grid, layer.sr.weight, layer.sr.bias, stride=R)  # (B, C, H/R, W/R)
    return F.layer_norm(y.flatten(2).transpose(1, 2), (C,), layer.norm.weight, layer.norm.bias, layer.norm.eps)
