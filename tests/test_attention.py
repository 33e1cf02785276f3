"""Attention as one op (functional/attention.py): F.scaled_dot_product_attention and the packed
F.qkv_attention against the written-out reference (attention_simple, Attention with
fused_attn=False), finite differences in float64, PyTorch's scaled_dot_product_attention, the
MAC count, and the errors."""
import numpy as np
import pytest

import minivit as mv
import minivit.functional as F
from minivit import Tensor, backend
from minivit.complexity import count_macs
from minivit.functional.attention import QKVAttention, ScaledDotProductAttention
from minivit.layers.attention import Attention
from minivit.testing import gradcheck

from conftest import torch_or_skip


def host(a):
    return mv.backend.to_numpy(a)


def t64(xp, arr, grad=True):
    return Tensor(xp.asarray(arr, dtype=np.float64), requires_grad=grad)


def qkv_inputs(xp, rng, B=2, h=2, L=5, S=7, d=4, dv=3):
    return (t64(xp, rng.standard_normal((B, h, L, d))), t64(xp, rng.standard_normal((B, h, S, d))),
            t64(xp, rng.standard_normal((B, h, S, dv))))


def grads_of(fn, inputs, seed=0):
    for x in inputs:
        x.grad = None
    out = fn(*inputs)
    w = np.random.default_rng(seed).standard_normal(out.shape)
    (out * Tensor(out.xp.asarray(w))).sum().backward()
    return host(out.data), [None if x.grad is None else host(x.grad) for x in inputs]


MASKS = ["none", "bool", "bias", "bias_broadcast", "causal"]


def make_mask(xp, rng, kind, L=5, S=7, B=2):
    if kind == "bool":
        m = rng.random((B, 1, L, S)) > 0.3
        m[..., 0] = True                                    # every query keeps a key
        return Tensor(xp.asarray(m))
    if kind == "bias":
        return t64(xp, rng.standard_normal((2, 2, L, S)))
    if kind == "bias_broadcast":                            # a learned bias shared over the batch (Swin's)
        return t64(xp, rng.standard_normal((2, L, S)))
    return None


@pytest.mark.parametrize("kind", MASKS)
def test_one_op_matches_the_written_out_attention(xp, kind):
    rng = np.random.default_rng(0)
    q, k, v = qkv_inputs(xp, rng, S=5 if kind == "causal" else 7)
    mask = make_mask(xp, rng, kind)
    inputs = [q, k, v] + ([mask] if mask is not None and mask.requires_grad else [])

    def one_op(q, k, v, *m):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=kind == "causal", scale=0.7)

    def written_out(q, k, v, *m):
        am = mask
        if kind == "causal":
            am = Tensor(q.xp.asarray(np.tril(np.ones((5, 5), dtype=bool))))
        return F.attention_simple(q, k, v, attn_mask=am, scale=0.7)
    out_a, g_a = grads_of(one_op, inputs)
    out_b, g_b = grads_of(written_out, inputs)
    np.testing.assert_allclose(out_a, out_b, rtol=1e-12, atol=1e-12)
    for ga, gb in zip(g_a, g_b):
        np.testing.assert_allclose(ga, gb, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["none", "bias_broadcast", "bool"])
def test_scaled_dot_product_attention_gradcheck(xp, kind):
    rng = np.random.default_rng(1)
    q, k, v = qkv_inputs(xp, rng, B=1, L=3, S=4, d=2, dv=2)
    mask = make_mask(xp, rng, kind, L=3, S=4, B=1)
    if mask is not None and kind == "bias_broadcast":
        mask = t64(xp, rng.standard_normal((1, 3, 4)))
    extra = [mask] if mask is not None and mask.requires_grad else []
    assert gradcheck(lambda q, k, v, *m: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                     q, k, v, *extra)


def test_qkv_attention_gradcheck(xp):
    rng = np.random.default_rng(2)
    qkv = t64(xp, rng.standard_normal((2, 3, 3 * 2 * 2)))      # B=2, N=3, heads=2, head_dim=2
    assert gradcheck(lambda t: F.qkv_attention(t, num_heads=2), qkv)


