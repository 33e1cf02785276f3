r"""Training losses: cross-entropy with label smoothing, DeiT's distillation losses, the
per-pixel cross-entropy of segmentation (logits upsampled to the masks, an ignore label), and soft
Dice (with the hard Dice metric) for volume segmentation.

DeiT (Touvron et al. 2021, §4) trains a transformer student from a CNN teacher.
With Zs the student's logits, Zt the teacher's, ψ the softmax, y the label, τ a
temperature and λ a weight, the paper writes:

* soft distillation (Hinton et al. 2015)::

      L = (1 − λ)·CE(ψ(Zs), y) + λ·τ²·KL(ψ(Zs/τ), ψ(Zt/τ))

  KL(ψ(Zs/τ), ψ(Zt/τ)) = Σ_c pt_c·(log pt_c − log ps_c), with pt = ψ(Zt/τ),
  ps = ψ(Zs/τ), averaged over the batch. The τ² keeps the gradient's size
  independent of τ (the gradient of the KL term scales as 1/τ²).

* hard distillation: the teacher's decision y_t = argmax_c Zt_c is a second label::

      L = ½·CE(ψ(Zs), y) + ½·CE(ψ(Zs), y_t)

* the distillation token: the distilled DeiT has two heads, the class token's
  (Zs_cls) and the distillation token's (Zs_dist). The class head learns from
  the label and the distillation head from the teacher::

      L = (1 − λ)·CE(ψ(Zs_cls), y) + λ·τ²·KL(ψ(Zs_dist/τ), ψ(Zt/τ))     (soft)
      L = ½·CE(ψ(Zs_cls), y) + ½·CE(ψ(Zs_dist), y_t)                    (hard, λ = ½)

  At test time the model averages the two heads' logits (in eval mode it
  returns that average itself).

A model with a single head gets the same formulas with Zs_cls = Zs_dist = Zs,
which are exactly the two formulas above. CE(·, y) may be label-smoothed and y
may be soft (mixup/cutmix); the teacher term is never smoothed. Everything is
built from :mod:`minivit.functional` ops, so the gradients come from their
backward (and are checked against finite differences in the tests).

One difference from the DeiT repository: its soft term divides the summed KL by
``Zs.numel()`` = B·C, which makes it C times smaller than the paper's batch mean.
``kl_reduction="numel"`` reproduces the repository; the default ``"batchmean"``
is the paper's formula.
"""
from __future__ import annotations

import warnings

import numpy as np

import minivit.functional as F
from minivit import backend
from minivit.autograd import Tensor, no_grad

DISTILLATION_TYPES = ("none", "soft", "hard")
get_array_module = backend.get_array_module


def cross_entropy(logits, target, label_smoothing: float = 0.0):
    """CE(ψ(Z), y), mean over the batch; ``target`` holds class indices or class probabilities."""
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def soft_distillation_term(student_logits, teacher_logits, tau: float = 1.0, kl_reduction: str = "batchmean"):
    """τ²·KL(ψ(Zs/τ), ψ(Zt/τ)) = τ²·Σ_c pt_c·(log pt_c − log ps_c), averaged over the batch.

    ``kl_reduction="numel"`` divides the sum by B·C instead of B (the DeiT repository's scaling).
    The teacher's logits are treated as constants.
    """
    if tau <= 0:
        raise ValueError(f"the distillation temperature tau must be positive, got {tau}")
    if kl_reduction not in ("batchmean", "numel"):
        raise ValueError(f"kl_reduction must be 'batchmean' (the paper) or 'numel' (the DeiT repo), got {kl_reduction!r}")
    if tuple(student_logits.shape) != tuple(teacher_logits.shape):
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape (B, num_classes)")
    zt = teacher_logits.detach() if isinstance(teacher_logits, Tensor) else Tensor(teacher_logits)
    log_ps = F.log_softmax(student_logits / tau, dim=1)
    log_pt = F.log_softmax(zt / tau, dim=1)
    kl = F.kl_div(log_ps, log_pt, reduction="sum", log_target=True)        # Σ_b Σ_c pt·(log pt − log ps)
    denom = student_logits.shape[0] if kl_reduction == "batchmean" else student_logits.numel()
    return kl * (tau * tau / denom)


