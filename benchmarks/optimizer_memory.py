"""Optimiser state of every CIFAR-10 variant with AdamW against Adafactor, in exact bytes
(README: "Scaling Vision Transformers"; "Scaling Vision Transformers" §3.4 on memory).

    python benchmarks/optimizer_memory.py --json benchmarks/optimizer_memory.json

Each model is built (float32, as the trainer trains it) with the trainer's parameter groups, given
a gradient for every parameter and stepped once by each optimiser; then the bytes of the state
arrays are summed (``Optimizer.state_bytes``: AdamW's m and v, Adafactor's row and column
statistics of each matrix, full second moments of vectors). Counting, not timing: the numbers
depend only on the parameters' shapes, so any machine gives the same record. Step counters are
Python ints and not counted. A conv kernel (O, I, kh, kw) is factored over its last two dims,
as torch.optim.Adafactor does, so its statistics are O·I·(kh + kw) numbers: about 2/3 of its
weight for 3×3 kernels, not the n + m of a matrix.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import minivit.models  # noqa: E402
from minivit import optim  # noqa: E402

MODELS = ("vit_nano", "vit_tiny", "deit_tiny", "pvt_tiny", "pvt_v2_tiny", "swin_tiny", "cvt_tiny", "pit_tiny",
          "mixer_tiny", "convmixer_tiny", "xcit_tiny", "mvitv2_tiny")
OPTIMIZERS = {"adamw": lambda groups: optim.AdamW(groups, lr=1e-3, weight_decay=0.05),
              "adafactor": lambda groups: optim.Adafactor(groups, lr=1e-2, weight_decay=0.005)}


def state_bytes_after_one_step(model, opt_name: str) -> int:
    """Bytes of ``opt_name``'s state after one step of ``model`` (zero gradients: the state's shapes
    do not depend on the values)."""
    groups = optim.param_groups_weight_decay(model, 0.05)
    opt = OPTIMIZERS[opt_name](groups)
    for p in model.parameters():
        p.grad = np.zeros_like(p.data)
    opt.step()
    opt.zero_grad()
    return opt.state_bytes()


def measure(name: str) -> dict:
    model = minivit.models.create_model(name)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    param_bytes = sum(int(p.data.nbytes) for p in model.parameters() if p.requires_grad)
    row = {"model": name, "params": int(params), "param_bytes": param_bytes}
    for opt_name in OPTIMIZERS:
        row[f"{opt_name}_state_bytes"] = state_bytes_after_one_step(model, opt_name)
    row["adafactor_over_adamw"] = round(row["adafactor_state_bytes"] / row["adamw_state_bytes"], 4)
    return row


def table(rows) -> str:
    lines = ["| model | parameters | AdamW state | Adafactor state | Adafactor / AdamW |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['adamw_state_bytes'] / 2**20:.2f} MiB | "
                     f"{r['adafactor_state_bytes'] / 2**20:.3f} MiB | {r['adafactor_over_adamw']:.1%} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", default=list(MODELS), help="registered model names (default: the CIFAR set)")
    p.add_argument("--json", default=None, help="write the record here")
    args = p.parse_args(argv)
    unknown = [m for m in args.models if m not in minivit.models.list_models()]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}: see minivit.models.list_models()")
    rows = [measure(m) for m in args.models]
    print(table(rows))
    if args.json:
        record = {"command": "python benchmarks/optimizer_memory.py --json " + args.json, "dtype": "float32",
                  "unit": "bytes", "note": "state arrays after one step; step counters not counted",
                  "rows": rows}
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
