"""PVT v1 (timm has none): spatial-reduction attention against an independent float64
computation written here with torch ops (strided conv + LayerNorm + attention), SRA with
R = 1 against plain MSA, the whole model against a torch re-implementation (forward and every
gradient, at the built size and at another size with bilinearly resized position embeddings),
parameter counts against the paper, gradcheck, dropout modes and input errors."""
import gc
import math

import numpy as np
import pytest

import minivit
import minivit.models.pvt  # noqa: F401  (registers the models)
from minivit import backend
from minivit.autograd import Tensor
from minivit.layers.attention import Attention
from minivit.layers.sra import SpatialReductionAttention
from minivit.models import create_model, list_models
from minivit.models.pvt import PyramidVisionTransformer
from minivit.testing import gradcheck_directional


def host(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


def perturb(module, seed=0, scale=0.1):
    """Nudge every parameter (LayerNorm's 1s and 0s too) so no gradient is trivially shared."""
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.data[...] += backend.to_device(scale * rng.standard_normal(p.shape), p.device).astype(p.dtype)
    return module


# --------------------------------------------------------------------------- torch reference
def torch_sra(torch, sd, prefix, x, H, W, heads, R):
    """SRA from PVT v1 eq. (3)-(5), written independently with torch ops: Q from all tokens,
    K/V from LN(strided conv(x on its grid)), softmax(QKᵀ/√d)V per head, output projection."""
    Fn = torch.nn.functional
    B, N, C = x.shape
    d = C // heads
    w = lambda name: sd.get(prefix + name)   # noqa: E731  (None for an absent bias)
    q = Fn.linear(x, w("q.weight"), w("q.bias"))
    src = x
    if R > 1:
        grid = x.transpose(1, 2).reshape(B, C, H, W)
        red = Fn.conv2d(grid, w("sr.weight"), w("sr.bias"), stride=R)        # kernel = stride = R
        src = Fn.layer_norm(red.flatten(2).transpose(1, 2), (C,), w("norm.weight"), w("norm.bias"), 1e-5)
    k, v = Fn.linear(src, w("kv.weight"), w("kv.bias")).split(C, dim=-1)
    heads_of = lambda t: t.reshape(B, t.shape[1], heads, d).transpose(1, 2)   # noqa: E731
    q, k, v = heads_of(q), heads_of(k), heads_of(v)
    a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
    o = (a @ v).transpose(1, 2).reshape(B, N, C)
    return Fn.linear(o, w("proj.weight"), w("proj.bias"))


def torch_pvt(torch, sd, x, cfg, feats=None):
    """The whole PVT v1 forward (authors' classification/pvt.py), from a state dict, in torch.
    ``feats``: a list that receives every stage's map (B, C_i, h, w) (the last one without the
    class token, before the final norm), for tests/test_models_features.py."""
    Fn = torch.nn.functional
    S = len(cfg["depths"])
    patch = [cfg["patch_size"]] + [2] * (S - 1)
    grid0 = cfg["img_size"] // cfg["patch_size"]
    ln = lambda t, p, eps: Fn.layer_norm(t, t.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)  # noqa: E731
    B = x.shape[0]
    for i in range(S):
        pe = f"patch_embed{i + 1}"
        x = Fn.conv2d(x, sd[pe + ".proj.weight"], sd[pe + ".proj.bias"], stride=patch[i])
        H, W = x.shape[2:]
        x = ln(x.flatten(2).transpose(1, 2), pe + ".norm", 1e-5)
        pos = sd[f"pos_embed{i + 1}"]
        g = grid0 // 2 ** i
        last = i == S - 1
        grid_pos = pos[:, 1:] if last else pos
        if (H, W) != (g, g):
            C = pos.shape[-1]
            grid_pos = Fn.interpolate(grid_pos.reshape(1, g, g, C).permute(0, 3, 1, 2), size=(H, W),
                                      mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        if last:
            x = torch.cat([sd["cls_token"].expand(B, -1, -1), x], dim=1)
            grid_pos = torch.cat([pos[:, :1], grid_pos], dim=1)
        x = x + grid_pos
        for j in range(cfg["depths"][i]):
            b = f"block{i + 1}.{j}"
            x = x + torch_sra(torch, sd, b + ".attn.", ln(x, b + ".norm1", 1e-6), H, W, cfg["num_heads"][i],
                              cfg["sr_ratios"][i])
            h = Fn.gelu(Fn.linear(ln(x, b + ".norm2", 1e-6), sd[b + ".mlp.fc1.weight"], sd[b + ".mlp.fc1.bias"]))
            x = x + Fn.linear(h, sd[b + ".mlp.fc2.weight"], sd[b + ".mlp.fc2.bias"])
        if not last:
            x = x.transpose(1, 2).reshape(B, -1, H, W)
        if feats is not None:
            feats.append(x if not last else x[:, 1:].transpose(1, 2).reshape(B, -1, H, W))
    x = ln(x, "norm", 1e-6)
    return Fn.linear(x[:, 0], sd["head.weight"], sd["head.bias"])


def torch_params(torch, module):
    return {k: torch.tensor(host(v), requires_grad=True) for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------- the SRA layer
@pytest.mark.parametrize("R,grid,qkv_bias", [(1, (6, 8), True), (2, (6, 8), True), (3, (6, 8), False),
                                             (4, (6, 8), True), (2, (7, 5), False)])
def test_sra_matches_an_independent_torch_computation(xp, device, R, grid, qkv_bias):
    """Forward and every gradient in float64; (6, 8) with R = 3 or 4 and (7, 5) with R = 2 leave
    a remainder that the strided conv drops, as the authors' conv does."""
    torch = pytest.importorskip("torch")
    H, W = grid
    sra = perturb(SpatialReductionAttention(12, num_heads=3, sr_ratio=R, qkv_bias=qkv_bias)).to(
        device=device, dtype=np.float64)
    sd = torch_params(torch, sra)
    x_np = np.random.default_rng(1).standard_normal((2, H * W, 12))
    tx, x = torch.tensor(x_np, requires_grad=True), Tensor(xp.asarray(x_np), requires_grad=True)
    ty = torch_sra(torch, sd, "", tx, H, W, 3, R)
    y = sra(x, (H, W))
    np.testing.assert_allclose(host(y), ty.detach().numpy(), rtol=0, atol=1e-12)
    g = np.random.default_rng(2).standard_normal(ty.shape)
    ty.backward(torch.tensor(g))
    y.backward(xp.asarray(g))
    np.testing.assert_allclose(host(x.grad), tx.grad.numpy(), rtol=0, atol=1e-12)
    ours = dict(sra.named_parameters())
    assert set(ours) == set(sd)
    for name, p in sd.items():
        np.testing.assert_allclose(host(ours[name].grad), p.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("R,grid,keys", [(1, (6, 8), 48), (2, (6, 8), 12), (4, (8, 8), 4), (3, (7, 8), 4)])
def test_sra_reduces_the_keys_to_the_coarser_grid(R, grid, keys):
    sra = SpatialReductionAttention(8, num_heads=2, sr_ratio=R)
    sra.store_attn = True
    H, W = grid
    sra(minivit.randn(2, H * W, 8), (H, W))
    assert sra.attn_map.shape == (2, 2, H * W, keys)          # (B, heads, N, N/R²) queries × keys
    np.testing.assert_allclose(sra.attn_map.data.sum(-1), 1.0, rtol=1e-5)
    names = {k.split(".")[0] for k in sra.state_dict()}
    assert names == ({"q", "kv", "proj", "sr", "norm"} if R > 1 else {"q", "kv", "proj"})


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_sra_with_r1_is_plain_msa(xp, device, qkv_bias):
    """R = 1: no reduction, so SRA is MSA — with the q and kv weights stacked into MSA's qkv."""
    sra = perturb(SpatialReductionAttention(12, num_heads=4, sr_ratio=1, qkv_bias=qkv_bias)).to(
        device=device, dtype=np.float64)
    msa = Attention(12, num_heads=4, qkv_bias=qkv_bias).to(device=device, dtype=np.float64)
    state = {"qkv.weight": xp.concatenate([sra.q.weight.data, sra.kv.weight.data], axis=0),
             "proj.weight": sra.proj.weight.data, "proj.bias": sra.proj.bias.data}
    if qkv_bias:
        state["qkv.bias"] = xp.concatenate([sra.q.bias.data, sra.kv.bias.data])
    msa.load_state_dict(state)
    x_np = np.random.default_rng(0).standard_normal((2, 1 + 5 * 4, 12))   # a class token + a 5×4 grid
    x1, x2 = Tensor(xp.asarray(x_np), requires_grad=True), Tensor(xp.asarray(x_np), requires_grad=True)
    y1, y2 = sra(x1, (5, 4)), msa(x2)
    np.testing.assert_allclose(host(y1), host(y2), rtol=0, atol=1e-13)
    g = xp.asarray(np.random.default_rng(1).standard_normal(y1.shape))
    y1.backward(g)
    y2.backward(g)
    np.testing.assert_allclose(host(x1.grad), host(x2.grad), rtol=0, atol=1e-13)
    np.testing.assert_allclose(host(msa.qkv.weight.grad),
                               np.concatenate([host(sra.q.weight.grad), host(sra.kv.weight.grad)]), atol=1e-13)


# --------------------------------------------------------------------------- the whole model
SMALL = dict(img_size=32, patch_size=2, embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4),
             mlp_ratios=(2, 2, 2, 1), depths=(1, 2, 1, 1), sr_ratios=(4, 2, 1, 1), num_classes=5)


@pytest.mark.parametrize("size", [(32, 32), (48, 64)])
def test_model_matches_a_torch_reimplementation_forward_and_every_gradient(xp, device, size):
    """(32, 32) is the built size; (48, 64) resizes every stage's position embedding bilinearly."""
    torch = pytest.importorskip("torch")
    model = perturb(PyramidVisionTransformer(**SMALL)).to(device=device, dtype=np.float64)
    sd = torch_params(torch, model)
    x_np = np.random.default_rng(1).standard_normal((2, 3, *size))
    tx, x = torch.tensor(x_np, requires_grad=True), Tensor(xp.asarray(x_np), requires_grad=True)
    ty = torch_pvt(torch, sd, tx, SMALL)
    y = model(x)
    assert y.shape == (2, 5) and y.dtype == np.float64
    np.testing.assert_allclose(host(y), ty.detach().numpy(), rtol=0, atol=1e-10)
    M = np.random.default_rng(2).standard_normal(tuple(ty.shape))
    (ty * torch.tensor(M)).sum().backward()
    (y * Tensor(xp.asarray(M))).sum().backward()
    np.testing.assert_allclose(host(x.grad), tx.grad.numpy(), rtol=1e-8, atol=1e-13)
    ours = dict(model.named_parameters())
    assert set(ours) == set(sd)
    for name, p in sd.items():
        g, tg = host(ours[name].grad), p.grad.numpy()
        assert np.abs(g - tg).max() <= 1e-8 * np.abs(tg).max() + 1e-14, name


def test_model_matches_the_torch_reimplementation_in_float32(xp, device):
    torch = pytest.importorskip("torch")
    model = perturb(PyramidVisionTransformer(**SMALL)).to(device=device)
    sd = {k: v.detach() for k, v in torch_params(torch, model).items()}
    x_np = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ty = torch_pvt(torch, sd, torch.tensor(x_np), SMALL).numpy()
    y = model(Tensor(xp.asarray(x_np)))
    assert y.dtype == np.float32
    np.testing.assert_allclose(host(y), ty, rtol=0, atol=1e-5)


def test_position_embeddings_are_resized_bilinearly_for_other_input_sizes(xp, device):
    """A model built for 32×32 run on 64×64 equals a model built for 64×64 whose position
    embeddings are the 32-model's, resized with torch's bilinear interpolate (class token kept)."""
    torch = pytest.importorskip("torch")
    small = perturb(PyramidVisionTransformer(**SMALL)).to(device=device, dtype=np.float64).eval()
    big = PyramidVisionTransformer(**{**SMALL, "img_size": 64}).to(device=device, dtype=np.float64).eval()
    state = {k: host(v) for k, v in small.state_dict().items()}
    for i in range(4):
        key, g = f"pos_embed{i + 1}", 16 // 2 ** i
        pos = torch.tensor(state[key])
        prefix, grid = (pos[:, :1], pos[:, 1:]) if i == 3 else (pos[:, :0], pos)
        grid = torch.nn.functional.interpolate(grid.reshape(1, g, g, -1).permute(0, 3, 1, 2), size=(2 * g, 2 * g),
                                               mode="bilinear", align_corners=False)
        state[key] = torch.cat([prefix, grid.flatten(2).transpose(1, 2)], dim=1).numpy()
    big.load_state_dict(state)
    assert big.pos_embed1.shape == (1, 32 * 32, 8) and big.pos_embed4.shape == (1, 1 + 4 * 4, 32)
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 64, 64))))
    np.testing.assert_allclose(host(small(x)), host(big(x)), rtol=0, atol=1e-12)
    # at the built size the stored embedding is used as it is
    assert small._pos_embed(0, (16, 16)) is small.pos_embed1


