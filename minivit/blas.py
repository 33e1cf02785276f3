"""NumPy's OpenBLAS, reached through ctypes: its thread count and how long its idle threads spin.

After each matrix product OpenBLAS's idle threads spin, by default for about 2^28
clock cycles (a tenth of a second), waiting for the next one, and take the cores
that minivit's own threads (``backend.parallel_pieces``) need between products.
``OPENBLAS_THREAD_TIMEOUT=4`` puts them to sleep at once, but OpenBLAS reads it
only when its thread pool starts: ``minivit/__init__.py`` sets it before NumPy
loads, and when NumPy was imported first, ``apply_thread_timeout`` makes
OpenBLAS read it again and restarts the pool (what OpenBLAS itself does in a
child after ``fork``), so the import order does not matter.
"""
from __future__ import annotations

import ctypes
import functools
import os
import warnings
from contextlib import contextmanager

DEFAULT_THREAD_TIMEOUT = "4"     # log2 of the spin, in clock cycles (OpenBLAS clamps it to 4..30)


def openblas():
    """NumPy's own OpenBLAS (found among the loaded libraries): (get_num_threads, set_num_threads,
    get_config or None, the ctypes library), or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "numpy" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                cfg = getattr(lib, f"{prefix}_get_config{suffix}", None)
                if get is not None and put is not None:
                    if cfg is not None:
                        cfg.restype = ctypes.c_char_p
                    return get, put, cfg, lib
    return None


def blas_threads(n: int | None = None) -> int | None:
    """NumPy's BLAS thread count; set it first when ``n`` is given (None: unknown, e.g. not OpenBLAS).

    OpenBLAS reads OPENBLAS_NUM_THREADS once, when NumPy loads it; its
    ``openblas_set_num_threads`` changes the count at run time."""
    lib = openblas()
    if lib is None:
        return None
    get, put = lib[:2]
    if n is not None:
        put(int(n))
    return int(get())


def blas_thread_timeout() -> int | None:
    """log2 of how long OpenBLAS's idle threads spin after a product before they sleep
    (OPENBLAS_THREAD_TIMEOUT as OpenBLAS last read it; 0: unset, OpenBLAS's built-in
    default, about 2^28), or None when NumPy's BLAS is not OpenBLAS."""
    lib = openblas()
    if lib is None:
        return None
    get = getattr(lib[3], "openblas_thread_timeout", None)
    if get is None:
        return None
    return int(get())


def blas_config() -> str | None:
    lib = openblas()
    if lib is None or lib[2] is None:
        return None
    return lib[2]().decode(errors="replace")


def apply_thread_timeout() -> int | None:
    """Make an already loaded OpenBLAS use ``$OPENBLAS_THREAD_TIMEOUT``; returns the timeout it
    now uses (None: not OpenBLAS).

    ``openblas_read_env`` re-reads the variables and ``blas_thread_shutdown_`` joins the
    idle threads; the next product starts new ones, which read the new timeout. Call it
    while no other thread is inside a BLAS call (minivit does, at import). Where an
    OpenBLAS lacks those functions, a warning says how to fix it by hand.
    """
    want = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "")
    now = blas_thread_timeout()
    if now is None or not want.strip().isdigit() or now == int(want):
        return now
    lib = openblas()[3]
    read_env = getattr(lib, "openblas_read_env", None)
    shutdown = getattr(lib, "blas_thread_shutdown_", None)
    if read_env is not None and shutdown is not None:
        read_env()
        shutdown()
        now = blas_thread_timeout()
    if now != int(want):
        warnings.warn(f"NumPy was imported before minivit and its OpenBLAS did not take "
                      f"OPENBLAS_THREAD_TIMEOUT={want}: its idle threads spin after each product and slow "
                      "minivit's threaded ops. Import minivit before numpy, or set OPENBLAS_THREAD_TIMEOUT=4 "
                      "in the environment.", RuntimeWarning, stacklevel=2)
    return now


@functools.lru_cache(maxsize=None)
def _openblas_once():
    return openblas()


@contextmanager
def single_threaded(active: bool = True):
    """NumPy's BLAS on one thread for the body (when ``active``), then back to its count.

    For matrix products inside ``backend.parallel_pieces``: each of minivit's threads already
    keeps a core busy, and OpenBLAS's own threads on top of them would put two threads on each
    of the 2 cores (measured: one 2-image MSA at 32² tokens, 250 ms instead of about 20)."""
    lib = _openblas_once() if active else None
    if lib is None:
        yield
        return
    get, put = lib[:2]
    n = get()
    if n <= 1:
        yield
        return
    put(1)
    try:
        yield
    finally:
        put(n)
