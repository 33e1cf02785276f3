"""The one place that knows CuPy exists.

Every other module asks this one for the array module (`xp`) that fits its
arrays, so the same op code runs on NumPy (CPU) and CuPy (GPU):

    xp = get_array_module(x)          # numpy or cupy
    y = xp.exp(x - x.max(axis=-1, keepdims=True))

Devices are named as in PyTorch: ``"cpu"`` and ``"cuda"``.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import queue
import sys
import threading

import numpy as np

if os.environ.get("MINIVIT_STRICT_CUPY") == "1":
    # The strict CuPy stand-in (NumPy underneath, CuPy's rules): the test suite's GPU side
    # without a GPU. See minivit/testing/strict_cupy.py.
    from minivit.testing import strict_cupy as _strict_cupy
    try:
        _strict_cupy.install()
    except ImportError:     # cupy-cuda12x not installed: no stand-in (strict_cupy.available() says why)
        pass

_cupy_import_error = None
try:  # CuPy is optional: `pip install minivit[cuda12]` (or [cuda13]).
    import cupy as _cupy
    import cupyx as _cupyx
except Exception as e:  # ImportError, or a CuPy that cannot find its CUDA libraries
    _cupy = None
    _cupyx = None
    _cupy_import_error = e

DEVICES = ("cpu", "cuda")


# --------------------------------------------------------------------------- devices
def cupy_available() -> bool:
    """True when CuPy imports and can see at least one GPU (always, under the strict stand-in)."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


class DeviceError(RuntimeError):
    """A device that was asked for cannot be used: no CuPy, no GPU, or a CUDA library
    missing. The message is one line that names the problem and the fix."""


# The CUDA libraries minivit's GPU path needs beyond the driver, each with what forces CuPy
# (v14) to load it. cupy.cuda.cublas / .curand are lazy attributes: touching one loads the
# library through cuda-pathfinder and raises ImportError ('Failure finding "libcurand.so…"')
# when it is not there. NVRTC is linked at run time: its first call loads it, and raises
# RuntimeError ('CuPy failed to load libnvrtc.so…') when it is missing.
_CUDA_LIBRARIES = (
    ("cuBLAS", "matrix products", lambda cp: cp.cuda.cublas),
    ("cuRAND", "random numbers", lambda cp: cp.cuda.curand),
    ("NVRTC", "compiling kernels", lambda cp: cp.cuda.nvrtc.getVersion()),
)
_cuda_checked = {"cupy": None, "error": None}     # the preflight's result, for the CuPy it saw


def _cuda_fix() -> str:
    """The pip command that brings CuPy together with its CUDA libraries (CuPy ≥ 14's [ctk] extra)."""
    try:
        major = int(_cupy.cuda.runtime.runtimeGetVersion()) // 1000
    except Exception:
        major = None
    if major in (12, 13):
        return f'pip install "minivit[cuda{major}]" (or pip install "cupy-cuda{major}x[ctk]")'
    return ('pip install "minivit[cuda12]" or "minivit[cuda13]" (cupy-cuda12x[ctk] / '
            'cupy-cuda13x[ctk], matching your driver\'s CUDA version)')


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" + ("…" if len(text) > 200 else "")