def hard_distillation_term(student_logits, teacher_logits):
    """CE(ψ(Zs), argmax Zt): the teacher's decision used as a label."""
    zt = teacher_logits.data if isinstance(teacher_logits, Tensor) else teacher_logits
    return F.cross_entropy(student_logits, zt.argmax(axis=1))


def soft_distillation_loss(student_logits, teacher_logits, target, alpha: float = 0.5, tau: float = 1.0,
                           label_smoothing: float = 0.0, kl_reduction: str = "batchmean"):
    """(1 − λ)·CE(ψ(Zs), y) + λ·τ²·KL(ψ(Zs/τ), ψ(Zt/τ)), with λ = ``alpha``."""
    return distillation_loss(student_logits, teacher_logits, target, "soft", alpha, tau, label_smoothing,
                             kl_reduction)


def hard_distillation_loss(student_logits, teacher_logits, target, label_smoothing: float = 0.0):
    """½·CE(ψ(Zs), y) + ½·CE(ψ(Zs), argmax Zt)."""
    return distillation_loss(student_logits, teacher_logits, target, "hard", 0.5, 1.0, label_smoothing)


def distillation_loss(outputs, teacher_logits, target, kind: str, alpha: float = 0.5, tau: float = 1.0,
                      label_smoothing: float = 0.0, kl_reduction: str = "batchmean"):
    """The DeiT loss for a single-head student (``outputs`` = Zs) or a distilled DeiT
    (``outputs`` = (Zs_cls, Zs_dist)): (1 − λ)·CE(Zs_cls, y) + λ·teacher term on Zs_dist.

    ``kind``: "soft" (teacher term τ²·KL) or "hard" (teacher term CE with argmax Zt).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the distillation weight λ) must be in [0, 1], got {alpha}")
    cls_logits, dist_logits = outputs if isinstance(outputs, (tuple, list)) else (outputs, outputs)
    base = cross_entropy(cls_logits, target, label_smoothing)
    if kind == "soft":
        teach = soft_distillation_term(dist_logits, teacher_logits, tau, kl_reduction)
    elif kind == "hard":
        teach = hard_distillation_term(dist_logits, teacher_logits)
    else:
        raise ValueError(f"distillation kind must be 'soft' or 'hard', got {kind!r}")
    return base * (1.0 - alpha) + teach * alpha


class DistillationLoss:
    """The training criterion: ``loss = criterion(inputs, outputs, target)``.

    Without a teacher (``kind="none"``) it is the (label-smoothed) cross-entropy on the
    model's logits; a distilled DeiT's two heads then both learn from the label
    (their mean loss). With a teacher, the teacher runs on the same (augmented)
    ``inputs`` in eval mode, without a graph, and :func:`distillation_loss` is applied.
    """

    def __init__(self, teacher=None, kind: str = "none", alpha: float = 0.5, tau: float = 1.0,
                 label_smoothing: float = 0.0, kl_reduction: str = "batchmean"):
        if kind not in DISTILLATION_TYPES:
            raise ValueError(f"distillation must be one of {DISTILLATION_TYPES}, got {kind!r}")
        if kind != "none" and teacher is None:
            raise ValueError(f"distillation {kind!r} needs a teacher model (--teacher CHECKPOINT)")
        self.teacher, self.kind, self.alpha, self.tau = teacher, kind, alpha, tau
        self.label_smoothing, self.kl_reduction = label_smoothing, kl_reduction
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    def teacher_logits(self, inputs):
        with no_grad():
            out = self.teacher(inputs)
        if isinstance(out, (tuple, list)):   # a distilled teacher: average its heads, as at test time
            out = (out[0] + out[1]) * 0.5
        return out.detach()

    def __call__(self, inputs, outputs, target):
        if self.kind == "none":
            if isinstance(outputs, (tuple, list)):
                return (cross_entropy(outputs[0], target, self.label_smoothing)
                        + cross_entropy(outputs[1], target, self.label_smoothing)) * 0.5
            return cross_entropy(outputs, target, self.label_smoothing)
        zt = self.teacher_logits(inputs)
        return distillation_loss(outputs, zt, target, self.kind, self.alpha, self.tau,
                                 self.label_smoothing, self.kl_reduction)


# =========================================================================== Dice (volumes, masks)
# Soft Dice (Milletari et al., V-Net, 2016), as MONAI's ``DiceLoss`` computes it (UNETR trains
# with Dice + cross-entropy). With p the predicted probabilities and g the one-hot target of one
# sample's class c, summed over the voxels (and over the batch too when ``batch=True``):
#
#     Dice loss = 1 − (2·Σ p·g + smooth_nr) / (Σ p + Σ g + smooth_dr)
#     Jaccard   = 1 − (Σ p·g + smooth_nr/2) / (Σ p + Σ g − Σ p·g + smooth_dr/2)    (jaccard=True)
#
# then averaged over the (sample, class) pairs. The smooth terms (MONAI's defaults, 1e-5) make a
# class absent from both prediction and target score loss 0, not 0/0.
DICE_REDUCTIONS = ("mean", "sum", "none")


def _one_hot_target(target, num_classes: int, dtype, name: str):
    """Class indices (B, *S) or (B, 1, *S) → a one-hot array (B, C, *S) (not a graph input)."""
    xp = get_array_module(target)
    labels = target[:, 0] if target.ndim >= 2 and target.shape[1] == 1 else target
    if labels.dtype.kind not in "iu":
        labels = labels.astype(np.int64)              # float labels (B, 1, *S) from a loader: truncated, as MONAI
    # (the range check reads the labels on the host: on the CPU only, so a GPU step never syncs here)
    if xp is np and labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{name}: class indices must be in [0, {num_classes}), got [{int(labels.min())}, "
                         f"{int(labels.max())}]; the logits have {num_classes} channels")
    classes = xp.arange(num_classes).reshape((1, num_classes) + (1,) * (labels.ndim - 1))
    return (labels[:, None] == classes).astype(dtype)


def dice_loss(input, target, include_background: bool = True, to_onehot_y: bool = False,  # noqa: A002
              sigmoid: bool = False, softmax: bool = False, jaccard: bool = False, reduction: str = "mean",
              smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False):
    """Soft Dice loss, ``monai.losses.DiceLoss(...)(input, target)`` with the same arguments.

    input (B, C, *S): probabilities, or logits with ``softmax=True`` (over C) / ``sigmoid=True``.
    target: (B, C, *S) one-hot (or soft) masks, or with ``to_onehot_y=True`` class indices
    (B, 1, *S) or (B, *S). ``include_background=False`` drops channel 0 after the activation.
    reduction 'mean' | 'sum' over the (B, C) losses, or 'none': the (B, C, 1, …) losses ((C, 1, …)
    with ``batch=True``: MONAI's shapes)."""
    name = "dice_loss"
    if sigmoid and softmax:
        raise ValueError(f"{name}: sigmoid=True and softmax=True are exclusive; pick one")
    if reduction not in DICE_REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {DICE_REDUCTIONS}, got {reduction!r}")
    if input.ndim < 3:
        raise ValueError(f"{name}: input must be (B, C, *spatial), got shape {tuple(input.shape)}")
    C = input.shape[1]
    if sigmoid:
        input = F.sigmoid(input)
    if softmax and C > 1:                          # (MONAI ignores softmax on one channel, too)
        input = F.softmax(input, dim=1)
    t = target.data if isinstance(target, Tensor) else get_array_module(input.data).asarray(target)
    if to_onehot_y and C > 1:
        t = _one_hot_target(t, C, input.dtype, name)
    t = t.astype(input.dtype, copy=False)
    if tuple(t.shape) != tuple(input.shape):
        raise ValueError(f"{name}: target shape {tuple(t.shape)} does not match input {tuple(input.shape)}; "
                         f"pass one-hot (B, C, *S) masks, or class indices with to_onehot_y=True")
    if not include_background and C > 1:
        input, t = input[:, 1:], t[:, 1:]
    axes = tuple(range(2, input.ndim))
    if batch:
        axes = (0,) + axes
    inter = F.sum(input * Tensor(t), dim=axes)                            # (B, C), or (C,) with batch
    denom = F.sum(input, dim=axes) + Tensor(t.sum(axis=axes))
    if jaccard:
        denom = (denom - inter) * 2.0
    f = 1.0 - (inter * 2.0 + smooth_nr) / (denom + smooth_dr)
    if reduction == "mean":
        return F.mean(f)
    if reduction == "sum":
        return F.sum(f)
    return f.reshape(*f.shape[:2], *(1,) * (input.ndim - 2))  # MONAI's: (B, C, 1, …), or (C, 1, …) with batch


class DiceLoss:
    """``monai.losses.DiceLoss``'s arguments and call: ``DiceLoss(softmax=True, to_onehot_y=True)(logits,
    labels)``; see :func:`dice_loss`."""

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
                 softmax: bool = False, jaccard: bool = False, reduction: str = "mean", smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False):
        self.kwargs = dict(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid,
                           softmax=softmax, jaccard=jaccard, reduction=reduction, smooth_nr=smooth_nr,
                           smooth_dr=smooth_dr, batch=batch)
        if reduction not in DICE_REDUCTIONS:
            raise ValueError(f"DiceLoss: reduction must be one of {DICE_REDUCTIONS}, got {reduction!r}")

    def __call__(self, input, target):  # noqa: A002
        return dice_loss(input, target, **self.kwargs)


