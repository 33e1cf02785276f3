"""Swin Transformer: parity with timm (forward float32/float64, every parameter's gradient in
float64), parameter counts of the paper's models, the CIFAR variant, size errors, gradients,
dropout/drop-path modes and weight decay groups."""
import gc

import numpy as np
import pytest

import minivit.models.swin  # noqa: F401  (registers the models)
from minivit import backend
from minivit.autograd import Tensor
from minivit.models.registry import create_model, list_models
from minivit.models.swin import SwinTransformer
from minivit.testing import gradcheck_directional
from tests.conftest import torch_or_skip


def host(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


def timm_or_skip():
    torch = torch_or_skip()
    pytest.importorskip("timm")
    from timm.models.swin_transformer import SwinTransformer as TimmSwin
    return torch, TimmSwin


# Small configurations that run in well under a second each.
PARITY = {
    # stage grids 16, 8 > window 4: both stages' second blocks run SW-MSA (roll + mask)
    "shifted": dict(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4,
                    num_classes=10),
    # grids 8 → 4: the last stage's grid equals the window (one window, no shift)
    "last_equals_window": dict(img_size=32, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 2),
                               window_size=4, num_classes=5),
    # 8×16 → 4×8: in stage 1 the shift is along the width only; no qkv bias, mlp_ratio 2
    "rectangular": dict(img_size=(32, 64), patch_size=4, embed_dim=12, depths=(2, 2), num_heads=(3, 3),
                        window_size=4, num_classes=7, qkv_bias=False, mlp_ratio=2.0),
    # three stages with per-stage windows (4, 2, 4) (stage 1 shifts by 1) and head_dim ≠ dim/heads
    "three_stages": dict(img_size=32, patch_size=2, embed_dim=8, depths=(1, 2, 2), num_heads=(1, 2, 4),
                         head_dim=6, window_size=(4, 2, 4), num_classes=3),
}


def timm_model(TimmSwin, torch, cfg):
    """A timm Swin in eval mode with every weight moved off its init (LayerNorm 1/0, tiny
    bias tables), so a wrong index, mask or order cannot hide."""
    torch.manual_seed(0)
    model = TimmSwin(**cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if "relative_position_bias_table" in name else 0.1))
    return model


@pytest.mark.parametrize("name", list(PARITY))
def test_matches_timm_float32(name):
    torch, TimmSwin = timm_or_skip()
    from minivit.convert import from_timm
    theirs = timm_model(TimmSwin, torch, PARITY[name])
    ours = from_timm(theirs)
    H, W = theirs.patch_embed.img_size
    x = np.random.randn(2, 3, H, W).astype(np.float32)
    y = ours(Tensor(x))
    assert y.dtype == np.float32
    with torch.no_grad():
        ty = theirs(torch.tensor(x)).numpy()
    np.testing.assert_allclose(y.numpy(), ty, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(PARITY))
def test_matches_timm_float64_forward_and_every_gradient(name, xp, device):
    torch, TimmSwin = timm_or_skip()
    from minivit.convert import from_timm
    theirs = timm_model(TimmSwin, torch, PARITY[name]).double()
    ours = from_timm(theirs).to(device=device)
    assert next(ours.parameters()).dtype == np.float64
    if name == "shifted":   # the configuration really runs SW-MSA
        assert sum(m.attn_mask is not None for m in ours.modules() if hasattr(m, "shift_size")) == 2
    H, W = theirs.patch_embed.img_size
    x_np = np.random.randn(2, 3, H, W)
    x = Tensor(xp.asarray(x_np), requires_grad=True)
    tx = torch.tensor(x_np, requires_grad=True)
    y, ty = ours(x), theirs(tx)
    np.testing.assert_allclose(host(y), ty.detach().numpy(), rtol=0, atol=1e-10)

    R = np.random.randn(*ty.shape)                      # loss = Σ logits ⊙ R
    (y * Tensor(xp.asarray(R))).sum().backward()
    (ty * torch.tensor(R)).sum().backward()
    np.testing.assert_allclose(host(x.grad), tx.grad.numpy(), rtol=1e-8, atol=1e-8 * np.abs(tx.grad.numpy()).max())
    ours_p = dict(ours.named_parameters())
    theirs_p = dict(theirs.named_parameters())
    assert set(ours_p) == set(theirs_p)
    for pname, p in theirs_p.items():
        g = p.grad.numpy()
        assert np.abs(g).max() > 0, pname
        np.testing.assert_allclose(host(ours_p[pname].grad), g, rtol=1e-8, atol=1e-8 * np.abs(g).max(),
                                   err_msg=pname)