def _cuda_preflight() -> None:
    """Raise DeviceError unless CuPy, a GPU and the CUDA libraries are all there.

    Everything is checked up front, so that a missing library is a clear error before
    any work starts, not an ImportError at the first random draw. The result is kept
    (per CuPy module object, so tests can swap in a stand-in): the checks run once."""
    if _cupy is not None and _cuda_checked["cupy"] is _cupy:
        if _cuda_checked["error"] is not None:
            raise _cuda_checked["error"]
        return
    if _cupy is None:
        why = f" ({_one_line(_cupy_import_error)})" if _cupy_import_error is not None else ""
        raise DeviceError(
            f"device 'cuda' needs CuPy, which is not installed or failed to import{why}. Install it "
            f"with its CUDA libraries: pip install \"minivit[cuda12]\" (cupy-cuda12x[ctk]) or "
            f"\"minivit[cuda13]\" (cupy-cuda13x[ctk]); or use device='cpu'.")
    error = None
    try:
        count, why = _cupy.cuda.runtime.getDeviceCount(), "cudaGetDeviceCount returned 0"
    except Exception as e:
        count, why = 0, _one_line(e)
    if count <= 0:
        error = DeviceError(
            f"device 'cuda' was asked for but CuPy found no GPU ({why}). "
            f"Check nvidia-smi and CUDA_VISIBLE_DEVICES, or use device='cpu'.")
    else:
        for name, use, load in _CUDA_LIBRARIES:
            try:
                load(_cupy)
            except Exception as e:
                error = DeviceError(
                    f"device 'cuda': CuPy cannot load the CUDA library {name} (needed for {use}): "
                    f"{_one_line(e)}. Fix: {_cuda_fix()}; or use device='cpu'.")
                break
    _cuda_checked["cupy"], _cuda_checked["error"] = _cupy, error
    if error is not None:
        raise error


def check_device(device: str) -> str:
    """Validate a device name; for "cuda", make sure CuPy, a GPU and the CUDA libraries
    (cuBLAS, cuRAND, NVRTC) are really there, or raise :class:`DeviceError` saying what to do."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: use one of {DEVICES}")
    if device == "cuda":
        _cuda_preflight()
    return device


def xp_for(device: str):
    """The array module for a device name: numpy for "cpu", cupy for "cuda"."""
    return _cupy if check_device(device) == "cuda" else np


def is_strict_standin() -> bool:
    """True when ``cupy`` is minivit's strict stand-in (MINIVIT_STRICT_CUPY=1), not a GPU."""
    return getattr(_cupy, "__minivit_strict_standin__", False)


def default_device() -> str:
    """"cuda" when CuPy sees a GPU, else "cpu" (also under the strict stand-in: no GPU to pick
    by itself; device="cuda" still uses it)."""
    return "cuda" if cupy_available() and not is_strict_standin() else "cpu"


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


# --------------------------------------------------------------------------- TF32
# TF32 is a tensor-core mode of NVIDIA GPUs from Ampere (compute capability 8.0) on: a
# float32 matrix product rounds its inputs to 10 mantissa bits (float16's precision,
# float32's range) and accumulates in float32, several times faster than true float32.
# Arrays stay float32; only the GEMMs change. As ``torch.backends.cuda.matmul.allow_tf32``.
#
# How CuPy does it (cupy/_core/_routines_linalg.pyx): a "compute type" per dtype,
# set with ``set_compute_type(numpy.float32, COMPUTE_TYPE_TF32 | COMPUTE_TYPE_DEFAULT)``;
# its GEMMs that go through cublasGemmEx (``dot`` and 2-D ``matmul``: every minivit
# Linear, whose leading dims are folded into one 2-D product) then ask cuBLAS for
# CUBLAS_COMPUTE_32F_FAST_TF32. The environment variable CUPY_TF32=1 is only the
# default: it is read when the float32 compute type is first needed (the first float32
# GEMM), not at import, and set_compute_type overrides it. On a GPU below compute
# capability 8.0 CuPy warns and keeps the default. In the CuPy sources we read, batched
# (>2-D) matmuls call cublasGemmStridedBatchedEx with a plain CUDA_R_32F compute type,
# so attention's (B, heads, N, d) products are not affected either way.
def _cupy_compute_types():
    from cupy._core import _routines_linalg as linalg
    return linalg


def set_tf32(enabled: bool = True) -> bool:
    """Allow (or forbid) TF32 tensor-core math in CuPy's float32 matrix products.

    Returns whether TF32 is now in force: False on the CPU (NumPy has no TF32: float32
    stays exact float32, so this is a no-op there), without CuPy or a GPU, and on GPUs
    below compute capability 8.0."""
    if not cupy_available():
        return False
    linalg = _cupy_compute_types()
    if enabled and int(_cupy.cuda.Device().compute_capability) < 80:
        linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_DEFAULT)
        return False
    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT)
    return bool(enabled)