def dice_per_class(pred, target, num_classes: int, include_background: bool = True, ignore_empty: bool = True):
    """Hard Dice 2|P∩G| / (|P| + |G|) per sample and class, as MONAI's ``compute_dice`` on one-hot
    masks: (B, C) float64 on the host (C − 1 columns without the background).

    pred: class indices (B, *S), or logits / probabilities (B, num_classes, *S) (argmax over C);
    target: class indices (B, *S). A class absent from a sample's target scores NaN
    (``ignore_empty=True``, left out of the means) or else 1 if also absent from the prediction, 0 if not."""
    pred = backend.to_numpy(pred.data if isinstance(pred, Tensor) else pred)
    target = backend.to_numpy(target.data if isinstance(target, Tensor) else target)
    if pred.ndim == target.ndim + 1:
        if pred.shape[1] != num_classes:
            raise ValueError(f"dice_per_class: pred has {pred.shape[1]} channels, num_classes is {num_classes}")
        pred = pred.argmax(axis=1)
    if pred.shape != target.shape:
        raise ValueError(f"dice_per_class: pred labels {pred.shape} and target labels {target.shape} differ; "
                         f"pass (B, *S) labels or (B, C, *S) logits for pred, (B, *S) labels for target")
    classes = np.arange(0 if include_background else 1, num_classes)
    axes = tuple(range(1, pred.ndim))
    P = pred[:, None] == classes.reshape((1, -1) + (1,) * (pred.ndim - 1))       # (B, C, *S) bool
    G = target[:, None] == classes.reshape((1, -1) + (1,) * (pred.ndim - 1))
    inter = (P & G).sum(axis=tuple(a + 1 for a in axes)).astype(np.float64)      # (B, C)
    p_sum = P.sum(axis=tuple(a + 1 for a in axes)).astype(np.float64)
    g_sum = G.sum(axis=tuple(a + 1 for a in axes)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2 * inter / (p_sum + g_sum)
    empty = g_sum == 0
    dice[empty] = np.nan if ignore_empty else (p_sum[empty] == 0).astype(np.float64)
    return dice


def mean_dice(pred, target, num_classes: int, include_background: bool = False, ignore_empty: bool = True):
    """(mean Dice over classes, per-class Dice (C,)): each class's Dice averaged over the samples
    whose target has it (NaN-mean of :func:`dice_per_class`), then the mean of those. The
    background is left out by default, as the segmentation papers (BTCV's) report organs."""
    d = dice_per_class(pred, target, num_classes, include_background, ignore_empty)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)          # a class no sample has: NaN
        per_class = np.nanmean(d, axis=0)
        return float(np.nanmean(per_class)), per_class


