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
                 if p.name != "backend.py" and re.search(r"^\s*(import|from)\s+cupy", p.read_text(), re.M)]
    assert offenders == []
