"""cupy.cuda, cupy.random and the TF32 compute types for the strict CuPy stand-in.

One device (0, compute capability 9.0), one stream; synchronising it counts as a sync
(:func:`minivit.testing.strict_cupy.count_syncs`). cupy.random draws with NumPy's Philox
generator (not cuRAND's numbers) under cuRAND's rules: seeds in [0, 2**64), float32 or
float64 draws only. cupy.cuda.nccl is NCCL's interface with MPI underneath (:func:`nccl_module`),
so ``minivit.distributed``'s GPU path runs under ``mpiexec`` here, device pointers and all.
"""
from __future__ import annotations

import types

import numpy as np

from minivit.testing import strict_cupy as sc

class _Stream:
    null = None
    ptr = 0             # the handle NCCL's calls take (0: the default stream)

    def synchronize(self):
        sc._sync("stream.synchronize")

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Event:
    def __init__(self, block=True, disable_timing=False, interprocess=False):
        import time
        self._t, self._clock = None, time.perf_counter

    def record(self, stream=None):
        self._t = self._clock()

    def synchronize(self):
        sc._sync("event.synchronize")


class _Device:
    def __init__(self, device=None):
        if device not in (None, 0):
            raise ValueError(f"the strict stand-in has one device (0), not {device!r}")
        self.id = 0
        self.compute_capability = "90"

    def synchronize(self):
        sc._sync("device.synchronize")

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def mem_info(self):
        return (64 << 30, 80 << 30)

    def __eq__(self, other):
        return isinstance(other, _Device) and other.id == self.id

    __hash__ = object.__hash__

    def __repr__(self):
        return "<CUDA Device 0 (strict stand-in)>"


class _MemoryPool:
    """CuPy's pool as far as the bench reads it: the device pool's used bytes are the live arrays',
    its total the peak since ``free_all_blocks`` (CuPy keeps freed blocks; block rounding is not
    emulated). The pinned (host) pool holds nothing."""

    def __init__(self, device: bool = True):
        self.device = device

    def used_bytes(self):
        return sc.memory_live_bytes() if self.device else 0

    def total_bytes(self):
        return sc.memory_peak_bytes() if self.device else 0

    def free_all_blocks(self):
        if self.device:
            sc.memory_reset_peak()

    def n_free_blocks(self):
        return 0

    def set_limit(self, size=None, fraction=None):
        pass

    def get_limit(self):
        return 0


memory_pool, pinned_pool = _MemoryPool(), _MemoryPool(device=False)


def _elapsed(start, end):
    sc._sync("get_elapsed_time")
    return 1000.0 * (end._t - start._t)


def _runtime_module():
    m = types.ModuleType("cupy.cuda.runtime")
    m.getDeviceCount = lambda: 1
    m.getDevice = lambda: 0
    m.getDeviceProperties = lambda i: {"name": b"strict CuPy stand-in (NumPy)", "totalGlobalMem": 80 << 30,
                                       "major": 9, "minor": 0, "multiProcessorCount": 132}
    m.runtimeGetVersion = lambda: 12080
    m.driverGetVersion = lambda: 12080
    m.deviceSynchronize = lambda: sc._sync("deviceSynchronize")
    m.is_hip = False
    m.CUDARuntimeError = RuntimeError
    return m


