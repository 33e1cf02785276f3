"""AttentionPoolLatent (the MAP head of "Scaling Vision Transformers"): timm parity of the output
and of every gradient in float64 for its options, finite differences, the pooling's meaning, errors."""
from functools import partial

import numpy as np
import pytest

from minivit import backend, nn
from minivit.autograd import Tensor
from minivit.layers.attention_pool import AttentionPoolLatent
from minivit.testing import gradcheck_directional
from tests.conftest import torch_or_skip


def host(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


POOL_CONFIGS = [
    dict(),                                                           # ViT's 'map': one latent, 'token'
    dict(latent_len=3, pool_type="avg", mlp_ratio=2.0),               # three latents, averaged
    dict(latent_len=2, pool_type="", qk_norm=True, qkv_bias=False),   # all latents; q/k LayerNorm
    dict(pos_embed="abs", feat_size=6, q_proj=False),                 # latent is the query; abs. positions
    dict(out_features=0, latent_dim=4),                               # pre-logits: attention only; narrow latent
    dict(out_features=5, mlp_ratio=1.5, no_norm=True),                # wider output, no MLP norm
]


@pytest.mark.parametrize("cfg", POOL_CONFIGS, ids=["map", "avg-3-latents", "all-latents-qknorm", "abs-pos-no-q",
                                                   "pre-logits", "out5-no-norm"])
def test_attention_pool_matches_timm_float64(xp, device, cfg):
    torch = torch_or_skip()
    timm = pytest.importorskip("timm")
    cfg = dict(cfg)
    no_norm = cfg.pop("no_norm", False)
    torch.manual_seed(0)
    tnorm = None if no_norm else partial(torch.nn.LayerNorm, eps=1e-6)
    tm = timm.layers.AttentionPoolLatent(8, num_heads=2, norm_layer=tnorm, **cfg).double()
    for p in tm.parameters():                    # biases and norms too, so their gradients are tested
        p.data.normal_(0, 0.5)
    ours = AttentionPoolLatent(8, num_heads=2, norm_layer=None if no_norm else partial(nn.LayerNorm, eps=1e-6),
                               **cfg).to(device=device, dtype=np.float64)
    ours.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    assert set(dict(ours.named_parameters())) == set(dict(tm.named_parameters()))

    x_np = np.random.default_rng(0).standard_normal((3, 6, 8))
    tx = torch.tensor(x_np, requires_grad=True)
    x = Tensor(xp.asarray(x_np), requires_grad=True)
    ty, y = tm(tx), ours(x)
    assert tuple(y.shape) == tuple(ty.shape) and y.dtype == np.float64
    np.testing.assert_allclose(host(y), ty.detach().numpy(), rtol=0, atol=1e-12)
    r = np.random.default_rng(1).standard_normal(tuple(ty.shape))
    (ty * torch.tensor(r)).sum().backward()
    (y * Tensor(xp.asarray(r))).sum().backward()
    named = dict(ours.named_parameters())
    scale = max(float(np.abs(p.grad.numpy()).max()) for p in tm.parameters())
    for name, tp in [("input", tx)] + list(tm.named_parameters()):
        g = host(x.grad if name == "input" else named[name].grad)
        gt = tp.grad.numpy()
        if name == "k_norm.bias":   # shifts every key's score by the same q·b: zero in exact arithmetic
            assert np.abs(g).max() <= 1e-12 * scale and np.abs(gt).max() <= 1e-12 * scale
            continue
        np.testing.assert_allclose(g, gt, rtol=1e-8, atol=1e-8 * np.abs(gt).max(), err_msg=name)


def test_attention_pool_gradcheck(xp, device):
    pool = AttentionPoolLatent(6, num_heads=2, latent_len=2, pool_type="avg", mlp_ratio=2.0, qk_norm=True,
                               norm_layer=nn.LayerNorm).to(device=device, dtype=np.float64)
    x = Tensor(xp.asarray(np.random.default_rng(0).standard_normal((2, 5, 6))), requires_grad=True)
    assert gradcheck_directional(lambda x, *ps: pool(x), x, *pool.parameters(), n_directions=3)


def test_attention_pool_is_a_weighted_mean_of_the_values(xp, device):
    """Without proj/MLP (out_features=0) and one head, the output is Σₙ aₙ vₙ with a = softmax(q·kₙ/√d):
    written out here from the weights, so a wrong axis or scale in the layer shows."""
    pool = AttentionPoolLatent(4, out_features=0, num_heads=1).to(device=device, dtype=np.float64)
    x_np = np.random.default_rng(0).standard_normal((2, 5, 4))
    y = host(pool(Tensor(xp.asarray(x_np))))
    wq, bq = host(pool.q.weight), host(pool.q.bias)
    wkv, bkv = host(pool.kv.weight), host(pool.kv.bias)
    q = host(pool.latent)[0, 0] @ wq.T + bq                          # (4,)
    kv = x_np @ wkv.T + bkv                                          # (2, 5, 8)
    k, v = kv[..., :4], kv[..., 4:]
    s = k @ q / 2.0                                                  # (2, 5), √d = 2
    a = np.exp(s - s.max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    np.testing.assert_allclose(y, np.einsum("bn,bnc->bc", a, v), rtol=1e-12)
    assert y.shape == (2, 4)


def test_attention_pool_init_and_errors():
    pool = AttentionPoolLatent(64, num_heads=4, latent_len=50)
    lat = host(pool.latent)
    assert abs(lat.std() - 64 ** -0.5 * 0.88) < 0.02               # std of N(0, σ²) cut at ±2σ is 0.88σ
    assert np.abs(lat).max() <= 2 * 64 ** -0.5
    with pytest.raises(ValueError, match="divisible by num_heads"):
        AttentionPoolLatent(6, num_heads=4)
    with pytest.raises(ValueError, match="pool_type must be 'token', 'avg' or ''"):
        AttentionPoolLatent(8, num_heads=2, pool_type="max")
    with pytest.raises(ValueError, match="needs feat_size"):
        AttentionPoolLatent(8, num_heads=2, pos_embed="abs")
    with pytest.raises(ValueError, match="latent_dim"):
        AttentionPoolLatent(8, num_heads=2, q_proj=False, latent_dim=4)
    abs_pool = AttentionPoolLatent(8, num_heads=2, pos_embed="abs", feat_size=4)
    with pytest.raises(ValueError, match="got 5 tokens but pos_embed has 4"):
        abs_pool(Tensor(np.zeros((1, 5, 8), dtype=np.float32)))


def test_store_attn_keeps_the_weights_and_gives_the_same_output():
    """store_attn: the written-out softmax(q kᵀ·scale) v, weights (B, h, L, N) kept, rows summing to 1,
    and the same output as the one-op path."""
    import minivit as mv
    from minivit.layers.attention_pool import AttentionPoolLatent
    mv.manual_seed(0)
    pool = AttentionPoolLatent(16, num_heads=4, latent_len=2, pool_type="")
    x = mv.randn(3, 10, 16)
    with mv.no_grad():
        ref = pool(x).numpy()
        pool.store_attn = True
        out = pool(x).numpy()
    assert pool.attn_map.shape == (3, 4, 2, 10)
    np.testing.assert_allclose(pool.attn_map.numpy().sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
