"""XCiT: cross-covariance attention (timm parity of values and gradients, finite differences,
linear cost), the Fourier position encoding, the stem, the whole model's timm parity (eval
logits float32/float64, every gradient in float64, BatchNorm in eval and in training mode),
errors, the converter's refusals, the CIFAR variant and the 224 configurations."""
import numpy as np
import pytest

import minivit.models.xcit  # noqa: F401  (registers the models)
import minivit.functional as F
from minivit import nn
from minivit.autograd import Tensor
from minivit.layers.xca import XCA, l2_normalize
from minivit.layers.xcit_blocks import ConvPatchEmbed, fourier_features
from minivit.models.registry import create_model, list_models
from minivit.models.xcit import Xcit
from minivit.optim import param_groups_weight_decay
from minivit.testing import gradcheck, gradcheck_directional
from tests.conftest import torch_or_skip
from tests.test_models_vit import host, n_params, timm_parity


def timm_xcit_module():
    pytest.importorskip("timm")
    import timm.models.xcit as tx
    return tx


# --------------------------------------------------------------------------- XCA
@pytest.mark.parametrize("op", ["l2_normalize", "F.normalize"])
def test_l2_normalize_matches_torch_and_is_finite_at_zero(xp, op):
    """Both the composition (l2_normalize) and the one op (F.normalize, hand-written backward)."""
    torch = torch_or_skip()
    a = np.random.default_rng(0).standard_normal((3, 5))
    a[1] = 0.0                                                       # an all-zero row: x / eps = 0
    x = Tensor(xp.asarray(a), requires_grad=True)
    tx = torch.tensor(a, requires_grad=True)
    fn = l2_normalize if op == "l2_normalize" else F.normalize
    y, ty = fn(x, dim=-1), torch.nn.functional.normalize(tx, dim=-1)
    np.testing.assert_allclose(host(y), ty.detach().numpy(), rtol=1e-14, atol=1e-15)
    g = np.random.default_rng(1).standard_normal(a.shape)
    (y * Tensor(xp.asarray(g))).sum().backward()
    (ty * torch.tensor(g)).sum().backward()
    # finite at 0 (there the divisor is the constant eps, so the gradient is g / eps), as torch's
    assert np.isfinite(host(x.grad)).all()
    np.testing.assert_allclose(host(x.grad), tx.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fused", [False, True], ids=["timm-explicit", "timm-sdpa"])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_xca_matches_timm_values_and_gradients(xp, device, fused, qkv_bias):
    torch = torch_or_skip()
    tx = timm_xcit_module()
    torch.manual_seed(0)
    theirs = tx.XCA(12, num_heads=3, qkv_bias=qkv_bias).double()
    theirs.fused_attn = fused
    with torch.no_grad():
        theirs.temperature.uniform_(0.5, 3.0)                        # a different τ per head
    ours = XCA(12, num_heads=3, qkv_bias=qkv_bias).to(device=device, dtype=np.float64)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    a = np.random.default_rng(0).standard_normal((2, 7, 12))
    tin = torch.tensor(a, requires_grad=True)
    x = Tensor(xp.asarray(a), requires_grad=True)
    ty, y = theirs(tin), ours(x)
    assert y.shape == (2, 7, 12)
    np.testing.assert_allclose(host(y), ty.detach().numpy(), rtol=0, atol=1e-13)
    g = np.random.default_rng(1).standard_normal(ty.shape)
    (ty * torch.tensor(g)).sum().backward()
    (y * Tensor(xp.asarray(g))).sum().backward()
    np.testing.assert_allclose(host(x.grad), tin.grad.numpy(), rtol=1e-10, atol=1e-12)
    ours_p = dict(ours.named_parameters())
    assert set(ours_p) == {n for n, _ in theirs.named_parameters()}
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(host(ours_p[name].grad), p.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_xca_gradcheck_finite_differences(xp, device):
    layer = XCA(6, num_heads=2, qkv_bias=True).to(device=device, dtype=np.float64)
    layer.temperature.data[...] = xp.asarray(np.array([0.7, 2.0]).reshape(2, 1, 1))
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 5, 6))), requires_grad=True)
    assert gradcheck(lambda x: layer(x), x)                          # every element of the input
    assert gradcheck_directional(lambda x, *ps: layer(x), x, *layer.parameters(), n_directions=4)


