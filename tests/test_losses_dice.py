"""Soft Dice loss (minivit.losses.dice_loss / DiceLoss) against monai.losses.DiceLoss in float64,
value and gradient; finite differences; the hard Dice metric (dice_per_class, mean_dice) against
monai.metrics.compute_dice and closed forms. MONAI tests skip without monai
(``pip install --no-deps monai einops``)."""
import itertools

import numpy as np
import pytest

import minivit as mv
from minivit import Tensor
from minivit.losses import DiceLoss, dice_loss, dice_per_class, mean_dice
from minivit.testing import gradcheck

from conftest import torch_or_skip


def host(a):
    return mv.backend.to_numpy(a)


@pytest.fixture
def monai_losses():
    torch_or_skip()
    return pytest.importorskip("monai.losses", reason="monai not installed: pip install --no-deps monai einops")


OPTIONS = [dict(zip(("include_background", "batch", "jaccard", "reduction"), v))
           for v in itertools.product((True, False), (False, True), (False, True), ("mean", "sum", "none"))]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k[:5]}={v}" for k, v in o.items()))
def test_dice_loss_matches_monai_value_and_gradient(monai_losses, opts):
    import torch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 4, 3)) * 2
    y = rng.integers(0, 4, (2, 1, 5, 4, 3))
    y[1, 0, ...] = np.where(y[1, 0] == 3, 0, y[1, 0])          # class 3 absent from sample 1: the smooth terms
    ours = Tensor(x, requires_grad=True)
    loss = dice_loss(ours, y, softmax=True, to_onehot_y=True, **opts)
    ref = torch.tensor(x, requires_grad=True)
    loss_t = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, **opts)(ref, torch.tensor(y))
    assert loss.shape == tuple(loss_t.shape)
    np.testing.assert_allclose(host(loss.data), loss_t.detach().numpy(), rtol=1e-12, atol=1e-14)
    w = rng.standard_normal(loss.shape)
    (loss * Tensor(w)).sum().backward()
    (loss_t * torch.tensor(w)).sum().backward()
    g = ref.grad.numpy()
    assert np.abs(host(ours.grad) - g).max() <= 1e-10 * np.abs(g).max()


@pytest.mark.parametrize("kind", ["sigmoid", "probabilities_onehot"])
def test_dice_loss_other_inputs_match_monai(monai_losses, kind):
    import torch
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 6, 6))
    onehot = (rng.random((3, 2, 6, 6)) < 0.4).astype(np.float64)
    if kind == "sigmoid":
        ours, ref = dict(sigmoid=True), dict(sigmoid=True)
        inp = x
    else:
        ours, ref = {}, {}
        inp = 1 / (1 + np.exp(-x))
    a = dice_loss(Tensor(inp), onehot, **ours)
    b = monai_losses.DiceLoss(**ref)(torch.tensor(inp), torch.tensor(onehot))
    np.testing.assert_allclose(a.item(), b.item(), rtol=1e-12)


def test_dice_loss_gradcheck(xp):
    rng = np.random.default_rng(2)
    x = Tensor(xp.asarray(rng.standard_normal((2, 3, 4, 3))), requires_grad=True)
    y = xp.asarray(rng.integers(0, 3, (2, 4, 3)))                  # (B, *S) labels work too
    gradcheck(lambda t: dice_loss(t, y, softmax=True, to_onehot_y=True, include_background=False), x)


def test_dice_loss_closed_forms():
    y = np.array([[0, 1, 1, 0]])                                   # (B=1, S=4)
    perfect = np.stack([y == 0, y == 1], axis=1).astype(np.float64)  # (1, 2, 4) one-hot prediction
    assert dice_loss(Tensor(perfect), y, to_onehot_y=True, smooth_nr=0, smooth_dr=0).item() == 0.0
    assert dice_loss(Tensor(1 - perfect), y, to_onehot_y=True, smooth_nr=0, smooth_dr=0).item() == 1.0
    half = np.full((1, 2, 4), 0.5)                                 # each class: 2·1/(2+2) = 0.5
    assert dice_loss(Tensor(half), y, to_onehot_y=True, smooth_nr=0, smooth_dr=0).item() == pytest.approx(0.5)
    assert DiceLoss(to_onehot_y=True, jaccard=True, smooth_nr=0, smooth_dr=0)(Tensor(half), y).item() == \
        pytest.approx(1 - 1 / 3)                                   # IoU = 1/(2+2−1)


def test_dice_loss_errors():
    x = Tensor(np.zeros((1, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 3\), got \[0, 5\]"):
        dice_loss(x, np.array([[[0, 5, 0, 0]] * 4]), to_onehot_y=True)
    with pytest.raises(ValueError, match=r"target shape \(1, 4, 4\) does not match input \(1, 3, 4, 4\)"):
        dice_loss(x, np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="exclusive"):
        dice_loss(x, np.zeros((1, 3, 4, 4)), sigmoid=True, softmax=True)
    with pytest.raises(ValueError, match="reduction must be one of"):
        DiceLoss(reduction="avg")


# =========================================================================== the metric
@pytest.mark.parametrize("include_background,ignore_empty", [(True, True), (False, True), (True, False)])
def test_dice_per_class_matches_monai(include_background, ignore_empty):
    torch = torch_or_skip()
    metrics = pytest.importorskip("monai.metrics", reason="monai not installed")
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((3, 4, 6, 5, 4))
    y = rng.integers(0, 3, (3, 6, 5, 4))                           # class 3 never in the target: empty
    y[2][y[2] == 2] = 1                                            # class 2 absent from sample 2
    ours = dice_per_class(logits, y, 4, include_background, ignore_empty)
    pred = torch.tensor(logits.argmax(1))[:, None]
    ref = metrics.compute_dice(pred, torch.tensor(y)[:, None], include_background=include_background,
                               ignore_empty=ignore_empty, num_classes=4).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-6, equal_nan=True)        # MONAI counts in float32
    assert np.isnan(ours).any() == ignore_empty


def test_mean_dice_closed_form():
    y = np.array([[0, 0, 1, 1, 2, 2]])
    pred = np.array([[0, 1, 1, 1, 2, 0]])
    # class 1: 2·2/(3+2) = 0.8; class 2: 2·1/(1+2) = 2/3; background: 2·1/(2+2) = 0.5
    m, per = mean_dice(pred, y, 3)
    np.testing.assert_allclose(per, [0.8, 2 / 3])
    assert m == pytest.approx((0.8 + 2 / 3) / 2)
    m, per = mean_dice(pred, y, 4, include_background=True)         # class 3: in no target → NaN, ignored
    np.testing.assert_allclose(per[:3], [0.5, 0.8, 2 / 3])
    assert np.isnan(per[3]) and m == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    with pytest.raises(ValueError, match="pred labels"):
        mean_dice(pred[:, :4], y, 3)
