"""A/B of the compiled CPU kernels (minivit/functional/fused_cpu.py: exact GELU, layer norm, the
depthwise conv, max pooling) against the NumPy code they sit beside, in one process, alternating rounds:

    python benchmarks/cpu_compiled_kernels.py --json benchmarks/cpu_compiled_kernels.json

For each model, the median training step (forward, loss, backward, AdamW; batch 64, random data)
with the kernels off (``fused_cpu.enabled = False``: the NumPy code) and on; and each kernel alone at
the size it has in ``pvt_v2_tiny``'s first stage (max pooling: ``mvitv2_tiny``'s pooled shortcut),
forward and backward. The machine, its thread count
and the kernels' build are in the record.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

import minivit.functional as F
from minivit import Tensor, backend, optim
from minivit.bench import _cpu_model
from minivit.functional import fused_cpu
from minivit.losses import cross_entropy
from minivit.models import create_model
from minivit.models.registry import parse_model_kwargs

MODELS = ("pvt_v2_tiny", "cvt_tiny", "vit_nano", "swin_tiny:embed_dim=48", "mvitv2_tiny")


def _training_step(spec, batch):
    name, _, kw = spec.partition(":")
    model = create_model(name, num_classes=10, **(parse_model_kwargs(kw) if kw else {}))
    model.train()
    opt = optim.AdamW(optim.param_groups_weight_decay(model, 0.05), lr=1e-3)
    x = Tensor(np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32))
    y = np.arange(batch) % 10

    def step():
        loss = cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def _op_steps():
    """Each kernel's op, forward and backward, at pvt_v2_tiny's first-stage sizes (batch 64)."""
    rng = np.random.default_rng(1)
    h = Tensor(rng.standard_normal((64, 256, 256)).astype(np.float32), requires_grad=True)     # Mix-FFN hidden
    t = Tensor(rng.standard_normal((64, 256, 32)).astype(np.float32), requires_grad=True)      # stage-1 tokens
    w, b = (Tensor(rng.standard_normal(32).astype(np.float32), requires_grad=True) for _ in range(2))
    m = Tensor(np.ascontiguousarray(rng.standard_normal((64, 16, 16, 256)).astype(np.float32)).transpose(0, 3, 1, 2),
               requires_grad=True)                                                             # tokens as a map
    k = Tensor(rng.standard_normal((256, 1, 3, 3)).astype(np.float32), requires_grad=True)
    p = Tensor(np.ascontiguousarray(rng.standard_normal((64, 16, 16, 64)).astype(np.float32)).transpose(0, 3, 1, 2),
               requires_grad=True)                                                             # a stage-1 map
    ones = {}

    def grad_of(shape):     # a map's gradient channels-last in memory, as it comes back through tokens
        if len(shape) == 4:
            n, c, hh, ww = shape
            return np.ones((n, hh, ww, c), np.float32).transpose(0, 3, 1, 2)
        return np.ones(shape, np.float32)

    def run(fn, *args):
        def go():
            y = fn(*args)
            if y.shape not in ones:
                ones[y.shape] = grad_of(y.shape)
            y.backward(ones[y.shape])
        return go
    return {"gelu (64, 256, 256)": run(F.gelu, h),
            "layer_norm (64, 256, 32)": run(lambda a, w, b: F.layer_norm(a, (32,), w, b), t, w, b),
            "depthwise 3x3 (64, 256, 16, 16)": run(lambda a, k: F.conv2d(a, k, padding=1, groups=256), m, k),
            "max_pool 3x3 stride 2 (64, 64, 16, 16)": run(lambda a: F.max_pool2d(a, 3, 2, 1), p)}


def _alternate(fn, rounds, steps):
    """{off: [s, ...], on: [s, ...]}: ``fn`` timed with the kernels off and on, alternating."""
    times = {"off": [], "on": []}
    for _ in range(rounds):
        for side in times:
            fused_cpu.enabled = side == "on"
            fn()                                                    # warm-up
            for _ in range(steps):
                t0 = time.perf_counter()
                fn()
                times[side].append(time.perf_counter() - t0)
    fused_cpu.enabled = True
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="name[:key=value,...] (repeatable; default: "
                    + ", ".join(MODELS) + ")")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not fused_cpu.available():
        raise SystemExit(f"error: the compiled kernels are {fused_cpu.status()}: nothing to compare")
    rec = {"command": "python benchmarks/cpu_compiled_kernels.py" + (f" --json {args.json}" if args.json else ""),
           "machine": _cpu_model() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
           "threads": backend.get_num_threads(), "build": fused_cpu.status(), "cc_flags": list(fused_cpu.FLAGS),
           "timing": f"median of {args.rounds} rounds × {args.steps} steps per side, alternating",
           "training_step_ms": {}, "op_ms": {}}
    for spec in args.model or MODELS:
        times = _alternate(_training_step(spec, args.batch_size), args.rounds, args.steps)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        rec["training_step_ms"][spec] = {"numpy": round(med["off"], 1), "compiled": round(med["on"], 1),
                                         "speedup": round(med["off"] / med["on"], 3)}
        print(spec, rec["training_step_ms"][spec], flush=True)
    for name, fn in _op_steps().items():
        times = _alternate(fn, args.rounds, args.steps)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        rec["op_ms"][name] = {"numpy": round(med["off"], 2), "compiled": round(med["on"], 2),
                              "speedup": round(med["off"] / med["on"], 3)}
        print(name, rec["op_ms"][name], flush=True)
    print(json.dumps(rec, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(rec, indent=1) + "\n")


if __name__ == "__main__":
    main()
