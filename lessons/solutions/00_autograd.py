"""Lesson 00_autograd: reference solutions of its exercises.

The notebook holds stubs that raise NotImplementedError; with MINIVIT_SOLUTIONS=1 (CI, and the
committed outputs) ``minivit.notebook.exercises`` swaps these in by name. Try the exercise first.
"""
import numpy as np

import minivit as mv
from minivit.functional import basic


# Exercise 1: Softplus.backward
class Softplus:
    def backward(self, gy):
        # σ(x) = e^x / (1 + e^x) = exp(x − softplus(x)): this form never overflows
        xp = mv.get_array_module(gy)
        return gy * xp.exp(self.x - self.y)


# Exercise 2: Hypot.backward
class Hypot:
    def backward(self, gy):
        ga = basic.sum_to(gy * self.a / self.y, self.a.shape)
        gb = basic.sum_to(gy * self.b / self.y, self.b.shape)
        return ga, gb


# Exercise 3: predicted_grad
def predicted_grad(x):
    return (1 + x) * np.exp(x)
