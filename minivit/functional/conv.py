"""Convolution, pooling, padding and resizing on NCHW images.

Every op here is built from one of three ideas:

* **im2col**: a convolution is a matrix product. Lay every receptive field
  out as a column (``backend.sliding_window_view`` gives all windows as a
  strided view, one reshape copies them into place), and the whole conv is a
  single GEMM ``W (C_out, C_in·kH·kW) @ cols (C_in·kH·kW, N·H_out·W_out)``.
  Groups become a batch dimension of that product, so a depthwise conv
  (groups = C_in, used by CvT, PiT, PVT v2) is one batched matmul, no
  Python loop over channels.
* **shift and add**: a sum over a k×k window is the sum of k·k shifted,
  strided slices of the whole image. Pooling and col2im (the backward of
  im2col, which adds each column back onto the pixels it came from) loop
  over the k·k kernel offsets, never over pixels.
* **separable weights**: adaptive average pooling and bilinear / bicubic /
  nearest resizing give every output pixel a fixed weighted sum of input
  pixels, and the weights factor into a row part and a column part. So the
  op is ``A_h @ x @ A_wᵀ`` with two small matrices, and its backward is
  ``A_hᵀ @ g @ A_w``.

Shapes follow PyTorch: input (N, C, H, W) — or unbatched (C, H, W) — and
conv weights (C_out, C_in / groups, kH, kW). ``interpolate`` also takes volumes
(N, C, D, H, W): the same separable weights, one matrix per dim (SeparableNd).
conv3d, the transposed convs and 3-D pooling are in functional/convnd.py.
"""
from __future__ import annotations

import math

import numpy as np

from minivit import amp, backend
from minivit.autograd import Function, Tensor, is_grad_enabled
from minivit.functional import fused_cpu, fused_cuda
from minivit.functional.basic import squeeze, unsqueeze
from minivit.functional.linear import add_bias_

get_array_module = backend.get_array_module


# =========================================================================== argument helpers
def _pair(v, name, op):
    """An int or a pair of ints → (h, w), as PyTorch's kernel_size/stride/padding/dilation."""
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, (int, np.integer)) for i in v):
        return int(v[0]), int(v[1])
    raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")


def _out_size(n, k, s, pad_lo, pad_hi, d=1, ceil_mode=False):
    """Output length of a sliding window: ⌊(n + pads − d·(k−1) − 1) / s⌋ + 1.

    With ceil_mode the division rounds up, but (as in PyTorch) the last window
    must still start inside the input or the left padding."""
    span = n + pad_lo + pad_hi - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + pad_lo:
        out -= 1
    return out


def _window(offset, d, s, out):
    """The input rows that kernel row ``offset`` touches, for all ``out`` output rows at once.

    Output row i reads padded row i·s + offset·d, so one strided slice covers them all."""
    start = offset * d
    return slice(start, start + s * (out - 1) + 1, s)


def _check_4d(x, op):
    if x.ndim != 4:
        raise ValueError(f"{op}: expected a 4-D (N, C, H, W) or 3-D (C, H, W) input, got shape {tuple(x.shape)}")


def _batched(op, x, fn):
    """Run fn on a 4-D input; an unbatched (C, H, W) input gets a batch dim of 1 and loses it after."""
    if x.ndim == 3:
        return squeeze(fn(unsqueeze(x, 0)), 0)
    _check_4d(x, op)
    return fn(x)


def _check_positive(op, **values):
    for name, v in values.items():
        if min(v) < 1:
            raise ValueError(f"{op}: {name} must be positive, got {v}")


def _pad_hw(x, pads, value=0):
    """Pad the last two dims by pads = (top, bottom, left, right); no copy when all are 0."""
    if not any(pads):
        return x
    xp = get_array_module(x)
    top, bottom, left, right = pads
    width = [(0, 0)] * (x.ndim - 2) + [(top, bottom), (left, right)]
    return xp.pad(x, width, mode="constant", constant_values=value)


def _unpad_hw(g, pads):
    top, bottom, left, right = pads
    return g[..., top:g.shape[-2] - bottom, left:g.shape[-1] - right]


def add_into(view, g):
    """``view += g`` on a view (a basic slice) of a larger array: the col2im step.

    Written ``a[idx] += g`` Python would add into the view a[idx] and then copy it onto
    itself (``a.__setitem__(idx, ...)``): two kernels on a GPU, and a needless copy on the CPU."""
    view += g


