"""python -m minivit.train --task segmentation --dataset volumes and python -m minivit.evaluate on a
volume run, end to end on the CPU with a small UNETR on 16³ volumes: metrics.jsonl with the mean
Dice (checked against the model's own predictions), the brightness rule's baseline, bitwise resume
after Ctrl-C, the slice figure, the Dice + cross-entropy loss, and the error lines."""
import json

import numpy as np
import pytest

import minivit as mv
import minivit.functional as F
from minivit import data, evaluate, train
from minivit.data.volumes import CLASS_INTENSITY, brightness_rule, load_volumes
from minivit.losses import DiceLoss, SegmentationLoss, mean_dice
from minivit.train import load_checkpoint, load_model_from_checkpoint
from tests.test_train_segmentation import error_line, interrupted_and_resumed, quiet_run

SMALL = "feature_size=4,hidden_size=32,mlp_dim=64,num_heads=2"
VOL = ["--task", "segmentation", "--dataset", "volumes", "--model", "unetr_tiny", "--model-kwargs", SMALL,
       "--volume-size", "16", "--device", "cpu", "--no-progress"]
# Two short epochs: 8 volumes of 16³ in batches of 2 (4 steps an epoch), 6 test volumes.
LEARN = VOL + ["--subset", "8", "--test-subset", "6", "--epochs", "2", "--batch-size", "2", "--lr", "3e-3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("vol") / "learn"
    summary, lines = quiet_run(LEARN + ["--out-dir", str(run_dir)])
    return run_dir, summary, lines


def test_metrics_hold_the_mean_dice_of_the_models_predictions(trained):
    run_dir, summary, lines = trained
    m = summary["metrics"]
    assert summary["status"] == "done" and len(m) == 2
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows == m
    for r in rows:
        assert 0 <= r["test_dice"] <= 1 and 0 <= r["test_miou"] <= 1 and 0 <= r["test_pixel_acc"] <= 1
        assert set(r["test_dice_per_class"]) == {"sphere", "rod", "disc"}
        assert "train_acc" not in r and np.isfinite(r["train_loss"])
    # the trainer's number is minivit.losses.mean_dice of the last weights' predictions
    model, _ = load_model_from_checkpoint(run_dir / "last.ckpt")
    ds = load_volumes(1, 6, size=16)
    with mv.no_grad():
        pred = model(mv.tensor(data.normalize(ds.test.images, *data.normalization("volumes")))).numpy().argmax(1)
    md, per_class = mean_dice(pred, ds.test.labels, 4)
    assert m[-1]["test_dice"] == pytest.approx(md, abs=1e-12)
    assert list(m[-1]["test_dice_per_class"].values()) == pytest.approx(per_class.tolist(), abs=1e-12)
    assert any(line.startswith("epoch   2/2") and "mean Dice" in line for line in lines)
    assert lines[-1].startswith("done: test mean Dice") and "brightness rule" in lines[-1]


def test_run_directory_and_baseline(trained):
    run_dir, summary, lines = trained
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "metrics.jsonl", "last.ckpt", "best.ckpt", "curves.png"} <= names
    cfg = json.loads((run_dir / "config.json").read_text())
    assert (cfg["dataset"], cfg["loss"], cfg["volume_size"], cfg["num_classes"]) == ("volumes", "dice_ce", 16, 4)
    assert cfg["model_kwargs"]["img_size"] == 16 and (cfg["n_train"], cfg["n_test"]) == (8, 6)
    ds = load_volumes(1, 6, size=16)
    rule = mean_dice(brightness_rule(ds.test.images), ds.test.labels, 4)[0]
    assert cfg["brightness_rule_dice"] == pytest.approx(rule)
    assert any(line.startswith("baseline: the brightness rule") for line in lines)
    best = load_checkpoint(run_dir / "best.ckpt")
    assert best["best_acc"] == max(r["test_dice"] for r in summary["metrics"])     # best.ckpt: best mean Dice


def test_evaluate_prints_dice_and_draws_slices(trained, tmp_path):
    run_dir, summary, _ = trained
    lines = []
    out = evaluate.evaluate_checkpoint(run_dir, device="cpu", test_subset=6, log=lines.append,
                                       figure=tmp_path / "m.png", num_masks=3)
    best = load_checkpoint(run_dir / "best.ckpt")
    assert out["mean_dice"] == pytest.approx(best["best_acc"], abs=1e-12)        # the trainer's number again
    assert set(out["per_class_dice"]) == {"sphere", "rod", "disc"}
    assert out["brightness_rule_dice"] == pytest.approx(json.loads((run_dir / "config.json").read_text())
                                                        ["brightness_rule_dice"])
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(line.startswith("test mean Dice") for line in lines)


def test_interrupted_and_resumed_equals_uninterrupted(trained, tmp_path, monkeypatch):
    """Ctrl-C in the middle of epoch 2 (4 steps an epoch), then --resume: bitwise the weights of the
    uninterrupted run, the flips of volume and labels replayed; a finished run's resume names the Dice."""
    interrupted_and_resumed(trained, LEARN, tmp_path / "b", monkeypatch, at_call=6, stopped_at=(1, 2))
    straight_dir, straight, _ = trained
    again, lines = quiet_run(["--resume", str(straight_dir)])
    assert again["status"] == "done" and f"best test mean Dice {straight['best_acc']:.3f}" in lines[-1]


