"""Segmentation pieces: the generated ``shapes`` set (determinism, label statistics, ignore borders),
the per-pixel loss (upsampled logits, ignore_index: finite differences and PyTorch parity in
float64), mIoU / pixel accuracy against hand-computed confusion matrices, and Semantic FPN."""
import numpy as np
import pytest

from minivit import Tensor, backend, data, losses, metrics
from minivit.data.segmentation import (IGNORE_INDEX, SHAPES_CLASSES, ignore_borders, make_shapes_scenes,
                                       shapes_split)
from minivit.models import create_model
from minivit.models.fpn import SemanticFPN
from minivit.testing import gradcheck

from conftest import torch_or_skip


@pytest.fixture(scope="module")
def scenes():
    return shapes_split(300, [0, 0])


# =========================================================================== the dataset
def test_shapes_deterministic_and_prefix_stable(scenes):
    again = shapes_split(300, [0, 0])
    assert np.array_equal(again.images, scenes.images) and np.array_equal(again.labels, scenes.labels)
    short = shapes_split(7, [0, 0])                   # the first k do not depend on how many are made
    assert np.array_equal(short.images, scenes.images[:7]) and np.array_equal(short.labels, scenes.labels[:7])
    other = shapes_split(7, [1, 0])
    assert not np.array_equal(other.labels, short.labels)
    assert scenes.images.shape == (300, 3, 64, 64) and scenes.images.dtype == np.uint8
    assert scenes.labels.shape == (300, 64, 64) and scenes.labels.dtype == np.int64


def test_shapes_label_statistics(scenes):
    m = scenes.labels
    assert set(np.unique(m).tolist()) == set(range(len(SHAPES_CLASSES))) | {IGNORE_INDEX}
    valid = m[m != IGNORE_INDEX]
    frac = np.bincount(valid, minlength=5) / valid.size
    assert 0.4 < frac[0] < 0.8, frac                   # background is most pixels, not all
    assert (frac[1:] > 0.02).all(), frac               # every shape kind is well represented
    assert 0.05 < (m == IGNORE_INDEX).mean() < 0.3
    # Several shapes per image: most images hold three or more classes besides the ignore label.
    kinds = [len(set(np.unique(x).tolist()) - {0, IGNORE_INDEX}) for x in m]
    assert np.mean(np.array(kinds) >= 2) > 0.5
    # Several sizes: the pixel count of one class in one image spans more than 10×.
    areas = np.array([(x == c).sum() for x in m for c in range(1, 5) if (x == c).any()])
    assert areas.max() > 10 * np.percentile(areas, 10)


def test_colour_does_not_tell_the_class(scenes):
    """Textures and colours are drawn independently of the class: a pixel's mean colour per class
    differs little between classes (a shape must be told by its outline)."""
    img = scenes.images.transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.float64)
    lab = scenes.labels.reshape(-1)
    means = np.array([img[lab == c].mean(axis=0) for c in range(5)])
    assert np.abs(means - means.mean(axis=0)).max() < 12, means


def test_ignore_label_exactly_on_borders(scenes):
    m = scenes.labels
    # The ignored pixels are exactly those whose 3×3 neighbourhood (clamped at the image's edge)
    # holds two classes in the scene's exact labels.
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    _, raw = make_shapes_scenes(rng_a, 40, ignore=False)
    _, with_ignore = make_shapes_scenes(rng_b, 40)
    assert IGNORE_INDEX not in raw
    win = np.lib.stride_tricks.sliding_window_view(np.pad(raw, ((0, 0), (1, 1), (1, 1)), mode="edge"), (3, 3),
                                                   axis=(1, 2))                         # (n, H, W, 3, 3)
    border = win.min(axis=(-1, -2)) != win.max(axis=(-1, -2))
    assert border.any() and np.array_equal(with_ignore, np.where(border, IGNORE_INDEX, raw))
    # And so no two different classes touch: each valid pixel's 4-neighbours are its class or ignore.
    a, b = m[:, :, :-1], m[:, :, 1:]
    assert not ((a != b) & (a != IGNORE_INDEX) & (b != IGNORE_INDEX)).any()
    a, b = m[:, :-1], m[:, 1:]
    assert not ((a != b) & (a != IGNORE_INDEX) & (b != IGNORE_INDEX)).any()


def test_ignore_borders_by_hand():
    m = np.zeros((1, 5, 5), dtype=np.int64)
    m[0, 2:, 2:] = 3
    out = ignore_borders(m)
    expected = np.array([[0, 0, 0, 0, 0],
                         [0, 255, 255, 255, 255],
                         [0, 255, 255, 255, 255],
                         [0, 255, 255, 3, 3],
                         [0, 255, 255, 3, 3]])
    assert np.array_equal(out[0], expected)


