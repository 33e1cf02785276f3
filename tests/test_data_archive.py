"""``minivit.data.archive``: a class-balanced subset copies the images byte for byte; split parts
join back to the same file, and a damaged part is caught by the SHA-256."""
import io
import tarfile

import pytest

from minivit.data import archive
from minivit.data.cifar10 import DatasetError, load_imagefolder


def _fake_imagefolder(path, per_class=(5, 3), classes=("cat", "dog")):
    """An ImageFolder .tar.gz of tiny real JPEGs, train/<class>/<k>.jpg and test/<class>/<k>.jpg."""
    PIL = pytest.importorskip("PIL.Image")
    with tarfile.open(path, "w:gz") as tf:
        for split, n in zip(("train", "test"), per_class):
            for c, cls in enumerate(classes):
                for k in range(n):
                    buf = io.BytesIO()
                    PIL.new("RGB", (4, 4), (10 * k, 50 * c, 7)).save(buf, format="JPEG")
                    data = buf.getvalue()
                    info = tarfile.TarInfo(f"{split}/{cls}/{k}.jpg")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return path


def _members(path):
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}


def test_subset_keeps_the_first_images_of_each_class_byte_for_byte(tmp_path):
    src = _fake_imagefolder(tmp_path / "src.tar.gz")
    counts = archive.subset_archive(src, tmp_path / "sub.tar.gz", train_per_class=2)
    assert counts == {"train": {"cat": 2, "dog": 2}, "test": {"cat": 3, "dog": 3}}
    a, b = _members(src), _members(tmp_path / "sub.tar.gz")
    assert set(b) == {f"train/{c}/{k}.jpg" for c in ("cat", "dog") for k in (0, 1)} | \
                     {f"test/{c}/{k}.jpg" for c in ("cat", "dog") for k in range(3)}
    assert all(b[n] == a[n] for n in b)
    ds = load_imagefolder(tmp_path / "sub.tar.gz")              # the loader reads it as an ImageFolder
    assert len(ds.train) == 4 and len(ds.test) == 6


def test_split_and_join_round_trip_and_catch_a_damaged_part(tmp_path):
    src = _fake_imagefolder(tmp_path / "src.tar.gz")
    parts = archive.split_file(src, tmp_path / "p0", 3)
    assert len(parts) == 3 and sum(p.stat().st_size for p in parts) == src.stat().st_size
    (tmp_path / "p1").mkdir()
    parts[2].rename(tmp_path / "p1" / parts[2].name)           # a part carried in another call
    out = archive.join_parts(tmp_path / "p0", tmp_path / "joined.tar.gz")
    assert out.read_bytes() == src.read_bytes()
    damaged = tmp_path / "p1" / parts[2].name
    damaged.write_bytes(b"x" + damaged.read_bytes()[1:])
    with pytest.raises(DatasetError, match="SHA-256"):
        archive.join_parts(tmp_path / "p0", tmp_path / "joined2.tar.gz")
    assert not (tmp_path / "joined2.tar.gz").exists()
    damaged.unlink()
    with pytest.raises(DatasetError, match="missing"):
        archive.join_parts(tmp_path / "p0", tmp_path / "joined3.tar.gz")


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert archive.main(["subset", str(tmp_path / "nope.tar.gz"), str(tmp_path / "x.tar.gz"),
                         "--train-per-class", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "not found" in err[0]
    src = _fake_imagefolder(tmp_path / "src.tar.gz")
    assert archive.main(["subset", str(src), str(tmp_path / "x.tar.gz"), "--train-per-class", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: train_per_class must be at least 1")