@pytest.mark.parametrize("windows", [1, 3])
def test_qkv_attention_with_a_window_bias(xp, windows):
    """(nW, h, N, N) bias on a batch of images × nW windows (Swin's), or (h, N, N) on every row:
    the values and gradients (qkv's and the bias's) of the written-out steps, and a gradcheck."""
    rng = np.random.default_rng(5)
    B, N, h, d = 2 * windows, 4, 2, 3
    qkv = t64(xp, rng.standard_normal((B, N, 3 * h * d)))
    bias = t64(xp, rng.standard_normal((windows, h, N, N) if windows > 1 else (h, N, N)))
    out = F.qkv_attention(qkv, h, 0.4, attn_mask=bias)
    g = xp.asarray(rng.standard_normal(out.shape))
    out.backward(g)
    qkv2, bias2 = (Tensor(t.data.copy(), requires_grad=True) for t in (qkv, bias))
    lead = (B,) if windows == 1 else (B // windows, windows)
    n = len(lead)
    q, k, v = qkv2.reshape(*lead, N, 3, h, d).permute(n + 1, *range(n), n + 2, n, n + 3).unbind(0)
    ref = F.attention_simple(q, k, v, bias2, 0.4).transpose(n, n + 1).reshape(B, N, h * d)
    ref.backward(g)
    for a, b in ((out.data, ref.data), (qkv.grad, qkv2.grad), (bias.grad, bias2.grad)):
        np.testing.assert_allclose(backend.to_numpy(a), backend.to_numpy(b), rtol=1e-12, atol=1e-12)
    assert gradcheck(lambda t, m: F.qkv_attention(t, h, 0.4, attn_mask=m), qkv, bias)
    with pytest.raises(ValueError, match=r"attn_mask must be \(2, 4, 4\), or \(nW, 2, 4, 4\)"):
        F.qkv_attention(qkv, h, attn_mask=t64(xp, rng.standard_normal((5, h, N, N))))


@pytest.mark.parametrize("training", [True, False])
def test_fused_msa_layer_matches_the_written_out_layer(monkeypatch, training):
    rng = np.random.default_rng(3)
    layer = Attention(16, num_heads=4, qkv_bias=True).to(dtype=np.float64)
    layer.train(training)
    x = t64(np, rng.standard_normal((2, 9, 16)))
    results = []
    for fused in (True, False):
        monkeypatch.setattr(Attention, "fused_attn", fused)
        for p in layer.parameters():
            p.grad = None
        out, (gx,) = grads_of(layer, [x])
        results.append((out, gx, [host(p.grad) for p in layer.parameters()]))
    (oa, ga, pa), (ob, gb, pb) = results
    np.testing.assert_allclose(oa, ob, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ga, gb, rtol=1e-10, atol=1e-13)
    for a, b in zip(pa, pb):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_fused_msa_takes_the_one_op_and_falls_back_where_it_must(monkeypatch):
    seen = []
    orig = QKVAttention.forward
    monkeypatch.setattr(QKVAttention, "forward", lambda self, a: seen.append(1) or orig(self, a))
    x = mv.randn(1, 4, 8)
    layer = Attention(8, num_heads=2)
    layer(x)
    assert seen == [1]
    layer.store_attn = True                                 # the lessons read the weights: written out
    layer(x)
    assert seen == [1] and layer.attn_map is not None
    layer = Attention(8, num_heads=2, attn_drop=0.1)
    layer.train()
    layer(x)                                                # attention dropout while training: written out
    assert seen == [1]
    layer.eval()
    layer(x)
    assert seen == [1, 1]


def test_a_row_with_no_key_left_gets_uniform_weights_not_nan():
    q, k = mv.randn(1, 2, 3), mv.randn(1, 4, 3)
    v = Tensor(np.arange(12, dtype=np.float32).reshape(1, 4, 3))
    mask = Tensor(np.array([[[True, False, True, False], [False, False, False, False]]]))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert np.isfinite(out.data).all()
    np.testing.assert_allclose(out.data[0, 1], v.data[0].mean(axis=0), rtol=1e-6)


@pytest.mark.parametrize("kind", MASKS)
def test_matches_pytorch(kind):
    torch = torch_or_skip()
    rng = np.random.default_rng(4)
    q, k, v = qkv_inputs(np, rng, S=5 if kind == "causal" else 7)
    mask = make_mask(np, rng, kind)
    out, grads = grads_of(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                        is_causal=kind == "causal"),
                          [q, k, v], seed=5)
    tq, tk, tv = (torch.tensor(t.data, requires_grad=True) for t in (q, k, v))
    tm = None if mask is None else torch.tensor(mask.data)
    to = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm, is_causal=kind == "causal")
    w = torch.tensor(np.random.default_rng(5).standard_normal(to.shape))
    (to * w).sum().backward()
    np.testing.assert_allclose(out, to.detach().numpy(), rtol=1e-10, atol=1e-12)
    for g, t in zip(grads, (tq, tk, tv)):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_macs_are_counted_as_the_written_out_matmuls(monkeypatch):
    from minivit.models import create_model
    model = create_model("vit_nano")
    x = mv.zeros(1, 3, 32, 32)
    fused = count_macs(model, x)
    monkeypatch.setattr(Attention, "fused_attn", False)
    written = count_macs(model, x)
    assert fused.total == written.total and dict(fused.by_kind) == dict(written.by_kind)
    q, k, v = mv.randn(2, 3, 5, 4), mv.randn(2, 3, 7, 4), mv.randn(2, 3, 7, 6)
    assert count_macs(lambda: F.scaled_dot_product_attention(q, k, v)).total == 2 * 3 * 5 * 7 * (4 + 6)


