"""``python -m minivit.train``: train a model on CIFAR-10 (or the synthetic set), with checkpoints.

    python -m minivit.train --model pvt_tiny --device cuda
    python -m minivit.train --model pvt_tiny --epochs 3 --subset 10000     # a few minutes on a CPU
    python -m minivit.train --model vit_tiny --dataset synthetic --subset 1024 --batch-size 64 --epochs 3
    python -m minivit.train --model vit_tiny --device cuda --precision fp16
    python -m minivit.train --model resnet_teacher --epochs 100 --out-dir runs/teacher
    python -m minivit.train --model deit_tiny --teacher runs/teacher --distillation hard
    python -m minivit.train --resume runs/pvt_tiny-20250101-120000
    python -m minivit.evaluate runs/pvt_tiny-20250101-120000
    python -m minivit.train --task segmentation --model fpn_pvt_v2_tiny --dataset shapes --epochs 5
    python -m minivit.train --task segmentation --model unetr_tiny --dataset volumes --epochs 5 --batch-size 4
    mpiexec -n 2 python -m minivit.train --distributed --model vit_tiny --epochs 3 --subset 10000

A run directory holds:

    config.json     the whole configuration (defaults resolved), parameter count, device, versions
    metrics.jsonl   one JSON object per epoch: epoch, train_loss, train_acc, test_loss, test_acc,
                    lr, epoch_time_s, images_per_s, ... (accuracies as fractions in [0, 1]);
                    with --precision fp16 also loss_scale and skipped_steps (inf/NaN gradients);
                    with --task segmentation: train_loss, test_loss (per non-ignored pixel),
                    test_miou, test_pixel_acc instead of the accuracies; on --dataset volumes
                    also test_dice (mean Dice of the object classes) and test_dice_per_class
    last.ckpt       the state after the last epoch (or the step where Ctrl-C stopped it)
    best.ckpt       the state with the best test accuracy (segmentation: mIoU; volumes: mean Dice) so far
    curves.png      loss and accuracy curves (written at the end)

A checkpoint holds the model, optimiser, schedule, loss scaler and RNG states, the epoch and
step, the metrics so far and the configuration, so ``--resume`` continues
exactly where the run stopped: on the CPU, an interrupted and resumed run ends
with bitwise the same weights as one that was never stopped.

The step loop stays on the device: batches are made there (see
:mod:`minivit.data`), and the loss is read back to the host (which waits for
the GPU) only every ``--log-every`` steps, for the progress bar.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import math
import pickle
import platform
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

import minivit
import minivit.functional as F
import minivit.models  # registers every architecture, resnet_teacher included
from minivit import amp, backend, cli, data, nn, optim
from minivit import distributed as dist
from minivit.autograd import Tensor, no_grad
from minivit.data.io import atomic_write, safe_load_pickle
from minivit.models.registry import parse_model_kwargs
from minivit.losses import (DISTILLATION_TYPES, SEGMENTATION_LOSSES, DistillationLoss, SegmentationLoss, dice_per_class,
                            mean_dice, merge_heads, upsample_logits)
from minivit.metrics import mean_iou, pixel_accuracy, segmentation_confusion

CHECKPOINT_FORMAT = "minivit-checkpoint"
CHECKPOINT_VERSION = 1
TASKS = ("classification", "segmentation", "video")   # video: clips of --dataset motion, no augmentation
VIDEO_MODELS = ("timesformer_", "mvit_v1_")              # the registered video models' name prefixes
PRECISIONS = ("fp32", "tf32", "fp16", "fp64")   # fp16: autocast + GradScaler, float32 master weights;
                                                # fp64: float64 weights and inputs, for exactness checks
EXIT_INTERRUPTED = 130     # the shell's code for "stopped by Ctrl-C"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not a minivit checkpoint."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# =========================================================================== checkpoints
def _host(obj):
    """A copy of obj with every (NumPy or CuPy) array as a host NumPy array."""
    if isinstance(obj, dict):
        return type(obj)((k, _host(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host(v) for v in obj)
    if isinstance(obj, np.ndarray) or backend.is_cupy_array(obj):
        return np.array(backend.to_numpy(obj))
    return obj


def checkpoint_bytes(state: dict) -> bytes:
    """A checkpoint file's content: a pickled dict of plain values and NumPy arrays, wrapped with
    its SHA-256 so that a damaged file is recognised as damaged (not loaded with flipped bits)."""
    payload = pickle.dumps(_host(state), protocol=4)
    return pickle.dumps({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                         "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}, protocol=4)


def save_checkpoint(path, state: dict | None = None, *, blob: bytes | None = None):
    """Write a checkpoint atomically (temp file in the same folder, fsync, rename)."""
    blob = checkpoint_bytes(state) if blob is None else blob
    with atomic_write(path) as f:
        f.write(blob)


def _damaged_hint(path: Path) -> str:
    """What to do about a damaged checkpoint: the run's other one, by the path the commands take.
    (``--resume RUN_DIR`` reads RUN_DIR/last.ckpt; given a .ckpt file, it continues from that one.)"""
    other = path.with_name({"last.ckpt": "best.ckpt", "best.ckpt": "last.ckpt"}.get(path.name, "last.ckpt"))
    if other == path or not other.is_file():
        return "The file is truncated or corrupt; retrain, or pass a checkpoint that is intact."
    return (f"The file is truncated or corrupt. {other} holds the run's whole state at its "
            f"{'best' if other.name == 'best.ckpt' else 'last'} epoch: continue from it with "
            f"python -m minivit.train --resume {other}, or evaluate it with python -m minivit.evaluate {other}.")


def load_checkpoint(path) -> dict:
    """Read and check a checkpoint; any problem raises CheckpointError naming the file."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path} is a folder without best.ckpt or last.ckpt: pass a run directory "
                                  "made by python -m minivit.train, or a .ckpt file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    hint = _damaged_hint(path)
    try:
        with open(path, "rb") as f:
            outer = safe_load_pickle(f)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}. {hint}") from e
    if not isinstance(outer, dict) or outer.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a minivit checkpoint (no '{CHECKPOINT_FORMAT}' header). {hint}")
    if outer.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {outer.get('version')}, this minivit reads "
                              f"version {CHECKPOINT_VERSION}")
    payload = outer.get("payload")
    if not isinstance(payload, bytes) or hashlib.sha256(payload).hexdigest() != outer.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupt: its SHA-256 checksum does not match. {hint}")
    try:
        state = safe_load_pickle(payload)
    except Exception as e:
        raise CheckpointError(f"cannot unpickle checkpoint {path}: {type(e).__name__}: {e}. {hint}") from e
    missing = [k for k in ("model", "config", "epoch") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}. {hint}")
    state["path"] = str(path)
    return state


# =========================================================================== models
def _accepts(fn, name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def build_model(name: str, num_classes: int, model_kwargs: dict | None = None, drop_path: float | None = None):
    """``create_model`` with the run's class count and stochastic depth (when the model takes them)."""
    kwargs = dict(model_kwargs or {})
    factory = minivit.models.registry.model_entrypoint(name)  # unknown names: the registry's error
    if _accepts(factory, "num_classes"):
        kwargs.setdefault("num_classes", num_classes)
    if drop_path is not None:
        if not _accepts(factory, "drop_path_rate"):
            raise ValueError(f"model {name!r} takes no drop_path_rate: leave --drop-path out")
        kwargs["drop_path_rate"] = drop_path
    return minivit.models.create_model(name, **kwargs)


def load_model_from_checkpoint(path, device: str = "cpu"):
    """(model in eval mode on ``device``, checkpoint dict) from a run directory or a .ckpt file."""
    ckpt = load_checkpoint(path)
    cfg = ckpt["config"]
    model = build_model(cfg["model"], cfg["num_classes"], cfg.get("model_kwargs"), None)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt['path']}: its weights do not fit model {cfg['model']!r}: {e}") from e
    model.to(device=device)
    model.eval()
    return model, ckpt