def tf32_enabled() -> bool:
    """Whether CuPy's float32 matrix products use TF32 now (set_tf32 or CUPY_TF32=1); False on the CPU."""
    if not cupy_available():
        return False
    linalg = _cupy_compute_types()
    return linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32


# --------------------------------------------------------------------------- randomness
def manual_seed(seed: int):
    """Seed NumPy's and (when usable) CuPy's global generators.

    The GPU's generator is seeded only when the device preflight passes: a CPU run on a
    machine whose CuPy lacks cuRAND must not fail here (a "cuda" run fails in check_device)."""
    np.random.seed(seed)
    if _cuda_ready():
        seed_device(seed)


def _cuda_ready() -> bool:
    """CuPy, a GPU and the CUDA libraries are all there (the preflight passes)."""
    if not cupy_available():
        return False
    try:
        _cuda_preflight()
    except DeviceError:
        return False
    return True


def seed_device(seed: int):
    """Re-seed only the GPU generator (a no-op without CuPy).

    CuPy's cuRAND generator cannot be read back, so its state cannot go into a
    checkpoint. Code that must replay GPU draws exactly after a resume (the
    trainer) re-seeds it from a counter instead, e.g. once per training step.
    """
    if cupy_available():
        # cuRAND's default generator (XORWOW) rebuilds a large state on the first draw
        # after every re-seed; Philox is counter-based, so a re-seed costs nothing. The
        # device's global generator is made a Philox one once, then only re-seeded.
        philox = _cupy.cuda.curand.CURAND_RNG_PSEUDO_PHILOX4_32_10
        rs = _cupy.random.get_random_state()
        # CuPy rejects seeds outside [0, 2**64) (ValueError), and a seed built from a
        # counter, such as the trainer's, can grow past that: wrap it.
        seed = int(seed) % 2**64
        if rs.method != philox:
            _cupy.random.set_random_state(_cupy.random.RandomState(seed, method=philox))
        else:
            rs.seed(seed)


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
    if is_cupy_array(x):
        return _window_view(x, window_shape, axis, _cupy.lib.stride_tricks.as_strided)
    return np.lib.stride_tricks.sliding_window_view(x, window_shape, axis=axis)


def _window_view(x, window_shape, axis, as_strided):
    """sliding_window_view(x, window_shape, axis=axis) built with ``as_strided``.

    What cupy.lib.stride_tricks.sliding_window_view does, less its check of the window
    sizes, which it makes on a device copy of them (two GPU syncs per conv forward):
    the axes' lengths shrink by window − 1 and the windows become new trailing axes
    with the same strides."""
    window_shape = tuple(int(w) for w in (window_shape if np.iterable(window_shape) else (window_shape,)))
    axes = tuple(int(a) % x.ndim for a in (axis if np.iterable(axis) else (axis,)))
    if len(axes) != len(window_shape):
        raise ValueError(f"sliding_window_view: {len(window_shape)} window sizes for {len(axes)} axes")
    shape = list(x.shape)
    for a, w in zip(axes, window_shape):
        if not 0 <= w <= shape[a]:
            raise ValueError(f"sliding_window_view: window {w} does not fit axis {a} of length {shape[a]}")
        shape[a] -= w - 1
    return as_strided(x, shape=tuple(shape) + window_shape,
                      strides=tuple(x.strides) + tuple(x.strides[a] for a in axes))


# --------------------------------------------------------------------------- hand-written GPU kernels
# minivit.functional.fused_cuda writes CUDA C; these two build it into CuPy kernels. A kernel
# object is made once per distinct source (lru_cache) and CuPy compiles it on its first call
# (NVRTC; the binary is also cached on disk, in ~/.cupy/kernel_cache).
def cupy_nccl():
    """(cupy, cupy.cuda.nccl): CuPy and its NCCL binding, for ``minivit.distributed``'s GPU path
    (this module is the only one that imports CuPy)."""
    if _cupy is None:
        raise DeviceError("NCCL needs CuPy and a GPU: install 'minivit[cuda12]' (or [cuda13]), or use "
                          "distributed.init(backend='mpi') on the CPU")
    from cupy.cuda import nccl
    return _cupy, nccl