def test_state_dict_and_no_weight_decay_match_timm_swin_t():
    torch, _ = timm_or_skip()
    import timm
    theirs = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    ours = create_model("swin_t_224", weight_init="skip")
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert ours.no_weight_decay() == theirs.no_weight_decay()
    del ours, theirs
    gc.collect()


@pytest.mark.parametrize("name,paper", [("swin_t_224", 28.3e6), ("swin_s_224", 49.6e6), ("swin_b_224", 87.8e6)])
def test_224_parameter_counts_match_the_paper(name, paper):
    model = create_model(name, weight_init="skip")    # the count does not depend on the init; faster
    n = sum(p.numel() for p in model.parameters())
    assert model.num_classes == 1000 and model.img_size == (224, 224)
    assert abs(n - paper) / paper < 0.01, f"{name}: {n} parameters, the paper says {paper / 1e6}M"
    del model
    gc.collect()


def test_cifar_variant(xp, device):
    assert {"swin_tiny", "swin_t_224", "swin_s_224", "swin_b_224"} <= set(list_models("swin*"))
    model = create_model("swin_tiny").to(device=device)
    n = sum(p.numel() for p in model.parameters())
    assert 1e6 <= n <= 6e6, n
    assert model.resolutions == [(16, 16), (8, 8), (4, 4)]
    y = model.eval()(Tensor(xp.asarray(np.random.randn(2, 3, 32, 32).astype(np.float32))))
    assert y.shape == (2, 10) and y.dtype == np.float32 and np.isfinite(host(y)).all()
    feats = model.forward_features(Tensor(xp.asarray(np.random.randn(2, 3, 32, 32).astype(np.float32))))
    assert feats.shape == (2, 4, 4, 256)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 256)


def test_create_model_overrides():
    model = create_model("swin_tiny", num_classes=100, depths=(1, 1, 1))
    assert model.head.fc.out_features == 100 and [len(s.blocks) for s in model.layers] == [1, 1, 1]


def test_init_weights_like_timm():
    model = create_model("swin_tiny")
    qkv = model.layers[1].blocks[0].attn.qkv
    assert abs(qkv.weight.numpy().std() - 0.02) < 0.002 and not qkv.bias.numpy().any()
    table = model.layers[1].blocks[0].attn.relative_position_bias_table.numpy()
    assert abs(table.std() - 0.02) < 0.005
    assert (model.norm.weight.numpy() == 1).all() and not model.norm.bias.numpy().any()


# =========================================================================== errors
@pytest.mark.parametrize("kw,match", [
    # 40 = 2·4·5: stage 1's 10×10 grid is not whole 4×4 windows
    (dict(img_size=40, patch_size=2, window_size=4, depths=(2, 2, 2), num_heads=(1, 1, 1)),
     r"img_size 40×40 does not fit patch_size 2×2, window_size 4×4 and 3 stages: stage 1's 10×10 token "
     r"grid is not a whole number of 4×4 windows.*patch_size × window_size × 2\^\(stages−1\) = 2·4·4 = 32 "),
    # 36 = 4·9: a 9×9 grid cannot be merged
    (dict(img_size=36, patch_size=4, window_size=3, depths=(2, 2), num_heads=(1, 1)),
     r"stage 0's 9×9 token grid is odd, so patch merging cannot halve it"),
    (dict(img_size=30, patch_size=4, window_size=4, depths=(2, 2), num_heads=(1, 1)),
     r"img_size 30×30.*not a whole number of 4×4 patches.*e.g. img_size=32"),
    (dict(img_size=32, depths=(2, 2), num_heads=(1, 1, 1)), r"num_heads has 3 entries for 2 stages"),
])
def test_bad_sizes_raise_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        SwinTransformer(embed_dim=8, num_classes=2, **kw)


def test_wrong_input_raises():
    model = SwinTransformer(img_size=32, patch_size=4, embed_dim=8, depths=(1, 1), num_heads=(1, 1),
                            window_size=4, num_classes=2)
    with pytest.raises(ValueError, match="input is 64×64 but the model was built for img_size=32×32"):
        model(Tensor(np.zeros((1, 3, 64, 64), dtype=np.float32)))
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        model(Tensor(np.zeros((1, 1, 32, 32), dtype=np.float32)))


@pytest.mark.parametrize("kw,match", [(dict(always_partition=True), "always_partition"),
                                      (dict(strict_img_size=False), "dynamic_img_size")])
def test_from_timm_rejects_what_it_cannot_build(kw, match):
    torch, TimmSwin = timm_or_skip()
    from minivit.convert import from_timm
    theirs = TimmSwin(img_size=32, patch_size=4, embed_dim=8, depths=(1, 1), num_heads=(1, 1), window_size=4, **kw)
    with pytest.raises(ValueError, match=match):
        from_timm(theirs)


