"""python -m minivit.train --task segmentation and python -m minivit.evaluate on a segmentation run,
end to end on the CPU with the generated shapes set and Semantic FPN: the loss falls, the run
directory and metrics.jsonl, bitwise resume after Ctrl-C, the masks figure, and the error lines."""
import json

import numpy as np
import pytest

from minivit import evaluate, train
from minivit.train import load_checkpoint
from tests.test_train import interrupt_at

SEG = ["--task", "segmentation", "--model", "fpn_pvt_v2_tiny", "--model-kwargs", "fpn_channels=32,head_channels=32",
       "--dataset", "shapes", "--device", "cpu", "--no-progress"]
# Two short epochs: 96 scenes, batches of 16 (6 steps an epoch), 32 test scenes.
LEARN = SEG + ["--subset", "96", "--test-subset", "32", "--epochs", "2", "--batch-size", "16", "--lr", "2e-3"]


def quiet_run(args):
    lines = []
    return train.run(args, log=lines.append), lines


def without_times(metrics):
    return [{k: v for k, v in m.items() if not k.endswith(("_time_s", "_per_s"))} for m in metrics]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("seg") / "learn"
    summary, lines = quiet_run(LEARN + ["--out-dir", str(run_dir)])
    return run_dir, summary, lines


def test_two_epochs_loss_falls_and_metrics_are_written(trained):
    run_dir, summary, lines = trained
    m = summary["metrics"]
    assert summary["status"] == "done" and len(m) == 2
    assert m[1]["train_loss"] < m[0]["train_loss"]
    assert m[1]["test_loss"] < m[0]["test_loss"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows == m
    for r in rows:
        assert 0 <= r["test_miou"] <= 1 and 0 <= r["test_pixel_acc"] <= 1
        assert "train_acc" not in r and "test_acc" not in r
        assert isinstance(r["train_loss"], float) and r["images_per_s"] > 0
    # Background is most pixels: after two epochs the pixel accuracy is past what predicting
    # noise would give, and mIoU (averaged over 5 classes) is below pixel accuracy.
    assert m[1]["test_pixel_acc"] > 0.45 and m[1]["test_miou"] < m[1]["test_pixel_acc"]
    assert any(line.startswith("epoch   2/2") and "mIoU" in line and "pixel acc" in line for line in lines)
    assert any(line.startswith("done: test mIoU") for line in lines)


def test_run_directory(trained):
    run_dir, summary, _ = trained
    assert {"config.json", "metrics.jsonl", "last.ckpt", "best.ckpt", "curves.png"} <= {p.name for p in run_dir.iterdir()}
    cfg = json.loads((run_dir / "config.json").read_text())
    assert (cfg["task"], cfg["dataset"], cfg["num_classes"], cfg["label_smoothing"]) == ("segmentation", "shapes", 5, 0.0)
    assert cfg["classes"] == ["background", "disk", "square", "triangle", "ring"] and cfg["crop_padding"] == 0
    best = load_checkpoint(run_dir / "best.ckpt")
    assert best["best_acc"] == max(r["test_miou"] for r in summary["metrics"])     # best.ckpt: best mIoU
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_writes_the_masks_figure(trained, tmp_path):
    run_dir, summary, _ = trained
    lines = []
    out = evaluate.evaluate_checkpoint(run_dir, device="cpu", test_subset=32, log=lines.append,
                                       figure=tmp_path / "m.png", num_masks=3)
    best = load_checkpoint(run_dir / "best.ckpt")
    assert out["miou"] == pytest.approx(best["best_acc"], abs=1e-12)              # the trainer's number again
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(out["per_class_iou"]) == {"background", "disk", "square", "triangle", "ring"}
    cm = np.array(out["confusion"])
    assert out["pixel_acc"] == pytest.approx(np.trace(cm) / cm.sum())
    assert any(line.startswith("test mIoU") for line in lines)
    out = evaluate.main([str(run_dir), "--device", "cpu", "--test-subset", "8", "--num-masks", "2"])
    assert (run_dir / "masks.png").is_file() and out["figure"] == str(run_dir / "masks.png")


def interrupted_and_resumed(trained, args, out_dir, monkeypatch, at_call: int, stopped_at: tuple):
    """Ctrl-C before training step ``at_call`` (counted from 1) of a run with ``args``, then --resume:
    checks that it stopped at (epoch, step_in_epoch) ``stopped_at`` and ends bitwise with the weights and
    metrics of ``trained``, the uninterrupted run (run_dir, summary, lines) of the same args."""
    straight_dir, straight, _ = trained
    interrupt_at(monkeypatch, at_call)
    with pytest.raises(SystemExit) as e:
        train.main(args + ["--out-dir", str(out_dir)])
    assert e.value.code == train.EXIT_INTERRUPTED
    ck = load_checkpoint(out_dir / "last.ckpt")
    assert (ck["epoch"], ck["step_in_epoch"]) == stopped_at
    monkeypatch.undo()
    resumed, _ = quiet_run(["--resume", str(out_dir)])
    assert resumed["status"] == "done"
    a, b = load_checkpoint(straight_dir / "last.ckpt"), load_checkpoint(out_dir / "last.ckpt")
    assert a["model"].keys() == b["model"].keys()
    assert all(np.array_equal(a["model"][k], b["model"][k]) for k in a["model"])     # bitwise
    assert without_times(a["metrics"]) == without_times(b["metrics"]) == without_times(straight["metrics"])


def test_interrupted_and_resumed_equals_uninterrupted(trained, tmp_path, monkeypatch):
    """Ctrl-C in the middle of epoch 2 (6 steps an epoch), then --resume: bitwise the weights of the
    uninterrupted run (the ``trained`` fixture, same flags), flips of image and mask replayed."""
    interrupted_and_resumed(trained, LEARN, tmp_path / "b", monkeypatch, at_call=8, stopped_at=(1, 2))


def error_line(args, message, out_dir, capsys):
    """``args`` stop the trainer with one ``error: ...`` line holding ``message``, exit code 2, no checkpoint."""
    with pytest.raises(SystemExit) as e:
        train.main(args + ["--device", "cpu", "--no-progress", "--out-dir", str(out_dir)])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err, err
    assert not (out_dir / "last.ckpt").exists()


@pytest.mark.parametrize("args, message", [
    (["--task", "segmentation", "--model", "resnet_teacher"],
     "--task segmentation needs a model that outputs per-pixel logits (B, K, h, w), but --model resnet_teacher "
     "is a classifier"),
    (["--task", "segmentation", "--model", "vit_tiny"], "but --model vit_tiny is a classifier"),
    (["--model", "fpn_pvt_v2_tiny", "--dataset", "synthetic"],
     "--model fpn_pvt_v2_tiny outputs per-pixel logits (B, K, h, w): it is a segmentation model; train it with "
     "--task segmentation --dataset shapes"),
    (["--model", "fpn_pvt_v2_tiny", "--dataset", "shapes"], "--dataset shapes is a segmentation set"),
    (["--task", "segmentation", "--model", "fpn_pvt_v2_tiny", "--dataset", "synthetic"],
     "--task segmentation needs a dataset with per-pixel masks, but --dataset synthetic has one label per image"),
    (["--task", "segmentation", "--model", "fpn_pvt_v2_tiny", "--mixup", "0.8", "--randaugment", "2,9"],
     "--randaugment, --mixup: classification only"),
])
def test_error_lines(args, message, tmp_path, capsys):
    error_line(args + ["--subset", "32", "--test-subset", "8", "--epochs", "1", "--batch-size", "16"], message,
               tmp_path / "r", capsys)


def test_task_defaults_leave_classification_unchanged():
    cfg = train.resolve_config(train.build_parser().parse_args(["--device", "cpu", "--model", "vit_tiny"]))
    assert (cfg["task"], cfg["dataset"], cfg["label_smoothing"], cfg["crop_padding"]) == ("classification",
                                                                                          "cifar10", 0.1, 4)
    cfg = train.resolve_config(train.build_parser().parse_args(["--device", "cpu", "--task", "segmentation",
                                                                "--model", "fpn_swin_tiny"]))
    assert (cfg["dataset"], cfg["label_smoothing"]) == ("shapes", 0.0)


def test_resume_of_a_finished_run_names_miou(trained):
    run_dir, summary, _ = trained
    again, lines = quiet_run(["--resume", str(run_dir)])
    assert again["status"] == "done" and again["best_acc"] == summary["best_acc"]
    assert f"best test mIoU {summary['best_acc']:.2%} at epoch" in lines[-1]
