"""Data parallelism over MPI (minivit.distributed): two ranks on the CPU equal one process trained
on the same global batches (float64, within 1e-10), a checkpoint of the two-rank run resumes on one
process, a failing rank stops the whole job with an error naming it; and the pieces in one process."""
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minivit as mv
import minivit.functional as F
from minivit import distributed as dist
from minivit import nn, optim

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import distributed_worker as worker  # noqa: E402


def _mpiexec():
    exe = shutil.which("mpiexec")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        exe = None
    if exe is None:
        pytest.skip("mpiexec or mpi4py missing: pip install 'minivit[mpi]' (mpi4py and the mpich wheel)")
    return exe


def _run(n, mode, out, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MINIVIT_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([_mpiexec(), "-n", str(n), sys.executable, str(HERE / "distributed_worker.py"), str(out), mode],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _one_process(steps, start=None):
    """The same training in one process on the whole global batches (optionally from a saved state)."""
    model = worker.make_model(seed=0)
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    if start is not None:
        model.load_state_dict(start["after3"])
        opt.load_state_dict(start["opt3"])
    for s, x, y in worker.batches():
        if s >= steps or (start is not None and s < 3):
            continue
        opt.zero_grad()
        F.cross_entropy(model(mv.tensor(x)), mv.tensor(y)).backward()
        opt.step()
    return {k: np.array(v) for k, v in model.state_dict().items()}


def test_two_ranks_equal_one_process_and_resume_on_one(tmp_path):
    out = tmp_path / "run.pkl"
    r = _run(2, "train", out)
    assert r.returncode == 0, r.stderr[-2000:]
    saved = pickle.loads(out.read_bytes())
    ref3, ref5 = _one_process(3), _one_process(5)
    for k in ref5:
        np.testing.assert_allclose(saved["after3"][k], ref3[k], rtol=1e-10, atol=1e-12, err_msg=k)
        np.testing.assert_allclose(saved["after5"][k], ref5[k], rtol=1e-10, atol=1e-12, err_msg=k)
    resumed = _one_process(5, start=saved)                 # the 2-rank state after 3 steps, 2 more on 1 process
    for k in ref5:
        np.testing.assert_allclose(resumed[k], saved["after5"][k], rtol=1e-10, atol=1e-12, err_msg=k)
    assert not np.allclose(saved["after5"]["0.weight"], worker.make_model(seed=0).state_dict()["0.weight"])


def test_a_failing_rank_stops_the_job_with_its_name(tmp_path):
    r = _run(2, "raise", tmp_path / "none.pkl", timeout=60)
    assert r.returncode != 0
    assert "error: rank 1 of 2: RuntimeError: a failure on purpose" in r.stderr
    assert not (tmp_path / "none.pkl").exists()


# ----------------------------------------------------------------- one process: the pieces
def test_shards_are_disjoint_and_cover_the_batch():
    idx = np.arange(12)
    parts = [dist.shard(idx, r, 3) for r in range(3)]
    assert np.array_equal(np.concatenate(parts), idx)
    with pytest.raises(ValueError, match="does not split over 5 ranks"):
        dist.shard(idx, 0, 5)


def test_a_world_of_one_is_the_identity():
    assert dist.init() >= 1
    if dist.world_size() == 1:
        a = np.arange(4.0)
        assert dist.all_reduce(a, "mean") is a and np.array_equal(a, np.arange(4.0))
        p = nn.Parameter(np.ones(3))
        p.grad = np.full(3, 2.0)
        assert dist.all_reduce_gradients([p]) == 0 and np.array_equal(p.grad, [2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="op must be one of"):
        dist.all_reduce(np.zeros(2), "prod")


def test_gradients_go_in_a_few_buckets_of_one_dtype():
    ps = [nn.Parameter(np.zeros(n, dtype=np.float32)) for n in (10, 10, 10, 40, 5)]
    for p in ps:
        p.grad = np.zeros_like(p.data)
    ps[2].grad = None                                      # no gradient: left out
    sizes = [[p.data.size for p in b] for b in dist._buckets(ps, bucket_bytes=100)]
    assert sizes == [[10, 10], [40], [5]]                  # 80 bytes, then 40·4 > 100 alone, then the rest
    ps[4].grad = np.zeros(5, dtype=np.float64)
    assert [[p.data.size for p in b] for b in dist._buckets(ps, bucket_bytes=10**6)] == [[10, 10, 40], [5]]
