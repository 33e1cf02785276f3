"""ViT: timm parity (eval logits in float32/float64, every parameter's gradient in float64),
finite-difference gradients, train/eval behaviour, errors, position embeddings, the patch
embedding's two views, the registry's configurations and their parameter counts."""
import numpy as np
import pytest

import minivit.models.vit  # noqa: F401  (registers the models)
from minivit import backend, nn
from minivit.autograd import Tensor
from minivit.layers.patch_embed import PatchEmbed
from minivit.layers.pos_embed import resample_pos_embed, sincos_2d
from minivit.models.registry import create_model, list_models
from minivit.models.vit import VisionTransformer
from minivit.optim import param_groups_weight_decay
from minivit.testing import gradcheck_directional
from tests.conftest import torch_or_skip


def host(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- timm parity helpers
def timm_parity(tm, x_np, xp, device, train=False, zero_grads=()):
    """Convert timm model ``tm`` with ``from_timm`` and compare with it:

    - eval-mode logits in float32 (1e-5) and float64 (1e-10);
    - in float64, the gradient of every parameter and of the input for the loss
      Σ logits ⊙ R (R a fixed random matrix; one per output when the model returns two),
      within 1e-8 relative to the largest gradient of that tensor.

    ``train=True`` takes the gradients in training mode (the rates must be 0 so both
    models compute the same function: used for DeiT's two-output training forward).
    ``zero_grads``: parameter-name suffixes whose gradient is zero in exact arithmetic (both
    sides then hold rounding noise only): they must be below 1e-12 of the largest gradient of
    any parameter, on both sides, instead of matching each other.
    Returns the largest absolute logit differences (float32, float64).
    """
    torch = torch_or_skip()
    from minivit.convert import from_timm

    diffs = []
    for dt, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        tm = tm.to(dt).eval()
        ours = from_timm(tm).to(device=device)
        assert not ours.training
        x = x_np.astype(np.float32 if dt == torch.float32 else np.float64)
        with torch.no_grad():
            ref = tm(torch.tensor(x)).numpy()
        y = ours(Tensor(xp.asarray(x)))
        assert y.dtype == x.dtype and y.shape == ref.shape
        np.testing.assert_allclose(host(y), ref, rtol=0, atol=tol * max(1.0, np.abs(ref).max()))
        diffs.append(float(np.abs(host(y) - ref).max()))

    # float64 gradients of every parameter (tm and ours are float64 now)
    if train:
        tm.train()
        ours.train()
    tx = torch.tensor(x_np, dtype=torch.float64, requires_grad=True)
    x = Tensor(xp.asarray(x_np.astype(np.float64)), requires_grad=True)
    touts, outs = tm(tx), ours(x)
    touts = touts if isinstance(touts, tuple) else (touts,)
    outs = outs if isinstance(outs, tuple) else (outs,)
    assert len(outs) == len(touts)
    rng = np.random.default_rng(1)
    tloss, loss = 0, 0
    for to, o in zip(touts, outs):
        r = rng.standard_normal(tuple(to.shape))
        ref = to.detach().numpy()
        np.testing.assert_allclose(host(o), ref, rtol=0, atol=1e-10 * max(1.0, np.abs(ref).max()))
        tloss = tloss + (to * torch.tensor(r)).sum()
        loss = loss + (o * Tensor(xp.asarray(r))).sum()
    tloss.backward()
    loss.backward()
    ours_p = dict(ours.named_parameters())
    theirs_p = dict(tm.named_parameters())
    assert set(ours_p) == set(theirs_p)
    scale = max(float(np.abs(p.grad.numpy()).max()) for p in theirs_p.values())
    for name, tp in [("input", tx)] + list(theirs_p.items()):
        g = host(x.grad if name == "input" else ours_p[name].grad)
        gt = tp.grad.numpy()
        if name.endswith(tuple(zero_grads)) and zero_grads:
            assert np.abs(g).max() <= 1e-12 * scale and np.abs(gt).max() <= 1e-12 * scale, name
            continue
        np.testing.assert_allclose(g, gt, rtol=1e-8, atol=1e-8 * np.abs(gt).max() + 1e-300, err_msg=name)
    return diffs


VIT_CONFIGS = [
    # class token, learned position embedding, 4×4 grid
    dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=7),
    # mean pooling (→ fc_norm), LayerScale, no qkv bias, non-square image and patches, 1 channel
    dict(img_size=(24, 32), patch_size=(4, 8), in_chans=1, embed_dim=24, depth=2, num_heads=3, num_classes=5,
         global_pool="avg", init_values=0.1, qkv_bias=False, mlp_ratio=2.0),
    # no class token at all
    dict(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=4, num_classes=3, class_token=False,
         global_pool="avg", mlp_ratio=3.0),
    # no position embedding, 3 blocks with drop-path rates (off in eval; read by the converter)
    dict(img_size=16, patch_size=8, embed_dim=16, depth=3, num_heads=2, num_classes=4, pos_embed="none",
         drop_path_rate=0.2),
    # attention pooling ('map', Scaling ViT §3.2) without a class token, as timm's SigLIP heads
    dict(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=5, class_token=False,
         global_pool="map", mlp_ratio=2.0),
    # 'map' with a class token in the blocks (the pool skips it), 4 heads, MLP ratio 3
    dict(img_size=(16, 24), patch_size=8, embed_dim=24, depth=1, num_heads=4, num_classes=3,
         global_pool="map", mlp_ratio=3.0),
]


