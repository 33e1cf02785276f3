"""``python -m minivit.evaluate RUN_DIR_OR_CHECKPOINT``: test accuracy, per class, and a confusion matrix.

    python -m minivit.evaluate runs/deit_tiny-20250101-120000          # best.ckpt of the run
    python -m minivit.evaluate runs/deit_tiny-20250101-120000/last.ckpt
    python -m minivit.evaluate runs/vit_nano_speedrun14 --tta flip     # + each image's mirror

Evaluates on the run's dataset (the whole test split unless ``--test-subset``),
prints the accuracy overall and per class, and saves ``confusion.png`` in the
run directory (the checkpoint's folder).

A segmentation run (``--task segmentation``) prints mIoU, pixel accuracy and each class's IoU
(``minivit.metrics``' convention) and saves ``masks.png`` there instead: the first ``--num-masks``
test images, their true masks and the predicted masks side by side. A run on volumes
(``--dataset volumes``) prints also the mean Dice per class beside the brightness rule's, and its
``masks.png`` shows one slice of each volume: the one with the most object voxels.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from minivit import backend, cli, data
from minivit.losses import mean_dice
from minivit.plotting import confusion_matrix, plot_confusion, plot_masks
from minivit.train import CheckpointError, evaluate, evaluate_segmentation, load_model_from_checkpoint


def evaluate_checkpoint(path, *, device=None, data_dir=None, test_subset=None, batch_size=500,
                        figure=None, log=print, progress=False, tta=None, num_masks: int = 6) -> dict:
    """Evaluate a checkpoint; returns accuracy, loss, per-class accuracy and the confusion matrix.
    ``progress=True`` shows a progress bar on stderr while the test split runs; ``tta="flip"``
    averages each image's logits with its mirror image's (``train.evaluate``)."""
    device = cli.check_device(device or backend.default_device())
    model, ckpt = load_model_from_checkpoint(path, device)
    cfg = ckpt["config"]
    ds = data.load_dataset(cfg["dataset"], data_dir if data_dir is not None else cfg.get("data_dir"),
                           test_subset=test_subset, verbose=True, need_train=False,
                           volume_size=cfg.get("volume_size") or 32)
    if ds.num_classes != cfg["num_classes"]:
        raise ValueError(f"the model has {cfg['num_classes']} classes but the dataset has {ds.num_classes}")
    mean, std = data.normalization(cfg["dataset"])
    loader = data.DeviceLoader(ds.test, device, batch_size, mean=mean, std=std)
    # A run trained with --precision fp16 is evaluated under autocast on the GPU, as the trainer
    # did (the same numbers as its metrics.jsonl); on the CPU in fp32 (no float16 BLAS there).
    precision = cfg.get("precision", "fp32") if device == "cuda" else "fp32"
    precision = "fp32" if precision == "fp64" else precision      # the model is rebuilt in float32
    if cfg.get("task", "classification") == "segmentation":
        if tta is not None:
            raise ValueError("--tta flip is for classification runs; leave it out for a segmentation run")
        return _evaluate_segmentation(model, ckpt, ds, loader, precision, figure, log, progress, num_masks)
    ev = evaluate(model, loader, precision, progress=progress, desc=f"evaluating {cfg['model']}", tta=tta)
    views = " (flip test-time augmentation: each image and its mirror)" if tta == "flip" else ""
    labels = ds.test.labels
    cm = confusion_matrix(labels, ev["preds"], ds.num_classes)
    per_class = cm.diagonal() / np.maximum(cm.sum(axis=1), 1)
    ckpt_path = Path(ckpt["path"])
    figure = Path(figure) if figure else ckpt_path.parent / "confusion.png"
    title = (f"{cfg['model']} ({ckpt_path.name}, epoch {ckpt['epoch']}): {ev['acc']:.2%} on {cfg['dataset']}"
             + (", flip TTA" if tta == "flip" else ""))
    plot_confusion(cm, ds.classes, figure, title=title)

    log(f"{ckpt_path}: {cfg['model']}, epoch {ckpt['epoch']}, {cfg['dataset']} test split "
        f"({len(labels)} images from {ds.source})")
    log(f"test accuracy {ev['acc']:.2%}   test loss {ev['loss']:.4f}{views}")
    width = max(len(c) for c in ds.classes)
    for c, acc, n in zip(ds.classes, per_class, cm.sum(axis=1)):
        log(f"  {c:<{width}}  {acc:7.2%}  ({n} images)")
    log(f"confusion matrix saved to {figure}")
    return {"checkpoint": str(ckpt_path), "tta": tta or "none", "acc": ev["acc"], "loss": ev["loss"],
            "per_class_acc": dict(zip(ds.classes, per_class.tolist())), "confusion": cm.tolist(),
            "figure": str(figure)}


def _evaluate_segmentation(model, ckpt, ds, loader, precision, figure, log, progress, num_masks) -> dict:
    """A segmentation run: mIoU, pixel accuracy, per-class IoU, and the figure of masks."""
    cfg = ckpt["config"]
    ignore = ds.test.ignore_index
    volumes = cfg["dataset"] in data.VOLUME_DATASETS
    ev = evaluate_segmentation(model, loader, ds.num_classes, precision, ignore_index=ignore, progress=progress,
                               desc=f"evaluating {cfg['model']}", dice=volumes)
    ckpt_path = Path(ckpt["path"])
    figure = Path(figure) if figure else ckpt_path.parent / "masks.png"
    k = max(1, min(num_masks, len(ds.test)))
    images, labels, preds = ds.test.images[:k], ds.test.labels[:k], ev["preds"][:k]
    score = f"mIoU {ev['miou']:.2%}"
    if volumes:              # one slice a volume: the one with the most object voxels, the input grey
        z = (labels > 0).sum(axis=(2, 3)).argmax(axis=1)
        rows = np.arange(k)
        images, labels, preds = np.repeat(images[rows, :, z], 3, axis=1), labels[rows, z], preds[rows, z]
        score = f"mean Dice {ev['mean_dice']:.3f} (slices {', '.join(map(str, z))} along D)"
    plot_masks(images, labels, preds, ds.classes, figure, ignore_index=ignore,
               title=f"{cfg['model']} ({ckpt_path.name}, epoch {ckpt['epoch']}): {score} on {cfg['dataset']}")
    log(f"{ckpt_path}: {cfg['model']}, epoch {ckpt['epoch']}, {cfg['dataset']} test split "
        f"({len(ds.test)} images from {ds.source})")
    log(f"test mIoU {ev['miou']:.2%}   pixel accuracy {ev['pixel_acc']:.2%}   test loss {ev['loss']:.4f}")
    width = max(len(c) for c in ds.classes)
    pixels = ev["confusion"].sum(axis=1)
    for c, iou, n in zip(ds.classes, ev["iou"], pixels):
        log(f"  {c:<{width}}  IoU {iou:7.2%}  ({n} pixels)")
    out = {"checkpoint": str(ckpt_path), "task": "segmentation", "miou": ev["miou"], "pixel_acc": ev["pixel_acc"],
           "loss": ev["loss"], "per_class_iou": dict(zip(ds.classes, ev["iou"].tolist())),
           "confusion": ev["confusion"].tolist(), "figure": str(figure)}
    if volumes:
        rule, rule_per_class = mean_dice(data.brightness_rule(ds.test.images), ds.test.labels, ds.num_classes)
        log(f"test mean Dice {ev['mean_dice']:.3f}   the brightness rule's {rule:.3f}")
        for c, d, r in zip(ds.classes[1:], ev["dice_per_class"], rule_per_class):
            log(f"  {c:<{width}}  Dice {d:.3f}  (brightness rule {r:.3f})")
        out.update(mean_dice=ev["mean_dice"], per_class_dice=dict(zip(ds.classes[1:], ev["dice_per_class"].tolist())),
                   brightness_rule_dice=rule)
    log(f"masks (image, true, predicted) saved to {figure}")
    return out


def main(argv=None) -> dict:
    p = cli.ArgumentParser(prog="python -m minivit.evaluate", description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a run directory (its best.ckpt, else last.ckpt) or a .ckpt file")
    p.add_argument("--device", choices=backend.DEVICES, default=None, help="default: cuda if CuPy sees a GPU")
    p.add_argument("--data-dir", default=None, help="where CIFAR-10 is, if not where the run found it")
    p.add_argument("--test-subset", type=int, default=None, metavar="N", help="only the first N test images")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--tta", choices=("none", "flip"), default="none",
                   help="test-time augmentation: 'flip' averages each image's logits with its mirror image's")
    p.add_argument("--figure", default=None, help="where to save the confusion matrix; default RUN_DIR/confusion.png "
                                                  "(a segmentation run: the masks, RUN_DIR/masks.png)")
    p.add_argument("--num-masks", type=int, default=6, help="segmentation runs: test images shown in masks.png")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr; default: when stderr is a terminal")
    args = p.parse_args(argv)
    progress = args.progress if args.progress is not None else sys.stderr.isatty()

    def checked():
        cli.check_positive(args, "test_subset", "batch_size", "num_masks")
        return evaluate_checkpoint(args.checkpoint, device=args.device, data_dir=args.data_dir,
                                   test_subset=args.test_subset, batch_size=args.batch_size, figure=args.figure,
                                   progress=progress, tta=None if args.tta == "none" else args.tta,
                                   num_masks=args.num_masks)

    out = cli.run_cli(checked, errors=(CheckpointError, data.DatasetError))
    if args.json:
        print(json.dumps({k: v for k, v in out.items() if k != "confusion"}))
    return out


if __name__ == "__main__":
    main()
