"""python -m minivit.train and python -m minivit.evaluate, end to end on the CPU with the synthetic
set and a tiny ResNet: learning, the run directory, bitwise resume after Ctrl-C, determinism,
NaN stops, corrupt checkpoints, evaluation with its figure, and DeiT distillation from a teacher."""
import json
import os
import re
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minivit.models.resnet  # noqa: F401
from minivit import evaluate, losses, train
from minivit.train import CheckpointError, Trainer, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "resnet_teacher", "--model-kwargs", "depth=8,width=4", "--dataset", "synthetic",
        "--device", "cpu", "--no-progress"]
# Two short epochs that reliably learn: 1,000 images, a ResNet-8 of width 8.
LEARN = ["--model", "resnet_teacher", "--model-kwargs", "depth=8,width=8", "--dataset", "synthetic",
         "--device", "cpu", "--subset", "1000", "--test-subset", "500", "--epochs", "2", "--batch-size", "16",
         "--lr", "6e-3", "--crop-padding", "0", "--no-hflip", "--no-progress"]
# Every augmentation on, stochastic depth on: what resume and determinism must survive.
AUGMENTED = TINY + ["--subset", "192", "--test-subset", "64", "--epochs", "2", "--batch-size", "32",
                    "--lr", "3e-3", "--randaugment", "2,9", "--random-erasing", "0.25", "--mixup", "0.8",
                    "--cutmix", "1.0", "--drop-path", "0.1", "--clip-grad", "1.0", "--log-every", "2"]


def quiet_run(args):
    lines = []
    summary = train.run(args, log=lines.append)
    return summary, lines