@pytest.mark.parametrize("cfg", VIT_CONFIGS, ids=["token", "avg-layerscale-nonsquare", "no-cls-token", "no-pos-embed",
                                                  "map", "map-with-cls-token"])
def test_vit_matches_timm(xp, device, cfg):
    timm = pytest.importorskip("timm")
    import torch
    torch.manual_seed(0)
    tm = timm.models.vision_transformer.VisionTransformer(**cfg)
    size = tm.patch_embed.img_size
    x = np.random.default_rng(0).standard_normal((2, cfg.get("in_chans", 3), *size))
    timm_parity(tm, x, xp, device)


def test_vit_dynamic_img_size_matches_timm(xp, device, monkeypatch):
    """A model built for 32×32 run on 48×40: the learned position embedding is resized.
    timm resizes bicubic with antialiasing, minivit's resample_pos_embed bilinearly; with timm
    told to resize bilinearly too, the two must agree everywhere else (grid order, prefix)."""
    timm = pytest.importorskip("timm")
    import functools
    import torch
    vt = timm.models.vision_transformer
    monkeypatch.setattr(vt, "resample_abs_pos_embed",
                        functools.partial(vt.resample_abs_pos_embed, interpolation="bilinear", antialias=False))
    torch.manual_seed(0)
    tm = vt.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=4,
                              dynamic_img_size=True)
    timm_parity(tm, np.random.default_rng(0).standard_normal((2, 3, 48, 40)), xp, device)


# --------------------------------------------------------------------------- gradients, modes, dtypes
def small_vit(**kw):
    cfg = dict(img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2, num_classes=3, mlp_ratio=2.0)
    return VisionTransformer(**dict(cfg, **kw))


@pytest.mark.parametrize("kw", [dict(), dict(global_pool="avg", init_values=0.5), dict(pos_embed="sincos"),
                                dict(global_pool="map", class_token=False)])
def test_vit_gradcheck_directional(xp, device, kw):
    model = small_vit(**kw).to(device=device, dtype=np.float64)
    # timm's class token starts at N(0, 1e-6²); with a zero position entry (sin-cos) LayerNorm
    # then sees a nearly constant vector, so curved at the 1e-6 scale that finite differences
    # cannot step over it. Give it an ordinary scale.
    if model.cls_token is not None:
        nn.init.normal_(model.cls_token, std=0.02)
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 8, 8))), requires_grad=True)
    params = list(model.parameters())
    assert gradcheck_directional(lambda x, *ps: model(x), x, *params, n_directions=3)


def test_vit_tiny_cifar_forward_backward_finite(xp, device):
    model = create_model("vit_tiny").to(device=device)     # training mode, float32
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)))
    y = model(x)
    assert y.shape == (2, 10) and y.dtype == np.float32
    y.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert bool(xp.isfinite(p.grad).all()), name


def test_vit_dropout_and_drop_path_on_in_train_off_in_eval(xp, device):
    kw = dict(drop_rate=0.5, pos_drop_rate=0.3, proj_drop_rate=0.3, attn_drop_rate=0.3, drop_path_rate=0.5)
    model = small_vit(depth=3, **kw).to(device=device)
    plain = small_vit(depth=3).to(device=device)
    plain.load_state_dict(model.state_dict())
    # drop path grows linearly from 0 to the given rate over the blocks (timm)
    assert [b.drop_path1.drop_prob if isinstance(b.drop_path1, nn.DropPath) else 0.0
            for b in model.blocks] == pytest.approx([0.0, 0.25, 0.5])
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((4, 3, 8, 8), dtype=np.float32)))
    model.eval()
    plain.eval()
    np.testing.assert_array_equal(host(model(x)), host(model(x)))
    np.testing.assert_allclose(host(model(x)), host(plain(x)), rtol=1e-6, atol=1e-6)
    model.train()
    a, b = host(model(x)), host(model(x))
    assert not np.allclose(a, b), "dropout/drop path should make two training forwards differ"
    assert not np.allclose(a, host(plain(x)))