def test_errors_name_the_shapes():
    q = mv.randn(2, 5, 4)
    with pytest.raises(ValueError, match=r"same leading dims.*\(2, 5, 4\), \(2, 7, 3\)"):
        F.scaled_dot_product_attention(q, mv.randn(2, 7, 3), mv.randn(2, 7, 3))
    with pytest.raises(ValueError, match="same number"):
        F.scaled_dot_product_attention(q, mv.randn(7, 4), mv.randn(7, 4))
    with pytest.raises(ValueError, match="either attn_mask or is_causal"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=mv.zeros(5, 5), is_causal=True)
    with pytest.raises(ValueError, match=r"attn_mask of shape \(3, 5, 5\) does not broadcast to the scores' shape \(2, 5, 5\)"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=mv.zeros(3, 5, 5))
    with pytest.raises(ValueError, match="3 × num_heads"):
        F.qkv_attention(mv.randn(2, 5, 10), num_heads=2)


# --------------------------------------------------------------------------- every attention layer
def _layer_cases():
    from minivit.layers.conv_projection import ConvProjectionAttention
    from minivit.layers.sra import SpatialReductionAttention
    from minivit.layers.window_attention import WindowAttention, shifted_window_mask
    rng = np.random.default_rng(11)
    mask = shifted_window_mask(8, 8, (4, 4), (2, 2), dtype=np.float64)          # (4 windows, 16, 16)
    return {
        "sra_r2": (lambda: SpatialReductionAttention(16, num_heads=2, sr_ratio=2),
                   rng.standard_normal((2, 16, 16)), lambda m, x: m(x, (4, 4))),
        "sra_linear": (lambda: SpatialReductionAttention(16, num_heads=2, linear_attn=True, pool_size=2),
                       rng.standard_normal((2, 16, 16)), lambda m, x: m(x, (4, 4))),
        "window": (lambda: WindowAttention(16, num_heads=2, window_size=4),
                   rng.standard_normal((8, 16, 16)), lambda m, x: m(x)),
        "window_shifted": (lambda: WindowAttention(16, num_heads=2, window_size=4),
                           rng.standard_normal((8, 16, 16)), lambda m, x: m(x, Tensor(mask))),
        "cvt_cls": (lambda: ConvProjectionAttention(16, num_heads=2, with_cls_token=True),
                    rng.standard_normal((2, 1 + 16, 16)), lambda m, x: m(x, (4, 4))),
    }


