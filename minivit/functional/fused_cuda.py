"""Fused CUDA kernels: the GPU fast paths of softmax, log_softmax, layer_norm, batch_norm, GELU,
cross-entropy, col2im, dropout masks and AdamW.

Why. On the GPU every CuPy operation is a kernel launch (a few microseconds of Python and
driver time) and a full pass over memory. The readable reference code of these ops is a
chain of such operations: a layer norm is about ten, a softmax five, GELU six, and AdamW
ten per parameter, for some 150 parameters a step. Here each of them is one kernel that
reads its inputs once and writes its outputs once (a layer norm's backward: one for ∂x
and the partial sums of ∂w and ∂b over row chunks, then one for the sums over the chunks).

What. Each kernel computes what the reference code beside its op computes: the same
formulas, with the operations in the same order and compiled without contracting
``a·b + c`` into fused multiply-adds (``--fmad=false``), so each rounding is the
reference's. Results still differ in the last bits where a sum is taken in a different
order (the row sums here go through warp shuffles); pointwise results (GELU, AdamW) are
expected to be equal. tests/test_fused_cuda.py holds every kernel to its reference.

* softmax / log_softmax over the last axis, forward and backward (``softmax_forward``,
  ``softmax_backward``): one warp per row (eight rows a block) up to 1024 elements a
  row, a whole block per longer row; the row max is subtracted first, as in the
  reference, so ``exp`` never overflows. An optional ``scale`` (attention's c) is applied
  to each input on the way in (forward) and to each output (backward), and an optional
  additive ``bias`` (attention's mask) after the scale; backward can write dS beside c·dS.
* layer norm forward (y, and the per-row mean and 1/σ for backward, as PyTorch keeps)
  and backward (∂x row by row; ∂w and ∂b as column sums over row chunks, coalesced; for rows of at most
  1024 both in one launch, different blocks doing each).
* batch norm in training (``batch_norm_forward``, ``batch_norm_backward``): one block per
  channel; forward computes the statistics, y and the running statistics' update in one kernel
  (the reference: about thirteen operations), backward the channel's sums, ∂w, ∂b and ∂x in one.
* GELU, exact (erf) and tanh forms: forward writes y alone; backward recomputes the
  derivative from x in the same pass that multiplies it by the incoming gradient.
* cross-entropy with class indices (``class_nll_forward``, ``class_nll_backward``): the
  target distribution (label smoothing, class weights, ignored and out-of-range labels)
  computed where it is used instead of built as an (M, C) array.
* col2im (``col2im``): a conv's input gradient from its column gradients, one thread a
  pixel gathering its taps in the reference loop's order, in the input's memory layout.
* depthwise conv (``depthwise_conv_forward``, ``depthwise_conv_backward``): one thread an output
  element forward, one an input pixel for ∂x, the filter and bias gradients as partial sums over
  chunks of positions; no im2col columns.
* dropout's keep mask from the uniforms (``keep_mask``).
* AdamW: the whole update of one parameter (decay, both moments, amsgrad's max, the
  bias-corrected step), in place, as one pass.

Switches. ``MINIVIT_FUSED=0`` in the environment (read at import), or
``fused_cuda.enabled = False`` (or ``with fused_cuda.use_fused(False):``) at run time,
sends every op to its reference code on the GPU too. Per op: the ``fast_path`` class
attribute of Softmax, LogSoftmax, LayerNorm and GELU, and AdamW's ``fused`` argument.
The CPU never runs these kernels.

CuPy is reached only through :mod:`minivit.backend`, and nothing compiles before a kernel
is first called on the GPU, so this module imports (and stays unused) without CuPy.
Only float32 and float64 arrays take the fast paths (``applies``); others (float16)
run the reference.
"""
from __future__ import annotations

import functools
import math
import os
import sys

import numpy as np

from minivit import backend

enabled = os.environ.get("MINIVIT_FUSED", "1") != "0"
"""Whether ops on the GPU use these kernels (the default), or their reference code."""


def use_fused(on: bool):
    """Switch the fused kernels on or off inside a ``with`` block (tests compare the two)."""
    return backend.switched(sys.modules[__name__], "enabled", on)


def applies(*arrays) -> bool:
    """True when the fused kernels should take these arrays: switched on, every array a
    CuPy array, all of one dtype, float32 or float64."""
    if not enabled:
        return False
    dtype = arrays[0].dtype
    return dtype.char in "fd" and all(backend.is_cupy_array(a) and a.dtype == dtype for a in arrays)


# No a·b + c → fma contraction: every product and sum rounds as in the reference code,
# where each is a separate CuPy operation. (The kernels are memory-bound: FMAs would
# not make them faster.)
_OPTIONS = ("--fmad=false",)
_CTYPES = {"f": "float", "d": "double"}


# =========================================================================== row kernels (CUDA C)
# A row of D elements is handled either by one warp (block (32, 8): eight rows a block) or,
# when D > 1024, by a whole block (block (256 or 1024, 1)). Either way threadIdx.x walks
# along the row with stride blockDim.x (coalesced), and the reductions below return the
# row's total to every thread of the row. T (float or double) is typedef'd in front.
_ROW_COMMON = r"""
#define NEG_INF ((T)(-__int_as_float(0x7f800000)))

// Butterfly reductions: every lane ends with the same total (a + b == b + a exactly).
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ T warp_max(T v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v = fmax(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// The sum over the threads of one row, returned to each of them. With a warp per row the
// shuffles are all; with a block per row (blockDim.y == 1) the warps' partial sums meet in
// buf (32 T's of shared memory) and every warp adds them up itself. blockDim.x is the same
// for the whole block, so the early return and the __syncthreads are taken by all threads.
__device__ __forceinline__ T row_sum(T v, T* buf) {
    v = warp_sum(v);
    if (blockDim.x == 32) return v;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();                      // buf is free: the previous reduction has read it
    if (lane == 0) buf[warp] = v;
    __syncthreads();
    return warp_sum(lane < (int)(blockDim.x >> 5) ? buf[lane] : (T)0);
}

__device__ __forceinline__ T row_max(T v, T* buf) {
    v = warp_max(v);
    if (blockDim.x == 32) return v;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) buf[warp] = v;
    __syncthreads();
    return warp_max(lane < (int)(blockDim.x >> 5) ? buf[lane] : NEG_INF);
}

// The row this thread works on; rows past the end (the last block's spare warps) return.
// A warp (or, with a block per row, the whole block) leaves together, before any shuffle.
#define ROW_OR_RETURN(M)                                                         \
    const long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y;     \
    if (row >= (M)) return;
"""