def merge_heads(outputs):
    """The logits to score: a distilled DeiT's two heads averaged, or the logits themselves."""
    if isinstance(outputs, (tuple, list)):
        return (outputs[0] + outputs[1]) * 0.5
    return outputs


# =========================================================================== segmentation
def _check_logits(logits):
    if logits.ndim not in (4, 5):
        raise ValueError(f"segmentation logits must be (B, K, h, w) or (B, K, d, h, w), got shape "
                         f"{tuple(logits.shape)}: is this a classification model? (--task segmentation needs "
                         f"a per-pixel model)")


def upsample_logits(logits, size):
    """Per-pixel logits (B, K, h, w) → (B, K, H, W), bilinear (align_corners=False): a decoder's
    coarse map (SegFormer's and Semantic FPN's are at 1/4 of the input) brought to the label size,
    as SegFormer's and mmsegmentation's training does before the loss. Per-voxel logits
    (B, K, d, h, w) of a volume model likewise, trilinear."""
    _check_logits(logits)
    if tuple(logits.shape[2:]) == tuple(size):
        return logits
    mode = "bilinear" if logits.ndim == 4 else "trilinear"
    return F.interpolate(logits, size=tuple(size), mode=mode, align_corners=False)


def segmentation_cross_entropy(logits, target, ignore_index: int = 255, label_smoothing: float = 0.0):
    """Per-pixel cross-entropy: logits (B, K, h, w) upsampled bilinearly to the masks' (H, W), then
    ``F.cross_entropy`` over every pixel whose label is not ``ignore_index``, averaged over those
    pixels (``torch.nn.functional.cross_entropy(up, target, ignore_index=...)``'s mean). Volumes:
    logits (B, K, d, h, w) and masks (B, D, H, W)."""
    _check_logits(logits)
    if target.ndim != logits.ndim - 1:
        raise ValueError(f"segmentation target must be (B, H, W) class masks (or (B, D, H, W) for volumes) "
                         f"to go with logits {tuple(logits.shape)}, got shape {tuple(target.shape)}")
    up = upsample_logits(logits, target.shape[1:])                        # (B, K, H, W)
    return F.cross_entropy(up, target, ignore_index=ignore_index, label_smoothing=label_smoothing)