# =========================================================================== evaluation
def evaluate(model, loader, precision: str = "fp32", *, progress: bool = False, log=None,
             desc: str = "test", tta: str | None = None) -> dict:
    """Loss, accuracy and predictions over a whole split, batched on the device; one sync at the end.
    ``precision="fp16"`` evaluates under autocast, as the model was trained.

    ``tta="flip"``: test-time augmentation, the logits of each image and of its mirror image
    (left-right, as the training flips) averaged: twice the evaluation's work, often a few
    tenths of a point. The trainer never uses it: its metrics are single-view.

    A test pass takes tens of seconds on the CPU: ``progress=True`` shows a tqdm bar; else,
    with ``log``, a line after each quarter of the batches (none for a single batch).

    A data-parallel rank's loader (``DeviceLoader(..., rank, world)``) holds its part of the split:
    the loss and the count correct are summed over the ranks (every rank gets the whole split's),
    ``preds`` are this rank's part's."""
    from tqdm import tqdm
    if tta not in (None, "none", "flip"):
        raise ValueError(f"evaluate: tta must be None or 'flip', got {tta!r}")
    tta = None if tta == "none" else tta
    was_training = model.training
    model.eval()
    xp = loader.xp
    loss_sum = xp.zeros((), dtype=np.float64)
    correct = xp.zeros((), dtype=np.int64)
    preds = []
    n_batches, seen, t0 = len(loader), 0, time.perf_counter()
    every = -(-n_batches // 4)
    n_local = getattr(loader, "n_local", loader.n)                       # a data-parallel rank's part
    bar = tqdm(total=n_local, unit="img", unit_scale=True, desc=desc, leave=False, disable=not progress,
               dynamic_ncols=True)
    with no_grad(), amp.autocast(enabled=precision == "fp16"):
        for i, (x, _, labels) in enumerate(loader.batches()):
            x = model_input(x, precision, model)
            logits = merge_heads(model(Tensor(x)))                        # (B, num_classes)
            if tta == "flip":
                mirrored = xp.ascontiguousarray(x[..., ::-1])             # (B, C, H, W), W reversed
                logits = (logits + merge_heads(model(Tensor(mirrored)))) * 0.5
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").data
            pred = logits.data.argmax(axis=1)
            correct += (pred == labels).sum()
            preds.append(pred)
            seen += len(labels)
            bar.update(len(labels))
            if log is not None and not progress and (i + 1) % every == 0 and i + 1 < n_batches:
                log(f"  {desc}: {seen}/{n_local} images, {time.perf_counter() - t0:.0f}s")
    bar.close()
    model.train(was_training)
    n = loader.n
    loss_sum, correct, preds = read_on_host(loss_sum, correct, xp.concatenate(preds) if preds else xp.zeros(0, np.int64))
    if getattr(loader, "world", 1) > 1:         # the ranks' parts of the split: their sums add up
        loss_sum, correct = dist.all_reduce_host([loss_sum, correct])
    return {"loss": float(loss_sum) / n, "acc": int(correct) / n, "preds": preds.astype(np.int64)}


def model_input(x, precision: str, model=None):
    """The batch as the model takes it: float64 for --precision fp64, else as the loader made it;
    clips (B, T, C, H, W) as (B, C, T, H, W) for a model whose ``clip_layout`` is 'BCTHW'
    (torchvision's layout: minivit's MViT)."""
    if x.ndim == 5 and getattr(model, "clip_layout", None) == "BCTHW":
        x = backend.get_array_module(x).ascontiguousarray(x.transpose(0, 2, 1, 3, 4))
    return x.astype(np.float64) if precision == "fp64" else x


def read_on_host(*arrays):
    """Device scalars and vectors as host values, read with one transfer: on a GPU, one
    synchronisation instead of one per value (the CPU waits for the GPU's queue each time).
    Integers come back exact (below 2**53); scalars as 0-d NumPy arrays."""
    xp = backend.get_array_module(*arrays)
    flat = xp.concatenate([a.reshape(-1).astype(np.float64) for a in arrays])
    host, out, i = backend.to_numpy(flat), [], 0
    for a in arrays:
        out.append(host[i:i + a.size].reshape(a.shape).astype(a.dtype))
        i += a.size
    return out


def evaluate_segmentation(model, loader, num_classes: int, precision: str = "fp32", *, ignore_index: int = 255,
                          progress: bool = False, log=None, desc: str = "test", dice: bool = False) -> dict:
    """Per-pixel loss, mIoU and pixel accuracy over a whole split (``minivit.metrics``' convention:
    one confusion matrix over every non-ignored pixel of the split). The logits are upsampled
    bilinearly to the masks' size, as in training; ``loss`` is the mean over non-ignored pixels.
    Returns also the confusion matrix, per-class IoU, and the predicted masks (N, H, W) uint8
    ((N, D, H, W) for volumes).

    ``dice=True`` (volumes, which have no ignored voxels): also the hard Dice of each object class
    averaged over the volumes that hold it, ``dice_per_class`` (K − 1,) (NaN for a class no volume
    holds), and ``mean_dice``, their mean: ``minivit.losses.mean_dice``'s numbers."""
    from tqdm import tqdm
    from minivit.metrics import iou_per_class
    was_training = model.training
    model.eval()
    xp = loader.xp
    loss_sum = xp.zeros((), dtype=np.float64)
    n_valid = xp.zeros((), dtype=np.int64)
    cm = xp.zeros((num_classes, num_classes), dtype=np.int64)
    dice_sum, dice_n = np.zeros(num_classes - 1), np.zeros(num_classes - 1)    # per object class, on the host
    preds = []
    n_batches, seen = len(loader), 0
    every = -(-n_batches // 4)
    n_local = getattr(loader, "n_local", loader.n)                       # a data-parallel rank's part
    bar = tqdm(total=n_local, unit="img", unit_scale=True, desc=desc, leave=False, disable=not progress,
               dynamic_ncols=True)
    with no_grad(), amp.autocast(enabled=precision == "fp16"):
        for i, (x, _, masks) in enumerate(loader.batches()):
            logits = upsample_logits(model(Tensor(model_input(x, precision))), masks.shape[1:])   # (B, K, H, W)
            loss_sum += F.cross_entropy(logits, masks, ignore_index=ignore_index, reduction="sum").data
            n_valid += (masks != ignore_index).sum()
            pred = logits.data.argmax(axis=1)                                     # (B, H, W)
            cm += segmentation_confusion(masks, pred, num_classes, ignore_index)
            if dice:                                                              # (B, K − 1), NaN: absent
                d = dice_per_class(pred, masks, num_classes, include_background=False)
                dice_sum, dice_n = dice_sum + np.nansum(d, axis=0), dice_n + (~np.isnan(d)).sum(axis=0)
            preds.append(pred.astype(np.uint8))
            seen += len(masks)
            bar.update(len(masks))
            if log is not None and not progress and (i + 1) % every == 0 and i + 1 < n_batches:
                log(f"  {desc}: {seen}/{n_local} images")
    bar.close()
    model.train(was_training)
    loss_sum, n_valid, cm = read_on_host(loss_sum, n_valid, cm)
    if getattr(loader, "world", 1) > 1:         # the ranks' parts of the split: their sums add up
        total = dist.all_reduce_host(np.concatenate([[loss_sum, n_valid], cm.reshape(-1), dice_sum, dice_n]))
        loss_sum, n_valid, cm = total[0], total[1], total[2:2 + cm.size].reshape(cm.shape).astype(np.int64)
        dice_sum, dice_n = np.split(total[2 + cm.size:], 2)
    preds = (backend.to_numpy(xp.concatenate(preds)) if preds                 # a rank's part may be empty
             else np.zeros((0,) + tuple(loader.images.shape[2:]), np.uint8))
    out = {"loss": float(loss_sum) / max(int(n_valid), 1), "miou": mean_iou(cm), "pixel_acc": pixel_accuracy(cm),
           "iou": iou_per_class(cm), "confusion": cm, "preds": preds}
    if dice:
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = dice_sum / dice_n                                         # NaN: in no volume
        out.update(dice_per_class=per_class, mean_dice=float(np.nanmean(per_class)) if dice_n.any() else 0.0)
    return out


def model_task(model, x) -> str:
    """'segmentation' if the model maps images to per-pixel logits (B, K, h, w), else 'classification'
    (logits (B, K), or a distilled DeiT's pair). A model's ``task`` attribute says it; else one forward
    pass of a single image in eval mode tells (a classifier built for other image sizes, which cannot
    take the image, is told by its ``forward_head``)."""
    if getattr(model, "task", None) in TASKS:
        return model.task
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            out = model(Tensor(x[:1]))
    except ValueError:
        if hasattr(model, "forward_head"):
            return "classification"
        raise
    finally:
        model.train(was_training)
    return "segmentation" if not isinstance(out, (tuple, list)) and out.ndim >= 4 else "classification"


def check_model_task(name: str, task: str, found: str) -> None:
    """The one-line error for a classifier trained with --task segmentation, and vice versa."""
    if found == task:
        return
    if "video" in (task, found):
        video = ", ".join(n for n in minivit.models.list_models() if n.startswith(VIDEO_MODELS)) or "timesformer_*"
        if task == "video":
            raise cli.UsageError(f"--task video needs a video model (clips (B, T, C, H, W) → logits), but --model "
                                 f"{name} is not one; use one of {video}")
        raise cli.UsageError(f"--model {name} is a video model (clips (B, T, C, H, W)): train it with "
                             f"--task video --dataset motion")
    seg = ", ".join(n for n in minivit.models.list_models() if n.startswith(("fpn_", "segformer"))) or "fpn_*"
    if task == "segmentation":
        raise cli.UsageError(f"--task segmentation needs a model that outputs per-pixel logits (B, K, h, w), but "
                             f"--model {name} is a classifier (logits (B, K)); use one of {seg}")
    raise cli.UsageError(f"--model {name} outputs per-pixel logits (B, K, h, w): it is a segmentation model; "
                         f"train it with --task segmentation --dataset {data.SEGMENTATION_DATASETS[0]}")


def check_model_data(name: str, model, dataset: str, volume_size) -> None:
    """The one-line errors for a 2-D model on volumes, a volume model on images, and a volume model
    built for another volume size than --volume-size."""
    volume_model = getattr(model, "spatial_dims", None) == 3
    volumes = dataset in data.VOLUME_DATASETS
    if volumes and not volume_model:
        unetr = ", ".join(n for n in minivit.models.list_models() if n.startswith("unetr_")) or "unetr_*"
        raise cli.UsageError(f"--dataset {dataset} holds 3-D volumes (B, 1, D, H, W), but --model {name} takes 2-D "
                             f"images; use a volume model: --model {unetr}")
    if volume_model and not volumes:
        raise cli.UsageError(f"--model {name} segments 3-D volumes (B, C, D, H, W), but --dataset {dataset} holds "
                             f"2-D images; train it with --task segmentation --dataset {data.VOLUME_DATASETS[0]}")
    if volumes and tuple(model.img_size) != (volume_size,) * 3:
        raise cli.UsageError(f"--model {name} is built for volumes of {'×'.join(map(str, model.img_size))} voxels but "
                             f"--volume-size is {volume_size}: drop img_size from --model-kwargs (the trainer sets "
                             f"it to --volume-size), or make the two equal")


# =========================================================================== configuration


def _progressive_resize(text: str):
    try:
        schedule = data.parse_resize_schedule(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return ",".join(f"{size}:{epochs}" for size, epochs in schedule)


def _randaugment(text: str):
    try:
        n, m = (float(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--randaugment takes N,M (ops per image, magnitude 0-10), "
                                         f"e.g. 2,9; got {text!r}") from None
    if n < 0 or n != int(n) or not 0 <= m <= 10:
        raise argparse.ArgumentTypeError(f"--randaugment N,M needs an integer N >= 0 and 0 <= M <= 10, got {text!r}")
    return f"{int(n)},{m:g}"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows "(default: X)" after a flag's help, unless the help already says its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS, False, True) or not action.option_strings:
            return text
        return f"{text} (default: {action.default})"


def build_parser() -> argparse.ArgumentParser:
    models = ", ".join(minivit.models.list_models()) or "(none registered)"
    p = cli.ArgumentParser(
        prog="python -m minivit.train", formatter_class=_HelpFormatter,
        description="Train a model on CIFAR-10 (or the synthetic set), with checkpoints, resume and "
                    "DeiT distillation.\n\n" + __doc__.split("\n\n", 1)[1].split("\nA checkpoint")[0],
        epilog="Resuming: --resume RUN_DIR takes everything from RUN_DIR/last.ckpt (only --device, "
               "--progress/--no-progress, --log-every and --distributed, on any number of ranks, may be changed). "
               "Ctrl-C saves a checkpoint first.")
    g = p.add_argument_group("model")
    g.add_argument("--task", choices=TASKS, default="classification",
                   help="classification (one label per image), segmentation (a class per pixel: "
                        "--dataset shapes and a per-pixel model such as fpn_pvt_v2_tiny; per-pixel cross-entropy "
                        "with ignore label 255, mIoU and pixel accuracy per epoch; or a class per voxel: --dataset "
                        "volumes and a volume model such as unetr_tiny, Dice + cross-entropy, mean Dice), or video "
                        "(clips (B, T, C, H, W) of --dataset motion for a video model such as timesformer_tiny or "
                        "mvit_v1_tiny; no augmentation: a flip would reverse the motion)")
    g.add_argument("--model", default="vit_tiny", help=f"registered model name: {models}")
    g.add_argument("--model-kwargs", type=parse_model_kwargs, default=None, metavar="K=V,...",
                   help="extra constructor arguments, e.g. depth=8,width=8 (timm's names)")
    g.add_argument("--drop-path", type=float, default=None,
                   help="stochastic depth rate (drop_path_rate); default: the model's own")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=data.DATASETS, default=None,
                   help="cifar10, or synthetic: generated shapes, no download (10,000 train / 2,000 test); for "
                        "--task segmentation: shapes, generated 64×64 scenes with per-pixel masks (4,000 train / "
                        "1,000 test), or volumes, generated 32³ volumes with per-voxel labels (512 train / 128 "
                        "test); for --task video: motion, generated 8-frame clips (4,000 train / 1,000 test). "
                        "Default: cifar10, shapes or motion, by --task")
    g.add_argument("--data-dir", default=None,
                   help="cifar-10-python.tar.gz, cifar-10-batches-py/, or an ImageFolder folder or .tar.gz (a path "
                        "without one is an error, unless --download); default: the cache (~/.cache/minivit or "
                        "$MINIVIT_CACHE), then ../shared/data/cifar10-jpeg.tar.gz, then the download into the cache")
    g.add_argument("--download", action="store_true",
                   help="download the official archive (MD5-checked) into --data-dir if it is not there yet")
    g.add_argument("--subset", type=int, default=None, metavar="N",
                   help="train on the first N training images, and test on the same fraction of the test images "
                        "(stratified by class: --subset 10000 of CIFAR-10's 50,000 tests on 2,000 of 10,000)")
    g.add_argument("--test-subset", type=int, default=None, metavar="N",
                   help="test on the first N test images (default: all, or the --subset fraction)")
    g.add_argument("--volume-size", type=int, default=None, metavar="S",
                   help="--dataset volumes: the side of the S³ volumes, a multiple of 16 (default 32); a volume "
                        "model is built for it (img_size=S)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=100, help="passes over the training split")
    g.add_argument("--batch-size", type=int, default=128, help="training batch (the last partial one is dropped)")
    g.add_argument("--eval-batch-size", type=int, default=500, help="batch for evaluating the test split")
    g.add_argument("--opt", choices=("adamw", "sgd", "adafactor"), default="adamw",
                   help="optimiser; adafactor: factored second moments, torch.optim.Adafactor's update "
                        "(its lr caps the relative step size)")
    g.add_argument("--lr", type=float, default=None,
                   help="peak learning rate; default 1e-3 (adamw), 0.1 (sgd), 1e-2 (adafactor)")
    g.add_argument("--min-lr", type=float, default=1e-5, help="learning rate at the end of the schedule")
    g.add_argument("--sched", choices=("cosine", "rsqrt-cooldown"), default="cosine",
                   help="after the warmup: cosine decay, or rsqrt decay with a linear cooldown over the last "
                        "--cooldown-epochs (Scaling ViT; its timescale is the warmup length)")
    g.add_argument("--cooldown-epochs", type=float, default=None,
                   help="linear cooldown length of --sched rsqrt-cooldown; default epochs/10")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=None,
                   help="decoupled (adamw) or L2 (sgd) weight decay; default 0.05 (adamw), 5e-4 (sgd); "
                        "0.005 (adafactor, whose decay is lr·λ per step too, with a 10x larger lr); "
                        "never applied to biases, norms, position embeddings and tokens")
    g.add_argument("--head-weight-decay", type=float, default=None,
                   help="the classifier head's own weight decay (Scaling ViT: e.g. 3.0 vs 0.03 on the body); "
                        "default: --weight-decay")
    g.add_argument("--warmup-epochs", type=float, default=None,
                   help="linear warmup length; default min(5, epochs/5)")
    g.add_argument("--loss", choices=SEGMENTATION_LOSSES, default=None,
                   help="--task segmentation: per-pixel cross-entropy (ce), or the soft Dice loss plus it (dice_ce, "
                        "UNETR's); default dice_ce on --dataset volumes, else ce")
    g.add_argument("--label-smoothing", type=float, default=None,
                   help="ε of label smoothing; default 0.1 (DeiT) for classification, 0 for segmentation")
    g.add_argument("--clip-grad", type=float, default=None, metavar="NORM", help="clip the global gradient norm")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32; tf32 (float32 with TF32 tensor-core matmuls, GPUs from Ampere on); or fp16 "
                        "(mixed precision: float16 matmuls under minivit.amp.autocast, float32 master weights, "
                        "dynamic loss scaling; slow on the CPU, which has no float16 BLAS); or fp64 (float64 weights "
                        "and inputs: slow, for checks such as a data-parallel run equalling one process)")
    g = p.add_argument_group("augmentation (on the device)")
    g.add_argument("--crop-padding", type=int, default=4,
                   help="random crop with this zero padding; 0 = off (classification only)")
    g.add_argument("--no-hflip", dest="hflip", action="store_false",
                   help="turn off the random horizontal flips (on by default; segmentation flips image and mask)")
    g.add_argument("--randaugment", type=_randaugment, default=None, metavar="N,M",
                   help="RandAugment: N ops per image at magnitude M (0-10), e.g. 2,9")
    g.add_argument("--random-erasing", type=float, default=0.0, metavar="P", help="random erasing probability")
    g.add_argument("--progressive-resize", type=_progressive_resize, default=None, metavar="S:E,...",
                   help="progressive resizing: the first E epochs on S×S images (antialiased bilinear resize after "
                        "the crop and flip), then the next pair, the rest at the data's size, e.g. 16:3,24:4 "
                        "(models with dynamic_img_size: the vit_* family, vit_nano's conv stem too)")
    g.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="mixup Beta(α, α); 0 = off (DeiT: 0.8)")
    g.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA", help="cutmix Beta(α, α); 0 = off (DeiT: 1.0)")
    g = p.add_argument_group("distillation (DeiT)")
    g.add_argument("--teacher", default=None, metavar="CHECKPOINT",
                   help="a run directory or .ckpt of a trained teacher (e.g. resnet_teacher)")
    g.add_argument("--distillation", choices=DISTILLATION_TYPES, default=None,
                   help="default: hard with --teacher, else none")
    g.add_argument("--alpha", type=float, default=0.5, help="weight λ of the teacher's term")
    g.add_argument("--tau", type=float, default=1.0, help="temperature τ of soft distillation")
    g = p.add_argument_group("run")
    g.add_argument("--device", choices=backend.DEVICES, default=None, help="default: cuda if CuPy sees a GPU")
    g.add_argument("--seed", type=int, default=0, help="initialisation, data order and augmentation")
    g.add_argument("--out-dir", default=None, help="the run directory; default runs/<model>-<timestamp>")
    g.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    g.add_argument("--eval-every", type=int, default=1, metavar="EPOCHS",
                   help="evaluate on the test split every this many epochs (and after the last)")
    g.add_argument("--log-every", type=int, default=25, metavar="STEPS",
                   help="read the loss from the device (a GPU sync) every this many steps")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="tqdm progress bar; default: when stderr is a terminal")
    g.add_argument("--distributed", action="store_true",
                   help="data parallelism over the processes of `mpiexec -n N python -m minivit.train "
                        "--distributed ...` (pip install -e \".[mpi]\"): every rank starts from rank 0's weights, "
                        "takes its 1/N of each global batch (--batch-size, a multiple of N), and the gradients "
                        "are averaged by bucketed all-reduces before the same optimiser step; the test split is "
                        "shared out and its counts summed. Rank 0 alone writes the run directory, the log and the "
                        "checkpoints; --resume works with any number of ranks. BatchNorm's batch statistics are "
                        "each rank's own part's unless --sync-bn; with mixup/cutmix each rank mixes within its "
                        "part. Over MPI between CPU processes (--device cpu), over NCCL between GPUs (--device cuda)")
    g.add_argument("--sync-bn", action="store_true",
                   help="with --distributed: BatchNorm normalises with the statistics of the whole global batch "
                        "(per-channel sums all-reduced in the forward and backward passes: three small all-reduces "
                        "per BatchNorm layer and step), as torch.nn.SyncBatchNorm; without it, each rank's own")
    return p


