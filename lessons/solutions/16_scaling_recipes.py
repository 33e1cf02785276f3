"""Solutions to Lesson 16's exercises (swapped in by MINIVIT_SOLUTIONS=1; see minivit.notebook.exercises)."""
import math

import numpy as np


def rank1_second_moment(V):
    r = V.mean(axis=1, keepdims=True)          # row means (n, 1)
    c = V.mean(axis=0, keepdims=True)          # column means (1, m)
    return r * c / r.mean()


def rsqrt_cooldown_lr(step, base_lr, warmup, total, cooldown):
    if step < warmup:
        return base_lr * step / warmup
    r = base_lr / math.sqrt(1 + (step - warmup) / warmup)       # τ = W
    start = total - cooldown
    if step <= start:
        return r
    return r * (total - step) / cooldown                        # the rsqrt keeps decaying under the ramp


def map_head_params(C, mlp_ratio):
    hidden = int(C * mlp_ratio)
    latent = C
    q = C * C + C
    kv = 2 * C * C + 2 * C
    proj = C * C + C
    norm = 2 * C
    mlp = C * hidden + hidden + hidden * C + C
    return latent + q + kv + proj + norm + mlp


def factored_state_numbers(shape):
    if len(shape) < 2:
        return int(np.prod(shape))
    *lead, n, m = shape
    return int(np.prod(lead)) * (n + m)
