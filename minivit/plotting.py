"""Figures of a training run: loss/accuracy curves and a confusion matrix.

matplotlib is imported only when a figure is drawn, and through its
object-oriented API (``Figure`` + the Agg canvas), so nothing here touches
pyplot's global state or needs a display.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minivit import backend
from minivit.data.io import atomic_write


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    path = Path(path)
    with atomic_write(path) as f:
        fig.savefig(f, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")


def plot_curves(metrics: list[dict], path, title: str = "", baseline=None) -> Path:
    """Train/test loss and accuracy per epoch (from metrics.jsonl records) → a two-panel figure.

    Accuracy is drawn in percent, as the console prints it (metrics.jsonl keeps fractions);
    the epoch axis has whole-epoch ticks only. ``baseline``: (label, fraction), a dashed
    horizontal line on the accuracy panel (e.g. a rule's mean Dice that the model should beat)."""
    _save(curves_figure(metrics, title, baseline), path)
    return Path(path)


def curves_figure(metrics: list[dict], title: str = "", baseline=None):
    """The matplotlib Figure that ``plot_curves`` saves."""
    from matplotlib.ticker import MaxNLocator
    epochs = [m["epoch"] for m in metrics]
    fig = _figure((10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    panels = ((ax_loss, "loss", "loss", 1), (ax_acc, "acc", "accuracy (%)", 100))
    if any("test_miou" in m for m in metrics):          # segmentation: test mIoU and pixel accuracy
        panels = panels[:1]
        for key, label in (("test_miou", "test mIoU"), ("test_pixel_acc", "test pixel accuracy"),
                           ("test_dice", "test mean Dice")):
            pts = [(m["epoch"], 100 * m[key]) for m in metrics if m.get(key) is not None]
            if pts:
                ax_acc.plot(*zip(*pts), "s-" if len(pts) < 30 else "-", label=label, ms=3)
        ax_acc.set_xlabel("epoch")
        ax_acc.set_ylabel("%")
        ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax_acc.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax_acc.grid(alpha=0.3)
        ax_acc.legend()
    for ax, key, label, scale in panels:
        train = [scale * m[f"train_{key}"] for m in metrics]
        test = [(m["epoch"], scale * m[f"test_{key}"]) for m in metrics if m.get(f"test_{key}") is not None]
        ax.plot(epochs, train, "o-" if len(epochs) < 30 else "-", label="train", ms=3)
        if test:
            ax.plot(*zip(*test), "s-" if len(test) < 30 else "-", label="test", ms=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)   # one epoch alone still gets a whole tick
        ax.grid(alpha=0.3)
        ax.legend()
    if baseline is not None:
        ax_acc.axhline(100 * baseline[1], color="grey", ls="--", lw=1, label=baseline[0])
        ax_acc.legend()
    ax_acc.set_ylim(0, 100)
    if title:
        fig.suptitle(title)
    return fig


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """cm[i, j] = how many images of class i were predicted as class j (NumPy or CuPy inputs)."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (backend.to_numpy(labels), backend.to_numpy(preds)), 1)
    return cm


def plot_confusion(cm: np.ndarray, classes, path, title: str = "") -> Path:
    """The confusion matrix, rows normalised to fractions of each true class, counts written in."""
    k = len(classes)
    frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = _figure((1.0 + 0.6 * k, 0.8 + 0.55 * k))
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if title:
        ax.set_title(title)
    _save(fig, path)
    return Path(path)


def mask_colors(num_classes: int, ignore_index: int = 255):
    """(256, 3) uint8 palette: class c a distinct colour (background black), ``ignore_index`` white."""
    from matplotlib import colormaps
    tab = (np.array(colormaps["tab10"].colors) * 255).astype(np.uint8)
    pal = np.zeros((256, 3), dtype=np.uint8)
    for c in range(1, num_classes):
        pal[c] = tab[(c - 1) % len(tab)]
    pal[ignore_index] = 255
    return pal


def plot_masks(images, true_masks, pred_masks, classes, path, title: str = "", ignore_index: int = 255) -> Path:
    """A grid of n rows: the image (uint8 (n, 3, H, W)), its true mask and the predicted mask
    ((n, H, W) class indices), side by side, with a legend of the class colours (white: ignore)."""
    from matplotlib.patches import Patch
    images, true_masks, pred_masks = (np.asarray(backend.to_numpy(a)) for a in (images, true_masks, pred_masks))
    n = len(images)
    pal = mask_colors(len(classes), ignore_index)
    height = 1.75 * n + 0.9
    fig = _figure((5.4, height))
    axes = np.asarray(fig.subplots(n, 3, squeeze=False))
    fig.subplots_adjust(left=0.02, right=0.98, wspace=0.05, hspace=0.08, top=1 - 0.55 / height,
                        bottom=0.4 / height)
    for i in range(n):
        for j, (pic, name) in enumerate(((images[i].transpose(1, 2, 0), "image"),
                                         (pal[true_masks[i]], "true mask"), (pal[pred_masks[i]], "predicted"))):
            ax = axes[i, j]
            ax.imshow(pic, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
    handles = [Patch(color=pal[c] / 255, label=name) for c, name in enumerate(classes)]
    handles.append(Patch(facecolor="white", edgecolor="grey", label=f"ignore ({ignore_index})"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)
    return Path(path)