# flags a resumed run takes from the command line (how it runs, not what it trains)
_RESUMABLE = ("device", "progress", "log_every", "resume", "distributed")


def _resolve_task(cfg: dict) -> None:
    """--task's defaults (dataset, label smoothing) and the flags it rules out."""
    seg = cfg["task"] == "segmentation"
    if cfg["dataset"] is None:
        cfg["dataset"] = {"segmentation": data.SEGMENTATION_DATASETS[0], "video": "motion"}.get(cfg["task"], "cifar10")
    if (cfg["task"] == "video") != (cfg["dataset"] == "motion"):
        raise cli.UsageError(f"--task {cfg['task']} with --dataset {cfg['dataset']}: video clips come from "
                             f"--dataset motion, and --dataset motion needs --task video; pass both or neither")
    if seg and cfg["dataset"] not in data.SEGMENTATION_DATASETS:
        raise cli.UsageError(f"--task segmentation needs a dataset with per-pixel masks, but --dataset "
                             f"{cfg['dataset']} has one label per image: use --dataset "
                             f"{' or '.join(data.SEGMENTATION_DATASETS)}")
    volumes = cfg["dataset"] in data.VOLUME_DATASETS
    if not seg and cfg["dataset"] in data.SEGMENTATION_DATASETS:
        raise cli.UsageError(f"--dataset {cfg['dataset']} is a segmentation set (per-pixel masks): add --task "
                             f"segmentation and a segmentation model (e.g. --model "
                             f"{'unetr_tiny' if volumes else 'fpn_pvt_v2_tiny'})")
    if cfg["loss"] is not None and not seg:
        raise cli.UsageError(f"--loss {cfg['loss']} is for --task segmentation; drop it (classification trains "
                             f"with cross-entropy)")
    if cfg["volume_size"] is not None and not volumes:
        raise cli.UsageError(f"--volume-size is for --dataset volumes; drop it (--dataset {cfg['dataset']} has a "
                             f"fixed size)")
    if volumes:
        cfg["volume_size"] = cfg["volume_size"] or 32
        if cfg["volume_size"] < 16 or cfg["volume_size"] % 16:
            raise cli.UsageError(f"--volume-size {cfg['volume_size']}: must be a multiple of 16 (UNETR's patch), "
                                 f"e.g. 32 or 48")
    if seg and cfg["loss"] is None:
        cfg["loss"] = "dice_ce" if volumes else "ce"
    if cfg["label_smoothing"] is None:
        cfg["label_smoothing"] = 0.0 if seg else 0.1
    if seg:
        used = [f for f, on in (("--randaugment", cfg["randaugment"]), ("--random-erasing", cfg["random_erasing"]),
                                ("--progressive-resize", cfg.get("progressive_resize")),
                                ("--mixup", cfg["mixup"]), ("--cutmix", cfg["cutmix"]),
                                ("--teacher", cfg["teacher"]), ("--distillation", cfg["distillation"] not in
                                                                (None, "none"))) if on]
        if used:
            raise cli.UsageError(f"{', '.join(used)}: classification only; --task segmentation trains "
                                 f"with horizontal flips of image and mask (--no-hflip to turn them off): drop them")
        cfg["crop_padding"] = 0                 # a crop would have to move the mask too: not done