_ROW_KERNELS = r"""
// y = softmax(scale*x [+ bias]) over each row (log_softmax != 0: y = log_softmax(...)); x, y (M, D).
// As the reference: v = scale*x (attention's c*QK^T; 1 elsewhere, which leaves x exact), then
// v + bias (attention's additive mask, rounded after the product as `s *= c; s + mask` round);
// m = max(v); e = exp(v - m); y = e / sum(e)  (or (v - m) - log sum(e)).
// bias: bias_rows rows of D, row r of x taking bias row r % bias_rows (a mask broadcast over the
// leading dims, e.g. Swin's (nW, h, N, N) over the images); bias_rows == 0: no bias (not read).
extern "C" __global__ void softmax_forward(const T* __restrict__ x, T* __restrict__ y,
                                           const long long M, const int D, const int log_softmax,
                                           const T scale, const T* __restrict__ bias,
                                           const long long bias_rows) {
    __shared__ T buf[32];
    ROW_OR_RETURN(M)
    const T* xr = x + row * D;
    T* yr = y + row * D;
    T m = NEG_INF;
    const T* br = bias_rows ? bias + (row % bias_rows) * D : (const T*)0;
#define SCORE(j) (br ? xr[j] * scale + br[j] : xr[j] * scale)
    for (int j = threadIdx.x; j < D; j += blockDim.x) m = fmax(m, SCORE(j));
    m = row_max(m, buf);
    T s = 0;
    for (int j = threadIdx.x; j < D; j += blockDim.x) s += exp(SCORE(j) - m);
    s = row_sum(s, buf);
    if (log_softmax) {
        const T lse = log(s);
        for (int j = threadIdx.x; j < D; j += blockDim.x) yr[j] = (SCORE(j) - m) - lse;
    } else {
        for (int j = threadIdx.x; j < D; j += blockDim.x) yr[j] = exp(SCORE(j) - m) / s;
    }
#undef SCORE
}

// Vector-Jacobian products, y the forward's output, times scale (attention's c; else 1):
//   softmax:      gx = (gy*y - y*sum(gy*y)) * scale
//   log_softmax:  gx = (gy - exp(y)*sum(gy)) * scale
// With write_unscaled, gu receives the product before the scale too (attention with a learned
// bias needs dS for the bias and c*dS for Q and K: the reference's `ds` and `ds * c`).
extern "C" __global__ void softmax_backward(const T* __restrict__ gy, const T* __restrict__ y,
                                            T* __restrict__ gx, T* __restrict__ gu,
                                            const long long M, const int D, const int log_softmax,
                                            const T scale, const int write_unscaled) {
    __shared__ T buf[32];
    ROW_OR_RETURN(M)
    const T* gr = gy + row * D;
    const T* yr = y + row * D;
    T* gxr = gx + row * D;
    T* gur = gu + row * D;
    T s = 0;
    if (log_softmax) {
        for (int j = threadIdx.x; j < D; j += blockDim.x) s += gr[j];
    } else {
        for (int j = threadIdx.x; j < D; j += blockDim.x) s += gr[j] * yr[j];
    }
    s = row_sum(s, buf);
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        const T t = log_softmax ? gr[j] - exp(yr[j]) * s : gr[j] * yr[j] - yr[j] * s;
        gxr[j] = t * scale;
        if (write_unscaled) gur[j] = t;
    }
}

// Layer norm of each row of x (M, D): mu = sum(x)/D, var = sum((x - mu)^2)/D (biased),
// rstd = 1/sqrt(var + eps), y = (x - mu)*rstd [*w] [+b]; mean and rstd (M,) kept for backward.
extern "C" __global__ void layer_norm_forward(const T* __restrict__ x, const T* __restrict__ w,
                                              const T* __restrict__ b, T* __restrict__ y,
                                              T* __restrict__ mean, T* __restrict__ rstd,
                                              const long long M, const int D, const T eps,
                                              const int has_w, const int has_b) {
    __shared__ T buf[32];
    ROW_OR_RETURN(M)
    const T* xr = x + row * D;
    T* yr = y + row * D;
    T s = 0;
    for (int j = threadIdx.x; j < D; j += blockDim.x) s += xr[j];
    const T mu = row_sum(s, buf) / (T)D;
    T q = 0;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        const T c = xr[j] - mu;
        q += c * c;
    }
    const T var = row_sum(q, buf) / (T)D;
    const T r = (T)1 / sqrt(var + eps);
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        T v = (xr[j] - mu) * r;
        if (has_w) v = v * w[j];
        if (has_b) v = v + b[j];
        yr[j] = v;
    }
    if (threadIdx.x == 0) {
        mean[row] = mu;
        rstd[row] = r;
    }
}

// Input gradient of layer norm, row by row, with g' = gy*w (or gy) and xhat = (x - mu)*rstd:
//   gx = ((g' - mean(g')) - xhat*mean(g'*xhat)) * rstd
// Rows of block `blk` (as ROW_OR_RETURN: blk * blockDim.y + threadIdx.y).
__device__ __forceinline__ void ln_input_grad(const T* __restrict__ gy, const T* __restrict__ x,
                                              const T* __restrict__ w, const T* __restrict__ mean,
                                              const T* __restrict__ rstd, T* __restrict__ gx,
                                              const long long M, const int D, const int has_w,
                                              const long long blk) {
    __shared__ T buf[32];
    const long long row = blk * blockDim.y + threadIdx.y;
    if (row >= M) return;
    const T* gr = gy + row * D;
    const T* xr = x + row * D;
    T* gxr = gx + row * D;
    const T mu = mean[row], r = rstd[row];
    T sg = 0, sgx = 0;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        const T g = has_w ? gr[j] * w[j] : gr[j];
        sg += g;
        sgx += g * ((xr[j] - mu) * r);
    }
    const T mean_g = row_sum(sg, buf) / (T)D;
    const T mean_gx = row_sum(sgx, buf) / (T)D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        const T g = has_w ? gr[j] * w[j] : gr[j];
        const T xhat = (xr[j] - mu) * r;
        gxr[j] = ((g - mean_g) - xhat * mean_gx) * r;
    }
}

extern "C" __global__ void layer_norm_backward(const T* __restrict__ gy, const T* __restrict__ x,
                                               const T* __restrict__ w, const T* __restrict__ mean,
                                               const T* __restrict__ rstd, T* __restrict__ gx,
                                               const long long M, const int D, const int has_w) {
    ln_input_grad(gy, x, w, mean, rstd, gx, M, D, has_w, blockIdx.x);
}

// Parameter gradients of layer norm, as column sums over the rows: gw = sum(gy*xhat),
// gb = sum(gy). Block (32, 8): threadIdx.x picks a column of the 32-column tile `tile`,
// so a warp reads 32 neighbouring elements; threadIdx.y strides down the rows of chunk
// `chunk`. One partial sum per (chunk, column) goes to part_w / part_b (chunks, D),
// added up over the chunks afterwards: no atomics, so the result is deterministic.
__device__ __forceinline__ void ln_param_partials(const T* __restrict__ gy, const T* __restrict__ x,
                                                  const T* __restrict__ mean, const T* __restrict__ rstd,
                                                  T* __restrict__ part_w, T* __restrict__ part_b,
                                                  const long long M, const int D,
                                                  const long long rows_per_chunk,
                                                  const long long tile, const long long chunk) {
    __shared__ T sw[8][32], sb[8][32];
    const int j = (int)tile * 32 + threadIdx.x;
    const long long start = chunk * rows_per_chunk;
    const long long end = start + rows_per_chunk < M ? start + rows_per_chunk : M;
    T aw = 0, ab = 0;
    if (j < D) {
        for (long long i = start + threadIdx.y; i < end; i += 8) {
            const T g = gy[i * D + j];
            aw += g * ((x[i * D + j] - mean[i]) * rstd[i]);
            ab += g;
        }
    }
    sw[threadIdx.y][threadIdx.x] = aw;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && j < D) {
        for (int k = 1; k < 8; ++k) {
            aw += sw[k][threadIdx.x];
            ab += sb[k][threadIdx.x];
        }
        part_w[chunk * D + j] = aw;
        part_b[chunk * D + j] = ab;
    }
}

extern "C" __global__ void layer_norm_param_grads(const T* __restrict__ gy, const T* __restrict__ x,
                                                  const T* __restrict__ mean, const T* __restrict__ rstd,
                                                  T* __restrict__ part_w, T* __restrict__ part_b,
                                                  const long long M, const int D,
                                                  const long long rows_per_chunk) {
    ln_param_partials(gy, x, mean, rstd, part_w, part_b, M, D, rows_per_chunk, blockIdx.x, blockIdx.y);
}

// Both in one launch, for rows of at most 1024 (a warp a row, block (32, 8) as both use): blocks
// [0, row_blocks) do layer_norm_backward's eight rows each, block row_blocks + p the partial sums
// of tile p % tiles, chunk p / tiles. The two kinds read the same inputs and write different
// outputs, so no block waits for another; each computes exactly what its own kernel computes.
extern "C" __global__ void layer_norm_backward_all(const T* __restrict__ gy, const T* __restrict__ x,
                                                   const T* __restrict__ w, const T* __restrict__ mean,
                                                   const T* __restrict__ rstd, T* __restrict__ gx,
                                                   T* __restrict__ part_w, T* __restrict__ part_b,
                                                   const long long M, const int D, const int has_w,
                                                   const long long row_blocks, const long long rows_per_chunk) {
    const long long b = blockIdx.x;
    if (b < row_blocks) {
        ln_input_grad(gy, x, w, mean, rstd, gx, M, D, has_w, b);
    } else {
        const long long tiles = (D + 31) / 32, p = b - row_blocks;
        ln_param_partials(gy, x, mean, rstd, part_w, part_b, M, D, rows_per_chunk, p % tiles, p / tiles);
    }
}

// BatchNorm in training, x seen as (N, C, S) (S: the pixels of a channel, 1 for (N, C)): one block
// per channel c = blockIdx.x, its threads striding over the channel's n = N*S elements, element j
// at ((j / S)*C + c)*S + j % S. As the reference: mu = sum(x)/n, var = sum((x - mu)^2)/n (biased),
// rstd = 1/sqrt(var + eps), y = (x - mu)*rstd [*w] [+b]; mean, rstd (C,) kept for backward, var (C,)
// returned. With has_running, the running statistics are updated here too, in the reference's
// order: rm = rm*keep + m*mu, rv = rv*keep + m_unbiased*var (keep = 1 - momentum, m_unbiased =
// momentum*n/(n - 1), both computed on the host as the reference computes them).
extern "C" __global__ void batch_norm_forward(const T* __restrict__ x, const T* __restrict__ w,
                                              const T* __restrict__ b, T* __restrict__ y,
                                              T* __restrict__ mean, T* __restrict__ rstd, T* __restrict__ var_out,
                                              T* __restrict__ running_mean, T* __restrict__ running_var,
                                              const long long N, const int C, const long long S, const T eps,
                                              const int has_w, const int has_b, const int has_running,
                                              const T keep, const T m, const T m_unbiased) {
    __shared__ T buf[32];
    const int c = blockIdx.x;
    const long long n = N * S;
    T s = 0;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) s += x[((j / S) * C + c) * S + j % S];
    const T mu = row_sum(s, buf) / (T)n;
    T q = 0;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        const T d = x[((j / S) * C + c) * S + j % S] - mu;
        q += d * d;
    }
    const T var = row_sum(q, buf) / (T)n;
    const T r = (T)1 / sqrt(var + eps);
    const T wc = has_w ? w[c] : (T)1, bc = has_b ? b[c] : (T)0;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        const long long i = ((j / S) * C + c) * S + j % S;
        T v = (x[i] - mu) * r;
        if (has_w) v = v * wc;
        if (has_b) v = v + bc;
        y[i] = v;
    }
    if (threadIdx.x == 0) {
        mean[c] = mu;
        rstd[c] = r;
        var_out[c] = var;
        if (has_running) {
            running_mean[c] = running_mean[c] * keep + m * mu;
            running_var[c] = running_var[c] * keep + m_unbiased * var;
        }
    }
}

// Gradients of BatchNorm in training, one block per channel as above, xhat = (x - mu)*rstd:
//   gw = sum(gy*xhat), gb = sum(gy)   (the channel's sums, one value each: no partial sums)
//   gx = ((g' - mean(g')) - xhat*mean(g'*xhat))*rstd,  g' = gy*w   (the reference's formula)
extern "C" __global__ void batch_norm_backward(const T* __restrict__ gy, const T* __restrict__ x,
                                               const T* __restrict__ w, const T* __restrict__ mean,
                                               const T* __restrict__ rstd, T* __restrict__ gx,
                                               T* __restrict__ gw, T* __restrict__ gb,
                                               const long long N, const int C, const long long S,
                                               const int has_w, const int need_x) {
    __shared__ T buf[32];
    const int c = blockIdx.x;
    const long long n = N * S;
    const T mu = mean[c], r = rstd[c], wc = has_w ? w[c] : (T)1;
    T sg = 0, sgx = 0, sgw = 0, sgwx = 0;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        const long long i = ((j / S) * C + c) * S + j % S;
        const T g = gy[i];
        const T xhat = (x[i] - mu) * r;
        const T gp = has_w ? g * wc : g;
        sg += g;
        sgx += g * xhat;
        sgw += gp;
        sgwx += gp * xhat;
    }
    const T sum_g = row_sum(sg, buf);
    const T sum_gx = row_sum(sgx, buf);
    const T mean_g = row_sum(sgw, buf) / (T)n;
    const T mean_gx = row_sum(sgwx, buf) / (T)n;
    if (threadIdx.x == 0) {
        gw[c] = sum_gx;
        gb[c] = sum_g;
    }
    if (!need_x) return;
    for (long long j = threadIdx.x; j < n; j += blockDim.x) {
        const long long i = ((j / S) * C + c) * S + j % S;
        const T gp = has_w ? gy[i] * wc : gy[i];
        const T xhat = (x[i] - mu) * r;
        gx[i] = ((gp - mean_g) - xhat * mean_gx) * r;
    }
}

// ---------------------------------------------------------------- depthwise conv (groups = C)
// y[n, c, ho, wo] = b[c] + sum_{a, bb} x[n, c, ho*sh - pt + a*dh, wo*sw - pl + bb*dw] * w[c, a, bb],
// taps outside the input skipped (zero padding). A map (N, C, H, W) is read and written in
// either layout: NCHW (cl = 0) or channels-last (N, H, W, C) in memory (cl = 1), which is how
// tokens (B, H*W, C) viewed as a map lie. Grid-stride loops: any grid covers the work.
__device__ __forceinline__ long long map_at(int cl, long long n, int c, int y, int x, int C, int H, int W) {
    return cl ? ((n * H + y) * W + x) * C + c : ((n * C + c) * H + y) * W + x;
}

// One thread an output element, y channels-last (N, Ho, Wo, C); taps in the order (a, bb).
extern "C" __global__ void depthwise_forward(const T* __restrict__ x, const T* __restrict__ w,
                                             const T* __restrict__ b, T* __restrict__ y,
                                             const long long N, const int C, const int H, const int W,
                                             const int Ho, const int Wo, const int kh, const int kw,
                                             const int sh, const int sw, const int dh, const int dw,
                                             const int pt, const int pl, const int x_cl, const int has_b) {
    const long long total = N * Ho * Wo * C;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(i % C);
        long long r = i / C;
        const int wo = (int)(r % Wo);
        r /= Wo;
        const int ho = (int)(r % Ho);
        const long long n = r / Ho;
        T s = 0;
        for (int a = 0; a < kh; ++a) {
            const int yy = ho * sh - pt + a * dh;
            if (yy < 0 || yy >= H) continue;
            for (int bb = 0; bb < kw; ++bb) {
                const int xx = wo * sw - pl + bb * dw;
                if (xx < 0 || xx >= W) continue;
                s += x[map_at(x_cl, n, c, yy, xx, C, H, W)] * w[(c * kh + a) * kw + bb];
            }
        }
        y[i] = has_b ? s + b[c] : s;
    }
}

// dL/dx: one thread an input pixel (in x's layout) gathers the outputs whose taps read it:
// the tap (a, bb) of output (ty/sh, tx/sw) with ty = y + pt - a*dh, tx = x + pl - bb*dw.
extern "C" __global__ void depthwise_input_grad(const T* __restrict__ g, const T* __restrict__ w,
                                                T* __restrict__ gx,
                                                const long long N, const int C, const int H, const int W,
                                                const int Ho, const int Wo, const int kh, const int kw,
                                                const int sh, const int sw, const int dh, const int dw,
                                                const int pt, const int pl, const int g_cl, const int x_cl) {
    const long long total = N * C * H * W;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        int c, y, x;
        long long n, r = i;
        if (x_cl) {
            c = (int)(r % C); r /= C; x = (int)(r % W); r /= W; y = (int)(r % H); n = r / H;
        } else {
            x = (int)(r % W); r /= W; y = (int)(r % H); r /= H; c = (int)(r % C); n = r / C;
        }
        T s = 0;
        for (int a = 0; a < kh; ++a) {
            const int ty = y + pt - a * dh;
            if (ty < 0 || ty % sh != 0 || ty / sh >= Ho) continue;
            for (int bb = 0; bb < kw; ++bb) {
                const int tx = x + pl - bb * dw;
                if (tx < 0 || tx % sw != 0 || tx / sw >= Wo) continue;
                s += g[map_at(g_cl, n, c, ty / sh, tx / sw, C, Ho, Wo)] * w[(c * kh + a) * kw + bb];
            }
        }
        gx[i] = s;
    }
}

// dL/dw and dL/db as partial sums over chunks of the N*Ho*Wo output positions:
// part[p, t, c] = sum over the positions l of chunk p (blockIdx.y) of g[l, c] * x[l's tap t, c]
// for the taps t < kh*kw, and of g[l, c] alone for t = kh*kw (the bias; written when
// taps_out = kh*kw + 1). Consecutive threads take consecutive channels: coalesced reads
// of channels-last maps. The caller adds the chunks up.
extern "C" __global__ void depthwise_param_grads(const T* __restrict__ g, const T* __restrict__ x,
                                                 T* __restrict__ part,
                                                 const long long N, const int C, const int H, const int W,
                                                 const int Ho, const int Wo, const int kh, const int kw,
                                                 const int sh, const int sw, const int dh, const int dw,
                                                 const int pt, const int pl, const int g_cl, const int x_cl,
                                                 const long long chunk, const int taps_out) {
    const long long L = N * Ho * Wo;
    const long long lo = (long long)blockIdx.y * chunk;
    const long long hi = lo + chunk < L ? lo + chunk : L;
    const int K = kh * kw;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)taps_out * C;
         i += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(i % C), t = (int)(i / C);
        const int a = t / kw, bb = t % kw;
        T s = 0;
        for (long long l = lo; l < hi; ++l) {
            const int wo = (int)(l % Wo);
            const long long r = l / Wo;
            const int ho = (int)(r % Ho);
            const long long n = r / Ho;
            const T gv = g[map_at(g_cl, n, c, ho, wo, C, Ho, Wo)];
            if (t == K) {
                s += gv;
                continue;
            }
            const int yy = ho * sh - pt + a * dh, xx = wo * sw - pl + bb * dw;
            if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
            s += gv * x[map_at(x_cl, n, c, yy, xx, C, H, W)];
        }
        part[((long long)blockIdx.y * taps_out + t) * C + c] = s;
    }
}
"""