def weights(path):
    return load_checkpoint(path)["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def without_times(metrics):
    return [{k: v for k, v in m.items() if not k.endswith(("_time_s", "_per_s"))} for m in metrics]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "learn"
    summary, lines = quiet_run(LEARN + ["--out-dir", str(run_dir)])
    return run_dir, summary, lines


# =========================================================================== learning, run directory
def test_two_epochs_learn_well_above_chance(trained):
    run_dir, summary, lines = trained
    m = summary["metrics"]
    assert summary["status"] == "done" and len(m) == 2
    assert m[1]["test_acc"] >= 0.25, f"test accuracy {m[1]['test_acc']:.1%} is not well above chance (10%)"
    assert m[1]["train_loss"] < m[0]["train_loss"] < np.log(10) + 0.1
    assert any(line.startswith("epoch   2/2") and "img/s" in line for line in lines)


def test_run_directory(trained):
    run_dir, summary, _ = trained
    assert {"config.json", "metrics.jsonl", "last.ckpt", "best.ckpt", "curves.png"} <= {p.name for p in run_dir.iterdir()}
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*"))
    cfg = json.loads((run_dir / "config.json").read_text())
    for key, value in {"model": "resnet_teacher", "epochs": 2, "batch_size": 16, "device": "cpu",
                       "weight_decay": 0.05, "label_smoothing": 0.1, "warmup_epochs": 0.4, "opt": "adamw",
                       "n_train": 1000, "n_test": 500, "steps_per_epoch": 62, "seed": 0}.items():
        assert cfg[key] == value, key
    assert cfg["num_params"] > 0 and "numpy" in cfg["versions"] and cfg["model_kwargs"] == {"depth": 8, "width": 8}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time_s", "images_per_s"):
            assert isinstance(r[key], float), key
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1 and r["images_per_s"] > 0
    assert rows == summary["metrics"]
    best = load_checkpoint(run_dir / "best.ckpt")
    assert best["best_acc"] == max(r["test_acc"] for r in rows)
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_help_documents_every_flag():
    out = subprocess.run([sys.executable, "-m", "minivit.train", "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in ("--model", "--dataset", "--data-dir", "--subset", "--epochs", "--batch-size", "--lr",
                 "--weight-decay", "--warmup-epochs", "--label-smoothing", "--mixup", "--cutmix", "--randaugment",
                 "--random-erasing", "--drop-path", "--seed", "--out-dir", "--resume", "--teacher",
                 "--distillation", "--alpha", "--tau", "--precision", "--device", "--clip-grad", "--eval-every"):
        assert flag in out.stdout, flag
    parser = train.build_parser()
    undocumented = [a.dest for a in parser._actions if not a.help]
    assert undocumented == [], undocumented


# =========================================================================== resume, determinism
def interrupt_at(monkeypatch, n, sig=signal.SIGINT):
    """Press Ctrl-C (a real SIGINT; or send another signal) during the n-th training step."""
    calls = {"n": 0}
    step = Trainer.train_step

    def stepping(self, *args):
        calls["n"] += 1
        if calls["n"] == n:
            signal.raise_signal(sig)
        return step(self, *args)

    monkeypatch.setattr(Trainer, "train_step", stepping)


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, capsys):
    straight, _ = quiet_run(AUGMENTED + ["--out-dir", str(tmp_path / "a")])
    # 6 steps per epoch: Ctrl-C during step 9 stops after it, in the middle of epoch 2.
    interrupt_at(monkeypatch, 9)
    with pytest.raises(SystemExit) as e:
        train.main(AUGMENTED + ["--out-dir", str(tmp_path / "b")])
    assert e.value.code == train.EXIT_INTERRUPTED
    out = capsys.readouterr().out
    assert f"Resume with: python -m minivit.train --resume {tmp_path / 'b'}" in out
    ck = load_checkpoint(tmp_path / "b" / "last.ckpt")
    assert (ck["epoch"], ck["step_in_epoch"]) == (1, 3)
    monkeypatch.undo()
    resumed, lines = quiet_run(["--resume", str(tmp_path / "b"), "--epochs", "5"])
    assert any("ignoring --epochs" in line for line in lines)
    assert resumed["status"] == "done"
    assert same_weights(weights(tmp_path / "a" / "last.ckpt"), weights(tmp_path / "b" / "last.ckpt"))
    a, b = load_checkpoint(tmp_path / "a" / "last.ckpt"), load_checkpoint(tmp_path / "b" / "last.ckpt")
    assert without_times(a["metrics"]) == without_times(b["metrics"])     # the same loss curve, too
    for k, v in a["optimizer"]["state"].items():
        assert all(np.array_equal(v[n], b["optimizer"]["state"][k][n]) for n in v)
    # Same seed, same device: a second uninterrupted run gives the same curve and weights.
    again, _ = quiet_run(AUGMENTED + ["--out-dir", str(tmp_path / "c")])
    assert without_times(again["metrics"]) == without_times(straight["metrics"])
    assert same_weights(weights(tmp_path / "a" / "last.ckpt"), weights(tmp_path / "c" / "last.ckpt"))
    # Another seed gives another run.
    other, _ = quiet_run(AUGMENTED + ["--out-dir", str(tmp_path / "d"), "--seed", "1", "--epochs", "1"])
    assert other["metrics"][0]["train_loss"] != straight["metrics"][0]["train_loss"]


def test_sigterm_saves_a_checkpoint_like_ctrl_c(tmp_path, monkeypatch, capsys):
    # `timeout`, `kill` and job schedulers send SIGTERM: the run must keep its progress.
    interrupt_at(monkeypatch, 4, signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        train.main(AUGMENTED + ["--out-dir", str(tmp_path / "t")])
    assert e.value.code == train.EXIT_INTERRUPTED
    assert "SIGTERM: finishing this step" in capsys.readouterr().err
    ck = load_checkpoint(tmp_path / "t" / "last.ckpt")
    assert (ck["epoch"], ck["step_in_epoch"]) == (0, 4)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL      # the handler is put back


def test_fp16_run_checkpoints_its_loss_scale_and_resumes_exactly(tmp_path, monkeypatch):
    """--precision fp16 (autocast + GradScaler) on the CPU: it trains, logs the loss scale, keeps
    the scaler's state in the checkpoint, and an interrupted run resumes bitwise like an
    uninterrupted one (the scaler included)."""
    fp16 = TINY + ["--subset", "96", "--test-subset", "32", "--epochs", "2", "--batch-size", "32",
                   "--lr", "3e-3", "--clip-grad", "1.0", "--precision", "fp16"]
    straight, lines = quiet_run(fp16 + ["--out-dir", str(tmp_path / "a")])
    assert any("fp16 on the CPU is slow" in line for line in lines)
    assert straight["status"] == "done" and all(np.isfinite(m["train_loss"]) for m in straight["metrics"])
    assert all(m["loss_scale"] > 0 and m["skipped_steps"] >= 0 for m in straight["metrics"])
    ck = load_checkpoint(tmp_path / "a" / "last.ckpt")
    assert ck["config"]["precision"] == "fp16"
    assert set(ck["scaler"]) == {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
    assert ck["scaler"]["scale"] == straight["metrics"][-1]["loss_scale"]
    assert all(v.dtype == np.float32 for v in ck["model"].values() if v.dtype.kind == "f")   # master weights
    # 3 steps per epoch: Ctrl-C during step 5 stops in the middle of epoch 2.
    interrupt_at(monkeypatch, 5)
    with pytest.raises(SystemExit):
        train.main(fp16 + ["--out-dir", str(tmp_path / "b")])
    monkeypatch.undo()
    mid = load_checkpoint(tmp_path / "b" / "last.ckpt")
    assert (mid["epoch"], mid["step_in_epoch"]) == (1, 2) and mid["scaler"]["_growth_tracker"] == 5
    resumed, _ = quiet_run(["--resume", str(tmp_path / "b")])
    assert resumed["status"] == "done"
    b = load_checkpoint(tmp_path / "b" / "last.ckpt")
    assert same_weights(ck["model"], b["model"]) and ck["scaler"] == b["scaler"]
    assert without_times(straight["metrics"]) == without_times(b["metrics"])


def test_resume_of_a_finished_run_and_existing_out_dir(trained, capsys):
    run_dir, summary, _ = trained
    again, _ = quiet_run(["--resume", str(run_dir)])
    assert again["status"] == "done" and again["metrics"] == summary["metrics"]
    with pytest.raises(SystemExit) as e:
        train.main(LEARN + ["--out-dir", str(run_dir)])
    assert e.value.code == 2 and "already holds a run" in capsys.readouterr().err


# =========================================================================== failures
def test_nan_loss_stops_with_the_last_good_checkpoint_intact(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    call = losses.DistillationLoss.__call__

    def poisoned(self, *args):
        calls["n"] += 1
        loss = call(self, *args)
        return loss * float("nan") if calls["n"] >= 8 else loss      # diverges in epoch 2 (6 steps each)

    monkeypatch.setattr(losses.DistillationLoss, "__call__", poisoned)
    run_dir = tmp_path / "nan"
    with pytest.raises(SystemExit) as e:
        train.main(AUGMENTED + ["--out-dir", str(run_dir), "--epochs", "3"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "nan" in err and "epoch 2" in err and "intact" in err
    ck = load_checkpoint(run_dir / "last.ckpt")
    assert ck["epoch"] == 1 and ck["step_in_epoch"] == 0
    assert all(np.isfinite(v).all() for v in ck["model"].values() if v.dtype.kind == "f")
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1


def test_corrupt_checkpoints_give_clear_errors(trained, tmp_path, capsys):
    good = (trained[0] / "last.ckpt").read_bytes()
    cases = {
        "truncated.ckpt": good[: len(good) // 2],
        "flipped.ckpt": good[:-40] + bytes([good[-40] ^ 0xFF]) + good[-39:],
        "garbage.ckpt": os.urandom(1000),
        "empty.ckpt": b"",
        "other.ckpt": pickle.dumps({"weights": np.zeros(3)}),
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CheckpointError, match=str(tmp_path / name).replace(".", r"\.")):
            load_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path / "flipped.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
    # Through the command line: a message naming the file, no traceback.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.ckpt").write_bytes(cases["truncated.ckpt"])
    with pytest.raises(SystemExit) as e:
        train.main(["--resume", str(run_dir)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and str(run_dir / "last.ckpt") in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        evaluate.main([str(tmp_path / "garbage.ckpt"), "--device", "cpu"])
    assert "garbage.ckpt" in capsys.readouterr().err


def test_bad_arguments(capsys):
    for args, message in ((["--distillation", "soft"], "needs --teacher"),
                          (["--model", "vit_tiny_typo"], "unknown model"),
                          (["--batch-size", "64", "--subset", "10"], "fewer than one batch")):
        with pytest.raises(SystemExit) as e:
            train.main(TINY + ["--epochs", "1", "--out-dir", "/nonexistent/never"] + args)
        assert e.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(TINY + ["--precision", "bf16"])       # NumPy has no bfloat16: argparse refuses it


# =========================================================================== evaluate, distillation
def test_evaluate_prints_accuracy_and_saves_the_figure(trained, capsys):
    run_dir, summary, _ = trained
    out = evaluate.main([str(run_dir), "--device", "cpu", "--test-subset", "500"])
    printed = capsys.readouterr().out
    assert out["acc"] == pytest.approx(load_checkpoint(run_dir / "best.ckpt")["best_acc"])
    assert f"test accuracy {out['acc']:.2%}" in printed
    for name, acc in out["per_class_acc"].items():                      # one line per class
        assert re.search(rf"^\s+{re.escape(name)}\s+{acc:.2%}\s+\(\d+ images\)$", printed, re.M), name
    assert len(out["per_class_acc"]) == 10
    cm = np.array(out["confusion"])
    assert cm.sum() == 500 and np.trace(cm) == round(out["acc"] * 500)
    assert (run_dir / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    out_last = evaluate.main([str(run_dir / "last.ckpt"), "--device", "cpu", "--test-subset", "100"])
    assert np.array(out_last["confusion"]).sum() == 100


def test_evaluate_with_flip_tta_averages_each_image_and_its_mirror(trained, capsys):
    """--tta flip: the predictions are the argmax of the mean of the logits of x and of x mirrored
    left-right, computed here by hand from the same checkpoint; an unknown mode is refused."""
    from minivit import data
    from minivit.autograd import Tensor, no_grad
    from minivit.train import evaluate as evaluate_split, load_model_from_checkpoint
    run_dir = trained[0]
    out = evaluate.main([str(run_dir), "--device", "cpu", "--test-subset", "200", "--tta", "flip",
                         "--figure", str(run_dir / "confusion-tta.png")])
    assert out["tta"] == "flip" and "flip test-time augmentation" in capsys.readouterr().out
    model, ckpt = load_model_from_checkpoint(run_dir / "best.ckpt", "cpu")
    ds = data.load_dataset(ckpt["config"]["dataset"], None, test_subset=200, verbose=False, need_train=False)
    x = data.augment.normalize(ds.test.images)
    model.eval()
    with no_grad():
        logits = model(Tensor(x)).data + model(Tensor(np.ascontiguousarray(x[..., ::-1]))).data
    by_hand = (logits.argmax(axis=1) == ds.test.labels).mean()
    assert out["acc"] == pytest.approx(by_hand, abs=1e-12)
    cm = np.array(out["confusion"])
    assert cm.sum() == 200
    loader = data.DeviceLoader(ds.test, "cpu", 64)          # batches that do not divide 200
    np.testing.assert_array_equal(evaluate_split(model, loader, tta="flip")["preds"], logits.argmax(axis=1))
    with pytest.raises(ValueError, match="tta"):
        evaluate_split(model, loader, tta="crop")
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(run_dir), "--device", "cpu", "--tta", "crops"])
    assert e.value.code == 2


def test_distillation_from_a_teacher(trained, tmp_path):
    """--teacher CHECKPOINT --distillation soft|hard: the distilled DeiT when it is there (tiny),
    else a ResNet student with the same loss on its single head."""
    teacher_dir = trained[0]
    teacher_before = weights(teacher_dir / "best.ckpt")
    try:
        import minivit.models.deit  # noqa: F401
        student = ["--model", "deit_tiny", "--model-kwargs", "embed_dim=32,depth=1,num_heads=2"]
    except ImportError:
        student = ["--model", "resnet_teacher", "--model-kwargs", "depth=8,width=4"]
    common = student + ["--dataset", "synthetic", "--device", "cpu", "--subset", "96", "--test-subset", "64",
                        "--epochs", "1", "--batch-size", "32", "--no-progress", "--teacher", str(teacher_dir)]
    for kind in ("soft", "hard"):
        summary, lines = quiet_run(common + ["--distillation", kind, "--alpha", "0.5", "--tau", "2.0",
                                             "--out-dir", str(tmp_path / kind)])
        assert summary["status"] == "done" and np.isfinite(summary["metrics"][0]["train_loss"])
        assert any(line.startswith("teacher: resnet_teacher") for line in lines)
        cfg = json.loads((tmp_path / kind / "config.json").read_text())
        assert cfg["distillation"] == kind and cfg["teacher"] == str(teacher_dir)
    assert same_weights(teacher_before, weights(teacher_dir / "best.ckpt"))   # the teacher is never trained


def test_vit_trains_with_no_weight_decay_groups(tmp_path):
    """The transformer path (tokens, position embeddings without weight decay), when vit_tiny exists."""
    pytest.importorskip("minivit.models.vit")
    summary, _ = quiet_run(["--model", "vit_tiny", "--model-kwargs", "embed_dim=32,depth=1,num_heads=2",
                            "--dataset", "synthetic", "--device", "cpu", "--subset", "64", "--test-subset", "32",
                            "--epochs", "1", "--batch-size", "32", "--drop-path", "0.1", "--no-progress",
                            "--out-dir", str(tmp_path / "vit")])
    assert summary["status"] == "done" and np.isfinite(summary["metrics"][0]["train_loss"])
    ck = load_checkpoint(tmp_path / "vit" / "last.ckpt")
    no_decay, decay = ck["optimizer"]["param_groups"]
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    assert len(no_decay["params"]) > 0 and len(decay["params"]) > 0