def test_xca_map_is_d_by_d_and_rows_are_distributions(xp, device):
    layer = XCA(16, num_heads=4).to(device=device, dtype=np.float64)
    layer.store_attn = True
    for n in (3, 50):                                                # the map's size does not grow with N
        layer(Tensor(xp.asarray(np.random.default_rng(n).standard_normal((2, n, 16)))))
        A = host(layer.attn_map)
        assert A.shape == (2, 4, 4, 4)
        np.testing.assert_allclose(A.sum(-1), 1.0, rtol=1e-12)


def test_xca_errors():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        XCA(10, num_heads=4)


# --------------------------------------------------------------------------- position encoding, stem
@pytest.mark.parametrize("hw", [(14, 14), (3, 5), (1, 1)])
def test_fourier_features_match_timm_within_one_float32_ulp(hw):
    torch = torch_or_skip()
    tx = timm_xcit_module()
    pe = tx.PositionalEncodingFourier(hidden_dim=32, dim=64)
    with torch.no_grad():                                            # token_projection := the identity
        pe.token_projection.weight.copy_(torch.eye(64).reshape(64, 64, 1, 1))
        pe.token_projection.bias.zero_()
        theirs = pe(1, *hw)[0].numpy()
    ours = fourier_features(*hw)
    assert ours.shape == theirs.shape == (64, *hw) and ours.dtype == np.float32
    # torch's float32 sin/cos are not correctly rounded: at most 1 ulp (≤ 2⁻²⁴ · 1) apart
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=6e-8)


