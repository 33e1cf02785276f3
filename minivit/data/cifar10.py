"""CIFAR-10 from wherever it is: the official archive, an ImageFolder, a cache, or the internet.

Two on-disk layouts are read:

* the **official** "python version" (``cifar-10-python.tar.gz``, or its extracted
  folder ``cifar-10-batches-py/``): six pickled dicts ``data_batch_1..5`` and
  ``test_batch``, each with ``b"data"`` — a (N, 3072) uint8 array, one image per
  row as 1024 red, then 1024 green, then 1024 blue values — and ``b"labels"``.
* an **ImageFolder** (``train/<class>/*.png|jpg`` and ``test/<class>/...``), as a
  folder or a ``.tar(.gz)`` of one; the JPEG copy in ``../shared/data`` is one.
  Its images are decoded once with Pillow and the arrays cached as an ``.npz``
  (keyed by the source's path, size and mtime), so the next load takes a second.

``load_cifar10(data_dir)`` looks, in this order:

1. ``data_dir``, when given: either kind of archive or folder, and nothing
   else (a path without the dataset is an error, unless ``download=True``
   asks to download the official archive into that folder);
2. the cache (``~/.cache/minivit``, or ``$MINIVIT_CACHE``): a downloaded archive;
3. ``../shared/data/cifar10-jpeg.tar.gz`` next to the current folder or the
   package's repository, so development and CI machines work offline;
4. the download from the dataset's home page, checked against its MD5.

Whatever it reads is checked whole before it is returned: a truncated
archive, a bad checksum, an unreadable image or pickle raises a
``DatasetError`` naming the file. No partial dataset is ever returned and
every cache file is written atomically.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import tarfile
import time
import urllib.request
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minivit.data.io import atomic_write, safe_load_pickle

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")          # label order 0..9 (alphabetical)
SHARED_ARCHIVE = Path("..") / "shared" / "data" / "cifar10-jpeg.tar.gz"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class DatasetError(RuntimeError):
    """A dataset could not be found, or what was found is corrupt (the message names the file)."""


@dataclass
class ImageSplit:
    """One split as arrays on the host: ``images`` (N, 3, H, W) uint8, ``labels`` (N,) int64."""
    images: np.ndarray
    labels: np.ndarray
    classes: tuple

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must have shape ({len(self.images)},), got {self.labels.shape}")
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.classes):
            raise ValueError(f"labels must lie in [0, {len(self.classes) - 1}], got "
                             f"[{self.labels.min()}, {self.labels.max()}]")

    def __len__(self):
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, n: int | None) -> "ImageSplit":
        """The first ``n`` examples (all when n is None)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise ValueError(f"subset size must be positive, got {n}")
        return ImageSplit(self.images[:n], self.labels[:n], self.classes)

    def stratified(self, n: int) -> "ImageSplit":
        """``n`` examples, each class in proportion to its share of the split: the first ones of
        each class, in the split's order (a fixed choice: the same ``n`` gives the same images)."""
        if n >= len(self):
            return self
        if n <= 0:
            raise ValueError(f"subset size must be positive, got {n}")
        counts = np.bincount(self.labels, minlength=self.num_classes)          # (C,)
        rank = np.empty(len(self), dtype=np.int64)                            # place within its class
        for c in range(self.num_classes):
            rank[self.labels == c] = np.arange(counts[c])
        # Fraction of its class that comes before an example: take the n smallest (class-balanced
        # round robin when the classes are equal), then restore the split's order.
        keep = np.sort(np.lexsort((self.labels, rank / counts[self.labels]))[:n])
        return ImageSplit(self.images[keep], self.labels[keep], self.classes)


@dataclass
class ImageDataset:
    """A train and a test split, and where they came from (``source``, for logs and configs)."""
    train: ImageSplit
    test: ImageSplit
    name: str
    source: str
    notes: list = field(default_factory=list)
    test_selection: str = "the whole test split"     # or how a part of it was chosen (for logs and configs)

    @property
    def classes(self) -> tuple:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


