"""Losses (functional/loss.py): finite differences, closed forms, PyTorch parity (label
smoothing, probability targets, weights, ignore_index, kl_div reductions), stability, errors."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit as mv
from minivit import backend
from minivit.testing import strict_cupy
from minivit import Tensor
from minivit.functional.loss import cross_entropy, kl_div, mse_loss, nll_loss
from minivit.testing import gradcheck

from conftest import torch_or_skip


def host(a):
    return mv.backend.to_numpy(a)


def t64(xp, arr, grad=True):
    return Tensor(xp.asarray(arr, dtype=np.float64), requires_grad=grad)


def probs(rng, shape, axis=1):
    p = rng.uniform(0.05, 1.0, shape)
    return p / p.sum(axis=axis, keepdims=True)


def run_backward(y, xp, rng):
    """Backward with a random upstream gradient (a plain ones would hide reduction-scale bugs less)."""
    g = rng.standard_normal(y.shape)
    y.backward(xp.asarray(g))
    return g


# =========================================================================== cross-entropy
@st.composite
def ce_case(draw):
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    extra = draw(st.lists(st.integers(1, 3), min_size=0, max_size=1))
    return dict(shape=(n, c, *extra), probs=draw(st.booleans()), weight=draw(st.booleans()),
                smoothing=draw(st.sampled_from([0.0, 0.1, 0.5])),
                reduction=draw(st.sampled_from(["mean", "sum", "none"])),
                ignore=draw(st.booleans()), transpose=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@given(case=ce_case())
@settings(max_examples=30)
def test_cross_entropy_gradcheck(xp, case):
    rng = np.random.default_rng(case["seed"])
    shape, c = case["shape"], case["shape"][1]
    weight = xp.asarray(rng.uniform(0.5, 2.0, c)) if case["weight"] else None
    kw = dict(weight=weight, reduction=case["reduction"], label_smoothing=case["smoothing"])
    transpose = case["transpose"] and len(shape) == 2
    x = t64(xp, rng.standard_normal(shape[::-1] if transpose else shape) * 2)
    prep = (lambda x: x.transpose(0, 1)) if transpose else (lambda x: x)
    if case["probs"]:
        t = t64(xp, probs(rng, shape))   # the target's gradient is checked too
        gradcheck(lambda x, t: cross_entropy(prep(x), t, **kw), x, t)
    else:
        target = rng.integers(0, c, (shape[0],) + shape[2:])
        if case["ignore"]:
            target.reshape(-1)[1::2] = -100   # every other one ignored; the first is always kept
        gradcheck(lambda x: cross_entropy(prep(x), xp.asarray(target), **kw), x)


def test_cross_entropy_closed_form(xp):
    """Mean cross-entropy of class indices: ∂L/∂x = (softmax(x) − onehot(y)) / N."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
    X = t64(xp, x)
    loss = cross_entropy(X, xp.asarray(y))
    loss.backward()
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    onehot = np.eye(4)[y]
    np.testing.assert_allclose(host(loss.data), -np.log(p[np.arange(5), y]).mean(), rtol=1e-12)
    np.testing.assert_allclose(host(X.grad), (p - onehot) / 5, rtol=1e-10, atol=1e-15)


CE_CASES = [
    # (input shape, target kind, weight, label_smoothing, reduction, ignore_index)
    ((5, 4), "index", False, 0.0, "mean", False),
    ((5, 4), "index", True, 0.0, "mean", False),
    ((5, 4), "index", False, 0.2, "mean", False),
    ((5, 4), "index", True, 0.2, "mean", True),
    ((5, 4), "index", True, 0.2, "sum", True),
    ((5, 4), "index", True, 0.2, "none", True),
    ((5, 4), "index", False, 0.1, "none", False),
    ((2, 4, 3, 2), "index", True, 0.1, "mean", True),
    ((4,), "index", False, 0.1, "none", False),
    ((5, 4), "probs", False, 0.0, "mean", False),
    ((5, 4), "probs", True, 0.3, "mean", False),
    ((5, 4), "probs", True, 0.3, "sum", False),
    ((5, 4), "probs", False, 0.3, "none", False),
    ((2, 4, 3), "probs", True, 0.1, "mean", False),
    ((4,), "probs", True, 0.1, "mean", False),
]