def _cupy_for_kernels():
    if _cupy is None:
        raise DeviceError("a fused CUDA kernel was asked for, but CuPy is not installed: install "
                          "'minivit[cuda12]' (or [cuda13]), or switch the fused kernels off with "
                          "MINIVIT_FUSED=0")
    return _cupy


@functools.lru_cache(maxsize=None)
def cuda_elementwise_kernel(in_params: str, out_params: str, operation: str, name: str,
                            preamble: str = "", options: tuple = ()):
    """``cupy.ElementwiseKernel(in_params, out_params, operation, name, ...)``, made once."""
    return _cupy_for_kernels().ElementwiseKernel(in_params, out_params, operation, name,
                                                 preamble=preamble, options=options)


@functools.lru_cache(maxsize=None)
def cuda_raw_kernel(code: str, name: str, options: tuple = ()):
    """``cupy.RawKernel(code, name, options)``, made once: call it as ``k(grid, block, args)``."""
    return _cupy_for_kernels().RawKernel(code, name, options=options)


# --------------------------------------------------------------------------- CPU threads
# NumPy runs every elementwise op, reduction and einsum on one core, while PyTorch splits
# its ops over all cores (torch.set_num_threads). minivit's heaviest non-BLAS CPU ops
# (GELU, softmax, layer norm, depthwise convs, bias adds, AdamW) do the same by hand:
# the work is cut into one contiguous piece per thread, and since NumPy lets go of
# Python's GIL inside each ufunc and einsum loop, the pieces really run at the same time.
# Each piece writes its own slice of an output the calling thread made, so no piece waits
# for another. BLAS calls stay outside the pieces: OpenBLAS already has its own threads.
_threads = {"n": None, "pool": [], "pid": None}     # pool: the workers' inboxes (_workers)


@contextlib.contextmanager
def switched(owner, name: str, on: bool):
    """``owner.name = bool(on)`` inside a ``with`` block, the old value put back after (the fused
    kernels' ``use_fused``: tests compare an op with its fast path on and off)."""
    previous = getattr(owner, name)
    setattr(owner, name, bool(on))
    try:
        yield
    finally:
        setattr(owner, name, previous)


