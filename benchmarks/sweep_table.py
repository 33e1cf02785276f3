"""The README's table of a complexity sweep's record: fitted exponents, the times at the smallest
and largest grids, and the exponent between the last two grids (where the GPU's launch floor
matters least).

    python benchmarks/sweep_table.py figures/complexity_cuda.json

The fitted exponents are the sweep's own (``slope_forward``, ``slope_forward_backward``); the
last-two exponent is log(t_last / t_prev) / log(N_last / N_prev) over the tokens N.
"""
from __future__ import annotations

import argparse
import json
import math

NAMES = {"pooling attn kv/4": "pooling attention, K/V stride 4",
         "joint space-time T=4": "joint space-time, T = 4", "divided space-time T=4": "divided space-time, T = 4"}


def _num(x: float) -> str:
    return f"{x:.2f}".replace("-", "−")


def _grid(layer: str, side: int) -> str:
    return f"{side}² × 4" if "space-time" in layer else f"{side}²"


def table(record: dict) -> str:
    lines = ["| layer | theory | fitted, forward | fitted, forward+backward | grids | forward at the smallest grid "
             "| forward / forward+backward at the largest | exponent of the last two grids (fwd / fwd+bwd) |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in record["results"]:
        rows, name = r["rows"], r["layer"]
        prev, last = rows[-2], rows[-1]
        def tail(key):
            return math.log(last[key] / prev[key]) / math.log(last["tokens"] / prev["tokens"])
        ms = lambda t: f"{t * 1e3:.2f}" if t < 1e-3 else f"{t * 1e3:.1f}"
        lines.append(f"| {NAMES.get(name, name)} | {r['theory']} | {_num(r['slope_forward'])} | "
                     f"{_num(r['slope_forward_backward'])} | {_grid(name, rows[0]['side'])} … "
                     f"{_grid(name, last['side'])} | {rows[0]['forward_s'] * 1e3:.2f} ms | "
                     f"{ms(last['forward_s'])} / {ms(last['forward_backward_s'])} ms | "
                     f"{_num(tail('forward_s'))} / {_num(tail('forward_backward_s'))} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("record", help="a sweep's JSON (figures/complexity_<device>.json)")
    args = ap.parse_args(argv)
    with open(args.record) as f:
        print(table(json.load(f)))


if __name__ == "__main__":
    main()
