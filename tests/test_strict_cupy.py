"""The strict CuPy stand-in (minivit/testing/strict_cupy.py) itself: each of its rules has a test
here that fails if the rule is taken out. These run where the stand-in is installed (no GPU,
cupy-cuda12x importable: tests/conftest.py installs it) and skip elsewhere."""
import copy
import inspect
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from minivit import backend
from minivit.functional import fused_cuda
from minivit.testing import strict_cupy

pytestmark = pytest.mark.skipif(not backend.is_strict_standin(),
                                reason=strict_cupy.available() or "a real CuPy (or MINIVIT_STRICT_CUPY=0): no stand-in")


@pytest.fixture
def cp():
    return backend.xp_for("cuda")


def _line():
    """The caller's line number."""
    return inspect.currentframe().f_back.f_lineno


# --------------------------------------------------------------------------- the install
def test_installed_as_cupy_and_cupyx(cp):
    import cupy
    import cupyx
    import cupyx.scipy.special
    assert cupy is cp and cupy.__minivit_strict_standin__ and cupyx.__minivit_strict_standin__
    assert backend.cupy_available() and backend.default_device() == "cpu"   # not a GPU to pick by itself
    assert backend.to_device(np.ones(2), "cuda").__class__ is cp.ndarray
    assert not issubclass(cp.ndarray, np.ndarray)
    assert cupyx.scipy.special.erf(cp.zeros(2)).__class__ is cp.ndarray


def test_unavailable_without_real_cupy():
    code = ("import sys, os; sys.modules['cupy'] = None; os.environ['MINIVIT_STRICT_CUPY'] = '1'\n"
            "from minivit import backend\nfrom minivit.testing import strict_cupy\n"
            "print(backend.cupy_available(), strict_cupy.available())")
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == f"False {strict_cupy.NOT_INSTALLED}"


# --------------------------------------------------------------------------- the boundary
def test_implicit_conversion_raises_cupys_error(cp):
    a = cp.ones(3)
    assert type(np.float32(2) * a) is cp.ndarray             # a NumPy scalar on the left: CuPy's NEP 13
    for f in (np.asarray, np.array, np.exp, np.sum, lambda x: np.multiply(x, x), lambda x: np.ones(3) + x,
              lambda x: np.testing.assert_allclose(x, 1.0)):
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
            f(a)


def test_host_array_mixed_into_device_op_raises(cp):
    a, h = cp.ones(3), np.ones(3)
    for f in (lambda: a + h, lambda: a * h, lambda: cp.exp(h), lambda: cp.add(a, h),
              lambda: cp.concatenate([a, h]), lambda: cp.maximum(a, [1.0, 2.0, 3.0]), lambda: a.dot(h)):
        with pytest.raises(TypeError, match="host numpy.ndarray|host builtins.list|Implicit"):
            f()
    with pytest.raises(TypeError, match="Unsupported type"):
        a + object()                                   # no __array_priority__ above CuPy's: refused
    with pytest.raises(AttributeError):
        a.flags.writeable                              # CuPy's flags: c_contiguous, f_contiguous, owndata
    # scalars are fine, as in CuPy; cupy.asarray is the explicit transfer, and it copies
    assert float((a + 1.0 + np.float32(2)).sum()) == 12.0
    d = cp.asarray(h)
    h[0] = 7.0
    assert d.get()[0] == 1.0 and cp.array([1, 2]).dtype == np.int64