def test_resized_position_embeddings_get_gradients(xp, device):
    model = PyramidVisionTransformer(**SMALL).to(device=device)
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 48, 32)), dtype=np.float32))
    model(x).sum().backward()
    for i in range(4):
        g = host(getattr(model, f"pos_embed{i + 1}").grad)
        assert np.isfinite(g).all() and np.abs(g).max() > 0


def test_cifar_variant_forward_size_and_names(xp, device):
    model = create_model("pvt_tiny").to(device=device)
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n <= 6_000_000, n
    sd = model.state_dict()
    # the authors' names, and 16×16 → 8 → 4 → 2 token grids (+ the class token in stage 4)
    assert sd["patch_embed1.proj.weight"].shape == (32, 3, 2, 2)
    assert sd["pos_embed1"].shape == (1, 256, 32) and sd["pos_embed2"].shape == (1, 64, 64)
    assert sd["pos_embed3"].shape == (1, 16, 160) and sd["pos_embed4"].shape == (1, 5, 256)
    assert sd["block1.0.attn.sr.weight"].shape == (32, 32, 4, 4)      # R = 4: 16×16 → 4×4 keys
    assert sd["block2.1.attn.sr.weight"].shape == (64, 64, 2, 2)
    assert "block3.0.attn.sr.weight" not in sd and "block4.0.attn.sr.weight" not in sd
    assert {"cls_token", "norm.weight", "head.weight", "block1.0.attn.kv.weight", "block1.0.mlp.fc1.weight",
            "patch_embed4.norm.weight"} <= set(sd)
    assert model.no_weight_decay() <= set(dict(model.named_parameters()))
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 32, 32)), dtype=np.float32))
    feats = model.forward_features(x)
    assert feats.shape == (2, 5, 256)                         # class token + 2×2 grid
    y = model(x)
    assert y.shape == (2, 10) and y.dtype == np.float32 and np.isfinite(host(y)).all()


