"""PiT: the pooling layer (shapes, depthwise structure, timm parity), the whole model's timm
parity (eval logits float32/float64, every gradient in float64, distilled training outputs),
finite-difference gradients, train/eval behaviour, errors, the CIFAR pyramid and the
papers' parameter counts."""
import numpy as np
import pytest

import minivit.models.pit  # noqa: F401  (registers the models)
from minivit.autograd import Tensor
from minivit.layers.pit_pool import ConvHeadPooling
from minivit.models.pit import PoolingVisionTransformer
from minivit.models.registry import create_model, list_models
from minivit.testing import gradcheck_directional
from tests.conftest import torch_or_skip
from tests.test_models_vit import host, n_params, timm_parity


# --------------------------------------------------------------------------- the pooling layer
@pytest.mark.parametrize("hw", [(8, 8), (7, 5)])
def test_conv_head_pooling_shapes_and_depthwise(xp, device, hw):
    pool = ConvHeadPooling(4, 8, stride=2).to(device=device, dtype=np.float64)
    assert pool.conv.weight.shape == (8, 1, 3, 3)               # groups = in channels: 9 weights per output
    rng = np.random.default_rng(0)
    x = Tensor(xp.asarray(rng.standard_normal((2, 4, *hw))))
    cls = Tensor(xp.asarray(rng.standard_normal((2, 1, 4))))
    y, c = pool(x, cls)
    assert y.shape == (2, 8, (hw[0] + 1) // 2, (hw[1] + 1) // 2) and c.shape == (2, 1, 8)
    # output channels 2k and 2k+1 see input channel k only
    x2 = host(x).copy()
    x2[:, 1] += 1.0
    y2, _ = pool(Tensor(xp.asarray(x2)), cls)
    changed = np.abs(host(y2) - host(y)).reshape(2, 8, -1).max(axis=(0, 2)) > 0
    assert changed.tolist() == [False, False, True, True, False, False, False, False]


def test_conv_head_pooling_matches_timm(xp, device):
    torch = torch_or_skip()
    pytest.importorskip("timm")
    from timm.models.pit import Pooling
    theirs = Pooling(6, 12, stride=2).double()
    ours = ConvHeadPooling(6, 12, stride=2).to(device=device, dtype=np.float64)
    ours.load_state_dict(theirs.state_dict())
    rng = np.random.default_rng(0)
    x_np, c_np = rng.standard_normal((2, 6, 7, 9)), rng.standard_normal((2, 2, 6))
    tx, tc = torch.tensor(x_np, requires_grad=True), torch.tensor(c_np, requires_grad=True)
    x, c = Tensor(xp.asarray(x_np), requires_grad=True), Tensor(xp.asarray(c_np), requires_grad=True)
    ty, tcy = theirs(tx, tc)
    y, cy = ours(x, c)
    np.testing.assert_allclose(host(y), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(cy), tcy.detach().numpy(), rtol=1e-12, atol=1e-12)
    gy, gc = rng.standard_normal(ty.shape), rng.standard_normal(tcy.shape)
    ((ty * torch.tensor(gy)).sum() + (tcy * torch.tensor(gc)).sum()).backward()
    ((y * Tensor(xp.asarray(gy))).sum() + (cy * Tensor(xp.asarray(gc))).sum()).backward()
    np.testing.assert_allclose(host(x.grad), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(host(c.grad), tc.grad.numpy(), rtol=1e-10, atol=1e-12)
    ours_p = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(host(ours_p[name].grad), p.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_conv_head_pooling_errors():
    with pytest.raises(ValueError, match="multiple of in_feature"):
        ConvHeadPooling(4, 6)
    with pytest.raises(ValueError, match="padding_mode"):
        ConvHeadPooling(4, 8, padding_mode="reflect")
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
        ConvHeadPooling(4, 8)(Tensor(np.zeros((1, 3, 4, 4), dtype=np.float32)), Tensor(np.zeros((1, 1, 4))))


# --------------------------------------------------------------------------- the model vs timm
PIT_CONFIGS = [
    # three stages on 32×32: overlapping 4/2 stem → 15×15 → 8×8 → 4×4
    dict(img_size=32, patch_size=4, stride=2, base_dims=(8, 8, 8), depth=(1, 1, 1), heads=(1, 2, 4), num_classes=7),
    # distilled (two tokens through the pooling fc), odd image, two stages, mlp ratio 2
    dict(img_size=33, patch_size=5, stride=2, base_dims=(8, 4), depth=(1, 2), heads=(2, 8), num_classes=5,
         mlp_ratio=2, distilled=True),
    # non-square image, non-overlapping stem
    dict(img_size=(24, 32), patch_size=4, stride=4, base_dims=(4, 4), depth=(2, 1), heads=(2, 4), num_classes=3),
]


def timm_pit(cfg):
    timm = pytest.importorskip("timm")
    import torch
    torch.manual_seed(0)
    tm = timm.models.pit.PoolingVisionTransformer(**cfg)
    tm.set_distilled_training(True)
    return tm


@pytest.mark.parametrize("cfg", PIT_CONFIGS, ids=["3-stage", "distilled-odd", "nonsquare"])
def test_pit_matches_timm(xp, device, cfg):
    tm = timm_pit(cfg)
    img = cfg["img_size"] if isinstance(cfg["img_size"], tuple) else (cfg["img_size"],) * 2
    timm_parity(tm, np.random.default_rng(0).standard_normal((2, 3, *img)), xp, device)


def test_pit_distilled_training_outputs_and_gradients_match_timm(xp, device):
    tm = timm_pit(PIT_CONFIGS[1])
    timm_parity(tm, np.random.default_rng(0).standard_normal((2, 3, 33, 33)), xp, device, train=True)


# --------------------------------------------------------------------------- our own checks
def small_pit(**kw):
    cfg = dict(img_size=12, patch_size=4, stride=2, base_dims=(4, 4), depth=(1, 1), heads=(1, 2), num_classes=3,
               mlp_ratio=2)
    return PoolingVisionTransformer(**dict(cfg, **kw))


@pytest.mark.parametrize("distilled", [False, True])
def test_pit_gradcheck_directional(xp, device, distilled):
    model = small_pit(distilled=distilled).to(device=device, dtype=np.float64)
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 12, 12))), requires_grad=True)
    assert gradcheck_directional(lambda x, *ps: model(x), x, *model.parameters(), n_directions=3)