def test_only_cupys_names_and_keywords(cp):
    assert hasattr(np, "busday_count")
    with pytest.raises(AttributeError, match="has no attribute 'busday_count'"):
        cp.busday_count
    with pytest.raises(AttributeError, match="no attribute 'nonexistent_method'"):
        cp.ones(2).nonexistent_method()
    a = cp.ones((2, 3))
    np.sum(np.ones(2), initial=1.0)                                 # NumPy takes it ...
    with pytest.raises(TypeError, match="unexpected keyword argument 'initial'"):
        cp.sum(a, initial=1.0)                                      # ... CuPy does not
    with pytest.raises(TypeError, match="unexpected keyword argument 'initial'"):
        a.sum(initial=1.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'where'"):
        cp.exp(a, where=a > 0)
    assert a.sum(axis=0, keepdims=True).shape == (1, 3)            # real keywords pass
    np.indices((2, 3), int, True)                                   # NumPy's sparse, positionally ...
    with pytest.raises(TypeError, match="at most 2 positional arguments"):
        cp.indices((2, 3), int, True)                               # ... CuPy has no such parameter


def test_array_attributes_are_cupys(cp):
    import operator
    a = cp.arange(3)
    with pytest.raises(TypeError):
        operator.index(a[0])                  # CuPy 14's ndarray has no __index__
    from minivit import Tensor
    assert type(a * Tensor(cp.ones(3, dtype=np.int64))) is Tensor     # Tensor's __array_priority__ wins, as on CuPy


def test_reductions_and_integer_indexing_give_0d_device_arrays(cp):
    a = cp.arange(6.0).reshape(2, 3)
    for r in (a.sum(), a.max(), a.mean(), cp.all(a), a.any(), cp.linalg.norm(a), a[0, 1], a[1][2], a.argmax()):
        assert type(r) is cp.ndarray and r.ndim == 0


def test_empty_is_poisoned(cp):
    assert np.isnan(cp.empty((2, 3)).get()).all()
    assert np.isnan(cp.empty_like(cp.zeros(4, dtype=np.float32)).get()).all()
    assert (cp.empty(3, dtype=np.int32).get() > 2**30).all()
    assert np.isnan(cp.ndarray((2,), dtype=np.float64).get()).all()


def test_out_of_range_integer_indices_wrap_around(cp):
    a = cp.arange(5) * 10
    assert a[cp.asarray([5, -6, 7])].tolist() == [0, 40, 20]
    assert cp.take(a, cp.asarray([6])).tolist() == [10]
    b = cp.arange(6).reshape(2, 3)
    assert b[cp.arange(2), cp.asarray([3, -1])].tolist() == [0, 5]
    assert cp.take_along_axis(b, cp.asarray([[4], [3]]), axis=1).tolist() == [[1], [3]]
    with pytest.raises(IndexError):
        a[5]                                         # a Python int is checked on the host, as in CuPy


def test_random_draws_float32_or_float64_only(cp):
    assert cp.random.standard_normal(3, dtype=np.float32).dtype == np.float32
    with pytest.raises(TypeError, match="float32 and float64"):
        cp.random.standard_normal(3, dtype=np.float16)
    with pytest.raises(TypeError, match="float32 and float64"):
        cp.random.RandomState(0).uniform(size=3, dtype=np.float16)


def test_pickling_raises_but_deepcopy_copies_on_the_device(cp):
    a = cp.ones(3)
    with pytest.raises(TypeError, match=r"\.get\(\)"):
        pickle.dumps(a)
    b = copy.deepcopy({"w": a})["w"]
    b[0] = 5.0
    assert type(b) is cp.ndarray and a.get()[0] == 1.0


# --------------------------------------------------------------------------- syncs
def test_syncs_are_counted_with_the_line_that_caused_them(cp):
    a = cp.arange(4.0)
    mask = a > 1
    with strict_cupy.count_syncs() as syncs:
        x = a * 2                                   # no sync
        line = _line() + 1
        float(x.sum()), bool(x.any()), int(x[0]), x.item(1), x.get(), x.tolist(), cp.asnumpy(x), x[mask], repr(x)
        cp.nonzero(x)
    here = os.path.abspath(__file__)
    assert [(os.path.abspath(f), ln) for f, ln, _ in syncs] == [(here, line)] * 9 + [(here, line + 1)]
    assert [k for _, _, k in syncs] == ["float", "bool", "int", "item", "get", "tolist", "get",
                                        "boolean mask indexing", "repr", "nonzero"]
    with strict_cupy.count_syncs() as none:
        y = (a * 2 + 1).sum(axis=0)
        cp.where(a > 1, a, 0.0)
        a[cp.asarray([0, 1])] = y
    assert none == []


def test_sync_budget_lists_the_syncs_past_it(cp):
    a = cp.ones(3)
    with strict_cupy.sync_budget(1):
        float(a.sum())
    with pytest.raises(AssertionError, match=r"2 device→host syncs, the budget is 1:\n.*test_strict_cupy.py:\d+ \(float\)"):
        with strict_cupy.sync_budget(1):
            float(a.sum())
            bool(a.all())


# --------------------------------------------------------------------------- kernels
def _softmax_kernel(cp, dtype="f"):
    return cp.RawKernel(fused_cuda.row_kernel_source(dtype), "softmax_forward", options=("--fmad=false",))


def test_raw_kernel_runs_its_emulation(cp):
    x = cp.asarray(np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32))
    y = cp.empty((5, 7), dtype=np.float32)
    _softmax_kernel(cp)((1,), (32, 8), (x, y, np.int64(5), np.int32(7), np.int32(0), np.float32(1), x, np.int64(0)))
    e = np.exp(x.get() - x.get().max(axis=1, keepdims=True))
    np.testing.assert_allclose(y.get(), e / e.sum(axis=1, keepdims=True), rtol=1e-6)


