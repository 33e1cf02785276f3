"""Weight files (safetensors): minivit → file → minivit, minivit → file → timm, timm → file → minivit,
float16 files, and ``create_model(name, pretrained=True)`` with the weights that ship."""
import json

import numpy as np
import pytest

import minivit
import minivit.convert
from minivit import Tensor, no_grad
from minivit.models import create_model, load_pretrained, pretrained, save_pretrained


def _logits(model, x):
    model.eval()
    with no_grad():
        return minivit.backend.to_numpy(model(Tensor(x)).data)


def _perturb(model, seed=1):
    """New random values in every parameter, so a test cannot pass on shared initial weights."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] = rng.standard_normal(p.shape).astype(p.data.dtype) * 0.05


def test_round_trip_same_logits(tmp_path):
    a = create_model("vit_tiny", depth=2, embed_dim=64, num_heads=2, mlp_ratio=2.0)
    _perturb(a)
    path = save_pretrained(a, tmp_path / "vit.safetensors", metadata={"note": "test"})
    b = create_model("vit_tiny", depth=2, embed_dim=64, num_heads=2, mlp_ratio=2.0)
    load_pretrained(b, path)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(_logits(a, x), _logits(b, x))
    import safetensors
    with safetensors.safe_open(str(path), "np") as f:
        assert f.metadata() == {"format": "pt", "note": "test"}


def test_float16_file_is_half_the_size_and_rounds_once(tmp_path):
    a = create_model("pvt_v2_tiny")
    _perturb(a)
    full = save_pretrained(a, tmp_path / "full.safetensors")
    half = save_pretrained(a, tmp_path / "half.safetensors", dtype=np.float16)
    assert 0.45 < half.stat().st_size / full.stat().st_size < 0.55
    b = load_pretrained(create_model("pvt_v2_tiny"), half)
    for (k, pa), (k2, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and pb.dtype == pa.dtype                      # cast back to the model's dtype
        expected = pa.astype(np.float16).astype(pa.dtype) if pa.dtype.kind == "f" else pa
        np.testing.assert_array_equal(pb, expected, err_msg=k)


def test_missing_or_wrong_file_is_a_clear_error(tmp_path):
    m = create_model("vit_tiny", depth=1, embed_dim=32, num_heads=2)
    with pytest.raises(FileNotFoundError, match="no file"):
        load_pretrained(m, tmp_path / "nope.safetensors")
    other = save_pretrained(create_model("pvt_v2_tiny"), tmp_path / "pvt.safetensors")
    before = {k: v.copy() for k, v in m.state_dict().items()}
    with pytest.raises(Exception, match="Missing key"):
        load_pretrained(m, other)
    for k, v in m.state_dict().items():                         # a failed load changes nothing
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("name,kwargs", [
    ("vit_tiny_patch16_224", dict(img_size=32, patch_size=4, num_classes=10, depth=2, embed_dim=64, num_heads=2)),
    ("swin_tiny_patch4_window7_224", dict(img_size=32, patch_size=2, window_size=4, num_classes=10,
                                          embed_dim=32, depths=(1, 1), num_heads=(2, 4))),
])
def test_files_move_between_minivit_and_timm(tmp_path, name, kwargs):
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    import safetensors.torch
    tm = timm.create_model(name, **kwargs).eval()
    ours = minivit.convert.from_timm(tm)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)

    _perturb(ours)                                              # minivit → file → timm
    path = save_pretrained(ours, tmp_path / "ours.safetensors")
    tm.load_state_dict(safetensors.torch.load_file(str(path)))
    with torch.no_grad():
        theirs = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_logits(ours, x), theirs, rtol=1e-5, atol=1e-5)

    with torch.no_grad():                                       # timm → file → minivit
        for p in tm.parameters():
            p.mul_(-0.5)
        theirs = tm(torch.from_numpy(x)).numpy()
    safetensors.torch.save_file({k: v.contiguous() for k, v in tm.state_dict().items()},
                                str(tmp_path / "timm.safetensors"))
    load_pretrained(ours, tmp_path / "timm.safetensors")
    np.testing.assert_allclose(_logits(ours, x), theirs, rtol=1e-5, atol=1e-5)


def test_pretrained_true_loads_the_shipped_file(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ValueError, match="no trained weights ship for 'pvt_v2_tiny'"):
        create_model("pvt_v2_tiny", pretrained=True)
    trained = create_model("pvt_v2_tiny")
    _perturb(trained)
    save_pretrained(trained, tmp_path / "pvt_v2_tiny.safetensors", dtype=np.float16)
    (tmp_path / "pvt_v2_tiny.json").write_text(json.dumps({"test_accuracy_1000": 0.5}))
    assert pretrained.pretrained_models() == ["pvt_v2_tiny"]
    m = create_model("pvt_v2_tiny", pretrained=True)
    assert m.pretrained_cfg["test_accuracy_1000"] == 0.5
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(_logits(m, x), _logits(trained, x), rtol=0.05, atol=0.05)   # float16 weights
    assert not np.allclose(_logits(m, x), _logits(create_model("pvt_v2_tiny"), x), atol=0.05)


@pytest.mark.parametrize("name", pretrained.pretrained_models() or
                         [pytest.param("none", marks=pytest.mark.skip(reason="no trained weights ship yet"))])
def test_shipped_weights_score_what_their_record_says(name):
    """Each shipped classifier, evaluated on the first 1,000 images of the CIFAR-10 test split (the JPEG
    q75 copy), within 1 point of the accuracy recorded beside its weights; a shipped segmentation
    model's mIoU on the 1,000 generated ``shapes`` test scenes within 1 point of its record's."""
    from minivit import data
    record = pretrained.pretrained_record(name)
    if record.get("task") != "segmentation":
        try:
            data.load_dataset("cifar10", None, test_subset=1000, need_train=False)
        except Exception as e:                                   # no copy of CIFAR-10 on this machine
            pytest.skip(f"CIFAR-10 not found: {e}")
    model = create_model(name, pretrained=True)
    key = "test_miou_1000" if record.get("task") == "segmentation" else "test_accuracy_1000"
    score = pretrained.score_shipped(model, record)
    assert abs(score - model.pretrained_cfg[key]) <= 0.01, (score, model.pretrained_cfg)


def test_pretrained_builds_the_classes_of_its_weights(tmp_path, monkeypatch):
    """A shipped model trained for other classes than its factory's default (SegFormer: ADE20K's 150)
    is built for the classes in its record, unless the caller asks for others."""
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    trained = create_model("segformer_tiny", num_classes=5)
    _perturb(trained)
    save_pretrained(trained, tmp_path / "segformer_tiny.safetensors", dtype=np.float16)
    (tmp_path / "segformer_tiny.json").write_text(json.dumps({"num_classes": 5, "task": "segmentation"}))
    m = create_model("segformer_tiny", pretrained=True)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    assert _logits(m, x).shape[1] == 5
    np.testing.assert_allclose(_logits(m, x), _logits(trained, x), rtol=0.05, atol=0.05)
    with pytest.raises(Exception, match="shape|size"):          # 150 classes asked: the head does not fit
        create_model("segformer_tiny", pretrained=True, num_classes=150)


def test_a_variant_that_does_not_ship_says_why():
    for name in pretrained.NOT_SHIPPED:
        assert name not in pretrained.pretrained_models()
        with pytest.raises(ValueError, match=rf"no trained weights ship for '{name}' \(the package keeps its "
                                             r"weights under 40 MB.*Train it with python -m minivit.train"):
            create_model(name, pretrained=True)


def test_shipped_weights_fit_the_package_budget():
    """Each shipped file at most 10 MB, all of them together at most 40 MB (the wheel stays small);
    every file has its record, every record its file, and the files are float16."""
    import safetensors
    files = sorted(pretrained.WEIGHTS_DIR.glob("*.safetensors"))
    records = sorted(pretrained.WEIGHTS_DIR.glob("*.json"))
    assert [f.stem for f in files] == [r.stem for r in records]
    sizes = {f.stem: f.stat().st_size for f in files}
    assert all(size <= 10_000_000 for size in sizes.values()), sizes
    assert sum(sizes.values()) <= 40_000_000, sizes
    for f in files:
        with safetensors.safe_open(str(f), "np") as st:
            kinds = {st.get_tensor(k).dtype for k in st.keys() if st.get_tensor(k).dtype.kind == "f"}
        assert kinds == {np.dtype(np.float16)}, (f.name, kinds)


# --------------------------------------------------------------------------- shipping a run
def test_ship_refuses_what_pretrained_true_could_not_rebuild(tmp_path):
    """python -m minivit.ship: one error line for a subset run, an unfinished run, a folder that
    is not a run; nothing is written."""
    import subprocess
    import sys
    from minivit import train
    run = tmp_path / "run"
    train.run(["--model", "resnet_teacher", "--model-kwargs", "depth=8,width=4", "--dataset", "synthetic",
               "--subset", "64", "--test-subset", "32", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
               "--no-progress", "--out-dir", str(run)], log=lambda *a: None)
    with pytest.raises(ValueError, match="--model-kwargs"):
        pretrained.ship_run(run, tmp_path / "w")
    seg = tmp_path / "seg"                       # a segmentation run ships only from all of shapes
    train.run(["--task", "segmentation", "--model", "segformer_tiny", "--dataset", "shapes", "--subset", "32",
               "--test-subset", "8", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-progress",
               "--out-dir", str(seg)], log=lambda *a: None)
    with pytest.raises(ValueError, match="full shapes runs .*task segmentation, dataset shapes, subset 32"):
        pretrained.ship_run(seg, tmp_path / "w")
    for args, message in (([str(run)], "error: .*--model-kwargs"),
                          ([str(tmp_path)], "error: .*no last.ckpt")):
        r = subprocess.run([sys.executable, "-m", "minivit.ship", *args, "--weights-dir", str(tmp_path / "w")],
                           capture_output=True, text=True)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        import re
        assert re.match(message, r.stderr.strip()), r.stderr
    assert not (tmp_path / "w").exists()


def test_shipped_record_command_reproduces_the_recipe():
    """The record's command, parsed by the trainer, gives back the run's recipe."""
    from minivit import train
    cfg = train.resolve_config(train.build_parser().parse_args(
        ["--model", "vit_nano", "--epochs", "12", "--lr", "2e-3", "--batch-size", "256", "--label-smoothing", "0",
         "--no-hflip", "--warmup-epochs", "1", "--progressive-resize", "16:3,24:2", "--clip-grad", "1.5",
         "--sched", "rsqrt-cooldown", "--cooldown-epochs", "2", "--head-weight-decay", "0"]))
    args = pretrained._recipe_args(cfg)
    again = train.resolve_config(train.build_parser().parse_args(args))
    for k in pretrained._RECIPE_KEYS + ("hflip",):
        assert again[k] == cfg[k], k
    seg = train.resolve_config(train.build_parser().parse_args(
        ["--task", "segmentation", "--model", "segformer_tiny", "--dataset", "shapes", "--epochs", "25"]))
    again = train.resolve_config(train.build_parser().parse_args(pretrained._recipe_args(seg)))
    for k in pretrained._RECIPE_KEYS + ("task", "dataset"):
        assert again[k] == seg[k], k


def test_zero_dim_buffers_keep_their_shape(tmp_path):
    """BatchNorm's num_batches_tracked is 0-d in the model, in the file and back (a 1-d copy of it
    would not load into minivit or timm)."""
    import safetensors.numpy
    model = create_model("vit_nano")
    save_pretrained(model, tmp_path / "nano.safetensors", dtype=np.float16)
    arrays = safetensors.numpy.load_file(str(tmp_path / "nano.safetensors"))
    for k, v in model.state_dict().items():
        assert arrays[k].shape == tuple(np.shape(v)), k
    load_pretrained(create_model("vit_nano"), tmp_path / "nano.safetensors")
