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


def _gpu_env():
    """The environment of a GPU-path run: real GPUs when this machine has at least two (NCCL puts one
    rank on each), else the strict CuPy stand-in, whose cupy.cuda.nccl runs over MPI; skipped where
    neither exists."""
    from minivit import backend
    if backend.cupy_available() and not backend.is_strict_standin():
        n = backend.xp_for("cuda").cuda.runtime.getDeviceCount()
        if n < 2:
            pytest.skip(f"NCCL runs one rank per GPU and this machine has {n}: two ranks need two GPUs "
                        "(test_nccl_world_of_one_on_this_gpu checks the one)")
        return {}
    from minivit.testing import strict_cupy
    if strict_cupy.available() is not None:
        pytest.skip(strict_cupy.available())
    return {"MINIVIT_STRICT_CUPY": "1"}


def _run(n, mode, out, timeout=120, env=None):
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MINIVIT_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", **(env or {}))
    return subprocess.run([_mpiexec(), "-n", str(n), sys.executable, str(HERE / "distributed_worker.py"), str(out), mode],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _run_trainer(n, flags, mode="trainer", timeout=120, env=None):
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MINIVIT_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", **(env or {}))
    return subprocess.run([_mpiexec(), "-n", str(n), sys.executable, str(HERE / "distributed_worker.py"), "-", mode,
                           *flags], capture_output=True, text=True, timeout=timeout, env=env)


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


def _two_ranks_equal_one_process(mode, out, env=None):
    """The worker's 5 steps on 2 ranks: the weights after 3 and 5 steps equal one process's."""
    r = _run(2, mode, out, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    saved = pickle.loads(out.read_bytes())
    ref3, ref5 = _one_process(3), _one_process(5)
    for k in ref5:
        np.testing.assert_allclose(saved["after3"][k], ref3[k], rtol=1e-10, atol=1e-12, err_msg=k)
        np.testing.assert_allclose(saved["after5"][k], ref5[k], rtol=1e-10, atol=1e-12, err_msg=k)
    return saved, ref5


def test_two_ranks_equal_one_process_and_resume_on_one(tmp_path):
    saved, ref5 = _two_ranks_equal_one_process("train", tmp_path / "run.pkl")
    resumed = _one_process(5, start=saved)                 # the 2-rank state after 3 steps, 2 more on 1 process
    for k in ref5:
        np.testing.assert_allclose(resumed[k], saved["after5"][k], rtol=1e-10, atol=1e-12, err_msg=k)
    assert not np.allclose(saved["after5"]["0.weight"], worker.make_model(seed=0).state_dict()["0.weight"])


def test_nccl_two_ranks_equal_one_process(tmp_path):
    # The GPU path: the model and batches on the device, the gradients through NCCL (device
    # pointers, NCCL's datatypes, the unique id broadcast over MPI), 5 AdamW steps in float64.
    env = _gpu_env()
    _mpiexec()
    _two_ranks_equal_one_process("nccl", tmp_path / "nccl.pkl", env=env)


def test_nccl_world_of_one_on_this_gpu():
    # One rank, one GPU (the H200 machine has one): the communicator is made from the unique id and
    # NCCL's all-reduce and broadcast run on device arrays (called directly: in a world of one,
    # dist.all_reduce returns at once). On a CPU machine, the stand-in's NCCL, one MPI process.
    from minivit import backend
    if not backend.cupy_available():
        pytest.skip("no GPU (the strict stand-in runs this in the CuPy test pass: MINIVIT_STRICT_CUPY=1)")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py missing: pip install 'minivit[mpi]'")
    cp = backend.xp_for("cuda")
    saved = dict(dist._state)
    try:
        assert dist.init("nccl") == 1 and dist._state["nccl"] is not None
        for dtype in (np.float16, np.float32, np.float64):
            a = cp.arange(1, 9, dtype=dtype)
            assert dist._nccl_all_reduce(a, "sum") is a
            np.testing.assert_array_equal(backend.to_numpy(a), np.arange(1, 9, dtype=dtype))   # one rank: itself
            dist._nccl_all_reduce(a, "max")
        with pytest.raises(ValueError, match="NCCL takes C-contiguous float16/32/64 arrays, got int32"):
            dist._nccl_all_reduce(cp.zeros(3, dtype=np.int32), "sum")
    finally:
        dist._state.update(saved)


def test_synchronised_batchnorm_equals_one_process_and_per_rank_does_not(tmp_path):
    model = worker.make_bn_model(seed=0)                   # one process, plain BatchNorm2d, the global batches
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    for _, x, y in worker.bn_batches():
        opt.zero_grad()
        F.cross_entropy(model(mv.tensor(x)), mv.tensor(y)).backward()
        opt.step()
    ref = {k: np.array(v) for k, v in model.state_dict().items()}
    for mode in ("syncbn", "bn"):
        r = _run(2, mode, tmp_path / f"{mode}.pkl")
        assert r.returncode == 0, r.stderr[-2000:]
        got = pickle.loads((tmp_path / f"{mode}.pkl").read_bytes())
        assert got.keys() == ref.keys()
        if mode == "syncbn":                               # weights and running statistics
            for k in ref:
                np.testing.assert_allclose(got[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=k)
        else:                                              # per-rank statistics: another model
            assert np.abs(got["1.running_var"] - ref["1.running_var"]).max() > 1e-3


def test_a_failing_rank_stops_the_job_with_its_name(tmp_path):
    r = _run(2, "raise", tmp_path / "none.pkl", timeout=60)
    assert r.returncode != 0
    assert "error: rank 1 of 2: RuntimeError: a failure on purpose" in r.stderr
    assert not (tmp_path / "none.pkl").exists()


# ----------------------------------------------------------------- the trainer
# A tiny ViT without dropout or drop-path (their draws would differ), float64, augmentation on
# (random crop and flip: drawn per image of the global batch), 5 steps of 16; a test split of 30
# in batches of 8, shared 15/15 by two ranks.
TRAIN = ["--model", "vit_tiny", "--model-kwargs", "depth=1,embed_dim=16,num_heads=2,patch_size=8",
         "--dataset", "synthetic", "--subset", "80", "--test-subset", "30", "--batch-size", "16",
         "--eval-batch-size", "8", "--epochs", "1", "--lr", "1e-2", "--precision", "fp64", "--no-progress",
         "--log-every", "2", "--device", "cpu"]


def _weights(run_dir):
    from minivit.train import load_checkpoint
    ck = load_checkpoint(Path(run_dir) / "last.ckpt")
    return ck, {k: np.asarray(v) for k, v in ck["model"].items()}


def _close_runs(a, b):
    (ca, wa), (cb, wb) = a, b
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=1e-10, atol=1e-12, err_msg=k)
    for ma, mb in zip(ca["metrics"], cb["metrics"], strict=True):
        for key in ("train_loss", "test_loss"):
            assert ma[key] == pytest.approx(mb[key], rel=1e-10), key
        assert (ma["train_acc"], ma["test_acc"], ma["step"]) == (mb["train_acc"], mb["test_acc"], mb["step"])


def test_trainer_on_two_ranks_equals_one_process_and_resumes_on_one(tmp_path):
    from minivit import train
    _mpiexec()
    one = train.run(TRAIN + ["--out-dir", str(tmp_path / "one")], log=lambda *a: None)
    assert one["status"] == "done"
    r = _run_trainer(2, TRAIN + ["--distributed", "--out-dir", str(tmp_path / "two")])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("done: test acc") == 1                       # rank 0 alone speaks
    two = _weights(tmp_path / "two")
    _close_runs(_weights(tmp_path / "one"), two)                       # weights, losses, test counts
    assert two[0]["config"]["world_size"] == 2 and two[0]["config"]["command"].startswith("mpiexec -n 2 ")
    start = train.Trainer(train.resolve_config(train.build_parser().parse_args(TRAIN)), tmp_path / "init",
                          log=lambda *a: None).model.state_dict()           # the weights before step 1
    assert min(np.abs(two[1][k] - np.asarray(v)).max() for k, v in start.items()) > 1e-4   # every tensor moved

    # Ctrl-C reaches rank 1 alone during step 3: every rank stops after it, rank 0 saves;
    # the checkpoint then resumes on one process to the uninterrupted two-rank run's weights.
    r = _run_trainer(2, TRAIN + ["--distributed", "--out-dir", str(tmp_path / "stop")], mode="trainer-stop3")
    assert r.returncode == train.EXIT_INTERRUPTED, r.stderr[-3000:]
    ck, _ = _weights(tmp_path / "stop")
    assert (ck["epoch"], ck["step_in_epoch"], ck["config"]["world_size"]) == (0, 3, 2)
    resumed = train.run(["--resume", str(tmp_path / "stop")], log=lambda *a: None)
    assert resumed["status"] == "done"
    stopped = _weights(tmp_path / "stop")
    assert stopped[0]["config"]["world_size"] == 1
    _close_runs(stopped, two)


def test_trainer_on_two_gpu_ranks_equals_one_process(tmp_path):
    # --distributed --device cuda: NCCL between the ranks (on the stand-in: its NCCL over MPI); the
    # same weights, losses and test counts as one CPU process.
    from minivit import train
    env = _gpu_env()
    _mpiexec()
    one = train.run(TRAIN + ["--out-dir", str(tmp_path / "one")], log=lambda *a: None)
    assert one["status"] == "done"
    flags = TRAIN[:-1] + ["cuda", "--distributed", "--out-dir", str(tmp_path / "two")]
    r = _run_trainer(2, flags, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    two = _weights(tmp_path / "two")
    assert two[0]["config"]["device"] == "cuda" and two[0]["config"]["world_size"] == 2
    _close_runs(_weights(tmp_path / "one"), two)


def test_trainer_sync_bn_equals_one_process(tmp_path):
    from minivit import train
    _mpiexec()
    flags = TRAIN[4:] + ["--model", "convmixer_tiny", "--model-kwargs", "dim=8,depth=1,kernel_size=3,patch_size=8"]
    train.run(flags + ["--out-dir", str(tmp_path / "one")], log=lambda *a: None)
    r = _run_trainer(2, flags + ["--distributed", "--sync-bn", "--out-dir", str(tmp_path / "two")])
    assert r.returncode == 0, r.stderr[-3000:]
    _close_runs(_weights(tmp_path / "one"), _weights(tmp_path / "two"))     # running statistics included


def test_trainer_segmentation_on_two_ranks_equals_one_process(tmp_path):
    # The shards hold different numbers of ignored (border) pixels: each rank's per-pixel mean is
    # weighted by its share of the global batch's pixels, and mIoU's confusion matrix is summed.
    from minivit import train
    _mpiexec()
    flags = ["--task", "segmentation", "--model", "segformer_tiny", "--dataset", "shapes", "--subset", "16",
             "--test-subset", "10", "--batch-size", "8", "--eval-batch-size", "4", "--epochs", "1", "--lr", "1e-2",
             "--precision", "fp64", "--no-progress", "--device", "cpu"]
    train.run(flags + ["--out-dir", str(tmp_path / "one")], log=lambda *a: None)
    r = _run_trainer(2, flags + ["--distributed", "--sync-bn", "--out-dir", str(tmp_path / "two")])
    assert r.returncode == 0, r.stderr[-3000:]
    (ca, wa), (cb, wb) = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=1e-9, atol=1e-11, err_msg=k)
    for key in ("train_loss", "test_loss", "test_miou", "test_pixel_acc"):
        assert cb["metrics"][0][key] == pytest.approx(ca["metrics"][0][key], rel=1e-10), key


def test_trainer_rank_that_raises_stops_the_job_with_its_name(tmp_path):
    r = _run_trainer(2, TRAIN + ["--distributed", "--out-dir", str(tmp_path / "r")], mode="trainer-raise", timeout=60)
    assert r.returncode != 0
    assert "error: rank 1 of 2: RuntimeError: a failure on purpose" in r.stderr
    assert not (tmp_path / "r" / "last.ckpt").exists()
    r = _run_trainer(2, TRAIN + ["--distributed", "--batch-size", "15", "--out-dir", str(tmp_path / "b")], timeout=60)
    assert r.returncode == 2
    assert ("--batch-size 15 is the global batch and does not split evenly over 2 ranks: make it a multiple of 2"
            in r.stderr)


def test_distributed_without_mpiexec_or_mpi4py_is_an_error_line(monkeypatch, capsys):
    from minivit import train
    for var in dist._LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(dist, "mpi_available", lambda: True)
    with pytest.raises(SystemExit) as e:
        train.main(TRAIN + ["--distributed"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: --distributed runs one process per rank, started by mpiexec: launch it as: "
                          "mpiexec -n 2 python -m minivit.train --distributed")
    monkeypatch.setattr(dist, "mpi_available", lambda: False)
    with pytest.raises(SystemExit):
        train.main(TRAIN + ["--distributed"])
    assert 'error: --distributed needs mpi4py and an MPI: pip install -e ".[mpi]"' in capsys.readouterr().err


def test_loader_ranks_take_the_halves_of_each_global_batch():
    from minivit import data
    ds = data.load_dataset("synthetic", subset=64, test_subset=21)
    aug = data.Augment(np, data.AugmentConfig(randaugment=(2, 9), random_erasing=0.5), ds.num_classes, seed=3)
    whole = data.DeviceLoader(ds.train, "cpu", 16, shuffle=True, augment=aug, seed=3)
    parts = [data.DeviceLoader(ds.train, "cpu", 16, shuffle=True, augment=aug, seed=3, rank=r, world=2) for r in (0, 1)]
    assert len(parts[0]) == len(whole) == 4 and parts[0].n_local == 32
    for (x, t, y), (x0, t0, y0), (x1, t1, y1) in zip(whole.batches(2), parts[0].batches(2), parts[1].batches(2),
                                                     strict=True):
        np.testing.assert_array_equal(x, np.concatenate([x0, x1]))     # the same images, augmented alike
        np.testing.assert_array_equal(y, np.concatenate([y0, y1]))
    tests = [data.DeviceLoader(ds.test, "cpu", 4, rank=r, world=2) for r in (0, 1)]
    assert [t.n_local for t in tests] == [10, 11] and [len(t) for t in tests] == [3, 3]
    got = np.concatenate([y for t in tests for _, _, y in t.batches()])
    np.testing.assert_array_equal(got, ds.test.labels)                # disjoint, covering the split
    with pytest.raises(ValueError, match="make --batch-size a multiple of 2"):
        data.DeviceLoader(ds.train, "cpu", 15, shuffle=True, rank=0, world=2)


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
