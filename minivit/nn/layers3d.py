"""The layers of volume networks and decoders: Conv3d, ConvTranspose2d/3d, InstanceNorm1d/2d/3d,
MaxPool3d, AvgPool3d, Upsample.

As in :mod:`minivit.nn.layers`: PyTorch's constructor arguments, parameter and buffer
names (weight, bias; running_mean, running_var, num_batches_tracked) and default
initialisation, and ``forward`` calls the matching op of :mod:`minivit.functional`
(functional/convnd.py, norm.py, conv.py), where the maths and the backward live.

- Conv3d and the transposed convs: weight ~ U(±1/√fan_in) (``kaiming_uniform_(w, a=√5)``),
  bias ~ U(±1/√fan_in), fan_in = weight.shape[1]·Πk. A transposed conv's weight is
  (in_channels, out_channels/groups, *k), so its fan_in is out_channels/groups·Πk, as PyTorch.
- InstanceNorm: weight = 1, bias = 0 (affine=True); running_mean = 0, running_var = 1
  (track_running_stats=True). Both default to False, as PyTorch.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from minivit.functional.conv import interpolate
from minivit.functional.convnd import avg_pool3d, conv3d, conv_transpose2d, conv_transpose3d, max_pool3d
from minivit.functional.norm import instance_norm
from minivit.nn import init
from minivit.nn.layers import _NormBase
from minivit.nn.module import Module, Parameter


def _ntuple(v, n, name, layer):
    if isinstance(v, (int, np.integer)):
        return (int(v),) * n
    v = tuple(v)
    if len(v) != n or not all(isinstance(i, (int, np.integer)) for i in v):
        raise ValueError(f"{layer}: {name} must be an int or a tuple of {n} ints, got {v!r}")
    return tuple(int(i) for i in v)


# =========================================================================== convolutions
class _ConvNd(Module):
    """What Conv3d and ConvTranspose2d/3d share: arguments, parameters, init, repr."""

    n_spatial = 0
    transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                 padding_mode, device, dtype, output_padding=0):
        super().__init__()
        name, n = type(self).__name__, self.n_spatial
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{name}: groups must be a positive int, got {groups!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must both be divisible by groups ({groups})")
        if padding_mode != "zeros":
            raise ValueError(f"{name}: only padding_mode='zeros' is supported, got {padding_mode!r}; "
                             f"pad with F.pad first for other modes")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _ntuple(kernel_size, n, "kernel_size", name)
        self.stride = _ntuple(stride, n, "stride", name)
        if isinstance(padding, str) and self.transposed:
            raise ValueError(f"{name}: padding must be numbers, not {padding!r}")
        self.padding = padding if isinstance(padding, str) else _ntuple(padding, n, "padding", name)
        self.dilation = _ntuple(dilation, n, "dilation", name)
        self.output_padding = _ntuple(output_padding, n, "output_padding", name)
        self.padding_mode = padding_mode
        shape = ((in_channels, out_channels // groups) if self.transposed
                 else (out_channels, in_channels // groups)) + self.kernel_size
        self.weight = Parameter(np.empty(shape, dtype=np.float32))
        if bias:
            self.bias = Parameter(np.empty(out_channels, dtype=np.float32))
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

    def extra_repr(self):
        n = self.n_spatial
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * n:
            s += f", padding={self.padding}"                 # (a string unquoted, as torch)
        if self.dilation != (1,) * n:
            s += f", dilation={self.dilation}"
        if self.output_padding != (0,) * n:
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Conv3d(_ConvNd):
    """3-D convolution (cross-correlation) on volumes or clips: (N, C, D, H, W) in and out.

    weight (out_channels, in_channels/groups, kD, kH, kW), bias (out_channels,)."""

    n_spatial = 3

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)

    def forward(self, x):
        return conv3d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _ConvTransposeNd(_ConvNd):
    transposed = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, padding_mode: str = "zeros", device=None,
                 dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype, output_padding)

    def _output_padding(self, x, output_size):
        """output_padding, or the one that gives ``output_size`` (PyTorch's forward(x, output_size))."""
        if output_size is None:
            return self.output_padding
        n, name = self.n_spatial, type(self).__name__
        output_size = tuple(int(v) for v in output_size)
        if len(output_size) == x.ndim:                          # (N, C, *spatial) given: keep the spatial part
            output_size = output_size[x.ndim - n:]
        if len(output_size) != n:
            raise ValueError(f"{name}: output_size must have {n} (or {x.ndim}) elements for a {x.ndim}-D input, "
                             f"got {output_size}")
        lo = tuple((i - 1) * s - 2 * p + d * (k - 1) + 1 for i, s, p, d, k in
                   zip(x.shape[x.ndim - n:], self.stride, self.padding, self.dilation, self.kernel_size))
        hi = tuple(m + s - 1 for m, s in zip(lo, self.stride))
        if any(not a <= o <= b for o, a, b in zip(output_size, lo, hi)):
            raise ValueError(f"{name}: requested an output size of {output_size}, but valid sizes range from {lo} "
                             f"to {hi} (for an input of {tuple(x.shape[x.ndim - n:])})")
        return tuple(o - a for o, a in zip(output_size, lo))


class ConvTranspose2d(_ConvTransposeNd):
    """2-D transposed convolution (the gradient of Conv2d with respect to its input; a learned
    upsampling in decoders): (N, C_in, H, W) → (N, C_out, H_out, W_out).

    weight (in_channels, out_channels/groups, kH, kW), bias (out_channels,).
    ``forward(x, output_size=None)``: with output_size, the output_padding that gives it."""

    n_spatial = 2

    def forward(self, x, output_size=None):
        return conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                self._output_padding(x, output_size), self.groups, self.dilation)


