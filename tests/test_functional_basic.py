"""Elementary ops (functional/basic.py): finite differences, closed forms, PyTorch parity."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit as mv
import minivit.functional as F
from minivit import Tensor
from minivit.testing import gradcheck

from conftest import torch_or_skip


def host(a):
    return mv.backend.to_numpy(a)


def t64(xp, arr, grad=True):
    return Tensor(xp.asarray(arr, dtype=np.float64), requires_grad=grad)


# ---------------------------------------------------------------- broadcasting binary ops
@st.composite
def broadcast_pair(draw):
    """Two shapes that broadcast: size-1 dims and missing leading dims on either side."""
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    a = [s if draw(st.booleans()) else 1 for s in shape]
    b = [s if draw(st.booleans()) else 1 for s in shape]
    if draw(st.booleans()):
        b = b[draw(st.integers(0, len(b) - 1)):]
    return tuple(a), tuple(b)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow"])
@given(shapes=broadcast_pair(), seed=st.integers(0, 2**16))
@settings(max_examples=15)
def test_binary_broadcast_gradcheck(xp, op, shapes, seed):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2.0, shapes[0])  # positive and away from 0: div and pow are smooth
    b = rng.uniform(0.5, 2.0, shapes[1]) * (1 if op in ("pow", "div") else rng.choice([-1, 1], shapes[1]))
    fn = getattr(F, op)
    gradcheck(fn, t64(xp, a), t64(xp, b))


@given(shapes=st.sampled_from([((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 4)), ((2, 3), (3, 4)),
                               ((5, 2, 3), (3, 4)), ((2, 3), (5, 3, 4)), ((5, 1, 2, 3), (4, 3, 2))]),
       transpose=st.booleans())
@settings(max_examples=20)
def test_matmul_gradcheck(xp, shapes, transpose):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shapes[0])
    b = rng.standard_normal(shapes[1])
    A, B = t64(xp, a), t64(xp, b)
    if transpose and b.ndim >= 2:  # a non-contiguous operand
        B = t64(xp, np.swapaxes(b, -1, -2).copy())
        gradcheck(lambda a, b: a @ b.transpose(-1, -2), A, B)
    else:
        gradcheck(lambda a, b: a @ b, A, B)


def test_matmul_closed_form(xp):
    a, b = t64(xp, np.random.randn(3, 4)), t64(xp, np.random.randn(4, 5))
    g = np.random.randn(3, 5)
    (a @ b).backward(xp.asarray(g))
    np.testing.assert_allclose(host(a.grad), g @ host(b.data).T)
    np.testing.assert_allclose(host(b.grad), host(a.data).T @ g)


# ---------------------------------------------------------------- unary, reductions, shapes
UNARY = {
    "exp": lambda x: x.exp(), "log": lambda x: (x.abs() + 0.5).log(), "sqrt": lambda x: (x * x + 1).sqrt(),
    "tanh": lambda x: x.tanh(), "neg": lambda x: -x, "abs": lambda x: x.abs(),
    "clamp": lambda x: x.clamp(-0.5, 0.7),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=3), seed=st.integers(0, 2**16))
@settings(max_examples=10)
def test_unary_gradcheck(xp, name, shape, seed):
    x = np.random.default_rng(seed).uniform(-2, 2, shape)
    x = np.where(np.abs(x) < 0.05, 0.3, x)  # away from the kinks of abs
    x = np.where(np.abs(np.abs(x) - 0.6) < 0.05, 1.5, x)  # and of clamp
    gradcheck(UNARY[name], t64(xp, x))


REDUCE = {
    "sum": lambda x, d, k: x.sum(d, k), "mean": lambda x, d, k: x.mean(d, k),
    "amax": lambda x, d, k: x.amax(d, k), "var": lambda x, d, k: x.var(d, k),
    "max": lambda x, d, k: x.max() if d is None else x.max(d, k).values,
}


@pytest.mark.parametrize("name", sorted(REDUCE))
@given(shape=st.lists(st.integers(2, 4), min_size=1, max_size=3), data=st.data(), keep=st.booleans())
@settings(max_examples=10)
def test_reduction_gradcheck(xp, name, shape, data, keep):
    dim = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    x = np.random.default_rng(1).permutation(np.arange(np.prod(shape), dtype=np.float64)).reshape(shape)
    gradcheck(lambda t: REDUCE[name](t, dim, keep), t64(xp, x / 7.0))  # distinct values: no ties


def test_max_ties_share_gradient_but_max_dim_picks_index(xp):
    x = t64(xp, [[1.0, 3.0, 3.0]])
    x.max().backward()
    np.testing.assert_allclose(host(x.grad), [[0, 0.5, 0.5]])
    x.grad = None
    values, indices = x.max(1)
    values.sum().backward()
    assert int(host(indices.data)[0]) == 1
    np.testing.assert_allclose(host(x.grad), [[0, 1.0, 0]])


SHAPE_OPS = {
    "reshape": lambda x: x.reshape(-1, 2) * x.reshape(-1, 2),
    "transpose": lambda x: x.transpose(0, -1).exp(),
    "permute": lambda x: x.permute(2, 0, 1) * 2,
    "flatten": lambda x: x.flatten(1).tanh(),
    "unsqueeze_squeeze": lambda x: x.unsqueeze(1).squeeze(1) * x,
    "expand": lambda x: x[:, :1].expand(3, 2, 5, 4) * 1.5,
    "getitem_slices": lambda x: x[:, 1:, ::2] * 3,
    "getitem_ellipsis_none": lambda x: x[..., None, 1],
    "getitem_bool": lambda x: x[x.data > 0],
    "roll": lambda x: x.roll((1, -2), (1, 2)) * mv.Tensor(x.xp.arange(24.0).reshape(2, 3, 4)),
    "roll_flat": lambda x: x.roll(5) * mv.Tensor(x.xp.arange(24.0).reshape(2, 3, 4)),
    "cat": lambda x: mv.cat([x, x * 2, x[:, :1]], dim=1),
    "stack": lambda x: mv.stack([x, x.exp()], dim=-1),
    "split": lambda x: mv.cat([p * (i + 1) for i, p in enumerate(x.split([1, 2], dim=1))], 1),
    "chunk": lambda x: x.chunk(3, dim=2)[0] * x.chunk(3, dim=2)[1],
    "unbind": lambda x: x.unbind(1)[2] - x.unbind(1)[0] * 2,
    "gather": lambda x: F.gather(x, 2, np.array([[[0, 0, 3]] * 3] * 2)),
    "where": lambda x: mv.where(x.data > 0, x * 2, x.exp()),
}


@pytest.mark.parametrize("name", sorted(SHAPE_OPS))
def test_shape_op_gradcheck(xp, name):
    x = np.random.default_rng(3).standard_normal((2, 3, 4))
    gradcheck(SHAPE_OPS[name], t64(xp, x))


class _NumpyWithCupySignatures:
    """NumPy, but with CuPy's signature where CuPy's differs (cupy.indices has no
    ``sparse``): a CPU test that an op's GPU path calls nothing CuPy lacks."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def indices(dimensions, dtype=int):
        return np.indices(dimensions, dtype=dtype)


