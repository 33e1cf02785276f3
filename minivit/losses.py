r"""Training losses: cross-entropy with label smoothing, DeiT's distillation losses, and the
per-pixel cross-entropy of segmentation (logits upsampled to the masks, an ignore label).

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

import minivit.functional as F
from minivit.autograd import Tensor, no_grad

DISTILLATION_TYPES = ("none", "soft", "hard")


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


def merge_heads(outputs):
    """The logits to score: a distilled DeiT's two heads averaged, or the logits themselves."""
    if isinstance(outputs, (tuple, list)):
        return (outputs[0] + outputs[1]) * 0.5
    return outputs


# =========================================================================== segmentation
def upsample_logits(logits, size):
    """Per-pixel logits (B, K, h, w) → (B, K, H, W), bilinear (align_corners=False): a decoder's
    coarse map (SegFormer's and Semantic FPN's are at 1/4 of the input) brought to the label size,
    as SegFormer's and mmsegmentation's training does before the loss."""
    if logits.ndim != 4:
        raise ValueError(f"segmentation logits must be (B, K, h, w), got shape {tuple(logits.shape)}: "
                         f"is this a classification model? (--task segmentation needs a per-pixel model)")
    if tuple(logits.shape[2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def segmentation_cross_entropy(logits, target, ignore_index: int = 255, label_smoothing: float = 0.0):
    """Per-pixel cross-entropy: logits (B, K, h, w) upsampled bilinearly to the masks' (H, W), then
    ``F.cross_entropy`` over every pixel whose label is not ``ignore_index``, averaged over those
    pixels (``torch.nn.functional.cross_entropy(up, target, ignore_index=...)``'s mean)."""
    if target.ndim != 3:
        raise ValueError(f"segmentation target must be (B, H, W) class masks, got shape {tuple(target.shape)}")
    up = upsample_logits(logits, target.shape[1:])                        # (B, K, H, W)
    return F.cross_entropy(up, target, ignore_index=ignore_index, label_smoothing=label_smoothing)


class SegmentationLoss:
    """The trainer's criterion for ``--task segmentation``: ``criterion(inputs, outputs, target)``,
    the same call as :class:`DistillationLoss`."""

    def __init__(self, ignore_index: int = 255, label_smoothing: float = 0.0):
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing

    def __call__(self, inputs, outputs, target):
        return segmentation_cross_entropy(outputs, target, self.ignore_index, self.label_smoothing)


__all__ = ["upsample_logits", "segmentation_cross_entropy", "SegmentationLoss",
           "cross_entropy", "soft_distillation_term", "hard_distillation_term", "soft_distillation_loss",
           "hard_distillation_loss", "distillation_loss", "DistillationLoss", "merge_heads",
           "DISTILLATION_TYPES"]
