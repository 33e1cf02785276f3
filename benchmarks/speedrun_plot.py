"""Overlay the test-accuracy curves of training runs: against epochs, and against wall-clock
training time (evaluation excluded), with the 80% line of the CPU speedrun.

    python benchmarks/speedrun_plot.py runs/vit_nano-speedrun runs/vit_nano-speedrun-torch \\
        --out figures/speedrun_cpu.png

Each run directory's metrics.jsonl gives the curve; its config.json the label (minivit, or
the engine a twin was trained with). Prints, per run, the first epoch at or above --target
and the training time it took, and the ratio of those times to the first run's.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(run: Path):
    cfg = json.loads((run / "config.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    label = cfg.get("engine", "minivit " + cfg.get("versions", {}).get("minivit", ""))
    label = "PyTorch " + label.split()[1] if label.startswith("torch") else label
    t, times = 0.0, []
    for r in rows:
        t += r["train_time_s"]
        times.append(t / 60)
    return label, cfg, rows, times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--target", type=float, default=0.80)
    args = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    first = None
    for run in args.runs:
        label, cfg, rows, times = load(run)
        acc = [100 * r["test_acc"] for r in rows]
        ep = [r["epoch"] for r in rows]
        ax1.plot(ep, acc, "o-", ms=3, label=label)
        ax2.plot(times, acc, "o-", ms=3, label=label)
        hit = next((i for i, r in enumerate(rows) if r["test_acc"] >= args.target), None)
        if hit is None:
            print(f"{run}: {label}: never reached {args.target:.0%} (final {acc[-1]:.2f}% after "
                  f"{times[-1]:.1f} min of training)")
            continue
        first = first or times[hit]
        print(f"{run}: {label}: {args.target:.0%} at epoch {rows[hit]['epoch']} after {times[hit]:.1f} min "
              f"of training (×{times[hit] / first:.2f} the first run's); final {acc[-1]:.2f}% after "
              f"{times[-1]:.1f} min")
    for ax in (ax1, ax2):
        ax.axhline(100 * args.target, color="gray", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
    ax1.set_xlabel("epoch")
    ax2.set_xlabel("training time (min, evaluation excluded)")
    ax1.set_ylabel("test accuracy (%)")
    _, cfg, _, _ = load(args.runs[0])
    ax1.set_title(f"{cfg['model']} on CIFAR-10 ({cfg['n_test']:,} test images)")
    ax2.set_title("the same runs against wall-clock time")
    ax2.legend(loc="lower right")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
