"""Lesson 04_deit_distillation: reference solutions of its exercises.

The notebook holds stubs that raise NotImplementedError; with MINIVIT_SOLUTIONS=1 (CI, and the
committed outputs) ``minivit.notebook.exercises`` swaps these in by name. Try the exercise first.
"""
import numpy as np

import minivit as mv
import minivit.functional as F
from minivit import losses


# Exercise 1: smoothed_ce
def smoothed_ce(z, labels, eps):
    # z (B, K) NumPy logits, labels (B,) ints
    B, K = z.shape
    q = np.full((B, K), eps / K)
    q[np.arange(B), labels] += 1 - eps
    log_p = z - z.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    return -(q * log_p).sum(1).mean()


# Exercise 2: deit_hard_loss
def deit_hard_loss(z_cls, z_dist, z_teacher, labels):
    y_teacher = z_teacher.numpy().argmax(1)
    return 0.5 * F.cross_entropy(z_cls, labels) + 0.5 * F.cross_entropy(z_dist, y_teacher)


# Exercise 3: high_temperature_grad
def high_temperature_grad(zs, zt):
    # zs, zt (B, K) NumPy logits → the limit of ∂(τ²·KL)/∂zs as τ → ∞
    B, K = zs.shape
    centred = lambda z: z - z.mean(1, keepdims=True)
    return (centred(zs) - centred(zt)) / (K * B)


# Exercise 4: kl_grad_norm
def kl_grad_norm(zs, zt, tau):
    zs = mv.tensor(zs, requires_grad=True)
    (losses.soft_distillation_term(zs, mv.tensor(zt), tau=tau) / tau ** 2).backward()   # the plain KL
    return float(np.linalg.norm(zs.grad))


# Exercise 5: my_forward_head
def my_forward_head(model, tokens):
    z_cls, z_dist = model.head(tokens[:, 0]), model.head_dist(tokens[:, 1])   # (B, classes) each
    if model.training:
        return z_cls, z_dist                      # each head gets its own loss
    return (z_cls + z_dist) / 2                   # late fusion at inference
