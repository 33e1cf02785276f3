"""minivit.data: the official CIFAR-10 format, ImageFolder folders and archives, the download
(with a local file:// URL standing in for the internet), caches, corrupt files, the synthetic
set, device-side augmentation and batching."""
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from minivit import backend
from minivit.data import augment as A
from minivit.data import cifar10 as C
from minivit.data import (CIFAR10_CLASSES, DatasetError, DeviceLoader, load_cifar10, load_dataset,
                          load_imagefolder, load_imagefolder_cached, load_official_archive,
                          load_official_folder)
from minivit.data.io import atomic_write, safe_load_pickle
from minivit.data.synthetic import load_synthetic, synthetic_split

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

N_PER_BATCH = 12


# =========================================================================== builders
def official_batches(seed=0):
    """Six batches in the official layout; returns {name: (images NCHW, labels)} and the pickles."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, size=(N_PER_BATCH, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=N_PER_BATCH).tolist()
        # The documented row layout: 1024 red values (row-major 32×32), then green, then blue.
        rows = np.stack([np.concatenate([img[c].ravel() for c in range(3)]) for img in images])
        blob = pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": rows,
                             b"filenames": [b"x.png"] * N_PER_BATCH}, protocol=2)
        out[name] = (images, np.array(labels), blob)
    return out


def write_official_tar(path, batches, corrupt=None, drop=None):
    meta = pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, protocol=2)
    with tarfile.open(path, "w:gz") as tf:
        for name, blob in [("batches.meta", meta)] + [(k, v[2]) for k, v in batches.items()]:
            if name == drop:
                continue
            if name == corrupt:
                blob = blob[: len(blob) // 2]                       # a truncated pickle
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return Path(path)


def image_bytes(arr_hwc, fmt):
    buf = io.BytesIO()
    Image.fromarray(arr_hwc).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


CLASSES3 = ("cat", "airplane", "dog")   # unsorted on purpose: labels must follow sorted order


def imagefolder_files(n_train=4, n_test=2, seed=0, fmt="PNG", size=32):
    """{relative path: bytes} of an ImageFolder, and the expected arrays per (split, class)."""
    rng = np.random.default_rng(seed)
    files, arrays = {}, {}
    ext = ".png" if fmt == "PNG" else ".jpg"
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in CLASSES3:
            for i in range(n):
                a = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                # File names sort as 2 < 10 only numerically: checks the natural order.
                name = f"{split}/{cls}/img{i * 5}{ext}"
                files[name] = image_bytes(a, fmt)
                if fmt == "JPEG":   # lossy: the reference is what the saved bytes decode to
                    a = np.asarray(Image.open(io.BytesIO(files[name])).convert("RGB"))
                arrays[(split, cls, i)] = a.transpose(2, 0, 1)
    return files, arrays


def write_tar(path, files, prefix=""):
    with tarfile.open(path, "w:gz") as tf:
        for name, blob in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return Path(path)


def write_folder(root, files):
    for name, blob in files.items():
        p = Path(root) / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(blob)
    return Path(root)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A private cache, no shared archive, and a download URL that does not exist."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MINIVIT_CACHE", str(cache))
    monkeypatch.setattr(C, "shared_archive_candidates", lambda: [tmp_path / "no" / "cifar10-jpeg.tar.gz"])
    monkeypatch.setattr(C, "CIFAR10_URL", (tmp_path / "nowhere.tar.gz").as_uri())
    return cache


# =========================================================================== the official format
def check_official(ds, batches):
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    np.testing.assert_array_equal(ds.train.images, np.concatenate([b[0] for b in train]))
    np.testing.assert_array_equal(ds.train.labels, np.concatenate([b[1] for b in train]))
    np.testing.assert_array_equal(ds.test.images, batches["test_batch"][0])
    np.testing.assert_array_equal(ds.test.labels, batches["test_batch"][1])
    assert ds.train.images.dtype == np.uint8 and ds.train.labels.dtype == np.int64
    assert ds.classes == CIFAR10_CLASSES


def test_official_archive_and_folder(tmp_path, isolated):
    batches = official_batches()
    tar = write_official_tar(tmp_path / "mini-cifar.tar.gz", batches)
    check_official(load_official_archive(tar), batches)
    check_official(load_cifar10(tar), batches)                      # --data-dir FILE: told apart by members
    with tarfile.open(tar) as tf:
        tf.extractall(tmp_path / "x", filter="data")
    check_official(load_official_folder(tmp_path / "x" / "cifar-10-batches-py"), batches)
    check_official(load_cifar10(tmp_path / "x" / "cifar-10-batches-py"), batches)
    check_official(load_cifar10(tmp_path / "x"), batches)           # the folder that holds it


def test_official_corrupt_files_are_named(tmp_path, isolated):
    batches = official_batches()
    tar = write_official_tar(tmp_path / "a.tar.gz", batches, corrupt="data_batch_3")
    with pytest.raises(DatasetError, match="data_batch_3.*truncated or corrupt"):
        load_cifar10(tar)
    tar = write_official_tar(tmp_path / "b.tar.gz", batches, drop="test_batch")
    with pytest.raises(DatasetError, match="missing cifar-10-batches-py/test_batch"):
        load_cifar10(tar)
    good = write_official_tar(tmp_path / "c.tar.gz", batches).read_bytes()
    (tmp_path / "trunc.tar.gz").write_bytes(good[: len(good) * 2 // 3])
    with pytest.raises(DatasetError, match=r"trunc\.tar\.gz.*truncated or corrupt"):
        load_cifar10(tmp_path / "trunc.tar.gz")
    # A file with the official name must have the official checksum.
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "cifar-10-python.tar.gz").write_bytes(good)
    with pytest.raises(DatasetError, match="MD5 checksum mismatch"):
        load_cifar10(tmp_path / "d")
    # A pickle that names a callable other than an array builder is refused, not run.
    evil = pickle.dumps({b"data": os.system, b"labels": []}, protocol=2)
    with pytest.raises(DatasetError, match="refusing to load global"):
        C._parse_batch(evil, "evil_batch")


def test_bad_batch_contents():
    bad = pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, protocol=2)
    with pytest.raises(DatasetError, match=r"\(N, 3072\)"):
        C._parse_batch(bad, "b")
    bad = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, protocol=2)
    with pytest.raises(DatasetError, match="labels must be in 0..9"):
        C._parse_batch(bad, "b")


# =========================================================================== download and resolution
def test_download_checks_md5_and_fills_the_cache(tmp_path, isolated, monkeypatch):
    batches = official_batches(seed=1)
    served = write_official_tar(tmp_path / "served.tar.gz", batches)
    monkeypatch.setattr(C, "CIFAR10_URL", served.as_uri())         # a file:// URL instead of the internet
    # With the real checksum the self-built archive is "corrupt": refused, nothing kept.
    with pytest.raises(DatasetError, match=f"MD5 checksum mismatch.*expected {C.CIFAR10_MD5}"):
        load_cifar10()
    assert not isolated.exists() or not any(isolated.iterdir())
    # With its own checksum it is downloaded into the cache and parsed ...
    monkeypatch.setattr(C, "CIFAR10_MD5", hashlib.md5(served.read_bytes()).hexdigest())
    check_official(load_cifar10(), batches)
    assert (isolated / "cifar-10-python.tar.gz").read_bytes() == served.read_bytes()
    assert sorted(p.name for p in isolated.iterdir()) == ["cifar-10-python.tar.gz"]   # no temp files
    # ... and the next load reads the cache without downloading.
    monkeypatch.setattr(C, "fetch", lambda *a, **k: pytest.fail("downloaded again"))
    check_official(load_cifar10(), batches)
    # --data-dir as the download target, with --download only (a new folder is made for it).
    monkeypatch.setattr(C, "fetch", lambda url, f, **k: f.write(served.read_bytes()))
    check_official(load_cifar10(tmp_path / "dl" / "new", download=True), batches)
    assert (tmp_path / "dl" / "new" / "cifar-10-python.tar.gz").is_file()


def test_a_data_dir_without_the_dataset_is_an_error_not_a_new_cache(tmp_path, isolated, monkeypatch):
    """A mistyped --data-dir is neither created nor filled, and no other copy is used instead
    (here a shared archive that would be found without --data-dir)."""
    files, _ = imagefolder_files()
    shared = write_tar(tmp_path / "shared.tar.gz", files)
    monkeypatch.setattr(C, "shared_archive_candidates", lambda: [shared])
    monkeypatch.setattr(C, "fetch", lambda *a, **k: pytest.fail("downloaded without --download"))
    assert str(shared) in load_cifar10().source                    # found when --data-dir is left out
    before = sorted(tmp_path.rglob("*"))
    for missing in (tmp_path / "nonexistent", tmp_path / "typo" / "data", tmp_path / "missing.tar.gz"):
        with pytest.raises(DatasetError, match="does not exist.*--download"):
            load_cifar10(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no cifar-10-python.tar.gz.*--download"):
        load_cifar10(tmp_path / "empty")
    assert sorted(tmp_path.rglob("*")) == sorted(before + [tmp_path / "empty"])     # nothing made or written


def test_nothing_found_says_where_it_looked(tmp_path, isolated):
    with pytest.raises(DatasetError) as e:
        load_cifar10()
    msg = str(e.value)
    assert str(isolated) in msg and "cifar10-jpeg.tar.gz" in msg and "nowhere.tar.gz" in msg
    assert "--data-dir" in msg and "--dataset synthetic" in msg
    with pytest.raises(DatasetError, match="does not exist"):
        load_cifar10(tmp_path / "missing.tar.gz")


def test_shared_archive_is_used_after_the_cache(tmp_path, isolated, monkeypatch):
    files, _ = imagefolder_files()
    (tmp_path / "shared").mkdir()
    shared = write_tar(tmp_path / "shared" / "cifar10-jpeg.tar.gz", files)
    monkeypatch.setattr(C, "shared_archive_candidates", lambda: [tmp_path / "nope.tar.gz", shared])
    ds = load_cifar10()
    assert ds.classes == tuple(sorted(CLASSES3)) and str(shared) in ds.source
    assert len(list(isolated.glob("imagefolder-*.npz"))) == 1          # decoded once, cached
    monkeypatch.setattr(C, "_decode", lambda *a: pytest.fail("decoded although cached"))
    assert load_cifar10().train.images.shape == ds.train.images.shape
    assert load_cifar10(shared).test.labels.tolist() == ds.test.labels.tolist()   # --data-dir FILE: same cache
    # An official copy in the cache comes first.
    batches = official_batches()
    write_official_tar(tmp_path / "o.tar.gz", batches)
    with tarfile.open(tmp_path / "o.tar.gz") as tf:
        tf.extractall(isolated, filter="data")
    check_official(load_cifar10(), batches)


# =========================================================================== ImageFolder
def check_imagefolder(ds, arrays, n_train=4, n_test=2):
    classes = tuple(sorted(CLASSES3))
    assert ds.classes == classes
    for split, n in (("train", n_train), ("test", n_test)):
        s = getattr(ds, split)
        assert s.images.shape == (n * 3, 3, 32, 32) and s.images.dtype == np.uint8
        # Interleaved by class: image i of each class, in sorted class order, then image i+1.
        np.testing.assert_array_equal(s.labels, np.tile(np.arange(3), n))
        for k in range(n * 3):
            np.testing.assert_array_equal(s.images[k], arrays[(split, classes[k % 3], k // 3)])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_imagefolder_archive_and_folder(tmp_path, fmt):
    files, arrays = imagefolder_files(fmt=fmt)
    check_imagefolder(load_imagefolder(write_tar(tmp_path / "f.tar.gz", files)), arrays)
    check_imagefolder(load_imagefolder(write_tar(tmp_path / "g.tar.gz", files, prefix="wrap/")), arrays)
    check_imagefolder(load_imagefolder(write_folder(tmp_path / "folder", files)), arrays)


def test_imagefolder_cifar_class_folders_give_the_official_labels(tmp_path):
    files = {}
    for split in ("train", "test"):
        for k, cls in enumerate(reversed(CIFAR10_CLASSES)):         # written in another order on purpose
            files[f"{split}/{cls}/0.png"] = image_bytes(np.full((32, 32, 3), k, np.uint8), "PNG")
    ds = load_imagefolder(write_tar(tmp_path / "c.tar.gz", files))
    assert ds.classes == CIFAR10_CLASSES and ds.notes == []
    for img, label in zip(ds.train.images, ds.train.labels):       # truck (written first, k=0) is label 9
        assert CIFAR10_CLASSES[label] == tuple(reversed(CIFAR10_CLASSES))[img[0, 0, 0]]
    assert ds.train.labels.tolist() == list(range(10))


def test_imagefolder_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    files, arrays = imagefolder_files()
    tar = write_tar(tmp_path / "f.tar.gz", files)
    cache = tmp_path / "cache"
    first = load_imagefolder_cached(tar, cache)
    (npz,) = cache.glob("imagefolder-*.npz")
    assert [p.name for p in cache.iterdir()] == [npz.name]          # no temp file left behind
    real_decode = C._decode
    monkeypatch.setattr(C, "_decode", lambda *a: pytest.fail("decoded although cached"))
    second = load_imagefolder_cached(tar, cache)
    check_imagefolder(second, arrays)
    np.testing.assert_array_equal(first.train.images, second.train.images)
    # A changed archive (new mtime) is decoded again.
    monkeypatch.setattr(C, "_decode", real_decode)
    os.utime(tar, ns=(1_000_000_000, 1_000_000_000))
    load_imagefolder_cached(tar, cache)
    assert len(list(cache.glob("imagefolder-*.npz"))) == 2
    # A damaged cache is reported and rebuilt, never trusted.
    (npz2,) = [p for p in cache.glob("imagefolder-*.npz") if p != npz]
    npz2.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        check_imagefolder(load_imagefolder_cached(tar, cache), arrays)


def test_cache_writes_are_atomic(tmp_path, monkeypatch):
    files, _ = imagefolder_files()
    tar = write_tar(tmp_path / "f.tar.gz", files)
    cache = tmp_path / "cache"

    def failing_savez(f, **arrays):
        f.write(b"half of an npz")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.warns(UserWarning, match="could not write"):
        load_imagefolder_cached(tar, cache)
    assert list(cache.iterdir()) == []                               # neither a half file nor a temp one
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(tmp_path / "x.bin") as f:
            f.write(b"partial")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "f.tar.gz"]


def test_imagefolder_corrupt_files_are_named(tmp_path):
    files, _ = imagefolder_files(fmt="JPEG")
    bad = dict(files)
    name = "train/dog/img5.jpg"
    bad[name] = files[name][: len(files[name]) // 2]                 # a truncated JPEG
    with pytest.raises(DatasetError, match=f"{name}: cannot decode"):
        load_imagefolder(write_tar(tmp_path / "a.tar.gz", bad))
    bad[name] = b"not an image at all"
    with pytest.raises(DatasetError, match=f"{name}: cannot decode"):
        load_imagefolder(write_folder(tmp_path / "b", bad))
    blob = write_tar(tmp_path / "c.tar.gz", files).read_bytes()
    (tmp_path / "t.tar.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match=r"t\.tar\.gz.*truncated or corrupt"):
        load_imagefolder(tmp_path / "t.tar.gz")
    # A plain (uncompressed) tar cut short.
    with tarfile.open(tmp_path / "u.tar", "w") as tf:
        for n, b in files.items():
            info = tarfile.TarInfo(n)
            info.size = len(b)
            tf.addfile(info, io.BytesIO(b))
    raw = (tmp_path / "u.tar").read_bytes()
    (tmp_path / "u.tar").write_bytes(raw[: len(raw) // 2 + 100])
    with pytest.raises(DatasetError, match=r"u\.tar"):
        load_imagefolder(tmp_path / "u.tar")
    other = {k: v for k, v in files.items() if not k.startswith("test/cat")}
    with pytest.raises(DatasetError, match="different class folders"):
        load_imagefolder(write_tar(tmp_path / "d.tar.gz", other))
    odd = dict(files)
    odd["train/cat/img0.jpg"] = image_bytes(np.zeros((16, 16, 3), np.uint8), "JPEG")
    with pytest.raises(DatasetError, match="same size"):
        load_imagefolder(write_tar(tmp_path / "e.tar.gz", odd))
    with pytest.raises(DatasetError, match="not an ImageFolder"):
        load_imagefolder(write_tar(tmp_path / "f.tar.gz", {"readme.txt": b"hi"}))


def test_load_dataset_subsets():
    ds = load_dataset("synthetic", subset=30, test_subset=20)
    assert len(ds.train) == 30 and len(ds.test) == 20 and ds.num_classes == 10
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")


# =========================================================================== synthetic
def test_synthetic_is_deterministic_balanced_and_prefix_stable():
    a, b = load_synthetic(1500, 200, seed=3), load_synthetic(1500, 200, seed=3)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    assert a.train.images.shape == (1500, 3, 32, 32) and a.train.images.dtype == np.uint8
    assert np.bincount(a.train.labels[:1000], minlength=10).tolist() == [100] * 10
    c = load_synthetic(1500, 200, seed=4)
    assert not np.array_equal(a.train.images, c.train.images)
    assert not np.array_equal(a.train.images[:100], a.test.images[:100])     # train and test differ
    # The first k images do not depend on how many are made (--subset k).
    np.testing.assert_array_equal(synthetic_split(300, [3, 0]).images, a.train.images[:300])


def test_synthetic_images_carry_the_class_in_shape_and_colour():
    """Not noise: the images have structure (neighbouring pixels agree). The object's colour leans
    to its class but does not give it away: a nearest-mean classifier on the colour of each image's
    most saturated pixels gets well above chance (10 %) on held-out images, and far below 100 %."""
    ds = synthetic_split(2000, 0)
    x = ds.images.astype(np.float64) / 255
    neighbours = np.corrcoef(x[:, :, :, :-1].ravel(), x[:, :, :, 1:].ravel())[0, 1]
    assert neighbours > 0.8
    sat = (x.max(axis=1) - x.min(axis=1)).reshape(len(x), -1)                   # (N, H*W)
    top = sat >= np.quantile(sat, 0.7, axis=1, keepdims=True)
    colour = (x.reshape(len(x), 3, -1) * top[:, None]).sum(-1) / top.sum(-1)[:, None]   # (N, 3)
    y, fit, held = ds.labels, slice(0, 1000), slice(1000, 2000)
    means = np.stack([colour[fit][y[fit] == k].mean(axis=0) for k in range(10)])
    acc = np.mean(((colour[held][:, None] - means[None]) ** 2).sum(-1).argmin(1) == y[held])
    assert 0.25 < acc < 0.7, f"colour alone classifies {acc:.0%}"


# =========================================================================== augmentation
def test_counter_rng_is_stateless_and_uniform(xp):
    rng = A.CounterRNG(xp, seed=7)
    a = backend.to_numpy(rng.uniform((10000,), 1, 2))
    np.testing.assert_array_equal(a, backend.to_numpy(A.CounterRNG(xp, 7).uniform((10000,), 1, 2)))
    assert not np.array_equal(a, backend.to_numpy(rng.uniform((10000,), 1, 3)))
    assert not np.array_equal(a, backend.to_numpy(A.CounterRNG(xp, 8).uniform((10000,), 1, 2)))
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() < 1 and abs(a.mean() - 0.5) < 0.02
    k = backend.to_numpy(rng.integers((20000,), 5, 4))
    assert k.min() == 0 and k.max() == 4 and np.all(np.abs(np.bincount(k) / 20000 - 0.2) < 0.02)
    z = backend.to_numpy(rng.normal((20000,), 9))
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03
    # NumPy and CuPy draw the same numbers.
    np.testing.assert_array_equal(a, A.CounterRNG(np, 7).uniform((10000,), 1, 2))


def test_counter_rng_hash_wraps_like_python_ints(xp):
    """The uint64 hash is SplitMix64 mod 2⁶⁴, on NumPy and CuPy alike: checked against the
    same arithmetic on Python ints, masked to 64 bits."""
    seed, key, n = 2**64 - 3, (5, 2**63 + 11), 1000
    k = A._mix64_int(seed & A._M64)
    for part in key:
        k = A._mix64_int((k + A._GOLDEN + part) & A._M64)
    expected = np.array([A._mix64_int((i * A._GOLDEN + k) & A._M64) for i in range(1, n + 1)], dtype=np.uint64)
    got = backend.to_numpy(A.CounterRNG(xp, seed)._bits((n,), key))
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, expected)


class _Uint64Only(np.ndarray):
    """A uint64 array whose arithmetic refuses a Python int (or any non-uint64) beside a uint64
    operand. Python ints are promoted by value in NumPy 1 and CuPy 13, by NEP 50 in NumPy 2
    (and CuPy 14): only explicit np.uint64 operands give uint64 arithmetic on every version."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if any(getattr(a, "dtype", None) == np.uint64 for a in inputs):
            bad = [a for a in inputs if getattr(a, "dtype", None) != np.uint64]
            assert not bad, f"{ufunc.__name__} mixes a uint64 array with {bad!r}: wrap it in np.uint64"
        out = getattr(ufunc, method)(*(a.view(np.ndarray) if isinstance(a, np.ndarray) else a for a in inputs),
                                     **kwargs)
        return out.view(_Uint64Only) if isinstance(out, np.ndarray) and out.dtype == np.uint64 else out


