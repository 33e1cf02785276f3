"""`python -m minivit.train --task video`: TimeSformer and MViT on the generated motion clips, end to
end (tiny runs), the clip batches they train on, and the one-line errors for a task/dataset mismatch."""
import json

import numpy as np
import pytest

from minivit import data
from minivit.train import main, model_input, run


def test_video_run_trains_and_records_the_task(tmp_path):
    out = tmp_path / "run"
    summary = run(["--task", "video", "--dataset", "motion", "--model", "timesformer_tiny",
                   "--model-kwargs", "depth=1,attention_type=joint_space_time", "--subset", "32",
                   "--test-subset", "16", "--batch-size", "16", "--epochs", "1", "--device", "cpu",
                   "--out-dir", str(out), "--no-progress"], log=lambda *a: None)
    assert summary["status"] == "done" and summary["epoch"] == 1
    m = summary["metrics"][0]
    assert np.isfinite(m["train_loss"]) and 0 <= m["test_acc"] <= 1
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["task"], cfg["dataset"], cfg["num_classes"], cfg["n_train"], cfg["n_test"]) == \
        ("video", "motion", 2, 32, 16)
    assert (out / "last.ckpt").exists()


def test_mvit_gets_the_clips_channels_first(tmp_path):
    """mvit_v1_tiny takes torchvision's (B, C, T, H, W): the trainer permutes the loader's
    (B, T, C, H, W) clips for it (``clip_layout``), and leaves TimeSformer's as they are."""
    from minivit.models import create_model
    x = np.arange(2 * 8 * 3 * 4 * 4, dtype=np.float32).reshape(2, 8, 3, 4, 4)
    np.testing.assert_array_equal(model_input(x, "fp32", create_model("mvit_v1_tiny")), x.transpose(0, 2, 1, 3, 4))
    assert model_input(x, "fp64", create_model("timesformer_tiny", depth=1)).shape == x.shape
    summary = run(["--task", "video", "--dataset", "motion", "--model", "mvit_v1_tiny", "--subset", "32",
                   "--test-subset", "16", "--batch-size", "16", "--epochs", "1", "--device", "cpu",
                   "--out-dir", str(tmp_path / "run"), "--no-progress"], log=lambda *a: None)
    assert summary["status"] == "done" and np.isfinite(summary["metrics"][0]["train_loss"])
    with pytest.raises(SystemExit):           # a video model on images: the one-line error names it
        main(["--model", "mvit_v1_tiny", "--dataset", "synthetic", "--epochs", "1", "--subset", "64"])


def test_clip_batches_are_normalised_and_not_augmented():
    ds = data.load_dataset("motion", subset=40, test_subset=8)
    assert ds.train.clips.shape == (40, 8, 3, 32, 32) and len(ds.test) == 8
    loader = data.DeviceLoader(ds.train, "cpu", 8, shuffle=True, augment=None)
    x, target, labels = next(loader.batches(0))
    assert x.shape == (8, 8, 3, 32, 32) and x.dtype == np.float32
    idx = loader.order(0)[:8]
    np.testing.assert_allclose(x, data.normalize(ds.train.clips[idx]), rtol=0, atol=0)   # the frames as they are
    np.testing.assert_array_equal(labels, ds.train.labels[idx])
    strat = data.load_dataset("motion", subset=400).test            # the --subset fraction, by class
    assert len(strat) == 100 and np.bincount(strat.labels).tolist() == [50, 50]


@pytest.mark.parametrize("argv", [["--task", "video", "--dataset", "cifar10"], ["--dataset", "motion"]])
def test_task_and_dataset_must_agree(argv, capsys):
    """--task video takes --dataset motion (its default), and motion needs --task video: one error line."""
    with pytest.raises(SystemExit):
        main(argv + ["--model", "timesformer_tiny", "--epochs", "1"])
    err = capsys.readouterr().err
    assert err.startswith("error: --task") and "--dataset motion" in err and "--task video" in err
    assert len(err.strip().splitlines()) == 1