@pytest.mark.parametrize("shape,kind,use_weight,smoothing,reduction,ignore", CE_CASES)
def test_cross_entropy_torch_parity(xp, shape, kind, use_weight, smoothing, reduction, ignore):
    torch = torch_or_skip()
    rng = np.random.default_rng(2)
    c = shape[0] if len(shape) == 1 else shape[1]
    x = rng.standard_normal(shape) * 3
    w = rng.uniform(0.5, 2.0, c)
    X = t64(xp, x)
    tx = torch.tensor(x, requires_grad=True)
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    if kind == "index":
        tshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
        t = rng.integers(0, c, tshape)
        if ignore:
            t.reshape(-1)[::3] = 7   # an ignore_index that is no class
            kw["ignore_index"] = 7
        ours_t, torch_t = xp.asarray(t), torch.tensor(t)
    else:
        t = probs(rng, shape, axis=0 if len(shape) == 1 else 1)
        ours_t, torch_t = t64(xp, t), torch.tensor(t, requires_grad=True)
    loss = cross_entropy(X, ours_t, xp.asarray(w) if use_weight else None, **kw)
    g = run_backward(loss, xp, rng)
    tl = torch.nn.functional.cross_entropy(tx, torch_t, torch.tensor(w) if use_weight else None, **kw)
    tl.backward(torch.tensor(g))
    assert loss.shape == tuple(tl.shape)
    np.testing.assert_allclose(host(loss.data), tl.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(host(X.grad), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    if kind == "probs":
        np.testing.assert_allclose(host(ours_t.grad), torch_t.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_huge_logits(xp, dtype):
    x = np.array([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    X = Tensor(xp.asarray(x, dtype=dtype), requires_grad=True)
    loss = cross_entropy(X, xp.asarray([0, 1, 2]), reduction="none")
    loss.backward(xp.ones(3, dtype=dtype))
    assert loss.dtype == dtype and np.isfinite(host(loss.data)).all() and np.isfinite(host(X.grad)).all()
    np.testing.assert_allclose(host(loss.data), [0.0, 2e4, np.log(3)], rtol=1e-6)
    np.testing.assert_allclose(host(X.grad), [[0, 0, 0], [1, -1, 0], [1 / 3, 1 / 3, -2 / 3]], atol=1e-6)


def test_cross_entropy_all_ignored_is_nan(xp):
    """As PyTorch: the mean over zero kept targets is 0/0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        loss = cross_entropy(t64(xp, np.ones((2, 3))), xp.asarray([-100, -100]))
    assert np.isnan(host(loss.data))


# =========================================================================== nll_loss
@given(n=st.integers(1, 4), c=st.integers(1, 4), weight=st.booleans(),
       reduction=st.sampled_from(["mean", "sum", "none"]), seed=st.integers(0, 2**16))
@settings(max_examples=15)
def test_nll_loss_gradcheck(xp, n, c, weight, reduction, seed):
    rng = np.random.default_rng(seed)
    w = xp.asarray(rng.uniform(0.5, 2.0, c)) if weight else None
    t = xp.asarray(rng.integers(0, c, n))
    gradcheck(lambda x: nll_loss(x, t, w, reduction=reduction), t64(xp, rng.standard_normal((n, c))))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_torch_parity(xp, reduction):
    torch = torch_or_skip()
    rng = np.random.default_rng(3)
    x, w, t = rng.standard_normal((6, 4, 2)), rng.uniform(0.5, 2.0, 4), rng.integers(0, 4, (6, 2))
    t[0, 0] = -100
    X, tx = t64(xp, x), torch.tensor(x, requires_grad=True)
    loss = nll_loss(X, xp.asarray(t), xp.asarray(w), reduction=reduction)
    g = run_backward(loss, xp, rng)
    tl = torch.nn.functional.nll_loss(tx, torch.tensor(t), torch.tensor(w), reduction=reduction)
    tl.backward(torch.tensor(g))
    np.testing.assert_allclose(host(loss.data), tl.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(host(X.grad), tx.grad.numpy(), rtol=1e-12, atol=1e-14)


# =========================================================================== kl_div
KL_REDUCTIONS = ["mean", "batchmean", "sum", "none"]


@pytest.mark.parametrize("log_target", [False, True])
@given(shapes=st.sampled_from([((3, 4), (3, 4)), ((2, 3, 2), (2, 3, 2)), ((1, 3), (1, 3)),
                               ((3, 4), (4,)), ((3, 1), (3, 4))]),
       reduction=st.sampled_from(KL_REDUCTIONS), transpose=st.booleans(), seed=st.integers(0, 2**16))
@settings(max_examples=15)
def test_kl_div_gradcheck(xp, log_target, shapes, reduction, transpose, seed):
    rng = np.random.default_rng(seed)
    x = t64(xp, np.log(rng.uniform(0.05, 1.0, shapes[0])))
    t_vals = rng.uniform(0.05, 1.0, shapes[1])   # t > 0: t·log t is smooth there
    t = t64(xp, np.log(t_vals) if log_target else t_vals)
    if transpose and len(shapes[0]) == 2 and shapes[0] == shapes[1]:
        x = t64(xp, host(x.data).T.copy())
        gradcheck(lambda x, t: kl_div(x.transpose(0, 1), t, reduction, log_target), x, t)
    else:
        gradcheck(lambda x, t: kl_div(x, t, reduction=reduction, log_target=log_target), x, t)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")   # torch's note on 'mean'
@pytest.mark.parametrize("reduction", KL_REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_torch_parity(xp, reduction, log_target):
    torch = torch_or_skip()
    rng = np.random.default_rng(4)
    x = np.log(probs(rng, (3, 5)))
    t = probs(rng, (3, 5))
    t[0, 1] = t[2, 4] = 0.0       # zero targets: 0·log 0 = 0 in the forward
    if log_target:
        t = np.log(t + 1e-3)
    X, T = t64(xp, x), t64(xp, t)
    tx, tt = torch.tensor(x, requires_grad=True), torch.tensor(t, requires_grad=True)
    loss = kl_div(X, T, reduction=reduction, log_target=log_target)
    g = run_backward(loss, xp, rng)
    tl = torch.nn.functional.kl_div(tx, tt, reduction=reduction, log_target=log_target)
    tl.backward(torch.tensor(g))
    np.testing.assert_allclose(host(loss.data), tl.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(host(X.grad), tx.grad.numpy(), rtol=1e-12, atol=1e-14)
    # at t == 0 the target gradient does not exist: NaN in both
    np.testing.assert_allclose(host(T.grad), tt.grad.numpy(), rtol=1e-12, atol=1e-14, equal_nan=True)


def test_kl_div_closed_form(xp):
    """KL(p‖p) = 0 with zero input gradient direction sum; batchmean = Σ/N."""
    rng = np.random.default_rng(5)
    p = probs(rng, (4, 3))
    q = probs(rng, (4, 3))
    X = t64(xp, np.log(q))
    loss = kl_div(X, t64(xp, p, grad=False), reduction="batchmean")
    np.testing.assert_allclose(host(loss.data), (p * (np.log(p) - np.log(q))).sum() / 4, rtol=1e-12)
    loss.backward()
    np.testing.assert_allclose(host(X.grad), -p / 4, rtol=1e-12)
    same = kl_div(t64(xp, np.log(p)), t64(xp, p), reduction="sum")
    assert abs(float(host(same.data))) < 1e-12


# =========================================================================== mse_loss
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=3), seed=st.integers(0, 2**16))
@settings(max_examples=10)
def test_mse_loss_gradcheck(xp, reduction, shape, seed):
    rng = np.random.default_rng(seed)
    gradcheck(lambda x, t: mse_loss(x, t, reduction), t64(xp, rng.standard_normal(shape)),
              t64(xp, rng.standard_normal(shape)))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss_torch_parity(xp, reduction):
    torch = torch_or_skip()
    rng = np.random.default_rng(6)
    x, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    X, T = t64(xp, x), t64(xp, t)
    tx, tt = torch.tensor(x, requires_grad=True), torch.tensor(t, requires_grad=True)
    loss = mse_loss(X, T, reduction)
    g = run_backward(loss, xp, rng)
    tl = torch.nn.functional.mse_loss(tx, tt, reduction=reduction)
    tl.backward(torch.tensor(g))
    np.testing.assert_allclose(host(loss.data), tl.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(host(X.grad), tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(host(T.grad), tt.grad.numpy(), rtol=1e-12)


def test_mse_loss_broadcast_warns(xp):
    X, T = t64(xp, np.ones((3, 2))), t64(xp, np.zeros(2))
    with pytest.warns(UserWarning, match="broadcast"):
        loss = mse_loss(X, T)
    assert float(host(loss.data)) == 1.0


# =========================================================================== dtypes and errors
LOSSES = {
    "ce_index": lambda x, xp: cross_entropy(x, xp.asarray([0, 2]), label_smoothing=0.1),
    "ce_probs": lambda x, xp: cross_entropy(x, Tensor(xp.full((2, 3), 1 / 3, dtype=x.dtype))),
    "ce_weight": lambda x, xp: cross_entropy(x, xp.asarray([0, 2]), xp.ones(3, dtype=x.dtype)),
    "nll": lambda x, xp: nll_loss(x, xp.asarray([0, 2])),
    "kl_div": lambda x, xp: kl_div(x, Tensor(xp.full((2, 3), 1 / 3, dtype=x.dtype)), "batchmean"),
    "mse": lambda x, xp: mse_loss(x, Tensor(xp.zeros((2, 3), dtype=x.dtype))),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_keeps_float32(xp, name):
    X = Tensor(xp.asarray(np.random.randn(2, 3), dtype=np.float32), requires_grad=True)
    loss = LOSSES[name](X, xp)
    assert loss.dtype == np.float32 and loss.shape == ()
    loss.backward()
    assert X.grad.dtype == np.float32


def test_loss_errors(xp):
    x = t64(xp, np.random.randn(2, 3))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        cross_entropy(x, xp.asarray([0, 1, 2]))
    with pytest.raises(ValueError, match="input's shape"):
        cross_entropy(x, t64(xp, np.ones((2, 4)) / 4))
    # Bad class indices: on NumPy the call raises; on CuPy (no sync in the step) reading the loss does.
    with pytest.raises(IndexError, match=r"\[0, 2\] for 3 classes.*\[5\]"):
        cross_entropy(x, xp.asarray([0, 5])).item()
    with pytest.raises(IndexError, match=r"\[-1\]"):
        nll_loss(x, xp.asarray([-1, 0]), reduction="none").numpy()
    with pytest.raises(TypeError, match="bool"):
        cross_entropy(x, xp.asarray([True, False]))
    with pytest.raises(TypeError, match="integer class indices"):
        nll_loss(x, t64(xp, np.ones((2, 3))))
    with pytest.raises(TypeError, match="floating point"):
        cross_entropy(Tensor(xp.ones((2, 3), dtype=np.int64)), xp.asarray([0, 1]))
    with pytest.raises(TypeError, match="weight is float32"):
        cross_entropy(x, xp.asarray([0, 1]), xp.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        cross_entropy(x, xp.asarray([0, 1]), xp.ones(2))
    with pytest.raises(TypeError, match="float32"):
        cross_entropy(x, Tensor(xp.ones((2, 3), dtype=np.float32)))
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(x, xp.asarray([0, 1]), reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(x, xp.asarray([0, 1]), label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction"):
        kl_div(x, x, reduction="batch")
    with pytest.raises(TypeError, match="float32"):
        kl_div(x, Tensor(xp.ones((2, 3), dtype=np.float32)))
    with pytest.raises(ValueError, match="do not broadcast"):
        mse_loss(x, t64(xp, np.ones(4)))


def test_bad_class_indices_on_the_device_cost_no_sync(xp):
    """On CuPy the label check stays on the device (no sync in the step): a bad label's row
    of the loss and of the gradient is NaN, and reading the loss raises, naming the label."""
    if xp is np:
        pytest.skip("device syncs: the CuPy run only")
    if not backend.is_strict_standin():
        pytest.skip("counts device syncs: needs the strict CuPy stand-in (not a real GPU)")
    x = t64(xp, np.random.default_rng(0).standard_normal((4, 3)))
    with strict_cupy.count_syncs() as syncs:
        good = cross_entropy(x, xp.asarray([0, 1, 2, -100]))
        good.backward()
        bad = cross_entropy(x, xp.asarray([0, 7, 2, 1]), reduction="none")
    assert syncs == []
    assert np.isfinite(good.item())
    rows = backend.to_numpy(bad.data)
    assert np.isnan(rows[1]) and np.isfinite(rows[[0, 2, 3]]).all()
    with pytest.raises(IndexError, match=r"for 3 classes.*\[7\]"):
        bad.numpy()
    with pytest.raises(IndexError, match=r"\[3\]"):
        nll_loss(x, xp.asarray([0, 3, 1, 1])).item()
