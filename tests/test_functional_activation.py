"""Activations (functional/activation.py): finite differences, closed forms, PyTorch parity,
numerical stability, dropout / drop_path statistics."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit as mv
from minivit import Tensor
from minivit.functional.activation import (drop_path, dropout, gelu, log_softmax, relu, sigmoid,
                                           softmax)
from minivit.testing import gradcheck

from conftest import torch_or_skip


def host(a):
    return mv.backend.to_numpy(a)


def t64(xp, arr, grad=True):
    return Tensor(xp.asarray(arr, dtype=np.float64), requires_grad=grad)


def away_from_zero(rng, shape, lo=1e-3):
    """Values with |x| > lo: relu's kink at 0 is never inside a finite-difference step."""
    return rng.uniform(lo, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


OPS = {
    "relu": relu,
    "gelu": gelu,
    "gelu_tanh": lambda x: gelu(x, approximate="tanh"),
    "sigmoid": sigmoid,
    "softmax": lambda x: softmax(x, dim=-1),
    "softmax_dim0": lambda x: softmax(x, dim=0),
    "log_softmax": lambda x: log_softmax(x, dim=-1),
    "log_softmax_dim0": lambda x: log_softmax(x, dim=0),
}


def torch_op(torch, name):
    tf = torch.nn.functional
    return {
        "relu": tf.relu, "gelu": tf.gelu, "gelu_tanh": lambda x: tf.gelu(x, approximate="tanh"),
        "sigmoid": torch.sigmoid, "softmax": lambda x: tf.softmax(x, dim=-1),
        "softmax_dim0": lambda x: tf.softmax(x, dim=0), "log_softmax": lambda x: tf.log_softmax(x, dim=-1),
        "log_softmax_dim0": lambda x: tf.log_softmax(x, dim=0),
    }[name]


# ---------------------------------------------------------------- finite differences
@pytest.mark.parametrize("name", sorted(OPS))
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), transpose=st.booleans(),
       seed=st.integers(0, 2**16))
@settings(max_examples=10)
def test_activation_gradcheck(xp, name, shape, transpose, seed):
    rng = np.random.default_rng(seed)
    op = OPS[name]
    x = t64(xp, away_from_zero(rng, shape) * 2)
    if transpose and len(shape) >= 2:
        # the op sees a non-contiguous (transposed) view
        gradcheck(lambda x: op(x.transpose(0, -1)), x)
    else:
        gradcheck(op, x)


# ---------------------------------------------------------------- closed forms
def test_softmax_jacobian_closed_form(xp):
    """∂y/∂x = diag(y) − y yᵀ for one row; also the gradient sums to 0 along dim."""
    rng = np.random.default_rng(3)
    x, g = rng.standard_normal(5), rng.standard_normal(5)
    X = t64(xp, x)
    y = softmax(X, dim=0)
    y.backward(xp.asarray(g))
    p = np.exp(x) / np.exp(x).sum()
    jac = np.diag(p) - np.outer(p, p)
    np.testing.assert_allclose(host(y.data), p, rtol=1e-12)
    np.testing.assert_allclose(host(X.grad), jac.T @ g, rtol=1e-10, atol=1e-14)
    assert abs(host(X.grad).sum()) < 1e-12


def test_log_softmax_jacobian_closed_form(xp):
    """∂y_i/∂x_j = δ_ij − p_j."""
    rng = np.random.default_rng(4)
    x, g = rng.standard_normal((1, 4)), rng.standard_normal((1, 4))
    X = t64(xp, x)
    y = log_softmax(X, dim=1)
    y.backward(xp.asarray(g))
    p = np.exp(x[0]) / np.exp(x[0]).sum()
    jac = np.eye(4) - p[None, :]
    np.testing.assert_allclose(host(y.data)[0], x[0] - np.log(np.exp(x[0]).sum()), rtol=1e-12)
    np.testing.assert_allclose(host(X.grad)[0], jac.T @ g[0], rtol=1e-10, atol=1e-14)