def test_vit_float64_end_to_end(xp, device):
    model = small_vit().to(device=device, dtype=np.float64)
    y = model(Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 8, 8)))))
    assert y.dtype == np.float64
    y.sum().backward()
    assert all(p.grad.dtype == np.float64 for p in model.parameters())


def test_vit_wrong_input_errors():
    model = small_vit()
    with pytest.raises(ValueError, match="input channels"):
        model(Tensor(np.zeros((1, 1, 8, 8), dtype=np.float32)))
    with pytest.raises(ValueError, match="img_size"):
        model(Tensor(np.zeros((1, 3, 12, 12), dtype=np.float32)))
    dynamic = small_vit(dynamic_img_size=True)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        dynamic(Tensor(np.zeros((1, 3, 10, 12), dtype=np.float32)))
    with pytest.raises(ValueError, match="divisible"):
        VisionTransformer(img_size=30, patch_size=4)
    with pytest.raises(ValueError, match="global_pool must be 'token', 'avg' or 'map', got 'max'"):
        small_vit(global_pool="max")
    with pytest.raises(ValueError, match="class token"):
        small_vit(class_token=False)                  # token pooling without a token
    with pytest.raises(ValueError, match="pos_embed"):
        small_vit(pos_embed="rope")


# --------------------------------------------------------------------------- position embeddings
def test_sincos_pos_embed_is_fixed_and_recomputed_for_new_sizes(xp, device):
    model = small_vit(img_size=16, embed_dim=8, pos_embed="sincos").to(device=device)
    assert "pos_embed" not in dict(model.named_parameters())
    assert "pos_embed" not in model.state_dict()                 # a function of the grid, not a weight
    pe = host(model.pos_embed)
    assert pe.shape == (1, 1 + 16, 8)
    np.testing.assert_array_equal(pe[0, 0], 0)                   # the class token has no position
    np.testing.assert_allclose(pe[0, 1:], sincos_2d(4, 4, 8), rtol=1e-6)
    # two positions never share an embedding
    assert len({tuple(np.round(r, 5)) for r in pe[0, 1:]}) == 16
    # dynamic size: the embedding of the larger grid is recomputed, not resized
    dyn = small_vit(img_size=16, embed_dim=8, pos_embed="sincos", dynamic_img_size=True).to(device=device)
    dyn.load_state_dict(model.state_dict())
    dyn.eval()
    y = dyn(Tensor(xp.asarray(np.random.default_rng(0).standard_normal((1, 3, 24, 20), dtype=np.float32))))
    assert y.shape == (1, 3)


def test_resample_pos_embed_keeps_prefix_and_matches_torch_bilinear(xp):
    torch = torch_or_skip()
    rng = np.random.default_rng(0)
    pos = rng.standard_normal((1, 2 + 3 * 4, 6))                # 2 prefix tokens, a 3×4 grid
    out = host(resample_pos_embed(Tensor(xp.asarray(pos)), (5, 7), (3, 4), num_prefix_tokens=2))
    assert out.shape == (1, 2 + 35, 6)
    np.testing.assert_array_equal(out[:, :2], pos[:, :2])
    grid = torch.tensor(pos[:, 2:]).reshape(1, 3, 4, 6).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=(5, 7), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(out[:, 2:], ref.permute(0, 2, 3, 1).reshape(1, 35, 6).numpy(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- patch embedding
def test_patch_embed_conv_view_equals_linear_view(xp, device):
    pe = PatchEmbed(img_size=(8, 12), patch_size=4, in_chans=3, embed_dim=5).to(device=device, dtype=np.float64)
    x_np = np.random.default_rng(0).standard_normal((2, 3, 8, 12))
    x1 = Tensor(xp.asarray(x_np), requires_grad=True)
    x2 = Tensor(xp.asarray(x_np), requires_grad=True)
    conv = pe(x1)
    pe.zero_grad()
    conv.sum().backward()
    g_conv = host(pe.proj.weight.grad)
    lin = pe.forward_linear(x2)
    assert conv.shape == lin.shape == (2, 6, 5)
    np.testing.assert_allclose(host(conv), host(lin), rtol=1e-12, atol=1e-12)
    pe.zero_grad()
    lin.sum().backward()
    np.testing.assert_allclose(host(pe.proj.weight.grad), g_conv, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(x1.grad), host(x2.grad), rtol=1e-12, atol=1e-12)
    # and the token order is row by row: token 1 is the patch at row 0, column 4..7
    w = host(pe.proj.weight).reshape(5, -1)
    patch = x_np[0, :, 0:4, 4:8].reshape(-1)
    np.testing.assert_allclose(host(lin)[0, 1], w @ patch + host(pe.proj.bias), rtol=1e-12)


# --------------------------------------------------------------------------- configurations
def test_registry_has_vit_models():
    assert {"vit_tiny", "vit_base_16_224"} <= set(list_models())
    model = create_model("vit_tiny", num_classes=100)        # overrides reach the constructor
    assert model.head.out_features == 100


def test_vit_tiny_is_a_cifar_model():
    model = create_model("vit_tiny")
    assert 1e6 <= n_params(model) <= 6e6
    assert model.patch_embed.grid_size == (8, 8) and len(model.blocks) == 7 and model.embed_dim == 256
    y = model.eval()(Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)))
    assert y.shape == (2, 10)


