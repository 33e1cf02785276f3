"""What the trainer tells a newcomer: a finished run that is resumed, counts in the plural only
when plural, advice for a damaged checkpoint that works as given, curves in the console's units,
and default run directories that leave `git status` clean."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from minivit import evaluate, train
from minivit.plotting import curves_figure

REPO = Path(__file__).resolve().parents[1]
ONE_EPOCH = ["--model", "resnet_teacher", "--model-kwargs", "depth=8,width=4", "--dataset", "synthetic",
             "--device", "cpu", "--no-progress", "--subset", "64", "--test-subset", "32", "--epochs", "1",
             "--batch-size", "32"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "one"
    lines = []
    summary = train.run(ONE_EPOCH + ["--out-dir", str(run_dir)], log=lines.append)
    return run_dir, summary, lines


def test_one_epoch_is_singular(finished):
    _, _, lines = finished
    header = next(line for line in lines if line.startswith("run "))
    assert "1 epoch ×" in header and "1 epochs" not in header and "2 steps of 32" in header


def test_resuming_a_finished_run_says_so_and_how_to_train_longer(finished):
    run_dir, summary, _ = finished
    lines = []
    again = train.run(["--resume", str(run_dir)], log=lines.append)
    text = " ".join(lines)
    assert "already finished its 1 epoch" in text and "--epochs" in text and "epoch 2" not in text
    assert again["status"] == "done" and again["metrics"] == summary["metrics"]


def test_damaged_last_ckpt_advice_works_as_written(finished, tmp_path, capsys):
    """--resume RUN_DIR reads last.ckpt; when it is damaged the error names the command that
    continues from best.ckpt instead, and that command runs."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished[0], run_dir)
    blob = (run_dir / "last.ckpt").read_bytes()
    (run_dir / "last.ckpt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(SystemExit) as e:
        train.main(["--resume", str(run_dir)])
    err = capsys.readouterr().err
    advice = f"python -m minivit.train --resume {run_dir / 'best.ckpt'}"
    assert e.value.code == 2 and advice in err and "Traceback" not in err
    lines = []
    resumed = train.run(advice.split()[3:], log=lines.append)
    assert resumed["status"] == "done" and resumed["run_dir"] == str(run_dir)
    # evaluate picks best.ckpt; damaged, it points at last.ckpt (intact again after the resume)
    (run_dir / "best.ckpt").write_bytes(b"\0" * 100)
    with pytest.raises(SystemExit):
        evaluate.main([str(run_dir), "--device", "cpu"])
    assert f"python -m minivit.evaluate {run_dir / 'last.ckpt'}" in capsys.readouterr().err


def test_curves_are_in_percent_with_whole_epochs_and_name_the_data(finished):
    metrics = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.2 * e, "test_loss": 2.1 / e, "test_acc": 0.25 * e}
               for e in (1, 2, 3)]
    fig = curves_figure(metrics, "title")
    _, ax_acc = fig.axes
    train_line, test_line = ax_acc.get_lines()
    assert np.allclose(train_line.get_ydata(), [20, 40, 60]) and np.allclose(test_line.get_ydata(), [25, 50, 75])
    assert ax_acc.get_ylim() == (0, 100) and "%" in ax_acc.get_ylabel()
    for n in (1, 2, 3, 150):                # one epoch alone (a first run) used to get ticks 0.96, 0.98, ...
        fig = curves_figure([dict(metrics[0], epoch=e) for e in range(1, n + 1)])
        fig.canvas.draw()
        for ax in fig.axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), (n, ticks)
    cfg = {"model": "pvt_tiny", "dataset": "cifar10", "n_train": 10000, "n_test": 10000, "subset": 10000,
           "data_source": "../shared/data/cifar10-jpeg.tar.gz (decoded cache /x/y.npz)"}
    title = train._curves_title(cfg)
    assert "10,000 train images (--subset)" in title and "cifar10-jpeg.tar.gz" in title and "cache" not in title
    run_dir, _, _ = finished
    assert (run_dir / "curves.png").stat().st_size > 5000


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs git and a checkout")
def test_default_run_dirs_are_ignored_by_git_but_named_ones_are_not(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)                          # _new_run_dir makes a path under ./runs
    default = train._new_run_dir({"out_dir": None, "model": "pvt_tiny"})
    paths = {f"{default}/config.json": True, f"{default}/curves.png": True, f"{default}-1/metrics.jsonl": True,
             "runs/complexity/complexity_cpu.json": True, "runs/pvt_tiny/last.ckpt": True,
             "runs/pvt_tiny/metrics.jsonl": False, "runs/teacher/config.json": False}
    proc = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", *paths], capture_output=True,
                          text=True)
    ignored = set(proc.stdout.split())
    assert {p for p, want in paths.items() if want} == ignored, proc.stdout


def test_evaluate_shows_its_progress(finished, capsys):
    """python -m minivit.evaluate takes most of a minute on a CPU: a bar on stderr shows it going
    (the trainer's evaluate(), shared, with progress=True)."""
    run_dir = finished[0]
    evaluate.main([str(run_dir), "--device", "cpu", "--test-subset", "64", "--batch-size", "16", "--progress"])
    err = capsys.readouterr().err
    assert "evaluating resnet_teacher" in err and "/64" in err and "img/s" in err     # tqdm: done/total
    evaluate.main([str(run_dir), "--device", "cpu", "--test-subset", "64", "--no-progress"])
    assert "evaluating" not in capsys.readouterr().err
