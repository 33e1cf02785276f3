"""The trainer with ``--device cuda``: every CIFAR model in fp32, tf32 and fp16 with every
augmentation on, DeiT distillation, an interrupted run resumed, ``minivit.evaluate``; and the
sync budget of a training step. On a GPU these run on it; without one, on the strict CuPy
stand-in (tests/conftest.py), where every device→host sync is counted with its source line.

The sync budget (issue #13): a GPU step that reads a device value on the host (``float(loss)``,
``if found_inf:``) waits for all the work queued before it, so the CPU stops running ahead of
the GPU and every launch's latency shows. The trainer keeps its loss and accuracy sums on the
device and reads them only for the log line every ``--log-every`` steps:

* inside an fp32 or tf32 training step: no sync;
* inside an fp16 step: one (the GradScaler's ``found_inf``, which decides whether to step);
* an evaluation: one (the loss sum, the number correct and the predictions, read together);
* a log line: one;
* once a run, two steps and a forward pass timed for the estimate of the run's length.
"""
import signal

import numpy as np
import pytest

from minivit import backend, evaluate, train
from minivit.train import Trainer, load_checkpoint

pytestmark = pytest.mark.skipif(not backend.cupy_available(),
                                reason="needs CuPy on a GPU or the strict stand-in (cupy-cuda12x installed)")

CIFAR_MODELS = ["vit_tiny", "deit_tiny", "pvt_tiny", "pvt_v2_tiny", "swin_tiny", "cvt_tiny", "pit_tiny",
                "resnet_teacher"]
SHORT = ["--dataset", "synthetic", "--device", "cuda", "--subset", "32", "--test-subset", "32",
         "--epochs", "1", "--batch-size", "32", "--no-progress"]
AUGMENT = ["--randaugment", "2,9", "--random-erasing", "0.25", "--mixup", "0.8", "--cutmix", "1.0",
           "--clip-grad", "1.0"]


def quiet_run(args):
    lines = []
    return train.run(args, log=lines.append), lines


@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16"])
@pytest.mark.parametrize("model", CIFAR_MODELS)
def test_every_model_trains_an_epoch_on_cuda(model, precision, tmp_path):
    drop_path = [] if model == "resnet_teacher" else ["--drop-path", "0.1"]
    summary, lines = quiet_run(SHORT + AUGMENT + drop_path + ["--model", model, "--precision", precision,
                                                             "--out-dir", str(tmp_path / "run")])
    assert summary["status"] == "done", lines
    m = summary["metrics"][-1]
    assert np.isfinite(m["train_loss"]) and np.isfinite(m["test_loss"]) and 0 <= m["test_acc"] <= 1
    ck = load_checkpoint(tmp_path / "run" / "last.ckpt")
    assert ck["config"]["device"] == "cuda" and ck["config"]["precision"] == precision
    # The checkpoint holds host arrays (a GPU array cannot be pickled), float32 master weights.
    assert all(type(v) is np.ndarray for v in ck["model"].values())
    assert all(v.dtype == np.float32 for v in ck["model"].values() if v.dtype.kind == "f")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cuda") / "teacher"
    summary, _ = quiet_run(SHORT + ["--model", "resnet_teacher", "--model-kwargs", "depth=8,width=4",
                                    "--out-dir", str(run_dir)])
    assert summary["status"] == "done"
    return run_dir


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_distillation_on_cuda(teacher, kind, tmp_path):
    summary, lines = quiet_run(SHORT + ["--model", "deit_tiny", "--model-kwargs", "embed_dim=32,depth=1,num_heads=2",
                                        "--teacher", str(teacher), "--distillation", kind,
                                        "--precision", "fp16", "--out-dir", str(tmp_path / kind)])
    assert summary["status"] == "done" and np.isfinite(summary["metrics"][0]["train_loss"])
    assert any(line.startswith("teacher: resnet_teacher") for line in lines)