def test_load_dataset_shapes_subsets():
    ds = data.load_dataset("shapes", subset=40, test_subset=12)
    assert len(ds.train) == 40 and len(ds.test) == 12 and ds.classes == SHAPES_CLASSES
    assert ds.train.ignore_index == 255


def test_split_rejects_bad_masks():
    images = np.zeros((2, 3, 8, 8), np.uint8)
    with pytest.raises(ValueError, match=r"mask values must lie in \[0, 4\] or be 255"):
        data.SegmentationSplit(images, np.full((2, 8, 8), 7), SHAPES_CLASSES)
    with pytest.raises(ValueError, match=r"masks must have shape \(N, H, W\)"):
        data.SegmentationSplit(images, np.zeros((2, 8)), SHAPES_CLASSES)


def test_segmentation_augment_flips_image_and_mask_together(xp):
    aug = data.SegmentationAugment(xp, hflip=True, seed=3)
    img = xp.asarray(np.random.default_rng(0).integers(0, 256, (16, 3, 6, 6), dtype=np.uint8))
    mask = img[:, 0].astype(np.int64)                          # the mask is the red channel
    x, m = aug(img, mask, 0, 0)
    back = backend.to_numpy(x)[:, 0] * data.CIFAR10_STD[0] * 255 + data.CIFAR10_MEAN[0] * 255
    assert np.allclose(back, backend.to_numpy(m), atol=1e-3)     # still the same pixels
    flipped = (backend.to_numpy(m) != backend.to_numpy(mask)).any(axis=(1, 2))
    assert 0 < flipped.sum() < 16                               # some flipped, some not
    x2, m2 = aug(img, mask, 0, 0)                               # the same (epoch, step): the same draw
    assert np.array_equal(backend.to_numpy(m2), backend.to_numpy(m))


# =========================================================================== the loss
def _case(seed=0, b=2, k=4, h=3, w=3, size=(6, 6)):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, k, h, w))
    t = rng.integers(0, k, (b,) + size)
    t[rng.random(t.shape) < 0.3] = 255
    return x, t


def test_segmentation_loss_gradcheck(xp):
    x, t = _case()
    gradcheck(lambda z: losses.segmentation_cross_entropy(z, xp.asarray(t), ignore_index=255),
              Tensor(xp.asarray(x), requires_grad=True))