@pytest.mark.parametrize("args, message", [
    (["--task", "segmentation", "--dataset", "volumes", "--model", "fpn_pvt_v2_tiny"],
     "--dataset volumes holds 3-D volumes (B, 1, D, H, W), but --model fpn_pvt_v2_tiny takes 2-D images; use a "
     "volume model: --model unetr_btcv, unetr_tiny"),
    (["--task", "segmentation", "--dataset", "volumes", "--model", "segformer_tiny"],
     "but --model segformer_tiny takes 2-D images"),
    (["--task", "segmentation", "--dataset", "shapes", "--model", "unetr_tiny"],
     "--model unetr_tiny segments 3-D volumes (B, C, D, H, W), but --dataset shapes holds 2-D images; train it "
     "with --task segmentation --dataset volumes"),
    (["--model", "unetr_tiny", "--dataset", "synthetic"], "--model unetr_tiny segments 3-D volumes"),
    (["--model", "unetr_tiny", "--dataset", "volumes"],
     "--dataset volumes is a segmentation set (per-pixel masks): add --task segmentation and a segmentation "
     "model (e.g. --model unetr_tiny)"),
    (VOL[:6] + ["--volume-size", "40"], "--volume-size 40: must be a multiple of 16"),
    (["--task", "segmentation", "--dataset", "shapes", "--model", "fpn_pvt_v2_tiny", "--volume-size", "32"],
     "--volume-size is for --dataset volumes"),
    (["--model", "vit_tiny", "--dataset", "synthetic", "--loss", "dice_ce"],
     "--loss dice_ce is for --task segmentation"),
    (VOL[:6] + ["--model-kwargs", "img_size=32", "--volume-size", "16"],
     "--model unetr_tiny is built for volumes of 32×32×32 voxels but --volume-size is 16"),
])
def test_error_lines(args, message, tmp_path, capsys):
    error_line(args + ["--subset", "4", "--test-subset", "2", "--epochs", "1", "--batch-size", "2"], message,
               tmp_path / "r", capsys)


def test_dice_ce_loss_is_monais_dice_plus_cross_entropy_and_skips_ignored_pixels():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 4, 6, 6, 6)).astype(np.float32)
    labels = rng.integers(0, 4, (2, 6, 6, 6))
    ours = SegmentationLoss(loss="dice_ce")(None, mv.tensor(logits), labels).item()
    ref = (DiceLoss(softmax=True, to_onehot_y=True)(mv.tensor(logits), labels)
           + F.cross_entropy(mv.tensor(logits), mv.tensor(labels))).item()
    assert ours == pytest.approx(ref, rel=1e-6)
    # 2-D masks with ignored pixels: the loss does not see them (any logits there give the same loss)
    logits2 = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    masks = rng.integers(0, 3, (2, 5, 5))
    masks[:, 0] = 255
    crit = SegmentationLoss(ignore_index=255, loss="dice_ce")
    other = logits2.copy()
    other[:, :, 0] = 50 * rng.standard_normal((2, 3, 5))
    assert crit(None, mv.tensor(logits2), masks).item() == pytest.approx(crit(None, mv.tensor(other), masks).item(),
                                                                         rel=1e-6)
    assert SegmentationLoss(loss="dice_ce")(None, mv.tensor(logits2[..., 1:, :]), masks[:, 1:]).item() == pytest.approx(
        crit(None, mv.tensor(logits2), masks).item(), rel=1e-6)


def test_volume_flips_move_volume_and_labels_together():
    ds = load_volumes(8, 1, size=16)
    aug = data.SegmentationAugment(np, seed=3, mean=(0.5,), std=(0.5,), flip_dims=3)
    x, y = aug(ds.train.images, ds.train.labels, epoch=0, step=0)
    plain = data.normalize(ds.train.images, (0.5,), (0.5,))
    flips = [[d for d in range(3) if f >> d & 1] for f in range(8)]          # the 8 subsets of (D, H, W)
    used = []
    for i in range(8):             # each volume: the original flipped along some of D, H, W, its labels alike
        dims = next(d for d in flips if np.array_equal(y[i], np.flip(ds.train.labels[i], d)))
        assert np.array_equal(x[i, 0], np.flip(plain[i, 0], dims))
        used.append(tuple(dims))
    assert len(set(used)) > 2                                                 # several flips drawn
    assert float(x.min()) >= -1 and float(x.max()) <= 1


def test_brightness_rule_and_sizes():
    ds = data.load_dataset("volumes", subset=128)                   # a quarter of 512: 32 of the 128 test volumes
    assert (len(ds.train), len(ds.test)) == (128, 32) and ds.train.images.shape[2:] == (32, 32, 32)
    v = ds.test.images[:2]
    rule = brightness_rule(v)
    by_hand = np.abs(v[:, 0, ..., None] / 255 - np.asarray(CLASS_INTENSITY)).argmin(-1)
    assert np.array_equal(rule, by_hand)
    md, _ = mean_dice(brightness_rule(ds.test.images), ds.test.labels, 4)
    assert 0.3 < md < 0.45                                            # the lesson's 0.37-0.40, on other volumes
