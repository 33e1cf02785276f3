"""minivit.viz: the numbers behind the lessons' pictures, and that the pictures draw."""
import numpy as np
import pytest

import minivit as mv
from minivit import viz
from minivit.functional.basic import Add, Exp, Mul, Sum
from minivit.layers import sincos_2d

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt
    plt.close("all")


def _expression(xp):
    a = mv.Tensor(xp.asarray([1.0, 2.0, 3.0]), requires_grad=True)
    b = mv.Tensor(xp.asarray([0.5, -1.0, 2.0]), requires_grad=True)
    return a, b, (a * b + b.exp()).sum()


def test_trace_graph_finds_every_op_in_topological_order(xp):
    a, b, L = _expression(xp)
    nodes, edges = viz.trace_graph(L)
    ops = [type(n) for n in nodes.values() if isinstance(n, mv.Function)]
    assert sorted(op.__name__ for op in ops) == sorted(c.__name__ for c in (Mul, Exp, Add, Sum))
    assert id(a) in nodes and id(b) in nodes
    assert list(nodes)[-1] == id(L)
    rank = {k: i for i, k in enumerate(nodes)}
    assert all(rank[src] < rank[dst] for src, dst in edges)
    # b feeds two ops (Mul and Exp): two edges leave it
    assert sum(src == id(b) for src, _ in edges) == 2
    # 4 ops, each with an edge to its output; Mul and Add have 2 inputs, Exp and Sum 1
    assert len(edges) == 4 + 2 + 2 + 1 + 1


def test_trace_graph_after_backward_and_bad_input(xp):
    _, _, L = _expression(xp)
    L.backward()                     # frees the graph: only the output is left
    nodes, edges = viz.trace_graph(L)
    assert list(nodes) == [id(L)] and edges == []
    with pytest.raises(TypeError, match="needs a Tensor"):
        viz.trace_graph(np.ones(3))


def test_trace_graph_shows_a_freed_intermediate_as_its_node(xp):
    a = mv.Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
    L = ((a * 3.0) + 1.0).sum()          # a * 3.0 is held by nothing: its data is gone
    nodes, _ = viz.trace_graph(L)
    freed = [n for n in nodes.values() if isinstance(n, mv.autograd.Node)]
    assert len(freed) == 2 and all(n.tensor is None for n in freed)   # a*3 and (a*3)+1
    assert {tuple(n.shape) for n in freed} == {(2,)}
    fig = viz.plot_graph(L, names={id(a): "a"})
    assert "(2,)" in {t.get_text() for t in fig.axes[0].texts}


def test_plot_graph_labels_named_tensors_and_ops(xp):
    a, b, L = _expression(xp)
    fig = viz.plot_graph(L, names={id(a): "a", id(b): "b", id(L): "L"})
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"a", "b", "L", "Mul", "Exp", "Add", "Sum"} <= texts


def test_cosine_similarity_maps(xp):
    rng = np.random.default_rng(0)
    e = xp.asarray(rng.standard_normal((12, 16)))
    S = viz.cosine_similarity_maps(e, (3, 4))
    assert S.shape == (3, 4, 3, 4)
    flat = S.reshape(12, 12)
    np.testing.assert_allclose(np.diag(flat), 1.0, rtol=1e-12)
    np.testing.assert_allclose(flat, flat.T, rtol=1e-12)
    np.testing.assert_allclose(viz.cosine_similarity_maps(np.eye(6), (2, 3)).reshape(6, 6), np.eye(6))
    # the (1, N, D) layout of a pos_embed parameter is accepted too
    np.testing.assert_allclose(viz.cosine_similarity_maps(mv.Tensor(e[None]), (3, 4)), S)
    with pytest.raises(ValueError, match="do not form a 4×4 grid"):
        viz.cosine_similarity_maps(e, (4, 4))


def test_similarity_by_distance_smooth_vs_random():
    d, s = viz.similarity_by_distance(sincos_2d(8, 8, 64), (8, 8))
    assert d[0] == 1 and d[-1] == 14 and len(s) == 14
    assert np.all(np.diff(s[:6]) < 0)                       # neighbours are the most alike
    _, r = viz.similarity_by_distance(np.random.default_rng(0).standard_normal((64, 4096)), (8, 8))
    assert np.abs(r).max() < 0.05                           # random embeddings: no structure


def test_attention_to_grid_and_plot(xp):
    heads, h, w = 2, 2, 3
    n = 1 + h * w
    rng = np.random.default_rng(0)
    a = rng.random((heads, n, n))
    a /= a.sum(-1, keepdims=True)
    g = viz.attention_to_grid(xp.asarray(a), (h, w), query=0, num_prefix_tokens=1)
    np.testing.assert_array_equal(g, a[:, 0, 1:].reshape(heads, h, w))
    with pytest.raises(ValueError, match="prefix tokens do not form"):
        viz.attention_to_grid(a, (3, 3))
    image = rng.integers(0, 256, (3, 6, 9), dtype=np.uint8)
    b = a.copy()
    b[:, 0] = 1 / n                                        # a head that attends uniformly
    fig = viz.plot_attention_maps(image, [a, a, b], (h, w))
    assert len(fig.axes) == 3 * (heads + 1) + 1            # + the colour bar
    top = a[:, 0, 1:].max()
    overlays = [ax.images[1] for ax in fig.axes[:-1] if len(ax.images) == 2]
    assert len(overlays) == 3 * heads
    assert all(im.get_clim() == (0, top) for im in overlays)  # one shared scale, not each map's own
    assert "attention weight" in fig.axes[-1].get_ylabel()
    fig = viz.plot_attention_maps(image, [b], (h, w), vmax=0.5)
    assert fig.axes[1].images[1].get_clim() == (0, 0.5)


def test_images_patches_and_grids():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    assert viz.to_hwc(img).shape == (8, 8, 3)
    assert viz.to_hwc(np.full((8, 8, 3), 2.0)).max() == 1.0   # floats clipped to [0, 1]
    fig = viz.draw_patch_grid(img, 4)
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="not divisible by patch size 3"):
        viz.draw_patch_grid(img, 3)
    assert viz.plot_patch_sequence(img, 2).axes
    fig = viz.plot_image_grid([img] * 5, titles=list("abcde"), ncols=3)
    assert len(fig.axes) == 6
    fig = viz.plot_similarity_maps(sincos_2d(2, 3, 8), (2, 3), title="t")
    assert len(fig.axes) == 2 * 3 + 1                        # the maps and the colour bar
