"""The standard layers: Linear, Conv2d, LayerNorm, BatchNorm2d, Dropout, DropPath, activations.

Each layer owns its Parameters and buffers, with PyTorch's (and timm's) names and
shapes so their checkpoints load, and calls the matching op of
:mod:`minivit.functional` in ``forward``; the maths and the backward live there.

Default initialisation is PyTorch's:

- Linear and Conv2d: weight ~ U(−1/√fan_in, 1/√fan_in), i.e.
  ``kaiming_uniform_(w, a=√5)``, and bias ~ U(−1/√fan_in, 1/√fan_in), with
  ``fan_in = in_features`` for Linear and ``in_channels/groups · kh · kw`` for Conv2d.
- LayerNorm and BatchNorm2d: weight = 1, bias = 0; running_mean = 0, running_var = 1.

Vision transformers override this (timm: ``trunc_normal_(w, std=.02)``, bias 0);
that is the models' business, done with :mod:`minivit.nn.init`.

Layers are built on the CPU in float32; pass ``device=`` / ``dtype=`` (as in
PyTorch), or call ``module.to(...)`` afterwards. Weights are drawn on the host
either way, so a seed gives the same model on CPU and GPU.
"""
from __future__ import annotations

import math

import numpy as np

from minivit.functional.activation import drop_path, dropout, gelu, leaky_relu, relu, softmax
from minivit.functional.conv import adaptive_avg_pool2d, conv2d
from minivit.functional.linear import linear
from minivit.functional.norm import batch_norm, layer_norm
from minivit.nn import init
from minivit.nn.module import Module, Parameter


def _empty(*shape):
    return Parameter(np.empty(shape, dtype=np.float32))


def _pair(v, name):
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(i, int) for i in v):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return v


# =========================================================================== Linear / Conv2d
class Linear(Module):
    """y = x Wᵀ + b.  weight (out_features, in_features), bias (out_features,)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _empty(out_features, in_features)
        if bias:
            self.bias = _empty(out_features)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        self.to(device, dtype)

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # U(±1/√fan_in), see the module doc
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D convolution (cross-correlation, as every framework): NCHW in, NCHW out.

    weight (out_channels, in_channels/groups, kh, kw), bias (out_channels,).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, device=None, dtype=None):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must both be divisible by groups ({groups})")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = padding if isinstance(padding, str) else _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.weight = _empty(out_channels, in_channels // groups, *self.kernel_size)
        if bias:
            self.bias = _empty(out_channels)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        self.to(device, dtype)

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # U(±1/√fan_in), see the module doc
        if self.bias is not None:
            fan_in, _ = init.calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


# =========================================================================== normalisation
class LayerNorm(Module):
    """Normalise over the last ``len(normalized_shape)`` dims, then scale and shift:
    y = (x − mean) / √(var + eps) · weight + bias (biased variance, as PyTorch)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dtype=np.float32))
            if bias:
                self.bias = Parameter(np.zeros(self.normalized_shape, dtype=np.float32))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.to(device, dtype)

    def forward(self, x):
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        s = f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        return s + (f", bias={self.bias is not None}" if self.elementwise_affine else "")  # torch ≥ 2.13


class _NormBase(Module):
    """What BatchNorm and InstanceNorm share (PyTorch's ``_NormBase``): the affine weight and bias
    (ones and zeros), and the running statistics with PyTorch's buffer names."""

    _optional_state = ("num_batches_tracked",)  # old torchvision checkpoints lack it; torch allows that

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None, *,
                 bias: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=np.float32))
            if bias:
                self.bias = Parameter(np.zeros(num_features, dtype=np.float32))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype=np.float32))
            self.register_buffer("running_var", np.ones(num_features, dtype=np.float32))
            self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.to(device, dtype)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0


class BatchNorm2d(_NormBase):
    """Batch normalisation over (N, H, W) per channel of an NCHW input (Ioffe & Szegedy, 2015).

    Training: normalise with the batch's statistics and update the running ones,
    ``running = (1 − momentum)·running + momentum·batch`` (the unbiased batch
    variance goes into running_var, as PyTorch). Evaluation: use the running
    ones. ``momentum=None`` gives the cumulative average ``1/num_batches_tracked``.
    Buffers and their names are PyTorch's: running_mean, running_var,
    num_batches_tracked (int64).
    """

    _input_ndim, _layout = 4, "NCHW"

    def forward(self, x):
        if x.ndim != self._input_ndim:
            raise ValueError(f"{type(self).__name__} expects a {self._input_ndim}-D {self._layout} input, "
                             f"got shape {x.shape}")
        return batch_norm(x, *self.batch_norm_args())

    def batch_norm_args(self) -> tuple:
        """The arguments of ``F.batch_norm`` after the input, for one forward: (running_mean,
        running_var, weight, bias, training, momentum, eps). Counts the batch when training (it is
        called once per forward; a layer that fuses this norm into a larger op calls it too)."""
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data += 1
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked.item())
        # Batch statistics when training, or when there are no running ones to use;
        # batch_norm updates the running stats it is given only when it uses batch stats.
        use_batch_stats = self.training or not self.track_running_stats
        return (self.running_mean, self.running_var, self.weight, self.bias, use_batch_stats, momentum, self.eps)

    def extra_repr(self):
        bias = f", bias={self.bias is not None}" if self.affine else ""  # torch ≥ 2.13 shows it
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}{bias}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm3d(BatchNorm2d):
    """Batch normalisation over (N, D, H, W) per channel of an NCDHW volume; as BatchNorm2d."""

    _input_ndim, _layout = 5, "NCDHW"


# =========================================================================== regularisers
class Dropout(Module):
    """Zero each element with probability p while training (survivors scaled by 1/(1−p))."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
        self.p = p

    def forward(self, x):
        return dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}, inplace=False"


class DropPath(Module):
    """Stochastic depth (timm's name and semantics): while training, drop a sample's
    whole residual branch with probability drop_prob; survivors scaled by 1/(1−drop_prob)."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob has to be between 0 and 1, got {drop_prob}")
        self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

    def extra_repr(self):
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


# =========================================================================== activations and shapes
class GELU(Module):
    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return gelu(x, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class ReLU(Module):
    """``inplace`` is accepted for PyTorch/timm compatibility and ignored: ops here never
    overwrite their input (backward may need it)."""

    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x):
        return relu(x)


class LeakyReLU(Module):
    """x for x > 0, negative_slope·x elsewhere; ``inplace`` accepted and ignored, as ReLU's."""

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Softmax(Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return softmax(x, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class Flatten(Module):
    """Flatten dims start_dim..end_dim into one: (B, C, H, W) → (B, C·H·W) by default."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


# =========================================================================== pooling
class AdaptiveAvgPool2d(Module):
    """``torch.nn.AdaptiveAvgPool2d``: (B, C, H, W) → (B, C, *output_size), no parameters."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"