class ConvTranspose3d(_ConvTransposeNd):
    """3-D transposed convolution: (N, C_in, D, H, W) → (N, C_out, D_out, H_out, W_out).

    weight (in_channels, out_channels/groups, kD, kH, kW), bias (out_channels,).
    ``forward(x, output_size=None)``: with output_size, the output_padding that gives it."""

    n_spatial = 3

    def forward(self, x, output_size=None):
        return conv_transpose3d(x, self.weight, self.bias, self.stride, self.padding,
                                self._output_padding(x, output_size), self.groups, self.dilation)


# =========================================================================== instance norm
class _InstanceNorm(_NormBase):
    """Instance normalisation (Ulyanov et al., 2016): each sample's channel normalised over its
    spatial dims. Uses the instance statistics in training and, unless track_running_stats,
    in evaluation too; with track_running_stats, training updates running_mean/running_var
    (momentum as BatchNorm's) and evaluation uses them."""

    n_spatial = 0

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = False,
                 track_running_stats: bool = False, device=None, dtype=None, *, bias: bool = True):
        # PyTorch's defaults differ from BatchNorm's: no affine, no running statistics. With them, the
        # buffers are BatchNorm's, num_batches_tracked included (PyTorch registers it; InstanceNorm never counts).
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)

    def forward(self, x):
        name, n = type(self).__name__, self.n_spatial
        if x.ndim not in (n + 1, n + 2):
            raise ValueError(f"{name}: expected a {n + 2}-D (batched) or {n + 1}-D (unbatched) input, "
                             f"got shape {tuple(x.shape)}")
        channels = x.shape[x.ndim - n - 1]
        if channels != self.num_features:
            if self.affine or self.track_running_stats:
                raise ValueError(f"{name}: expected {self.num_features} channels (num_features) at dim "
                                 f"{x.ndim - n - 1}, got {channels} in input shape {tuple(x.shape)}")
            warnings.warn(f"{name}: input's size at dim={x.ndim - n - 1} does not match num_features; "
                          f"it is not used because affine=False", stacklevel=2)
        unbatched = x.ndim == n + 1
        if unbatched:
            x = x.unsqueeze(0)
        y = instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                          self.training or not self.track_running_stats,
                          self.momentum if self.momentum is not None else 0.0, self.eps)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class InstanceNorm1d(_InstanceNorm):
    """Instance norm of (N, C, L) or (C, L)."""
    n_spatial = 1


class InstanceNorm2d(_InstanceNorm):
    """Instance norm of (N, C, H, W) or (C, H, W)."""
    n_spatial = 2


class InstanceNorm3d(_InstanceNorm):
    """Instance norm of (N, C, D, H, W) or (C, D, H, W)."""
    n_spatial = 3


# =========================================================================== pooling, resizing
class MaxPool3d(Module):
    """``torch.nn.MaxPool3d``: the max over each (dilated) kD×kH×kW window; stride defaults to kernel_size."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, x):
        return max_pool3d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                          self.return_indices)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool3d(Module):
    """``torch.nn.AvgPool3d``: the mean over each kD×kH×kW window; stride defaults to kernel_size."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override=None):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.ceil_mode = padding, ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def forward(self, x):
        return avg_pool3d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad, self.divisor_override)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class Upsample(Module):
    """``torch.nn.Upsample``: F.interpolate as a layer; 4-D input with 'nearest', 'bilinear',
    'bicubic', 5-D input with 'nearest', 'trilinear'. Give size or scale_factor."""

    def __init__(self, size=None, scale_factor=None, mode: str = "nearest", align_corners=None,
                 recompute_scale_factor=None):
        super().__init__()
        self.size = size
        if isinstance(scale_factor, (tuple, list)):
            self.scale_factor = tuple(float(f) for f in scale_factor)
        else:
            self.scale_factor = float(scale_factor) if scale_factor else None
        self.mode, self.align_corners, self.recompute_scale_factor = mode, align_corners, recompute_scale_factor

    def forward(self, x):
        return interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners,
                           recompute_scale_factor=self.recompute_scale_factor)

    def extra_repr(self):
        info = f"scale_factor={self.scale_factor!r}" if self.scale_factor is not None else f"size={self.size!r}"
        return info + f", mode={self.mode!r}"
