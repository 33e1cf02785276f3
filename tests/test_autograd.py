"""The engine itself: the graph, backward, gradient accumulation, freeing, no_grad."""
import gc
import weakref

import numpy as np
import pytest

import minivit as mv
from minivit import Tensor


def leaf(xp, *shape, dtype=np.float64):
    return Tensor(xp.asarray(np.random.randn(*shape), dtype=dtype), requires_grad=True)


def host(a):
    return mv.backend.to_numpy(a)


def test_reused_tensor_accumulates(xp):
    x = leaf(xp, 3)
    y = x * x + x * 3.0 + x  # x used four times
    y.sum().backward()
    np.testing.assert_allclose(host(x.grad), 2 * host(x.data) + 4)


def test_two_backwards_accumulate_into_leaf(xp):
    x = leaf(xp, 4)
    (x * 2).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_allclose(host(x.grad), np.full(4, 5.0))


def test_shared_gradient_array_is_not_aliased(xp):
    # Add's backward hands the same array to both inputs; leaves must get their own copy.
    a, b = leaf(xp, 3), leaf(xp, 3)
    (a + b).sum().backward()
    a.grad *= 10
    np.testing.assert_allclose(host(b.grad), np.ones(3))


def test_deep_graph_needs_no_recursion(xp):
    x = leaf(xp, 2)
    y = x
    for _ in range(20000):  # far deeper than Python's recursion limit
        y = y * 1.0 + 0.0
    y.sum().backward()
    np.testing.assert_allclose(host(x.grad), np.ones(2))


def test_graph_is_freed_after_backward(xp):
    x = leaf(xp, 5)
    h = x.exp()
    fn_ref = weakref.ref(h._ctx)          # the Exp op, which holds its output array
    saved_ref = weakref.ref(h._ctx.y) if xp is np else None
    loss = (h * 2).sum()
    loss.backward()
    assert h._ctx is None and loss._ctx is None
    del h, loss
    gc.collect()
    assert fn_ref() is None
    if saved_ref is not None:
        assert saved_ref() is None


def test_results_no_backward_needs_are_freed_before_backward(xp):
    # Mul by a constant and Add save nothing: once the code drops h, its data is gone,
    # and the gradient still reaches x through the graph's Node for h.
    x = leaf(xp, 4)
    h = x * 2.0
    h_ref, data_ref = weakref.ref(h), weakref.ref(h.data) if xp is np else None
    y = (h + 1.0).sum()
    del h
    gc.collect()
    assert h_ref() is None and (data_ref is None or data_ref() is None)
    y.backward()
    np.testing.assert_allclose(host(x.grad), 2.0)
    # ... while a tensor the user keeps stays itself in the graph, and retain_grad reaches it
    h = x * 3.0
    h.retain_grad()
    ((h * h).sum()).backward()
    np.testing.assert_allclose(host(h.grad), 2 * host(h.data))


def test_retain_graph_allows_second_backward(xp):
    x = leaf(xp, 3)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(host(x.grad), 4 * host(x.data))


def test_backward_needs_scalar_or_grad(xp):
    x = leaf(xp, 3)
    with pytest.raises(RuntimeError, match="single-element"):
        (x * 2).backward()
    y = x * 2
    y.backward(xp.asarray([1.0, 0.0, 2.0]))
    np.testing.assert_allclose(host(x.grad), [2.0, 0.0, 4.0])


def test_backward_without_grad_raises(xp):
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(xp.ones(2)).sum().backward()


def test_no_grad_records_nothing(xp):
    x = leaf(xp, 3)
    with mv.no_grad():
        y = x * 2
    assert not y.requires_grad and y._ctx is None
    assert mv.is_grad_enabled()

    @mv.no_grad()
    def f(t):
        return t * 2
    assert not f(x).requires_grad


def test_detach_cuts_the_graph(xp):
    x = leaf(xp, 3)
    y = (x.detach() * x).sum()  # d/dx = x (detached copy treated as constant)
    y.backward()
    np.testing.assert_allclose(host(x.grad), host(x.data))


