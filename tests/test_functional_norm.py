"""layer_norm and batch_norm (functional/norm.py): finite differences, closed forms,
PyTorch parity (running statistics included), stability, errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit as mv
from minivit import Tensor
from minivit.functional.norm import batch_norm, layer_norm
from minivit.testing import gradcheck

from conftest import torch_or_skip


def host(a):
    return mv.backend.to_numpy(a)


def t64(xp, arr, grad=True):
    return Tensor(xp.asarray(arr, dtype=np.float64), requires_grad=grad)


# =========================================================================== layer norm
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
       norm=st.lists(st.integers(1, 4), min_size=1, max_size=2),
       affine=st.sampled_from(["none", "weight", "bias", "both"]), transpose=st.booleans(),
       seed=st.integers(0, 2**16))
@settings(max_examples=20)
def test_layer_norm_gradcheck(xp, lead, norm, affine, transpose, seed):
    rng = np.random.default_rng(seed)
    shape = lead + norm
    ns = tuple(norm)
    w = t64(xp, rng.uniform(0.5, 1.5, ns)) if affine in ("weight", "both") else None
    b = t64(xp, rng.standard_normal(ns)) if affine in ("bias", "both") else None
    params = [p for p in (w, b) if p is not None]

    def fn(x, *ps):
        ps = list(ps)
        ww = ps.pop(0) if w is not None else None
        bb = ps.pop(0) if b is not None else None
        if transpose:
            x = x.transpose(0, -1)
        return layer_norm(x, ns, ww, bb)

    if transpose:  # stored with first and last dims swapped: the op sees a non-contiguous view
        shape = [shape[-1]] + shape[1:-1] + [shape[0]] if len(shape) > 1 else shape
    x = t64(xp, rng.standard_normal(shape))
    gradcheck(fn, x, *params)


def test_layer_norm_closed_form(xp):
    """Output rows have mean 0 and variance 1; the input gradient sums to 0 over the
    normalised dims and is orthogonal to x̂ (shifting or scaling a row changes nothing)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5)) * 3 + 2
    X = t64(xp, x)
    W = t64(xp, rng.uniform(0.5, 1.5, (4, 5)))
    y0 = layer_norm(X, (4, 5))
    yh = host(y0.data).reshape(3, -1)
    np.testing.assert_allclose(yh.mean(axis=1), 0, atol=1e-12)
    v = x.reshape(3, -1).var(axis=1)
    np.testing.assert_allclose(yh.var(axis=1), v / (v + 1e-5), rtol=1e-12)   # var(x̂) = var/(var + ε)
    # with ε = 0, x̂ is exactly scale-invariant, so the gradient is orthogonal to x̂ too
    y = layer_norm(X, (4, 5), W, eps=0.0)
    y.backward(xp.asarray(rng.standard_normal((3, 4, 5))))
    gx = host(X.grad).reshape(3, -1)
    np.testing.assert_allclose(gx.sum(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose((gx * host(layer_norm(X, (4, 5), eps=0.0).data).reshape(3, -1)).sum(axis=1),
                               0, atol=1e-12)


@pytest.mark.parametrize("affine", [False, True])
def test_layer_norm_torch_parity(xp, affine):
    torch = torch_or_skip()
    rng = np.random.default_rng(2)
    x, g = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))
    w, b = rng.uniform(0.5, 1.5, (4, 5)), rng.standard_normal((4, 5))
    X, W, B = t64(xp, x), t64(xp, w), t64(xp, b)
    y = layer_norm(X, (4, 5), W if affine else None, B if affine else None, eps=1e-6)
    y.backward(xp.asarray(g))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.layer_norm(tx, (4, 5), tw if affine else None, tb if affine else None, eps=1e-6)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(host(y.data), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(host(X.grad), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    if affine:
        np.testing.assert_allclose(host(W.grad), tw.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(host(B.grad), tb.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_constant_row_finite(xp, dtype):
    x = np.array([[3.0] * 6, [1e4] * 6, list(range(6))])
    X = Tensor(xp.asarray(x, dtype=dtype), requires_grad=True)
    B = Tensor(xp.asarray(np.arange(6.0), dtype=dtype))
    y = layer_norm(X, 6, bias=B)
    y.backward(xp.asarray(np.random.randn(3, 6), dtype=dtype))
    yh = host(y.data)
    assert np.isfinite(yh).all() and np.isfinite(host(X.grad)).all()
    np.testing.assert_allclose(yh[:2], np.broadcast_to(np.arange(6.0), (2, 6)), atol=1e-3)  # x̂ = 0


def test_layer_norm_keeps_float32(xp):
    X = Tensor(xp.asarray(np.random.randn(2, 3), dtype=np.float32), requires_grad=True)
    W = Tensor(xp.ones(3, dtype=np.float32), requires_grad=True)
    B = Tensor(xp.zeros(3, dtype=np.float32), requires_grad=True)
    y = layer_norm(X, 3, W, B)
    assert y.dtype == np.float32
    y.sum().backward()
    assert X.grad.dtype == W.grad.dtype == B.grad.dtype == np.float32


def test_layer_norm_errors(xp):
    X = t64(xp, np.ones((2, 3)))
    with pytest.raises(ValueError, match="normalized_shape"):
        layer_norm(X, 4)
    with pytest.raises(ValueError, match="weight must have shape"):
        layer_norm(X, 3, t64(xp, np.ones(4)))
    with pytest.raises(TypeError, match="float32"):
        layer_norm(X, 3, Tensor(xp.ones(3, dtype=np.float32)))


# =========================================================================== batch norm
@given(shape=st.sampled_from([(3, 2), (2, 3), (2, 2, 3), (2, 3, 2, 2), (1, 2, 3), (3, 1)]),
       training=st.booleans(), affine=st.booleans(), transpose=st.booleans(), seed=st.integers(0, 2**16))
@settings(max_examples=20)
def test_batch_norm_gradcheck(xp, shape, training, affine, transpose, seed):
    rng = np.random.default_rng(seed)
    c = shape[1]
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    params = [t64(xp, rng.uniform(0.5, 1.5, c)), t64(xp, rng.standard_normal(c))] if affine else []
    stored = shape[::-1] if transpose else shape

    def fn(x, *p):
        if transpose:  # non-contiguous input
            x = x.permute(*range(x.ndim - 1, -1, -1))
        # fresh copies: the running statistics are updated in place on every call
        return batch_norm(x, xp.array(rm), xp.array(rv), *p, training=training)

    gradcheck(fn, t64(xp, rng.standard_normal(stored)), *params)


@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_batch_norm_torch_parity(xp, shape, training, as_tensor):
    torch = torch_or_skip()
    rng = np.random.default_rng(3)
    c = shape[1]
    x, g = rng.standard_normal(shape) * 2 + 1, rng.standard_normal(shape)
    w, b = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    X, W, B = t64(xp, x), t64(xp, w), t64(xp, b)
    our_rm, our_rv = xp.asarray(rm.copy()), xp.asarray(rv.copy())
    rm_arg, rv_arg = (Tensor(our_rm), Tensor(our_rv)) if as_tensor else (our_rm, our_rv)
    y = batch_norm(X, rm_arg, rv_arg, W, B, training=training, momentum=0.2, eps=1e-4)
    y.backward(xp.asarray(g))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    t_rm, t_rv = torch.tensor(rm.copy()), torch.tensor(rv.copy())
    ty = torch.nn.functional.batch_norm(tx, t_rm, t_rv, tw, tb, training=training, momentum=0.2, eps=1e-4)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(host(y.data), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    for ours, theirs in ((X, tx), (W, tw), (B, tb)):
        np.testing.assert_allclose(host(ours.grad), theirs.grad.numpy(), rtol=1e-10, atol=1e-12)
    # running statistics: updated in place (on the very arrays we passed) in training only
    np.testing.assert_allclose(host(our_rm), t_rm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(host(our_rv), t_rv.numpy(), rtol=1e-12)
    assert training == (not np.allclose(host(our_rm), rm))


def test_batch_norm_running_stats_formula(xp):
    """running ← 0.9·running + 0.1·batch, the variance unbiased (n − 1)."""
    x = np.random.default_rng(4).standard_normal((6, 2, 3))
    rm, rv = xp.zeros(2), xp.ones(2)
    batch_norm(t64(xp, x), rm, rv, training=True)
    flat = x.transpose(1, 0, 2).reshape(2, -1)
    np.testing.assert_allclose(host(rm), 0.1 * flat.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(host(rv), 0.9 + 0.1 * flat.var(axis=1, ddof=1), rtol=1e-12)


def test_batch_norm_train_normalises_per_channel(xp):
    x = np.random.default_rng(5).standard_normal((8, 3, 4)) * 5 - 2
    y = host(batch_norm(t64(xp, x), None, None, training=True).data)
    np.testing.assert_allclose(y.mean(axis=(0, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2)), 1, rtol=1e-4)


def test_batch_norm_keeps_float32(xp):
    X = Tensor(xp.asarray(np.random.randn(4, 3, 2), dtype=np.float32), requires_grad=True)
    W = Tensor(xp.ones(3, dtype=np.float32), requires_grad=True)
    rm, rv = xp.zeros(3, dtype=np.float32), xp.ones(3, dtype=np.float32)
    for training in (True, False):
        X.grad = None
        y = batch_norm(X, rm, rv, W, training=training)
        assert y.dtype == np.float32 and rm.dtype == rv.dtype == np.float32
        y.sum().backward()
        assert X.grad.dtype == W.grad.dtype == np.float32


def test_batch_norm_errors(xp):
    X = t64(xp, np.ones((4, 3)))
    with pytest.raises(ValueError, match="running_mean"):
        batch_norm(X, None, None, training=False)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        batch_norm(X, xp.zeros(2), xp.ones(3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm(t64(xp, np.ones((1, 3))), None, None, training=True)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        batch_norm(t64(xp, np.ones(3)), xp.zeros(3), xp.ones(3))