def test_pit_dropout_and_drop_path_on_in_train_off_in_eval(xp, device):
    kw = dict(drop_rate=0.5, pos_drop_rate=0.3, proj_drop_rate=0.3, attn_drop_rate=0.3, drop_path_rate=0.5)
    model = small_pit(depth=(2, 1), **kw).to(device=device)
    plain = small_pit(depth=(2, 1)).to(device=device)
    plain.load_state_dict(model.state_dict())
    rates = [b.drop_path1.drop_prob if hasattr(b.drop_path1, "drop_prob") else 0.0
             for s in model.transformers for b in s.blocks]
    assert rates == pytest.approx([0.0, 0.25, 0.5])          # linear over all blocks of all stages
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((4, 3, 12, 12), dtype=np.float32)))
    model.eval()
    plain.eval()
    np.testing.assert_allclose(host(model(x)), host(plain(x)), rtol=1e-6, atol=1e-6)
    model.train()
    assert not np.allclose(host(model(x)), host(model(x)))


def test_pit_float64_and_distilled_modes(xp, device):
    model = small_pit(distilled=True).to(device=device, dtype=np.float64)
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 12, 12))))
    cls_logits, dist_logits = model.train()(x)
    assert cls_logits.dtype == np.float64 and cls_logits.shape == (2, 3)
    np.testing.assert_allclose(host(model.eval()(x)), (host(cls_logits) + host(dist_logits)) / 2, rtol=1e-12)


def test_pit_wrong_input_errors():
    model = small_pit()
    with pytest.raises(ValueError, match="input channels"):
        model(Tensor(np.zeros((1, 1, 12, 12), dtype=np.float32)))
    with pytest.raises(ValueError, match="img_size"):
        model(Tensor(np.zeros((1, 3, 16, 16), dtype=np.float32)))
    with pytest.raises(ValueError, match="one entry per stage"):
        small_pit(heads=(1, 2, 4))
    with pytest.raises(ValueError, match="smaller than patch_size"):
        small_pit(img_size=3)


# --------------------------------------------------------------------------- configurations
def test_pit_tiny_is_a_cifar_pyramid(xp, device):
    model = create_model("pit_tiny").to(device=device)
    assert 1e6 <= n_params(model) <= 6e6
    assert model.patch_embed.grid_size == (15, 15)
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)))
    feat = model.patch_embed(x)
    cls = model.cls_token.expand(2, -1, -1)
    grids, widths = [], []
    for stage in model.transformers:
        feat, cls = stage(feat, cls)
        grids.append(tuple(feat.shape[2:]))
        widths.append(feat.shape[1])
    assert grids == [(15, 15), (8, 8), (4, 4)] and widths == [64, 128, 256]
    y = model(x)
    assert y.shape == (2, 10)
    y.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(xp.isfinite(p.grad).all()), name


def test_registry_has_pit_models():
    assert {"pit_tiny", "pit_ti_224", "pit_xs_224", "pit_s_224", "pit_b_224"} <= set(list_models())


# Parameter counts within 1 % of the papers' — except PiT-Ti: the paper prints 4.9M, but the
# architecture it describes (the authors' code, and timm's pit_ti_224, whose state_dict this
# model reproduces key by key, see test_pit_224_configs_equal_timm) has 4,847,272 parameters,
# 1.08 % less (it is not even the rounding: 4.85M rounds to 4.8M). PiT-Ti gets 1.1 %.
@pytest.mark.parametrize("name,paper,tol", [("pit_ti_224", 4.9e6, 0.011), ("pit_xs_224", 10.6e6, 0.01),
                                            ("pit_s_224", 23.5e6, 0.01), ("pit_b_224", 73.8e6, 0.01)])
def test_pit_parameter_counts_match_paper(name, paper, tol):
    model = create_model(name)
    n = n_params(model)
    del model
    assert abs(n - paper) <= tol * paper, (name, n)


@pytest.mark.parametrize("name", ["pit_ti_224", "pit_b_224"])
def test_pit_224_configs_equal_timm(name):
    timm = pytest.importorskip("timm")
    ours = create_model(name)
    theirs = timm.create_model(name)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
           {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert n_params(ours) == sum(p.numel() for p in theirs.parameters())