def test_gather_and_max_dim_backward_use_only_cupys_api(monkeypatch):
    from minivit.functional import basic
    monkeypatch.setattr(basic, "get_array_module", lambda *arrays: _NumpyWithCupySignatures())
    x = t64(np, np.random.default_rng(5).standard_normal((2, 3, 4)))
    gradcheck(lambda t: F.gather(t, 1, np.array([[[0, 2, 2, 1]] * 2] * 2)), x)
    gradcheck(lambda t: t.max(2).values * 2, x)


def test_where_with_two_numbers_follows_the_condition(xp, device):
    out = mv.where(xp.asarray([True, False, True]), 1.5, -2.0)
    assert out.device == device and out.dtype == np.float32
    np.testing.assert_array_equal(host(out.data), [1.5, -2.0, 1.5])


def test_non_contiguous_input(xp):
    x = t64(xp, np.random.randn(4, 3).T.copy())
    gradcheck(lambda t: (t.transpose(0, 1) @ t).sum(0) * t.transpose(0, 1)[:, 0], x)


def test_split_sizes_must_add_up():
    with pytest.raises(ValueError, match="do not add up"):
        Tensor(np.zeros((5, 2))).split([2, 2])


# ---------------------------------------------------------------- split/unbind: one op with several results
def _uses_of_pieces(pieces, x):
    """Pieces used once, twice, not at all, and x used beside them (the hub's gradient must
    be complete before x's is added up)."""
    p = list(pieces)
    out = (p[0] * 2).sum() + (p[-1] ** 2).sum() + (p[0] * p[-1].sum()).sum()
    return out + (x * x).sum() * 0.5


@pytest.mark.parametrize("cut", ["unbind0", "unbind2", "split", "chunk_one_unused"])
def test_split_op_matches_the_getitem_composition_and_finite_differences(xp, cut):
    """F.split / F.unbind (one MultiOutputFunction: one gradient buffer) against split_simple /
    unbind_simple (a getitem per piece, gradients added by the engine), float64, with pieces used
    twice, pieces never used, and the input used beside its pieces; and finite differences."""
    from minivit.functional.basic import split, split_simple, unbind, unbind_simple
    one, simple = {"unbind0": (lambda x: unbind(x, 0), lambda x: unbind_simple(x, 0)),
                   "unbind2": (lambda x: unbind(x, 2), lambda x: unbind_simple(x, 2)),
                   "split": (lambda x: split(x, [1, 2], 1), lambda x: split_simple(x, [1, 2], 1)),
                   "chunk_one_unused": (lambda x: split(x, 2, 2), lambda x: split_simple(x, 2, 2))}[cut]
    x = t64(xp, np.random.default_rng(7).standard_normal((3, 3, 4)))
    grads = []
    for fn in (one, simple):
        x.grad = None
        _uses_of_pieces(fn(x), x).backward()
        grads.append(host(x.grad))
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-13, atol=1e-14)
    gradcheck(lambda t: _uses_of_pieces(one(t), t), x)


