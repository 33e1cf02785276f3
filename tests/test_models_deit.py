"""DeiT (distilled ViT): timm parity in eval mode (averaged heads) and in training mode (two
outputs, gradients of every parameter), the two-token / two-head structure, the CIFAR
variant's relation to vit_tiny, and the papers' parameter counts."""
import numpy as np
import pytest

import minivit.models.deit  # noqa: F401  (registers the models)
import minivit.models.vit  # noqa: F401
from minivit import nn
from minivit.autograd import Tensor
from minivit.models.deit import VisionTransformerDistilled
from minivit.models.registry import create_model, list_models
from minivit.testing import gradcheck_directional
from tests.test_models_vit import host, n_params, timm_parity

DEIT_CONFIGS = [
    dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=7),
    dict(img_size=(16, 24), patch_size=4, embed_dim=24, depth=1, num_heads=3, num_classes=4, init_values=0.2,
         qkv_bias=False, mlp_ratio=2.0),
]


@pytest.mark.parametrize("cfg", DEIT_CONFIGS, ids=["square", "nonsquare-layerscale"])
def test_deit_eval_matches_timm(xp, device, cfg):
    timm = pytest.importorskip("timm")
    import torch
    torch.manual_seed(0)
    tm = timm.models.deit.VisionTransformerDistilled(**cfg)
    tm.set_distilled_training(True)
    x = np.random.default_rng(0).standard_normal((2, 3, *tm.patch_embed.img_size))
    timm_parity(tm, x, xp, device)             # eval: the averaged logits; grads through the average


@pytest.mark.parametrize("cfg", DEIT_CONFIGS, ids=["square", "nonsquare-layerscale"])
def test_deit_training_outputs_and_gradients_match_timm(xp, device, cfg):
    """Training mode returns (cls_logits, dist_logits); both and all gradients match timm's."""
    timm = pytest.importorskip("timm")
    import torch
    torch.manual_seed(0)
    tm = timm.models.deit.VisionTransformerDistilled(**cfg)
    tm.set_distilled_training(True)
    x = np.random.default_rng(0).standard_normal((2, 3, *tm.patch_embed.img_size))
    timm_parity(tm, x, xp, device, train=True)


def small_deit(**kw):
    cfg = dict(img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2, num_classes=3, mlp_ratio=2.0)
    return VisionTransformerDistilled(**dict(cfg, **kw))


def test_deit_train_returns_both_heads_eval_averages(xp, device):
    model = small_deit().to(device=device, dtype=np.float64)
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 8, 8))))
    model.train()
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2
    cls_logits, dist_logits = (host(o) for o in out)
    assert cls_logits.shape == dist_logits.shape == (2, 3)
    # the two heads read different tokens: build them by hand from the features
    feats = model.forward_features(x)
    assert feats.shape == (2, 2 + 4, 8)
    np.testing.assert_allclose(cls_logits, host(model.head(feats[:, 0])), rtol=1e-12)
    np.testing.assert_allclose(dist_logits, host(model.head_dist(feats[:, 1])), rtol=1e-12)
    assert not np.allclose(cls_logits, dist_logits)
    model.eval()
    np.testing.assert_allclose(host(model(x)), (cls_logits + dist_logits) / 2, rtol=1e-12, atol=1e-15)
    model.train()
    model.set_distilled_training(False)          # plain fine-tuning: the average in training too
    np.testing.assert_allclose(host(model(x)), (cls_logits + dist_logits) / 2, rtol=1e-12, atol=1e-15)


def test_deit_gradcheck_directional(xp, device):
    model = small_deit(init_values=0.5).to(device=device, dtype=np.float64)
    nn.init.normal_(model.cls_token, std=0.02)   # see test_vit_gradcheck_directional
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 8, 8))), requires_grad=True)
    model.train()                                # both outputs get a random cotangent
    assert gradcheck_directional(lambda x, *ps: model(x), x, *model.parameters(), n_directions=3)


def test_deit_structure_and_errors():
    model = small_deit()
    assert model.pos_embed.shape == (1, 4 + 2, 8) and model.dist_token.shape == (1, 1, 8)
    assert model.num_prefix_tokens == 2
    assert "dist_token" in model.no_weight_decay()
    with pytest.raises(ValueError, match="global_pool='token'"):
        small_deit(global_pool="avg")
    with pytest.raises(ValueError, match="input channels"):
        model(Tensor(np.zeros((1, 4, 8, 8), dtype=np.float32)))
    with pytest.raises(ValueError, match="img_size"):
        model(Tensor(np.zeros((1, 3, 16, 16), dtype=np.float32)))


def test_deit_dropout_and_drop_path_on_in_train_off_in_eval(xp, device):
    model = small_deit(drop_rate=0.5, drop_path_rate=0.5, proj_drop_rate=0.2).to(device=device)
    plain = small_deit().to(device=device)
    plain.load_state_dict(model.state_dict())
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((4, 3, 8, 8), dtype=np.float32)))
    model.eval()
    plain.eval()
    np.testing.assert_allclose(host(model(x)), host(plain(x)), rtol=1e-6, atol=1e-6)
    model.train()
    a, b = model(x)[0], model(x)[0]
    assert not np.allclose(host(a), host(b))


# --------------------------------------------------------------------------- configurations
def test_registry_has_deit_models():
    assert {"deit_tiny", "deit_tiny_224", "deit_small_224"} <= set(list_models())


def test_deit_tiny_is_vit_tiny_plus_a_distillation_token(xp, device):
    deit, vit = create_model("deit_tiny"), create_model("vit_tiny")
    assert isinstance(deit, VisionTransformerDistilled)
    d, v = deit.state_dict(), vit.state_dict()
    assert set(d) - set(v) == {"dist_token", "head_dist.weight", "head_dist.bias"} and set(v) <= set(d)
    assert all(d[k].shape == v[k].shape for k in v if k != "pos_embed")
    assert d["pos_embed"].shape == (1, 64 + 2, 256) and v["pos_embed"].shape == (1, 64 + 1, 256)
    # the same backbone: only the new token, its position row and the second head are extra
    assert n_params(deit) - n_params(vit) == 256 + 256 + (256 * 10 + 10)
    assert 1e6 <= n_params(deit) <= 6e6
    deit.to(device=device).train()
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)))
    cls_logits, dist_logits = deit(x)
    assert cls_logits.shape == dist_logits.shape == (2, 10)
    (cls_logits.sum() + dist_logits.sum()).backward()
    for name, p in deit.named_parameters():
        assert p.grad is not None and bool(xp.isfinite(p.grad).all()), name


@pytest.mark.parametrize("name,paper", [("deit_tiny_224", 5.7e6), ("deit_small_224", 22.1e6)])
def test_deit_parameter_counts_match_paper(name, paper):
    model = create_model(name)
    n = n_params(model)
    del model
    assert abs(n - paper) <= 0.01 * paper, (name, n)


def test_from_timm_keeps_timms_distilled_training_flag():
    timm = pytest.importorskip("timm")
    from minivit.convert import from_timm
    cfg = dict(img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2, num_classes=3)
    tm = timm.models.deit.VisionTransformerDistilled(**cfg)          # timm's default: flag off
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 8, 8), dtype=np.float32))
    assert not isinstance(from_timm(tm).train()(x), tuple)
    tm.set_distilled_training(True)
    assert isinstance(from_timm(tm).train()(x), tuple)
