"""minivit: Vision Transformers from scratch on NumPy and CuPy, to read, run and learn from."""
import os as _os

# Before NumPy loads OpenBLAS (it reads this once): after each matrix product OpenBLAS's
# idle threads spin, by default for about 2^28 clock cycles (a tenth of a second),
# waiting for the next one. That spinning takes the cores that minivit's own threads
# (backend.parallel_pieces: GELU, depthwise convs, layer norm) need between products;
# measured on 2 cores, it made those ops no faster on two threads than on one. 2^4
# cycles puts them to sleep at once; waking them costs microseconds per product.
# Set OPENBLAS_THREAD_TIMEOUT yourself (4..30) to override; minivit.blas.blas_thread_timeout() reads it back.
# If NumPy was imported first, OpenBLAS has read its environment already: minivit.blas makes it read it again.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
if "numpy" in __import__("sys").modules:
    from minivit.blas import apply_thread_timeout as _apply_thread_timeout

    _apply_thread_timeout()

from minivit import backend  # noqa: E402
from minivit.autograd import Function, Tensor, is_grad_enabled, no_grad
from minivit.backend import cupy_available, get_array_module, manual_seed
from minivit.functional.basic import (cat, chunk, ones, rand, randn, split, stack, tensor, where,
                                      zeros)
from minivit import functional, nn, optim  # noqa: E402

__version__ = "0.1.0"
