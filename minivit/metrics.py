"""Segmentation metrics: a confusion matrix over pixels, per-class IoU, mIoU and pixel accuracy.

The convention is mmsegmentation's (and the Cityscapes / ADE20K benchmarks'), which the
SegFormer and PVT papers report:

* one confusion matrix ``cm`` (K, K) accumulated over **every pixel of the whole split**
  (not averaged image by image): ``cm[i, j]`` = pixels of true class i predicted as j;
  pixels labelled ``ignore_index`` are left out entirely;
* IoU_c = TP_c / (TP_c + FP_c + FN_c) = cm[c, c] / (row_c + col_c − cm[c, c]);
* mIoU = the mean of IoU_c over the classes whose union is non-empty (present in the labels
  or predicted somewhere); a class neither present nor predicted is NaN in the per-class
  list and left out of the mean (a class predicted but absent counts, with IoU 0);
* pixel accuracy = Σ_c TP_c / (number of non-ignored pixels) = trace(cm) / sum(cm).
"""
from __future__ import annotations

import numpy as np

from minivit import backend


def segmentation_confusion(labels, preds, num_classes: int, ignore_index: int = 255):
    """(K, K) int64 confusion matrix of ``labels`` and ``preds`` (same shape, e.g. (B, H, W)),
    ignoring pixels whose label is ``ignore_index``; computed where the arrays are (NumPy or CuPy)."""
    xp = backend.get_array_module(labels)
    if tuple(labels.shape) != tuple(preds.shape):
        raise ValueError(f"segmentation_confusion: labels {tuple(labels.shape)} and predictions "
                         f"{tuple(preds.shape)} must have the same shape")
    k2 = num_classes * num_classes
    t, p = labels.reshape(-1).astype(np.int64), preds.reshape(-1).astype(np.int64)
    # Ignored pixels go to an extra bin k², dropped after counting: no boolean indexing, so on a
    # GPU nothing waits for the device (the count of kept pixels is never needed on the host).
    idx = xp.where(t != ignore_index, t * num_classes + p, k2)
    return xp.bincount(idx, minlength=k2 + 1)[:k2].reshape(num_classes, num_classes)


def iou_per_class(cm) -> np.ndarray:
    """IoU of each class from a confusion matrix; NaN for a class neither present nor predicted."""
    cm = np.asarray(backend.to_numpy(cm), dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def mean_iou(cm) -> float:
    """mIoU: the mean IoU over the classes present or predicted (see the module docstring)."""
    iou = iou_per_class(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(cm) -> float:
    """Correct pixels / non-ignored pixels."""
    cm = np.asarray(backend.to_numpy(cm))
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")