_WARP_ROWS = 8          # rows (one warp each) per 256-thread block
_LONG_ROW = 1024        # rows longer than this get a block each
_PG_MIN_ROWS = 32       # layer_norm_param_grads: at least this many rows per chunk ...
_PG_MAX_CHUNKS = 128    # ... and at most this many chunks (grid.y)


def row_kernel_source(dtype) -> str:
    """The CUDA C of the row kernels for float32 or float64 (one module holds them all)."""
    return f"typedef {_CTYPES[np.dtype(dtype).char]} T;\n" + _ROW_COMMON + _ROW_KERNELS


@functools.lru_cache(maxsize=None)
def _row_kernel(name: str, dtype_char: str):
    return backend.cuda_raw_kernel(row_kernel_source(dtype_char), name, _OPTIONS)


def _row_launch(m: int, d: int):
    """(grid, block) for m rows of d elements: a warp per row, or a block per long row."""
    if d <= _LONG_ROW:
        return ((m + _WARP_ROWS - 1) // _WARP_ROWS,), (32, _WARP_ROWS)
    return (m,), (1024 if d > 8 * _LONG_ROW else 256, 1)


def _rows_of(a):
    """A C-contiguous (M, D) view (or copy) of a, D its last dim."""
    xp = backend.get_array_module(a)
    return xp.ascontiguousarray(a.reshape(-1, a.shape[-1]))


# =========================================================================== softmax
def bias_fits(shape, bias_shape) -> bool:
    """Whether an additive bias of ``bias_shape`` broadcasts over scores of ``shape`` as the softmax
    kernel reads it: after its leading 1s, the trailing dims of ``shape`` (rows repeat over the rest)."""
    b = tuple(bias_shape)
    while len(b) > 1 and b[0] == 1:
        b = b[1:]
    return 1 <= len(b) <= len(shape) and tuple(shape[len(shape) - len(b):]) == b


def softmax_forward(x, log: bool = False, scale: float = 1.0, bias=None):
    """softmax (or, with ``log``, log_softmax) of ``scale``·x [+ ``bias``], x a CuPy array, over its last axis.

    ``scale`` is attention's c = 1/√d, taken inside the kernel instead of by one more pass over the
    scores (``s *= c``): the product is rounded to x's dtype first, as that pass would round it.
    ``bias`` (x's dtype, ``bias_fits(x.shape, bias.shape)``) is attention's additive mask, added
    after the scale as ``s + mask`` would add it: one more pass saved."""
    xp = backend.get_array_module(x)
    if x.size == 0:
        return x.copy()
    x2 = _rows_of(x)
    m, d = x2.shape
    y = xp.empty((m, d), dtype=x.dtype)
    b2, bias_rows = x2, 0                                 # (never read without a bias)
    if bias is not None:
        if bias.dtype != x.dtype or not bias_fits(x.shape, bias.shape):
            raise ValueError(f"softmax_forward: a bias of shape {bias.shape} ({bias.dtype}) does not broadcast "
                             f"as trailing dims over scores {x.shape} ({x.dtype})")
        b2 = _rows_of(bias)
        bias_rows = b2.shape[0]
    grid, block = _row_launch(m, d)
    _row_kernel("softmax_forward", x.dtype.char)(
        grid, block, (x2, y, np.int64(m), np.int32(d), np.int32(bool(log)), x.dtype.type(scale),
                      b2, np.int64(bias_rows)))
    return y.reshape(x.shape)


def softmax_backward(gy, y, log: bool = False, scale: float = 1.0, unscaled: bool = False):
    """∂L/∂x of softmax (or log_softmax) over the last axis, from ∂L/∂y and the output y, times
    ``scale`` (attention's c·dS, which would otherwise be one more pass; 1 leaves it exact).
    With ``unscaled`` returns (c·dS, dS): attention with a learned bias needs both."""
    xp = backend.get_array_module(y)
    if y.size == 0:
        z = xp.zeros(y.shape, dtype=y.dtype)
        return (z, z.copy()) if unscaled else z
    g2 = _rows_of(gy.astype(y.dtype, copy=False))
    y2 = _rows_of(y)
    m, d = y2.shape
    gx = xp.empty((m, d), dtype=y.dtype)
    gu = xp.empty((m, d), dtype=y.dtype) if unscaled else gx       # (not written without unscaled)
    grid, block = _row_launch(m, d)
    _row_kernel("softmax_backward", y.dtype.char)(
        grid, block, (g2, y2, gx, gu, np.int64(m), np.int32(d), np.int32(bool(log)), y.dtype.type(scale),
                      np.int32(bool(unscaled))))
    if unscaled:
        return gx.reshape(y.shape), gu.reshape(y.shape)
    return gx.reshape(y.shape)


# =========================================================================== layer norm
def layer_norm_forward(x2, w, b, eps: float):
    """Layer norm of the rows of x2 (M, D), then ·w + b (each (D,) or None).

    Returns (y (M, D), mean (M,), rstd (M,)), rstd = 1/√(var + eps)."""
    xp = backend.get_array_module(x2)
    x2 = xp.ascontiguousarray(x2)
    m, d = x2.shape
    y = xp.empty((m, d), dtype=x2.dtype)
    mean = xp.empty(m, dtype=x2.dtype)
    rstd = xp.empty(m, dtype=x2.dtype)
    if x2.size == 0:
        return y, mean, rstd
    w_arg = x2 if w is None else xp.ascontiguousarray(w.reshape(d))   # never read when absent
    b_arg = x2 if b is None else xp.ascontiguousarray(b.reshape(d))
    grid, block = _row_launch(m, d)
    _row_kernel("layer_norm_forward", x2.dtype.char)(
        grid, block, (x2, w_arg, b_arg, y, mean, rstd, np.int64(m), np.int32(d),
                      x2.dtype.type(eps), np.int32(w is not None), np.int32(b is not None)))
    return y, mean, rstd


def layer_norm_backward(gy2, x2, w, mean, rstd, need_x=True, need_params=True):
    """Gradients of layer norm from ∂L/∂y (M, D), the input x2 (M, D), the weight (D,) or
    None, and the forward's mean and rstd (M,). Returns (gx, gw, gb): gx is None unless
    ``need_x``; gw and gb (both (D,)) are None unless ``need_params``."""
    xp = backend.get_array_module(x2)
    x2 = xp.ascontiguousarray(x2)
    gy2 = xp.ascontiguousarray(gy2.astype(x2.dtype, copy=False))
    m, d = x2.shape
    gx = gw = gb = None
    if need_x:
        gx = xp.empty((m, d), dtype=x2.dtype)
    if not need_params:
        if gx is not None and gx.size:
            _ln_input_grad(gy2, x2, w, mean, rstd, gx)
        return gx, gw, gb
    if x2.size == 0:
        return gx, xp.zeros(d, dtype=x2.dtype), xp.zeros(d, dtype=x2.dtype)
    chunks = min(_PG_MAX_CHUNKS, -(-m // _PG_MIN_ROWS))
    rows_per_chunk = -(-m // chunks)
    chunks = -(-m // rows_per_chunk)                       # no empty chunk at the end
    part_w = xp.empty((chunks, d), dtype=x2.dtype)
    part_b = xp.empty((chunks, d), dtype=x2.dtype)
    if need_x and d <= _LONG_ROW:                          # ∂x and the partial sums: one launch
        row_blocks = -(-m // _WARP_ROWS)
        w_arg = x2 if w is None else xp.ascontiguousarray(w.reshape(d))
        _row_kernel("layer_norm_backward_all", x2.dtype.char)(
            (row_blocks + -(-d // 32) * chunks,), (32, _WARP_ROWS),
            (gy2, x2, w_arg, mean, rstd, gx, part_w, part_b, np.int64(m), np.int32(d),
             np.int32(w is not None), np.int64(row_blocks), np.int64(rows_per_chunk)))
    else:
        if need_x:
            _ln_input_grad(gy2, x2, w, mean, rstd, gx)
        _row_kernel("layer_norm_param_grads", x2.dtype.char)(
            (-(-d // 32), chunks), (32, 8),
            (gy2, x2, mean, rstd, part_w, part_b, np.int64(m), np.int32(d), np.int64(rows_per_chunk)))
    if chunks == 1:
        return gx, part_w[0], part_b[0]
    gw, gb = xp.empty(d, dtype=x2.dtype), xp.empty(d, dtype=x2.dtype)
    _chunk_sums_kernel()(part_w, part_b, np.int64(chunks), gw, gb)   # both column sums, one launch
    return gx, gw, gb


def _ln_input_grad(gy2, x2, w, mean, rstd, gx):
    """layer_norm_backward's launch: gx (M, D) from gy2, x2 (M, D), w (D,) or None, mean, rstd (M,)."""
    xp = backend.get_array_module(x2)
    m, d = x2.shape
    w_arg = x2 if w is None else xp.ascontiguousarray(w.reshape(d))   # never read when absent
    grid, block = _row_launch(m, d)
    _row_kernel("layer_norm_backward", x2.dtype.char)(
        grid, block, (gy2, x2, w_arg, mean, rstd, gx, np.int64(m), np.int32(d), np.int32(w is not None)))


@functools.lru_cache(maxsize=None)
def _chunk_sums_kernel():
    """gw, gb (D,) = the column sums of pw, pb (chunks, D), added chunk after chunk as
    ``pw.sum(axis=0)`` adds them: one kernel for the two sums that would be two."""
    return backend.cuda_elementwise_kernel(
        "raw T pw, raw T pb, int64 chunks", "T gw, T gb",
        """
        const ptrdiff_t d = _ind.size();
        T sw = pw[i], sb = pb[i];
        for (long long c = 1; c < chunks; ++c) {
            sw += pw[c * d + i];
            sb += pb[c * d + i];
        }
        gw = sw;
        gb = sb;
        """, "minivit_chunk_sums", options=_OPTIONS)


# =========================================================================== batch norm
def _bn_block(n: int) -> int:
    """Threads per channel's block: 1024 for large channels, else 256 (a multiple of 32: row_sum)."""
    return 1024 if n > 65536 else 256


def batch_norm_forward(x, w, b, running_mean, running_var, eps: float, momentum: float):
    """BatchNorm of x (N, C, *) with batch statistics (training), then ·w + b (each (C,) or None).

    Returns (y, mean, rstd, var, updated): y shaped as x, the other three (C,), and whether the
    running statistics were updated in the kernel (only when both are contiguous arrays of x's
    dtype; otherwise the caller updates them from mean and var)."""
    xp = backend.get_array_module(x)
    x = xp.ascontiguousarray(x)
    N, C = x.shape[:2]
    S = x.size // (N * C) if N * C else 0
    n = N * S
    y = xp.empty_like(x)
    mean, rstd, var = (xp.empty(C, dtype=x.dtype) for _ in range(3))
    running = (running_mean is not None and running_var is not None and n > 1
               and all(backend.get_array_module(r) is xp and r.dtype == x.dtype and r.flags.c_contiguous
                       for r in (running_mean, running_var)))
    w_arg = x if w is None else xp.ascontiguousarray(w.reshape(C))        # never read when absent
    b_arg = x if b is None else xp.ascontiguousarray(b.reshape(C))
    rm = running_mean if running else mean
    rv = running_var if running else var
    t = x.dtype.type
    m_unbiased = momentum * n / (n - 1) if n > 1 else 0.0
    _row_kernel("batch_norm_forward", x.dtype.char)(
        (C,), (_bn_block(n), 1),
        (x, w_arg, b_arg, y, mean, rstd, var, rm, rv, np.int64(N), np.int32(C), np.int64(S), t(eps),
         np.int32(w is not None), np.int32(b is not None), np.int32(running),
         t(1 - momentum), t(momentum), t(m_unbiased)))
    return y, mean, rstd, var, running


def batch_norm_backward(gy, x, w, mean, rstd, need_x: bool = True):
    """Gradients of training-mode BatchNorm from ∂L/∂y and x (N, C, *), the weight (C,) or None,
    and the forward's mean and rstd (C,). Returns (gx or None, gw (C,), gb (C,))."""
    xp = backend.get_array_module(x)
    x = xp.ascontiguousarray(x)
    gy = xp.ascontiguousarray(gy.astype(x.dtype, copy=False))
    N, C = x.shape[:2]
    S = x.size // (N * C) if N * C else 0
    gx = xp.empty_like(x) if need_x else None
    gw = xp.empty(C, dtype=x.dtype)
    gb = xp.empty(C, dtype=x.dtype)
    w_arg = x if w is None else xp.ascontiguousarray(w.reshape(C))
    _row_kernel("batch_norm_backward", x.dtype.char)(
        (C,), (_bn_block(N * S), 1),
        (gy, x, w_arg, mean, rstd, x if gx is None else gx, gw, gb, np.int64(N), np.int32(C), np.int64(S),
         np.int32(w is not None), np.int32(need_x)))
    return gx, gw, gb


# =========================================================================== GELU
# Constants as the reference's Python floats, cast to T (as CuPy casts a Python scalar).
_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715

# The order of operations follows GELU.forward / backward in activation.py. Each form has a
# common part (Φ or t), the value and the derivative. Forward writes y only; backward
# recomputes the common part from x. The input x is held by the graph anyway, so this saves
# a whole dy/dx array per GELU (the largest activation of a transformer block, 4C wide)
# for one more read of x: a memory-bound kernel costs the same either way.
_GELU_COMMON = {
    "none": f"const T cdf = (T)0.5 * ((T)1 + erf(x * (T){_SQRT1_2!r}));\n",
    "tanh": f"const T t = tanh((T){_SQRT_2_OVER_PI!r} * (x + (((T){_GELU_C!r} * x) * x) * x));\n",
}
_GELU_VALUE = {
    "none": "y = x * cdf;\n",
    "tanh": "y = ((T)0.5 * x) * ((T)1 + t);\n",
}
_GELU_GRAD = {
    "none": f"gx = gy * (cdf + x * ((T){_INV_SQRT_2PI!r} * exp(((T)-0.5 * x) * x)));\n",
    "tanh": (f"gx = gy * ((T)0.5 * ((T)1 + t) + (((T)0.5 * x) * ((T)1 - t * t))"
             f" * ((T){_SQRT_2_OVER_PI!r} * ((T)1 + ((T){3 * _GELU_C!r} * x) * x)));\n"),
}


@functools.lru_cache(maxsize=None)
def _gelu_kernel(approximate: str, backward: bool):
    common = _GELU_COMMON[approximate]
    if backward:
        return backend.cuda_elementwise_kernel("T gy, T x", "T gx", common + _GELU_GRAD[approximate],
                                               f"minivit_gelu_{approximate}_backward", options=_OPTIONS)
    return backend.cuda_elementwise_kernel("T x", "T y", common + _GELU_VALUE[approximate],
                                           f"minivit_gelu_{approximate}", options=_OPTIONS)


def gelu_forward(x, approximate: str = "none"):
    """gelu(x) for a CuPy array, in one pass; approximate 'none' or 'tanh'."""
    return _gelu_kernel(approximate, False)(x)


def gelu_backward(gy, x, approximate: str = "none"):
    """∂L/∂x = gy · gelu'(x) for CuPy arrays, in one pass (the derivative recomputed from x)."""
    return _gelu_kernel(approximate, True)(gy, x)


# =========================================================================== dropout masks
@functools.lru_cache(maxsize=None)
def _keep_mask_kernel():
    return backend.cuda_elementwise_kernel("float32 u, float32 keep, T scale", "T mask",
                                           "mask = u < keep ? scale : (T)0;", "minivit_keep_mask",
                                           options=_OPTIONS)


def keep_mask(u, keep: float, scale: float, dtype):
    """Dropout's scaled keep mask from float32 uniforms u: scale where u < keep, else 0, in
    ``dtype``; one kernel for the comparison and the cast-and-scale (activation._keep_mask)."""
    xp = backend.get_array_module(u)
    mask = xp.empty(u.shape, dtype=dtype)
    _keep_mask_kernel()(u, np.float32(keep), np.dtype(dtype).type(scale), mask)
    return mask


# =========================================================================== col2im
# A conv's input gradient from its column gradients gcols (C, kh, kw, N, Ho, Wo) (the layout
# of conv.py's (G, Cg, kh, kw, N, Ho, Wo)): the reference adds each kernel offset's slice onto a
# zero-filled padded gradient, kh·kw launches after a fill, then a copy to the input's layout.
# Here one thread per input pixel gathers the taps that read it, in the same (a, b) order as
# that loop (so the sums round alike), skipping the padding, and writes the gradient in the
# input's own memory layout: NCHW, or channels-last (N, H, W, C) when the input was a token
# tensor viewed as an image.
_COL2IM = """
    long long r = i;
    int c, y, x, n;
    if (channels_last) {
        c = (int)(r % C); r /= C; x = (int)(r % W); r /= W; y = (int)(r % H); n = (int)(r / H);
    } else {
        x = (int)(r % W); r /= W; y = (int)(r % H); r /= H; c = (int)(r % C); n = (int)(r / C);
    }
    T s = 0;
    for (int a = 0; a < kh; ++a) {
        const int ty = y + pad_top - a * dh;
        if (ty < 0 || ty % sh != 0 || ty / sh >= Ho) continue;
        for (int b = 0; b < kw; ++b) {
            const int tx = x + pad_left - b * dw;
            if (tx < 0 || tx % sw != 0 || tx / sw >= Wo) continue;
            s += gcols[((((long long)c * kh + a) * kw + b) * N + n) * ((long long)Ho * Wo)
                       + (long long)(ty / sh) * Wo + tx / sw];
        }
    }
    gx = s;
"""


@functools.lru_cache(maxsize=None)
def _col2im_kernel():
    return backend.cuda_elementwise_kernel(
        "raw T gcols, int32 N, int32 C, int32 H, int32 W, int32 kh, int32 kw, int32 sh, int32 sw, "
        "int32 dh, int32 dw, int32 pad_top, int32 pad_left, int32 Ho, int32 Wo, int32 channels_last",
        "T gx", _COL2IM, "minivit_col2im", options=_OPTIONS)


def col2im(gcols, x_shape, out_hw, stride, dilation, pad_top_left, channels_last=False):
    """∂L/∂x (N, C, H, W) of a conv from its column gradients gcols (G, Cg, kh, kw, N, Ho, Wo), in one
    kernel; channels-last in memory (an (N, H, W, C) array, returned as its (N, C, H, W) view) when
    ``channels_last``."""
    xp = backend.get_array_module(gcols)
    N, C, H, W = x_shape
    _, _, kh, kw = gcols.shape[:4]
    gcols = xp.ascontiguousarray(gcols)
    gx = xp.empty((N, H, W, C) if channels_last else (N, C, H, W), dtype=gcols.dtype)
    i32 = np.int32
    _col2im_kernel()(gcols, i32(N), i32(C), i32(H), i32(W), i32(kh), i32(kw), i32(stride[0]), i32(stride[1]),
                     i32(dilation[0]), i32(dilation[1]), i32(pad_top_left[0]), i32(pad_top_left[1]),
                     i32(out_hw[0]), i32(out_hw[1]), i32(bool(channels_last)), gx)
    return gx.transpose(0, 3, 1, 2) if channels_last else gx


# =========================================================================== depthwise conv
# A depthwise conv (groups = C, one filter a channel: PVT v2's Mix-FFN, CvT's projections) through
# im2col is a batched GEMM of one row per channel over columns that hold every input pixel k·k
# times, kept for the backward: on an H200 PVT v2's took 28% of a profiled step and its columns
# the most memory (README, First GPU contact). Here: one thread an output element (forward), one
# an input pixel (∂x, gathering as col2im does), and the filter and bias gradients as partial sums
# over chunks of the output positions (one thread a (tap, channel) and chunk), added up after.
# Maps are read in their own layout, NCHW or channels-last; y is written channels-last.
_DW_THREADS = 256
_DW_PARTIAL_THREADS = 1 << 18       # (tap, channel, chunk) threads to aim for in param_grads


def _map_layout(a):
    """(a C-contiguous array holding a's (N, C, H, W) map, 1 if it is channels-last) — a copy,
    channels-last, only when a is neither NCHW nor channels-last in memory."""
    xp = backend.get_array_module(a)
    cl = a.transpose(0, 2, 3, 1)
    if cl.flags.c_contiguous:
        return cl, 1
    if a.flags.c_contiguous:
        return a, 0
    return xp.ascontiguousarray(cl), 1


def _dw_grid(total: int):
    return (max(1, min(-(-total // _DW_THREADS), 1 << 20)),), (_DW_THREADS,)


def _dw_geometry(x_shape, w_shape, stride, dilation, pads):
    N, C, H, W = x_shape
    kh, kw = w_shape[2:]
    (sh, sw), (dh, dw) = stride, dilation
    top, bottom, left, right = pads
    Ho = (H + top + bottom - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + left + right - dw * (kw - 1) - 1) // sw + 1
    i32 = np.int32
    return (Ho, Wo), (np.int64(N), i32(C), i32(H), i32(W), i32(Ho), i32(Wo), i32(kh), i32(kw), i32(sh), i32(sw),
                      i32(dh), i32(dw), i32(top), i32(left))


def depthwise_conv_forward(x, w, b, stride, dilation, pads):
    """y = depthwise conv of x (N, C, H, W) with w (C, 1, kh, kw) and b (C,) or None, pads (top,
    bottom, left, right): one kernel. Returns (y as the (N, C, Ho, Wo) view of a channels-last
    array, the map x as the kernel read it, its layout flag) — the last two for the backward."""
    xp = backend.get_array_module(x)
    (Ho, Wo), geo = _dw_geometry(x.shape, w.shape, stride, dilation, pads)
    xm, x_cl = _map_layout(x)
    N, C = x.shape[:2]
    y = xp.empty((N, Ho, Wo, C), dtype=x.dtype)
    wc = xp.ascontiguousarray(w)
    grid, block = _dw_grid(y.size)
    _row_kernel("depthwise_forward", x.dtype.char)(
        grid, block, (xm, wc, wc if b is None else xp.ascontiguousarray(b), y) + geo
        + (np.int32(x_cl), np.int32(b is not None)))
    return y.transpose(0, 3, 1, 2), xm, x_cl


def depthwise_conv_backward(gy, xm, x_cl, x_shape, w, stride, dilation, pads, need_x, need_w, need_b):
    """(∂x in x's layout as an (N, C, H, W) view, or None; ∂w (C, 1, kh, kw) or None; ∂b (C,) or
    None) of depthwise_conv_forward, from gy (N, C, Ho, Wo) and what the forward returned."""
    xp = backend.get_array_module(gy)
    (Ho, Wo), geo = _dw_geometry(x_shape, w.shape, stride, dilation, pads)
    N, C, H, W = x_shape
    kh, kw = w.shape[2:]
    g, g_cl = _map_layout(gy.astype(w.dtype, copy=False))
    wc = xp.ascontiguousarray(w)
    gx = gw = gb = None
    if need_x:
        gx = xp.empty((N, H, W, C) if x_cl else (N, C, H, W), dtype=w.dtype)
        grid, block = _dw_grid(gx.size)
        _row_kernel("depthwise_input_grad", w.dtype.char)(
            grid, block, (g, wc, gx) + geo + (np.int32(g_cl), np.int32(x_cl)))
        gx = gx.transpose(0, 3, 1, 2) if x_cl else gx
    if need_b and not need_w:                                             # frozen filter: a plain sum
        gb = g.sum(axis=(0, 1, 2) if g_cl else (0, 2, 3))
    elif need_w:
        K = kh * kw
        taps_out = K + 1 if need_b else K
        L = N * Ho * Wo
        chunks = max(1, min(L, 1024, _DW_PARTIAL_THREADS // (taps_out * C)))
        chunk = -(-L // chunks)
        chunks = -(-L // chunk)
        part = xp.empty((chunks, taps_out, C), dtype=w.dtype)
        grid, block = _dw_grid(taps_out * C)                              # grid.y: the chunks
        _row_kernel("depthwise_param_grads", w.dtype.char)(
            grid + (chunks,), block,
            (g, xm, part) + geo + (np.int32(g_cl), np.int32(x_cl), np.int64(chunk), np.int32(taps_out)))
        sums = part.sum(axis=0)                                           # (taps_out, C)
        gw = xp.ascontiguousarray(sums[:K].T).reshape(C, 1, kh, kw)
        if need_b:
            gb = sums[K]
    return gx, gw, gb


# =========================================================================== cross-entropy
# With class indices t, the target distribution of row n is Q_nc = ((1 − ε)·[c = t_n] + ε/C)·w_c
# (w_c = 1 without class weights), a zero row where t_n is ignore_index, and a NaN row where t_n is
# outside [0, C) (the reference marks those rows the same way: see loss.py). The reference builds
# Q as an (M, C) array in about ten operations; these two kernels compute its entries where they
# are used. Forward, one thread a row over the log-probabilities (M, C): the row's loss
# −Σ_c Q_nc·logp_nc, its weight in the mean's denominator (w_{t_n}, 1, or 0 if ignored) and
# Σ_c Q_nc, which backward needs. Backward, one thread an element:
# ∂x_nc = (p_nc·Σ_k Q_nk − Q_nc)·g_n  (log_softmax's input), or −Q_nc·g_n (log-probabilities given).
_CLASS_Q = """
    const bool keep = y != ignore_index;
    const bool bad = keep && (y < 0 || y >= C);
"""
_CLASS_NLL_FORWARD = """
    const ptrdiff_t n = i;
    const long long y = t;
""" + _CLASS_Q + """
    if (!keep) {
        loss = 0; weight = 0; qsum = 0;
    } else if (bad) {
        loss = (T)nan(""); weight = 1; qsum = (T)nan("");
    } else {
        T s = 0, l = 0;
        for (int c = 0; c < C; ++c) {
            T q = (c == y ? one_minus_eps : (T)0) + eps_over_c;
            if (has_w) q = q * w[c];
            s += q;
            l += q * logp[n * C + c];
        }
        loss = -l;
        weight = has_w ? w[y] : (T)1;
        qsum = s;
    }
"""
_CLASS_NLL_BACKWARD = """
    const ptrdiff_t n = i / C;
    const int c = (int)(i - n * C);
    const long long y = t[n];
""" + _CLASS_Q + """
    T q = (c == y ? one_minus_eps : (T)0) + eps_over_c;
    if (has_w) q = q * w[c];
    if (!keep) q = 0;
    if (bad) q = (T)nan("");
    T g = gy_per_row ? gy[n] : gy[0];
    if (mean) g = g / denom[0];
    gx = from_logits ? (exp(logp) * qsum[n] - q) * g : -q * g;
"""


@functools.lru_cache(maxsize=None)
def _class_nll_kernel(backward: bool):
    if backward:
        return backend.cuda_elementwise_kernel(
            "T logp, raw I t, raw T w, raw T qsum, raw T gy, raw T denom, int32 C, T one_minus_eps, "
            "T eps_over_c, int32 has_w, int64 ignore_index, int32 gy_per_row, int32 mean, int32 from_logits",
            "T gx", _CLASS_NLL_BACKWARD, "minivit_class_nll_backward", options=_OPTIONS)
    return backend.cuda_elementwise_kernel(
        "raw T logp, I t, raw T w, int32 C, T one_minus_eps, T eps_over_c, int32 has_w, int64 ignore_index",
        "T loss, T weight, T qsum", _CLASS_NLL_FORWARD, "minivit_class_nll",
        options=_OPTIONS)


def class_nll_forward(logp, t, w, eps: float, ignore_index: int):
    """Per-row cross-entropy terms of log-probabilities logp (M, C) against class indices t (M,),
    class weights w (C,) or None and label smoothing eps, in one kernel. Returns (lw, qsum): lw
    (2, M) holds each row's loss −Σ_c Q_nc·logp_nc and its weight in the mean's denominator, qsum
    (M,) holds Σ_c Q_nc. Ignored rows are zero; rows with a class outside [0, C) NaN."""
    xp = backend.get_array_module(logp)
    logp = xp.ascontiguousarray(logp)
    m, c = logp.shape
    lw = xp.empty((2, m), dtype=logp.dtype)
    qsum = xp.empty(m, dtype=logp.dtype)
    _class_nll_kernel(False)(logp, t, logp if w is None else w, *_class_nll_scalars(c, eps, logp.dtype.type),
                             np.int32(w is not None), np.int64(ignore_index), lw[0], lw[1], qsum)
    return lw, qsum


def class_nll_backward(gy, logp, t, w, qsum, denom, eps: float, ignore_index: int, from_logits: bool):
    """∂loss/∂x (M, C) for class_nll_forward's rows: x the logits (``from_logits``: logp is their
    log_softmax) or the log-probabilities themselves. gy: the gradient of the per-row losses (M,), or
    of their sum or mean (0-d); denom: the mean's denominator (0-d), or None for a sum or no reduction."""
    m, c = logp.shape
    gy = gy.reshape(-1)                                     # (M,) or (1,): views, as the kernel reads them
    return _class_nll_kernel(True)(
        logp, t, logp if w is None else w, qsum, gy, gy if denom is None else denom.reshape(1),
        *_class_nll_scalars(c, eps, logp.dtype.type), np.int32(w is not None), np.int64(ignore_index),
        np.int32(gy.size != 1), np.int32(denom is not None), np.int32(bool(from_logits)))


def _class_nll_scalars(c, eps, T):
    """C, 1 − ε and ε/C as the reference computes them (Python floats, then cast to T)."""
    return np.int32(c), T(1 - eps), T(eps / c if eps else 0.0)


# =========================================================================== AdamW
# One parameter's update, the steps and their order as AdamW.step (minivit/optim/adamw.py);
# the scalars come from the same Python expressions there, cast to T.
_ADAMW_BODY = """
p = p * decay;
exp_avg = exp_avg * beta1;
exp_avg = exp_avg + one_minus_beta1 * grad;
exp_avg_sq = exp_avg_sq * beta2;
exp_avg_sq = exp_avg_sq + one_minus_beta2 * (grad * grad);
{amsgrad}
T denom = sqrt({v});
denom = denom / sqrt_bias_correction2;
denom = denom + eps;
p = p - step_size * (exp_avg / denom);
"""
# max(max_exp_avg_sq, exp_avg_sq), NaN if either is NaN (as xp.maximum).
_AMSGRAD = ("max_exp_avg_sq = (max_exp_avg_sq >= exp_avg_sq || max_exp_avg_sq != max_exp_avg_sq)"
            " ? max_exp_avg_sq : exp_avg_sq;")
_ADAMW_IN = ("T grad, T decay, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, "
             "T sqrt_bias_correction2, T eps, T step_size")


@functools.lru_cache(maxsize=None)
def _adamw_kernel(amsgrad: bool):
    if amsgrad:
        return backend.cuda_elementwise_kernel(
            _ADAMW_IN, "T p, T exp_avg, T exp_avg_sq, T max_exp_avg_sq",
            _ADAMW_BODY.format(amsgrad=_AMSGRAD, v="max_exp_avg_sq"), "minivit_adamw_amsgrad",
            options=_OPTIONS)
    return backend.cuda_elementwise_kernel(
        _ADAMW_IN, "T p, T exp_avg, T exp_avg_sq", _ADAMW_BODY.format(amsgrad="", v="exp_avg_sq"),
        "minivit_adamw", options=_OPTIONS)


def adamw_step(p, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step: int, lr: float, beta1: float,
               beta2: float, eps: float, weight_decay: float):
    """One AdamW update of the CuPy array p, in place, with its moment buffers (and amsgrad's
    running max, or None); ``step`` is the step number t ≥ 1 after this update's increment."""
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    t = p.dtype.type
    scalars = (t(1 - lr * weight_decay) if weight_decay != 0 else t(1),   # p·1 == p exactly
               t(beta1), t(1 - beta1), t(beta2), t(1 - beta2),
               t(math.sqrt(bias_correction2)), t(eps), t(lr / bias_correction1))
    if max_exp_avg_sq is None:
        _adamw_kernel(False)(grad, *scalars, p, exp_avg, exp_avg_sq)
    else:
        _adamw_kernel(True)(grad, *scalars, p, exp_avg, exp_avg_sq, max_exp_avg_sq)


__all__ = ["enabled", "use_fused", "applies", "bias_fits", "softmax_forward", "softmax_backward",
           "layer_norm_forward", "layer_norm_backward", "batch_norm_forward",
           "batch_norm_backward", "gelu_forward", "gelu_backward", "keep_mask", "col2im", "class_nll_forward",
           "class_nll_backward", "adamw_step"]
