"""Every CIFAR-10 variant trained for the same wall-clock budget on the full training set
(README: "Every variant under one CPU budget"; lesson 09 draws its accuracy plots from these runs).

    python benchmarks/budget_runs.py --plan              # measure each model's speed, print the plan
    python benchmarks/budget_runs.py --plan mixer_tiny   # ... of some
    python benchmarks/budget_runs.py vit_tiny pit_tiny   # train those (runs/<model>/), one after another
    python benchmarks/budget_runs.py --table             # the README table from the committed runs

The budget is 8 minutes of training (evaluation excluded) on the project's 2-core CPU. Each model's
schedule is laid out over the whole epochs that fit the budget at its measured speed (at least
one), so every run ends its cosine schedule: ``EPOCHS`` below is that plan, measured on the
machine named in the README; ``--plan`` measures it again on yours. The recipe is the trainer's
default (AdamW 1e-3, weight decay 0.05, batch 128, label smoothing 0.1, crop + flip) for all.
``deit_tiny-distilled`` learns from ``resnet_teacher``'s budget run (hard distillation, DeiT's
best), so the teacher is trained first; its time is not part of the student's budget.
Needs a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs"
BUDGET_S = 8 * 60
N_TRAIN = 50_000

# run name → (model, extra train.py arguments); epochs: whole epochs that fit BUDGET_S
VARIANTS = {
    "vit_nano": ("vit_nano", []),
    "vit_tiny": ("vit_tiny", []),
    "deit_tiny": ("deit_tiny", []),
    "resnet_teacher": ("resnet_teacher", []),
    "deit_tiny-distilled": ("deit_tiny", ["--teacher", "runs/resnet_teacher", "--distillation", "hard"]),
    "pvt_tiny": ("pvt_tiny", []),
    "pvt_v2_tiny": ("pvt_v2_tiny", []),
    "swin_tiny": ("swin_tiny", []),
    "cvt_tiny": ("cvt_tiny", []),
    "pit_tiny": ("pit_tiny", []),
    "mixer_tiny": ("mixer_tiny", []),
    "convmixer_tiny": ("convmixer_tiny", []),
    "xcit_tiny": ("xcit_tiny", []),
    "mvitv2_tiny": ("mvitv2_tiny", []),
}
# --plan on the project's 2-core Intel Xeon, 2026-12-02 (measured img/s: the minutes the epochs take)
EPOCHS = {
    "vit_nano": 4,              # 430 img/s: 7.8 min
    "vit_tiny": 1,              # 85 img/s: 9.8 min (one epoch is over the budget; the least a run is)
    "deit_tiny": 1,             # 85 img/s: 9.9 min
    "resnet_teacher": 1,        # 151 img/s: 5.5 min
    "deit_tiny-distilled": 1,   # 86 img/s: 9.7 min
    "pvt_tiny": 2,              # 285 img/s: 5.9 min
    "pvt_v2_tiny": 2,           # 215 img/s: 7.7 min
    "swin_tiny": 1,             # 99 img/s: 8.4 min
    "cvt_tiny": 1,              # 145 img/s: 5.8 min
    "pit_tiny": 1,              # 83 img/s: 10.1 min
    # the survey's models, --plan on the same machine at 16:17 that day, when it ran ~27% slower
    # (vit_nano: 312 img/s against 430 in the morning)
    "mixer_tiny": 1,            # 73 img/s: 11.5 min
    "convmixer_tiny": 1,        # 56 img/s: 14.8 min
    "xcit_tiny": 1,             # 37 img/s: 22.4 min
    "mvitv2_tiny": 1,           # 45 img/s: 18.5 min
}


def command(name: str) -> list:
    model, extra = VARIANTS[name]
    if name not in EPOCHS:
        raise SystemExit(f"error: no planned epochs for {name}: run --plan and put them in EPOCHS")
    return [sys.executable, "-m", "minivit.train", "--model", model, "--epochs", str(EPOCHS[name]),
            *extra, "--out-dir", str(RUNS / name), "--no-progress"]


def plan(names=None):
    """Time 6 training steps of each model (batch 128; ``names``, or every variant) and print the
    epochs that fit the budget."""
    import time

    import numpy as np

    from minivit import Tensor, optim
    from minivit.models import create_model
    from minivit.losses import cross_entropy
    for name in names or VARIANTS:
        model = create_model(VARIANTS[name][0])
        model.train()
        opt = optim.AdamW(optim.param_groups_weight_decay(model, 0.05), lr=1e-3)
        x = Tensor(np.random.default_rng(0).standard_normal((128, 3, 32, 32)).astype(np.float32))
        y = np.arange(128) % 10
        times = []
        for _ in range(6):
            t = time.perf_counter()
            out = model(x)
            out = out[0] if isinstance(out, tuple) else out
            loss = cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
        ips = 128 / float(np.median(times[2:]))
        epochs = max(1, int(BUDGET_S * ips // N_TRAIN))
        print(f"    {name!r}: {epochs},   # {ips:.0f} img/s: {epochs * N_TRAIN / ips / 60:.1f} min", flush=True)


def table():
    """Markdown rows from runs/<name>/ (config.json, metrics.jsonl) and the counted MACs."""
    from minivit import zeros
    from minivit.complexity import count_macs
    from minivit.models import create_model
    print("| model | parameters | MACs / image | images/s (training) | epochs | training time | test accuracy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (model_name, extra) in VARIANTS.items():
        run = RUNS / name
        if not (run / "metrics.jsonl").is_file():
            print(f"| {name} | | | | | | not yet run |")
            continue
        cfg = json.loads((run / "config.json").read_text())
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        macs = count_macs(create_model(model_name), zeros(1, 3, 32, 32)).total
        train_s = sum(r["train_time_s"] for r in rows)
        ips = len(rows) * cfg["n_train"] // cfg["batch_size"] * cfg["batch_size"] / train_s
        print(f"| {name} | {cfg['num_params'] / 1e6:.2f}M | {macs / 1e6:.1f}M | {ips:.0f} | {len(rows)} | "
              f"{train_s / 60:.1f} min | {rows[-1]['test_acc']:.2%} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"variants to train: {', '.join(VARIANTS)}")
    ap.add_argument("--plan", action="store_true")
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.plan:
        return plan(args.names)
    if args.table:
        return table()
    for name in args.names:
        cmd = command(name)
        print(" ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