def test_interrupted_cuda_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    """Ctrl-C in the middle of epoch 2 saves a checkpoint; --resume finishes the run, and its
    metrics match an uninterrupted run's. (On a real GPU cuRAND and the reduction order may
    differ between runs, so the comparison is to float tolerance, not bitwise.)"""
    args = SHORT + AUGMENT + ["--model", "pvt_v2_tiny", "--model-kwargs", "depths=[1,1,1,1]",
                              "--epochs", "2", "--subset", "64", "--precision", "fp16", "--drop-path", "0.1"]
    straight, _ = quiet_run(args + ["--out-dir", str(tmp_path / "a")])
    calls, step = {"n": 0}, Trainer.train_step

    def stepping(self, *a):
        calls["n"] += 1
        if calls["n"] == 3:                       # 2 steps an epoch: stop after the first of epoch 2
            signal.raise_signal(signal.SIGINT)
        return step(self, *a)

    monkeypatch.setattr(Trainer, "train_step", stepping)
    with pytest.raises(SystemExit) as e:
        train.main(args + ["--out-dir", str(tmp_path / "b")])
    assert e.value.code == train.EXIT_INTERRUPTED
    monkeypatch.undo()
    ck = load_checkpoint(tmp_path / "b" / "last.ckpt")
    assert (ck["epoch"], ck["step_in_epoch"]) == (1, 1)
    resumed, _ = quiet_run(["--resume", str(tmp_path / "b")])
    assert resumed["status"] == "done"
    for a, b in zip(straight["metrics"], resumed["metrics"]):
        assert a["epoch"] == b["epoch"]
        np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-4)
        np.testing.assert_allclose(b["test_loss"], a["test_loss"], rtol=1e-4)


def test_evaluate_on_cuda(teacher, capsys, tmp_path):
    result = evaluate.evaluate_checkpoint(teacher, device="cuda", figure=tmp_path / "cm.png", log=print)
    assert 0 <= result["acc"] <= 1 and (tmp_path / "cm.png").is_file()
    assert "test accuracy" in capsys.readouterr().out


# =========================================================================== the sync budget
@pytest.fixture
def strict_cupy():
    if not backend.is_strict_standin():
        pytest.skip("syncs are counted by the strict stand-in (a real GPU does not report them)")
    from minivit.testing import strict_cupy
    return strict_cupy


def _counting(monkeypatch, strict_cupy, owner, name, log):
    """Wrap owner.name so each call's syncs are recorded as one list in ``log``."""
    fn = getattr(owner, name)

    def counted(*args, **kwargs):
        with strict_cupy.count_syncs() as syncs:
            out = fn(*args, **kwargs)
        log.append(syncs)
        return out

    monkeypatch.setattr(owner, name, counted)


@pytest.mark.parametrize("precision,per_step", [("fp32", 0), ("tf32", 0), ("fp16", 1)])
def test_sync_budget(precision, per_step, strict_cupy, monkeypatch, tmp_path):
    steps, evals, epochs, estimate = [], [], [], []
    _counting(monkeypatch, strict_cupy, Trainer, "train_step", steps)
    _counting(monkeypatch, strict_cupy, Trainer, "_time_first_steps", estimate)
    _counting(monkeypatch, strict_cupy, train, "evaluate", evals)
    _counting(monkeypatch, strict_cupy, Trainer, "_train_epoch", epochs)
    # 4 steps an epoch, a log line every 2: lines after steps 2 and 4 (the last step of an epoch
    # always logs). Every augmentation and stochastic depth on: they must not sync either.
    summary, _ = quiet_run(SHORT + AUGMENT + ["--model", "pvt_v2_tiny", "--subset", "128", "--epochs", "2",
                                              "--drop-path", "0.1", "--log-every", "2", "--precision", precision,
                                              "--out-dir", str(tmp_path / "run")])
    assert summary["status"] == "done"
    assert len(steps) == 8 and len(evals) == 2 and len(epochs) == 2
    for syncs in steps:
        assert len(syncs) == per_step, [f"{f}:{line} {kind}" for f, line, kind in syncs]
    for syncs in evals:
        assert len(syncs) == 1, [f"{f}:{line} {kind}" for f, line, kind in syncs]
    # Once a run, the first epoch's first steps are timed for the estimate of the run's length
    # (the clock is read after a synchronize: two steps and one forward pass).
    assert len(estimate) == 2 and sum(map(len, estimate)) <= 3, estimate
    once = {rec for syncs in estimate for rec in syncs}
    for syncs in epochs:                      # the steps' own, and one per log line
        rest = [r for r in syncs if r not in once]
        assert len(rest) == 4 * per_step + 2, [f"{f}:{line} {kind}" for f, line, kind in rest]