@pytest.mark.parametrize("patch_size,convs", [(16, 4), (8, 3), (4, 2), (2, 1)])
def test_conv_patch_embed_stem(xp, device, patch_size, convs):
    embed = ConvPatchEmbed(32, patch_size, in_chans=3, embed_dim=64).to(device=device)
    widths = [m[0].out_channels for m in embed.proj if isinstance(m, nn.Sequential)]
    assert widths == [64 // 2 ** (convs - 1 - i) for i in range(convs)]
    tokens, grid = embed(Tensor(xp.zeros((2, 3, 32, 32), dtype=np.float32)))
    assert grid == (32 // patch_size,) * 2 and tokens.shape == (2, (32 // patch_size) ** 2, 64)
    if patch_size in (8, 16):                                        # timm's two stems, key for key
        tx = timm_xcit_module()
        theirs = tx.ConvPatchEmbed(32, patch_size, 3, 64)
        assert {k: v.shape for k, v in embed.state_dict().items()} == \
               {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


def test_conv_patch_embed_errors():
    with pytest.raises(ValueError, match="power of two"):
        ConvPatchEmbed(36, 6, embed_dim=64)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        ConvPatchEmbed(36, 8, embed_dim=64)
    with pytest.raises(ValueError, match="divisible by 8"):
        ConvPatchEmbed(32, 16, embed_dim=36)


# --------------------------------------------------------------------------- the model vs timm
XCIT_CONFIGS = [
    # 4×4 grid, two class-attention layers, four heads of 8 channels
    dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5),
    # the 4-conv stem on a non-square image, no position encoding, one CA layer, tokens_norm, eta
    dict(img_size=(32, 48), patch_size=16, embed_dim=32, depth=1, num_heads=2, num_classes=3, cls_attn_layers=1,
         use_pos_embed=False, tokens_norm=True, eta=0.5, qkv_bias=False),
    # average pooling after three CA layers, one head, MLP ratio 2, one input channel
    dict(img_size=16, patch_size=8, in_chans=1, embed_dim=24, depth=3, num_heads=1, num_classes=4,
         cls_attn_layers=3, global_pool="avg", mlp_ratio=2.0, eta=1e-1),
    # no class-attention layer (the class token is only prepended and normed), drop rates (off in eval)
    dict(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3, cls_attn_layers=0,
         global_pool="avg", drop_path_rate=0.2, proj_drop_rate=0.1),
]
IDS = ["base", "p16-nonsquare-nopos", "avg-3ca-1ch", "no-ca"]


def timm_xcit(cfg):
    """timm's Xcit with random BatchNorm statistics (so eval-mode BN is not the identity) and
    minivit's Fourier features (torch's float32 sin/cos differ from them in the last bit,
    test_fourier_features_match_timm_within_one_float32_ulp; through the float64 model that
    would be a 1e-9 difference, above timm_parity's 1e-10)."""
    torch = torch_or_skip()
    tx = timm_xcit_module()
    torch.manual_seed(0)
    tm = tx.Xcit(**cfg)
    g = torch.Generator().manual_seed(1)
    for m in tm.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    if tm.pos_embed is not None:
        pe = tm.pos_embed

        def forward(B, H, W):
            w = pe.token_projection.weight
            feats = torch.tensor(np.array(fourier_features(H, W, pe.hidden_dim, float(pe.temperature))[None]))
            return pe.token_projection(feats.to(w.dtype)).repeat(B, 1, 1, 1)
        pe.forward = forward
    return tm


def xcit_parity(tm, x_np, xp, device, train=False):
    """``timm_parity`` (tests/test_models_vit.py: eval logits 1e-5 float32 / 1e-10 float64, then
    every float64 gradient within 1e-8 of the largest of its tensor), but the class-attention
    key biases are held to a different scale. Their gradient is exactly zero: a bias on every
    key adds the same q·b to all of the class token's scores, which softmax ignores. What
    both sides compute is rounding noise (1e-18), so each must be below 1e-12 of the model's
    largest parameter gradient instead."""
    zero = tuple(n for n, _ in tm.named_parameters() if n.startswith("cls_attn_blocks.") and n.endswith("attn.k.bias"))
    return timm_parity(tm, x_np, xp, device, train=train, zero_grads=zero)


def _image(cfg, size=None):
    img = cfg["img_size"] if isinstance(cfg["img_size"], tuple) else (cfg["img_size"],) * 2
    return np.random.default_rng(0).standard_normal((2, cfg.get("in_chans", 3), *(size or img)))


@pytest.mark.parametrize("cfg", XCIT_CONFIGS, ids=IDS)
def test_xcit_matches_timm(xp, device, cfg):
    xcit_parity(timm_xcit(cfg), _image(cfg), xp, device)


def test_xcit_matches_timm_at_another_resolution(xp, device):
    # built for 16×16, fed 24×40: the position encoding is computed for the 3×5 grid at hand
    xcit_parity(timm_xcit(XCIT_CONFIGS[0] | dict(img_size=16)), _image(XCIT_CONFIGS[0], (24, 40)), xp, device)


def test_xcit_training_mode_gradients_match_timm(xp, device):
    # BatchNorm with batch statistics in the stem and in every LPI
    xcit_parity(timm_xcit(XCIT_CONFIGS[0]), _image(XCIT_CONFIGS[0]), xp, device, train=True)


def test_xcit_float32_matches_unmodified_timm(xp, device):
    """timm's own Fourier features (no shim): float32 logits agree within 1e-5."""
    torch = torch_or_skip()
    tx = timm_xcit_module()
    from minivit.convert import from_timm
    torch.manual_seed(0)
    tm = tx.Xcit(**XCIT_CONFIGS[0]).eval()
    x = _image(XCIT_CONFIGS[0]).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.tensor(x)).numpy()
    y = from_timm(tm).to(device=device)(Tensor(xp.asarray(x)))
    np.testing.assert_allclose(host(y), ref, rtol=0, atol=1e-5 * max(1.0, np.abs(ref).max()))


# --------------------------------------------------------------------------- converter
def test_converter_refuses_what_minivit_lacks():
    torch = torch_or_skip()
    tx = timm_xcit_module()
    from minivit.convert import from_timm
    base = dict(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3)
    with pytest.raises(ValueError, match="act_layer=ReLU"):
        from_timm(tx.Xcit(**base, act_layer=torch.nn.ReLU))
    from functools import partial
    with pytest.raises(ValueError, match="norm_layer=LayerNorm"):
        from_timm(tx.Xcit(**base, norm_layer=partial(torch.nn.LayerNorm, elementwise_affine=False)))
    pruned = tx.Xcit(**base)
    pruned.prune_intermediate_layers(1)
    with pytest.raises(ValueError, match="pruned"):
        from_timm(pruned)


# --------------------------------------------------------------------------- our own checks
def small_xcit(**kw):
    cfg = dict(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3, cls_attn_layers=1,
               mlp_ratio=2)
    return Xcit(**dict(cfg, **kw))


def test_xcit_gradcheck_directional(xp, device):
    model = small_xcit(depth=2).to(device=device, dtype=np.float64).eval()
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 16, 16))), requires_grad=True)
    assert gradcheck_directional(lambda x, *ps: model(x), x, *model.parameters(), n_directions=3)


