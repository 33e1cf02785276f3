"""minivit.analysis: shapes, attention statistics, throughput and run summaries."""
import json
import math

import numpy as np
import pytest

import minivit as mv
from minivit import analysis, backend
from minivit.models.vit import VisionTransformer


def tiny_vit(device="cpu", **kw):
    args = dict(img_size=8, patch_size=4, num_classes=3, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2.0)
    return VisionTransformer(**{**args, **kw}).to(device=device)


def rows_of(weights, B=2, heads=3):
    """An attention tensor (B, heads, N, N) with every query's row equal to `weights` (N,)."""
    w = np.asarray(weights, dtype=np.float64)
    return np.broadcast_to(w, (B, heads, len(w), len(w))).copy()


# --------------------------------------------------------------------------- spatial interaction
def test_interaction_of_one_hot_and_uniform_rows():
    N = 6
    one_hot = np.eye(N)[None, None].repeat(2, 0)              # each query attends to itself only
    assert analysis.spatial_interaction(one_hot) == pytest.approx(1 / N)
    assert analysis.spatial_interaction(np.full((1, 2, N, N), 1 / N)) == 0.0   # nothing above uniform


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_interaction_counts_keys_above_the_uniform_level(k):
    N = 8
    w = np.zeros(N)
    w[:k] = 1 / k                                             # k keys share the attention
    assert analysis.spatial_interaction(rows_of(w)) == pytest.approx(k / N)


def test_interaction_drops_prefix_tokens_and_takes_a_fixed_threshold():
    # Token 0 (a class token) takes most of the weight; 2 of the 4 spatial keys get 0.2 each,
    # i.e. half of the spatial attention each after renormalising: above 1/4, below 0.6.
    w = np.array([0.6, 0.2, 0.2, 0.0, 0.0])
    a = rows_of(w)
    assert analysis.spatial_interaction(a, num_prefix_tokens=1) == pytest.approx(2 / 4)
    assert analysis.spatial_interaction(a, num_prefix_tokens=1, threshold=0.6) == 0.0
    assert analysis.spatial_interaction(a, num_prefix_tokens=1, threshold=0.4) == pytest.approx(2 / 4)
    assert analysis.spatial_interaction(a, num_prefix_tokens=0) == pytest.approx(1 / 5)   # only 0.6 > 1/5


def test_interaction_rejects_bad_input():
    with pytest.raises(ValueError, match="B, heads"):
        analysis.spatial_interaction(np.ones((3, 3)))
    with pytest.raises(ValueError, match="prefix"):
        analysis.spatial_interaction(np.ones((1, 1, 2, 2)) / 2, num_prefix_tokens=2)


# --------------------------------------------------------------------------- receptive field, timing
@pytest.mark.parametrize("k,stride,pad,pos,rows", [
    (3, 2, 1, (1, 1), range(1, 4)),      # window 2·1 − 1 … 2·1 + 1
    (3, 2, 1, (0, 0), range(0, 2)),      # the zero padding cuts the border window
    (4, 4, 0, (1, 2), range(4, 8)),      # non-overlapping patches: exactly one 4×4 patch
    (7, 4, 3, (1, 1), range(1, 8)),      # PVT v2's stem: 7×7 windows overlapping by 3
])
def test_receptive_field_of_a_conv(k, stride, pad, pos, rows):
    conv = mv.nn.Conv2d(2, 3, k, stride=stride, padding=pad).double()
    mask = analysis.receptive_field(conv, (1, 2, 16, 16), pos)
    cols = range(pos[1] * stride - pad, pos[1] * stride - pad + k)
    expected = np.zeros((16, 16), bool)
    expected[np.ix_([r for r in rows if 0 <= r < 16], [c for c in cols if 0 <= c < 16])] = True
    np.testing.assert_array_equal(mask, expected)


def test_receptive_field_channels_last_and_bad_output():
    conv = mv.nn.Conv2d(1, 2, 3, stride=1, padding=1).double()
    mask = analysis.receptive_field(lambda x: conv(x).permute(0, 2, 3, 1), (1, 1, 5, 5), (2, 2),
                                    channels_last=True)
    assert mask.sum() == 9 and mask[1:4, 1:4].all()
    with pytest.raises(ValueError, match="4-D"):
        analysis.receptive_field(lambda x: x.sum(1), (1, 1, 5, 5), (0, 0))