def test_from_timm_reads_the_regularisation_rates():
    torch, TimmSwin = timm_or_skip()
    from minivit.convert import from_timm
    theirs = TimmSwin(img_size=32, patch_size=4, embed_dim=8, depths=(1, 2), num_heads=(1, 1), window_size=4,
                      drop_rate=0.1, proj_drop_rate=0.2, attn_drop_rate=0.3, drop_path_rate=0.4)
    ours = from_timm(theirs)
    blk = ours.layers[1].blocks[1]
    assert (ours.head.drop.p, blk.attn.proj_drop.p, blk.attn.attn_drop.p, blk.drop_path1.drop_prob) == \
        (0.1, 0.2, 0.3, pytest.approx(0.4))


# =========================================================================== training behaviour
def small(**kw):
    cfg = dict(img_size=16, patch_size=2, embed_dim=8, depths=(2, 2), num_heads=(2, 2), window_size=4,
               num_classes=3)
    return SwinTransformer(**{**cfg, **kw})


def test_every_parameter_gets_a_finite_gradient(xp, device):
    model = small(drop_path_rate=0.2, drop_rate=0.1).to(device=device).train()
    x = Tensor(xp.asarray(np.random.randn(4, 3, 16, 16).astype(np.float32)))
    model(x).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == np.float32, name
        assert np.isfinite(host(p.grad)).all(), name


def test_gradcheck_directional_small_model(xp, device):
    model = small(img_size=(8, 16), embed_dim=4, depths=(2, 1), num_heads=(1, 2), mlp_ratio=1.0,
                  drop_path_rate=0.0).to(device=device, dtype=np.float64).eval()
    assert model.layers[0].blocks[1].shift_size == (0, 2)        # the roll + mask path is exercised
    for p in model.parameters():
        p.data[...] = p.data + 0.1 * xp.asarray(np.random.randn(*p.shape))
    x = Tensor(xp.asarray(np.random.randn(2, 3, 8, 16)), requires_grad=True)
    params = list(model.parameters())
    gradcheck_directional(lambda x, *ps: model(x), x, *params, n_directions=3)


def test_dropout_and_drop_path_off_in_eval_on_in_train(xp, device):
    rates = dict(drop_rate=0.3, proj_drop_rate=0.2, attn_drop_rate=0.2, drop_path_rate=0.5)
    model = small(**rates).to(device=device)
    plain = small().to(device=device)
    plain.load_state_dict(model.state_dict())
    x = Tensor(xp.asarray(np.random.randn(4, 3, 16, 16).astype(np.float32)))
    model.eval()
    y1, y2 = host(model(x)), host(model(x))
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_allclose(y1, host(plain.eval()(x)), rtol=1e-6, atol=1e-6)
    model.train()
    assert np.abs(host(model(x)) - host(model(x))).max() > 1e-4
    # Stochastic depth rises linearly over the blocks; the first (rate 0) has no DropPath at all.
    dp = [getattr(b.drop_path1, "drop_prob", 0.0) for s in model.layers for b in s.blocks]
    np.testing.assert_allclose(dp, np.linspace(0, 0.5, 4))


def test_no_weight_decay_is_the_bias_tables():
    model = small()
    nwd = model.no_weight_decay()
    assert nwd == {f"layers.{i}.blocks.{j}.attn.relative_position_bias_table" for i in range(2) for j in range(2)}
    assert nwd <= set(dict(model.named_parameters()))


def test_fast_paths_equal_the_written_out_steps(xp, device, monkeypatch):
    """The shifted partition as one gather (fused_shift) and the bias gradient as one product
    (fused_bias) against roll + rearrange and indexing: the same logits and gradients (float64)."""
    from minivit.layers.window_attention import WindowAttention
    from minivit.models.swin import SwinTransformerBlock
    x0 = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    results = []
    for fused in (True, False):
        monkeypatch.setattr(SwinTransformerBlock, "fused_shift", fused)
        monkeypatch.setattr(WindowAttention, "fused_bias", fused)
        backend.manual_seed(0)
        model = create_model("swin_tiny", drop_path_rate=0.0).to(device=device).to(dtype=np.float64)
        x = Tensor(xp.asarray(x0), requires_grad=True)
        y = model(x)
        n = int(np.prod(y.shape))
        (y * Tensor(xp.asarray(np.arange(n, dtype=np.float64).reshape(y.shape) / n))).sum().backward()
        results.append([host(y), host(x.grad)] + [host(p.grad) for _, p in sorted(model.named_parameters())])
    np.testing.assert_array_equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1:], results[1][1:]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14 * max(1.0, np.abs(b).max()))