def test_vit_base_parameter_count_matches_paper():
    model = create_model("vit_base_16_224")
    n = n_params(model)
    del model
    assert abs(n - 86.6e6) <= 0.01 * 86.6e6, n


def test_vit_init_and_no_weight_decay():
    model = small_vit(embed_dim=64, num_heads=4, depth=2)
    w = host(model.blocks[0].mlp.fc1.weight)
    assert abs(w.std() - 0.02) < 0.003                        # trunc_normal(std .02), cut at ±2
    assert np.all(host(model.blocks[0].attn.qkv.bias) == 0)
    assert np.abs(host(model.cls_token)).max() < 1e-4         # N(0, 1e-6²)
    no_decay, decay = param_groups_weight_decay(model, 0.05)
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert id(model.pos_embed) in no_decay_ids and id(model.cls_token) in no_decay_ids
    assert id(model.head.weight) in {id(p) for p in decay["params"]}


def test_from_timm_refuses_what_minivit_does_not_implement():
    timm = pytest.importorskip("timm")
    from minivit.convert import from_timm
    vt = timm.models.vision_transformer
    small = dict(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3)
    for extra, what in [(dict(reg_tokens=2), "register tokens"), (dict(pre_norm=True), "pre_norm"),
                        (dict(qk_norm=True), "q_norm"), (dict(global_pool="max"), "global_pool"),
                        (dict(global_pool="prr"), "global_pool='prr'")]:
        with pytest.raises(ValueError, match=what):
            from_timm(vt.VisionTransformer(**small, **extra))
    # a 'map' pool changed after construction (two latents) is refused, not silently mis-built
    tm = vt.VisionTransformer(**small, global_pool="map")
    tm.attn_pool = timm.layers.AttentionPoolLatent(16, num_heads=2, latent_len=2, mlp_ratio=4.0,
                                                   norm_layer=torch_or_skip().nn.LayerNorm)
    with pytest.raises(ValueError, match="attention pool other than"):
        from_timm(tm)


def test_vit_map_pool_structure_and_no_weight_decay():
    """'map' builds timm's attn_pool (names and shapes), keeps the final norm before the pool,
    and the latent query is a token: no weight decay."""
    model = small_vit(global_pool="map", class_token=False, embed_dim=8, mlp_ratio=2.0)
    shapes = {k: v.shape for k, v in model.state_dict().items() if k.startswith("attn_pool.")}
    assert shapes == {"attn_pool.latent": (1, 1, 8), "attn_pool.q.weight": (8, 8), "attn_pool.q.bias": (8,),
                      "attn_pool.kv.weight": (16, 8), "attn_pool.kv.bias": (16,),
                      "attn_pool.proj.weight": (8, 8), "attn_pool.proj.bias": (8,),
                      "attn_pool.norm.weight": (8,), "attn_pool.norm.bias": (8,),
                      "attn_pool.mlp.fc1.weight": (16, 8), "attn_pool.mlp.fc1.bias": (16,),
                      "attn_pool.mlp.fc2.weight": (8, 16), "attn_pool.mlp.fc2.bias": (8,)}
    assert isinstance(model.norm, nn.LayerNorm) and isinstance(model.fc_norm, nn.Identity)
    no_decay, decay = param_groups_weight_decay(model, 0.05)
    assert id(model.attn_pool.latent) in {id(p) for p in no_decay["params"]}
    assert id(model.attn_pool.kv.weight) in {id(p) for p in decay["params"]}
    assert small_vit().attn_pool is None