class _StrictHashXP:
    """NumPy, whose uint64 aranges are _Uint64Only."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def arange(*args, dtype=None, **kwargs):
        a = np.arange(*args, dtype=dtype, **kwargs)
        return a.view(_Uint64Only) if a.dtype == np.uint64 else a


def test_counter_rng_hash_has_only_uint64_operands():
    rng, ref = A.CounterRNG(_StrictHashXP(), 3), A.CounterRNG(np, 3)
    for draw in (lambda r: r.uniform((50,), 1), lambda r: r.integers((50,), 7, 2),
                 lambda r: r.normal((50,), 4)):
        np.testing.assert_array_equal(np.asarray(draw(rng)), draw(ref))


def test_crop_flip_matches_a_per_image_reference(xp):
    rng_np = np.random.default_rng(0)
    x = rng_np.integers(0, 256, size=(6, 3, 8, 8), dtype=np.uint8)
    rng = A.CounterRNG(xp, 1)
    out = backend.to_numpy(A.random_crop_flip(xp.asarray(x), rng, (0, 0), padding=2))
    oy = backend.to_numpy(rng.integers((6,), 5, 0, 0, A._CROP_Y))
    ox = backend.to_numpy(rng.integers((6,), 5, 0, 0, A._CROP_X))
    flip = backend.to_numpy(rng.uniform((6,), 0, 0, A._FLIP)) < 0.5
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for b in range(6):          # the reference: one image at a time
        ref = padded[b, :, oy[b]:oy[b] + 8, ox[b]:ox[b] + 8]
        np.testing.assert_array_equal(out[b], ref[:, :, ::-1] if flip[b] else ref)
    assert out.dtype == np.uint8 and 0 < flip.sum() < 6


def test_normalize(xp):
    x = xp.asarray(np.arange(2 * 3 * 2 * 2, dtype=np.uint8).reshape(2, 3, 2, 2))
    got = backend.to_numpy(A.normalize(x))
    mean, std = np.array(A.CIFAR10_MEAN)[:, None, None], np.array(A.CIFAR10_STD)[:, None, None]
    np.testing.assert_allclose(got, (backend.to_numpy(x) / 255.0 - mean) / std, rtol=1e-5, atol=1e-6)
    assert got.dtype == np.float32


def test_affine_warp_rotates_and_translates(xp):
    x = xp.asarray(np.random.default_rng(0).random((2, 3, 5, 5)).astype(np.float32))
    mats = np.zeros((2, 2, 3), np.float32)
    mats[0] = [[0, -1, 0], [1, 0, 0]]       # output (x, y) reads source (−y, x): a 90° rotation
    mats[1] = [[1, 0, 2], [0, 1, 0]]        # reads 2 px to the right: content moves left
    out = backend.to_numpy(A._affine_nearest(x, xp.asarray(mats), fill=-1.0))
    xh = backend.to_numpy(x)
    np.testing.assert_array_equal(out[0], np.rot90(xh[0], k=1, axes=(1, 2)))
    np.testing.assert_array_equal(out[1, :, :, :3], xh[1, :, :, 2:])
    assert (out[1, :, :, 3:] == -1).all()


def test_randaugment_ops_and_determinism(xp):
    x = xp.asarray(np.random.default_rng(0).integers(0, 256, (64, 3, 16, 16)).astype(np.float32))
    rng = A.CounterRNG(xp, 0)
    a = A.rand_augment(x, rng, (0, 1), num_ops=2, magnitude=9)
    np.testing.assert_array_equal(backend.to_numpy(a), backend.to_numpy(A.rand_augment(x, rng, (0, 1), 2, 9)))
    ah = backend.to_numpy(a)
    assert ah.dtype == np.float32 and ah.min() >= 0 and ah.max() <= 255 and ah.shape == x.shape
    changed = (ah != backend.to_numpy(x)).any(axis=(1, 2, 3))
    assert 0.5 < changed.mean() < 1.0       # most images changed; Identity (or no-op) picks leave some alone
    assert (backend.to_numpy(A.rand_augment(x, rng, (0, 1), num_ops=0)) == backend.to_numpy(x)).all()
    # The colour ops on their own, against their definitions.
    xh = backend.to_numpy(x)
    np.testing.assert_allclose(backend.to_numpy(A._blend(x, 0.0, 1.5)), np.clip(1.5 * xh, 0, 255), rtol=1e-6)
    gray = backend.to_numpy(A._gray(x))
    np.testing.assert_allclose(gray[:, 0], 0.299 * xh[:, 0] + 0.587 * xh[:, 1] + 0.114 * xh[:, 2], rtol=1e-5)
    smooth = backend.to_numpy(A._smooth(x))
    i, j = 5, 7
    ref = (xh[:, :, i - 1:i + 2, j - 1:j + 2].sum(axis=(2, 3)) + 4 * xh[:, :, i, j]) / 13
    np.testing.assert_allclose(smooth[:, :, i, j], ref, rtol=1e-5)


def test_random_erasing(xp):
    x = xp.zeros((200, 3, 32, 32), dtype=np.float32)
    rng = A.CounterRNG(xp, 0)
    assert (backend.to_numpy(A.random_erasing(x, rng, (0, 0), prob=0.0)) == 0).all()
    out = backend.to_numpy(A.random_erasing(x, rng, (0, 0), prob=1.0))
    erased = out != 0
    assert erased.any(axis=(1, 2, 3)).all()                          # every image has a box
    frac = erased[:, 0].mean(axis=(1, 2))
    assert frac.min() > 0.005 and frac.max() < 0.5
    for b in range(5):                                               # a box: a full rectangle
        rows, cols = np.nonzero(erased[b, 0])
        assert erased[b, 0, rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    half = backend.to_numpy(A.random_erasing(x, rng, (0, 1), prob=0.5)).any(axis=(1, 2, 3)).mean()
    assert 0.35 < half < 0.65


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0)])
def test_mixup_cutmix_soft_targets(xp, mixup, cutmix):
    rng_np = np.random.default_rng(0)
    x = xp.asarray(rng_np.standard_normal((8, 3, 16, 16)).astype(np.float32))
    y = xp.asarray(np.arange(8))                                       # distinct labels: λ is readable
    xm, t = A.mix_batch(x, y, 10, seed=0, key=(0, 3), mixup_alpha=mixup, cutmix_alpha=cutmix)
    xm, t, xh, yh = map(backend.to_numpy, (xm, t, x, y))
    np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-6)
    lam = t[0, yh[0]]
    assert 0 < lam < 1 and t[0, yh[-1]] == pytest.approx(1 - lam)
    if mixup:
        np.testing.assert_allclose(xm, lam * xh + (1 - lam) * xh[::-1], rtol=1e-5, atol=1e-6)
    else:
        from_other = (xm != xh).any(axis=(0, 1))                   # (H, W): the pasted box
        np.testing.assert_allclose(1 - from_other.mean(), lam, atol=1e-6)
        np.testing.assert_array_equal(xm[:, :, from_other], xh[::-1][:, :, from_other])
    again = backend.to_numpy(A.mix_batch(x, y, 10, seed=0, key=(0, 3), mixup_alpha=mixup, cutmix_alpha=cutmix)[0])
    np.testing.assert_array_equal(xm, again)


def test_augment_pipeline_is_deterministic(xp):
    ds = load_synthetic(64, 10)
    cfg = A.AugmentConfig(randaugment=(2, 9), random_erasing=0.25, mixup=0.8, cutmix=1.0)
    aug = A.Augment(xp, cfg, 10, seed=5)
    imgs, labels = xp.asarray(ds.train.images), xp.asarray(ds.train.labels)
    x1, t1 = aug(imgs, labels, 2, 3)
    x2, t2 = A.Augment(xp, cfg, 10, seed=5)(imgs, labels, 2, 3)
    np.testing.assert_array_equal(backend.to_numpy(x1), backend.to_numpy(x2))
    np.testing.assert_array_equal(backend.to_numpy(t1), backend.to_numpy(t2))
    x3, _ = aug(imgs, labels, 2, 4)
    assert not np.array_equal(backend.to_numpy(x1), backend.to_numpy(x3))
    assert x1.dtype == np.float32 and x1.shape == (64, 3, 32, 32) and t1.shape == (64, 10)
    assert backend.device_of(x1) == backend.device_of(imgs)


# =========================================================================== batching
def test_device_loader(device):
    ds = load_synthetic(100, 30)
    train = DeviceLoader(ds.train, device, 32, shuffle=True, seed=1)
    assert len(train) == 3                                            # the last partial batch is dropped
    seen = np.concatenate([backend.to_numpy(y) for _, _, y in train.batches(0)])
    order0 = backend.to_numpy(train.order(0))
    np.testing.assert_array_equal(seen, ds.train.labels[order0[:96]])
    assert len(set(order0.tolist())) == 100
    assert not np.array_equal(order0, backend.to_numpy(train.order(1)))
    np.testing.assert_array_equal(order0, backend.to_numpy(DeviceLoader(ds.train, device, 32, shuffle=True,
                                                                         seed=1).order(0)))
    # Resuming at step 2 gives the same batch as the uninterrupted epoch's third one.
    full = [backend.to_numpy(x) for x, _, _ in train.batches(0)]
    resumed = [backend.to_numpy(x) for x, _, _ in train.batches(0, start_step=2)]
    np.testing.assert_array_equal(full[2], resumed[0])
    test = DeviceLoader(ds.test, device, 8)
    assert len(test) == 4
    labels = np.concatenate([backend.to_numpy(y) for _, _, y in test.batches()])
    np.testing.assert_array_equal(labels, ds.test.labels)            # in order, nothing dropped
    with pytest.raises(ValueError, match="fewer than one batch"):
        DeviceLoader(ds.test, device, 64, shuffle=True)


def test_safe_unpickler_allows_arrays_only():
    data = {"a": np.arange(3), "r": np.random.get_state(), "s": np.float32(2), "t": (1, "x")}
    for proto in (2, 4, 5):
        back = safe_load_pickle(pickle.dumps(data, protocol=proto))
        np.testing.assert_array_equal(back["a"], data["a"])
        assert back["r"][0] == "MT19937" and back["t"] == (1, "x")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        safe_load_pickle(pickle.dumps(warnings.warn))


def test_gzip_crc_is_checked(tmp_path):
    """A flipped byte inside the compressed stream is caught by gzip's CRC, not half-loaded."""
    files, _ = imagefolder_files(n_train=1, n_test=1)
    raw = bytearray(write_tar(tmp_path / "a.tar.gz", files).read_bytes())
    raw[-6] ^= 0xFF                                                    # inside the CRC32/length trailer
    (tmp_path / "b.tar.gz").write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"b\.tar\.gz"):
        load_imagefolder(tmp_path / "b.tar.gz")
    assert gzip.decompress(write_tar(tmp_path / "c.tar.gz", files).read_bytes())
