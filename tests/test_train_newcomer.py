"""python -m minivit.train for a newcomer (issue #15): a mistyped --data-dir is an error, --subset
scales the test pass too, the test pass shows progress, and a long run says how long it will take."""
import json
import re

import numpy as np

import pytest

import minivit.data.cifar10 as C
from minivit import train


def test_a_mistyped_data_dir_is_an_error_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(C, "fetch", lambda *a, **k: pytest.fail("downloaded without --download"))
    with pytest.raises(SystemExit) as e:
        train.main(["--data-dir", str(tmp_path / "nonexistent"), "--epochs", "1", "--device", "cpu",
                    "--out-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith(f"error: --data-dir {tmp_path / 'nonexistent'} does not exist") and "--download" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []            # no data folder, cache or run directory


# =========================================================================== the test split follows --subset
TINY = ["--model", "resnet_teacher", "--model-kwargs", "depth=8,width=4", "--dataset", "synthetic",
        "--device", "cpu", "--epochs", "1", "--batch-size", "32"]


def test_subset_scales_the_test_split_stratified_unless_test_subset_is_given(tmp_path):
    lines = []
    train.run(TINY + ["--subset", "500", "--no-progress", "--out-dir", str(tmp_path / "a")], log=lines.append)
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["n_test"] == 100 and "100 of 2000 test images, stratified by class" in cfg["test_selection"]
    assert any(line.startswith("test pass: 100 of 2000 test images") for line in lines)
    assert any("500 train / 100 test" in line for line in lines)
    from minivit import data
    ds = data.load_dataset("synthetic", subset=500)
    assert np.bincount(ds.test.labels).tolist() == [10] * 10               # stratified: 10 a class
    assert data.load_dataset("synthetic", subset=500).test.labels.tolist() == ds.test.labels.tolist()  # fixed
    train.run(TINY + ["--subset", "500", "--test-subset", "64", "--no-progress", "--out-dir", str(tmp_path / "b")],
              log=lines.append)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["n_test"] == 64


def test_stratified_choice_keeps_class_proportions_and_order():
    from minivit.data import ImageSplit
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(100)]
    split = ImageSplit(np.arange(100, dtype=np.uint8)[:, None, None, None].repeat(3, 1), labels, ("a", "b", "c"))
    part = split.stratified(20)
    assert np.bincount(part.labels, minlength=3).tolist() == [12, 6, 2]
    kept = part.images[:, 0, 0, 0].astype(int)
    assert np.all(np.diff(kept) > 0)                                        # the split's order
    for c in range(3):                                                      # the first ones of each class
        assert kept[part.labels == c].tolist() == np.flatnonzero(labels == c)[:np.sum(part.labels == c)].tolist()


# =========================================================================== progress during the test pass
def test_the_test_pass_reports_progress(tmp_path, capsys):
    lines = []
    args = TINY + ["--subset", "64", "--test-subset", "64", "--eval-batch-size", "16"]
    train.run(args + ["--no-progress", "--out-dir", str(tmp_path / "a")], log=lines.append)
    assert [line for line in lines if "test:" in line] == [
        f"  epoch 1/1 test: {n}/64 images, {s}" for n, s in zip((16, 32, 48), re.findall(r"images, (\d+s)", "\n".join(lines)))]
    capsys.readouterr()
    train.run(args + ["--progress", "--out-dir", str(tmp_path / "b")], log=lines.append)
    err = capsys.readouterr().err
    assert re.search(r"epoch 1/1 test: +\d+%\|", err)                       # the tqdm bar, on stderr


# =========================================================================== the time estimate
class FakeClock:
    """Time that passes only where the test says: 2 s a training step plus 0.5 s a forward pass."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    from minivit.models.resnet import ResNet
    clock = FakeClock()
    monkeypatch.setattr(train.Trainer, "clock", staticmethod(clock))
    step, forward = train.Trainer.train_step, ResNet.forward

    def slow_step(self, *args):
        clock.t += 2.0
        return step(self, *args)

    def slow_forward(self, x):
        clock.t += 0.5
        return forward(self, x)

    monkeypatch.setattr(train.Trainer, "train_step", slow_step)
    monkeypatch.setattr(ResNet, "forward", slow_forward)
    return clock


def test_duration_reads_well():
    assert [train.duration(s) for s in (45, 725, 12000, 200000)] == ["45 s", "12 min 5 s", "3 h 20 min", "2 d 7 h"]


def test_a_run_says_how_long_it_will_take_before_its_first_epoch(tmp_path, clock):
    lines = []
    train.run(TINY + ["--subset", "256", "--test-subset", "64", "--no-progress", "--out-dir", str(tmp_path / "a")],
              log=lines.append)
    (i,) = [k for k, line in enumerate(lines) if line.startswith("estimate:")]
    assert i < min(k for k, line in enumerate(lines) if line.startswith("epoch "))
    # 8 steps of 2.5 s (step + forward); the test pass: 64 images at 0.5 s per batch of 32.
    train_s, test_s = 8 * 2.5, 64 * 0.5 / 32
    assert lines[i] == (f"estimate: 1 epoch takes about {train.duration(train_s + test_s)} (training "
                        f"{train.duration(train_s)}, testing {train.duration(test_s)}), from the speed of 5 steps "
                        "(2.50 s a step)")
    assert "--subset" not in lines[i]                                       # short: no advice


class _Stop(Exception):
    pass


def test_a_long_default_cpu_run_says_how_to_make_it_shorter(tmp_path, clock):
    """The defaults (100 epochs of the whole training split) on the CPU: the estimate comes with
    a shorter command and its own estimate."""
    lines = []

    def log(line):
        lines.append(line)
        if line.startswith("estimate:"):
            raise _Stop                                   # no need to train 100 epochs

    with pytest.raises(_Stop):
        train.run(["--model", "resnet_teacher", "--model-kwargs", "depth=8,width=4", "--dataset", "synthetic",
                   "--device", "cpu", "--no-progress", "--out-dir", str(tmp_path / "a")], log=log)
    steps, per_image = 10000 // 128, 0.5 / 128           # the synthetic set: 10,000 train, 2,000 test images
    full = 100 * (steps * 2.5 + 2000 * per_image)
    short = 3 * (steps * 2.5 + 2000 * per_image)
    assert lines[-1].startswith(f"estimate: 100 epochs take about {train.duration(full)} (training ")
    assert lines[-1].endswith(f"add --epochs 3 --subset 10000 (about {train.duration(short)}), or use a GPU "
                              "(--device cuda)")
    # A run that is already that short is not told to become it, however slow its steps.
    cfg = {"epochs": 3, "n_train": 10000, "n_test": 2000, "test_subset": None, "eval_every": 1,
           "batch_size": 128, "device": "cpu"}
    assert "--subset" not in train.estimate_message(cfg, 30.0, 0.1, 5)
    assert "--subset 10000" in train.estimate_message(dict(cfg, epochs=4), 30.0, 0.1, 5)