def test_gelu_closed_form_values(xp):
    """Φ(0) = 1/2 so gelu'(0) = 1/2; gelu(x) → x for large x and → 0 for very negative x."""
    X = t64(xp, np.array([0.0, 30.0, -30.0]))
    y = gelu(X)
    y.sum().backward()
    np.testing.assert_allclose(host(y.data), [0.0, 30.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(host(X.grad), [0.5, 1.0, 0.0], atol=1e-12)


# ---------------------------------------------------------------- PyTorch parity
@pytest.mark.parametrize("name", sorted(OPS))
def test_activation_torch_parity(xp, name):
    torch = torch_or_skip()
    rng = np.random.default_rng(5)
    x = away_from_zero(rng, (3, 4, 5)) * 3
    g = rng.standard_normal((3, 4, 5))
    X = t64(xp, x)
    y = OPS[name](X)
    y.backward(xp.asarray(g))
    tx = torch.tensor(x, requires_grad=True)
    ty = torch_op(torch, name)(tx)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(host(y.data), ty.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(host(X.grad), tx.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_float32_matches_torch(xp, approximate):
    torch = torch_or_skip()
    rng = np.random.default_rng(6)
    x = np.concatenate([np.linspace(-10, 10, 2001), rng.standard_normal(5000) * 3]).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    X = Tensor(xp.asarray(x), requires_grad=True)
    y = gelu(X, approximate=approximate)
    y.backward(xp.asarray(g))
    assert y.dtype == np.float32 and X.grad.dtype == np.float32
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.gelu(tx, approximate=approximate)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(host(y.data), ty.detach().numpy(), rtol=1e-6, atol=1e-6)
    # Backward: the tanh form's 1 − t² term amplifies a 1-ulp difference in float32 tanh near
    # ±1 (NumPy returns −0.99999994 where PyTorch returns −1 at x ≈ −5.4) by |x|·du/dx ≈ 20.
    atol = 1e-6 if approximate == "none" else 1e-5
    np.testing.assert_allclose(host(X.grad), tx.grad.numpy(), rtol=1e-5, atol=atol)


# ---------------------------------------------------------------- stability
@pytest.mark.parametrize("row", [[-1000.0, 1.0], [1e4, -1e4], [-1e4, -1e4 + 1.0]])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_stable(xp, row, dtype):
    x = np.array([row])
    ref_log = x - (x.max() + np.log(np.exp(x - x.max()).sum()))   # log-sum-exp by hand, in float64
    for fn, ref in ((softmax, np.exp(ref_log)), (log_softmax, ref_log)):
        X = Tensor(xp.asarray(x, dtype=dtype), requires_grad=True)
        y = fn(X, dim=1)
        y.backward(xp.ones_like(y.data))
        assert np.isfinite(host(y.data)).all() and np.isfinite(host(X.grad)).all()
        np.testing.assert_allclose(host(y.data), ref, rtol=1e-6, atol=1e-30)


def test_sigmoid_stable(xp):
    X = t64(xp, np.array([-800.0, -40.0, 0.0, 40.0, 800.0]))
    y = sigmoid(X)
    y.sum().backward()
    ref = np.array([0.0, np.exp(-40.0) / (1 + np.exp(-40.0)), 0.5, 1.0, 1.0])
    np.testing.assert_allclose(host(y.data), ref, rtol=1e-12)
    assert np.isfinite(host(X.grad)).all()


def test_softmax_bad_dim(xp):
    with pytest.raises(IndexError, match="out of range"):
        softmax(t64(xp, np.ones((2, 3))), dim=2)


# ---------------------------------------------------------------- dtype
@pytest.mark.parametrize("name", sorted(OPS) + ["dropout", "drop_path"])
def test_activation_keeps_float32(xp, name):
    op = {"dropout": lambda x: dropout(x, 0.5), "drop_path": lambda x: drop_path(x, 0.5, True)}.get(name, OPS.get(name))
    X = Tensor(xp.asarray(np.random.randn(4, 3), dtype=np.float32), requires_grad=True)
    y = op(X)
    assert y.dtype == np.float32
    y.sum().backward()
    assert X.grad.dtype == np.float32


# ---------------------------------------------------------------- dropout
def test_dropout_statistics_and_scaling(xp):
    p = 0.3
    x = xp.asarray(np.random.default_rng(7).uniform(1.0, 2.0, (200, 500)))
    X = Tensor(x, requires_grad=True)
    y = dropout(X, p=p, training=True)
    yh, xh = host(y.data), host(x)
    kept = yh != 0
    # 100 000 Bernoulli(0.7) draws: std of the kept fraction is 0.0014; allow 5 sigma
    assert abs(kept.mean() - (1 - p)) < 0.008
    np.testing.assert_allclose(yh[kept], xh[kept] / (1 - p), rtol=1e-12)
    # the gradient flows only through kept units, scaled the same way
    y.sum().backward()
    np.testing.assert_allclose(host(X.grad), kept / (1 - p), rtol=1e-12)


def test_dropout_new_mask_each_call(xp):
    X = Tensor(xp.ones((50, 50)))
    a, b = host(dropout(X, 0.5).data), host(dropout(X, 0.5).data)
    assert (a != b).any()


def test_dropout_identity(xp):
    X = t64(xp, np.random.randn(3, 4))
    assert dropout(X, p=0.5, training=False) is X
    assert dropout(X, p=0.0, training=True) is X


def test_dropout_p_one_zeros(xp):
    X = t64(xp, np.random.randn(3, 4))
    y = dropout(X, p=1.0)
    y.sum().backward()
    assert (host(y.data) == 0).all() and (host(X.grad) == 0).all()


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_bad_p(xp, p):
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(t64(xp, np.ones(3)), p=p)
    with pytest.raises(ValueError, match="between 0 and 1"):
        drop_path(t64(xp, np.ones(3)), drop_prob=p, training=True)


# ---------------------------------------------------------------- drop_path
@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_drop_path_per_sample(xp, scale_by_keep):
    drop = 0.25
    x = np.random.default_rng(8).uniform(1.0, 2.0, (4000, 3, 2))
    X = Tensor(xp.asarray(x), requires_grad=True)
    y = drop_path(X, drop_prob=drop, training=True, scale_by_keep=scale_by_keep)
    yh = host(y.data)
    kept = (yh != 0).reshape(len(x), -1)
    # one coin per sample: every sample is either wholly kept or wholly dropped
    assert (kept.all(axis=1) | ~kept.any(axis=1)).all()
    rows = kept.all(axis=1)
    assert abs(rows.mean() - (1 - drop)) < 0.035        # std 0.0068 for 4000 samples: 5 sigma
    scale = 1 / (1 - drop) if scale_by_keep else 1.0
    np.testing.assert_allclose(yh[rows], x[rows] * scale, rtol=1e-12)
    y.sum().backward()
    np.testing.assert_allclose(host(X.grad), np.broadcast_to(rows[:, None, None] * scale, x.shape), rtol=1e-12)


def test_drop_path_identity(xp):
    X = t64(xp, np.random.randn(3, 4))
    assert drop_path(X, drop_prob=0.5, training=False) is X
    assert drop_path(X, drop_prob=0.0, training=True) is X