# =========================================================================== conv2d
class Conv2d(Function):
    """2-D cross-correlation (PyTorch's conv2d) by im2col and one (batched) GEMM.

    With G groups, Cg = C_in/G input and Og = C_out/G output channels per
    group, K = Cg·kH·kW and L = N·H_out·W_out:

        cols (G, K, L)   column l holds the receptive field of output pixel l
        y    (G, Og, L) = W (G, Og, K) @ cols

    Backward, with g = ∂L/∂y laid out as (G, Og, L):
        ∂L/∂W    = g @ colsᵀ                                  (G, Og, K)
        ∂L/∂cols = Wᵀ @ g, then col2im adds every column back onto the pixels it was read from
        ∂L/∂b    = Σ over N, H_out, W_out of g
    """

    # On the CPU, depthwise convs (one input and one output channel per group) take the
    # einsum path below (_depthwise_*); False sends them through im2col like every other conv.
    depthwise_fast_path = True
    # On the CPU, plain convs (groups = 1) work channels-last (_channels_last_*, below);
    # False sends them through the (G, K, L) layout above.
    channels_last_path = True
    # On that path, padding, im2col and col2im run in pieces of the batch on backend's threads;
    # False: one piece, on the calling thread.
    threaded_columns = True
    # When the windows tile the input (kernel = stride), the column gradients are moved into
    # place in one copy (_tiles_backward); False: col2im's loop over the kernel offsets.
    tiling_fast_path = True

    def __init__(self, stride, pads, dilation, groups, keep_cols=True):
        self.stride, self.pads, self.dilation, self.groups = stride, pads, dilation, groups
        self.keep_cols = keep_cols      # cols are only needed for ∂W: don't hold them otherwise
        self.depthwise = self.channels_last = False

    def forward(self, x, w, b=None):
        xp = get_array_module(x)
        N, C, H, W = x.shape
        O, Cg, kh, kw = w.shape
        if self.depthwise_fast_path and Cg == 1 and O == self.groups and backend.device_of(x) == "cpu":
            if x.dtype == np.float32 and fused_cpu.applies(w, *(() if b is None else (b,))):
                # float32: the compiled loops (fused_cpu.depthwise_conv_*), no padded copy
                self.depthwise = "cpu"
                return self._depthwise_compiled_forward(x, w, b)
            self.depthwise = True
            return self._depthwise_forward(x, w, b)
        if self.depthwise_fast_path and Cg == 1 and O == self.groups and fused_cuda.applies(x, w, *(() if b is None else (b,))):
            # On a GPU: one kernel each way (fused_cuda.depthwise_conv_*), no columns.
            self.depthwise = "cuda"
            y, xm, x_cl = fused_cuda.depthwise_conv_forward(x, w, b, self.stride, self.dilation, self.pads)
            self.dw_saved = (xm if self.keep_cols else None, x_cl, x.shape, w, b is not None)
            return y
        if (self.channels_last_path and self.groups == 1 and backend.device_of(x) == "cpu"
                and x.transpose(0, 2, 3, 1).flags.c_contiguous and not x.flags.c_contiguous):
            self.channels_last = True
            return self._channels_last_forward(x, w, b)
        G, (sh, sw), (dh, dw) = self.groups, self.stride, self.dilation
        # tokens viewed as an image (channels-last in memory): a GPU's col2im writes ∂x alike
        self.x_channels_last = not x.flags.c_contiguous and x.transpose(0, 2, 3, 1).flags.c_contiguous
        xpad = _pad_hw(x, self.pads)
        Hp, Wp = xpad.shape[-2:]
        Ho = _out_size(H, kh, sh, *self.pads[:2], dh)
        Wo = _out_size(W, kw, sw, *self.pads[2:], dw)
        # All dilated windows as a view (N, C, Ho, Wo, kh, kw), then one copy into columns.
        win = backend.sliding_window_view(xpad, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
        win = win[:, :, ::sh, ::sw, ::dh, ::dw]
        cols = (win.reshape(N, G, Cg, Ho, Wo, kh, kw)
                .transpose(1, 2, 5, 6, 0, 3, 4)             # (G, Cg, kh, kw, N, Ho, Wo)
                .reshape(G, Cg * kh * kw, N * Ho * Wo))      # (G, K, L)
        w3 = w.reshape(G, O // G, Cg * kh * kw)             # (G, Og, K)
        y = w3 @ cols                                       # (G, Og, L): the one big GEMM
        y = xp.ascontiguousarray(y.reshape(O, N, Ho, Wo).transpose(1, 0, 2, 3))  # (N, O, Ho, Wo)
        if b is not None:
            y += b.reshape(1, O, 1, 1)
        # Keep only what backward will use: cols for ∂W, W for ∂x.
        self.cols = cols if self.keep_cols else None
        self.w3 = w3
        self.shapes = x.shape, w.shape, (Hp, Wp), (Ho, Wo)
        return y

    def backward(self, gy):
        if self.depthwise == "cuda":
            xm, x_cl, x_shape, w, has_b = self.dw_saved
            gx, gw, gb = fused_cuda.depthwise_conv_backward(
                gy, xm, x_cl, x_shape, w, self.stride, self.dilation, self.pads, self.needs_grad[0],
                self.needs_grad[1], has_b and self.needs_grad[2])
            return (gx, gw) if not has_b else (gx, gw, gb)
        if self.depthwise == "cpu":
            return self._depthwise_compiled_backward(gy)
        if self.depthwise:
            return self._depthwise_backward(gy)
        if self.channels_last:
            return self._channels_last_backward(gy)
        xp = get_array_module(gy)
        (N, C, H, W), (O, Cg, kh, kw), (Hp, Wp), (Ho, Wo) = self.shapes
        G, (sh, sw), (dh, dw) = self.groups, self.stride, self.dilation
        g3 = gy.transpose(1, 0, 2, 3).reshape(G, O // G, N * Ho * Wo)   # (G, Og, L)
        gx = gw = None
        if self.needs_grad[0]:
            wt = self.w3.transpose(0, 2, 1)                              # (G, K, Og)
            # With Og = 1 (depthwise) the product is an outer product, which a
            # broadcast multiply does several times faster than BLAS.
            gcols = (wt @ g3 if O // G > 1 else wt * g3).reshape(G, Cg, kh, kw, N, Ho, Wo)
            if self.tiling_fast_path and (kh, kw) == (sh, sw) and (dh, dw) == (1, 1):
                gx = self._tiles_backward(xp, gcols)
            elif fused_cuda.applies(gcols):
                # On a GPU col2im is one kernel: each input pixel gathers its taps in the loop's
                # order below, in the input's memory layout (fused_cuda.col2im).
                gx = fused_cuda.col2im(gcols, (N, C, H, W), (Ho, Wo), (sh, sw), (dh, dw),
                                       (self.pads[0], self.pads[2]), self.x_channels_last)
            else:
                # col2im: each kernel offset (i, j) read one strided slice of the padded
                # input; add its column gradient back onto that slice.
                gpad = xp.zeros((G, Cg, N, Hp, Wp), dtype=gy.dtype)
                for i in range(kh):
                    for j in range(kw):
                        add_into(gpad[..., _window(i, dh, sh, Ho), _window(j, dw, sw, Wo)], gcols[:, :, i, j])
                gx = _unpad_hw(gpad.reshape(C, N, Hp, Wp).transpose(1, 0, 2, 3), self.pads)
        if self.needs_grad[1]:
            gw = (g3 @ self.cols.transpose(0, 2, 1)).reshape(O, Cg, kh, kw)
        if len(self.needs_grad) == 2:                       # called without a bias
            return gx, gw
        return gx, gw, (gy.sum(axis=(0, 2, 3)) if self.needs_grad[2] else None)

    def _tiles_backward(self, xp, gcols):
        """col2im when the windows tile the input (kernel = stride, no dilation: a patch
        embedding, SRA's reduction): each padded pixel was read by one tap at most, so the
        column gradients only move into place, one copy instead of kh·kw accumulations."""
        (N, C, H, W), (O, Cg, kh, kw), (Hp, Wp), (Ho, Wo) = self.shapes
        tiles = gcols.transpose(4, 0, 1, 5, 2, 6, 3).reshape(N, C, Ho * kh, Wo * kw)   # (N, C, Ho·kh, Wo·kw)
        if (Ho * kh, Wo * kw) == (Hp, Wp):
            gpad = xp.ascontiguousarray(tiles)
        else:                                            # rows/columns past the last window: read by none
            gpad = xp.zeros((N, C, Hp, Wp), dtype=gcols.dtype)
            gpad[:, :, :Ho * kh, :Wo * kw] = tiles
        return _unpad_hw(gpad, self.pads)

    # ----------------------------------------------------------------------- channels-last
    # The vision transformers here keep activations as tokens (B, N, C) and view them as
    # images (B, C, H, W) only around a conv: tokens.reshape(B, H, W, C).permute(0, 3, 1, 2)
    # is an image that is channels-last in memory, and a conv's output goes back to tokens
    # by flatten(2).transpose(1, 2). So on the CPU a plain conv given a channels-last input
    # works channels-last: it reads the input without a transposing copy, and its output
    # comes out as (N, Ho, Wo, C_out) in memory, returned as an (N, C_out, Ho, Wo) view,
    # from which the tokens are a free reshape. With L = N·Ho·Wo output pixels and
    # K = kh·kw·C_in taps per pixel, ordered (kh, kw, C_in) so that every copy below moves
    # runs of C_in contiguous numbers (W is reordered to match):
    #
    #     cols (L, K): row l holds the receptive field of output pixel l
    #     y    (L, C_out) = cols @ Wᵀ                  the one GEMM, already channels-last
    #     ∂W = gᵀ @ cols,   ∂cols = g @ W, then col2im as above
    #
    # An ordinary NCHW input (image batches; the CNN teacher throughout) stays on the
    # layout above: there runs of C_in would be short (16 channels in the teacher), and
    # NumPy's per-run overhead made its training step slower channels-last.

    def _channels_last_forward(self, x, w, b):
        N, C, H, W = x.shape
        O, _, kh, kw = w.shape
        top, bottom, left, right = self.pads
        Ho = _out_size(H, kh, self.stride[0], top, bottom, self.dilation[0])
        Wo = _out_size(W, kw, self.stride[1], left, right, self.dilation[1])
        xl = x.transpose(0, 2, 3, 1)                        # (N, H, W, C): a contiguous view
        xpad = np.empty((N, H + top + bottom, W + left + right, C), dtype=x.dtype) if any(self.pads) else xl
        cols = np.empty((N, Ho, Wo, kh, kw, C), dtype=x.dtype)

        def piece(lo, hi):   # images lo..hi-1 on one of backend's threads: pad, then im2col
            if xpad is not xl:
                _zero_frame(xpad[lo:hi], self.pads)
                xpad[lo:hi, top:top + H, left:left + W] = xl[lo:hi]
            win = _windows_last(xpad[lo:hi], (kh, kw), self.stride, self.dilation)   # (n, Ho, Wo, C, kh, kw)
            cols[lo:hi] = win.transpose(0, 1, 2, 4, 5, 3)
        backend.parallel_pieces(N, piece) if self.threaded_columns else piece(0, N)
        cols = cols.reshape(N * Ho * Wo, -1)                # (L, K)
        wk = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(O, -1)       # (O, K), K = (kh, kw, C)
        y = cols @ wk.T                                     # (L, O)
        if b is not None:
            add_bias_(y, b)
        self.cols = cols if self.keep_cols else None        # only ∂W needs them
        self.wk = wk
        self.shapes = x.shape, w.shape, xpad.shape[1:3], (Ho, Wo)
        return y.reshape(N, Ho, Wo, O).transpose(0, 3, 1, 2)

    def _channels_last_backward(self, gy):
        (N, C, H, W), (O, _, kh, kw), (Hp, Wp), (Ho, Wo) = self.shapes
        (sh, sw), (dh, dw), (top, bottom, left, right) = self.stride, self.dilation, self.pads
        g = gy.transpose(0, 2, 3, 1).reshape(N * Ho * Wo, O)   # (L, O): a view when gy is channels-last
        gx = gw = None
        if self.needs_grad[0]:
            gc = (g @ self.wk).reshape(N, Ho, Wo, kh, kw, C)   # ∂cols (L, K)
            if (kh, kw) == (sh, sw) and (dh, dw) == (1, 1) and (Hp, Wp) == (Ho * kh, Wo * kw):
                # Windows that tile the input (patch embeddings, PVT's reduction conv):
                # every input pixel was read once, so col2im is a single reordering copy.
                gxpad = gc.transpose(0, 1, 3, 2, 4, 5).reshape(N, Hp, Wp, C)
            else:
                gxpad = np.empty((N, Hp, Wp, C), dtype=gy.dtype)

                def piece(lo, hi):   # images lo..hi-1 on one of backend's threads: col2im
                    gxpad[lo:hi] = 0
                    for i in range(kh):
                        for j in range(kw):
                            add_into(gxpad[lo:hi, _window(i, dh, sh, Ho), _window(j, dw, sw, Wo)], gc[lo:hi, :, :, i, j])
                backend.parallel_pieces(N, piece) if self.threaded_columns else piece(0, N)
            gx = gxpad[:, top:Hp - bottom, left:Wp - right].transpose(0, 3, 1, 2)  # (N, C, H, W), a view
        if self.needs_grad[1]:
            gk = g.T @ self.cols                            # (O, K)
            gw = np.ascontiguousarray(gk.reshape(O, kh, kw, C).transpose(0, 3, 1, 2))
        if len(self.needs_grad) == 2:
            return gx, gw
        gb = np.ones(g.shape[0], dtype=g.dtype) @ g if self.needs_grad[2] else None
        return gx, gw, gb

    # ----------------------------------------------------------------------- depthwise
    # A depthwise conv (CvT's q/k/v projections, PVT v2's feed-forward) gives each
    # channel its own k×k filter. im2col would copy every pixel k·k times into
    # columns only to run G products of a single row. Instead, with all windows of
    # the padded input as a strided view (no copy), one einsum sums over the taps:
    #
    #     y[n, h, w, c]  = Σ_ij xpad[n, h·s + i·d, w·s + j·d, c] · W[c, i, j]
    #     ∂L/∂W[c, i, j] = Σ_nhw g[n, h, w, c] · xpad[n, h·s + i·d, w·s + j·d, c]
    #     ∂L/∂x          = the same correlation run backwards: for stride 1, the
    #                      zero-padded g correlated with the flipped filter,
    #                      ∂L/∂x[h] = Σ_i gpad[h + i·d] · W[k−1−i]
    #
    # Arrays are laid out channels-last (N, H, W, C): the channel is the contiguous
    # axis the einsum runs along, and tokens (B, N, C) reshaped to an image already
    # are channels-last in memory, so for them the transposes cost nothing.
    # The GPU has its own kernels (fused_cuda.depthwise_conv_*, chosen in forward).

    def _depthwise_forward(self, x, w, b):
        xp = get_array_module(x)
        N, C, H, W = x.shape
        kh, kw = w.shape[2:]
        top, bottom, left, right = self.pads
        (sh, sw), (dh, dw) = self.stride, self.dilation
        Ho = _out_size(H, kh, sh, top, bottom, dh)
        Wo = _out_size(W, kw, sw, left, right, dw)
        xpad = xp.empty((N, H + top + bottom, W + left + right, C), dtype=x.dtype)   # channels last
        # (einsum picks its loop order from the operands' strides: keep them all channels-last)
        taps = xp.ascontiguousarray(w.reshape(C, kh, kw).transpose(1, 2, 0))         # (kh, kw, C)
        y = xp.empty((N, Ho, Wo, C), dtype=x.dtype)
        tiled = _tiled_taps(taps, Wo, sw)

        def piece(lo, hi):   # images lo..hi-1, on one of backend's threads
            _zero_frame(xpad[lo:hi], self.pads)
            xpad[lo:hi, top:top + H, left:left + W] = x[lo:hi].transpose(0, 2, 3, 1)
            _depthwise_sum(xpad[lo:hi], taps, tiled, self.stride, self.dilation, y[lo:hi])
            if b is not None:
                y[lo:hi] += b
        backend.parallel_pieces(N, piece)
        self.xpad = xpad if self.keep_cols else None        # only ∂W needs the input
        self.taps = taps
        self.shapes = x.shape, w.shape, xpad.shape[1:3], y.shape[1:3]
        return y.transpose(0, 3, 1, 2)                      # (N, C, Ho, Wo), a view

    def _depthwise_backward(self, gy):
        xp = get_array_module(gy)
        (N, C, H, W), (_, _, kh, kw), (Hp, Wp), (Ho, Wo) = self.shapes
        (sh, sw), (dh, dw), (top, bottom, left, right) = self.stride, self.dilation, self.pads
        want_x, want_w = self.needs_grad[0], self.needs_grad[1]
        g = gy.transpose(0, 2, 3, 1)                                                 # channels last
        # A gradient that came back through tokens (B, N, C) already is channels-last in
        # memory; any other layout is copied, piece by piece below.
        copy_g = not g.flags.c_contiguous
        if copy_g:
            g = xp.empty((N, Ho, Wo, C), dtype=gy.dtype)
        # Stride 1: pad g so that gx[h] = Σ_i gpad[h + i·d] · W[k−1−i] (see above).
        lo_h, lo_w = dh * (kh - 1) - top, dw * (kw - 1) - left
        hi_h, hi_w = dh * (kh - 1) - bottom, dw * (kw - 1) - right
        flipped = (sh, sw) == (1, 1) and min(lo_h, lo_w, hi_h, hi_w) >= 0
        if want_x:
            gx = xp.empty((N, H, W, C), dtype=gy.dtype)
            if flipped:
                gpad = xp.empty((N, Ho + lo_h + hi_h, Wo + lo_w + hi_w, C), dtype=gy.dtype)
                taps_flipped = xp.ascontiguousarray(self.taps[::-1, ::-1])
                tiled_flipped = _tiled_taps(taps_flipped, W, 1)
            else:
                gxpad = xp.zeros((N, Hp, Wp, C), dtype=gy.dtype)

        def piece(lo, hi):   # images lo..hi-1, on one of backend's threads; returns their share of ∂W
            if copy_g:
                g[lo:hi] = gy[lo:hi].transpose(0, 2, 3, 1)
            if want_x and flipped:
                _zero_frame(gpad[lo:hi], (lo_h, hi_h, lo_w, hi_w))
                gpad[lo:hi, lo_h:lo_h + Ho, lo_w:lo_w + Wo] = g[lo:hi]
                _depthwise_sum(gpad[lo:hi], taps_flipped, tiled_flipped, (1, 1), self.dilation, gx[lo:hi])
            elif want_x:
                # Strided: add each tap's share back onto the input positions it read.
                for i in range(kh):
                    for j in range(kw):
                        add_into(gxpad[lo:hi, _window(i, dh, sh, Ho), _window(j, dw, sw, Wo)], g[lo:hi] * self.taps[i, j])
                gx[lo:hi] = gxpad[lo:hi, top:top + H, left:left + W]
            if want_w:
                win = _windows_last(self.xpad[lo:hi], (kh, kw), self.stride, self.dilation)
                return xp.einsum("nhwc,nhwcij->cij", g[lo:hi], win)
            return None
        shares = backend.parallel_pieces(N, piece)
        gx = gx.transpose(0, 3, 1, 2) if want_x else None   # (N, C, H, W), a view of channels-last
        gw = sum(shares[1:], shares[0]).reshape(C, 1, kh, kw) if want_w else None
        if len(self.needs_grad) == 2:
            return gx, gw
        # ∂L/∂b: column sums of the (N·Ho·Wo, C) gradient as one BLAS product
        gb = xp.ones(N * Ho * Wo, dtype=g.dtype) @ g.reshape(-1, C) if self.needs_grad[2] else None
        return gx, gw, gb

    def _depthwise_compiled_forward(self, x, w, b):
        """The same conv by fused_cpu's C loops: channels-last, the padding skipped, not copied."""
        N, C, H, W = x.shape
        kh, kw = w.shape[2:]
        top, bottom, left, right = self.pads
        out_hw = (_out_size(H, kh, self.stride[0], top, bottom, self.dilation[0]),
                  _out_size(W, kw, self.stride[1], left, right, self.dilation[1]))
        x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))                     # (N, H, W, C): a view for tokens
        taps = np.ascontiguousarray(w.reshape(C, kh, kw).transpose(1, 2, 0))      # (kh, kw, C)
        y = fused_cpu.depthwise_conv_forward(x_cl, taps, b, out_hw, self.stride, self.dilation, self.pads)
        self.dw_saved = (x_cl if self.keep_cols else None, x_cl.shape, taps, b is not None)   # x only for ∂W
        return y.transpose(0, 3, 1, 2)                                           # (N, C, Ho, Wo), a view

    def _depthwise_compiled_backward(self, gy):
        x_cl, x_shape, taps, has_b = self.dw_saved
        C, (kh, kw) = x_shape[3], taps.shape[:2]
        g = np.ascontiguousarray(gy.transpose(0, 2, 3, 1), dtype=np.float32)     # channels last
        gx, gt, gb = fused_cpu.depthwise_conv_backward(g, x_cl, x_shape, taps, self.stride, self.dilation, self.pads,
                                                       self.needs_grad[0], self.needs_grad[1],
                                                       has_b and self.needs_grad[2])
        gx = None if gx is None else gx.transpose(0, 3, 1, 2)                   # (N, C, H, W), a view
        gw = None if gt is None else np.ascontiguousarray(gt.transpose(2, 0, 1)).reshape(C, 1, kh, kw)
        return (gx, gw, gb) if has_b else (gx, gw)


def _zero_frame(a, pads):
    """Zero the padding frame (top, bottom, left, right) of a channels-last (n, Hp, Wp, C)
    array whose inside is about to be written: one pass over the frame, not the whole array."""
    top, bottom, left, right = pads
    Hp, Wp = a.shape[1:3]
    a[:, :top] = 0
    a[:, Hp - bottom:] = 0
    a[:, top:Hp - bottom, :left] = 0
    a[:, top:Hp - bottom, Wp - right:] = 0


def _tiled_taps(taps, Wo, sw):
    """taps (kh, kw, C) repeated along the output width, (kh, kw, Wo·C), for _depthwise_sum's
    merged axis (stride 1 along the width); None otherwise."""
    if sw != 1:
        return None
    kh, kw, C = taps.shape
    return np.ascontiguousarray(np.broadcast_to(taps[:, :, None, :], (kh, kw, Wo, C))).reshape(kh, kw, Wo * C)


def _depthwise_sum(xpad, taps, tiled, stride, dilation, out):
    """out[n, h, w, c] = Σ_ij xpad[n, h·sh + i·dh, w·sw + j·dw, c] · taps[i, j, c], channels-last (CPU).

    With stride 1 along the width (``tiled`` given) the output's (w, c) pairs of a row are one
    contiguous run of Wo·C values, and so are the inputs one tap multiplies them by: einsum then
    runs over that merged axis, Wo times longer than over the channels alone, and its per-step
    overhead (most of the time when C is small) is paid Wo times less often. The taps are repeated
    along w for it (``_tiled_taps``). Otherwise the windows' view (N, Ho, Wo, C, kh, kw)."""
    kh, kw, C = taps.shape
    n, Ho, Wo, _ = out.shape
    if tiled is None or not (xpad.flags.c_contiguous and out.flags.c_contiguous):
        np.einsum("nhwcij,ijc->nhwc", _windows_last(xpad, (kh, kw), stride, dilation), taps, out=out)
        return
    sN, sH, sW, sC = xpad.strides
    win = np.lib.stride_tricks.as_strided(                                     # (n, Ho, kh, kw, Wo·C), a view
        xpad, (n, Ho, kh, kw, Wo * C), (sN, sH * stride[0], sH * dilation[0], sW * dilation[1], sC), writeable=False)
    np.einsum("nhijk,ijk->nhk", win, tiled, out=out.reshape(n, Ho, Wo * C))


def _windows_last(xpad, k, stride, dilation):
    """Every (dilated, strided) k×k window of a channels-last (N, Hp, Wp, C) array, as a
    view (N, Ho, Wo, C, kh, kw)."""
    (kh, kw), (sh, sw), (dh, dw) = k, stride, dilation
    win = backend.sliding_window_view(xpad, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(1, 2))
    return win[:, ::sh, ::sw, :, ::dh, ::dw]


def _conv_padding(padding, k, d, stride):
    """padding (int, pair, 'valid' or 'same') → (top, bottom, left, right).

    'same' pads d·(k−1) in total per dim, the odd one extra at the bottom/right (as PyTorch)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"conv2d: padding='same' needs stride 1 (as in PyTorch), got stride {stride}; "
                                 f"give the padding as numbers instead")
            (th, tw) = (d[0] * (k[0] - 1), d[1] * (k[1] - 1))
            return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        raise ValueError(f"conv2d: padding string must be 'same' or 'valid', got {padding!r}")
    ph, pw = _pair(padding, "padding", "conv2d")
    if ph < 0 or pw < 0:
        raise ValueError(f"conv2d: padding must be non-negative, got {(ph, pw)}")
    return (ph, ph, pw, pw)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002
    """``torch.nn.functional.conv2d``: input (N, C_in, H, W), weight (C_out, C_in/groups, kH, kW),
    bias (C_out,) → (N, C_out, H_out, W_out). padding may be an int, a pair, 'same' or 'valid'."""
    if amp._enabled:                                  # autocast: a float16 GEMM (minivit.amp's policy)
        input, weight, bias = amp.cast_inputs("conv2d", input, weight, bias)

    def run(x):
        if weight.ndim != 4:
            raise ValueError(f"conv2d: weight must be 4-D (C_out, C_in/groups, kH, kW), got shape {tuple(weight.shape)}")
        N, C, H, W = x.shape
        O, Cg, kh, kw = weight.shape
        if not isinstance(groups, (int, np.integer)) or groups < 1:
            raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
        if C % groups or O % groups:
            raise ValueError(f"conv2d: groups={groups} must divide both the input channels ({C}) and the "
                             f"output channels ({O} = weight.shape[0])")
        if C != Cg * groups:
            raise ValueError(f"conv2d: input has {C} channels but weight of shape {tuple(weight.shape)} with "
                             f"groups={groups} expects weight.shape[1] × groups = {Cg * groups}; the weight "
                             f"should be ({O}, {C // groups}, {kh}, {kw})")
        s = _pair(stride, "stride", "conv2d")
        d = _pair(dilation, "dilation", "conv2d")
        _check_positive("conv2d", stride=s, dilation=d)
        pads = _conv_padding(padding, (kh, kw), d, s)
        ek = (d[0] * (kh - 1) + 1, d[1] * (kw - 1) + 1)
        if ek[0] > H + pads[0] + pads[1] or ek[1] > W + pads[2] + pads[3]:
            raise ValueError(f"conv2d: kernel {kh}x{kw} (dilation {d}, so it spans {ek[0]}x{ek[1]}) is larger "
                             f"than the padded input {H + pads[0] + pads[1]}x{W + pads[2] + pads[3]} (input "
                             f"{H}x{W}, padding {pads[:2]}, {pads[2:]}); use a bigger input, more padding or "
                             f"a smaller kernel")
        if bias is not None and tuple(bias.shape) != (O,):
            raise ValueError(f"conv2d: bias must have shape ({O},) = (C_out,), got {tuple(bias.shape)}")
        for name, t in (("weight", weight), ("bias", bias)):
            if t is not None and t.dtype != x.dtype:
                raise TypeError(f"conv2d: input is {x.dtype} but {name} is {t.dtype}; cast one of them so they match")
        op = Conv2d(s, pads, d, int(groups), keep_cols=weight.requires_grad and is_grad_enabled())
        return op(x, weight) if bias is None else op(x, weight, bias)
    return _batched("conv2d", input, run)


# =========================================================================== conv2d on tokens
class Conv2dTokens(Function):
    """conv2d of tokens (B, H·W, C) read as a (B, C, H, W) map, back to tokens (B, H'·W', C_out).

    What ``F.rearrange(x, "b (h w) c -> b c h w")``, ``conv2d`` and ``F.rearrange(y, "b c h w -> b (h w) c")``
    do in three ops, as one: the map is a view of the tokens (channels-last in memory, which the CPU
    convs take as it is), the conv is :class:`Conv2d`'s own forward and backward, and only the output's
    move back to tokens copies. PVT v2's Mix-FFN uses it for its depthwise 3×3 conv.

    ``norm``: a :class:`BatchNorm` op run on the conv's output map before the move back (its weight and
    bias come after the conv's inputs): CvT's "dw_bn" projection, conv → BatchNorm → tokens, as one op."""

    def __init__(self, hw, conv: Conv2d, conv_bias: bool = False, norm=None):
        self.hw, self.conv, self.norm = hw, conv, norm
        self.n_conv = 3 if conv_bias else 2                                 # x, w[, b]: the conv's inputs

    def forward(self, x, *params):
        xp = get_array_module(x)
        B, N, C = x.shape
        H, W = self.hw
        self.conv.needs_grad = self.needs_grad[:self.n_conv]
        xm = x.reshape(B, H, W, C).transpose(0, 3, 1, 2)                   # (B, C, H, W): a view
        y = self.conv.forward(xm, *params[:self.n_conv - 1])               # (B, O, H', W')
        if self.norm is not None:                                          # BatchNorm on the map
            self.norm.needs_grad = (any(self.conv.needs_grad),) + self.needs_grad[self.n_conv:]
            y = self.norm.forward(y, *params[self.n_conv - 1:])
        self.out_hw = y.shape[2:]
        return xp.ascontiguousarray(y.transpose(0, 2, 3, 1)).reshape(B, -1, y.shape[1])   # (B, H'·W', O)

    def backward(self, gy):
        B, _, O = gy.shape
        Ho, Wo = self.out_hw
        g = gy.reshape(B, Ho, Wo, O).transpose(0, 3, 1, 2)                 # (B, O, H', W'): a view
        norm_grads = ()
        if self.norm is not None:
            g, *norm_grads = self.norm.backward(g)                         # g: None when the conv needs none
        grads = self.conv.backward(g) if g is not None else (None,) * self.n_conv   # gx (B, C, H, W), gw[, gb]
        gx = grads[0]
        if gx is not None:              # (B, H·W, C): a view of the (B, C, H, W) map gradient, no copy; what
            gx = gx.transpose(0, 2, 3, 1).reshape(B, -1, gx.shape[1])   # reads it next (an add, a norm) copies anyway
        return (gx,) + tuple(grads[1:]) + tuple(norm_grads)


def conv2d_tokens(input, feat_size, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,  # noqa: A002
                  batch_norm=None):
    """``conv2d`` of tokens (B, H·W, C) on the (H, W) grid ``feat_size``, returning tokens (B, H'·W', C_out):
    the same as rearranging to a map, ``conv2d`` and rearranging back (``tests/test_device_ops.py`` holds
    them equal), as one op. Under autocast it is those three ops (conv2d's casting rules).

    ``batch_norm``: ``F.batch_norm``'s arguments after the input, (running_mean, running_var, weight, bias,
    training, momentum, eps) (``nn.BatchNorm2d.batch_norm_args()``): the conv's output map is batch-normed
    before it goes back to tokens, in the same op."""
    from minivit.functional.layout import rearrange
    from minivit.functional.norm import batch_norm as batch_norm_fn
    from minivit.functional.norm import batch_norm_op
    H, W = feat_size
    B, N, C = input.shape
    if N != H * W:
        raise ValueError(f"conv2d_tokens: {N} tokens do not form the {H}×{W} grid given as feat_size")
    if amp._enabled or weight.ndim != 4 or C != weight.shape[1] * groups or weight.dtype != input.dtype:
        # autocast, or arguments conv2d will explain: the separate ops, with their own checks and messages
        m = conv2d(rearrange(input, "b (h w) c -> b c h w", h=H), weight, bias, stride, padding, dilation, groups)
        if batch_norm is not None:
            m = batch_norm_fn(m, *batch_norm)
        return rearrange(m, "b c h w -> b (h w) c")
    kh, kw = weight.shape[2:]
    s = _pair(stride, "stride", "conv2d")
    d = _pair(dilation, "dilation", "conv2d")
    _check_positive("conv2d", stride=s, dilation=d)
    padding = _conv_padding(padding, (kh, kw), d, s)
    conv = Conv2d(s, padding, d, int(groups), keep_cols=weight.requires_grad and is_grad_enabled())
    args = [input, weight] + ([] if bias is None else [bias])
    norm = None
    if batch_norm is not None:
        out_hw = (_out_size(H, kh, s[0], padding[0], padding[1], d[0]), _out_size(W, kw, s[1], padding[2], padding[3], d[1]))
        norm = batch_norm_op((B, weight.shape[0]) + out_hw, input.dtype, *batch_norm)
        args += [p for p in batch_norm[2:4] if p is not None]
    return Conv2dTokens((H, W), conv, conv_bias=bias is not None, norm=norm)(*args)


# =========================================================================== pooling
def _pool_args(op, kernel_size, stride, padding, dilation=1):
    k = _pair(kernel_size, "kernel_size", op)
    s = k if stride is None or stride == [] or stride == () else _pair(stride, "stride", op)
    p = _pair(padding, "padding", op)
    d = _pair(dilation, "dilation", op)
    _check_positive(op, kernel_size=k, stride=s, dilation=d)
    return k, s, p, d


def _check_pool_input(op, x, k, p, d=(1, 1)):
    """PyTorch's rules: 0 ≤ padding ≤ half the kernel size, and the window fits the padded input."""
    if not (0 <= p[0] <= k[0] // 2 and 0 <= p[1] <= k[1] // 2):
        raise ValueError(f"{op}: padding {p} must be between 0 and half the kernel size "
                         f"({k[0] // 2}, {k[1] // 2}) for kernel {k}")
    H, W = x.shape[-2:]
    ek = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
    if ek[0] > H + 2 * p[0] or ek[1] > W + 2 * p[1]:
        raise ValueError(f"{op}: kernel {k} (spanning {ek[0]}x{ek[1]}) is larger than the padded input "
                         f"{H + 2 * p[0]}x{W + 2 * p[1]} (input {H}x{W}, padding {p}); use a smaller kernel")


class _AvgPool(Function):
    """What the average poolings share: their arguments, and the divisor along one dim.

    ``_counts(n, k, s, p, out)``: how many elements each of the ``out`` windows along a dim of size
    n divides by (PyTorch's rule: with count_include_pad the zero padding counts, but not the part
    of a ceil_mode window that hangs past it; without it, only real elements)."""

    def __init__(self, k, s, p, ceil_mode, count_include_pad, divisor_override):
        self.k, self.s, self.p = k, s, p
        self.ceil_mode, self.count_include_pad, self.divisor_override = ceil_mode, count_include_pad, divisor_override

    def _counts(self, n, k, s, p, out):
        start = np.arange(out) * s - p
        end = np.minimum(start + k, n + p)          # windows stop at the end of the padding
        if self.count_include_pad:
            return end - start
        return np.minimum(end, n) - np.maximum(start, 0)


class AvgPool2d(_AvgPool):
    """Mean over each k×k window: a shift-and-add over the k·k kernel offsets, divided per window.

    The divisor follows PyTorch: with count_include_pad it counts the zero padding
    but not the part of a ceil_mode window that hangs past the padding; without it,
    only real pixels. It factors as rows(i) · cols(j). Backward spreads g/divisor
    back over each window (the same slices, added in reverse)."""

    def forward(self, x):
        xp = get_array_module(x)
        (kh, kw), (sh, sw), (ph, pw) = self.k, self.s, self.p
        H, W = x.shape[-2:]
        Ho = _out_size(H, kh, sh, ph, ph, 1, self.ceil_mode)
        Wo = _out_size(W, kw, sw, pw, pw, 1, self.ceil_mode)
        # Pad enough zeros for the last (ceil_mode) window too.
        self.pads = (ph, max(0, (Ho - 1) * sh + kh - H - ph), pw, max(0, (Wo - 1) * sw + kw - W - pw))
        xpad = _pad_hw(x, self.pads)
        self.pad_shape = xpad.shape
        y = xp.zeros(x.shape[:-2] + (Ho, Wo), dtype=x.dtype)
        for i in range(kh):
            for j in range(kw):
                y += xpad[..., _window(i, 1, sh, Ho), _window(j, 1, sw, Wo)]
        if self.divisor_override:
            div = np.full((Ho, Wo), float(self.divisor_override))
        else:
            div = np.outer(self._counts(H, kh, sh, ph, Ho), self._counts(W, kw, sw, pw, Wo))
        self.inv_div = xp.asarray(1.0 / div, dtype=x.dtype)           # (Ho, Wo)
        return y * self.inv_div

    def backward(self, gy):
        xp = get_array_module(gy)
        (kh, kw), (sh, sw) = self.k, self.s
        Ho, Wo = gy.shape[-2:]
        g = gy * self.inv_div
        gpad = xp.zeros(self.pad_shape, dtype=gy.dtype)
        for i in range(kh):
            for j in range(kw):
                add_into(gpad[..., _window(i, 1, sh, Ho), _window(j, 1, sw, Wo)], g)
        return _unpad_hw(gpad, self.pads)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,  # noqa: A002
               divisor_override=None):
    """``torch.nn.functional.avg_pool2d``; stride defaults to kernel_size."""
    k, s, p, _ = _pool_args("avg_pool2d", kernel_size, stride, padding)

    def run(x):
        _check_pool_input("avg_pool2d", x, k, p)
        return AvgPool2d(k, s, p, ceil_mode, count_include_pad, divisor_override)(x)
    return _batched("avg_pool2d", input, run)


class MaxPool2d(Function):
    """Max over each (dilated) window, by a running max over the k·k kernel offsets.

    A strict ``>`` keeps the first maximum in window order (row by row), which
    is the element PyTorch picks and the one that gets the whole gradient.
    (A dilated window that falls wholly in the padding gives −inf, as in PyTorch.)
    Backward: offset t's slice gets g where t was the winner."""

    def __init__(self, k, s, p, d, ceil_mode):
        self.k, self.s, self.p, self.d, self.ceil_mode = k, s, p, d, ceil_mode

    def forward(self, x):
        xp = get_array_module(x)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.k, self.s, self.p, self.d
        H, W = x.shape[-2:]
        Ho = _out_size(H, kh, sh, ph, ph, dh, self.ceil_mode)
        Wo = _out_size(W, kw, sw, pw, pw, dw, self.ceil_mode)
        self.compiled = fused_cpu.pool_layout_fits(x)
        if self.compiled:               # float32 on the CPU: one C loop each way, in x's layout, no padded copy
            y, self.arg = fused_cpu.max_pool_forward(x, (Ho, Wo), self.k, self.s, self.p, self.d)
            self.x_shape = x.shape
            return y
        self.pads = (ph, max(0, (Ho - 1) * sh + dh * (kh - 1) + 1 - H - ph),
                     pw, max(0, (Wo - 1) * sw + dw * (kw - 1) + 1 - W - pw))
        xpad = _pad_hw(x, self.pads, value=-np.inf)   # padding never wins
        self.pad_shape = xpad.shape
        y = None
        for t in range(kh * kw):
            v = xpad[..., _window(t // kw, dh, sh, Ho), _window(t % kw, dw, sw, Wo)]
            if y is None:
                y, self.arg = v.copy(), xp.zeros(v.shape, dtype=np.int32)   # arg: winning offset
            else:
                better = v > y
                y = xp.where(better, v, y)
                # (copyto, not arg[better] = t: CuPy's boolean-mask assignment counts the
                # Trues on the host, a GPU sync per kernel offset)
                xp.copyto(self.arg, t, where=better)
        return y

    def backward(self, gy):
        if self.compiled:
            return fused_cpu.max_pool_backward(gy, self.arg, self.x_shape, self.k, self.s, self.p, self.d)
        xp = get_array_module(gy)
        (kh, kw), (sh, sw), (dh, dw) = self.k, self.s, self.d
        Ho, Wo = gy.shape[-2:]
        gpad = xp.zeros(self.pad_shape, dtype=gy.dtype)
        zero = gy.dtype.type(0)
        for t in range(kh * kw):
            add_into(gpad[..., _window(t // kw, dh, sh, Ho), _window(t % kw, dw, sw, Wo)], xp.where(self.arg == t, gy, zero))
        return _unpad_hw(gpad, self.pads)

    def indices(self, W):
        """Flat index h·W + w into each (unpadded) input plane of every max, as PyTorch's return_indices."""
        xp = get_array_module(self.arg)
        (kw, (sh, sw), (ph, pw), (dh, dw)) = self.k[1], self.s, self.p, self.d
        Ho, Wo = self.arg.shape[-2:]
        row = xp.arange(Ho).reshape(-1, 1) * sh - ph + (self.arg // kw) * dh
        col = xp.arange(Wo) * sw - pw + (self.arg % kw) * dw
        return (row * W + col).astype(np.int64)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,  # noqa: A002
               return_indices=False):
    """``torch.nn.functional.max_pool2d``; stride defaults to kernel_size. With return_indices,
    also the flat (h·W + w) index of every max, as a tensor outside the graph."""
    k, s, p, d = _pool_args("max_pool2d", kernel_size, stride, padding, dilation)
    op = MaxPool2d(k, s, p, d, ceil_mode)

    def run(x):
        _check_pool_input("max_pool2d", x, k, p, d)
        return op(x)
    y = _batched("max_pool2d", input, run)
    if not return_indices:
        return y
    idx = op.indices(input.shape[-1])
    return y, Tensor(idx[0] if input.ndim == 3 else idx)


# =========================================================================== separable linear maps
class Separable2d(Function):
    """y = A_h @ x @ A_wᵀ on the last two dims, for fixed matrices A_h (H_out, H), A_w (W_out, W).

    Each output pixel is Σ_ab A_h[i, a] · A_w[j, b] · x[a, b]: a weighted sum
    whose weights factor by row and column. Linear in x, so backward applies the
    transposes: ∂L/∂x = A_hᵀ @ g @ A_w."""

    def __init__(self, ah, aw):
        self.ah, self.aw = ah, aw          # host float64 matrices; moved and cast in forward

    def forward(self, x):
        xp = get_array_module(x)
        self.ah = xp.asarray(self.ah, dtype=x.dtype)
        self.aw = xp.asarray(self.aw, dtype=x.dtype)
        return self.ah @ x @ self.aw.T

    def backward(self, gy):
        return self.ah.T @ gy @ self.aw


def _adaptive_matrix(n, out):
    """Row i averages input [⌊i·n/out⌋, ⌈(i+1)·n/out⌉): PyTorch's adaptive bins (they may overlap)."""
    a = np.zeros((out, n))
    for i in range(out):
        start, end = (i * n) // out, -(-((i + 1) * n) // out)
        a[i, start:end] = 1.0 / (end - start)
    return a


def adaptive_avg_pool2d(input, output_size):  # noqa: A002
    """``torch.nn.functional.adaptive_avg_pool2d``: output_size an int or a pair; None keeps that dim."""
    def run(x):
        H, W = x.shape[-2:]
        size = (output_size, output_size) if not isinstance(output_size, (tuple, list)) else tuple(output_size)
        if len(size) != 2:
            raise ValueError(f"adaptive_avg_pool2d: output_size must be an int or a pair, got {output_size!r}")
        oh, ow = (H if size[0] is None else int(size[0])), (W if size[1] is None else int(size[1]))
        if oh < 1 or ow < 1:
            raise ValueError(f"adaptive_avg_pool2d: output_size must be positive, got {output_size!r}")
        if H < 1 or W < 1:
            raise ValueError(f"adaptive_avg_pool2d: input has an empty spatial dim, shape {tuple(x.shape)}")
        return Separable2d(_adaptive_matrix(H, oh), _adaptive_matrix(W, ow))(x)
    return _batched("adaptive_avg_pool2d", input, run)


# =========================================================================== pad
class ConstantPad(Function):
    """Constant padding of the trailing dims; a negative amount crops. Backward crops (or zero-pads) back."""

    def __init__(self, widths, value):
        self.widths, self.value = widths, value     # [(before, after)] for every dim

    def forward(self, x):
        xp = get_array_module(x)
        crop = tuple(slice(max(-lo, 0), n - max(-hi, 0)) for (lo, hi), n in zip(self.widths, x.shape))
        grow = [(max(lo, 0), max(hi, 0)) for lo, hi in self.widths]
        self.shape, self.crop, self.grow = x.shape, crop, grow
        y = x[crop]
        return xp.pad(y, grow, mode="constant", constant_values=self.value) if any(map(any, grow)) else y.copy()

    def backward(self, gy):
        xp = get_array_module(gy)
        g = gy[tuple(slice(lo, gy.shape[i] - hi) for i, (lo, hi) in enumerate(self.grow))]
        gx = xp.zeros(self.shape, dtype=gy.dtype)
        gx[self.crop] = g
        return gx


class IndexPad(Function):
    """reflect / replicate / circular padding: along each padded dim the output is
    x.take(idx) for an index array idx; backward adds each gradient back onto
    the index it came from (an index appears several times near the edges)."""

    def __init__(self, index_by_dim):
        self.index_by_dim = index_by_dim            # {dim: host index array}

    def forward(self, x):
        xp = get_array_module(x)
        self.shape = x.shape
        for dim, idx in self.index_by_dim.items():
            x = xp.take(x, xp.asarray(idx), axis=dim)
        return x

    def backward(self, gy):
        xp = get_array_module(gy)
        g = gy
        for dim, idx in reversed(list(self.index_by_dim.items())):
            shape = list(g.shape)
            shape[dim] = self.shape[dim]
            gx = xp.zeros(shape, dtype=g.dtype)
            backend.scatter_add(xp.moveaxis(gx, dim, 0), xp.asarray(idx), xp.moveaxis(g, dim, 0))
            g = gx
        return g


_NP_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad(input, pad, mode="constant", value=None):  # noqa: A002
    """``torch.nn.functional.pad``: pad = (left, right, top, bottom, ...) for the last dim first.

    mode 'constant' (fill ``value``, default 0; negative amounts crop), 'reflect',
    'replicate' or 'circular'."""
    pad = tuple(int(p) for p in pad)
    if len(pad) % 2 or len(pad) // 2 > input.ndim:
        raise ValueError(f"pad: the pad tuple needs an even length of at most 2 × ndim = {2 * input.ndim} "
                         f"(left, right, top, bottom, ... for the last dims first), got {pad}")
    nd = len(pad) // 2
    widths = [(0, 0)] * input.ndim
    for i in range(nd):                          # pad[2i:2i+2] pads dim -(i+1)
        widths[input.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    if mode == "constant":
        for (lo, hi), n in zip(widths, input.shape):
            if n + lo + hi < 0 or (lo < 0 and -lo > n) or (hi < 0 and -hi > n):
                raise ValueError(f"pad: cropping by {(lo, hi)} is more than the dim's size {n}")
        return ConstantPad(widths, 0.0 if value is None else value)(input)
    if mode not in _NP_MODES:
        raise ValueError(f"pad: mode must be 'constant', 'reflect', 'replicate' or 'circular', got {mode!r}")
    if value not in (None, 0, 0.0):
        raise ValueError(f"pad: value is only used by mode='constant', got value={value} with mode={mode!r}")
    index_by_dim = {}
    for dim, (lo, hi) in enumerate(widths):
        if lo == hi == 0:
            continue
        n = input.shape[dim]
        if lo < 0 or hi < 0:
            raise ValueError(f"pad: negative padding {(lo, hi)} is only supported in mode='constant'")
        if mode == "reflect" and max(lo, hi) >= n:
            raise ValueError(f"pad: reflect padding {(lo, hi)} must be smaller than the dim's size {n}")
        if mode == "circular" and max(lo, hi) > n:
            raise ValueError(f"pad: circular padding {(lo, hi)} must be at most the dim's size {n}")
        if n == 0:
            raise ValueError(f"pad: cannot {mode}-pad an empty dim (shape {tuple(input.shape)})")
        index_by_dim[dim] = np.pad(np.arange(n), (lo, hi), mode=_NP_MODES[mode])
    return IndexPad(index_by_dim)(input)


# =========================================================================== interpolate
def _source_scale(n, out, align_corners, scale_factor):
    """PyTorch's area_pixel_compute_scale: input pixels per output pixel."""
    if align_corners:
        return (n - 1) / (out - 1) if out > 1 else 0.0
    return 1.0 / scale_factor if scale_factor is not None and scale_factor > 0 else n / out


def _linear_matrix(n, out, align_corners, scale_factor):
    """Bilinear weights along one dim: output i sits at input coordinate
    src = scale·i (align_corners) or scale·(i + ½) − ½ (pixel centres, clamped at 0),
    and mixes its two neighbours ⌊src⌋ and ⌊src⌋+1 by distance."""
    if out == n:                     # PyTorch copies when the size is unchanged
        return np.eye(n)
    scale = _source_scale(n, out, align_corners, scale_factor)
    a = np.zeros((out, n))
    for i in range(out):
        src = scale * i if align_corners else max(scale * (i + 0.5) - 0.5, 0.0)
        i0 = min(int(src), n - 1)
        i1 = min(i0 + 1, n - 1)
        frac = src - i0
        a[i, i0] += 1.0 - frac
        a[i, i1] += frac
    return a


def _cubic_matrix(n, out, align_corners, scale_factor, A=-0.75):
    """Bicubic (Keys' cubic convolution, a = −0.75 as PyTorch) along one dim:
    four taps ⌊src⌋−1 … ⌊src⌋+2, indices clamped to the border."""
    scale = _source_scale(n, out, align_corners, scale_factor)

    def near(t):   # |t| ≤ 1
        return ((A + 2) * t - (A + 3)) * t * t + 1

    def far(t):    # 1 < |t| < 2
        return ((A * t - 5 * A) * t + 8 * A) * t - 4 * A

    a = np.zeros((out, n))
    for i in range(out):
        src = scale * i if align_corners else scale * (i + 0.5) - 0.5
        i0 = math.floor(src)
        t = src - i0
        for tap, wt in zip(range(i0 - 1, i0 + 3), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            a[i, min(max(tap, 0), n - 1)] += wt
    return a


def _nearest_matrix(n, out, align_corners, scale_factor):
    """Nearest ('nearest' as PyTorch, not 'nearest-exact'): output i copies input ⌊i·scale⌋."""
    if out == n:                     # PyTorch copies when the size is unchanged
        return np.eye(n)
    scale = np.float32(_source_scale(n, out, False, scale_factor))  # PyTorch computes it in float32
    a = np.zeros((out, n))
    for i in range(out):
        a[i, min(int(np.float32(i) * scale), n - 1)] = 1.0
    return a


def _triangle(x):
    return max(0.0, 1.0 - abs(x))


def _keys_cubic(x, A=-0.5):
    """Keys' cubic kernel; PyTorch's antialiased bicubic (like PIL) uses a = −0.5."""
    x = abs(x)
    if x < 1:
        return ((A + 2) * x - (A + 3)) * x * x + 1
    return (((x - 5) * x + 8) * x - 4) * A if x < 2 else 0.0


def _antialias_matrix(n, out, align_corners, scale_factor, kernel, taps):
    """Antialiased resizing (PyTorch's antialias=True, PIL's resampling) along one dim.

    When shrinking by s > 1 the filter is stretched s times, so every input
    pixel contributes (no aliasing); each row is normalised to sum to 1.
    Output i is centred on input coordinate s·(i + ½)."""
    scale = _source_scale(n, out, align_corners, scale_factor)
    support = taps / 2 * max(scale, 1.0)
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    a = np.zeros((out, n))
    for i in range(out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n)
        w = np.array([kernel((j - center + 0.5) * inv) for j in range(lo, hi)])
        a[i, lo:hi] = w / w.sum() if w.sum() != 0 else w
    return a


_INTERP = {"nearest": _nearest_matrix, "bilinear": _linear_matrix, "bicubic": _cubic_matrix}
_ANTIALIAS = {"bilinear": (_triangle, 2), "bicubic": (_keys_cubic, 4)}


def resize_matrix(n: int, out: int, mode: str = "bilinear", antialias: bool = False, align_corners: bool = False):
    """The (out, n) float64 matrix A with which ``interpolate(x, size=...)`` resizes one dim of
    n pixels to out (y = A x along that dim): for resizing arrays outside the graph, such as
    image batches in the data pipeline (``minivit.data.resize_images``)."""
    if antialias:
        kernel, taps = _ANTIALIAS[mode]
        return _antialias_matrix(n, out, align_corners, None, kernel, taps)
    return _INTERP[mode](n, out, align_corners, None)


class SeparableNd(Function):
    """y = x ×₁ A₁ ×₂ A₂ … ×ₙ Aₙ on the last n dims (n = 3 for volumes): Separable2d with one
    fixed matrix A_i (out_i, in_i) per spatial dim. Each output element is a weighted sum of
    input elements whose weight factors by dim. Linear in x, so backward applies the
    transposes in the same way: ∂L/∂x = g ×₁ A₁ᵀ … ×ₙ Aₙᵀ."""

    def __init__(self, mats):
        self.mats = mats                   # host float64 matrices; moved and cast in forward

    @staticmethod
    def _apply(x, mats):
        xp = get_array_module(x)
        lead = x.ndim - len(mats)
        for a in mats:   # contract the first spatial dim; its new one goes last, so after n the order is back
            x = xp.tensordot(x, a, axes=([lead], [1]))
        return x

    def forward(self, x):
        xp = get_array_module(x)
        self.mats = [xp.asarray(a, dtype=x.dtype) for a in self.mats]
        return self._apply(x, self.mats)

    def backward(self, gy):
        return self._apply(gy, [a.T for a in self.mats])


def _interpolate_3d(input, size, scale_factor, mode, align_corners, recompute_scale_factor):  # noqa: A002
    """interpolate's 5-D case: 'nearest' or 'trilinear', one 1-D matrix per dim (SeparableNd)."""
    if mode not in ("nearest", "trilinear"):
        raise ValueError(f"interpolate: a 5-D (N, C, D, H, W) input takes mode 'nearest' or 'trilinear', got "
                         f"{mode!r}")
    if align_corners is not None and mode != "trilinear":
        raise ValueError(f"interpolate: align_corners only applies to 'trilinear' on 5-D input, not {mode!r}")
    spatial = tuple(input.shape[2:])

    def triple(v, name):
        if isinstance(v, (tuple, list)):
            if len(v) != 3:
                raise ValueError(f"interpolate: {name} for a 5-D input must be a number or 3 numbers, got {v!r}")
            return tuple(v)
        return (v, v, v)
    if size is not None:
        out = tuple(int(v) for v in triple(size, "size"))
        scales = (None, None, None)
    else:
        scales = tuple(float(v) for v in triple(scale_factor, "scale_factor"))
        out = tuple(int(math.floor(n * f)) for n, f in zip(spatial, scales))
        if recompute_scale_factor:
            scales = (None, None, None)
    if min(out) < 1:
        raise ValueError(f"interpolate: output size must be positive, got {out} from input {spatial}")
    make = _nearest_matrix if mode == "nearest" else _linear_matrix
    return SeparableNd([make(n, o, bool(align_corners), f) for n, o, f in zip(spatial, out, scales)])(input)


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,  # noqa: A002
                recompute_scale_factor=None, antialias=False):
    """``torch.nn.functional.interpolate`` for 4-D input, modes 'nearest', 'bilinear', 'bicubic'
    and 'area' (= adaptive_avg_pool2d), and for 5-D input (N, C, D, H, W), modes 'nearest' and
    'trilinear'; give exactly one of size and scale_factor.
    antialias=True (bilinear, bicubic) is what timm uses to resize position embeddings."""
    if input.ndim == 5:
        if antialias:
            raise ValueError("interpolate: antialias=True needs a 4-D input and mode 'bilinear' or 'bicubic'")
        if (size is None) == (scale_factor is None):
            raise ValueError("interpolate: give exactly one of size and scale_factor")
        return _interpolate_3d(input, size, scale_factor, mode, align_corners, recompute_scale_factor)
    if input.ndim != 4:
        raise ValueError(f"interpolate: expected a 4-D (N, C, H, W) or 5-D (N, C, D, H, W) input, got shape "
                         f"{tuple(input.shape)}; add a batch dim with x.unsqueeze(0)")
    if mode == "trilinear":
        raise ValueError(f"interpolate: mode 'trilinear' needs a 5-D (N, C, D, H, W) input, got shape "
                         f"{tuple(input.shape)}; use 'bilinear' for images")
    if mode not in _INTERP and mode != "area":
        raise ValueError(f"interpolate: mode must be one of {sorted(_INTERP) + ['area']}, got {mode!r}")
    if antialias and mode not in _ANTIALIAS:
        raise ValueError(f"interpolate: antialias=True needs mode 'bilinear' or 'bicubic', got {mode!r}")
    if align_corners is not None and mode not in ("bilinear", "bicubic"):
        raise ValueError(f"interpolate: align_corners only applies to 'bilinear' and 'bicubic', not {mode!r}")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    H, W = input.shape[-2:]
    if size is not None:
        oh, ow = _pair(size, "size", "interpolate")
        scales = (None, None)
    else:
        scales = tuple(float(v) for v in (scale_factor if isinstance(scale_factor, (tuple, list))
                                           else (scale_factor, scale_factor)))
        oh, ow = int(math.floor(H * scales[0])), int(math.floor(W * scales[1]))
        if recompute_scale_factor:
            scales = (None, None)
    if oh < 1 or ow < 1:
        raise ValueError(f"interpolate: output size must be positive, got {(oh, ow)} from input {H}x{W}")
    if mode == "area":
        return adaptive_avg_pool2d(input, (oh, ow))
    ac = bool(align_corners)
    if antialias:
        kernel, taps = _ANTIALIAS[mode]
        ah = _antialias_matrix(H, oh, ac, scales[0], kernel, taps)
        aw = _antialias_matrix(W, ow, ac, scales[1], kernel, taps)
    else:
        ah, aw = _INTERP[mode](H, oh, ac, scales[0]), _INTERP[mode](W, ow, ac, scales[1])
    return Separable2d(ah, aw)(input)