def test_timeit_counts_calls_and_returns_the_median():
    calls = []
    t = analysis.timeit(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and t >= 0.0


# --------------------------------------------------------------------------- entropy and distance
def test_entropy_limits():
    N = 7
    assert analysis.attention_entropy(np.eye(N)[None, None]) == pytest.approx(0.0, abs=1e-12)
    uniform = np.full((2, 2, N, N), 1 / N)
    assert analysis.attention_entropy(uniform) == pytest.approx(1.0)
    assert analysis.attention_entropy(uniform, normalized=False) == pytest.approx(math.log(N))
    two = rows_of([0.5, 0.5, 0, 0])                            # two keys: log 2 of log 4
    assert analysis.attention_entropy(two) == pytest.approx(0.5)


def test_distance_of_self_and_neighbour_attention():
    h = w = 2                                                 # tokens (0,0) (0,1) (1,0) (1,1)
    assert analysis.attention_distance(np.eye(4)[None, None], (h, w)) == 0.0
    right = np.zeros((1, 1, 4, 4))
    for i, j in [(0, 1), (1, 0), (2, 3), (3, 2)]:             # each query looks at its row neighbour
        right[0, 0, i, j] = 1.0
    assert analysis.attention_distance(right, (h, w)) == pytest.approx(1 / w)
    diag = np.zeros((1, 1, 4, 4))
    for i, j in [(0, 3), (3, 0), (1, 2), (2, 1)]:             # the opposite corner: √((1/2)² + (1/2)²)
        diag[0, 0, i, j] = 1.0
    assert analysis.attention_distance(diag, (h, w)) == pytest.approx(math.sqrt(0.5))


def test_distance_renormalises_over_spatial_keys():
    # A class token (index 0) gets half the weight; the other half goes to the row neighbour.
    a = np.zeros((1, 1, 5, 5))
    a[0, 0, :, 0] = 0.5
    for i, j in [(1, 2), (2, 1), (3, 4), (4, 3)]:
        a[0, 0, i, j] = 0.5
    assert analysis.attention_distance(a, (2, 2), num_prefix_tokens=1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="grid"):
        analysis.attention_distance(a, (3, 3), num_prefix_tokens=1)


def test_distance_per_head():
    """per_head=True: one distance per head, whose mean is the layer's distance; a head that attends
    only to itself gives 0, a uniform one the layer-independent uniform value."""
    g, n = (4, 4), 16
    a = np.stack([np.eye(n), np.full((n, n), 1 / n)])[None]          # (1, 2 heads, 16, 16)
    d = analysis.attention_distance(a, g, per_head=True)
    assert d.shape == (2,) and d[0] == 0.0
    assert d[1] == pytest.approx(analysis.attention_distance(a[:, 1:], g))
    assert d.mean() == pytest.approx(analysis.attention_distance(a, g))


def test_attention_rollout():
    """One layer: the head-averaged weights half-and-half with the identity; two layers: the product
    in order (the later layer on the left); rows sum to 1; identity attention rolls out to I."""
    rng = np.random.default_rng(0)
    a1, a2 = (rng.random((2, 3, 5, 5)) for _ in range(2))
    a1 /= a1.sum(-1, keepdims=True)
    a2 /= a2.sum(-1, keepdims=True)
    step = lambda a: 0.5 * a.mean(1) + 0.5 * np.eye(5)            # noqa: E731  (rows already sum to 1)
    np.testing.assert_allclose(analysis.attention_rollout([a1]), step(a1))
    np.testing.assert_allclose(analysis.attention_rollout([a1, a2]), step(a2) @ step(a1))
    np.testing.assert_allclose(analysis.attention_rollout([a1, a2]).sum(-1), 1.0)
    eye = np.broadcast_to(np.eye(5), (2, 3, 5, 5))
    np.testing.assert_allclose(analysis.attention_rollout([eye, eye], residual=0.0), np.broadcast_to(np.eye(5), (2, 5, 5)))
    with pytest.raises(ValueError, match="same B and N"):
        analysis.attention_rollout([a1, a1[:, :, :4, :4]])
    with pytest.raises(ValueError, match="residual"):
        analysis.attention_rollout([a1], residual=1.5)


def test_square_grid():
    assert analysis.square_grid(65, 1) == (8, 8)
    with pytest.raises(ValueError, match="not a square"):
        analysis.square_grid(11, 1)


# --------------------------------------------------------------------------- on a model
def test_collect_attention_restores_the_model(device):
    model = tiny_vit(device)
    model.train()
    x = mv.randn(3, 3, 8, 8, device=device)
    maps = analysis.collect_attention(model, x)
    assert [n for n, _ in maps] == ["blocks.0.attn", "blocks.1.attn"]
    for _, a in maps:
        assert isinstance(a, np.ndarray) and a.shape == (3, 2, 5, 5)     # 1 class token + 2×2 patches
        np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-5)
    assert model.training
    assert all(not m.store_attn and m.attn_map is None for _, m in analysis.attention_modules(model))
    # the maps are those of an eval-mode forward
    model.eval()
    first = model.blocks[0].attn
    first.store_attn = True
    with mv.no_grad():
        model(x)
    np.testing.assert_allclose(backend.to_numpy(first.attn_map.data), maps[0][1], rtol=1e-6)


def test_collect_attention_needs_attention_layers():
    with pytest.raises(ValueError, match="no attention layer"):
        analysis.collect_attention(mv.nn.Linear(2, 2), mv.randn(1, 2))


def test_attention_stats_rows(device):
    rows = analysis.attention_stats(tiny_vit(device), mv.randn(2, 3, 8, 8, device=device))
    assert len(rows) == 2
    for r in rows:
        assert r["grid"] == (2, 2) and r["tokens"] == 5 and r["heads"] == 2
        assert 0.0 <= r["interaction"] <= 1.0 and 0.0 <= r["entropy"] <= 1.0 and r["distance"] >= 0.0


