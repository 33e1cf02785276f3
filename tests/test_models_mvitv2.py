"""MViT v2: the pooling attention (timm parity of values and float64 gradients, finite
differences, shapes), the whole model's timm parity (eval logits float32/float64, every
gradient in float64), the CIFAR variant, errors, the converter's refusals, and the 224
configuration against timm's ``mvitv2_tiny``."""
from functools import partial

import numpy as np
import pytest

import minivit.models.mvitv2  # noqa: F401  (registers the models)
from minivit import nn
from minivit.autograd import Tensor
from minivit.layers.pooling_attention import MultiScaleAttention, rel_pos_index
from minivit.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg
from minivit.models.registry import create_model, list_models
from minivit.testing import gradcheck
from tests.conftest import torch_or_skip
from tests.test_models_vit import host, n_params, timm_parity


def assert_grads_match(named):
    """(name, torch grad, minivit grad) triples agree within 1e-8 relative to the largest gradient
    of that tensor, except ``norm_k.bias``: its exact gradient is 0 (a shift b of every key adds
    q·b to a whole row of logits, which the softmax ignores), so both sides hold rounding noise;
    it is held to 1e-8 of the largest gradient of all the tensors instead."""
    scale = max(float(np.abs(gt.numpy()).max()) for _, gt, _ in named)
    for name, gt, ga in named:
        gt = gt.numpy()
        floor = scale if name.endswith("norm_k.bias") else np.abs(gt).max()
        np.testing.assert_allclose(host(ga), gt, rtol=1e-8, atol=1e-8 * floor + 1e-300, err_msg=name)


def mvit_parity(tm, x_np, xp, device):
    """``timm_parity`` (test_models_vit) for MViT: shifting every key by the same vector does not
    change the softmax, so norm_k.bias has a zero gradient in exact arithmetic."""
    timm_parity(tm, x_np, xp, device, zero_grads=("norm_k.bias",))


# --------------------------------------------------------------------------- the pooling attention vs timm
ATTN_CASES = [  # (stride_q, stride_kv, dim, dim_out, heads)
    ((1, 1), (1, 1), 8, 8, 2),      # 3×3 pooling of stride 1: the grid stays, the convs still mix neighbours
    ((1, 1), (2, 2), 8, 8, 2),      # stage 1's blocks: keys/values pooled, queries not
    ((2, 2), (4, 4), 8, 16, 2),     # a stage's first block: queries pooled, width grows (expand_attn)
    ((2, 2), (1, 1), 6, 12, 3),     # queries coarser than keys: the rel-pos positions are rescaled
]


def _pair(torch, case, cls, mode="conv", device="cpu", rel_pos_type="spatial"):
    from timm.models.mvitv2 import MultiScaleAttention as TimmAttention
    sq, skv, dim, dim_out, heads = case
    kw = dict(dim=dim, dim_out=dim_out, feat_size=(8, 8), num_heads=heads, kernel_q=(3, 3), kernel_kv=(3, 3),
              stride_q=sq, stride_kv=skv, has_cls_token=cls, mode=mode, rel_pos_type=rel_pos_type)
    torch.manual_seed(0)
    theirs = TimmAttention(**kw, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).double()
    for p in theirs.parameters():               # LayerNorms away from (1, 0), so their gradients matter
        p.data += 0.1 * torch.randn_like(p)
    ours = MultiScaleAttention(**kw, norm_layer=partial(nn.LayerNorm, eps=1e-6)).to(device=device,
                                                                                     dtype=np.float64)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    return theirs, ours


@pytest.mark.parametrize("cls", [False, True], ids=["no-cls", "cls"])
@pytest.mark.parametrize("case", ATTN_CASES, ids=["s1-kv1", "s1-kv2", "s2-kv4-widen", "s2-kv1"])
def test_pooling_attention_matches_timm(xp, device, case, cls):
    torch = torch_or_skip()
    pytest.importorskip("timm")
    theirs, ours = _pair(torch, case, cls, device=device)
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((2, 64 + cls, case[2]))
    tx = torch.tensor(x_np, requires_grad=True)
    x = Tensor(xp.asarray(x_np), requires_grad=True)
    ty, tsize = theirs(tx, [8, 8])
    y, size = ours(x, (8, 8))
    assert tuple(size) == tuple(tsize) and y.shape == tuple(ty.shape)
    np.testing.assert_allclose(host(y), ty.detach().numpy(), rtol=0, atol=1e-12)
    g = rng.standard_normal(tuple(ty.shape))
    (ty * torch.tensor(g)).sum().backward()
    (y * Tensor(xp.asarray(g))).sum().backward()
    ours_p = dict(ours.named_parameters())
    assert set(ours_p) == {n for n, _ in theirs.named_parameters()}
    assert_grads_match([("input", tx.grad, x.grad)] + [(n, p.grad, ours_p[n].grad)
                                                       for n, p in theirs.named_parameters()])


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pooling_attention_window_modes_match_timm(mode):
    torch = torch_or_skip()
    pytest.importorskip("timm")
    theirs, ours = _pair(torch, ATTN_CASES[2], True, mode=mode)
    assert ours.norm_q is None and ours.pool_q is not None          # no weights, no LayerNorm
    x = np.random.default_rng(0).standard_normal((2, 65, 8))
    with torch.no_grad():
        ref = theirs(torch.tensor(x), [8, 8])[0].numpy()
    np.testing.assert_allclose(ours(Tensor(x), (8, 8))[0].data, ref, rtol=0, atol=1e-12)