def test_raw_kernel_arguments_are_checked_against_the_c_signature(cp):
    k = _softmax_kernel(cp)
    x, y = cp.zeros((5, 7), dtype=np.float32), cp.empty((5, 7), dtype=np.float32)
    with pytest.raises(TypeError, match="takes 8 arguments"):
        k((1,), (32, 8), (x, y, np.int64(5), np.int32(7), np.int32(0)))
    with pytest.raises(TypeError, match="reads float32 elements, the array holds float64"):
        k((1,), (32, 8), (x.astype(np.float64), y, np.int64(5), np.int32(7), np.int32(0), np.float32(1), x, np.int64(0)))
    with pytest.raises(TypeError, match="the C parameter is int32, a Python int is passed as int64"):
        k((1,), (32, 8), (x, y, np.int64(5), 7, np.int32(0), np.float32(1), x, np.int64(0)))
    with pytest.raises(TypeError, match="the C parameter is int64, got int32"):
        k((1,), (32, 8), (x, y, np.int32(5), np.int32(7), np.int32(0), np.float32(1), x, np.int64(0)))
    with pytest.raises(ValueError, match="not C-contiguous"):
        k((1,), (32, 8), (cp.zeros((7, 5), dtype=np.float32).T, y, np.int64(5), np.int32(7), np.int32(0), np.float32(1), x, np.int64(0)))
    with pytest.raises(TypeError, match="needs a device array"):
        k((1,), (32, 8), (x.get(), y, np.int64(5), np.int32(7), np.int32(0), np.float32(1), x, np.int64(0)))
    k((1,), (32, 8), (x, y, 5, np.int32(7), np.int32(0), np.float32(1), x, np.int64(0)))         # a Python int is a long long: fine


def test_raw_kernel_launch_geometry_is_checked(cp):
    k = _softmax_kernel(cp)
    x, y = cp.zeros((17, 7), dtype=np.float32), cp.empty((17, 7), dtype=np.float32)
    args = (x, y, np.int64(17), np.int32(7), np.int32(0), np.float32(1), x, np.int64(0))
    with pytest.raises(ValueError, match="covers 16 rows of 17"):
        k((2,), (32, 8), args)
    with pytest.raises(ValueError, match="one warp a row"):
        k((9,), (64, 2), args)
    with pytest.raises(ValueError, match="over the GPU's limits"):
        k((1,), (32, 64), args)
    k((3,), (32, 8), args)
    k((17,), (256, 1), args)


def test_unknown_kernel_asks_for_an_emulation(cp):
    code = 'extern "C" __global__ void mystery(float* x, int n) { }'
    with pytest.raises(strict_cupy.StandinError, match="no NumPy emulation.*kernel_emulation.py"):
        cp.RawKernel(code, "mystery")((1,), (32,), (cp.zeros(3, dtype=np.float32), np.int32(3)))
    with pytest.raises(strict_cupy.StandinError, match="no NumPy emulation"):
        cp.ElementwiseKernel("T x", "T y", "y = x", "mystery_ew")(cp.zeros(3))