def test_trace_shapes_records_outputs_and_unwraps(device):
    model = tiny_vit(device)
    recs = analysis.trace_shapes(model, mv.randn(2, 3, 8, 8, device=device))
    shapes = {name: shape for name, _, shape in recs}
    assert shapes["patch_embed"] == (2, 4, 8)
    assert shapes["blocks.1"] == (2, 5, 8)
    assert shapes["head"] == (2, 3)
    kinds = {name: kind for name, kind, _ in recs}
    assert kinds["blocks.0.attn"] == "Attention"
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert model.training                                     # a fresh model is in train mode, and stays so
    only = analysis.trace_shapes(model, mv.randn(1, 3, 8, 8, device=device),
                                 select=lambda n, m: n.startswith("blocks.") and n.count(".") == 1)
    assert [n for n, _, _ in only] == ["blocks.0", "blocks.1"]


def test_trace_shapes_runs_in_eval_mode():
    model = mv.nn.Sequential(mv.nn.Conv2d(2, 3, 3), mv.nn.BatchNorm2d(3))
    before = model[1].running_mean.numpy().copy()
    recs = analysis.trace_shapes(model, mv.randn(4, 2, 6, 6) + 5.0)
    assert recs == [("0", "Conv2d", (4, 3, 4, 4)), ("1", "BatchNorm2d", (4, 3, 4, 4))]
    np.testing.assert_array_equal(model[1].running_mean.numpy(), before)     # no statistics update
    assert model.training


def test_trace_shapes_of_tuple_outputs():
    from minivit.layers import ConvEmbed
    emb = ConvEmbed(3, 3, 4, stride=2, padding=1)
    wrapper = mv.nn.Sequential(emb)
    wrapper.forward = lambda x: emb(x)
    recs = analysis.trace_shapes(wrapper, mv.randn(1, 3, 8, 8))
    assert recs[-1] == ("0", "ConvEmbed", [(1, 16, 4), (4, 4)])


@pytest.mark.parametrize("train", [False, True])
def test_throughput_leaves_weights_and_mode(device, train):
    model = tiny_vit(device)
    model.eval()
    before = {k: backend.to_numpy(v).copy() for k, v in model.state_dict().items()}
    r = analysis.throughput(model, batch_size=4, device=device, repeats=2, train=train, image_size=8)
    assert r["images_per_s"] > 0 and r["seconds"] > 0 and r["batch_size"] == 4
    assert r["mode"] == ("train step" if train else "forward")
    assert not model.training
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(backend.to_numpy(v), before[k], err_msg=k)
    assert all(p.grad is None for p in model.parameters())


def test_throughput_train_step_with_two_heads():
    from minivit.models.deit import VisionTransformerDistilled
    model = VisionTransformerDistilled(img_size=8, patch_size=4, num_classes=3, embed_dim=8, depth=1,
                                       num_heads=2)
    r = analysis.throughput(model, batch_size=2, repeats=1, train=True, image_size=8)
    assert r["images_per_s"] > 0


def test_throughput_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        analysis.throughput(tiny_vit(), batch_size=0)


# --------------------------------------------------------------------------- runs
def _write_run(path, metrics, config=None):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))


def test_read_run_summarises_metrics(tmp_path):
    metrics = [dict(epoch=1, test_acc=0.40, epoch_time_s=10.0, images_per_s=100.0),
               dict(epoch=2, test_acc=None, epoch_time_s=9.0, images_per_s=120.0),
               dict(epoch=3, test_acc=0.55, epoch_time_s=11.0, images_per_s=110.0),
               dict(epoch=4, test_acc=0.52, epoch_time_s=10.0, images_per_s=115.0)]
    _write_run(tmp_path / "pvt_tiny", metrics, dict(model="pvt_tiny", epochs=100, device="cuda"))
    r = analysis.read_run(tmp_path / "pvt_tiny")
    assert r["model"] == "pvt_tiny" and r["epochs"] == 4 and r["planned_epochs"] == 100
    assert r["final_test_acc"] == 0.52 and r["best_test_acc"] == 0.55 and r["best_epoch"] == 3
    assert r["train_time_s"] == pytest.approx(40.0) and r["images_per_s"] == pytest.approx(112.5)
    assert r["device"] == "cuda"


def test_read_run_without_results(tmp_path):
    assert analysis.read_run(tmp_path / "nothing") is None
    _write_run(tmp_path / "vit_tiny", [dict(epoch=1, test_acc=None)])
    assert analysis.read_run(tmp_path / "vit_tiny") is None
    found = analysis.find_runs(["vit_tiny", "swin_tiny"], tmp_path)
    assert found == {"vit_tiny": None, "swin_tiny": None}
    _write_run(tmp_path / "swin_tiny", [dict(epoch=1, test_acc=0.3)])
    assert analysis.find_runs(["swin_tiny"], tmp_path)["swin_tiny"]["model"] == "swin_tiny"   # no config.json
