"""linear (functional/linear.py): finite differences, closed form, PyTorch parity, errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit as mv
from minivit import Tensor
from minivit.functional.linear import linear
from minivit.testing import gradcheck

from conftest import torch_or_skip


def host(a):
    return mv.backend.to_numpy(a)


def t64(xp, arr, grad=True):
    return Tensor(xp.asarray(arr, dtype=np.float64), requires_grad=grad)


@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=3), n_in=st.integers(1, 4),
       n_out=st.integers(1, 4), bias=st.booleans(), transpose=st.booleans(), seed=st.integers(0, 2**16))
@settings(max_examples=20)
def test_linear_gradcheck(xp, lead, n_in, n_out, bias, transpose, seed):
    rng = np.random.default_rng(seed)
    if transpose and lead:
        # x arrives as (in, ..., B) and is transposed inside: the op sees a non-contiguous input,
        # and so is the weight, stored as (in, out).
        x = t64(xp, rng.standard_normal([n_in] + lead[1:] + [lead[0]]))
        w = t64(xp, rng.standard_normal((n_in, n_out)))
        prep = lambda x, w: (x.transpose(0, -1), w.transpose(0, 1))  # noqa: E731
    else:
        x = t64(xp, rng.standard_normal(lead + [n_in]))
        w = t64(xp, rng.standard_normal((n_out, n_in)))
        prep = lambda x, w: (x, w)  # noqa: E731
    if bias:
        b = t64(xp, rng.standard_normal(n_out))
        gradcheck(lambda x, w, b: linear(*prep(x, w), b), x, w, b)
    else:
        gradcheck(lambda x, w: linear(*prep(x, w)), x, w)


def test_linear_closed_form(xp):
    """∂L/∂W = Gᵀ X, ∂L/∂x = G W, ∂L/∂b = Σ G over every leading dim."""
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    g = rng.standard_normal((2, 3, 5))
    X, W, B = t64(xp, x), t64(xp, w), t64(xp, b)
    y = linear(X, W, B)
    np.testing.assert_allclose(host(y.data), x @ w.T + b, rtol=1e-12)
    y.backward(xp.asarray(g))
    np.testing.assert_allclose(host(W.grad), g.reshape(-1, 5).T @ x.reshape(-1, 4), rtol=1e-12)
    np.testing.assert_allclose(host(X.grad), g @ w, rtol=1e-12)
    np.testing.assert_allclose(host(B.grad), g.sum(axis=(0, 1)), rtol=1e-12)


def test_linear_skips_unneeded_input_grad(xp):
    x = t64(xp, np.random.randn(3, 4), grad=False)
    w = t64(xp, np.random.randn(2, 4))
    linear(x, w).sum().backward()
    assert x.grad is None
    np.testing.assert_allclose(host(w.grad), np.ones((3, 2)).T @ host(x.data))


def test_linear_1d_input(xp):
    x, w = t64(xp, np.random.randn(4)), t64(xp, np.random.randn(3, 4))
    y = linear(x, w)
    assert y.shape == (3,)
    gradcheck(lambda x, w: linear(x, w), x, w)


def test_linear_torch_parity(xp):
    torch = torch_or_skip()
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    g = rng.standard_normal((2, 3, 5))
    X, W, B = t64(xp, x), t64(xp, w), t64(xp, b)
    y = linear(X, W, B)
    y.backward(xp.asarray(g))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(host(y.data), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    for ours, theirs in ((X, tx), (W, tw), (B, tb)):
        np.testing.assert_allclose(host(ours.grad), theirs.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_linear_keeps_float32(xp):
    x = Tensor(xp.ones((2, 3), dtype=np.float32), requires_grad=True)
    w = Tensor(xp.ones((4, 3), dtype=np.float32), requires_grad=True)
    b = Tensor(xp.ones(4, dtype=np.float32), requires_grad=True)
    y = linear(x, w, b)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == np.float32


def test_linear_errors(xp):
    x, w = t64(xp, np.ones((2, 3))), t64(xp, np.ones((4, 3)))
    with pytest.raises(ValueError, match="in_features"):
        linear(t64(xp, np.ones((2, 5))), w)
    with pytest.raises(ValueError, match="bias must have shape"):
        linear(x, w, t64(xp, np.ones(3)))
    with pytest.raises(ValueError, match="2-D"):
        linear(x, t64(xp, np.ones(3)))
    with pytest.raises(TypeError, match="float32"):
        linear(x, Tensor(xp.ones((4, 3), dtype=np.float32)))
