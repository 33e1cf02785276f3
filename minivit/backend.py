"""The one place that knows CuPy exists.

Every other module asks this one for the array module (`xp`) that fits its
arrays, so the same op code runs on NumPy (CPU) and CuPy (GPU):

    xp = get_array_module(x)          # numpy or cupy
    y = xp.exp(x - x.max(axis=-1, keepdims=True))

Devices are named as in PyTorch: ``"cpu"`` and ``"cuda"``.
"""
from __future__ import annotations

import ctypes
import os
import sys

import numpy as np

try:  # CuPy is optional: `pip install minivit[cuda12]` (or [cuda13]).
    import cupy as _cupy
    import cupyx as _cupyx
except Exception:  # ImportError, or a CuPy that cannot find its CUDA libraries
    _cupy = None
    _cupyx = None

DEVICES = ("cpu", "cuda")


# --------------------------------------------------------------------------- devices
def cupy_available() -> bool:
    """True when CuPy imports and can see at least one GPU."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def check_device(device: str) -> str:
    """Validate a device name; for "cuda", make sure CuPy and a GPU are really there."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: use one of {DEVICES}")
    if device == "cuda":
        if _cupy is None:
            raise RuntimeError(
                "device 'cuda' needs CuPy, which is not installed (or failed to import). "
                "Install the wheel for your CUDA version: pip install 'minivit[cuda12]' "
                "(cupy-cuda12x) or 'minivit[cuda13]' (cupy-cuda13x); or use device='cpu'.")
        if not cupy_available():
            raise RuntimeError(
                "device 'cuda' was asked for but CuPy found no GPU (cudaGetDeviceCount "
                "returned 0 or failed). Check nvidia-smi and CUDA_VISIBLE_DEVICES, or use device='cpu'.")
    return device


def xp_for(device: str):
    """The array module for a device name: numpy for "cpu", cupy for "cuda"."""
    return _cupy if check_device(device) == "cuda" else np


def default_device() -> str:
    """"cuda" when CuPy sees a GPU, else "cpu"."""
    return "cuda" if cupy_available() else "cpu"


# --------------------------------------------------------------------------- arrays
def is_cupy_array(a) -> bool:
    return _cupy is not None and isinstance(a, _cupy.ndarray)


def get_array_module(*arrays):
    """numpy, or cupy if any of the arrays lives on the GPU (DeZero's / CuPy's idiom)."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def device_of(a) -> str:
    return "cuda" if is_cupy_array(a) else "cpu"


def to_device(a, device: str):
    """Move an array (or a scalar) to a device; a no-op when it is already there."""
    check_device(device)
    if device == "cuda":
        return _cupy.asarray(a)
    if is_cupy_array(a):
        return _cupy.asnumpy(a)
    return np.asarray(a)


def to_numpy(a):
    """A NumPy array on the host, whatever the array's device."""
    return _cupy.asnumpy(a) if is_cupy_array(a) else np.asarray(a)


def synchronize(device: str = "cuda"):
    """Wait for queued GPU work (needed before reading a clock); a no-op on CPU."""
    if device == "cuda" and _cupy is not None:
        _cupy.cuda.get_current_stream().synchronize()


def time_calls(fn, device: str = "cpu", repeats: int = 3, warmup: int = 0) -> list:
    """Wall times of ``repeats`` calls of ``fn()`` after ``warmup`` untimed ones, in seconds,
    the GPU synchronised before each clock read (GPU work is queued, not done, when a call returns)."""
    import time
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


# --------------------------------------------------------------------------- randomness
def manual_seed(seed: int):
    """Seed NumPy's and (when present) CuPy's global generators."""
    np.random.seed(seed)
    if cupy_available():
        _cupy.random.seed(seed)


def seed_device(seed: int):
    """Re-seed only the GPU generator (a no-op without CuPy).

    CuPy's cuRAND generator cannot be read back, so its state cannot go into a
    checkpoint. Code that must replay GPU draws exactly after a resume (the
    trainer) re-seeds it from a counter instead, e.g. once per training step.
    """
    if cupy_available():
        _cupy.random.seed(seed)


def get_rng_state() -> dict:
    """NumPy's global RNG state, for checkpoints (see :func:`seed_device` for the GPU's)."""
    return {"numpy": np.random.get_state()}


def set_rng_state(state: dict):
    np.random.set_state(state["numpy"])


def device_name(device: str) -> str:
    """A human-readable name of the device, for benchmark and sweep records."""
    import os
    import platform
    if device == "cuda":
        check_device(device)
        name = _cupy.cuda.runtime.getDeviceProperties(_cupy.cuda.Device().id)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


# --------------------------------------------------------------------------- the few ops numpy and cupy spell differently
def erf(x):
    """Elementwise error function (needed by the exact GELU)."""
    if is_cupy_array(x):
        import cupyx.scipy.special as sp
        return sp.erf(x)
    import scipy.special as sp
    return sp.erf(x)


def scatter_add(a, indices, values):
    """a[indices] += values, where repeated indices add up (np.add.at semantics), in place."""
    if is_cupy_array(a):
        _cupyx.scatter_add(a, indices, values)
    else:
        np.add.at(a, indices, values)


def sliding_window_view(x, window_shape, axis):
    """A strided view of every window (no copy); the heart of im2col."""
    xp = get_array_module(x)
    return xp.lib.stride_tricks.sliding_window_view(x, window_shape, axis=axis)


# --------------------------------------------------------------------------- host memory
def _keep_freed_memory() -> dict | None:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    Every op makes fresh output and gradient arrays, megabytes each, and frees as
    many. By default glibc gives large freed blocks back to the kernel (munmap, or
    trimming the top of the heap), so the next array of that size is new memory and
    touching it page-faults, page by page: measured, a fifth of a ViT training
    step on a CPU. Keeping freed blocks (as PyTorch's caching allocator does on the
    GPU) removes that; the process's resident size stays at its peak instead.
    Blocks up to 32 MB (glibc's limit) come from the reusable heap. Linux with glibc
    only; the environment variable MINIVIT_KEEP_FREED_MEMORY=0 leaves malloc alone.
    Returns the settings made (None when none were)."""
    if os.environ.get("MINIVIT_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    settings = {"trim_threshold": 2**31 - 1, "mmap_threshold": 32 * 2**20}
    ok = mallopt(M_TRIM_THRESHOLD, settings["trim_threshold"]) and \
        mallopt(M_MMAP_THRESHOLD, settings["mmap_threshold"])
    return settings if ok else None


malloc_settings = _keep_freed_memory()