# =========================================================================== paths
def default_cache_dir() -> Path:
    """``$MINIVIT_CACHE``, else ``$XDG_CACHE_HOME/minivit``, else ``~/.cache/minivit``."""
    if os.environ.get("MINIVIT_CACHE"):
        return Path(os.environ["MINIVIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minivit"


def shared_archive_candidates() -> list[Path]:
    """``../shared/data/cifar10-jpeg.tar.gz`` relative to the CWD and to the package's repository."""
    repo_root = Path(__file__).resolve().parents[2]       # minivit/data/cifar10.py -> the repository
    out = []
    for base in (Path.cwd(), repo_root):
        p = (base / SHARED_ARCHIVE).resolve()
        if p not in out:
            out.append(p)
    return out


def _md5(path: Path, algorithm: str = "md5") -> str:
    """The file's hex digest (MD5 for CIFAR-10's published checksum; any hashlib name)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# =========================================================================== archives
def _read_tar(path: Path) -> tarfile.TarFile:
    """Open a .tar or .tar.gz after reading it whole.

    A gzip file is decompressed in one go first, which checks its CRC and length
    trailer: a truncated or bit-flipped download fails here, not half-way through
    the images.
    """
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return tarfile.open(fileobj=io.BytesIO(raw), mode="r:")
    except (OSError, EOFError, zlib.error, tarfile.TarError) as e:
        raise DatasetError(f"{path} is not a readable .tar/.tar.gz archive: it looks truncated or corrupt "
                           f"({type(e).__name__}: {e}). Delete it and download/copy it again.") from e


def _tar_members(tf: tarfile.TarFile, path: Path) -> list:
    try:
        return tf.getmembers()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(f"{path}: the tar archive is truncated or corrupt ({type(e).__name__}: {e}). "
                           "Delete it and download/copy it again.") from e


def _tar_read(tf: tarfile.TarFile, member, path: Path) -> bytes:
    try:
        return tf.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(f"{path}: cannot read {member.name} from the archive: it is truncated or "
                           f"corrupt ({type(e).__name__}: {e})") from e


# =========================================================================== the official format
def _parse_batch(raw: bytes, where: str):
    """One pickled batch → (images (N, 3, 32, 32) uint8, labels (N,) int64)."""
    try:
        d = safe_load_pickle(raw, encoding="bytes")
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... all mean "not a valid batch"
        raise DatasetError(f"{where} is not a valid CIFAR-10 batch: the pickle is truncated or corrupt "
                           f"({type(e).__name__}: {e})") from e
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise DatasetError(f"{where} is not a CIFAR-10 batch: expected a dict with b'data' and b'labels', got {keys}")
    data, labels = np.asarray(d[b"data"]), np.asarray(d[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{where}: b'data' must be a uint8 array of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DatasetError(f"{where}: b'labels' must hold {len(data)} integer labels, got {labels.dtype} {labels.shape}")
    if len(labels) and not (0 <= labels.min() and labels.max() < 10):
        raise DatasetError(f"{where}: labels must be in 0..9, got [{labels.min()}, {labels.max()}]")
    # Each row is the red plane, then green, then blue, each 32×32 row-major: exactly NCHW.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _official_from_files(read, where: str) -> ImageDataset:
    """Parse the six batches given ``read(name) -> bytes`` (from a folder or an archive)."""
    parts = [_parse_batch(read(name), f"{where}/{name}") for name in _TRAIN_BATCHES]
    test = _parse_batch(read(_TEST_BATCH), f"{where}/{_TEST_BATCH}")
    train = ImageSplit(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                       CIFAR10_CLASSES)
    return ImageDataset(train, ImageSplit(test[0], test[1], CIFAR10_CLASSES), "cifar10", where)


def load_official_folder(folder) -> ImageDataset:
    """The extracted official folder ``cifar-10-batches-py/``."""
    folder = Path(folder)

    def read(name):
        p = folder / name
        if not p.is_file():
            raise DatasetError(f"{folder} is missing {name}: an official CIFAR-10 folder holds "
                               f"{', '.join(_TRAIN_BATCHES)} and {_TEST_BATCH}")
        return p.read_bytes()

    return _official_from_files(read, str(folder))


def _official_from_tar(tf: tarfile.TarFile, members, path: Path) -> ImageDataset:
    by_name = {Path(m.name).name: m for m in members if m.isfile() and m.name.startswith(CIFAR10_FOLDER + "/")}

    def read(name):
        if name not in by_name:
            raise DatasetError(f"{path} is missing {CIFAR10_FOLDER}/{name}: the archive is incomplete")
        return _tar_read(tf, by_name[name], path)

    ds = _official_from_files(read, str(path))
    ds.source = str(path)
    return ds


def load_official_archive(path, md5: str | None = None) -> ImageDataset:
    """The official ``cifar-10-python.tar.gz`` (checked against ``md5`` when given)."""
    path = Path(path)
    if md5 is not None:
        got = _md5(path)
        if got != md5:
            raise DatasetError(f"{path}: MD5 checksum mismatch (expected {md5}, got {got}); the file is "
                               "corrupt or incomplete. Delete it and download it again.")
    tf = _read_tar(path)
    return _official_from_tar(tf, _tar_members(tf, path), path)


# =========================================================================== ImageFolder
def _imagefolder_entries(names):
    """Pick ``[prefix/]{train,test}/<class>/<file>.<image ext>`` out of relative paths.

    Returns {split: {class: [name, ...]}}; other files (READMEs, .DS_Store) are ignored.
    """
    out = {"train": {}, "test": {}}
    for name in names:
        parts = Path(name).parts
        if not name.lower().endswith(_IMAGE_SUFFIXES) or len(parts) < 3:
            continue
        for i in (0, 1):  # the split folder at the top, or under one wrapping folder
            if len(parts) == i + 3 and parts[i] in out:
                out[parts[i]].setdefault(parts[i + 1], []).append(name)
                break
    return out


def _natural_key(name: str):
    """'img10.png' after 'img9.png': digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", Path(name).name)]


def _decode(data: bytes, where: str) -> np.ndarray:
    """Image bytes → (3, H, W) uint8, RGB."""
    from PIL import Image, UnidentifiedImageError  # Pillow is needed for ImageFolders only

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()                            # the full decode: a truncated file fails here
            arr = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{where}: cannot decode the image ({type(e).__name__}: {e}); "
                           "the file is corrupt or not an image") from e
    return arr.transpose(2, 0, 1)


def _assemble(entries, read, where: str) -> ImageDataset:
    """Decode every image of an ImageFolder listing into two ImageSplits."""
    train_classes, test_classes = sorted(entries["train"]), sorted(entries["test"])
    if not train_classes or not test_classes:
        raise DatasetError(f"{where} is not an ImageFolder dataset: expected images under train/<class>/ and "
                           f"test/<class>/, found {len(train_classes)} train and {len(test_classes)} test classes")
    if train_classes != test_classes:
        raise DatasetError(f"{where}: train and test have different class folders: "
                           f"{train_classes} vs {test_classes}")
    classes = tuple(train_classes)                      # sorted names = label order (CIFAR-10's is alphabetical)
    splits = {}
    for split, by_class in entries.items():
        # Interleave the classes (first image of each class, then the second, ...) so that
        # "the first N images" (--subset) is class-balanced, as in the shuffled official batches.
        order = []
        for c, name in enumerate(classes):
            for rank, f in enumerate(sorted(by_class[name], key=_natural_key)):
                order.append((rank, c, f))
        order.sort(key=lambda t: (t[0], t[1]))
        first = _decode(read(order[0][2]), f"{where}/{order[0][2]}")
        images = np.empty((len(order),) + first.shape, dtype=np.uint8)
        labels = np.empty(len(order), dtype=np.int64)
        for i, (_, c, f) in enumerate(order):
            img = first if i == 0 else _decode(read(f), f"{where}/{f}")
            if img.shape != first.shape:
                raise DatasetError(f"{where}/{f}: image is {img.shape[2]}×{img.shape[1]}, but the others are "
                                   f"{first.shape[2]}×{first.shape[1]}; all images must have the same size")
            images[i], labels[i] = img, c
        splits[split] = ImageSplit(images, labels, classes)
    notes = []
    if classes != CIFAR10_CLASSES:
        notes.append(f"class folders {list(classes)} are not CIFAR-10's; labels follow their sorted order")
    return ImageDataset(splits["train"], splits["test"], "cifar10", where, notes)


def load_imagefolder(path) -> ImageDataset:
    """An ImageFolder folder or ``.tar(.gz)`` (no cache; see ``load_imagefolder_cached``)."""
    path = Path(path)
    if path.is_dir():
        names = [str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()]
        entries = _imagefolder_entries(names)

        def read(name):
            try:
                return (path / name).read_bytes()
            except OSError as e:
                raise DatasetError(f"cannot read {path / name}: {e}") from e

        return _assemble(entries, read, str(path))
    tf = _read_tar(path)
    members = {m.name: m for m in _tar_members(tf, path) if m.isfile()}
    entries = _imagefolder_entries(members)
    return _assemble(entries, lambda name: _tar_read(tf, members[name], path), str(path))


def _source_key(path: Path) -> str:
    """A short hash of where the images come from: path + size + mtime (of every file, for a folder)."""
    path = path.resolve()
    if path.is_dir():
        stats = [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                 for p in sorted(path.rglob("*")) if p.is_file()]
        desc = f"{path}|{len(stats)}|{sum(s[1] for s in stats)}|{max((s[2] for s in stats), default=0)}"
    else:
        st = path.stat()
        desc = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha1(desc.encode()).hexdigest()[:16]


def _cache_file(path: Path, cache_dir: Path) -> Path:
    return Path(cache_dir) / f"imagefolder-{_source_key(path)}.npz"


def _save_npz(ds: ImageDataset, cache_file: Path):
    with atomic_write(cache_file) as f:
        np.savez(f, train_images=ds.train.images, train_labels=ds.train.labels,
                 test_images=ds.test.images, test_labels=ds.test.labels,
                 classes=np.array(ds.classes), source=np.array(ds.source))


def _load_npz(cache_file: Path) -> ImageDataset:
    with np.load(cache_file, allow_pickle=False) as z:
        classes = tuple(str(c) for c in z["classes"])
        train = ImageSplit(z["train_images"], z["train_labels"], classes)
        test = ImageSplit(z["test_images"], z["test_labels"], classes)
        source = str(z["source"])
    ds = ImageDataset(train, test, "cifar10", source)
    if classes != CIFAR10_CLASSES:
        ds.notes.append(f"class folders {list(classes)} are not CIFAR-10's; labels follow their sorted order")
    return ds


def load_imagefolder_cached(path, cache_dir=None, verbose: bool = False) -> ImageDataset:
    """``load_imagefolder`` with the decoded arrays cached as ``imagefolder-<key>.npz`` in ``cache_dir``.

    The key changes when the source's path, size or mtime does, so an edited archive is
    decoded again. A cache that cannot be read is reported, ignored and rewritten.
    """
    path = Path(path)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = _cache_file(path, cache_dir)
    if cache_file.is_file():
        try:
            ds = _load_npz(cache_file)
            ds.source = f"{path} (decoded cache {cache_file})"
            return ds
        except Exception as e:  # a damaged cache is rebuilt, never trusted
            warnings.warn(f"the decoded-image cache {cache_file} is unreadable ({type(e).__name__}: {e}); "
                          "decoding the images again", stacklevel=2)
    t0 = time.perf_counter()
    if verbose:
        print(f"decoding the images of {path} once (they are cached in {cache_dir}) ...", flush=True)
    ds = load_imagefolder(path)
    if verbose:
        print(f"  {len(ds.train)} train + {len(ds.test)} test images in {time.perf_counter() - t0:.1f}s", flush=True)
    try:
        _save_npz(ds, cache_file)
    except OSError as e:
        warnings.warn(f"could not write the decoded-image cache {cache_file} ({e}); the next load will "
                      "decode the images again", stacklevel=2)
    return ds


# =========================================================================== download
def fetch(url: str, fileobj, chunk_size: int = 1 << 20, progress: bool = True):
    """Copy ``url`` into ``fileobj`` (tests replace this, or serve a ``file://`` URL)."""
    with urllib.request.urlopen(url, timeout=60) as r:
        total = int(r.headers.get("Content-Length") or 0) or None
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total, unit="B", unit_scale=True, desc="downloading CIFAR-10", leave=False)
        try:
            for chunk in iter(lambda: r.read(chunk_size), b""):
                fileobj.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()


