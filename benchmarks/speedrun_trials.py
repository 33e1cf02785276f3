"""The CPU speedrun's 5-minute trials: each candidate recipe trains on the full CIFAR-10 training
set for about 5 minutes of wall-clock time (its schedule, warmup and cosine decay, laid out over
the epochs that fit), then is tested on the full test set. The table says which candidate learns
the most per minute of CPU; the winner gets the 30-minute run (README: "Results on a CPU").

    python benchmarks/speedrun_trials.py --json benchmarks/speedrun_trials.json     # all (~35 min, 2 cores)
    python benchmarks/speedrun_trials.py --json /tmp/t.json vit_nano-lr2e-3         # one of them
    python benchmarks/speedrun_trials.py --table benchmarks/speedrun_trials.json    # the README's table

Writes the --json record (one row per candidate: the command, parameters,
images/s, epochs, training time, final test accuracy); the runs go to /tmp/speedrun_trials.
Needs a quiet machine: the images/s and the budget are wall-clock.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = Path("/tmp/speedrun_trials")

# name → (train.py arguments, what the candidate tests). Epochs are sized so that each trial
# trains for about 5 minutes at the candidate's measured speed.
NANO = "--model vit_nano"
CANDIDATES = {
    "vit_nano-lr1e-3": (f"{NANO} --epochs 2 --lr 1e-3", "conv stem + 2 blocks, the default recipe"),
    "vit_nano-lr2e-3": (f"{NANO} --epochs 2 --lr 2e-3", "twice the learning rate"),
    "vit_nano-lr2e-3-b256": (f"{NANO} --epochs 2 --lr 2e-3 --batch-size 256", "batch 256"),
    "vit_nano-lr2e-3-ls0": (f"{NANO} --epochs 2 --lr 2e-3 --label-smoothing 0", "no label smoothing"),
    "vit_nano-d4-lr2e-3": (f"{NANO} --model-kwargs depth=4 --epochs 1 --lr 2e-3", "4 blocks (1 epoch fits)"),
    "vit_nano-s16-32-lr2e-3": (f"{NANO} --model-kwargs stem_channels=[16,32,128] --epochs 2 --lr 2e-3",
                               "a lighter stem: 16 and 32 channels before the 128"),
    "vit_nano-s16-64-lr2e-3": (f"{NANO} --model-kwargs stem_channels=[16,64,128] --epochs 2 --lr 2e-3",
                               "16 channels at full resolution only"),
    "vit_nano-s16-64-lr2e-3-b64": (f"{NANO} --model-kwargs stem_channels=[16,64,128] --epochs 2 --lr 2e-3 "
                                   "--batch-size 64", "the same, batch 64: twice the steps"),
    "vit_tiny-p4-d4-lr2e-3": ("--model vit_tiny --model-kwargs embed_dim=128,depth=4,num_heads=2,mlp_ratio=2.0 "
                              "--epochs 2 --lr 2e-3", "no stem: 4×4 patches, 4 blocks of 128 (same width)"),
    # After the 13- and 14-epoch runs (78.3%, 78.2%: more epochs of the same model no longer help),
    # with the engine of benchmarks/cpu_fast_paths.json's last side: what learns more per minute?
    "vit_nano-lr4e-3": (f"{NANO} --epochs 2 --lr 4e-3", "twice the learning rate again"),
    "vit_nano-mlp4-lr2e-3": (f"{NANO} --model-kwargs mlp_ratio=4.0 --epochs 2 --lr 2e-3", "MLP ratio 4 (wider MLPs)"),
    "vit_nano-d3-lr2e-3": (f"{NANO} --model-kwargs depth=3 --epochs 2 --lr 2e-3", "3 blocks"),
    # Progressive resizing (3 December, the AMD EPYC VM): more epochs in the same time, the first
    # ones on smaller images; with vit_nano-lr2e-3 re-run beside it as its baseline.
    "vit_nano-lr2e-3-prog16-24": (f"{NANO} --epochs 5 --lr 2e-3 --progressive-resize 16:2,24:2",
                                  "progressive resizing: 2 epochs at 16×16, 2 at 24×24, 1 at 32×32"),
    "vit_nano-lr2e-3-again": (f"{NANO} --epochs 2 --lr 2e-3", "`vit_nano-lr2e-3` again, the progressive trial's baseline"),
}


def run(name: str) -> dict:
    args, what = CANDIDATES[name]
    out = RUNS / name
    cmd = f"{sys.executable} -m minivit.train {args} --out-dir {out} --no-progress"
    t0 = time.time()
    subprocess.run(cmd.split(), check=True)
    wall = time.time() - t0
    cfg = json.loads((out / "config.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_s = sum(r["epoch_time_s"] for r in rows)
    return {"candidate": name, "what": what, "command": f"python -m minivit.train {args}",
            "params": cfg["num_params"], "epochs": len(rows),
            "images_per_s": round(sum(r["images_per_s"] for r in rows) / len(rows), 1),
            "train_time_s": round(train_s, 1), "wall_s": round(wall, 1),
            "test_acc_per_epoch": [r["test_acc"] for r in rows], "final_test_acc": rows[-1]["test_acc"],
            "n_test": cfg["n_test"], "data": cfg["data_source"], "machine": machine()}


def machine() -> str:
    from minivit.bench import _cpu_model
    return f"{_cpu_model() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores"


def main(out: Path, names):
    table = json.loads(out.read_text()) if out.exists() else {"rows": []}
    table.setdefault("machine", machine())          # the first rows'; a row run elsewhere says its own
    for name in names:
        row = run(name)
        table["rows"] = [r for r in table["rows"] if r["candidate"] != name] + [row]
        out.write_text(json.dumps(table, indent=1) + "\n")
        print(f"{name}: {row['images_per_s']} img/s, {row['epochs']} epochs in {row['train_time_s']:.0f} s, "
              f"test acc {row['final_test_acc']:.2%}", flush=True)


def markdown_table(path: Path):
    table = json.loads(path.read_text())
    print(f"| candidate | what it tests | parameters | images/s | epochs | training time | test accuracy |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in table["rows"]:
        curve = " → ".join(f"{a:.1%}" for a in r["test_acc_per_epoch"])
        where = r.get("machine", table["machine"])
        what = r["what"] + ("" if where == table["machine"] else f" (on the {where.split(',')[0]})")
        print(f"| `{r['candidate']}` | {what} | {r['params'] / 1e6:.2f}M | {r['images_per_s']:.0f} | "
              f"{r['epochs']} | {r['train_time_s'] / 60:.1f} min | {curve} |")


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"candidates (default: all): {', '.join(CANDIDATES)}")
    ap.add_argument("--json", type=Path, help="the record to write (rows of candidates already in it are kept)")
    ap.add_argument("--table", type=Path, help="print a record as the README's markdown table")
    a = ap.parse_args()
    if a.table:
        markdown_table(a.table)
    elif not a.json:
        ap.error("give --json PATH (the record to write) or --table PATH")
    else:
        unknown = [n for n in a.names if n not in CANDIDATES]
        if unknown:
            ap.error(f"unknown candidates {unknown}; choose from {', '.join(CANDIDATES)}")
        main(a.json, a.names or list(CANDIDATES))
