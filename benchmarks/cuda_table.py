"""The README's table of a GPU session's benchmarks: the batch-256 records of one label
(``first-contact``: `bash .ci/gpu first-contact`; ``gpu``: `bash .ci/gpu check`), one row per model
and precision, the newest record of that label in each file.

    python benchmarks/cuda_table.py --label gpu

Ratios are minivit over PyTorch from the record itself (median step, and in brackets the fastest
steps); memory is the pool's growth over one training step in MiB (CuPy's pool for minivit,
``torch.cuda.max_memory_reserved`` for PyTorch).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
MODELS = ("vit_tiny", "swin_tiny", "pvt_v2_tiny", "cvt_tiny")
PRECISIONS = ("fp32", "tf32", "fp16")


def _record(model: str, precision: str, label: str) -> dict | None:
    path = BENCHMARKS / f"cuda_{model}_b256_{precision}.json"
    if not path.exists():
        return None
    records = [r for r in json.loads(path.read_text())["records"] if r["label"] == label]
    return records[-1] if records else None


def table(label: str) -> str:
    lines = ["| model | precision | minivit step (median) | PyTorch step | ratio, median (fastest steps) "
             "| training img/s, minivit / PyTorch | peak training memory, minivit / PyTorch |",
             "|---|---|---:|---:|---|---:|---:|"]
    for model in MODELS:
        for precision in PRECISIONS:
            r = _record(model, precision, label)
            if r is None:
                continue
            ours, torch = r["results"]["minivit"], r["results"]["torch"]
            ratio = r["ratio_minivit_over_torch"]
            mem = [x["memory"]["train_step_bytes"] / 2**20 for x in (ours, torch)]
            lines.append(
                f"| `{model}` | {precision} | {ours['train_step_s']['median'] * 1e3:.1f} ms | "
                f"{torch['train_step_s']['median'] * 1e3:.1f} ms | {ratio['train_step']:.2f}× "
                f"({ratio['train_step_best']:.2f}×) | {ours['train_img_per_s']:,.0f} / {torch['train_img_per_s']:,.0f} | "
                f"{mem[0]:,.0f} / {mem[1]:,.0f} MiB ({mem[0] / mem[1]:.2f}×) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="gpu", help="the records' label (first-contact, gpu)")
    print(table(parser.parse_args().label))


if __name__ == "__main__":
    main()
