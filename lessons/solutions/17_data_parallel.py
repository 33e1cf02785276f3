"""Solutions to Lesson 17's exercises (swapped in by MINIVIT_SOLUTIONS=1; see minivit.notebook.exercises)."""
import numpy as np


def ring_allreduce(arrays):
    n = len(arrays)
    chunks = [[c.copy() for c in np.array_split(a, n)] for a in arrays]   # chunks[r][c]
    sent = [0] * n
    for s in range(n - 1):                          # reduce-scatter: rank r sends chunk (r - s) mod n
        outgoing = [(r, (r - s) % n, chunks[r][(r - s) % n].copy()) for r in range(n)]
        for r, c, data in outgoing:
            chunks[(r + 1) % n][c] += data
            sent[r] += data.nbytes
    for s in range(n - 1):                          # all-gather: pass on the finished chunk
        outgoing = [(r, (r + 1 - s) % n, chunks[r][(r + 1 - s) % n].copy()) for r in range(n)]
        for r, c, data in outgoing:
            chunks[(r + 1) % n][c] = data
            sent[r] += data.nbytes
    return [np.concatenate(c) for c in chunks], sent


def ring_allreduce_seconds(nbytes, n, bandwidth, latency=0.0):
    if n == 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bandwidth + 2 * (n - 1) * latency


def scaled_lr(base_lr, base_batch, batch, rule="linear"):
    k = batch / base_batch
    return base_lr * (k if rule == "linear" else k ** 0.5)