def download(url: str, dest, md5: str, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` and check its MD5; ``dest`` appears only if the check passes."""
    dest = Path(dest)
    h = hashlib.md5()

    class _Hashing:  # hash while writing: no second pass over 170 MB
        def __init__(self, f):
            self.f = f

        def write(self, b):
            h.update(b)
            return self.f.write(b)

    with atomic_write(dest) as f:
        fetch(url, _Hashing(f), progress=progress)
        got = h.hexdigest()
        if got != md5:
            raise DatasetError(f"MD5 checksum mismatch for {url}: expected {md5}, got {got}. The download is "
                               f"corrupt or incomplete and was not kept (nothing written to {dest}); try again, "
                               "or download it by hand and pass --data-dir")
    return dest


# =========================================================================== resolution
def _kind(path: Path) -> str | None:
    """What a path holds: 'archive' (a file), 'official-folder', 'imagefolder' or None."""
    if path.is_file():
        return "archive"            # official or ImageFolder: told apart by the members
    if path.is_dir():
        if (path / _TEST_BATCH).is_file() and (path / _TRAIN_BATCHES[0]).is_file():
            return "official-folder"
        if (path / "train").is_dir() and (path / "test").is_dir():
            return "imagefolder"
    return None


def _load_archive(path: Path, cache_dir: Path, verbose: bool) -> ImageDataset:
    """An archive given by the user: the official one (parsed directly) or an ImageFolder one."""
    if path.name == CIFAR10_ARCHIVE:     # the official file: its checksum is known
        return load_official_archive(path, md5=CIFAR10_MD5)
    if _cache_file(path, cache_dir).is_file():   # decoded before: an ImageFolder archive
        return load_imagefolder_cached(path, cache_dir, verbose)
    # Peek at the member names: official archives hold cifar-10-batches-py/...
    tf = _read_tar(path)
    members = _tar_members(tf, path)
    if any(m.name.startswith(CIFAR10_FOLDER + "/") for m in members):
        return _official_from_tar(tf, members, path)
    del tf, members
    return load_imagefolder_cached(path, cache_dir, verbose)


def _load_path(path: Path, cache_dir: Path, verbose: bool) -> ImageDataset | None:
    """Load from a path if it holds a dataset we recognise, else None."""
    kind = _kind(path)
    if kind == "archive":
        return _load_archive(path, cache_dir, verbose)
    if kind == "official-folder":
        return load_official_folder(path)
    if kind == "imagefolder":
        return load_imagefolder_cached(path, cache_dir, verbose)
    if path.is_dir():  # a folder that holds one of the known names
        if (path / CIFAR10_FOLDER).is_dir():
            return load_official_folder(path / CIFAR10_FOLDER)
        if (path / CIFAR10_ARCHIVE).is_file():
            return load_official_archive(path / CIFAR10_ARCHIVE, md5=CIFAR10_MD5)
        if (path / SHARED_ARCHIVE.name).is_file():
            return load_imagefolder_cached(path / SHARED_ARCHIVE.name, cache_dir, verbose)
    return None


def load_cifar10(data_dir=None, *, download: bool = False, download_ok: bool = True,
                 verbose: bool = False) -> ImageDataset:
    """CIFAR-10, from the first place that has it (see the module docstring for the order).

    A ``data_dir`` that is given must hold the dataset: a mistyped path is an error, never a
    folder created and filled while another copy is used. With ``download=True`` (the
    trainer's ``--download``) a ``data_dir`` without the dataset is created if needed and
    the official archive is downloaded into it. Decoded ImageFolder arrays are cached in
    the default cache folder.
    """
    looked = []
    cache_dir = default_cache_dir()
    if data_dir is not None:
        p = Path(data_dir).expanduser()
        if p.exists():
            ds = _load_path(p, cache_dir, verbose)
            if ds is not None:                  # every file is read as an archive (or raises)
                return ds
        if not download or p.suffix.lower() in (".gz", ".tar", ".tgz") or p.is_file():
            what = "does not exist" if not p.exists() else \
                "holds no cifar-10-python.tar.gz, cifar-10-batches-py/ or train/ + test/"
            raise DatasetError(
                f"--data-dir {p} {what}. Point it at cifar-10-python.tar.gz, the extracted "
                "cifar-10-batches-py/ folder, or an ImageFolder folder/.tar.gz; add --download to download "
                f"the official archive into the folder {p}; or leave --data-dir out to use the cache "
                f"({cache_dir}) or ../shared/data/cifar10-jpeg.tar.gz")
        return _download_to(p, verbose, looked)
    ds = _load_path(cache_dir, cache_dir, verbose) if cache_dir.is_dir() else None
    if ds is not None:
        return ds
    looked.append(f"the cache {cache_dir}")
    for cand in shared_archive_candidates():
        if cand.is_file():
            return load_imagefolder_cached(cand, cache_dir, verbose)
        looked.append(str(cand))
    if download_ok:
        return _download_to(cache_dir, verbose, looked)
    _not_found(looked)


def _download_to(folder: Path, verbose: bool, looked: list) -> ImageDataset:
    """Download the official archive into ``folder`` (MD5-checked) and load it."""
    dest = folder / CIFAR10_ARCHIVE
    try:
        if verbose:
            print(f"downloading {CIFAR10_URL} to {dest} ...", flush=True)
        download(CIFAR10_URL, dest, CIFAR10_MD5, progress=verbose)
    except OSError as e:   # URLError, timeouts, no network, a read-only cache folder
        looked.append(f"the download from {CIFAR10_URL} into {folder} ({type(e).__name__}: {e})")
        _not_found(looked)
    return load_official_archive(dest)


def _not_found(looked: list):
    raise DatasetError(
        "CIFAR-10 was not found. Looked in:\n  - " + "\n  - ".join(looked) + "\n"
        "Fix: pass --data-dir PATH with PATH the official cifar-10-python.tar.gz (or its extracted "
        "cifar-10-batches-py/ folder), or an ImageFolder folder or .tar.gz laid out as train/<class>/*.png "
        "and test/<class>/*.png; or train on generated images with --dataset synthetic.")
