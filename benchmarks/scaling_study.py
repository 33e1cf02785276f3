"""The "Scaling Vision Transformers" recipe, one change at a time, on the CPU (issue #21's study).

    python benchmarks/scaling_study.py --list                  # the arms and their commands
    python benchmarks/scaling_study.py                         # train every arm, seeds 0 and 1 (runs/study/)
    python benchmarks/scaling_study.py map adafactor --seeds 0  # some arms, some seeds
    python benchmarks/scaling_study.py --table                 # the README table from the runs

Each arm changes one thing of the baseline, ``vit_nano`` (the speedrun's model: a conv stem and
2 blocks of width 128, global average pooling) trained with the speedrun's recipe (AdamW 2e-3,
weight decay 0.05, batch 128, warmup 1 epoch then cosine, label smoothing 0.1, crop and flip) for
``EPOCHS`` epochs (3: the least that holds rsqrt's three phases, a warmup epoch, an rsqrt epoch and
a cooldown epoch; 12 runs of 3 epochs take about 80 minutes here) on the full CIFAR-10 training set (the JPEG q75 copy), final-epoch accuracy on
the whole test set. The same budget in epochs for every arm; the time per step is measured, so an
arm that is slower per step says so. Two seeds per arm: the spread of the two says what a
difference between arms must exceed to mean something. Needs a quiet machine for the times.

The arms (Zhai et al., 2022, "Scaling Vision Transformers", §3):
  baseline     global average pooling (GAP), one weight decay, cosine, AdamW
  token        a class token read by the head (ViT's original head)
  map          multi-head attention pooling: a learned query attends over the tokens
  head-wd      the head's own, much stronger weight decay (3.0 against the body's 0.05)
  rsqrt        warmup, then 1/sqrt(step), then a linear cooldown to 0 over the last epoch
  adafactor    Adafactor (factored second moment) instead of AdamW, same learning rate
  adafactor-lr3e-2  the same with lr 3e-2: PyTorch's Adafactor (which minivit follows) steps
               lr · max(1e-3, RMS(θ)), relative to each parameter's scale (about 0.02-0.05 for
               these weights at init), and caps the rate at 1/sqrt(step), so AdamW's lr is a
               step some 20-50 times smaller; 3e-2 is about AdamW's step (added after the
               first six arms had run)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "study"
EPOCHS = 3
BASE = ["--model", "vit_nano", "--lr", "2e-3", "--warmup-epochs", "1", "--epochs", str(EPOCHS), "--no-progress"]
ARMS = {
    "baseline": [],
    "token": ["--model-kwargs", "class_token=True,global_pool=token"],
    "map": ["--model-kwargs", "global_pool=map"],
    "head-wd": ["--head-weight-decay", "3.0"],
    "rsqrt": ["--sched", "rsqrt-cooldown", "--cooldown-epochs", "1"],
    "adafactor": ["--opt", "adafactor"],
    "adafactor-lr3e-2": ["--opt", "adafactor", "--lr", "3e-2"],
}


def _done(run: Path) -> bool:
    f = run / "metrics.jsonl"
    return f.is_file() and len([ln for ln in f.read_text().splitlines() if ln.strip()]) >= EPOCHS


def command(arm: str, seed: int) -> list[str]:
    """The arm's training command; a run that was stopped (its checkpoint is there) resumes."""
    run = RUNS / f"{arm}-s{seed}"
    if (run / "last.ckpt").is_file() and not _done(run):
        return [sys.executable, "-m", "minivit.train", "--resume", str(run), "--no-progress"]
    return [sys.executable, "-m", "minivit.train", *BASE, *ARMS[arm], "--seed", str(seed), "--out-dir", str(run)]


def optimizer_state_bytes(arm: str) -> int:
    """The optimiser's state after one step of the arm's model and optimiser, built by the trainer
    itself on 8 synthetic images, exactly (``Optimizer.state_bytes``)."""
    import tempfile
    from minivit import train
    args = train.build_parser().parse_args([*BASE, *ARMS[arm], "--dataset", "synthetic", "--subset", "8",
                                            "--test-subset", "8", "--batch-size", "8"])
    with tempfile.TemporaryDirectory() as tmp:
        tr = train.Trainer(dict(train.resolve_config(args), device="cpu"), Path(tmp), log=lambda *a: None)
        x, target, _ = next(iter(tr.train_loader.batches(0)))
        import minivit as mv
        import minivit.functional as F
        loss = F.cross_entropy(tr.model(mv.tensor(x)), mv.tensor(target))
        loss.backward()
        tr.optimizer.step()
        return tr.optimizer.state_bytes()


def table() -> str:
    rows = ["| arm | what changes | seed 0 | seed 1 | mean | time per step | optimiser state |",
            "|---|---|---:|---:|---:|---:|---:|"]
    what = {"baseline": "GAP, AdamW, cosine", "token": "class token", "map": "attention pooling (MAP)",
            "head-wd": "head weight decay 3.0", "rsqrt": "rsqrt + linear cooldown", "adafactor": "Adafactor",
            "adafactor-lr3e-2": "Adafactor, lr 3e-2"}
    for arm in ARMS:
        accs, steps = [], []
        for seed in (0, 1):
            run = RUNS / f"{arm}-s{seed}"
            if not _done(run):
                accs.append(None)
                continue
            ms = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
            accs.append(ms[-1]["test_acc"])
            steps += [m["train_time_s"] / (m["step"] - (ms[i - 1]["step"] if i else 0)) for i, m in enumerate(ms)]
        done = [a for a in accs if a is not None]
        cell = lambda a: "—" if a is None else f"{100 * a:.2f}%"                     # noqa: E731
        mean = f"{100 * sum(done) / len(done):.2f}%" if done else "—"
        step = f"{1000 * sorted(steps)[len(steps) // 2]:.0f} ms" if steps else "—"
        rows.append(f"| `{arm}` | {what[arm]} | {cell(accs[0])} | {cell(accs[1])} | {mean} | {step} | "
                    f"{optimizer_state_bytes(arm) / 2**20:.2f} MiB |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("arms", nargs="*", help=f"default: all of {', '.join(ARMS)}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--list", action="store_true", help="print the arms' commands, train nothing")
    ap.add_argument("--table", action="store_true", help="the README table from runs/study/")
    args = ap.parse_args(argv)
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        print(f"error: unknown arm(s) {', '.join(unknown)}: choose from {', '.join(ARMS)}", file=sys.stderr)
        return 2
    if args.table:
        print(table())
        return 0
    for arm in args.arms or list(ARMS):
        for seed in args.seeds:
            if _done(RUNS / f"{arm}-s{seed}") and not args.list:
                print(f"== {arm} seed {seed}: done", flush=True)
                continue
            cmd = command(arm, seed)
            print(" ".join(cmd[1:]) if args.list else f"== {arm} seed {seed}", flush=True)
            if not args.list:
                rc = subprocess.run(cmd, cwd=ROOT).returncode
                if rc:
                    return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
