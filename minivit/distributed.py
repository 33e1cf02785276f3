"""Data parallelism on an existing communication library: MPI between CPU processes, NCCL between GPUs.

Every process (a *rank*) holds a full copy of the model. Each step, rank r computes the gradient
of the mean loss over its own part of the global batch; the gradients are then summed over the
ranks and divided by their number (one *all-reduce*), so every rank holds the gradient of the
mean loss over the whole global batch, takes the same optimiser step and keeps the same weights.
With equal parts this is exactly one process training on the global batch (float64 tests hold
the two equal). BatchNorm's batch statistics are the exception: each rank's own part's, unless the
layers are converted (:func:`convert_sync_batchnorm`, PyTorch's SyncBatchNorm), whose sums are
all-reduced in the forward and backward passes.

    mpiexec -n 2 python my_script.py

    from minivit import distributed as dist
    dist.init()                                    # from the MPI environment (mpi4py)
    dist.broadcast_parameters(model)               # every rank starts from rank 0's weights
    for step, idx in ...:
        mine = dist.shard(idx)                     # this rank's part of the global batch
        loss = loss_fn(model(x[mine]), y[mine]); loss.backward()
        dist.all_reduce_gradients(model.parameters())   # a few bucketed all-reduces, then / world_size
        opt.step()

On the CPU the arrays go through MPI's buffer interface (mpi4py's upper-case methods: no
pickling). On GPUs (``init(backend="nccl")``) they go through NCCL (``cupy.cuda.nccl``), one GPU per
rank, its communicator set up with a unique id that rank 0 makes and MPI broadcasts. mpi4py and an
MPI (the ``mpich`` wheel) are the optional extra ``minivit[mpi]``; without them, or outside
``mpiexec``, :func:`init` gives a world of one process and every collective is the identity.

A rank that raises inside :func:`guard` prints ``error: rank R: ...`` and aborts the whole MPI job
(``MPI_Abort``), so the others stop instead of waiting forever in their next all-reduce.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import numpy as np

from minivit import amp, backend, nn
from minivit.functional.norm import BatchNorm as _BatchNormFunction, _stat_array

_state = {"comm": None, "rank": 0, "size": 1, "backend": None, "nccl": None}

# The gradients go in buckets of about this many bytes: a few large all-reduces instead of one
# per parameter (each collective has a fixed latency), as PyTorch's DDP (25 MB).
BUCKET_BYTES = 25 * 2**20


def init(backend_name: str | None = None) -> int:
    """Join the job started by ``mpiexec`` (or a scheduler); returns the world size.

    ``backend_name``: ``"mpi"`` (CPU arrays), ``"nccl"`` (CuPy arrays, one GPU per rank: the
    rank's GPU is ``rank % device count``), or None: ``"mpi"`` when mpi4py is importable and the
    job has more than one rank, else a single process (rank 0 of 1)."""
    if backend_name not in (None, "mpi", "nccl"):
        raise ValueError(f"distributed.init: backend must be 'mpi', 'nccl' or None, got {backend_name!r}")
    try:
        from mpi4py import MPI
    except ImportError:
        if backend_name is not None:
            raise RuntimeError(f"distributed.init(backend={backend_name!r}) needs mpi4py and an MPI: "
                               f"pip install 'minivit[mpi]'") from None
        _state.update(comm=None, rank=0, size=1, backend=None)
        return 1
    comm = MPI.COMM_WORLD
    _state.update(comm=comm, rank=comm.Get_rank(), size=comm.Get_size(), backend=backend_name or "mpi")
    if _state["backend"] == "nccl":
        _init_nccl(comm)
    return _state["size"]


def _init_nccl(comm):
    """One NCCL communicator over the ranks: rank 0 makes the unique id, MPI broadcasts it."""
    cupy, nccl = backend.cupy_nccl()
    cupy.cuda.Device(_state["rank"] % cupy.cuda.runtime.getDeviceCount()).use()
    uid = nccl.get_unique_id() if _state["rank"] == 0 else None
    uid = comm.bcast(uid, root=0)                 # a small tuple of bytes: the one pickled message
    _state["nccl"] = nccl.NcclCommunicator(_state["size"], uid, _state["rank"])


# Environment variables that MPI launchers set in every process they start (MPICH's and Intel
# MPI's Hydra: PMI_*; Open MPI: OMPI_COMM_WORLD_*; PMIx-based launchers and Slurm's srun: PMIX_RANK).
_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


def launched_by_mpi() -> bool:
    """Whether this process was started by ``mpiexec`` (or a launcher like it), from its environment."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def mpi_available() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def is_initialized() -> bool:
    return _state["comm"] is not None


def rank() -> int:
    return _state["rank"]


def world_size() -> int:
    return _state["size"]


def is_main() -> bool:
    """Rank 0: the one that writes the run directory, the logs and the checkpoints."""
    return _state["rank"] == 0


_OPS = ("sum", "mean", "max", "min")


def all_reduce(array, op: str = "sum"):
    """Reduce ``array`` over the ranks, in place (every rank gets the result); returns it."""
    if op not in _OPS:
        raise ValueError(f"all_reduce: op must be one of {_OPS}, got {op!r}")
    if _state["size"] == 1:
        return array
    if backend.is_cupy_array(array):
        return _nccl_all_reduce(array, op)
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
        raise ValueError("all_reduce: pass a C-contiguous NumPy array (MPI reads it as a buffer, in place)")
    from mpi4py import MPI
    mpi_op = {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
    _state["comm"].Allreduce(MPI.IN_PLACE, array, op=mpi_op)
    if op == "mean":
        array /= _state["size"]
    return array


def _nccl_all_reduce(array, op):
    cupy, nccl = backend.cupy_nccl()
    if _state["nccl"] is None:
        raise RuntimeError("all_reduce of a CuPy array needs distributed.init(backend='nccl')")
    dtypes = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
              np.dtype(np.float16): nccl.NCCL_FLOAT16}
    if array.dtype not in dtypes or not array.flags.c_contiguous:
        raise ValueError(f"all_reduce: NCCL takes C-contiguous float16/32/64 arrays, got {array.dtype}")
    nccl_op = {"sum": nccl.NCCL_SUM, "mean": nccl.NCCL_SUM, "max": nccl.NCCL_MAX, "min": nccl.NCCL_MIN}[op]
    stream = cupy.cuda.get_current_stream()
    _state["nccl"].allReduce(array.data.ptr, array.data.ptr, array.size, dtypes[array.dtype], nccl_op, stream.ptr)
    if op == "mean":
        array /= _state["size"]
    return array


def broadcast(array, root: int = 0):
    """Overwrite ``array`` on every rank with ``root``'s, in place; returns it."""
    if _state["size"] == 1:
        return array
    if backend.is_cupy_array(array):
        cupy, nccl = backend.cupy_nccl()
        dtypes = {np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
                  np.dtype(np.float64): nccl.NCCL_FLOAT64, np.dtype(np.int32): nccl.NCCL_INT32,
                  np.dtype(np.int64): nccl.NCCL_INT64, np.dtype(np.uint8): nccl.NCCL_UINT8}   # buffers: int64 counts
        if array.dtype not in dtypes or not array.flags.c_contiguous:
            raise ValueError(f"broadcast: NCCL takes C-contiguous arrays of {sorted(str(d) for d in dtypes)}, "
                             f"got {array.dtype}")
        _state["nccl"].bcast(array.data.ptr, array.size, dtypes[array.dtype], root, cupy.cuda.get_current_stream().ptr)
        return array
    _state["comm"].Bcast(array, root=root)
    return array


def broadcast_object(obj, root: int = 0):
    """``root``'s Python object on every rank (pickled: for small things, a path or a flag)."""
    if _state["size"] == 1:
        return obj
    return _state["comm"].bcast(obj, root=root)


def all_reduce_host(values, op: str = "sum") -> np.ndarray:
    """A few host numbers reduced over the ranks (through MPI even when the gradients go through
    NCCL): a float64 copy of ``values``, reduced; in a world of one, the copy."""
    array = np.array(values, dtype=np.float64).reshape(-1)
    if _state["size"] == 1:
        return array
    from mpi4py import MPI
    mpi_op = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
    _state["comm"].Allreduce(MPI.IN_PLACE, array, op=mpi_op)
    return array


def barrier():
    if _state["size"] > 1:
        _state["comm"].Barrier()


def broadcast_parameters(model, root: int = 0):
    """Every parameter and buffer of ``model`` set to ``root``'s values (a DDP's start)."""
    for _, t in list(model.named_parameters()) + list(model.named_buffers()):
        data = t.data if hasattr(t, "data") else t
        broadcast(data, root)


def _buckets(params, bucket_bytes):
    """Consecutive groups of parameters (with gradients), each about ``bucket_bytes``, one dtype."""
    bucket, size = [], 0
    for p in params:
        if p.grad is None:
            continue
        if bucket and (size + p.grad.nbytes > bucket_bytes or p.grad.dtype != bucket[0].grad.dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.grad.nbytes
    if bucket:
        yield bucket


def all_reduce_gradients(params, bucket_bytes: int = BUCKET_BYTES) -> int:
    """Average every parameter's gradient over the ranks: the gradients are copied into a few flat
    buffers (about ``bucket_bytes`` each), summed by one all-reduce per buffer, divided by the
    world size and copied back. Returns the number of all-reduces (0 in a world of one)."""
    if _state["size"] == 1:
        return 0
    calls = 0
    for bucket in _buckets(list(params), bucket_bytes):
        xp = bucket[0].xp
        flat = xp.concatenate([p.grad.reshape(-1) for p in bucket])            # one buffer
        all_reduce(flat, "sum")
        flat /= _state["size"]
        start = 0
        for p in bucket:
            n = p.grad.size
            p.grad = flat[start:start + n].reshape(p.grad.shape)               # a view of the buffer
            start += n
        calls += 1
    return calls


def shard(indices, rank_: int | None = None, world: int | None = None):
    """This rank's part of a global batch of ``indices``: contiguous and equal (the global batch
    must divide by the world size), so the ranks' parts are disjoint and cover the batch."""
    r = _state["rank"] if rank_ is None else rank_
    w = _state["size"] if world is None else world
    n = len(indices)
    if n % w:
        raise ValueError(f"shard: a global batch of {n} does not split over {w} ranks: make the batch size "
                         f"a multiple of the number of ranks")
    per = n // w
    return indices[r * per:(r + 1) * per]


@contextmanager
def guard():
    """Run the body; if it raises on one rank, print ``error: rank R: ...`` and abort the whole job
    (every rank), instead of leaving the others blocked in a collective."""
    try:
        yield
    except BaseException as e:                                                 # noqa: BLE001 (then abort)
        if _state["size"] == 1 or isinstance(e, SystemExit) and not e.code:
            raise
        abort(f"{type(e).__name__}: {e}")


def abort(message: str, code: int = 1):
    """Print ``error: rank R of N: message`` (one line) and end the whole job with ``code``
    (``MPI_Abort``: every rank stops, including those waiting in a collective)."""
    text = " ".join(str(message).split())
    print(f"error: rank {_state['rank']} of {_state['size']}: {text}", file=sys.stderr, flush=True)
    if _state["size"] == 1:
        raise SystemExit(code)
    _state["comm"].Abort(code)


# =========================================================================== synchronised BatchNorm
class SyncBatchNormFunction(_BatchNormFunction):
    """BatchNorm whose training statistics are those of the *global* batch, all ranks' parts.

    Forward: the per-channel sums Σx and the counts are all-reduced, giving the global mean μ;
    then Σ(x − μ)², giving the global (biased) variance: two small all-reduces (two passes, as
    the one-process BatchNorm computes it, not Σx² − Nμ², which loses digits). Backward: with
    g' = g·w and x̂ = (x − μ)/σ, ∂x = (1/σ)(g' − mean(g') − x̂·mean(g'·x̂)), the two means over
    the global batch: one all-reduce of the two per-channel sums. Each rank's gradient is then
    the world size times the global mean loss's gradient with respect to its own inputs, as
    for every other layer of a data-parallel step (the gradient all-reduce divides by the world
    size). Evaluation: the running statistics, no communication."""
    fast_path = False                    # the reference formulas, with the sums all-reduced

    def forward(self, x, *params):
        if not self.training:
            return super().forward(x, *params)
        xp = backend.get_array_module(x)
        c = x.shape[1]
        self.cpu_fast = False
        self.axes = (0,) + tuple(range(2, x.ndim))                         # every dim but the channel one
        pshape = (1, c) + (1,) * (x.ndim - 2)
        s1 = xp.concatenate([x.sum(axis=self.axes), xp.full(1, x.size // c, dtype=x.dtype)])
        all_reduce(s1, "sum")
        self.count = float(s1[c])                                          # values per channel, all ranks
        mu = (s1[:c] / self.count).reshape(pshape)
        xc = x - mu
        var = all_reduce(xp.ascontiguousarray((xc * xc).sum(axis=self.axes)), "sum")
        var = (var / self.count).reshape(pshape)
        self._update_running_stats(mu, var, n=int(self.count))
        self.rstd = 1 / (var + self.eps) ** 0.5                            # (1, C, 1, ...)
        self.xhat = xc * self.rstd
        w = params[0] if self.has_weight else None
        b = params[-1] if self.has_bias else None
        self.w = None if w is None else w.reshape(pshape)
        y = self.xhat if w is None else self.xhat * self.w
        return y if b is None else y + b.reshape(pshape)

    def backward(self, gy):
        if not self.training:
            return super().backward(gy)
        xp = backend.get_array_module(gy)
        grads = [None]
        if self.needs_grad[0]:
            gxhat = gy if self.w is None else gy * self.w
            c = gxhat.shape[1]
            sums = xp.concatenate([gxhat.sum(axis=self.axes), (gxhat * self.xhat).sum(axis=self.axes)])
            all_reduce(sums, "sum")
            mean_g = (sums[:c] / self.count).reshape(self.rstd.shape)
            mean_gx = (sums[c:] / self.count).reshape(self.rstd.shape)
            grads[0] = self.rstd * (gxhat - mean_g - self.xhat * mean_gx)
        if self.has_weight:          # this rank's part: the gradient all-reduce averages it
            grads.append((gy * self.xhat).sum(axis=self.axes) if self.needs_grad[len(grads)] else None)
        if self.has_bias:
            grads.append(gy.sum(axis=self.axes) if self.needs_grad[len(grads)] else None)
        return tuple(grads)


class SyncBatchNorm(nn.BatchNorm2d):
    """``torch.nn.SyncBatchNorm``: BatchNorm2d whose training statistics are the global batch's
    (:class:`SyncBatchNormFunction`); evaluation as BatchNorm2d. Same parameters, buffers and
    state-dict keys. In a world of one it is BatchNorm2d (its reference formulas)."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        if x.ndim != self._input_ndim:
            raise ValueError(f"{type(self).__name__} expects a {self._input_ndim}-D {self._layout} input, "
                             f"got shape {x.shape}")
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.data += 1
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked.item())
        w, b = self.weight, self.bias
        if amp._enabled:                                  # autocast: float32 statistics, as batch_norm
            x, w, b = amp.cast_inputs("batch_norm", x, w, b)
        c = x.shape[1]
        rm = _stat_array("running_mean", self.running_mean, c)
        rv = _stat_array("running_var", self.running_var, c)
        fn = SyncBatchNormFunction(rm, rv, True, momentum, self.eps, w is not None, b is not None)
        return fn(x, *[p for p in (w, b) if p is not None])


class SyncBatchNorm3d(SyncBatchNorm):
    """SyncBatchNorm of an NCDHW volume (BatchNorm3d's)."""
    _input_ndim, _layout = 5, "NCDHW"


def convert_sync_batchnorm(module) -> int:
    """``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, in place: every BatchNorm2d/3d of
    ``module`` becomes a SyncBatchNorm (the same object, parameters and buffers; the optimiser
    built on them still holds them). Returns the number of layers converted."""
    count = 0
    for m in module.modules():
        if type(m) is nn.BatchNorm2d or type(m) is nn.BatchNorm3d:
            m.__class__ = SyncBatchNorm3d if type(m) is nn.BatchNorm3d else SyncBatchNorm
            count += 1
    return count
