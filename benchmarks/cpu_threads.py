"""The CPU-thread measurements the README's Speed section quotes, in one script.

    python benchmarks/cpu_threads.py --json benchmarks/cpu_threads.json

1. GELU (64, 256, 256) and the stage-1 depthwise conv of pvt_v2_tiny alone, on 1 and 2 of
   minivit's threads (backend.set_num_threads).
2. pvt_v2_tiny's training step (batch 64) and, inside it, the time of its GELUs and depthwise
   convs, for threads 1/2 × OpenBLAS's idle threads spinning (OPENBLAS_THREAD_TIMEOUT=28,
   OpenBLAS's default) or sleeping at once (4, what minivit sets). Each in a fresh process:
   OpenBLAS reads the variable once, when NumPy loads it.
3. pvt_v2_tiny's Linear shapes as back-to-back products, with each timeout.
4. The dense (groups = 1) convs of pvt_v2_tiny's step, channels-last path on and off.

Medians of repeated calls; the machine and versions are in the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _median_ms(fn, repeats=15, warmup=3):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def ops_alone():
    import numpy as np
    from minivit import backend
    from minivit.functional.activation import _gelu_float32
    from minivit.functional.conv import Conv2d
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 256, 256)).astype(np.float32)
    img = np.ascontiguousarray(rng.standard_normal((64, 16, 16, 256)).astype(np.float32)).transpose(0, 3, 1, 2)
    w = rng.standard_normal((256, 1, 3, 3)).astype(np.float32)
    out = {}
    for n in (1, 2):
        backend.set_num_threads(n)
        op = Conv2d((1, 1), (1, 1, 1, 1), (1, 1), 256)
        op.needs_grad = (True, True)
        out[f"threads_{n}"] = {"gelu_64x256x256_ms": _median_ms(lambda: _gelu_float32(x)),
                               "depthwise_64x256x16x16_forward_ms": _median_ms(lambda: op.forward(img, w))}
    return out


def _pvt_step(ops_timed):
    """pvt_v2_tiny's training step (ms) and the time spent in the named Functions (ms per step)."""
    import numpy as np
    import minivit as mv
    from minivit import functional as F, optim
    from minivit.functional import activation, conv
    from minivit.models.registry import create_model
    spent = {name: 0.0 for name in ops_timed}

    def timed(cls, name, keep=lambda op: True):
        fwd, bwd = cls.forward, cls.backward

        def forward(self, *a):
            t0 = time.perf_counter()
            y = fwd(self, *a)
            if keep(self):
                spent[name] += time.perf_counter() - t0
            return y

        def backward(self, g):
            t0 = time.perf_counter()
            r = bwd(self, g)
            if keep(self):
                spent[name] += time.perf_counter() - t0
            return r
        cls.forward, cls.backward = forward, backward
    if "gelu" in ops_timed:
        timed(activation.GELU, "gelu")
    if "depthwise" in ops_timed:
        timed(conv.Conv2d, "depthwise", lambda op: op.depthwise)
    if "dense_conv" in ops_timed:
        timed(conv.Conv2d, "dense_conv", lambda op: op.groups == 1)
    model = create_model("pvt_v2_tiny")
    opt = optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    rng = np.random.default_rng(0)
    x = mv.tensor(rng.standard_normal((64, 3, 32, 32)).astype(np.float32))
    y = mv.tensor(rng.integers(0, 10, 64))

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for _ in range(2):
        step()
    for k in spent:
        spent[k] = 0.0
    n = 8
    ms = _median_ms(step, repeats=n, warmup=0)
    return {"step_ms": ms, **{f"{k}_ms_per_step": 1e3 * v / n for k, v in spent.items()}}


def step_child(threads):
    from minivit import backend
    backend.set_num_threads(threads)
    return _pvt_step(("gelu", "depthwise"))


def gemm_child():
    import numpy as np
    import minivit  # noqa: F401  (as in a run: minivit first)
    rng = np.random.default_rng(0)
    out = {}
    for m, k, n in [(16384, 32, 256), (16384, 256, 32), (4096, 64, 512), (4096, 512, 64),
                    (1024, 160, 640), (1024, 640, 160), (256, 256, 1024), (256, 1024, 256)]:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        out[f"{m}x{k}@{k}x{n}_us"] = 1e3 * _median_ms(lambda: a @ b, repeats=50, warmup=5)
    return out


def dense_conv():
    from minivit.functional.conv import Conv2d
    out = {}
    for flag in (False, True):
        Conv2d.channels_last_path = flag
        out[f"channels_last_{str(flag).lower()}"] = _pvt_step(("dense_conv",))
    return out


def _in_child(what, timeout, *args):
    env = dict(os.environ, OPENBLAS_THREAD_TIMEOUT=str(timeout))
    code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import cpu_threads as c; print(json.dumps(c.{what}(*{args!r})))")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    import minivit  # noqa: F401
    from minivit import bench
    record = {"command": "python benchmarks/cpu_threads.py" + (f" --json {args.json}" if args.json else ""),
              "cpu_model": bench._cpu_model(), "blas_threads": bench.blas_threads(), "versions": bench._versions()}
    record["ops_alone"] = ops_alone()
    record["pvt_v2_tiny_step"] = {f"openblas_timeout_{t}_threads_{n}": _in_child("step_child", t, n)
                                  for t in (28, 4) for n in (1, 2)}
    record["gemm"] = {f"openblas_timeout_{t}": _in_child("gemm_child", t) for t in (28, 4)}
    record["dense_conv"] = _in_child("dense_conv", 4)
    text = json.dumps(record, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
