"""The backend: array module, devices, moving arrays, seeding, clear errors for missing CUDA."""
import numpy as np
import pytest

import minivit as mv
from minivit import backend


def test_numpy_arrays_get_numpy():
    assert backend.get_array_module(np.zeros(2), 1.0) is np
    assert backend.device_of(np.zeros(2)) == "cpu"


def test_unknown_device_is_named():
    with pytest.raises(ValueError, match="'tpu'"):
        backend.check_device("tpu")


def test_cuda_without_cupy_says_what_to_install(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", None)
    with pytest.raises(RuntimeError, match="cupy-cuda12x"):
        backend.check_device("cuda")
    with pytest.raises(RuntimeError, match="CuPy"):
        mv.zeros(2, device="cuda")


def test_cuda_without_gpu_says_no_gpu(monkeypatch):
    class FakeCupy:
        class cuda:
            class runtime:
                @staticmethod
                def getDeviceCount():
                    return 0
    monkeypatch.setattr(backend, "_cupy", FakeCupy)
    with pytest.raises(RuntimeError, match="no GPU"):
        backend.check_device("cuda")


def test_round_trip_between_devices(xp, device):
    a = np.arange(6.0).reshape(2, 3)
    on = backend.to_device(a, device)
    assert backend.get_array_module(on) is xp
    np.testing.assert_array_equal(backend.to_numpy(on), a)
    t = mv.tensor(a, device=device).to(device="cpu")
    assert t.device == "cpu" and isinstance(t.data, np.ndarray)


def test_seeding_reproduces(xp, device):
    mv.manual_seed(123)
    a = mv.randn(5, device=device).numpy()
    mv.manual_seed(123)
    b = mv.randn(5, device=device).numpy()
    np.testing.assert_array_equal(a, b)


def test_rng_state_round_trip():
    state = backend.get_rng_state()
    a = np.random.rand(3)
    backend.set_rng_state(state)
    np.testing.assert_array_equal(np.random.rand(3), a)


def test_only_backend_imports_cupy():
    import pathlib
    import re
    root = pathlib.Path(mv.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 # (the strict stand-in imports the real cupy-cuda12x to read its names: it *is* the test's CuPy)
                 if p.name not in ("backend.py", "strict_cupy.py") and re.search(r"^\s*(import|from)\s+cupy", p.read_text(), re.M)]
    assert offenders == []


@pytest.mark.parametrize("shape,window,axis", [
    ((2, 3, 9, 7), (3, 2), (2, 3)), ((4, 8, 8, 5), (5, 1), (1, 2)), ((6,), 6, 0),
    ((3, 5, 4), (2, 4), (-2, -1)), ((2, 3, 4), (1,), (1,)), ((5, 5), (0, 2), (0, 1))])
def test_window_view_matches_numpys_sliding_window_view(shape, window, axis):
    # The GPU path builds the view with as_strided itself (CuPy's sliding_window_view
    # checks the window sizes on the device: two syncs per conv); NumPy's as_strided here.
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    for a in (x, x.transpose(tuple(reversed(range(x.ndim)))).copy().T):   # contiguous and not
        got = backend._window_view(a, window, axis, np.lib.stride_tricks.as_strided)
        want = np.lib.stride_tricks.sliding_window_view(a, window, axis=axis)
        assert got.shape == want.shape and got.strides == want.strides
        np.testing.assert_array_equal(got, want)


def test_window_view_rejects_a_window_larger_than_the_axis():
    with pytest.raises(ValueError, match="does not fit"):
        backend._window_view(np.zeros((2, 3)), (4,), (1,), np.lib.stride_tricks.as_strided)


def test_sliding_window_view_on_the_device(xp):
    x = xp.arange(2 * 3 * 6 * 5, dtype=xp.float32).reshape(2, 3, 6, 5)
    got = backend.to_numpy(backend.sliding_window_view(x, (3, 2), axis=(2, 3)))
    np.testing.assert_array_equal(got, np.lib.stride_tricks.sliding_window_view(
        backend.to_numpy(x), (3, 2), axis=(2, 3)))


def test_seed_device_wraps_seeds_and_reseeds_one_philox_generator(monkeypatch):
    made, seeds = [], []
    DEFAULT, PHILOX = 100, 105

    class RandomState:                      # CuPy's RandomState: seed() checks its range
        def __init__(self, seed=None, method=DEFAULT):
            self.method = method
            made.append(method)
            self.seed(seed)

        def seed(self, s):
            if s is not None and not 0 <= s < 2**64:
                raise ValueError("Seed must be an integer between 0 and 2**64 - 1")
            seeds.append(s)

    class FakeCupy:
        class cuda:
            class runtime:
                @staticmethod
                def getDeviceCount():
                    return 1

            class curand:
                CURAND_RNG_PSEUDO_PHILOX4_32_10 = PHILOX

        class random:
            state = RandomState()                                  # the default generator (XORWOW)

            @classmethod
            def get_random_state(cls):
                return cls.state

            @classmethod
            def set_random_state(cls, rs):
                cls.state = rs

    FakeCupy.random.RandomState = RandomState
    monkeypatch.setattr(backend, "_cupy", FakeCupy)
    seeds.clear()
    backend.seed_device(12345)
    backend.seed_device((2**31 * 1_000_003 + 7) * 1_000_003 + 9)      # the trainer's counter, big seed
    backend.seed_device(-1)
    assert seeds == [12345, ((2**31 * 1_000_003 + 7) * 1_000_003 + 9) % 2**64, 2**64 - 1]
    # one Philox generator replaces the default once; later seeds only re-seed it
    assert made == [DEFAULT, PHILOX] and FakeCupy.random.state.method == PHILOX


def test_tensor_keeps_the_arrays_device(xp, device):
    t = mv.tensor(xp.arange(3.0))
    assert t.device == device and backend.get_array_module(t.data) is xp
    assert mv.tensor(xp.arange(3.0), device="cpu").device == "cpu"
    assert mv.tensor([1.0, 2.0]).device == "cpu" and mv.tensor([1.0, 2.0]).dtype == np.float32
