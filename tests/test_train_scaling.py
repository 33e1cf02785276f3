"""python -m minivit.train with the "Scaling Vision Transformers" recipe's flags: --opt adafactor,
--sched rsqrt-cooldown with --cooldown-epochs, --head-weight-decay; the checkpoint keeps Adafactor's
state and the schedule, and an interrupted run resumes bitwise like an uninterrupted one."""
import numpy as np
import pytest

import minivit.models.vit  # noqa: F401
from minivit import train
from minivit.optim import warmup_rsqrt_cooldown
from minivit.train import load_checkpoint
from tests.test_train import interrupt_at, quiet_run, same_weights, without_times

# 64 images, batch 16: 4 steps per epoch, 3 epochs = 12 steps; warmup 1 epoch (4 steps), cooldown 1 (4)
SCALING = ["--model", "vit_tiny",
           "--model-kwargs", "embed_dim=32,depth=1,num_heads=2,global_pool=map,class_token=False",
           "--dataset", "synthetic", "--device", "cpu", "--subset", "64", "--test-subset", "32", "--epochs", "3",
           "--batch-size", "16", "--opt", "adafactor", "--sched", "rsqrt-cooldown", "--warmup-epochs", "1",
           "--cooldown-epochs", "1", "--weight-decay", "0.01", "--head-weight-decay", "0.5", "--min-lr", "1e-4",
           "--no-progress"]


def test_adafactor_rsqrt_cooldown_head_decay_run_and_resume(tmp_path, monkeypatch):
    straight, _ = quiet_run(SCALING + ["--out-dir", str(tmp_path / "a")])
    assert straight["status"] == "done" and all(np.isfinite(m["train_loss"]) for m in straight["metrics"])
    ck = load_checkpoint(tmp_path / "a" / "last.ckpt")
    cfg = ck["config"]
    assert (cfg["opt"], cfg["sched"], cfg["cooldown_epochs"], cfg["head_weight_decay"]) == \
        ("adafactor", "rsqrt-cooldown", 1.0, 0.5)
    assert (cfg["total_steps"], cfg["warmup_steps"], cfg["cooldown_steps"]) == (12, 4, 4)
    # three groups: no decay, body, head (its weight only); Adafactor's hyper-parameters in each
    groups = ck["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.0, 0.01, 0.5]
    assert len(groups[2]["params"]) == 1 and all(g["beta2_decay"] == -0.8 for g in groups)
    # Adafactor's state: row/column statistics for matrices, a full variance for vectors
    state = ck["optimizer"]["state"]
    head_w = state[groups[2]["params"][0]]
    assert set(head_w) == {"step", "row_var", "col_var"} and head_w["step"] == 12
    assert head_w["row_var"].shape == (10, 1) and head_w["col_var"].shape == (1, 32)
    assert any(set(s) == {"step", "variance"} for s in state.values())
    # the schedule ended where the formula says: after 12 steps the lr of step 12 = min_lr
    assert ck["scheduler"]["last_epoch"] == 12
    for g in groups:
        assert g["lr"] == pytest.approx(warmup_rsqrt_cooldown(12, 1e-2, 4, 12, 4, min_lr=1e-4))
    np.testing.assert_allclose([m["lr"] for m in straight["metrics"]],
                               [warmup_rsqrt_cooldown(t, 1e-2, 4, 12, 4, min_lr=1e-4) for t in (4, 8, 12)])

    # Ctrl-C during step 6 (the middle of epoch 2), resume: the same weights, state and curve
    interrupt_at(monkeypatch, 6)
    with pytest.raises(SystemExit):
        train.main(SCALING + ["--out-dir", str(tmp_path / "b")])
    monkeypatch.undo()
    mid = load_checkpoint(tmp_path / "b" / "last.ckpt")
    assert (mid["epoch"], mid["step_in_epoch"]) == (1, 2)
    resumed, _ = quiet_run(["--resume", str(tmp_path / "b")])
    assert resumed["status"] == "done"
    b = load_checkpoint(tmp_path / "b" / "last.ckpt")
    assert same_weights(ck["model"], b["model"])
    assert without_times(straight["metrics"]) == without_times(b["metrics"])
    for k, v in ck["optimizer"]["state"].items():
        assert all(np.array_equal(v[n], b["optimizer"]["state"][k][n]) for n in v)


@pytest.mark.parametrize("args,message", [
    (["--cooldown-epochs", "2"], "applies to --sched rsqrt-cooldown only"),
    (["--sched", "rsqrt-cooldown", "--epochs", "4", "--cooldown-epochs", "4"], "must be > 0 and fit after the warmup"),
    (["--sched", "rsqrt-cooldown", "--warmup-epochs", "0"], "needs --warmup-epochs > 0"),
    (["--head-weight-decay", "-1"], "--head-weight-decay -1 must be >= 0"),
    (["--opt", "adafam"], "--opt"),
])
def test_scaling_flags_refuse_bad_values(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        train.main(["--dataset", "synthetic", "--no-progress", "--out-dir", "/nonexistent/never"] + args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err, err


def test_scaling_defaults_resolve():
    cfg = train.resolve_config(train.build_parser().parse_args(
        ["--dataset", "synthetic", "--opt", "adafactor", "--sched", "rsqrt-cooldown", "--epochs", "20"]))
    assert (cfg["lr"], cfg["weight_decay"], cfg["cooldown_epochs"], cfg["head_weight_decay"]) == \
        (1e-2, 0.005, 2.0, None)
    plain = train.resolve_config(train.build_parser().parse_args(["--dataset", "synthetic"]))
    assert (plain["sched"], plain["cooldown_epochs"], plain["opt"]) == ("cosine", None, "adamw")
