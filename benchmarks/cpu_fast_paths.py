"""A/B/C/D of the CPU fast paths on the speedrun model's training step, each switched by a class
attribute beside its readable op, added one at a time, alternating rounds in one process:

    reference        every switch off: the readable ops
    + bn, relu       BatchNorm and ReLU threaded (functional/norm.py, functional/activation.py)
    + channels-last  the conv stem channels-last from the image on (layers/conv_stem.py)
    + one-op attn    attention as one op from the packed qkv (functional/attention.py)
    + threaded cols  the channels-last convs' padding, im2col and col2im on threads, and
                     BatchNorm's channels-last sums by blocks of rows (functional/conv.py, norm.py)

    python benchmarks/cpu_fast_paths.py --json benchmarks/cpu_fast_paths.json

Records the median step time of each side (forward, loss, backward, AdamW; vit_nano, batch 128,
random data) and the ratios to the reference and to the side before; the machine and its thread
count are in the record.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from minivit import Tensor, backend, optim
from minivit.bench import _cpu_model
from minivit.functional.activation import ReLU
from minivit.functional.conv import Conv2d
from minivit.functional.norm import BatchNorm
from minivit.layers.attention import Attention
from minivit.layers.conv_stem import ConvStem
from minivit.losses import cross_entropy
from minivit.models import create_model

# side → the switches it turns on (each side adds one to the one before)
SIDES = {
    "reference": (),
    "+ bn, relu": ((BatchNorm, "fast_path"), (ReLU, "fast_path")),
    "+ channels-last stem": ((BatchNorm, "fast_path"), (ReLU, "fast_path"), (ConvStem, "channels_last")),
    "+ one-op attention": ((BatchNorm, "fast_path"), (ReLU, "fast_path"), (ConvStem, "channels_last"),
                           (Attention, "fused_attn")),
    "+ threaded columns": ((BatchNorm, "fast_path"), (ReLU, "fast_path"), (ConvStem, "channels_last"),
                           (Attention, "fused_attn"), (Conv2d, "threaded_columns"), (BatchNorm, "block_sums")),
}
SWITCHES = {s for on in SIDES.values() for s in on}


def switch(side):
    for cls, attr in SWITCHES:
        setattr(cls, attr, (cls, attr) in SIDES[side])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vit_nano")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    model = create_model(args.model)
    model.train()
    opt = optim.AdamW(optim.param_groups_weight_decay(model, 0.05), lr=1e-3)
    x = Tensor(np.random.default_rng(0).standard_normal((args.batch_size, 3, 32, 32)).astype(np.float32))
    y = np.arange(args.batch_size) % 10

    def step():
        loss = cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    times = {side: [] for side in SIDES}
    for _ in range(args.rounds):
        for side in SIDES:
            switch(side)
            step()                                                  # warm-up
            for _ in range(args.steps):
                t = time.perf_counter()
                step()
                times[side].append(time.perf_counter() - t)
    switch("+ threaded columns")                                    # the defaults: every switch on
    med = {k: float(np.median(v)) for k, v in times.items()}
    names = list(SIDES)
    rec = {"command": "python benchmarks/cpu_fast_paths.py" + (f" --json {args.json}" if args.json else ""),
           "model": args.model, "batch_size": args.batch_size, "machine": _cpu_model() or platform.machine(),
           "cores": len(os.sched_getaffinity(0)), "threads": backend.get_num_threads(),
           "step_ms": {k: round(v * 1e3, 1) for k, v in med.items()},
           "images_per_s": {k: round(args.batch_size / v, 1) for k, v in med.items()},
           "speedup_vs_reference": {k: round(med["reference"] / med[k], 3) for k in names[1:]},
           "speedup_vs_previous": {k: round(med[prev] / med[k], 3) for prev, k in zip(names, names[1:])},
           "timing": f"median of {args.rounds} rounds × {args.steps} steps per side, alternating"}
    print(json.dumps(rec, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(rec, indent=1) + "\n")


if __name__ == "__main__":
    main()