@pytest.mark.parametrize("case", ["sra_r2", "sra_linear", "window", "window_shifted", "cvt_cls"])
def test_every_attention_layer_one_op_matches_its_written_out_steps(monkeypatch, case):
    """SRA (PVT), window attention with its learned bias and the shifted-window mask (Swin), CvT's
    convolutional projections: output, ∂x and every parameter's gradient (the bias table's too) equal
    in float64 with ``fused_attn`` on and off, and the one op is what runs when it is on."""
    build, x0, call = _layer_cases()[case]
    layer = build().to(dtype=np.float64)
    layer.train()
    cls = type(layer)
    ran = []
    orig = ScaledDotProductAttention.forward
    monkeypatch.setattr(ScaledDotProductAttention, "forward", lambda self, *a: ran.append(1) or orig(self, *a))
    results = []
    for fused in (True, False):
        monkeypatch.setattr(cls, "fused_attn", fused)
        for p in layer.parameters():
            p.grad = None
        x = t64(np, x0)
        out, (gx,) = grads_of(lambda t: call(layer, t), [x])
        results.append((out, gx, {n: host(p.grad) for n, p in layer.named_parameters()}))
        assert bool(ran) == fused
        ran.clear()
    (oa, ga, pa), (ob, gb, pb) = results
    np.testing.assert_allclose(oa, ob, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(ga, gb, rtol=1e-9, atol=1e-12)
    for n in pb:
        np.testing.assert_allclose(pa[n], pb[n], rtol=1e-9, atol=1e-12, err_msg=n)


@pytest.mark.parametrize("block", [None, 7, 70], ids=["one-block", "row-blocks", "map-blocks"])
@pytest.mark.parametrize("B, h", [(6, 2), (1, 3)])
@pytest.mark.parametrize("kind", MASKS)
def test_cpu_fast_path_matches_the_reference(monkeypatch, kind, B, h, block):
    """The threaded CPU path (pieces of the batch on backend's threads, blocks of scores within a
    piece) against the reference code of the same op, float64: output and every gradient, the
    mask's too; and the path is taken. (One image, B = 1, is one piece: cutting the heads over the
    threads instead put two multi-threaded BLAS calls on two cores and made one image's MSA 4× slower.)"""
    monkeypatch.setattr(backend, "get_num_threads", lambda: 2)
    if block:    # 7: blocks of query rows (dV, dK summed over them); 70: a few whole (L, S) maps per block
        monkeypatch.setattr(ScaledDotProductAttention, "score_block", block * (1 if B == 6 else 3))
    rng = np.random.default_rng(12)
    q, k, v = qkv_inputs(np, rng, B=B, h=h, S=5 if kind == "causal" else 7)
    mask = make_mask(np, rng, kind, B=B)
    if kind == "bias":
        mask = t64(np, rng.standard_normal((B, h, 5, 7)))
    elif kind == "bias_broadcast":
        mask = t64(np, rng.standard_normal((h, 5, 7)))
    inputs = [q, k, v] + ([mask] if mask is not None and mask.requires_grad else [])

    def run(q, k, v, *m):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=kind == "causal")
    taken = []
    orig = ScaledDotProductAttention._cpu_forward
    monkeypatch.setattr(ScaledDotProductAttention, "_cpu_forward", lambda self, *a: taken.append(1) or orig(self, *a))
    out_fast, g_fast = grads_of(run, inputs)
    assert taken == [1]
    monkeypatch.setattr(ScaledDotProductAttention, "fast_path", False)
    out_ref, g_ref = grads_of(run, inputs)
    assert taken == [1]
    np.testing.assert_allclose(out_fast, out_ref, rtol=1e-12, atol=1e-13)
    for a, b in zip(g_fast, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_dropout_runs_the_composed_ops_and_drops():
    """dropout_p > 0: PyTorch's dropout on the attention weights (the composed path); p = 1 drops all."""
    q, k, v = mv.randn(2, 4, 3), mv.randn(2, 5, 3), mv.randn(2, 5, 3)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=1.0)
    np.testing.assert_array_equal(out.data, 0)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    assert out.shape == (2, 4, 3) and np.isfinite(out.data).all()
    assert not np.allclose(out.data, F.scaled_dot_product_attention(q, k, v).data)