def test_split_op_is_one_node_and_backward_runs_once(monkeypatch):
    """The pieces share one op: its backward runs once per backward pass, with every piece's
    gradient (None for a piece nobody used), and retain_graph lets it run again."""
    from minivit.functional.basic import Split
    calls = []
    orig = Split.backward
    monkeypatch.setattr(Split, "backward", lambda self, grads: calls.append([g is not None for g in grads])
                        or orig(self, grads))
    x = Tensor(np.arange(12.0).reshape(3, 4), requires_grad=True)
    a, b, c = x.unbind(0)
    y = (a * 2 + c).sum()
    y.backward(retain_graph=True)
    assert calls == [[True, False, True]]
    np.testing.assert_array_equal(x.grad, [[2] * 4, [0] * 4, [1] * 4])
    y.backward()
    assert len(calls) == 2
    np.testing.assert_array_equal(x.grad, [[4] * 4, [0] * 4, [2] * 4])


# ---------------------------------------------------------------- PyTorch parity (float64)
PARITY = [
    ("add_broadcast", lambda m, a, b: m(a) + m(b)[0], ((3, 4), (1, 4))),
    ("div", lambda m, a, b: m(a) / (m(b) * m(b) + 1), ((3, 4), (3, 4))),
    ("pow", lambda m, a, b: (m(a) * m(a) + 1) ** m(b), ((3, 4), (3, 4))),
    ("matmul_batched", lambda m, a, b: m(a) @ m(b).transpose(-1, -2), ((2, 3, 4), (5, 4))),
    ("var", lambda m, a, b: m(a).var(1, keepdim=True) * m(b), ((3, 4), (3, 1))),
    ("amax", lambda m, a, b: m(a).amax(0) + m(b).amax(), ((3, 4), (2, 2))),
    ("roll", lambda m, a, b: m(a).roll((1, 2), (0, 1)) * m(b), ((3, 4), (3, 4))),
    ("cat_stack", lambda m, a, b: m.cat([m(a), m(b)], 0).sum(0) * m.stack([m(a), m(a)], 1).mean(1), ((3, 4), (2, 4))),
    ("getitem", lambda m, a, b: m(a)[m.idx([0, 2, 2])] * m(b)[1:, ::2].sum(), ((3, 4), (3, 4))),
    ("tanh_sqrt_log", lambda m, a, b: m(a).tanh() + (m(b) * m(b) + 1).sqrt().log(), ((3, 4), (3, 4))),
    ("sub_neg_exp_abs", lambda m, a, b: -(m(a) - m(b)).exp() + m(b).abs(), ((2, 3, 4), (3, 1))),
    ("sum_mean_dims", lambda m, a, b: m(a).sum((0, 2), keepdim=True) * m(b).mean(-1, keepdim=True), ((2, 3, 4), (3, 5))),
    ("max_dim", lambda m, a, b: m(a).max(1).values * m(b).max(), ((3, 4), (2, 3))),
    ("clamp", lambda m, a, b: m(a).clamp(-0.3, 0.4) * m(b), ((3, 4), (3, 4))),
    ("shapes", lambda m, a, b: m(a).permute(2, 0, 1).flatten(1).transpose(0, 1).reshape(2, -1).unsqueeze(0)
     * m(b).reshape(1, 2, 12).squeeze(0), ((2, 3, 4), (2, 12))),
    ("split_chunk", lambda m, a, b: m.cat(list(m(a).split([1, 3], dim=1))[::-1], 1) * m(b).chunk(2, 0)[1], ((2, 4), (4, 4))),
    ("where_expand", lambda m, a, b: m.where(m(a) > 0, m(a), m(b).expand(3, 4)), ((3, 4), (1, 4))),
]


class _M:
    """Builds the same expression in minivit or torch."""

    def __init__(self, lib, tensors):
        self.lib, self.tensors = lib, tensors

    def __call__(self, t):
        return t

    def cat(self, ts, dim):
        return self.lib.cat(ts, dim)

    def stack(self, ts, dim):
        return self.lib.stack(ts, dim)

    def where(self, c, a, b):
        return self.lib.where(c, a, b)

    def idx(self, lst):
        return self.lib.tensor(lst) if self.lib is not mv else np.array(lst)


@pytest.mark.parametrize("name,expr,shapes", PARITY, ids=[p[0] for p in PARITY])
def test_parity_with_torch(xp, name, expr, shapes):
    torch = torch_or_skip()
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal(s) for s in shapes]
    ours = [t64(xp, a) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    y = expr(_M(mv, ours), *ours)
    yt = expr(_M(torch, theirs), *theirs)
    g = rng.standard_normal(yt.shape)
    y.backward(xp.asarray(g))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(host(y.data), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    for o, t in zip(ours, theirs):
        np.testing.assert_allclose(host(o.grad), t.grad.numpy(), rtol=1e-10, atol=1e-12)
