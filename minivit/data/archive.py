"""Make an ImageFolder archive small enough to travel: a class-balanced subset, or byte parts.

The GPU machine receives the checkout and the paths carried with a command, 64 MiB in all. The
package's trained weights take 38 MB of the checkout, so the 19.6 MB CIFAR-10 JPEG copy does not
fit beside it in one call. Two ways around that, neither of which changes a byte of an image:

* ``subset``: the first N images of every class of each split (in the archive's natural order),
  copied byte for byte into a new ``.tar.gz`` with the same layout. A run on it says so: its
  config records the archive and ``n_train``.
* ``split`` / ``join``: the archive cut into parts (each small enough to carry in its own call,
  while the machine stays warm) and joined back there, checked against the whole file's SHA-256.

    python -m minivit.data.archive subset ../shared/data/cifar10-jpeg.tar.gz data/cifar10-jpeg-15k.tar.gz --train-per-class 1500
    python -m minivit.data.archive split ../shared/data/cifar10-jpeg.tar.gz data/parts --parts 3
    python -m minivit.data.archive join data/parts data/cifar10-jpeg.tar.gz
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

from minivit.data.cifar10 import (DatasetError, _imagefolder_entries, _md5, _natural_key, _read_tar,
                                  _tar_members, _tar_read)
from minivit.data.io import atomic_write


def subset_archive(src, dst, train_per_class: int, test_per_class: int | None = None) -> dict:
    """Write the first ``train_per_class`` training images of every class (and ``test_per_class``
    test images; all of them when None) of the ImageFolder archive ``src`` to ``dst`` (.tar.gz).
    Returns {split: {class: count}}."""
    src, dst = Path(src), Path(dst)
    for name, n in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if n is not None and n < 1:
            raise ValueError(f"{name} must be at least 1, got {n}")
    tf = _read_tar(src)
    members = {m.name: m for m in _tar_members(tf, src) if m.isfile()}
    entries = _imagefolder_entries(members)
    if not entries["train"]:
        raise DatasetError(f"{src}: no train/<class>/<image> files: not an ImageFolder archive")
    counts = {}
    with atomic_write(dst) as f, tarfile.open(fileobj=f, mode="w:gz") as out:
        for split, keep in (("train", train_per_class), ("test", test_per_class)):
            counts[split] = {}
            for cls in sorted(entries[split]):
                names = sorted(entries[split][cls], key=_natural_key)[:keep]
                for name in names:
                    info = tarfile.TarInfo(name)
                    data = _tar_read(tf, members[name], src)
                    info.size, info.mtime, info.mode = len(data), members[name].mtime, 0o644
                    out.addfile(info, io.BytesIO(data))
                counts[split][cls] = len(names)
    return counts


def _sha256(path: Path) -> str:
    return _md5(path, "sha256")


def split_file(src, out_dir, parts: int) -> list[Path]:
    """Cut ``src`` into ``parts`` files ``out_dir/<name>.part<k>`` plus ``manifest.json`` (the
    whole file's name, size and SHA-256). Returns the part paths."""
    src, out_dir = Path(src), Path(out_dir)
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    data = src.read_bytes()
    size = -(-len(data) // parts)                          # ceil: the last part is the short one
    paths = []
    for k in range(parts):
        p = out_dir / f"{src.name}.part{k}"
        with atomic_write(p) as f:
            f.write(data[k * size:(k + 1) * size])
        paths.append(p)
    manifest = {"name": src.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "parts": [p.name for p in paths]}
    with atomic_write(out_dir / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)
    return paths


def join_parts(parts_dir, dst) -> Path:
    """Join the parts listed in ``parts_dir/manifest.json`` (each may sit in ``parts_dir`` or in a
    folder beside it, as parts carried in separate calls do) into ``dst``, and check the SHA-256."""
    parts_dir, dst = Path(parts_dir), Path(dst)
    manifest_file = parts_dir / "manifest.json"
    if not manifest_file.is_file():
        raise DatasetError(f"{manifest_file} not found: make the parts with `python -m minivit.data.archive split`")
    manifest = json.loads(manifest_file.read_text())
    found = []
    for name in manifest["parts"]:
        where = [p for p in [parts_dir / name, *parts_dir.parent.glob(f"*/{name}")] if p.is_file()]
        if not where:
            raise DatasetError(f"part {name} of {manifest['name']} is missing (looked in {parts_dir} and the "
                               f"folders beside it): carry every part before joining")
        found.append(where[0])
    with atomic_write(dst) as f:
        for p in found:
            f.write(p.read_bytes())
    digest = _sha256(dst)
    if digest != manifest["sha256"]:
        dst.unlink()
        raise DatasetError(f"the joined {dst} has SHA-256 {digest[:12]}…, the manifest says "
                           f"{manifest['sha256'][:12]}…: a part is stale or damaged; split the archive again")
    return dst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minivit.data.archive",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subset", help="a class-balanced subset archive, images copied byte for byte")
    s.add_argument("src", type=Path)
    s.add_argument("dst", type=Path)
    s.add_argument("--train-per-class", type=int, required=True)
    s.add_argument("--test-per-class", type=int, default=None, help="default: every test image")
    p = sub.add_parser("split", help="cut a file into parts, with a manifest")
    p.add_argument("src", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--parts", type=int, default=2)
    j = sub.add_parser("join", help="join the parts of a manifest and check the SHA-256")
    j.add_argument("parts_dir", type=Path)
    j.add_argument("dst", type=Path)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "subset":
            if not args.src.is_file():
                raise DatasetError(f"{args.src} not found: give the ImageFolder archive, "
                                   "e.g. ../shared/data/cifar10-jpeg.tar.gz")
            counts = subset_archive(args.src, args.dst, args.train_per_class, args.test_per_class)
            n = {k: sum(v.values()) for k, v in counts.items()}
            print(f"{args.dst}: {n['train']:,} train + {n['test']:,} test images "
                  f"({len(counts['train'])} classes), {args.dst.stat().st_size / 2**20:.1f} MiB")
        elif args.cmd == "split":
            if not args.src.is_file():
                raise DatasetError(f"{args.src} not found")
            for path in split_file(args.src, args.out_dir, args.parts):
                print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")
        else:
            print(f"{join_parts(args.parts_dir, args.dst)}: joined, SHA-256 checked")
    except (DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
