"""TimeSformer's three attention types on the generated motion clips, under one CPU recipe
(the paper's Table 1 in miniature; README "Video: TimeSformer", lesson 14), and MViT v1's pooling
attention under the same recipe.

    python benchmarks/video_runs.py --check-data            # the labels are in the clips: a hand-made detector
    python benchmarks/video_runs.py --signal                 # does the first gradient see the label? (see below)
    python benchmarks/video_runs.py --baseline               # a one-layer 3-D convolution on the same clips
    python benchmarks/video_runs.py divided joint space_only # train runs/motion_<name>/, one after another
    python benchmarks/video_runs.py mvit_v1_tiny             # MViT v1 (3-D conv stem, pooling attention)
    python benchmarks/video_runs.py --table                  # the table from the committed runs

``--check-data`` needs no training: it correlates each frame with the next one shifted one and
two pixels right and left (on the torus) and says "right" when the right shifts match better. It
reads the label of every test clip, so the two classes are in the clips.

``--signal`` measures whether an untrained model's gradient carries the label at all. The
direction part of the gradient, ∑ᵢ sᵢ ∂(z₁ − z₀)/∂θ with sᵢ = ±1 the centred labels, is computed
on two disjoint halves of 1,024 clips; if the model's features hold anything about the label, the
two halves agree (cosine near 1), and if they do not, the two vectors are fitting noise and point
anywhere. The same with shuffled labels is one control; space-only attention, which provably sees
nothing of the label, is the other. It builds the models with the released code's init (zero time
embedding, Linear std 0.02), the one the first runs used. On the project's machine (2026-12-03):
divided −0.160 (shuffled −0.577), joint −0.185 (−0.566), space-only −0.202 (−0.557), the 3-D conv
baseline +0.96 (−0.87).

Why the released init does not learn, and the recipe's init (``TIMESFORMER_INIT``). Under the
released code's init all three attention types stayed at 50.0% (6 epochs; earlier: lr 3e-4 to
3e-3, one block, patches 16 and 32, 30 epochs of 4,000 clips). A zero time embedding makes the
model exactly blind to frame order, and at std 0.02 (chosen for width 768; 1/√64 = 0.125 here) the
attention is nearly uniform and GELU nearly linear, so every feature that tells right from left is
a product of several small weights: the first gradients carry no label (above). Motion is frame t
against frame t ± 1, which a TimeSformer can only form with attention whose weights depend on when
a token is. Measured on 2026-12-03 (``python -m minivit.train`` with this file's RECIPE at 6 epochs
and the --model-kwargs named; a loaded, shared 2-core machine):

    divided, time_embed_init=normal, time_embed_scale=0.02              50.0% (train loss 0.694)
    divided, time_embed_init=normal, time_embed_scale=1                 50.0% (0.694)
    divided, normal, scale 1, init_std=0.125                            50.0% after 5 epochs (0.697)

and in a plain loop (depth 1, AdamW without weight decay or schedule, batch 32, 2,000 clips,
test on 200 clips):

    time_embed_init=normal (scale 1), init_std=0.125, lr 3e-3           55% after 400 steps (loss 0.70)
    time_embed_init=sincos, init_std=0.125, lr 1e-3                     56% after 300 steps,
                                                                        98.5% after 400, 99.0% after 500

A ridge probe on the untrained models' features (class token and mean token, 900 clips to fit,
300 to test) reads 52% of the labels with the released init, 54% with a normal time embedding of
std 1, 63% with that and init_std=0.125, 62% with sincos and init_std=0.125, 53% with sincos and
the released std 0.02 (a zero time embedding reads exactly 50% in expectation: blind). So the
untrained features hold the label only with both changes: at std 0.125 the attention scores are of
order one, and a non-zero time embedding makes the untrained attention lean in time. (Training with
only one of them, sincos at std 0.02 or zeros at 0.125, was not run to the end.)
One reading of why the sinusoidal table learns where a random
one did not (suggested, not proven): its columns change smoothly with t, so e_tᵀ A e_t′ holds terms
in sin(ω(t − t′)), the same lean forwards or backwards at every frame, and the motion features of
the frames add up; a random draw leans a different way at each frame. ``TIMESFORMER_INIT`` is
that init (``time_embed_init=sincos, init_std=0.125``); the runs take 12 epochs (the plain loop
needed 300-400 steps at a constant 1e-3 before its loss fell, and 6 epochs under warmup and cosine
are 372 steps). Space-only attention has no time embedding; the kwargs change only its Linear std.
Under it (``--table``; 2026-12-03, shared machine): divided learns (97.8% after epoch 4, 99.8% after
12); joint does not learn in 12 epochs (54.2%, train loss 0.686), no better than space-only (52.8%,
0.684), which is at chance by construction (500 test clips: one standard deviation is 2.2 points). In
joint attention a token shares its weight among all 129 tokens instead of its patch's 8 frames, so
the same lean in time is spread far thinner; a recipe for joint is not yet found.

``--baseline`` trains the smallest model that compares neighbouring frames directly: one 3-D
convolution (16 filters of 3 frames × 5×5 pixels, stride 2 in space), GELU, the mean over space and
time, a linear head; AdamW 3e-3, batch 32, 3 epochs of the same 2,000 clips, no schedule; its
record goes to runs/motion_conv3d/.

The runs use the trainer (``python -m minivit.train --task video``) with ``RECIPE`` and one
``--model-kwargs attention_type=...,time_embed_init=sincos,init_std=0.125`` each (``mvit_v1_tiny``: that
model under the same RECIPE, no kwargs); time per step is the training time of the run divided
by its steps (evaluation excluded), MACs are counted on one clip (``minivit.complexity``).
Each run is a few minutes on the project's 2-core CPU; needs a quiet machine for the times.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs"

# one recipe for all runs: the trainer's defaults but for what is listed
RECIPE = ["--task", "video", "--dataset", "motion", "--subset", "2000", "--batch-size", "32", "--epochs", "12",
          "--label-smoothing", "0"]
# TimeSformer's from-scratch init (the released code's is time_embed_init=zeros, init_std=0.02)
TIMESFORMER_INIT = "time_embed_init=sincos,init_std=0.125"
VARIANTS = {                       # run name → attention type (Hugging Face's names)
    "divided": "divided_space_time",
    "joint": "joint_space_time",
    "space_only": "space_only",
}
OTHER_MODELS = ("mvit_v1_tiny",)   # run name = model name, same recipe


def model_args(name: str) -> list:
    """The run's --model (and --model-kwargs) arguments."""
    if name in OTHER_MODELS:
        return ["--model", name]
    return ["--model", "timesformer_tiny", "--model-kwargs", f"attention_type={VARIANTS[name]},{TIMESFORMER_INIT}"]


