"""Progressive resizing (``--progressive-resize S:E,...``): the resize of the image batch, the
schedule, a ViT with a conv stem taking the smaller sizes, and the trainer feeding them.

The resize is held to PyTorch's ``interpolate(..., mode='bilinear', antialias=True)`` (PIL's
filter) and to minivit's own ``F.interpolate``; ``vit_nano`` at 24×24 and 16×16 to timm's twin
built with ``dynamic_img_size=True`` (told to resize the position embedding bilinearly, as
minivit does); the trainer to the sizes it was asked for, epoch by epoch."""
import functools

import numpy as np
import pytest

import minivit.functional as F
from minivit import backend, data, train
from minivit.autograd import Tensor
from minivit.models import create_model

SYNTH = ["--dataset", "synthetic", "--device", "cpu", "--no-progress", "--subset", "64", "--test-subset", "32",
         "--batch-size", "32"]
NANO = ["--model", "vit_nano", "--model-kwargs", "stem_channels=[4,8,16],embed_dim=16,num_heads=2"]


# --------------------------------------------------------------------------- the resize
@pytest.mark.parametrize("size", [16, 20, 24, 28])
def test_resize_images_equals_interpolate_antialiased(size):
    x = np.random.default_rng(size).standard_normal((3, 3, 32, 32)).astype(np.float32)
    y = data.resize_images(x, size)
    assert y.shape == (3, 3, size, size) and y.dtype == np.float32 and y.flags.c_contiguous
    ref = F.interpolate(Tensor(x.astype(np.float64)), size=(size, size), mode="bilinear", antialias=True).data
    np.testing.assert_allclose(y, ref, atol=2e-6)
    torch = pytest.importorskip("torch")
    t = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear",
                                        antialias=True, align_corners=False).numpy()
    np.testing.assert_allclose(y, t, atol=2e-5)


def test_resize_keeps_constants_and_averages_every_pixel():
    x = np.full((2, 3, 32, 32), 0.7, dtype=np.float32)
    np.testing.assert_allclose(data.resize_images(x, 24), 0.7, rtol=1e-6)     # rows sum to 1
    x = np.zeros((1, 1, 32, 32), dtype=np.float32)
    x[0, 0, 5, 9] = 1.0                       # antialiasing: a lone pixel is never dropped (plain bilinear can)
    for size in (16, 20, 24):
        assert data.resize_images(x, size).max() > 0
    same = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert data.resize_images(same, 32) is same


def test_resize_on_the_stand_in(device, xp):
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = data.resize_images(xp.asarray(x), 20)
    assert backend.get_array_module(y) is xp
    np.testing.assert_allclose(backend.to_numpy(y), data.resize_images(x, 20), atol=1e-6)


# --------------------------------------------------------------------------- the schedule
def test_schedule_parses_and_maps_epochs_to_sizes():
    s = data.parse_resize_schedule("16:2, 24:1")
    assert s == ((16, 2), (24, 1))
    assert [data.size_at_epoch(s, e) for e in range(5)] == [16, 16, 24, None, None]
    assert data.parse_resize_schedule(None) == () and data.size_at_epoch((), 0) is None
    for bad in ("16", "16:0", "0:2", "a:b", "16:2,", "16:2:1"):
        with pytest.raises(ValueError, match="SIZE:EPOCHS"):
            data.parse_resize_schedule(bad)


def test_augment_resizes_only_the_scheduled_epochs():
    images = np.random.default_rng(0).integers(0, 256, (8, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(8)
    cfg = data.AugmentConfig(resize=((16, 1), (24, 1)))
    aug = data.Augment(np, cfg, 10, seed=0)
    plain = data.Augment(np, data.AugmentConfig(), 10, seed=0)
    for epoch, size in ((0, 16), (1, 24), (2, 32)):
        x, _ = aug(images, labels, epoch, 0)
        assert x.shape == (8, 3, size, size)
        full, _ = plain(images, labels, epoch, 0)            # the same crop and flip, then the resize
        np.testing.assert_allclose(x, data.resize_images(full, size), atol=1e-6)


# --------------------------------------------------------------------------- the model
def test_vit_nano_dynamic_matches_timm_at_smaller_sizes(monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    import timm.models.vision_transformer as vt
    from minivit.bench import timm_vit_nano
    monkeypatch.setattr(vt, "resample_abs_pos_embed",
                        functools.partial(vt.resample_abs_pos_embed, interpolation="bilinear", antialias=False))
    backend.manual_seed(0)
    model = create_model("vit_nano", dynamic_img_size=True)
    tm = timm_vit_nano(dynamic_img_size=True)
    tm.load_state_dict({k: torch.from_numpy(np.array(v.data if hasattr(v, "data") else v))
                        for k, v in model.state_dict().items()})
    model.eval()
    tm.eval()
    for size in (16, 24, 32):
        x = np.random.default_rng(size).standard_normal((2, 3, size, size)).astype(np.float32)
        with torch.no_grad():
            ref = tm(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(model(Tensor(x)).data, ref, atol=2e-5, rtol=1e-4)


def test_dynamic_vit_nano_is_the_static_one_at_its_size_and_learns_its_position_embedding():
    backend.manual_seed(0)
    static = create_model("vit_nano", embed_dim=16, stem_channels=(4, 8, 16), num_heads=2)
    backend.manual_seed(0)
    dynamic = create_model("vit_nano", embed_dim=16, stem_channels=(4, 8, 16), num_heads=2, dynamic_img_size=True)
    static.eval()
    dynamic.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(static(Tensor(x)).data, dynamic(Tensor(x)).data)
    small = Tensor(np.random.default_rng(1).standard_normal((2, 3, 20, 20)).astype(np.float32))
    dynamic(small).sum().backward()
    assert dynamic.pos_embed.grad is not None and np.abs(dynamic.pos_embed.grad).sum() > 0
    with pytest.raises(ValueError, match="not divisible by the stem's total stride 4"):
        dynamic(Tensor(np.zeros((1, 3, 18, 18), dtype=np.float32)))
    with pytest.raises(ValueError, match="built for img_size=32×32"):
        static(small)


# --------------------------------------------------------------------------- the trainer
def test_trainer_feeds_the_scheduled_sizes_and_records_them(tmp_path):
    summary = train.run(NANO + SYNTH + ["--epochs", "3", "--progressive-resize", "16:1,24:1",
                                        "--out-dir", str(tmp_path / "run")], log=lambda *a: None)
    rows = [__import__("json").loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["img_size"] for r in rows] == [16, 24, 32]
    assert summary is not None
    cfg = __import__("json").loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["progressive_resize"] == "16:1,24:1" and "dynamic_img_size" not in cfg["model_kwargs"]
    tr = train.Trainer(dict(cfg, out_dir=None), tmp_path / "again", log=lambda *a: None)
    shapes = [next(iter(tr.train_loader.batches(e)))[0].shape[-1] for e in range(3)]
    assert shapes == [16, 24, 32]


@pytest.mark.parametrize("args, message", [
    (["--progressive-resize", "16"], "SIZE:EPOCHS"),
    (["--progressive-resize", "32:1"], "smaller than the data's 32×32"),
    (["--progressive-resize", "16:3"], "leave at least the last epoch"),
    (["--progressive-resize", "18:1"], "multiple of 4"),
    (["--model", "resnet_teacher", "--model-kwargs", "depth=8,width=4", "--progressive-resize", "16:1"],
     "needs a model that takes other image sizes"),
])
def test_bad_schedules_get_one_error_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        train.main(NANO + SYNTH + ["--epochs", "3", "--out-dir", str(tmp_path / "r")] + args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("error:") == 1