class _RandomState:
    """cupy.random.RandomState on NumPy's Generator (Philox), float32 draws made as float32."""

    def __init__(self, seed=None, method=None):
        self.method = method if method is not None else _CURAND["CURAND_RNG_PSEUDO_DEFAULT"]
        self.seed(seed)

    def seed(self, seed=None):
        if seed is not None and not 0 <= int(seed) < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        self._g = np.random.Generator(np.random.Philox(seed))

    @staticmethod
    def _float(dtype):
        dtype = np.dtype(dtype)
        if dtype.char not in "fd":           # cuRAND draws float32 or float64 only
            raise TypeError(f"cupy.random only supports float32 and float64, got {dtype}")
        return dtype.type

    def standard_normal(self, size=None, dtype=float):
        return sc._wrap(np.asarray(self._g.standard_normal(size, dtype=self._float(dtype))))

    def normal(self, loc=0.0, scale=1.0, size=None, dtype=float):
        t = self._float(dtype)
        return sc._wrap(np.asarray(self._g.normal(sc._in(loc, "normal"), sc._in(scale, "normal"), size)).astype(t))

    def uniform(self, low=0.0, high=1.0, size=None, dtype=float):
        t = self._float(dtype)
        return sc._wrap(np.asarray(self._g.uniform(sc._in(low, "uniform"), sc._in(high, "uniform"), size)).astype(t))

    def random_sample(self, size=None, dtype=float):
        return sc._wrap(np.asarray(self._g.random(size, dtype=self._float(dtype))))

    random = random_sample

    def rand(self, *size, dtype=float):
        return self.random_sample(size or None, dtype)

    def randn(self, *size, dtype=float):
        return self.standard_normal(size or None, dtype)

    def randint(self, low, high=None, size=None, dtype=int):
        return sc._wrap(np.asarray(self._g.integers(low, high, size, dtype=dtype)))

    def permutation(self, num):
        return sc._wrap(self._g.permutation(sc._in(num, "permutation")))

    def shuffle(self, a):
        self._g.shuffle(a._a)

    def choice(self, a, size=None, replace=True, p=None):
        return sc._out(self._g.choice(sc._in(a, "choice"), size, replace, sc._in(p, "choice")))

    def __getattr__(self, name):
        if name in sc._real.get("RandomState", ()):
            raise sc.StandinError(f"cupy.random.RandomState.{name} is not emulated: add it to strict_cupy.py")
        raise AttributeError(f"'RandomState' object has no attribute {name!r}")


_CURAND = {"CURAND_RNG_PSEUDO_DEFAULT": 100, "CURAND_RNG_PSEUDO_XORWOW": 101, "CURAND_RNG_PSEUDO_MRG32K3A": 121,
           "CURAND_RNG_PSEUDO_MTGP32": 141, "CURAND_RNG_PSEUDO_MT19937": 142, "CURAND_RNG_PSEUDO_PHILOX4_32_10": 161}
_random_state = {"rs": None}


def _get_random_state():
    if _random_state["rs"] is None:
        _random_state["rs"] = _RandomState()
    return _random_state["rs"]


def _set_random_state(rs):
    if not isinstance(rs, _RandomState):
        raise TypeError(f"set_random_state needs a cupy.random.RandomState, got {type(rs)}")
    _random_state["rs"] = rs


def random_module(real):
    over = {"RandomState": _RandomState, "get_random_state": _get_random_state,
            "set_random_state": _set_random_state,
            "seed": lambda seed=None: _get_random_state().seed(seed)}
    for name in ("standard_normal", "normal", "uniform", "random_sample", "random", "rand", "randn",
                 "randint", "permutation", "shuffle", "choice"):
        over[name] = (lambda n: lambda *a, **k: getattr(_get_random_state(), n)(*a, **k))(name)
    return sc._Module("cupy.random", real, None, over)


def cuda_modules(real):
    """(cupy.cuda, cupy.cuda.runtime, cupy.cuda.curand) of the stand-in."""
    cuda = sc._Module("cupy.cuda", real.cuda, None, {})
    runtime = _runtime_module()
    curand = types.ModuleType("cupy.cuda.curand")      # (the real one needs libcurand: its constants, from curand.h)
    curand.__dict__.update(_CURAND)
    # The libraries backend.check_device loads up front: the stand-in's matrix products are
    # NumPy's and its kernels are emulated, so there is nothing to load; they only exist.
    cublas = types.ModuleType("cupy.cuda.cublas")
    nvrtc = types.ModuleType("cupy.cuda.nvrtc")
    nvrtc.getVersion = lambda: (12, 0)
    stream = _Stream()
    cuda.__dict__.update(cublas=cublas, nvrtc=nvrtc, nccl=nccl_module())
    cuda.__dict__.update(runtime=runtime, curand=curand, Device=_Device, Stream=_Stream, Event=_Event,
                         get_current_stream=lambda device_id=None: stream, get_elapsed_time=_elapsed,
                         is_available=lambda: True, get_device_id=lambda: 0, MemoryPool=_MemoryPool)
    return cuda, runtime, curand


# NCCL's enums, from nccl.h (ncclDataType_t, ncclRedOp_t): the real binding needs libnccl to import.
_NCCL_TYPES = {0: np.int8, 1: np.uint8, 2: np.int32, 3: np.uint32, 4: np.int64, 5: np.uint64, 6: np.float16,
               7: np.float32, 8: np.float64}