def test_pooling_attention_without_rel_pos_matches_timm():
    torch = torch_or_skip()
    pytest.importorskip("timm")
    theirs, ours = _pair(torch, ATTN_CASES[1], False, rel_pos_type="none")
    assert ours.rel_pos_h is None
    x = np.random.default_rng(0).standard_normal((2, 64, 8))
    with torch.no_grad():
        ref = theirs(torch.tensor(x), [8, 8])[0].numpy()
    np.testing.assert_allclose(ours(Tensor(x), (8, 8))[0].data, ref, rtol=0, atol=1e-12)


def test_rel_pos_index_rescales_the_coarser_grid():
    # equal sizes: offset i − j shifted by n − 1, the table's 2n − 1 rows all used
    np.testing.assert_array_equal(rel_pos_index(3, 3), [[2, 1, 0], [3, 2, 1], [4, 3, 2]])
    # 4 queries, 2 keys: key j sits at 2j on the query scale
    np.testing.assert_array_equal(rel_pos_index(4, 2), [[2, 0], [3, 1], [4, 2], [5, 3]])


# --------------------------------------------------------------------------- finite differences
@pytest.mark.parametrize("cls", [False, True], ids=["no-cls", "cls"])
def test_pooling_attention_gradcheck(cls):
    layer = MultiScaleAttention(4, 4, (4, 4), num_heads=2, kernel_q=(3, 3), kernel_kv=(3, 3), stride_q=(2, 2),
                                stride_kv=(2, 2), has_cls_token=cls).to(dtype=np.float64)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 16 + cls, 4)), requires_grad=True)
    params = list(layer.parameters())
    assert any(p is layer.rel_pos_h for p in params)
    assert gradcheck(lambda x, *ps: layer(x, (4, 4))[0], x, *params, atol=1e-7, rtol=1e-5)


def test_pooling_attention_fused_equals_written_out():
    layer = MultiScaleAttention(8, 8, (8, 8), num_heads=2, kernel_q=(3, 3), kernel_kv=(3, 3), stride_kv=(2, 2),
                                has_cls_token=True).to(dtype=np.float64)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 65, 8)))
    fused = layer(x, (8, 8))[0].data
    layer.store_attn = True
    plain = layer(x, (8, 8))[0].data
    np.testing.assert_allclose(fused, plain, rtol=1e-12, atol=1e-12)
    assert layer.attn_map.shape == (2, 2, 65, 17)                  # 1 + 8·8 queries, 1 + 4·4 keys
    np.testing.assert_allclose(layer.attn_map.data.sum(-1), 1.0, rtol=1e-12)


# --------------------------------------------------------------------------- the model vs timm
MVIT_CONFIGS = [
    # two stages on 32×32: 8×8 → 4×4 tokens, widths 8 → 16, heads 1 → 2
    (dict(depths=(1, 2), embed_dim=8, num_heads=1, stride_q=((1, 1), (2, 2))), 32),
    # class token (token pooling), 2 heads from the start
    (dict(depths=(1, 1), embed_dim=8, num_heads=2, use_cls_token=True, stride_q=((1, 1), (2, 2))), 32),
    # 64×64, three stages 16² → 8² → 4², class token with mean pooling chosen explicitly
    (dict(depths=(1, 1, 1), embed_dim=4, num_heads=1, use_cls_token=True,
          stride_q=((1, 1), (2, 2), (2, 2))), 64),
    # MViT v1's layout: expand_attn=False (the MLP widens), absolute position embedding
    (dict(depths=(2, 1), embed_dim=8, num_heads=1, expand_attn=False, use_abs_pos=True,
          stride_q=((1, 1), (2, 2))), 32),
    # max pooling instead of the convs (no norm_q/k/v), explicit key/value strides
    (dict(depths=(1, 2), embed_dim=8, num_heads=2, mode="max", stride_q=((1, 1), (2, 2)),
          stride_kv=((2, 2), (1, 1))), 32),
]


def timm_mvit(cfg, img, **kw):
    timm = pytest.importorskip("timm")
    import torch
    from timm.models.mvitv2 import MultiScaleVitCfg as TimmCfg
    torch.manual_seed(0)
    tm = timm.models.mvitv2.MultiScaleVit(TimmCfg(**cfg), img_size=img, num_classes=5, **kw)
    with torch.no_grad():                       # LayerNorms away from (1, 0), so their gradients matter
        for name, p in tm.named_parameters():
            if "norm" in name:
                p += 0.1 * torch.randn_like(p)
    return tm


