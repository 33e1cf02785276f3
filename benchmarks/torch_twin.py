"""Train a minivit run's PyTorch twin: the same architecture (timm's), the same initial weights,
the same batches in the same order with the same augmentation draws, the same optimiser, schedule
and loss, on the same CPU, so that the two runs differ only in the engine.

    python benchmarks/torch_twin.py runs/vit_nano-speedrun        # → runs/vit_nano-speedrun-torch/
    python benchmarks/torch_twin.py runs/vit_nano_speedrun13 --set label_smoothing=0 --set crop_padding=0 \
        --out-dir runs/vit_nano13-ls0-nocrop-torch                 # a recipe minivit has not run (yet)

``--set KEY=VALUE`` changes the run's recipe (any key of its config.json, the value read as JSON,
else as a string) before the twin is built: the PyTorch twin, about twice as fast on this CPU and
epoch for epoch the same training, then tries a recipe first (the record says which keys changed).

It reads the minivit run's config.json and rebuilds the run with minivit's own ``Trainer``
(never stepped): its model supplies the initial weights (minivit → timm by state_dict keys), its
loaders the batches (NumPy arrays, handed to torch without a copy) and its scheduler the learning
rate of every step. PyTorch then trains timm's twin with ``torch.optim.AdamW`` (the same two
weight-decay groups) and ``cross_entropy(label_smoothing=…)``, on ``torch.set_num_threads``
= the cores minivit used. The run directory gets config.json and metrics.jsonl in minivit's
format (train_time_s excludes the evaluation, as minivit's). Needs torch and timm.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def timm_twin(name: str, kwargs: dict, num_classes: int):
    """timm's module for a minivit CIFAR model (the ones the speedrun uses)."""
    from timm.models.vision_transformer import VisionTransformer
    if name == "vit_nano":
        from minivit.bench import timm_vit_nano
        return timm_vit_nano(**dict(kwargs, num_classes=num_classes))
    if name == "vit_tiny":
        kw = dict(img_size=32, patch_size=4, num_classes=num_classes, embed_dim=256, depth=7, num_heads=4,
                  mlp_ratio=2.0)
        kw.update(kwargs)
        return VisionTransformer(**kw)
    raise SystemExit(f"error: no PyTorch twin for {name!r} in this script (vit_nano, vit_tiny); add one")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the minivit run directory (its config.json)")
    ap.add_argument("--out-dir", type=Path, default=None, help="default: RUN-torch")
    ap.add_argument("--threads", type=int, default=None, help="torch threads; default: the cores available")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change one key of the run's config.json (value as JSON, else a string); repeatable")
    args = ap.parse_args(argv)
    if not (args.run / "config.json").is_file():
        raise SystemExit(f"error: {args.run}/config.json not found: give a minivit run directory")
    try:
        import torch
    except ImportError:
        raise SystemExit("error: the twin needs PyTorch and timm: bash ../shared/oracle/install.sh "
                         "or pip install torch timm") from None
    from minivit import train as mtrain

    cfg = json.loads((args.run / "config.json").read_text())
    changed = {}
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq or key not in cfg:
            raise SystemExit(f"error: --set {item!r}: give KEY=VALUE with a key of {args.run}/config.json "
                             f"(e.g. label_smoothing=0, crop_padding=0, epochs=20, lr=0.003)")
        try:
            changed[key] = json.loads(value)
        except json.JSONDecodeError:
            changed[key] = value
    cfg.update(changed)
    if "epochs" in changed or "batch_size" in changed or "warmup_epochs" in changed:
        for derived in ("steps_per_epoch", "total_steps", "warmup_steps"):
            cfg.pop(derived, None)                   # the Trainer works them out again
    for key, ok in (("opt", "adamw"), ("mixup", 0.0), ("cutmix", 0.0), ("randaugment", None),
                    ("random_erasing", 0.0), ("teacher", None), ("clip_grad", None), ("precision", "fp32")):
        if cfg.get(key) not in (ok, None, 0, 0.0) and cfg.get(key) != ok:
            raise SystemExit(f"error: the twin implements only the speedrun's recipe; {key}={cfg[key]!r} is not in it")
    out = args.out_dir or args.run.with_name(args.run.name + "-torch")
    out.mkdir(parents=True, exist_ok=True)
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)

    # minivit's own run, built exactly as `python -m minivit.train` built it (never stepped).
    with tempfile.TemporaryDirectory() as tmp:
        tr = mtrain.Trainer(dict(cfg, device="cpu"), Path(tmp), log=lambda *a: None)
    kwargs = dict(cfg["model_kwargs"])
    if cfg.get("progressive_resize"):
        # minivit's batches come smaller for the first epochs; timm resizes the position embedding
        # bicubic with antialiasing, minivit (resample_pos_embed) bilinearly: told to do the same
        import functools

        import timm.models.vision_transformer as vt
        vt.resample_abs_pos_embed = functools.partial(vt.resample_abs_pos_embed, interpolation="bilinear",
                                                      antialias=False)
        kwargs["dynamic_img_size"] = True
    model = timm_twin(cfg["model"], kwargs, cfg["num_classes"])
    state = {k: torch.from_numpy(np.array(v.data if hasattr(v, "data") else v))
             for k, v in tr.model.state_dict().items()}
    model.load_state_dict(state, strict=True)
    no_decay_names = {n for g in tr.optimizer.param_groups if g["weight_decay"] == 0
                      for n, p in tr.model.named_parameters() if any(p is q for q in g["params"])}
    named = dict(model.named_parameters())
    groups = [{"params": [p for n, p in named.items() if n in no_decay_names], "weight_decay": 0.0},
              {"params": [p for n, p in named.items() if n not in no_decay_names], "weight_decay": cfg["weight_decay"]}]
    opt = torch.optim.AdamW(groups, lr=cfg["lr"])
    eps = cfg["label_smoothing"]
    record_cfg = dict(cfg, engine=f"torch {torch.__version__}", twin_of=str(args.run), torch_threads=threads,
                      recipe_changes=changed,
                      num_params=sum(p.numel() for p in model.parameters()))
    (out / "config.json").write_text(json.dumps(record_cfg, indent=1, default=str) + "\n")

    metrics = []
    bs = cfg["batch_size"]
    for epoch in range(cfg["epochs"]):
        model.train()
        loss_sum, correct, n = 0.0, 0, 0
        t0 = time.perf_counter()
        for x, target, labels in tr.train_loader.batches(epoch):
            lr = tr.scheduler.get_last_lr()          # the rate of this step, as minivit's optimizer used it
            for g, v in zip(opt.param_groups, lr):
                g["lr"] = v
            xt, yt = torch.from_numpy(x), torch.from_numpy(np.asarray(target))
            logits = model(xt)
            loss = torch.nn.functional.cross_entropy(logits, yt, label_smoothing=eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tr.scheduler.step()
            loss_sum += float(loss.detach()) * bs
            correct += int((logits.argmax(1) == torch.from_numpy(np.asarray(labels))).sum())
            n += bs
        train_s = time.perf_counter() - t0
        model.eval()
        t1 = time.perf_counter()
        tl, tc, tn = 0.0, 0, 0
        with torch.no_grad():
            for x, target, labels in tr.test_loader.batches():
                logits = model(torch.from_numpy(x))
                y = torch.from_numpy(np.asarray(labels))
                tl += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                tc += int((logits.argmax(1) == y).sum())
                tn += len(y)
        eval_s = time.perf_counter() - t1
        rec = {"epoch": epoch + 1, "train_loss": loss_sum / n, "train_acc": correct / n, "test_loss": tl / tn,
               "test_acc": tc / tn, "lr": tr.scheduler.get_last_lr()[-1], "epoch_time_s": train_s + eval_s,
               "train_time_s": train_s, "eval_time_s": eval_s, "images_per_s": n / train_s,
               "step": (epoch + 1) * len(tr.train_loader)}
        metrics.append(rec)
        (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
        print(f"epoch {epoch + 1:3d}/{cfg['epochs']}  train loss {rec['train_loss']:.4f} acc {rec['train_acc']:.2%}  "
              f"test acc {rec['test_acc']:.2%}  {train_s:.1f}s ({rec['images_per_s']:.0f} img/s)", flush=True)
    print(f"done: test acc {metrics[-1]['test_acc']:.2%}; run directory {out}")


if __name__ == "__main__":
    sys.exit(main())