def segmentation_dice_loss(logits, target, ignore_index: int = 255):
    """The soft Dice loss (``DiceLoss(softmax=True, to_onehot_y=True)``) of per-pixel logits upsampled
    to the masks' size, every pixel labelled ``ignore_index`` left out of both the probabilities and
    the one-hot truth (where none is, it is MONAI's ``DiceLoss`` exactly)."""
    up = upsample_logits(logits, target.shape[1:])                        # (B, K, *S)
    xp = get_array_module(up.data)
    valid = xp.asarray(target) != ignore_index                            # (B, *S)
    onehot = _one_hot_target(xp.where(valid, target, 0), up.shape[1], up.dtype, "segmentation_dice_loss")
    keep = valid[:, None].astype(up.dtype)                                # (B, 1, *S)
    return dice_loss(F.softmax(up, dim=1) * Tensor(keep), onehot * keep)


SEGMENTATION_LOSSES = ("ce", "dice_ce")     # --loss: cross-entropy, or Dice + it (UNETR's; MONAI's DiceCELoss)


class SegmentationLoss:
    """The trainer's criterion for ``--task segmentation``: ``criterion(inputs, outputs, target)``,
    the same call as :class:`DistillationLoss`. ``loss="dice_ce"``: the soft Dice loss plus the
    cross-entropy, summed with weight 1 each (UNETR's training loss, MONAI's ``DiceCELoss``)."""

    def __init__(self, ignore_index: int = 255, label_smoothing: float = 0.0, loss: str = "ce"):
        if loss not in SEGMENTATION_LOSSES:
            raise ValueError(f"SegmentationLoss: loss must be one of {SEGMENTATION_LOSSES}, got {loss!r}")
        self.ignore_index, self.label_smoothing, self.loss = ignore_index, label_smoothing, loss

    def __call__(self, inputs, outputs, target):
        ce = segmentation_cross_entropy(outputs, target, self.ignore_index, self.label_smoothing)
        if self.loss == "dice_ce":
            return ce + segmentation_dice_loss(outputs, target, self.ignore_index)
        return ce


__all__ = ["upsample_logits", "segmentation_cross_entropy", "segmentation_dice_loss", "SegmentationLoss",
           "SEGMENTATION_LOSSES",
           "cross_entropy", "soft_distillation_term", "hard_distillation_term", "soft_distillation_loss",
           "hard_distillation_loss", "distillation_loss", "DistillationLoss", "merge_heads",
           "DISTILLATION_TYPES"]
__all__ += ["dice_loss", "DiceLoss", "dice_per_class", "mean_dice", "DICE_REDUCTIONS"]