def test_retain_grad_on_intermediate(xp):
    x = leaf(xp, 3)
    h = x * 2
    h.retain_grad()
    (h * h).sum().backward()
    np.testing.assert_allclose(host(h.grad), 2 * host(h.data))


def test_ndarray_op_tensor_gives_tensor(xp):
    x = leaf(xp, 3)
    a = xp.asarray([1.0, 2.0, 3.0])
    for y in (a + x, a - x, a * x, a / (x * x + 1), a @ x):
        assert isinstance(y, Tensor) and y.requires_grad
    (a * x).sum().backward()
    np.testing.assert_allclose(host(x.grad), [1.0, 2.0, 3.0])


def test_python_scalars_keep_dtype(xp):
    x = Tensor(xp.ones(3, dtype=np.float32), requires_grad=True)
    for y in (x * 2.0, 2.0 - x, x / 3, x ** 2, 1 + x):
        assert y.dtype == np.float32
    (x * 2.5).sum().backward()
    assert x.grad.dtype == np.float32


def test_lists_default_to_float32_like_torch():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.float64(1.0)).dtype == np.float64
    assert Tensor(np.zeros(2)).dtype == np.float64
    assert Tensor([1, 2]).dtype.kind == "i"


def test_integer_tensor_cannot_require_grad():
    with pytest.raises(TypeError, match="floating-point"):
        Tensor(np.arange(3), requires_grad=True)


def test_comparisons_are_boolean_and_outside_graph(xp):
    x = leaf(xp, 4)
    for m in (x > 0, x >= 0, x < 0, x <= 0, x == x, x != 0):
        assert m.dtype == bool and not m.requires_grad
    assert len({x, x}) == 1  # still hashable


def test_repeated_integer_indices_add_up(xp):
    x = leaf(xp, 4, 2)
    idx = xp.asarray([0, 2, 0, 0])
    x[idx].sum().backward()
    np.testing.assert_allclose(host(x.grad)[:, 0], [3.0, 0.0, 1.0, 0.0])
    x.grad = None
    x[[1, 1]].sum().backward()  # a Python list index
    np.testing.assert_allclose(host(x.grad)[:, 1], [0.0, 2.0, 0.0, 0.0])


def test_properties(xp):
    x = Tensor(xp.zeros((2, 3), dtype=np.float32))
    assert x.shape == (2, 3) and x.ndim == 2 and x.dtype == np.float32
    assert x.device == ("cpu" if xp is np else "cuda")
    assert x.numel() == 6 and x.size(1) == 3 and len(x) == 2
    assert "tensor(" in repr(x)


def test_to_dtype_is_differentiable(xp):
    x = leaf(xp, 3, dtype=np.float64)
    y = x.float()
    assert y.dtype == np.float32
    (y * 2).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_allclose(host(x.grad), 2.0)


def test_function_apply_is_pytorchs_spelling_of_calling_a_fresh_op(xp):
    """``Op.apply(x, ...)`` == ``Op()(x, ...)`` (PyTorch's habit), keywords going to ``__init__``."""
    from minivit.autograd import Function
    from minivit.backend import get_array_module

    class Exp(Function):
        def forward(self, x):
            self.y = get_array_module(x).exp(x)
            return self.y

        def backward(self, gy):
            return gy * self.y

    class Scale(Function):
        def __init__(self, factor=1.0):
            self.factor = factor

        def forward(self, x, y):
            return self.factor * x * y

        def backward(self, gy):
            return self.factor * gy, self.factor * gy

    a = Tensor(xp.asarray([0.0, 1.0, -2.0]), requires_grad=True)
    b = Tensor(xp.asarray([0.0, 1.0, -2.0]), requires_grad=True)
    ya, yb = Exp.apply(a), Exp()(b)
    assert isinstance(ya, Tensor) and xp.array_equal(ya.data, yb.data)
    assert type(ya._ctx) is Exp and ya._ctx is not Exp.apply(a)._ctx     # a fresh node per call
    ya.sum().backward()
    yb.sum().backward()
    assert xp.array_equal(a.grad, b.grad) and xp.allclose(a.grad, xp.exp(a.data))
    z = Scale.apply(a, b, factor=3.0)
    assert xp.array_equal(z.data, 3.0 * a.data * b.data)
