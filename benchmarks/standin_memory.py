"""Peak device memory of one training step on the strict CuPy stand-in, with the depthwise conv's
GPU kernels and with im2col (``Conv2d.depthwise_fast_path = False``), no GPU needed.

    python benchmarks/standin_memory.py --model pvt_v2_tiny --model cvt_tiny --batch-size 256 --json benchmarks/standin_memory.json

What it counts: the stand-in's memory pool (``cupy.get_default_memory_pool().total_bytes()``)
holds the peak of the bytes of live device arrays since it was last emptied, as CuPy's pool
keeps freed blocks; block rounding, cuBLAS workspaces and the CUDA context are not in it, so it
is a lower bound of what a GPU's pool grows by (``minivit.bench`` reads the same number there).
One warm-up step first (the optimizer's state exists), then the measured step: forward,
cross-entropy, backward, AdamW, fp32.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ["MINIVIT_STRICT_CUPY"] = "1"

import numpy as np  # noqa: E402

import minivit.functional as F  # noqa: E402
import minivit.models  # noqa: E402,F401
from minivit import backend, optim  # noqa: E402
from minivit.autograd import Tensor  # noqa: E402
from minivit.functional.conv import Conv2d  # noqa: E402
from minivit.models.registry import create_model  # noqa: E402


def peak_step_bytes(name: str, batch: int, depthwise_kernels: bool) -> int:
    cp = backend.xp_for("cuda")
    pool = cp.get_default_memory_pool()
    Conv2d.depthwise_fast_path = depthwise_kernels
    try:
        backend.manual_seed(0)
        model = create_model(name, num_classes=10).to(device="cuda")
        opt = optim.AdamW(model.parameters(), lr=1e-3)
        rng = np.random.default_rng(0)
        x = Tensor(cp.asarray(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)))
        y = cp.asarray(rng.integers(0, 10, batch))

        def step():
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        step()
        pool.free_all_blocks()
        base = pool.total_bytes()
        step()
        return int(pool.total_bytes() - base)
    finally:
        Conv2d.depthwise_fast_path = True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args(argv)
    rows = []
    for name in args.model:
        kern = peak_step_bytes(name, args.batch_size, True)
        im2col = peak_step_bytes(name, args.batch_size, False)
        rows.append({"model": name, "batch": args.batch_size, "depthwise_kernels_bytes": kern, "im2col_bytes": im2col})
        print(f"{name:14s} batch {args.batch_size}: peak device memory of a training step {kern / 2**20:,.0f} MiB "
              f"with the depthwise kernels, {im2col / 2**20:,.0f} MiB with im2col ({kern / im2col:.2f}×)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"method": "strict CuPy stand-in: peak bytes of live device arrays over one training step "
                                 "(fp32, after a warm-up step)", "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