def test_elementwise_kernel_types_and_shapes_are_checked(cp):
    k = cp.ElementwiseKernel("T x", "T y", "y = x", "minivit_gelu_none")
    x = cp.zeros((2, 3), dtype=np.float32)
    assert k(x).dtype == np.float32 and k(x).shape == (2, 3)
    with pytest.raises(TypeError, match="Type is mismatched"):
        k(x, cp.empty((2, 3), dtype=np.float64))
    with pytest.raises(ValueError, match="Out shape is mismatched"):
        k(x, cp.empty((3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="Out shape is mismatched"):
        k(x, cp.empty((1, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="host numpy.ndarray"):
        k(np.zeros(3, dtype=np.float32))
    with pytest.raises(TypeError, match="Wrong number of arguments"):
        k(x, x, x)


def test_scatter_add_counts_as_one_launch(cp):
    """cupyx.scatter_add is a kernel (atomic adds): counted once, like any other operation."""
    a = cp.zeros(5, dtype=np.float32)
    idx = cp.asarray(np.array([0, 2, 2]))
    with strict_cupy.count_launches() as log:
        backend.scatter_add(a, idx, cp.ones(3, dtype=np.float32))
    assert [k for _, _, k in log].count("op") == 2, log           # the ones, the scatter
    np.testing.assert_array_equal(a.get(), [1, 0, 2, 0, 0])


def test_memory_pool_counts_live_device_arrays_and_their_peak(cp):
    """The pool's used bytes are the live device buffers' (views and wrappers add nothing), its total
    the peak since free_all_blocks, as CuPy's pool keeps freed blocks."""
    import gc
    pool = cp.get_default_memory_pool()
    gc.collect()
    pool.free_all_blocks()
    used0, total0 = pool.used_bytes(), pool.total_bytes()
    a = cp.ones((250, 1000), dtype=np.float32)                    # 1 MB
    v = a.T[::2]                                                  # a view: no memory of its own
    b = a * 2                                                     # a new buffer
    assert pool.used_bytes() - used0 == 2_000_000 and v.base is a
    del b
    gc.collect()
    assert pool.used_bytes() - used0 == 1_000_000
    assert pool.total_bytes() - total0 == 2_000_000               # the peak stays until the pool is emptied
    pool.free_all_blocks()
    assert pool.total_bytes() == pool.used_bytes() == used0 + 1_000_000
    del a, v
    gc.collect()
    assert pool.used_bytes() == used0
    assert cp.get_default_pinned_memory_pool().total_bytes() == 0


def test_depthwise_kernels_hold_no_columns(cp):
    """The depthwise conv's GPU kernels keep the input, not im2col's k·k copies of it: the peak
    device memory of a forward and backward is a fraction of the im2col path's."""
    import gc
    import minivit.functional as F
    from minivit.autograd import Tensor
    from minivit.functional.conv import Conv2d
    pool = cp.get_default_memory_pool()
    rng = np.random.default_rng(0)
    x_np, w_np = rng.standard_normal((8, 64, 16, 16)).astype(np.float32), rng.standard_normal((64, 1, 3, 3))
    peaks = {}
    for kernels in (True, False):
        Conv2d.depthwise_fast_path = kernels
        try:
            x = Tensor(cp.asarray(x_np), requires_grad=True)
            w = Tensor(cp.asarray(w_np.astype(np.float32)), requires_grad=True)
            gc.collect()
            pool.free_all_blocks()
            base = pool.total_bytes()
            y = F.conv2d(x, w, padding=1, groups=64)
            y.backward(cp.ones(y.shape, dtype=np.float32))
            peaks[kernels] = pool.total_bytes() - base
            del x, w, y
        finally:
            Conv2d.depthwise_fast_path = True
    assert peaks[True] <= 0.4 * peaks[False], peaks
