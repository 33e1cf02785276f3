"""backend.check_device("cuda"): CuPy, a GPU and the CUDA libraries are checked up front, once.

Runs without a GPU: `backend._cupy` is swapped for a stand-in whose CUDA library attributes
fail the way CuPy 14's do when the library is not installed (cupy.cuda.cublas / .curand raise
ImportError from cuda-pathfinder; the first NVRTC call raises RuntimeError)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from minivit import backend

LIBRARIES = {  # name in the message: what CuPy raises when it is missing
    "cuBLAS": ImportError('Failure finding "libcublasLt.so.13 or libcublasLt.so.12": No such file'),
    "cuRAND": ImportError('Failure finding "libcurand.so.11 or libcurand.so.10": No such file'),
    "NVRTC": RuntimeError("CuPy failed to load libnvrtc.so.12: OSError: libnvrtc.so.12: "
                          "cannot open shared object file: No such file or directory"),
}


def fake_cupy(missing=None, gpus=1, cuda_version=12090):
    """A stand-in for the cupy module: `loads` counts each library's load attempts."""
    loads = {name: 0 for name in LIBRARIES}

    def load(name, value):
        loads[name] += 1
        if name == missing:
            raise LIBRARIES[name]
        return value

    class Nvrtc:
        @staticmethod
        def getVersion():
            return load("NVRTC", (12, 9))

    class Cuda:
        nvrtc = Nvrtc()

        class runtime:
            @staticmethod
            def getDeviceCount():
                return gpus

            @staticmethod
            def runtimeGetVersion():
                return cuda_version

        def __getattr__(self, attr):        # the lazy attributes of cupy.cuda
            lazy = {"cublas": "cuBLAS", "curand": "cuRAND"}
            if attr not in lazy:
                raise AttributeError(attr)
            return load(lazy[attr], object())

    class Cupy:
        cuda = Cuda()

    return Cupy(), loads


@pytest.fixture
def swap_cupy(monkeypatch):
    def swap(cupy):
        monkeypatch.setattr(backend, "_cupy", cupy)
        monkeypatch.setattr(backend, "_cuda_checked", {"cupy": None, "error": None})
        return cupy
    return swap


@pytest.mark.parametrize("missing", sorted(LIBRARIES))
def test_a_missing_cuda_library_is_named_with_the_fix(swap_cupy, missing):
    cupy, loads = fake_cupy(missing=missing)
    swap_cupy(cupy)
    with pytest.raises(backend.DeviceError) as info:
        backend.check_device("cuda")
    msg = str(info.value)
    assert missing in msg and "\n" not in msg
    assert 'pip install "minivit[cuda12]"' in msg and "cupy-cuda12x[ctk]" in msg
    assert str(LIBRARIES[missing]).split(":")[0] in msg          # CuPy's own reason comes along
    assert isinstance(info.value, RuntimeError)                   # callers that catch RuntimeError still do


def test_the_fix_names_the_wheel_of_cupys_cuda_version(swap_cupy):
    cupy, _ = fake_cupy(missing="cuRAND", cuda_version=13000)
    swap_cupy(cupy)
    with pytest.raises(backend.DeviceError, match=r'minivit\[cuda13\]".*cupy-cuda13x\[ctk\]'):
        backend.check_device("cuda")


def test_all_libraries_present_passes_and_checks_once(swap_cupy):
    cupy, loads = fake_cupy()
    swap_cupy(cupy)
    for _ in range(3):
        assert backend.check_device("cuda") == "cuda"
    assert loads == {name: 1 for name in LIBRARIES}


def test_a_failed_preflight_is_kept_and_not_retried(swap_cupy):
    cupy, loads = fake_cupy(missing="NVRTC")
    swap_cupy(cupy)
    errors = []
    for _ in range(2):
        with pytest.raises(backend.DeviceError) as info:
            backend.check_device("cuda")
        errors.append(info.value)
    assert errors[0] is errors[1] and loads["NVRTC"] == 1


def test_no_gpu_is_a_device_error_and_no_library_is_touched(swap_cupy):
    cupy, loads = fake_cupy(gpus=0)
    swap_cupy(cupy)
    with pytest.raises(backend.DeviceError, match="no GPU.*cudaGetDeviceCount returned 0"):
        backend.check_device("cuda")
    assert set(loads.values()) == {0}
    assert backend.cupy_available() is False


def test_no_cupy_is_a_device_error_with_the_import_failure(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_import_error", ImportError("libcudart.so.12: cannot open\nshared object"))
    with pytest.raises(backend.DeviceError) as info:
        backend.check_device("cuda")
    msg = str(info.value)
    assert "libcudart.so.12: cannot open shared object" in msg and "\n" not in msg
    assert "cupy-cuda12x[ctk]" in msg and "device='cpu'" in msg


def test_cpu_needs_no_preflight(swap_cupy):
    swap_cupy(None)
    assert backend.check_device("cpu") == "cpu" and backend.xp_for("cpu") is np


def test_this_machine_gives_one_clear_line_without_a_gpu():
    # In a fresh process with the real CuPy (or none): the suite may run on the strict stand-in.
    code = ("from minivit import backend\n"
            "try:\n    backend.check_device('cuda')\nexcept backend.DeviceError as e:\n    print('ERR', e)\n"
            "else:\n    print('GPU')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MINIVIT_STRICT_CUPY": "0"}).stdout.strip()
    if out == "GPU":
        pytest.skip("a GPU is here: the preflight passes")
    assert out.startswith("ERR ") and "\n" not in out and "device='cpu'" in out, out


def test_manual_seed_skips_a_gpu_it_cannot_use(swap_cupy):
    """A CPU run on a machine whose CuPy lacks cuRAND still seeds NumPy, and does not fail."""
    cupy, loads = fake_cupy(missing="cuRAND")
    swap_cupy(cupy)
    backend.manual_seed(7)
    a = np.random.rand(3)
    np.random.seed(7)
    np.testing.assert_array_equal(a, np.random.rand(3))
    assert loads["cuRAND"] == 1