def test_forward_backward_gives_every_parameter_a_finite_gradient(xp, device):
    model = create_model("pvt_tiny", depths=(1, 1, 1, 1)).to(device=device).train()
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((4, 3, 32, 32)), dtype=np.float32))
    labels = Tensor(xp.asarray([0, 3, 9, 1]))
    minivit.functional.cross_entropy(model(x), labels).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, n
        assert np.isfinite(host(p.grad)).all(), n
        assert np.abs(host(p.grad)).max() > 0, n


@pytest.mark.parametrize("size", [(16, 16), (32, 16)])
def test_gradcheck_directional_small_model(xp, device, size):
    model = PyramidVisionTransformer(img_size=16, patch_size=2, embed_dims=(4, 8, 8, 8), num_heads=(1, 2, 2, 2),
                                     mlp_ratios=(2, 2, 2, 2), depths=(1, 1, 1, 1), sr_ratios=(2, 2, 1, 1),
                                     num_classes=3).to(device=device, dtype=np.float64).eval()
    perturb(model)
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 3, *size))), requires_grad=True)
    assert gradcheck_directional(lambda x, *ps: model(x), x, *model.parameters(), n_directions=3)


def test_dropout_and_drop_path_off_in_eval_on_in_train(xp, device):
    noisy = PyramidVisionTransformer(**SMALL, drop_rate=0.3, attn_drop_rate=0.3, drop_path_rate=0.5).to(device=device)
    clean = PyramidVisionTransformer(**SMALL).to(device=device)
    clean.load_state_dict(noisy.state_dict())
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((8, 3, 32, 32)), dtype=np.float32))
    noisy.eval()
    clean.eval()
    np.testing.assert_array_equal(host(noisy(x)), host(clean(x)))
    noisy.train()
    a, b = host(noisy(x)), host(noisy(x))
    assert not np.allclose(a, b)
    assert not np.allclose(a, host(clean(x)))