def resolve_config(args: argparse.Namespace) -> dict:
    """The arguments with every default filled in (what goes into config.json)."""
    cfg = dict(vars(args))
    cfg["model_kwargs"] = cfg["model_kwargs"] or {}
    _resolve_task(cfg)
    cfg["lr"] = cfg["lr"] if cfg["lr"] is not None else {"adamw": 1e-3, "sgd": 0.1, "adafactor": 1e-2}[cfg["opt"]]
    if cfg["weight_decay"] is None:
        cfg["weight_decay"] = {"adamw": 0.05, "sgd": 5e-4, "adafactor": 0.005}[cfg["opt"]]
    if cfg["warmup_epochs"] is None:
        cfg["warmup_epochs"] = min(5.0, cfg["epochs"] / 5)
    if cfg["sched"] == "cosine" and cfg["cooldown_epochs"] is not None:
        raise cli.UsageError(f"--cooldown-epochs {cfg['cooldown_epochs']:g} applies to --sched rsqrt-cooldown "
                             f"only: add --sched rsqrt-cooldown, or drop --cooldown-epochs")
    if cfg["sched"] == "rsqrt-cooldown":
        if cfg["cooldown_epochs"] is None:
            cfg["cooldown_epochs"] = cfg["epochs"] / 10
        if not 0 < cfg["cooldown_epochs"] <= cfg["epochs"] - cfg["warmup_epochs"]:
            raise cli.UsageError(f"--cooldown-epochs {cfg['cooldown_epochs']:g} must be > 0 and fit after the "
                                 f"warmup ({cfg['warmup_epochs']:g} of {cfg['epochs']} epochs)")
        if cfg["warmup_epochs"] <= 0:
            raise cli.UsageError("--sched rsqrt-cooldown needs --warmup-epochs > 0: the rsqrt's timescale is "
                                 "the warmup length (timm's and big_vision's choice)")
    for flag in ("weight_decay", "head_weight_decay"):
        if cfg[flag] is not None and cfg[flag] < 0:
            raise cli.UsageError(f"--{flag.replace('_', '-')} {cfg[flag]:g} must be >= 0")
    if cfg["distillation"] is None:
        cfg["distillation"] = "hard" if cfg["teacher"] else "none"
    if cfg["distillation"] != "none" and not cfg["teacher"]:
        raise ValueError(f"--distillation {cfg['distillation']} needs --teacher CHECKPOINT")
    if cfg["teacher"] and cfg["distillation"] == "none":
        raise ValueError("--teacher was given with --distillation none: choose soft or hard, or drop --teacher")
    cli.check_positive(cfg, "epochs", "batch_size", "eval_batch_size", "eval_every", "log_every",
                       "subset", "test_subset")
    try:                                     # before the data loads: a typo should not wait for it
        minivit.models.registry.model_entrypoint(cfg["model"])
    except ValueError as e:
        raise cli.UsageError(f"--model {cfg['model']}: {e}") from None
    if cfg["sync_bn"] and not cfg["distributed"]:
        raise cli.UsageError("--sync-bn synchronises BatchNorm across the ranks of a --distributed run: add "
                             "--distributed (under mpiexec), or drop --sync-bn")
    if cfg["teacher"] and not Path(cfg["teacher"]).exists():
        raise cli.UsageError(f"--teacher {cfg['teacher']}: no such run directory or .ckpt file")
    cfg["device"] = cli.check_device(cfg["device"] or backend.default_device())
    return cfg


# =========================================================================== the trainer
def _versions() -> dict:
    v = {"minivit": minivit.__version__, "numpy": np.__version__, "python": platform.python_version(),
         "platform": platform.platform()}
    if backend.cupy_available():
        import importlib
        v["cupy"] = importlib.import_module("cupy").__version__
    return v