def test_xcit_dropout_and_drop_path_on_in_train_off_in_eval(xp, device):
    kw = dict(drop_rate=0.5, pos_drop_rate=0.3, proj_drop_rate=0.3, attn_drop_rate=0.3, drop_path_rate=0.5)
    model = small_xcit(depth=2, **kw).to(device=device)
    plain = small_xcit(depth=2).to(device=device)
    plain.load_state_dict(model.state_dict())
    # the same rate in every XCiT layer (the authors' choice), none in the class-attention layers
    assert [b.drop_path1.drop_prob for b in model.blocks] == [0.5, 0.5]
    assert not hasattr(model.cls_attn_blocks[0].drop_path1, "drop_prob")
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((4, 3, 16, 16), dtype=np.float32)))
    model.eval()
    plain.eval()
    np.testing.assert_allclose(host(model(x)), host(plain(x)), rtol=1e-5, atol=1e-6)
    model.train()
    assert not np.allclose(host(model(x)), host(model(x)))


def test_xcit_no_weight_decay_groups():
    model = small_xcit()
    no_decay, decay = param_groups_weight_decay(model, 0.05)
    ids = {id(p) for p in no_decay["params"]}
    named = dict(model.named_parameters())
    for name in ("cls_token", "pos_embed.token_projection.weight", "blocks.0.attn.temperature", "blocks.0.gamma1"):
        assert id(named[name]) in ids, name
    assert id(named["blocks.0.attn.qkv.weight"]) not in ids


def test_xcit_wrong_input_errors():
    model = small_xcit()
    with pytest.raises(ValueError, match="input channels"):
        model(Tensor(np.zeros((1, 1, 16, 16), dtype=np.float32)))
    with pytest.raises(ValueError, match="divisible by 8; resize or crop"):
        model(Tensor(np.zeros((1, 3, 20, 16), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(Tensor(np.zeros((3, 16, 16), dtype=np.float32)))
    with pytest.raises(ValueError, match="global_pool"):
        small_xcit(global_pool="max")
    with pytest.raises(ValueError, match="divisible by num_heads"):
        small_xcit(num_heads=3)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        small_xcit(img_size=20)


# --------------------------------------------------------------------------- configurations
def test_xcit_tiny_is_a_cifar_model(xp, device):
    model = create_model("xcit_tiny").to(device=device)
    assert n_params(model) == 2_903_674 and 1e6 <= n_params(model) <= 6e6
    assert model.patch_embed.grid_size == (8, 8) and len(model.patch_embed.proj) == 3   # conv, GELU, conv
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)))
    tokens, grid = model.patch_embed(x)
    assert grid == (8, 8) and tokens.shape == (2, 64, 128)
    y = model(x)
    assert y.shape == (2, 10)
    y.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(xp.isfinite(p.grad).all()), name


def test_registry_has_xcit_models():
    assert {"xcit_tiny", "xcit_nano_12_p16_224", "xcit_tiny_12_p16_224", "xcit_small_12_p16_224"} <= set(list_models())


@pytest.mark.parametrize("name", ["xcit_nano_12_p16_224", "xcit_tiny_12_p16_224", "xcit_small_12_p16_224"])
def test_xcit_224_configs_equal_timm(name):
    timm = pytest.importorskip("timm")
    ours = create_model(name)
    theirs = timm.create_model(name)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
           {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert n_params(ours) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_normalize_op_gradcheck_and_equals_the_composition(xp, dim):
    """F.normalize's hand-written backward: finite differences in float64, a row with its norm
    below eps (the clamp's branch: g / eps) included; and equal to l2_normalize's, derived by the engine."""
    from minivit.testing import gradcheck
    a = np.random.default_rng(3).standard_normal((3, 4, 5))
    a[1, 2] = 1e-14                                                  # below eps = 1e-12 along dim -1
    x = Tensor(xp.asarray(a), requires_grad=True)
    w = Tensor(xp.asarray(np.random.default_rng(4).standard_normal(a.shape)))
    gradcheck(lambda t: F.normalize(t, dim=dim) * w,
              Tensor(xp.asarray(np.random.default_rng(5).standard_normal(a.shape)), requires_grad=True))
    grads = []
    for fn in (F.normalize, l2_normalize):
        x.grad = None
        (fn(x, dim=dim) * w).sum().backward()
        grads.append(host(x.grad))
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="only p=2"):
        F.normalize(x, p=1)
