"""Lesson 09_comparison: reference solutions of its exercises.

The notebook holds stubs that raise NotImplementedError; with MINIVIT_SOLUTIONS=1 (CI, and the
committed outputs) ``minivit.notebook.exercises`` swaps these in by name. Try the exercise first.
"""
import json
from pathlib import Path


# Exercise 1: most_reused
def most_reused(rows):
    return max(rows, key=lambda r: r["macs"] / r["params"])["model"]


# Exercise 2: block_macs
def block_macs(N, C, r):
    return 4 * N * C * C + 2 * N * N * C + int(2 * r * N * C * C)


# Exercise 3: best_accuracy
def best_accuracy(path):
    accs = [json.loads(line).get("test_acc") for line in Path(path).read_text().splitlines() if line.strip()]
    accs = [a for a in accs if a is not None]
    return max(accs) if accs else None