class Trainer:
    """One training run: data, model, optimiser, schedule, criterion, and the loop.

    ``Trainer(cfg, run_dir, resume=checkpoint)`` builds everything exactly as a fresh
    run would (same seed, same order of random draws) and then loads the checkpoint's
    states over it.
    """

    def __init__(self, cfg: dict, run_dir: Path, resume: dict | None = None, log=print):
        self.cfg, self.run_dir, self.log = cfg, Path(run_dir), log
        device = cfg["device"]
        # data parallelism (--distributed): this process's rank of how many; 0 of 1 otherwise
        self.rank, self.world = (dist.rank(), dist.world_size()) if cfg.get("distributed") else (0, 1)
        self.is_main = self.rank == 0
        if cfg["batch_size"] % self.world:
            again = " (resume it on a number of ranks that divides it)" if resume is not None else ""
            raise cli.UsageError(f"--batch-size {cfg['batch_size']} is the global batch and does not split evenly "
                                 f"over {self.world} ranks: make it a multiple of {self.world}{again}")
        backend.manual_seed(cfg["seed"])
        ds = data.load_dataset(cfg["dataset"], cfg["data_dir"], subset=cfg["subset"],
                               test_subset=cfg["test_subset"], verbose=True, download=cfg.get("download", False),
                               volume_size=cfg.get("volume_size") or 32)
        self.dataset = ds
        for note in ds.notes:
            log(f"note: {note}")
        if cfg["subset"] is not None or cfg["test_subset"] is not None:
            log(f"test pass: {ds.test_selection}")
        xp = backend.xp_for(device)
        self.task = cfg.get("task", "classification")       # checkpoints from before --task: classification
        self.segmentation = self.task == "segmentation"
        self.volumes = cfg["dataset"] in data.VOLUME_DATASETS      # 3-D: metrics add the mean Dice
        mean, std = data.normalization(cfg["dataset"])
        aug_cfg = data.AugmentConfig(
            crop_padding=cfg["crop_padding"], hflip=cfg["hflip"],
            randaugment=tuple(float(v) for v in cfg["randaugment"].split(",")) if cfg["randaugment"] else None,
            random_erasing=cfg["random_erasing"], mixup=cfg["mixup"], cutmix=cfg["cutmix"],
            resize=self._resize_schedule(cfg, ds))
        augment = data.Augment(xp, aug_cfg, ds.num_classes, seed=cfg["seed"])
        if self.segmentation:
            augment = data.SegmentationAugment(xp, hflip=cfg["hflip"], seed=cfg["seed"], mean=mean, std=std,
                                               flip_dims=3 if self.volumes else 1)
        elif self.task == "video":      # no augmentation: a horizontal flip would turn a clip's motion around
            augment = None
        self.train_loader = data.DeviceLoader(ds.train, device, cfg["batch_size"], shuffle=True,
                                              augment=augment, seed=cfg["seed"], rank=self.rank, world=self.world,
                                              mean=mean, std=std)
        self.test_loader = data.DeviceLoader(ds.test, device, cfg["eval_batch_size"], rank=self.rank,
                                             world=self.world, mean=mean, std=std)
        precision = cfg.get("precision", "fp32")
        if aug_cfg.resize:           # the same model and weights, taking the smaller sizes too
            self.model = self._dynamic_model(cfg, ds, aug_cfg.resize)
        else:
            self.model = build_model(cfg["model"], ds.num_classes, cfg["model_kwargs"], cfg["drop_path"])
        if self.volumes and getattr(self.model, "spatial_dims", None) == 3 and "img_size" not in cfg["model_kwargs"]:
            cfg["model_kwargs"]["img_size"] = cfg["volume_size"]          # a volume model for these volumes
            if tuple(self.model.img_size) != (cfg["volume_size"],) * 3:
                self.model = build_model(cfg["model"], ds.num_classes, cfg["model_kwargs"], cfg["drop_path"])
        self.model.to(device=device, **({"dtype": np.float64} if precision == "fp64" else {}))
        if cfg.get("sync_bn"):
            if dist.convert_sync_batchnorm(self.model) == 0:
                log(f"note: --sync-bn: {cfg['model']} has no BatchNorm, nothing to synchronise")
        check_model_data(cfg["model"], self.model, cfg["dataset"], cfg.get("volume_size"))
        first = data.normalize(self.test_loader.images[:1], self.test_loader.mean, self.test_loader.std)
        check_model_task(cfg["model"], self.task, model_task(self.model, model_input(first, precision, self.model)))
        self.model.train()
        wd = cfg["weight_decay"]
        # .get: checkpoints written before these flags existed resume with their defaults
        groups = optim.param_groups_weight_decay(self.model, wd, head_weight_decay=cfg.get("head_weight_decay"))
        if cfg["opt"] == "adamw":
            self.optimizer = optim.AdamW(groups, lr=cfg["lr"], weight_decay=wd)
        elif cfg["opt"] == "adafactor":
            self.optimizer = optim.Adafactor(groups, lr=cfg["lr"], weight_decay=wd)
        else:
            self.optimizer = optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=wd)
        self.steps_per_epoch = len(self.train_loader)
        total = self.steps_per_epoch * cfg["epochs"]
        warmup = min(int(round(cfg["warmup_epochs"] * self.steps_per_epoch)), total - 1)
        cooldown = None
        if cfg.get("sched", "cosine") == "rsqrt-cooldown":
            warmup = max(warmup, 1)                        # the rsqrt's timescale
            cooldown = min(max(int(round(cfg["cooldown_epochs"] * self.steps_per_epoch)), 1), total - warmup)
            self.scheduler = optim.lr_scheduler.RsqrtCooldownLR(self.optimizer, warmup_steps=warmup,
                                                                total_steps=total, cooldown_steps=cooldown,
                                                                min_lr=cfg["min_lr"])
        else:
            self.scheduler = optim.lr_scheduler.CosineWarmupLR(self.optimizer, warmup_steps=warmup,
                                                               total_steps=total, min_lr=cfg["min_lr"])
        # Precision. fp16: autocast in the step and the evaluation, the loss scaled by a
        # GradScaler (disabled, i.e. a pass-through, for fp32/tf32/fp64). TF32 is a process-wide
        # CuPy setting: on for tf32, explicitly off otherwise (CUPY_TF32=1 would turn it on).
        self.precision = precision
        self.fp16 = precision == "fp16"
        self.scaler = amp.GradScaler(enabled=self.fp16)
        if device == "cuda":
            if backend.set_tf32(precision == "tf32") != (precision == "tf32"):
                log("warning: --precision tf32 needs an NVIDIA GPU of compute capability 8.0 or more "
                    "(Ampere); this one computes plain fp32")
        elif precision == "tf32":
            log("warning: --precision tf32 on the CPU is plain fp32 (TF32 is a GPU tensor-core mode)")
        elif precision == "fp16":
            log("warning: --precision fp16 on the CPU is slow (NumPy has no float16 BLAS: its float16 "
                "matmuls are plain loops); use it to check a configuration, train fp16 on a GPU")
        teacher = None
        if cfg["teacher"]:
            teacher, tck = load_model_from_checkpoint(cfg["teacher"], device)
            if precision == "fp64":
                teacher.to(dtype=np.float64)
            if tck["config"]["num_classes"] != ds.num_classes:
                raise ValueError(f"the teacher {tck['path']} predicts {tck['config']['num_classes']} classes, "
                                 f"the dataset has {ds.num_classes}: use a teacher trained on {cfg['dataset']}")
            log(f"teacher: {tck['config']['model']} from {tck['path']} "
                f"(test acc {tck.get('best_acc', float('nan')):.2%})")
        self.criterion = DistillationLoss(teacher, cfg["distillation"], cfg["alpha"], cfg["tau"],
                                          cfg["label_smoothing"])
        if self.segmentation:
            self.criterion = SegmentationLoss(ds.train.ignore_index, cfg["label_smoothing"], cfg.get("loss") or "ce")
        if self.volumes:                    # the yardstick: each voxel's class from its brightness alone
            self.cfg["brightness_rule_dice"] = mean_dice(data.brightness_rule(ds.test.images), ds.test.labels,
                                                         ds.num_classes)[0]
            log(f"baseline: the brightness rule (each voxel the class of nearest mean brightness) scores a mean "
                f"Dice of {self.cfg['brightness_rule_dice']:.3f} on these {len(ds.test)} test volumes")
        self.cfg.update({"num_classes": ds.num_classes, "classes": list(ds.classes), "data_source": ds.source,
                         "n_train": len(ds.train), "n_test": len(ds.test), "test_selection": ds.test_selection,
                         "steps_per_epoch": self.steps_per_epoch,
                         "total_steps": total, "warmup_steps": warmup, "cooldown_steps": cooldown,
                         "num_params": self.model.num_parameters(), "versions": _versions()})
        self.xp = xp
        self.epoch, self.step_in_epoch = 0, 0
        self.best_acc, self.best_epoch = -1.0, None
        self.metrics: list[dict] = []
        self._partial = None
        self._stop_requested = False
        self._skipped = 0                    # fp16 steps skipped this epoch (a gradient overflowed)
        if resume is not None:
            self._load_state(resume)
        if self.world > 1:
            # Every rank built the same model from the same seed (and loaded the same checkpoint);
            # rank 0's weights are broadcast all the same, so that nothing else can make them differ.
            dist.broadcast_parameters(self.model)
            if not self.is_main:                    # a resumed epoch's sums so far: rank 0 holds them
                self._partial = self._partial and dict(self._partial, loss_sum=0.0, correct=0)

    # ------------------------------------------------------------------ state
    def state(self, partial=None) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": backend.get_rng_state(),
                "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "partial": partial,
                "best_acc": self.best_acc, "best_epoch": self.best_epoch, "metrics": list(self.metrics),
                "config": self.cfg, "saved_at": time.strftime("%Y-%m-%d %H:%M:%S")}

    def _load_state(self, ck: dict):
        try:
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            self.scheduler.load_state_dict(ck["scheduler"])
            if self.scaler.is_enabled():
                self.scaler.load_state_dict(ck["scaler"])       # the loss scale and its growth counter
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{ck.get('path')}: cannot restore the run from it: {e}") from e
        backend.set_rng_state(ck["rng"])
        self.epoch, self.step_in_epoch = ck["epoch"], ck.get("step_in_epoch", 0)
        self.best_acc, self.best_epoch = ck.get("best_acc", -1.0), ck.get("best_epoch")
        self.metrics = list(ck.get("metrics", []))
        self._partial = ck.get("partial")

    def save(self, best: bool = False, partial=None):
        if not self.is_main:                    # data parallel: the ranks hold the same state
            return
        blob = checkpoint_bytes(self.state(partial))
        save_checkpoint(self.run_dir / "last.ckpt", blob=blob)
        if best:
            save_checkpoint(self.run_dir / "best.ckpt", blob=blob)

    def write_metrics(self):
        """metrics.jsonl, rewritten whole from the in-memory list (so it always matches last.ckpt)."""
        if not self.is_main:
            return
        with atomic_write(self.run_dir / "metrics.jsonl", "w") as f:
            for m in self.metrics:
                f.write(json.dumps(m) + "\n")

    # ------------------------------------------------------------------ one step
    def train_step(self, x, target, labels):
        """Forward, loss, backward, update. Returns the loss and the number correct, as device arrays.

        PyTorch's mixed-precision recipe; for fp32 the scaler is a pass-through, so this is
        the plain loss.backward(), clip, optimizer.step()."""
        inputs = Tensor(model_input(x, self.precision, self.model))
        if self.precision == "fp64" and target.dtype.kind == "f":
            target = target.astype(np.float64)            # mixup/cutmix's soft targets
        with amp.autocast(enabled=self.fp16):
            outputs = self.model(inputs)
            loss = self.criterion(inputs, outputs, target)
        if self.world > 1 and self.segmentation:
            loss = loss * self._pixel_share(target)
        self.optimizer.zero_grad()
        with amp.overflow_expected(self.fp16):            # the scaler handles float16 overflow
            self.scaler.scale(loss).backward()
            if self.world > 1:
                # Each rank's loss is the mean over its part of the global batch; the mean of the
                # ranks' gradients is the gradient of the mean over the whole batch (equal parts).
                # Still scaled under fp16: an inf on one rank is an inf in the sum, on every rank,
                # so every rank skips the same steps.
                dist.all_reduce_gradients(self.model.parameters())
            if self.cfg["clip_grad"]:
                self.scaler.unscale_(self.optimizer)       # clip the true gradients, not the scaled ones
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["clip_grad"])
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)               # skipped if a gradient overflowed
            self.scaler.update()
        self._skipped += self.scaler.get_scale() < scale   # the scale only shrinks after a skipped step
        self.scheduler.step()
        if self.segmentation:            # no train accuracy: test mIoU and pixel accuracy per epoch instead
            return loss.data, self.xp.zeros((), dtype=np.int64)
        correct = (merge_heads(outputs).data.argmax(axis=1) == labels).sum()
        return loss.data, correct

    def _pixel_share(self, masks) -> float:
        """Segmentation, data parallel: the world size times this rank's share of the global batch's
        non-ignored pixels. The loss is a mean over a shard's non-ignored pixels, whose number differs
        from rank to rank; scaled by this, the ranks' gradients average to the gradient of the mean
        over the global batch's pixels (and the logged loss sums to it). It reads a count from the
        device: on a GPU, one sync a step."""
        n = float(backend.to_numpy((masks != self.dataset.train.ignore_index).sum()))
        total = float(dist.all_reduce_host([n])[0])
        return n * self.world / total if total else 1.0

    # ------------------------------------------------------------------ the loop
    def _request_stop(self, signum, frame):
        if self._stop_requested:             # a second Ctrl-C: stop right now, no checkpoint
            raise KeyboardInterrupt
        self._stop_requested = True
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if self.is_main:                     # data parallel: every rank gets the signal, one says so
            print(f"\n{what}: finishing this step and saving a checkpoint (again: quit without saving)",
                  file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def _sigint_saves(self):
        """Ctrl-C (SIGINT) and SIGTERM (what `timeout`, `kill` and job schedulers send) both
        finish the current step and save a checkpoint, so a run stopped from outside loses nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _diverged(self, epoch, step, value):
        last = self.run_dir / "last.ckpt"
        kept = (f"The last good checkpoint, {last} (after epoch {self.epoch}), is intact."
                if last.is_file() else "No checkpoint was written before it.")
        raise TrainingDiverged(
            f"the training loss became {value} at epoch {epoch + 1}, step {step + 1}: stopping. {kept} "
            "Try a lower --lr, a longer --warmup-epochs or --clip-grad 1.0.")

    def fit(self) -> str:
        """Train until ``epochs``; returns 'done' or 'interrupted'."""
        with self._sigint_saves():
            while self.epoch < self.cfg["epochs"]:
                result = self._train_epoch()
                if result is None:                          # Ctrl-C mid-epoch: checkpoint saved
                    return "interrupted"
                self._finish_epoch(*result)
                if self._stop_requested and self.epoch < self.cfg["epochs"]:
                    return "interrupted"
        return "done"

    # ------------------------------------------------------------------ the time estimate
    clock = staticmethod(time.perf_counter)      # tests inject a fake one

    @property
    def _estimate_after(self) -> int:
        """The step after which the run's length is estimated (the first one is a warm-up)."""
        return min(ESTIMATE_STEPS, self.steps_per_epoch - 1)

    def _time_first_steps(self, step: int, x):
        """Time steps 2.. of the first epoch and one test-mode forward pass of a batch, then
        print how long the whole run will take."""
        backend.synchronize(self.cfg["device"])
        if step == 0:
            self._t_step0 = self.clock()
            return
        step_s = (self.clock() - self._t_step0) / step
        was_training = self.model.training
        self.model.eval()
        t0 = self.clock()
        with no_grad(), amp.autocast(enabled=self.fp16):
            self.model(Tensor(model_input(x, self.precision, self.model)))
        backend.synchronize(self.cfg["device"])
        forward_s = (self.clock() - t0) / len(x) / self.world   # per test image (the ranks share the split)
        self.model.train(was_training)
        self.log(estimate_message(self.cfg, step_s, forward_s, step))

    @staticmethod
    def _resize_schedule(cfg, ds):
        """--progressive-resize as ((size, epochs), ...), checked against the data and the run."""
        schedule = data.parse_resize_schedule(cfg.get("progressive_resize"))
        if not schedule:
            return ()
        if cfg.get("task", "classification") != "classification":
            raise cli.UsageError("--progressive-resize is for image classification: drop it")
        full = min(ds.train.images.shape[-2:])
        small = [size for size, _ in schedule if size >= full]
        if small:
            raise cli.UsageError(f"--progressive-resize {cfg['progressive_resize']}: sizes must be smaller than the "
                                 f"data's {full}×{full} images (the rest of the run trains at {full}), got {small[0]}")
        epochs = sum(e for _, e in schedule)
        if epochs >= cfg["epochs"]:
            raise cli.UsageError(f"--progressive-resize {cfg['progressive_resize']} covers {epochs} epochs of "
                                 f"--epochs {cfg['epochs']}: leave at least the last epoch at the full size")
        return schedule

    def _dynamic_model(self, cfg, ds, schedule):
        """The run's model built with ``dynamic_img_size=True`` (the same weights and state_dict keys;
        at the built size it computes exactly what the static model does), checked against the sizes."""
        name = cfg["model"]
        try:
            model = build_model(name, ds.num_classes, dict(cfg["model_kwargs"], dynamic_img_size=True),
                                cfg["drop_path"])
        except (TypeError, ValueError):
            model = None
        if model is None or not getattr(model, "dynamic_img_size", False):
            raise cli.UsageError(f"--progressive-resize needs a model that takes other image sizes "
                                 f"(dynamic_img_size: vit_nano, vit_tiny, deit_tiny, ...); {name} does not: drop it")
        stride = model.patch_embed.patch_size[0]
        bad = [size for size, _ in schedule if size % stride]
        if bad:
            raise cli.UsageError(f"--progressive-resize: {name} cuts images into {stride}×{stride} patches, so each "
                                 f"size must be a multiple of {stride}; {bad[0]} is not")
        return model

    def _progress(self) -> bool:
        """Progress bars: --progress / --no-progress, by default when stderr is a terminal
        (data parallel: on rank 0 only)."""
        if not self.is_main:
            return False
        return self.cfg["progress"] if self.cfg["progress"] is not None else sys.stderr.isatty()

    def _train_epoch(self):
        """The steps of one epoch (from ``step_in_epoch`` on, after a resume).

        Returns (loss_sum, correct, seconds) as host numbers, or None if Ctrl-C stopped it
        (after saving a mid-epoch checkpoint). The loss and accuracy are summed on the
        device and read every ``log_every`` steps only.
        """
        from tqdm import tqdm
        cfg, xp, bs = self.cfg, self.xp, self.cfg["batch_size"]
        epoch, start = self.epoch, self.step_in_epoch
        p, self._partial = self._partial or {}, None          # a resumed epoch's sums so far
        loss_sum = xp.asarray(p.get("loss_sum", 0.0), dtype=np.float64)
        correct = xp.asarray(p.get("correct", 0), dtype=np.int64)
        elapsed = p.get("elapsed", 0.0)
        self._skipped = p.get("skipped_steps", 0)
        progress = self._progress()
        bar = tqdm(total=self.steps_per_epoch * bs, initial=start * bs, unit="img", unit_scale=True,
                   desc=f"epoch {epoch + 1}/{cfg['epochs']}", leave=False, disable=not progress, dynamic_ncols=True)
        self.model.train()
        host_sums = (p.get("loss_sum", 0.0), p.get("correct", 0))
        t0 = time.perf_counter()
        for step, (x, target, labels) in enumerate(self.train_loader.batches(epoch, start), start):
            if cfg["device"] == "cuda":
                # cuRAND's state cannot be saved: re-seed the GPU generator from (seed, epoch, step)
                # so dropout/drop-path draws replay exactly after a resume.
                backend.seed_device((cfg["seed"] * 1_000_003 + epoch) * 1_000_003 + step)
            loss, n_correct = self.train_step(x, target, labels)
            if self.world > 1:               # a Ctrl-C or SIGTERM seen by any rank stops them all at this step
                self._stop_requested = bool(dist.all_reduce_host([self._stop_requested], "max")[0])
            if epoch == 0 and start == 0 and step in (0, self._estimate_after):
                self._time_first_steps(step, x)
            loss_sum += loss.astype(np.float64) * len(labels)       # this rank's part (bs / world images)
            correct += n_correct
            self.step_in_epoch = step + 1
            bar.update(bs)
            last_step = step + 1 == self.steps_per_epoch            # synced at the epoch's end anyway
            if (step + 1) % cfg["log_every"] == 0 or last_step or self._stop_requested:
                seen = (step + 1) * bs
                host_sums = read_on_host(loss_sum, correct)         # the host sync
                if self.world > 1:                                  # the ranks' parts: the global batch's sums
                    host_sums = dist.all_reduce_host(host_sums)
                avg = float(host_sums[0]) / seen
                if not math.isfinite(avg):
                    bar.close()
                    self._diverged(epoch, step, avg)
                bar.set_postfix(loss=f"{avg:.4f}",
                                **({} if self.segmentation else {"acc": f"{int(host_sums[1]) / seen:.2%}"}),
                                lr=f"{self.scheduler.get_last_lr()[-1]:.2e}", refresh=False,
                                **({"scale": f"{self.scaler.get_scale():g}"} if self.fp16 else {}))
            if self._stop_requested and not last_step:
                bar.close()
                self.save(partial={"loss_sum": float(host_sums[0]), "correct": int(host_sums[1]),
                                   "elapsed": elapsed + time.perf_counter() - t0,
                                   "skipped_steps": self._skipped})
                return None
        bar.close()
        # The last step of an epoch always logs: its read of the sums is the epoch's, and it
        # waited for every kernel queued before it, so the clock below reads the whole epoch.
        return float(host_sums[0]), int(host_sums[1]), elapsed + time.perf_counter() - t0

    def _finish_epoch(self, loss_sum: float, correct: int, train_time: float):
        """Record the epoch's metrics, evaluate, save last/best checkpoints and metrics.jsonl."""
        cfg, epoch = self.cfg, self.epoch
        n = self.steps_per_epoch * cfg["batch_size"]
        if not math.isfinite(loss_sum):
            self._diverged(epoch, self.steps_per_epoch - 1, loss_sum / n)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / n, "train_acc": correct / n,
                  "test_loss": None, "test_acc": None, "lr": self.scheduler.get_last_lr()[-1],
                  "epoch_time_s": None, "train_time_s": train_time, "eval_time_s": None,
                  "images_per_s": n / train_time, "step": (epoch + 1) * self.steps_per_epoch}
        schedule = data.parse_resize_schedule(cfg.get("progressive_resize"))
        if schedule:                    # progressive resizing: the size this epoch trained at
            record["img_size"] = data.size_at_epoch(schedule, epoch) or int(self.dataset.train.images.shape[-1])
        if self.segmentation:
            del record["train_acc"], record["test_acc"]
            record.update(test_miou=None, test_pixel_acc=None, **({"test_dice": None} if self.volumes else {}))
        if self.fp16:        # the loss scale at the epoch's end, and the steps skipped for inf/NaN gradients
            record["loss_scale"], record["skipped_steps"] = self.scaler.get_scale(), self._skipped
        t0 = time.perf_counter()
        is_best = False
        if (epoch + 1) % cfg["eval_every"] == 0 or epoch + 1 == cfg["epochs"]:
            progress = self._progress()
            kw = dict(progress=progress, log=None if progress else self.log,
                      desc=f"epoch {epoch + 1}/{cfg['epochs']} test")
            if self.segmentation:
                ev = evaluate_segmentation(self.model, self.test_loader, self.dataset.num_classes,
                                           cfg.get("precision", "fp32"), ignore_index=self.dataset.test.ignore_index,
                                           dice=self.volumes, **kw)
                record.update(test_loss=ev["loss"], test_miou=ev["miou"], test_pixel_acc=ev["pixel_acc"])
                score = ev["miou"]                                  # best.ckpt: the best mIoU
                if self.volumes:                                    # volumes: the best mean Dice
                    record.update(test_dice=ev["mean_dice"], test_dice_per_class=dict(zip(
                        self.dataset.classes[1:], (None if np.isnan(d) else float(d) for d in ev["dice_per_class"]))))
                    score = ev["mean_dice"]
            else:
                ev = evaluate(self.model, self.test_loader, cfg.get("precision", "fp32"), **kw)
                record["test_loss"], record["test_acc"] = ev["loss"], ev["acc"]
                score = ev["acc"]
            if score > self.best_acc:
                self.best_acc, self.best_epoch, is_best = score, epoch + 1, True
        record["eval_time_s"] = time.perf_counter() - t0
        record["epoch_time_s"] = train_time + record["eval_time_s"]
        self.metrics.append(record)
        self.epoch, self.step_in_epoch = epoch + 1, 0
        self.save(best=is_best)
        self.write_metrics()
        self.log(_epoch_line(record, cfg["epochs"]))


