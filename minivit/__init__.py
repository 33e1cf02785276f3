"""minivit: Vision Transformers from scratch on NumPy and CuPy, to read, run and learn from."""
from minivit import backend
from minivit.autograd import Function, Tensor, is_grad_enabled, no_grad
from minivit.backend import cupy_available, get_array_module, manual_seed
from minivit.functional.basic import (cat, chunk, ones, rand, randn, split, stack, tensor, where,
                                      zeros)
from minivit import functional, nn, optim  # noqa: E402

__version__ = "0.1.0"
