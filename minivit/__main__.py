"""``python -m minivit``: check the engine, then train a small network with it.

1. Gradient self-check: a little network (linear → layer norm → GELU → linear →
   cross-entropy) in float64, its backward compared with finite differences.
2. Training: an MLP learns to tell apart three interleaved 2-D spirals, with
   AdamW, a warmup + cosine schedule and gradient clipping — the same loop
   `python -m minivit.train` runs for vision transformers.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import minivit as mv
import minivit.functional as F
from minivit import backend, cli, nn, optim
from minivit.testing import gradcheck


def spirals(n_per_class: int = 300, classes: int = 3, noise: float = 0.15, seed: int = 0):
    """Points on `classes` interleaved spiral arms; (N, 2) float32 inputs and (N,) labels."""
    rng = np.random.default_rng(seed)
    r = np.tile(np.linspace(0.05, 1.0, n_per_class), classes)
    label = np.repeat(np.arange(classes), n_per_class)
    theta = label * 2 * np.pi / classes + 4.0 * r + rng.normal(0, noise, r.shape)
    x = np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1)
    return x.astype(np.float32), label.astype(np.int64)


def self_check() -> float:
    """Finite-difference check of a small composite network; returns the seconds it took."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    x = mv.Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    w1 = mv.Tensor(rng.standard_normal((6, 3)), requires_grad=True)
    w2 = mv.Tensor(rng.standard_normal((3, 6)), requires_grad=True)
    target = mv.tensor([0, 2, 1, 2])

    def net(x, w1, w2):
        h = F.gelu(F.layer_norm(F.linear(x, w1), (6,)))
        return F.cross_entropy(F.linear(h, w2), target, label_smoothing=0.1)

    gradcheck(net, x, w1, w2)
    return time.perf_counter() - t0


def train(device: str, steps: int, seed: int, log_every: int = 100, verbose: bool = True) -> float:
    """Train an MLP on the spirals; returns the final training accuracy."""
    mv.manual_seed(seed)
    x_np, y_np = spirals(seed=seed)
    x, y = mv.tensor(x_np, device=device), mv.tensor(y_np, device=device)
    model = nn.Sequential(nn.Linear(2, 64), nn.GELU(), nn.LayerNorm(64),
                          nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 3)).to(device=device)
    opt = optim.AdamW(optim.param_groups_weight_decay(model, 1e-4), lr=1e-2)
    sched = optim.lr_scheduler.CosineWarmupLR(opt, warmup_steps=steps // 10, total_steps=steps)
    for step in range(1, steps + 1):
        batch = backend.to_device(np.random.randint(0, len(x_np), 128), device)
        logits = model(x[batch])
        loss = F.cross_entropy(logits, y[batch])
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if verbose and (step % log_every == 0 or step == 1):
            print(f"  step {step:4d}  loss {loss.item():.4f}  lr {sched.get_last_lr()[0]:.5f}")
    with mv.no_grad():
        acc = float((model(x).argmax(-1).numpy() == y_np).mean())
    return acc


def main(argv=None) -> float:
    p = cli.ArgumentParser(prog="python -m minivit", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=backend.DEVICES, default=None,
                   help="cpu (NumPy) or cuda (CuPy); default: cuda when CuPy sees a GPU")
    p.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    return cli.run_cli(_main, args)


def _main(args) -> float:
    cli.check_positive(args, "steps")
    device = cli.check_device(args.device or backend.default_device())

    print(f"minivit {mv.__version__}  numpy {np.__version__}  device {device}"
          f"  (CuPy with a GPU: {'no: the strict CuPy stand-in' if backend.is_strict_standin() else 'yes' if backend.cupy_available() else 'no'})")
    print(f"1. gradient self-check (float64 finite differences): ok in {self_check():.2f}s")
    print(f"2. training an MLP on three spirals ({args.steps} steps, AdamW + warmup/cosine):")
    t0 = time.perf_counter()
    acc = train(device, args.steps, args.seed)
    print(f"   training accuracy {acc:.1%} in {time.perf_counter() - t0:.1f}s")
    return acc


if __name__ == "__main__":
    main()