ESTIMATE_STEPS = 5                 # estimate the run's length from the speed of steps 2..6
LONG_CPU_RUN_S = 3600              # past this, a CPU run is told how to make it shorter
SHORT_RUN = {"epochs": 3, "subset": 10000}


def duration(seconds: float) -> str:
    """'2 d 7 h', '3 h 20 min', '12 min 5 s', '45 s'."""
    s = int(round(seconds))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if s >= size:
            return f"{s // size} {unit} {(s % size) // sub_size} {sub}"
    return f"{s} s"


def estimate_run_seconds(cfg: dict, step_s: float, forward_s: float, epochs=None, n_train=None,
                         n_test=None) -> tuple:
    """(training, testing) seconds of a run with cfg's settings (or the given epochs and split
    sizes), from one training step's and one test image's forward pass's time."""
    epochs = cfg["epochs"] if epochs is None else epochs
    n_train = cfg["n_train"] if n_train is None else n_train
    n_test = cfg["n_test"] if n_test is None else n_test
    passes = sum(1 for e in range(1, epochs + 1) if e % cfg["eval_every"] == 0 or e == epochs)
    return step_s * (n_train // cfg["batch_size"]) * epochs, forward_s * n_test * passes


def estimate_message(cfg: dict, step_s: float, forward_s: float, steps_timed: int) -> str:
    """What the trainer prints after its first steps: the whole run's estimated time and, for a
    long CPU run, a shorter command."""
    train_s, test_s = estimate_run_seconds(cfg, step_s, forward_s)
    msg = (f"estimate: {cfg['epochs']} epoch{'s take' if cfg['epochs'] > 1 else ' takes'} about {duration(train_s + test_s)} (training "
           f"{duration(train_s)}, testing {duration(test_s)}), from the speed of {steps_timed} steps "
           f"({step_s:.2f} s a step)")
    schedule = data.parse_resize_schedule(cfg.get("progressive_resize"))
    if schedule:
        msg += (f", which ran on {schedule[0][0]}×{schedule[0][0]} images (--progressive-resize): the epochs on "
                f"larger images take longer")
    shorter = cfg["epochs"] > SHORT_RUN["epochs"] or cfg["n_train"] > SHORT_RUN["subset"]
    if cfg["device"] == "cpu" and train_s + test_s > LONG_CPU_RUN_S and shorter:
        n_train = min(cfg["n_train"], SHORT_RUN["subset"])
        n_test = cfg["n_test"] if cfg["test_subset"] else max(1, round(cfg["n_test"] * n_train / cfg["n_train"]))
        short = sum(estimate_run_seconds(cfg, step_s, forward_s, SHORT_RUN["epochs"], n_train, n_test))
        msg += (f". That is long for the CPU: for a first run add --epochs {SHORT_RUN['epochs']} --subset "
                f"{SHORT_RUN['subset']} (about {duration(short)}), or use a GPU (--device cuda)")
    return msg


def _epoch_line(r: dict, epochs: int) -> str:
    if "test_miou" in r:                                   # --task segmentation
        test = (f"test loss {r['test_loss']:.4f} mIoU {r['test_miou']:6.2%} pixel acc {r['test_pixel_acc']:6.2%}"
                if r["test_miou"] is not None else "test  (not evaluated)")
        if r.get("test_dice") is not None:                 # volumes
            test = f"{test} mean Dice {r['test_dice']:.3f}"
        return (f"epoch {r['epoch']:3d}/{epochs}  train loss {r['train_loss']:.4f}  {test}  lr {r['lr']:.2e}  "
                f"{r['epoch_time_s']:.1f}s  ({r['images_per_s']:,.{0 if r['images_per_s'] >= 10 else 2}f} img/s)")
    test = (f"test loss {r['test_loss']:.4f} acc {r['test_acc']:6.2%}" if r["test_acc"] is not None
            else "test  (not evaluated)")
    return (f"epoch {r['epoch']:3d}/{epochs}  train loss {r['train_loss']:.4f} acc {r['train_acc']:6.2%}  "
            f"{test}  lr {r['lr']:.2e}  {r['epoch_time_s']:.1f}s  ({r['images_per_s']:,.0f} img/s)")


# =========================================================================== entry point
def _new_run_dir(cfg) -> Path:
    if cfg["out_dir"]:
        run_dir = Path(cfg["out_dir"])
        if (run_dir / "last.ckpt").exists():
            raise ValueError(f"{run_dir} already holds a run (last.ckpt): continue it with --resume {run_dir}, "
                             "or choose another --out-dir")
        return run_dir
    base = Path("runs") / f"{cfg['model']}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, i = base, 1
    while run_dir.exists():
        run_dir, i = Path(f"{base}-{i}"), i + 1
    return run_dir


def _explicit_args(parser, argv) -> set:
    """The destinations of the options given on the command line (not left at their default)."""
    sentinel = argparse.Namespace(**{a.dest: _UNSET for a in parser._actions if a.dest != "help"})
    given = parser.parse_args(argv, namespace=sentinel)
    return {k for k, v in vars(given).items() if v is not _UNSET}


_UNSET = object()


def run(argv=None, log=print) -> dict:
    """Parse arguments, train, and return a summary; raises on errors (``main`` prints them)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    world = _init_distributed(args) if args.distributed else 1
    if not dist.is_main() and args.distributed:
        log = _silent                          # data parallel: rank 0 speaks for the job
    if args.resume:
        run_dir = Path(args.resume)
        try:
            ckpt = load_checkpoint(run_dir / "last.ckpt") if run_dir.is_dir() else load_checkpoint(run_dir)
        except CheckpointError as e:
            raise CheckpointError(f"--resume {args.resume}: {e}") from None
        run_dir = Path(ckpt["path"]).parent
        cfg = dict(ckpt["config"])
        explicit = _explicit_args(parser, argv)
        ignored = sorted(explicit - set(_RESUMABLE))
        if ignored:
            log("note: a resumed run keeps its saved configuration; ignoring "
                + ", ".join("--" + k.replace("_", "-") for k in ignored))
        if ckpt["epoch"] >= cfg["epochs"] and not ckpt.get("step_in_epoch"):
            return _already_finished(ckpt, run_dir, log)
        for key in ("device", "progress", "log_every"):
            if key in explicit:
                cfg[key] = getattr(args, key)
        saved_world = cfg.get("world_size", 1)
        cfg["distributed"], cfg["world_size"] = args.distributed, world     # how this launch runs
        cfg["device"] = cli.check_device(cfg["device"], "--device" if "device" in explicit else
                                         "this run was trained with --device")
        _gpu_ranks(args, cfg)
        if world != saved_world:
            log(f"note: the run was saved by {_plural(saved_world, 'rank')} and continues on {world}: the same global "
                f"batches of {cfg['batch_size']}, split {world} ways")
        log(f"resuming {run_dir} at epoch {ckpt['epoch'] + 1}, step {ckpt.get('step_in_epoch', 0)} "
            f"of {_plural(cfg['epochs'], 'epoch')}")
        trainer = Trainer(cfg, run_dir, resume=ckpt, log=log)
    else:
        cfg = resolve_config(args)
        cfg["world_size"] = world
        _gpu_ranks(args, cfg)
        # rank 0 names the run directory (a timestamp) and the others take its name
        run_dir = dist.broadcast_object(_new_run_dir(cfg) if dist.is_main() else None)
        cfg["run_dir"] = str(run_dir)
        launcher = f"mpiexec -n {world} " if args.distributed else ""
        cfg["command"] = " ".join([launcher + "python -m minivit.train"]
                                  + list(sys.argv[1:] if argv is None else argv))
        trainer = Trainer(cfg, run_dir, log=log)
        if trainer.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(run_dir / "config.json", "w") as f:
                json.dump(trainer.cfg, f, indent=2, default=str)
        c = trainer.cfg
        ranks = (f", data parallel over {_plural(world, 'rank')} ({c['batch_size'] // world} images each a step)"
                 if args.distributed else "")
        log(f"run {run_dir}: {c['model']} ({c['num_params']:,} parameters) on {c['dataset']} "
            f"({c['n_train']} train / {c['n_test']} test from {c['data_source']}), device {c['device']}, "
            f"{_plural(c['epochs'], 'epoch')} × {_plural(c['steps_per_epoch'], 'step')} of {c['batch_size']}{ranks}")
    trainer.write_metrics()
    status = trainer.fit()
    from minivit.plotting import plot_curves
    if trainer.metrics and trainer.is_main:
        baseline = trainer.cfg.get("brightness_rule_dice")     # volumes: the yardstick's mean Dice, a line
        plot_curves(trainer.metrics, run_dir / "curves.png", title=_curves_title(trainer.cfg),
                    baseline=None if baseline is None else ("brightness rule's mean Dice", baseline))
    summary = {"status": status, "run_dir": str(run_dir), "epoch": trainer.epoch,
               "step_in_epoch": trainer.step_in_epoch, "best_acc": trainer.best_acc,
               "best_epoch": trainer.best_epoch, "metrics": trainer.metrics}
    if status == "interrupted":
        log(f"interrupted at epoch {trainer.epoch + 1}, step {trainer.step_in_epoch}: checkpoint saved to "
            f"{run_dir / 'last.ckpt'}. Resume with: python -m minivit.train --resume {run_dir}")
    elif trainer.best_epoch is not None and trainer.volumes:
        last = trainer.metrics[-1]
        log(f"done: test mean Dice {last['test_dice']:.3f} (" + ", ".join(
            f"{c} {'-' if d is None else f'{d:.3f}'}" for c, d in last["test_dice_per_class"].items())
            + f"; the brightness rule's {trainer.cfg['brightness_rule_dice']:.3f}), mIoU {last['test_miou']:.2%}; best "
            f"mean Dice {trainer.best_acc:.3f} at epoch {trainer.best_epoch}; run directory {run_dir}")
    elif trainer.best_epoch is not None and trainer.segmentation:
        log(f"done: test mIoU {trainer.metrics[-1]['test_miou']:.2%} pixel acc "
            f"{trainer.metrics[-1]['test_pixel_acc']:.2%} (best mIoU {trainer.best_acc:.2%} at epoch "
            f"{trainer.best_epoch}); run directory {run_dir}")
    elif trainer.best_epoch is not None:
        log(f"done: test acc {trainer.metrics[-1]['test_acc']:.2%} (best {trainer.best_acc:.2%} at epoch "
            f"{trainer.best_epoch}); run directory {run_dir}")
    return summary


def _silent(*args, **kwargs):
    """The log of a data-parallel rank other than 0."""


LAUNCH_HINT = "launch it as: mpiexec -n 2 python -m minivit.train --distributed ..."


def _init_distributed(args) -> int:
    """--distributed: join the MPI job (mpi4py); the world size. (NCCL for --device cuda comes with
    :func:`_gpu_ranks`, once the device is known.) Without mpi4py or outside mpiexec, a one-line
    error saying how to install and how to launch."""
    if not dist.mpi_available():
        raise cli.UsageError('--distributed needs mpi4py and an MPI: pip install -e ".[mpi]" (mpi4py and the '
                             f'mpich wheel), then {LAUNCH_HINT}')
    if not dist.launched_by_mpi():
        raise cli.UsageError(f"--distributed runs one process per rank, started by mpiexec: {LAUNCH_HINT} "
                             "(N processes, --batch-size a multiple of N); without --distributed it trains "
                             "in this one process")
    return dist.init("mpi")


def _gpu_ranks(args, cfg):
    """--distributed --device cuda: the gradients go through NCCL, one GPU per rank."""
    if args.distributed and cfg["device"] == "cuda" and dist.world_size() > 1:
        dist.init("nccl")


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _already_finished(ckpt: dict, run_dir: Path, log) -> dict:
    """--resume of a run that has done all its epochs: say so, and how to train longer."""
    epochs, best = ckpt["config"]["epochs"], ckpt.get("best_epoch")
    what = "mIoU" if ckpt["config"].get("task") == "segmentation" else "accuracy"
    score = f"{ckpt.get('best_acc', 0):.2%}"
    if ckpt["config"].get("dataset") in data.VOLUME_DATASETS:
        what, score = "mean Dice", f"{ckpt.get('best_acc', 0):.3f}"
    acc = f"; best test {what} {score} at epoch {best}" if best is not None else ""
    log(f"{run_dir} already finished its {_plural(epochs, 'epoch')}{acc}: nothing to resume. To train longer, "
        f"start a new run with a larger --epochs (the learning-rate schedule is laid out over --epochs, so a "
        f"finished run is not extended)")
    return {"status": "done", "run_dir": str(run_dir), "epoch": ckpt["epoch"], "step_in_epoch": 0,
            "best_acc": ckpt.get("best_acc", -1.0), "best_epoch": best, "metrics": list(ckpt.get("metrics", []))}


def _curves_title(cfg: dict) -> str:
    """The model and the data behind the curves: dataset, image counts, the file they came from."""
    source = str(cfg.get("data_source", "")).split(" (")[0]          # without "(decoded cache ...)"
    subset = " (--subset)" if cfg.get("subset") else ""
    what = "volumes" if cfg["dataset"] in data.VOLUME_DATASETS else "images"
    return (f"{cfg['model']} on {cfg['dataset']}: {cfg['n_train']:,} train {what}{subset}, {cfg['n_test']:,} test"
            + (f", from {Path(source).name}" if source and cfg["dataset"] not in ("synthetic", "shapes", "volumes")
               else ""))


def main(argv=None) -> dict:
    """The command line: like ``run``, but errors become a message and a non-zero exit."""
    try:
        summary = _run_or_abort(argv)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except (data.DatasetError, CheckpointError, ValueError) as e:
        cli.fail(e)
    except KeyboardInterrupt:
        print("\ninterrupted: stopped without saving a checkpoint (any earlier one in the run directory "
              "is intact)", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    if summary["status"] == "interrupted":
        raise SystemExit(EXIT_INTERRUPTED)
    return summary


def _run_or_abort(argv) -> dict:
    """``run``; data parallel, an error on any rank prints ``error: rank R of N: ...`` and ends the
    whole job (MPI_Abort: usage errors with exit code 2, others 1), so that no rank waits forever
    in a collective for one that is gone."""
    try:
        return run(argv)
    except BaseException as e:                 # noqa: BLE001 (a world of one: re-raised for main)
        if dist.world_size() == 1 or isinstance(e, SystemExit) and e.code in (0, None, EXIT_INTERRUPTED):
            raise
        plain = isinstance(e, (ValueError, TrainingDiverged, data.DatasetError))   # messages meant for the user
        dist.abort(str(e) if plain else f"{type(e).__name__}: {e}", code=2 if isinstance(e, ValueError) else 1)
        raise                                  # not reached: MPI_Abort ends the process


if __name__ == "__main__":
    main()