def test_segmentation_loss_matches_torch_float64():
    torch = torch_or_skip()
    x, t = _case(1, b=2, k=5, h=4, w=5, size=(16, 20))
    ours = Tensor(x, requires_grad=True)
    loss = losses.segmentation_cross_entropy(ours, t, ignore_index=255)
    loss.backward()
    tx = torch.tensor(x, requires_grad=True)
    up = torch.nn.functional.interpolate(tx, size=(16, 20), mode="bilinear", align_corners=False)
    ref = torch.nn.functional.cross_entropy(up, torch.tensor(t), ignore_index=255)
    ref.backward()
    assert loss.data.dtype == np.float64
    np.testing.assert_allclose(loss.data, ref.item(), rtol=1e-12)
    np.testing.assert_allclose(ours.grad, tx.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_spatial_cross_entropy_matches_torch_with_ignore_and_smoothing():
    """F.cross_entropy on (B, K, H, W) itself (no upsampling), every reduction, ignore_index 255."""
    torch = torch_or_skip()
    import minivit.functional as F
    x, t = _case(2, b=3, k=4, h=5, w=6, size=(5, 6))
    for reduction in ("mean", "sum", "none"):
        for eps in (0.0, 0.1):
            ours = Tensor(x, requires_grad=True)
            out = F.cross_entropy(ours, t, ignore_index=255, reduction=reduction, label_smoothing=eps)
            tx = torch.tensor(x, requires_grad=True)
            ref = torch.nn.functional.cross_entropy(tx, torch.tensor(t), ignore_index=255, reduction=reduction,
                                                    label_smoothing=eps)
            g = np.random.default_rng(0).standard_normal(ref.shape)
            out.backward(g)
            ref.backward(torch.tensor(g))
            np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(ours.grad, tx.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_ignored_pixels_get_no_gradient():
    x, t = _case(3)
    t[:, :3] = 255                                        # the top half of every mask ignored
    xt = Tensor(x, requires_grad=True)
    full = Tensor(np.repeat(np.repeat(x, 2, axis=2), 2, axis=3), requires_grad=True)   # no upsampling needed
    losses.segmentation_cross_entropy(full, t).backward()
    assert np.all(full.grad[:, :, :3] == 0) and np.abs(full.grad[:, :, 3:]).sum() > 0
    losses.segmentation_cross_entropy(xt, t).backward()
    assert np.isfinite(xt.grad).all()


def test_segmentation_loss_errors():
    with pytest.raises(ValueError, match=r"segmentation logits must be \(B, K, h, w\).*classification model"):
        losses.segmentation_cross_entropy(Tensor(np.zeros((2, 5))), np.zeros((2, 4, 4), np.int64))
    with pytest.raises(ValueError, match=r"target must be \(B, H, W\)"):
        losses.segmentation_cross_entropy(Tensor(np.zeros((2, 5, 2, 2))), np.zeros((2, 4), np.int64))


# =========================================================================== the metrics
def test_metrics_against_a_hand_computed_confusion():
    labels = np.array([[0, 0, 1, 1],
                       [2, 2, 255, 1]])
    preds = np.array([[0, 1, 1, 1],
                      [2, 0, 2, 2]])
    cm = metrics.segmentation_confusion(labels, preds, 4)
    # rows true, columns predicted; the 255 pixel is left out; class 3 is nowhere.
    expected = np.array([[1, 1, 0, 0],
                         [0, 2, 1, 0],
                         [1, 0, 1, 0],
                         [0, 0, 0, 0]])
    assert np.array_equal(cm, expected)
    iou = metrics.iou_per_class(cm)
    # class 0: TP 1, FP 1 (a 2 predicted 0), FN 1 → 1/3; class 1: TP 2, FP 1, FN 1 → 2/4;
    # class 2: TP 1, FP 1, FN 1 → 1/3; class 3: no union → NaN, left out of the mean.
    np.testing.assert_allclose(iou[:3], [1 / 3, 1 / 2, 1 / 3])
    assert np.isnan(iou[3])
    assert metrics.mean_iou(cm) == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert metrics.pixel_accuracy(cm) == pytest.approx(4 / 7)


def test_metrics_predicted_but_absent_class_counts_as_zero():
    labels = np.zeros((1, 4), np.int64)
    preds = np.array([[0, 0, 0, 2]])
    cm = metrics.segmentation_confusion(labels, preds, 3)
    iou = metrics.iou_per_class(cm)
    np.testing.assert_allclose(iou[[0, 2]], [3 / 4, 0.0])
    assert np.isnan(iou[1])
    assert metrics.mean_iou(cm) == pytest.approx(3 / 8)


def test_metrics_perfect_prediction_and_device(xp):
    _, t = _case(4, size=(8, 8))
    labels = xp.asarray(t)
    preds = xp.where(labels == 255, 0, labels)
    cm = metrics.segmentation_confusion(labels, preds, 4)
    assert metrics.mean_iou(cm) == 1.0 and metrics.pixel_accuracy(cm) == 1.0
    assert int(backend.to_numpy(cm).sum()) == int((t != 255).sum())


def test_metrics_shape_error():
    with pytest.raises(ValueError, match="must have the same shape"):
        metrics.segmentation_confusion(np.zeros((2, 3)), np.zeros((2, 4)), 3)


# =========================================================================== Semantic FPN
@pytest.mark.parametrize("name, strides", [("fpn_pvt_v2_tiny", [4, 8, 16, 32]), ("fpn_swin_tiny", [4, 8, 16])])
def test_fpn_models_shapes_and_gradients(name, strides):
    model = create_model(name, num_classes=5)
    assert model.backbone.feature_info.reduction() == strides and model.output_stride == 4
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    out = model(x)
    assert out.shape == (2, 5, 16, 16)
    loss = losses.segmentation_cross_entropy(out, np.random.default_rng(1).integers(0, 5, (2, 64, 64)))
    loss.backward()
    # Every level of the pyramid reaches the loss: each lateral conv and each stage gets a gradient.
    for i in range(len(strides)):
        assert np.abs(model.neck.lateral_convs[i].weight.grad).sum() > 0, i
    keys = model.state_dict().keys()
    assert {"decode_head.conv_seg.weight", "neck.lateral_convs.0.weight", "neck.fpn_convs.0.weight"} <= set(keys)
    assert any(k.startswith("backbone.model.") for k in keys)


def test_fpn_neck_top_down_by_hand():
    """The neck's P_0 is conv3(lateral_0(C_0) + up2(lateral_1(C_1))): check with identity-like convs."""
    from minivit.models.fpn import FPN
    neck = FPN([1, 1], out_channels=1)
    for conv in list(neck.lateral_convs) + list(neck.fpn_convs):
        conv.weight.data[...] = 0
        conv.bias.data[...] = 0
        k = conv.weight.shape[-1]
        conv.weight.data[0, 0, k // 2, k // 2] = 1           # identity
    c0 = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    c1 = np.array([[[[100.0, 200.0], [300.0, 400.0]]]], dtype=np.float32)
    p0, p1 = neck([Tensor(c0), Tensor(c1)])
    expected = c0[0, 0] + np.kron(c1[0, 0], np.ones((2, 2)))
    np.testing.assert_allclose(p0.data[0, 0], expected)
    np.testing.assert_allclose(p1.data, c1)


def test_fpn_rejects_a_non_backbone():
    from minivit import nn
    with pytest.raises(ValueError, match="backbone must be a pyramid model's name or a features_only model"):
        SemanticFPN(nn.Identity())