@pytest.mark.parametrize("cfg,img", MVIT_CONFIGS, ids=["2-stage", "cls-token", "3-stage-64", "v1-abs-pos", "max-pool"])
def test_mvitv2_matches_timm(xp, device, cfg, img):
    torch_or_skip()
    tm = timm_mvit(cfg, img, global_pool="avg" if img == 64 else None)
    mvit_parity(tm, np.random.default_rng(0).standard_normal((2, 3, img, img)), xp, device)


def test_converter_reads_timm_configuration():
    torch_or_skip()
    from minivit.convert.mvitv2 import build_from_timm
    tm = timm_mvit(dict(depths=(1, 2), embed_dim=8, num_heads=1, stride_q=((1, 1), (2, 2))), 32,
                   drop_rate=0.2, drop_path_rate=0.3)
    ours = build_from_timm(tm)
    assert ours.img_size == (32, 32) and ours.cfg.stride_kv == ((4, 4), (2, 2))
    assert ours.head.drop.p == 0.2 and ours.stages[1].blocks[1].drop_path1.drop_prob == pytest.approx(0.3)


def test_converter_refuses_unsupported_options():
    torch_or_skip()
    from minivit.convert import from_timm
    base = dict(depths=(1, 1), embed_dim=8, num_heads=1, stride_q=((1, 1), (2, 2)))
    with pytest.raises(ValueError, match="pool_first"):
        from_timm(timm_mvit(dict(base, pool_first=True), 32))
    with pytest.raises(ValueError, match="conv_unshared"):
        from_timm(timm_mvit(dict(base, mode="conv_unshared"), 32))


# --------------------------------------------------------------------------- our own checks
def small_mvit(**kw):
    cfg = MultiScaleVitCfg(depths=(1, 1), embed_dim=8, num_heads=1, stride_q=((1, 1), (2, 2)))
    return MultiScaleVit(cfg, img_size=32, num_classes=3, **kw)


def test_mvitv2_wrong_input_errors():
    model = small_mvit()
    with pytest.raises(ValueError, match="input channels"):
        model(Tensor(np.zeros((1, 1, 32, 32), dtype=np.float32)))
    with pytest.raises(ValueError, match="img_size"):
        model(Tensor(np.zeros((1, 3, 64, 64), dtype=np.float32)))


def test_mvitv2_configuration_errors():
    cfg = dict(depths=(1, 1), embed_dim=8, num_heads=1, stride_q=((1, 1), (2, 2)))
    with pytest.raises(ValueError, match="does not divide"):          # 36/4 = 9 queries cannot halve
        MultiScaleVit(MultiScaleVitCfg(**cfg), img_size=36)
    with pytest.raises(ValueError, match="square"):
        MultiScaleVit(MultiScaleVitCfg(**cfg), img_size=(32, 64))
    with pytest.raises(ValueError, match="pool_first"):
        MultiScaleVit(MultiScaleVitCfg(**cfg, pool_first=True), img_size=32)
    with pytest.raises(ValueError, match="conv_unshared"):
        MultiScaleVit(MultiScaleVitCfg(**cfg, mode="conv_unshared"), img_size=32)
    with pytest.raises(ValueError, match="one per stage"):
        MultiScaleVitCfg(depths=(1, 1, 1), stride_q=((1, 1), (2, 2)))
    with pytest.raises(ValueError, match="token"):
        MultiScaleVit(MultiScaleVitCfg(**cfg), img_size=32, global_pool="token")
    with pytest.raises(ValueError, match=r"\(B, 0 \+ 8·8, 8\)"):
        MultiScaleAttention(8, 8, (8, 8), num_heads=2, has_cls_token=False)(
            Tensor(np.zeros((1, 65, 8), dtype=np.float32)), (8, 8))


def test_mvitv2_drop_path_on_in_train_off_in_eval(xp, device):
    model = small_mvit(drop_path_rate=0.5, drop_rate=0.5).to(device=device)
    plain = small_mvit().to(device=device)
    plain.load_state_dict(model.state_dict())
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)))
    np.testing.assert_allclose(host(model.eval()(x)), host(plain.eval()(x)), rtol=1e-6, atol=1e-6)
    model.train()
    assert not np.allclose(host(model(x)), host(model(x)))


def test_mvitv2_tiny_is_a_cifar_pyramid(xp, device):
    model = create_model("mvitv2_tiny").to(device=device)
    assert 1e6 <= n_params(model) <= 6e6
    assert model.grid_sizes == [(16, 16), (8, 8), (4, 4)]
    assert model.cfg.stride_kv == ((2, 2), (1, 1), (1, 1))
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)))
    y = model(x)
    assert y.shape == (2, 10)
    y.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(xp.isfinite(p.grad).all()), name


def test_registry_has_mvitv2_models():
    assert {"mvitv2_tiny", "mvitv2_t_224"} <= set(list_models())


def test_mvitv2_t_224_equals_timm_mvitv2_tiny():
    timm = pytest.importorskip("timm")
    ours = create_model("mvitv2_t_224")
    theirs = timm.create_model("mvitv2_tiny")
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
           {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert n_params(ours) == sum(p.numel() for p in theirs.parameters()) == 24_173_320
    assert abs(n_params(ours) / 24e6 - 1) <= 0.01                  # the paper's 24M (Table 1)