def test_wrong_input_raises_a_clear_error():
    model = create_model("pvt_tiny", depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="not divisible by the total stride 16"):
        model(minivit.randn(1, 3, 40, 32))
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        model(minivit.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="sr_ratios\\[-1\\] = 1"):
        PyramidVisionTransformer(**{**SMALL, "sr_ratios": (4, 2, 2, 2)})
    with pytest.raises(ValueError, match="img_size \\(30, 30\\) must be divisible by the total stride 16"):
        PyramidVisionTransformer(**{**SMALL, "img_size": 30})
    with pytest.raises(ValueError, match="depths has 3 entries"):
        PyramidVisionTransformer(**{**SMALL, "depths": (1, 1, 1)})


# PVT paper, Table 2 (millions, 1000 classes, 224×224).
PAPER_PARAMS = {"pvt_v1_tiny_224": 13.2, "pvt_v1_small_224": 24.5, "pvt_v1_medium_224": 44.2,
                "pvt_v1_large_224": 61.4}


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_imagenet_parameter_counts_match_the_paper(name):
    model = create_model(name)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    del model
    gc.collect()
    assert abs(n - PAPER_PARAMS[name]) <= 0.01 * PAPER_PARAMS[name], (name, n)


def test_registered_names():
    assert {"pvt_tiny", "pvt_v1_tiny_224", "pvt_v1_small_224", "pvt_v1_medium_224",
            "pvt_v1_large_224"} <= set(list_models("pvt*"))