def get_num_threads() -> int:
    """Threads minivit's CPU ops split their work over (``torch.get_num_threads``).

    Default: the cores this process may run on, or MINIVIT_NUM_THREADS when set."""
    if _threads["n"] is None:
        env = os.environ.get("MINIVIT_NUM_THREADS")
        if env:
            if not env.strip().isdigit() or int(env) < 1:
                raise ValueError(f"MINIVIT_NUM_THREADS must be a positive integer, got {env!r}; "
                                 f"unset it to use every core")
            set_num_threads(int(env))
        else:
            _threads["n"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return _threads["n"]


def set_num_threads(n: int) -> None:
    """``torch.set_num_threads``: how many threads minivit's CPU ops use (1: all on the caller).

    NumPy's BLAS has its own count (OPENBLAS_NUM_THREADS; ``minivit.bench --threads`` sets both).
    Elementwise results do not depend on the count. Sums gathered piece by piece (the weight
    gradients of depthwise convs and layer norm) can differ in their last bits between two
    counts, as in PyTorch; with one count, every run gives the same bits."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    _threads["n"] = int(n)


def parallel_pieces(n: int, fn, min_size: int = 1) -> list:
    """``[fn(start, stop), ...]`` over contiguous pieces of ``range(n)``, one per thread.

    Each piece has at least ``min_size`` items, so small work stays on the calling
    thread (a hand-off costs tens of microseconds). The first piece runs on the
    caller; the results come back in order, and an exception in any piece is raised here.
    ``fn`` must only do NumPy work that lets go of the GIL, on its own slice of the data."""
    k = max(1, min(get_num_threads(), n // max(min_size, 1)))
    if k == 1 or threading.current_thread().name.startswith("minivit"):
        return [fn(0, n)]           # (inside a piece already: waiting on the pool there could deadlock)
    bounds = [n * i // k for i in range(k + 1)]
    inboxes = _workers(k - 1)
    done = queue.SimpleQueue()      # this call's own: two callers' results never mix
    for i in range(1, k):
        inboxes[i - 1].put((fn, bounds[i], bounds[i + 1], i, done))
    results, error = [None] * k, None
    try:
        results[0] = fn(bounds[0], bounds[1])
    except BaseException as e:      # still collect the other pieces: they write into shared arrays
        error = e
    for _ in range(1, k):
        i, value, exc = done.get()
        results[i] = value
        error = error or exc
    if error is not None:
        raise error
    return results


def parallel_rows(a, fn, min_elements: int = 1 << 16) -> list:
    """``fn(lo, hi)`` over pieces of the rows of a 2-D array ``a``: split over the threads
    (pieces of at least ``min_elements`` numbers) for a CPU array, one call for a GPU one."""
    rows = a.shape[0]
    if is_cupy_array(a):
        return [fn(0, rows)]
    return parallel_pieces(rows, fn, min_size=max(1, min_elements // max(a.shape[1], 1)))


def _workers(n: int) -> list:
    """The inboxes of n worker threads, made on first use (anew in a forked child, where the
    parent's threads do not exist) and added to when more are asked for. A worker takes
    (fn, lo, hi, i, done) from its inbox and puts (i, fn(lo, hi), exception or None) on ``done``.

    A queue each way (C-level SimpleQueues) rather than concurrent.futures' pool, whose every
    hand-off also builds a Future and its lock and condition: a training step hands off a few
    hundred times, and each hand-off is a thread wake-up (tens of microseconds) either way."""
    if _threads["pid"] != os.getpid():
        _threads["pool"], _threads["pid"] = [], os.getpid()
    inboxes = _threads["pool"]
    while len(inboxes) < n:
        inbox = queue.SimpleQueue()
        threading.Thread(target=_work, args=(inbox,), name=f"minivit-{len(inboxes)}", daemon=True).start()
        inboxes.append(inbox)
    return inboxes


def _work(inbox):
    while True:
        fn, lo, hi, i, done = inbox.get()
        try:
            done.put((i, fn(lo, hi), None))
        except BaseException as e:
            done.put((i, None, e))
        del fn, done                # (no reference to the last call's data while idle)


# --------------------------------------------------------------------------- host memory
def _keep_freed_memory() -> dict | None:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    Every op makes fresh output and gradient arrays, megabytes each, and frees as
    many. By default glibc gives large freed blocks back to the kernel (munmap, or
    trimming the top of the heap), so the next array of that size is new memory and
    touching it page-faults, page by page: measured, a fifth of a ViT training
    step on a CPU. Keeping freed blocks (as PyTorch's caching allocator does on the
    GPU) removes that; the process's resident size stays at its peak instead.
    Large blocks are mapped afresh by default (mmap, above a threshold that glibc
    caps at 32 MB), so mmap is switched off for malloc (mmap_max 0): every block,
    of any size, comes from the reusable heap. Measured on the complexity sweep's 100 MB–1 GB score
    arrays: a third less time, and without the jump in time per element that made
    the fitted exponents drift above 2. Linux with glibc only; the environment
    variable MINIVIT_KEEP_FREED_MEMORY=0 leaves malloc alone.
    Returns the settings made (None when none were)."""
    if os.environ.get("MINIVIT_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    settings = {"trim_threshold": 2**31 - 1, "mmap_max": 0}     # with no mmap, no mmap threshold to set
    ok = mallopt(M_TRIM_THRESHOLD, settings["trim_threshold"]) and mallopt(M_MMAP_MAX, settings["mmap_max"])
    return settings if ok else None


malloc_settings = _keep_freed_memory()