_NCCL_NAMES = {"NCCL_INT8": 0, "NCCL_CHAR": 0, "NCCL_UINT8": 1, "NCCL_INT32": 2, "NCCL_INT": 2, "NCCL_UINT32": 3,
               "NCCL_INT64": 4, "NCCL_UINT64": 5, "NCCL_FLOAT16": 6, "NCCL_HALF": 6, "NCCL_FLOAT32": 7,
               "NCCL_FLOAT": 7, "NCCL_FLOAT64": 8, "NCCL_DOUBLE": 8,
               "NCCL_SUM": 0, "NCCL_PROD": 1, "NCCL_MAX": 2, "NCCL_MIN": 3, "NCCL_AVG": 4}


class NcclError(RuntimeError):
    pass


def _host_view(ptr: int, count: int, datatype: int) -> np.ndarray:
    """The ``count`` elements at a stand-in "device pointer" (a NumPy array's address), as an array."""
    import ctypes
    if datatype not in _NCCL_TYPES:
        raise NcclError(f"ncclInvalidArgument: datatype {datatype}")
    dtype = np.dtype(_NCCL_TYPES[datatype])
    buf = (ctypes.c_char * (count * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype)


class _NcclCommunicator:
    """``cupy.cuda.nccl.NcclCommunicator(ndev, commId, rank)`` over MPI's COMM_WORLD: the same
    checks NCCL makes at creation (every rank passes the same unique id, its own rank, the world's
    size), then allReduce and bcast on the arrays behind the pointers."""

    def __init__(self, ndev, commId, rank):
        from mpi4py import MPI
        world = MPI.COMM_WORLD
        if ndev != world.Get_size() or rank != world.Get_rank():
            raise NcclError(f"ncclInvalidArgument: NcclCommunicator({ndev}, id, {rank}) in an MPI world of "
                            f"{world.Get_size()} where this process is rank {world.Get_rank()}")
        ids = world.allgather(tuple(commId))
        if any(i != ids[0] for i in ids):
            raise NcclError("ncclInvalidUsage: the ranks passed different unique ids (broadcast rank 0's)")
        self._comm, self._rank, self._size = world.Dup(), rank, ndev

    def _op(self, op):
        from mpi4py import MPI
        if op not in (0, 1, 2, 3):
            raise NcclError(f"ncclInvalidArgument: reduction op {op} (the stand-in has sum, prod, max, min)")
        return (MPI.SUM, MPI.PROD, MPI.MAX, MPI.MIN)[op]

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        from mpi4py import MPI
        recv = _host_view(recvbuf, count, datatype)
        send = MPI.IN_PLACE if sendbuf == recvbuf else _host_view(sendbuf, count, datatype)
        self._comm.Allreduce(send, recv, op=self._op(op))

    def bcast(self, buff, count, datatype, root, stream):
        self._comm.Bcast(_host_view(buff, count, datatype), root=root)

    def rank_id(self):
        return self._rank

    def size(self):
        return self._size

    def destroy(self):
        self._comm.Free()


def nccl_module():
    """The stand-in's cupy.cuda.nccl: NCCL's constants, ``get_unique_id`` and the communicator."""
    m = types.ModuleType("cupy.cuda.nccl")
    m.__dict__.update(_NCCL_NAMES)
    m.NcclError = NcclError
    m.NcclCommunicator = _NcclCommunicator
    m.get_unique_id = lambda: tuple(int(b) for b in np.random.default_rng().integers(-128, 128, 128))
    m.get_version = lambda: 22800
    m.available = True
    return m


def core_modules(real_linalg):
    """(cupy._core, cupy._core._routines_linalg): the compute types (TF32), set and read back."""
    compute = {}
    linalg = types.ModuleType("cupy._core._routines_linalg")
    for n in dir(real_linalg):
        if n.startswith("COMPUTE_TYPE_"):
            setattr(linalg, n, getattr(real_linalg, n))
    linalg.set_compute_type = lambda dtype, ct: compute.__setitem__(np.dtype(dtype), ct)
    linalg.get_compute_type = lambda dtype: compute.get(np.dtype(dtype), real_linalg.COMPUTE_TYPE_DEFAULT)
    core = types.ModuleType("cupy._core")
    core._routines_linalg = linalg
    return core, linalg
