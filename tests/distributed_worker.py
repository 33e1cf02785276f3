"""A data-parallel run for tests/test_distributed.py: ``mpiexec -n R python tests/distributed_worker.py OUT MODE``.

Every rank builds the same small float64 model (no BatchNorm), rank 0's weights are broadcast,
and each step every rank takes its shard of the global batch, backpropagates the mean loss over
its shard, averages the gradients over the ranks and steps AdamW. ``MODE``:
``train`` — 5 steps; rank 0 writes the weights after 3 and 5 steps, and the state after 3;
``raise`` — rank 1 raises in step 2 (the job must stop with an error naming it);
``nccl`` — ``train`` with the model and batches on the GPU and the gradients through NCCL
(``init(backend="nccl")``): on GPUs, or on the strict CuPy stand-in (MINIVIT_STRICT_CUPY=1), whose
cupy.cuda.nccl is NCCL's interface over MPI.

``mpiexec -n R python tests/distributed_worker.py - MODE TRAIN_FLAGS...`` runs ``minivit.train``'s
command line instead (with ``--distributed`` among the flags). ``MODE``: ``trainer``; ``trainer-stop3``
— rank 1 alone gets a SIGINT (Ctrl-C) during its 3rd step (every rank must stop after that step and
rank 0 save the checkpoint); ``trainer-raise`` — rank 1 raises in its 2nd step.

``syncbn`` / ``bn``: a small conv net with BatchNorm2d, synchronised (``convert_sync_batchnorm``)
or per rank, 5 steps; rank 0 writes its state dict.
"""
import pickle
import sys

import numpy as np

import minivit as mv
import minivit.functional as F
from minivit import distributed as dist
from minivit import nn, optim

GLOBAL_BATCH, STEPS = 8, 5


def make_model(seed):
    mv.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 4)).to(dtype=np.float64)


def make_bn_model(seed):
    """A conv (no bias: BatchNorm removes it, its gradient would be round-off that AdamW magnifies),
    BatchNorm2d and a head: its batch statistics are the global batch's only when synchronised."""
    mv.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 4)).to(dtype=np.float64)


def bn_batches():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((GLOBAL_BATCH * STEPS, 3, 6, 6)) * 2 + 1
    y = rng.integers(0, 4, GLOBAL_BATCH * STEPS)
    for s in range(STEPS):
        idx = np.arange(s * GLOBAL_BATCH, (s + 1) * GLOBAL_BATCH)
        yield s, x[idx], y[idx]


def bn_main(out, mode):
    """``syncbn``/``bn``: 5 AdamW steps of the BatchNorm model, synchronised or per rank; rank 0
    writes the state dict (weights and running statistics)."""
    dist.init()
    with dist.guard():
        model = make_bn_model(seed=dist.rank())
        if mode == "syncbn":
            assert dist.convert_sync_batchnorm(model) == 1
        dist.broadcast_parameters(model)
        opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
        for s, x, y in bn_batches():
            opt.zero_grad()
            F.cross_entropy(model(mv.tensor(dist.shard(x))), mv.tensor(dist.shard(y))).backward()
            dist.all_reduce_gradients(model.parameters())
            opt.step()
        if dist.is_main():
            with open(out, "wb") as f:
                pickle.dump({k: np.array(v) for k, v in model.state_dict().items()}, f)


def batches():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((GLOBAL_BATCH * STEPS, 6))
    y = rng.integers(0, 4, GLOBAL_BATCH * STEPS)
    for s in range(STEPS):
        idx = np.arange(s * GLOBAL_BATCH, (s + 1) * GLOBAL_BATCH)
        yield s, x[idx], y[idx]


def main(out, mode):
    dist.init("nccl" if mode == "nccl" else None)
    device = "cuda" if mode == "nccl" else "cpu"
    with dist.guard():
        model = make_model(seed=dist.rank()).to(device)  # different on every rank ...
        dist.broadcast_parameters(model)                 # ... until rank 0's weights are broadcast
        opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
        saved = {}
        for s, x, y in batches():
            if mode == "raise" and s == 2 and dist.rank() == 1:
                raise RuntimeError("a failure on purpose")
            xs, ys = dist.shard(x), dist.shard(y)
            opt.zero_grad()
            F.cross_entropy(model(mv.tensor(xs, device=device)), mv.tensor(ys, device=device)).backward()
            dist.all_reduce_gradients(model.parameters(), bucket_bytes=256)   # small buckets: several calls
            opt.step()
            if s + 1 == 3:
                saved["after3"] = _host(model.state_dict())
                saved["opt3"] = opt.state_dict() if device == "cpu" else None
        saved["after5"] = _host(model.state_dict())
        if dist.is_main():
            with open(out, "wb") as f:
                pickle.dump(saved, f)


def _host(state):
    from minivit import backend
    return {k: backend.to_numpy(v) for k, v in state.items()}


def trainer(mode, flags):
    import signal
    from minivit import train
    step, calls = train.Trainer.train_step, {"n": 0}

    def stepping(self, *args):
        calls["n"] += 1
        if dist.rank() == 1 and calls["n"] == 3 and mode == "trainer-stop3":
            signal.raise_signal(signal.SIGINT)
        if dist.rank() == 1 and calls["n"] == 2 and mode == "trainer-raise":
            raise RuntimeError("a failure on purpose")
        return step(self, *args)

    train.Trainer.train_step = stepping
    train.main(flags)


if __name__ == "__main__":
    if sys.argv[2].startswith("trainer"):
        trainer(sys.argv[2], sys.argv[3:])
    elif sys.argv[2] in ("syncbn", "bn"):
        bn_main(sys.argv[1], sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2])
