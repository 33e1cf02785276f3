"""Files that must never be half-written or blindly trusted.

Two small tools the data loaders and the trainer's checkpoints share:

* ``atomic_write(path)``: write to a temporary file in the same folder, flush
  and ``fsync`` it, then ``os.replace`` it over ``path``. A crash, a full disk
  or Ctrl-C in the middle leaves the old file (or none), never a truncated one:
  ``os.replace`` within one file system is atomic.
* ``safe_load_pickle(file)``: unpickle data that holds only NumPy arrays and
  plain Python values. A pickle can name any importable callable, so loading
  one from the internet (or a checkpoint someone sent you) with plain
  ``pickle.load`` can run arbitrary code; this unpickler refuses every global
  that is not on a short list of array-building ones.
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """``with atomic_write(p) as f: f.write(...)`` — ``p`` appears complete or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())     # mkstemp makes it private; give it a normal file's mode
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())         # the bytes are on disk before the rename makes them visible
        os.replace(tmp, path)
    except BaseException:                # KeyboardInterrupt too: never leave the temp file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):   # persist the rename itself (POSIX; not possible on Windows)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Globals a pickle of NumPy arrays, dicts, lists and tuples may name (module -> names).
_ALLOWED = {
    "numpy": {"ndarray", "dtype"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},        # NumPy 1.x pickles (and CIFAR-10's)
    "numpy._core.multiarray": {"_reconstruct", "scalar"},       # NumPy 2.x pickles
    "numpy.core.numeric": {"_frombuffer"},                      # protocol-5 arrays
    "numpy._core.numeric": {"_frombuffer"},
    "numpy.dtypes": None,                                       # any dtype class (UInt8DType, ...)
    "collections": {"OrderedDict"},
    "copyreg": {"_reconstructor"},
    "_codecs": {"encode"},                                      # bytes in protocol-2 pickles
    "builtins": {"set", "frozenset", "slice", "complex", "bytearray", "object", "dict", "list",
                 "tuple", "int", "float", "str", "bytes", "bool"},
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        allowed = _ALLOWED.get(module, set())
        if allowed is None or name in allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only NumPy arrays and "
                                     "plain Python values are allowed in this file")


def safe_load_pickle(file, encoding: str = "ASCII"):
    """Unpickle from a binary file object or a ``bytes`` object, allowing only data globals.

    ``encoding="bytes"`` reads Python 2 pickles (such as CIFAR-10's batches) with their
    str keys as bytes, exactly as ``pickle.load(f, encoding="bytes")``.
    """
    if isinstance(file, (bytes, bytearray, memoryview)):
        file = io.BytesIO(file)
    return _SafeUnpickler(file, encoding=encoding).load()