def command(name: str) -> list:
    return [sys.executable, "-m", "minivit.train", *RECIPE, *model_args(name), "--out-dir", f"runs/motion_{name}",
            "--no-progress"]   # relative: cwd is the repository


def shift_detector_accuracy(split) -> float:
    """Accuracy of a hand-made motion detector on a ``ClipSplit``: no parameters, no training."""
    import numpy as np
    x = split.clips.astype(np.float32) / 255
    x = x - x.mean(axis=(3, 4), keepdims=True)                        # each frame and channel centred
    score = {s: (x[:, 1:] * np.roll(x[:, :-1], s, axis=-1)).sum(axis=(1, 2, 3, 4)) for s in (-2, -1, 1, 2)}
    right = np.maximum(score[1], score[2]) > np.maximum(score[-1], score[-2])
    return float(np.mean(np.where(right, 0, 1) == split.labels))


def check_data():
    from minivit.data.motion import motion_split
    test = motion_split(1000, [0, 1])                                 # the trainer's test split (seed 0)
    print(f"hand-made detector (frame t+1 against frame t shifted ±1, ±2 px): "
          f"{shift_detector_accuracy(test):.1%} of 1,000 test clips")


def label_signal(model, clips, labels, seed: int = 5):
    """(cosine of the two halves' direction gradients with the true labels, the same with shuffled)."""
    import numpy as np

    from minivit.autograd import Tensor
    from minivit.data.augment import normalize

    def direction_grad(x, y):
        s = 2.0 * y - 1
        s = (s - s.mean()).astype(np.float32)
        for p in model.parameters():
            p.grad = None
        for i in range(0, len(x), 64):
            z = model(Tensor(normalize(x[i:i + 64])))
            ((z[:, 1] - z[:, 0]) * Tensor(s[i:i + 64])).sum().backward()
        return np.concatenate([np.ravel(p.grad) for k, p in model.named_parameters() if k != "head.bias"])

    def cos(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    h = len(labels) // 2
    shuffled = np.random.default_rng(seed).permutation(labels)
    out = []
    for y in (labels, shuffled):
        out.append(cos(direction_grad(clips[:h], y[:h]), direction_grad(clips[h:], y[h:])))
    return tuple(out)


def signal():
    from minivit import manual_seed
    from minivit.data.motion import motion_split
    from minivit.models import create_model
    train = motion_split(1024, [0, 0])
    print(f"{'untrained model':34} {'cos, true labels':>17} {'cos, shuffled':>14}")
    for name, attention in VARIANTS.items():
        manual_seed(0)
        true, shuffled = label_signal(create_model("timesformer_tiny", attention_type=attention), train.clips,
                                      train.labels)
        print(f"{'timesformer_tiny ' + name:34} {true:17.3f} {shuffled:14.3f}", flush=True)
    manual_seed(0)
    true, shuffled = label_signal(conv3d_model(), train.clips, train.labels)
    print(f"{'3-D conv baseline':34} {true:17.3f} {shuffled:14.3f}", flush=True)


def conv3d_model():
    """The baseline: one 3-D convolution (16 filters, 3 frames × 5×5 px, stride 2 in space), GELU, the
    mean over time and space, a linear head; clips (B, T, C, H, W) → logits (B, 2)."""
    import minivit.functional as F
    from minivit import nn

    class Conv3dBaseline(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(3, 16, (3, 5, 5), stride=(1, 2, 2), padding=(0, 2, 2))
            self.head = nn.Linear(16, 2)

        def forward(self, x):                                           # (B, T, C, H, W)
            x = F.gelu(self.conv(x.permute(0, 2, 1, 3, 4)))             # (B, 16, T − 2, H/2, W/2)
            return self.head(x.mean(dim=(2, 3, 4)))
    return Conv3dBaseline()


def conv3d_baseline(epochs: int = 3, n_train: int = 2000, n_test: int = 500, run_dir=None, log=print) -> list[float]:
    """Train the one-layer 3-D convolution of ``--baseline``; returns the test accuracy after each epoch,
    and writes ``run_dir`` (config.json, metrics.jsonl, curves.png) when given."""
    import numpy as np

    import minivit.functional as F
    from minivit import manual_seed, optim
    from minivit.autograd import Tensor, no_grad
    from minivit.data.augment import normalize
    from minivit.data.motion import motion_split


    import time

    manual_seed(0)
    train, test = motion_split(n_train, [0, 0]), motion_split(n_test, [0, 1])
    model = conv3d_model()
    opt = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    n_params = sum(p.numel() for p in model.parameters())
    rows = []
    for epoch in range(epochs):
        order = np.random.default_rng([0, epoch]).permutation(n_train)
        losses, correct, t0 = [], 0, time.perf_counter()
        for step in range(n_train // 32):
            idx = order[step * 32:(step + 1) * 32]
            out = model(Tensor(normalize(train.clips[idx])))
            loss = F.cross_entropy(out, train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.numpy()))
            correct += int((out.numpy().argmax(axis=1) == train.labels[idx]).sum())
        train_s = time.perf_counter() - t0
        with no_grad():
            logits = model(Tensor(normalize(test.clips)))
            test_loss = float(F.cross_entropy(logits, test.labels).numpy())
        rows.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                     "train_acc": correct / (n_train // 32 * 32), "test_loss": test_loss,
                     "test_acc": float(np.mean(logits.numpy().argmax(axis=1) == test.labels)),
                     "lr": 3e-3, "train_time_s": train_s, "step": (epoch + 1) * (n_train // 32)})
        log(f"3-D conv baseline ({n_params:,} parameters), epoch {epoch + 1}: "
            f"test accuracy {rows[-1]['test_acc']:.1%} on {n_test} clips")
    if run_dir is not None:                   # a run directory as the trainer writes one (no checkpoint)
        from minivit.plotting import plot_curves
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = {"task": "video", "model": "conv3d_baseline (benchmarks/video_runs.py)", "dataset": "motion",
               "n_train": n_train, "n_test": n_test, "epochs": epochs, "batch_size": 32, "opt": "adamw",
               "lr": 3e-3, "weight_decay": 0.0, "sched": "constant", "label_smoothing": 0.0,
               "steps_per_epoch": n_train // 32, "num_params": n_params, "seed": 0,
               "command": "python benchmarks/video_runs.py --baseline"}
        (run_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        plot_curves(rows, run_dir / "curves.png", title=f"3-D conv baseline on motion ({n_train} train / "
                                                          f"{n_test} test clips)")
    return [r["test_acc"] for r in rows]


def table():
    """Markdown rows from runs/motion_<name>/ (config.json, metrics.jsonl) and the counted MACs."""
    from minivit import zeros
    from minivit.autograd import no_grad
    from minivit.complexity import count_macs
    from minivit.models import create_model
    print("| attention | init | parameters | MACs / clip | s / step (batch 32) | epochs | training time "
          "| final test accuracy | best |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, attention in [*VARIANTS.items(), *((n, f"{n} (pooling)") for n in OTHER_MODELS)]:
        run = RUNS / f"motion_{name}"
        if not (run / "metrics.jsonl").is_file():
            print(f"| {attention} | | | | | | | not yet run | |")
            continue
        cfg = json.loads((run / "config.json").read_text())
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        model = create_model(cfg["model"], **(cfg["model_kwargs"] or {})).eval()
        clip = (1, 3, 8, 32, 32) if getattr(model, "clip_layout", None) == "BCTHW" else (1, 8, 3, 32, 32)
        with no_grad():
            macs = count_macs(model, zeros(*clip)).total
        train_s = sum(r["train_time_s"] for r in rows)
        steps = len(rows) * cfg["steps_per_epoch"]
        kw = cfg["model_kwargs"] or {}
        time = "no" if attention == "space_only" else kw.get("time_embed_init", "zeros")
        init = "—" if name in OTHER_MODELS else f"{time} time embedding, Linear std {kw.get('init_std', 0.02)}"
        print(f"| {attention} | {init} | {cfg['num_params']:,} | {macs / 1e6:.1f}M | {train_s / steps:.3f} | {len(rows)} | "
              f"{train_s / 60:.1f} min | {rows[-1]['test_acc']:.1%} | {max(r['test_acc'] for r in rows):.1%} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"runs to train: {', '.join([*VARIANTS, *OTHER_MODELS])}")
    ap.add_argument("--check-data", action="store_true")
    ap.add_argument("--signal", action="store_true")
    ap.add_argument("--baseline", action="store_true")
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in VARIANTS and n not in OTHER_MODELS]
    if unknown:
        raise SystemExit(f"error: unknown run {', '.join(unknown)}; choose from "
                         f"{', '.join([*VARIANTS, *OTHER_MODELS])}")
    if args.check_data:
        check_data()
    if args.signal:
        signal()
    if args.baseline:
        conv3d_baseline(run_dir=RUNS / "motion_conv3d")
    for name in args.names:
        print(" ".join(command(name)[1:]), flush=True)
        subprocess.run(command(name), check=True, cwd=ROOT)
        for ck in (RUNS / f"motion_{name}").glob("*.ckpt"):         # never committed
            ck.unlink()
    if args.table:
        table()


if __name__ == "__main__":
    main()
