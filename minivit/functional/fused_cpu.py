"""Compiled CPU kernels beside the NumPy reference: exact GELU, layer norm, the depthwise conv and
max pooling, each one pass.

The CPU twin of :mod:`minivit.functional.fused_cuda`. A NumPy op is a pass over memory, and
GELU's erf or a layer norm is a chain of them: at batch 64 on two cores they were a quarter of
``pvt_v2_tiny``'s training step (GELU 63 ms, layer norm 41 ms, against PyTorch's 26 and 9). Here each
is a loop in C that reads its input once:

* ``gelu_forward``: y = x·Φ(x) and dy/dx = Φ(x) + x·φ(x) together (backward is then one
  multiply), Φ from the same rational erfc as ``activation._gelu_float32`` and e^(−x²/2) from a
  short polynomial (``mv_exp_neg``), so the compiler can vectorise the loop;
* ``layer_norm_forward`` / ``layer_norm_backward``: a row at a time (mean, variance, normalise and
  scale; backward rebuilds x̂ from x and the row's mean and 1/σ, as the GPU kernels do), the
  parameters' gradients as column sums, one share per thread;
* ``depthwise_conv_forward`` / ``_backward``: channels-last, the padding skipped rather than copied;
* ``max_pool_forward`` / ``_backward``: in the input's own layout (NCHW or channels-last), the winning
  tap kept as ``MaxPool2d`` keeps it.

Float32 only; the work is split over ``backend.get_num_threads()`` threads (ctypes lets go of
the GIL during the call). Each kernel is held equal to the NumPy code by
``tests/test_fused_cpu.py``.

Building. The C source below is compiled once per machine with the system C compiler (``$CC``,
else ``cc``), ``-O3`` and no ``-march``, so the library runs on any CPU of the architecture (with GCC on
x86-64 Linux each kernel is also built for AVX2, and the loader picks the one the CPU runs), into
``$MINIVIT_CACHE`` (default ``~/.cache/minivit``), named by a hash of the source and flags. With no
compiler, or when the build fails, ``available()`` is False, ``status()`` says why, and the ops run
their NumPy code (`python -m minivit.bench` prints which).

Switches. ``MINIVIT_FUSED_CPU=0`` in the environment (read at import), or ``fused_cpu.enabled =
False`` (``with fused_cpu.use_fused(False):``) at run time; per op, the ``fast_path`` attribute of
GELU and LayerNorm and ``Conv2d.depthwise_fast_path`` turn off this and the GPU's kernels together.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from minivit import backend

enabled = os.environ.get("MINIVIT_FUSED_CPU", "1") != "0"
"""Whether CPU ops use these kernels (the default, where they build), or their NumPy code."""


def use_fused(on: bool):
    """Switch the compiled kernels on or off inside a ``with`` block (tests compare the two)."""
    return backend.switched(sys.modules[__name__], "enabled", on)


SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>

/* On x86-64 with GCC each kernel is built twice, for AVX2 and for any x86-64 CPU, and the loader
   picks one (function multi-versioning); elsewhere once, for the compiler's default target. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define MV_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MV_CLONES
#endif

/* e^t for −87 < t <= 0 (Cephes' expf: t = k·ln2 + r, |r| <= ln2/2, e^r by a degree-7 polynomial,
   2^k by the exponent bits). No branches, so loops that call it vectorise. */
static inline float mv_exp_neg(float t) {
    int32_t ki = (int32_t)(0.5f - t * 1.44269504088896341f);        /* k = −ki = round(t/ln2) */
    float k = -(float)ki;
    float r = (t - k * 0.693359375f) - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f; p = p * r + 8.3334519073e-3f; p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f; p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = (127 - ki) << 23;
    float s;
    memcpy(&s, &bits, 4);
    return p * s;
}

static inline float mv_min_nonneg(float a, float b) {     /* min of a >= 0 (NaN: b) and b >= 0 */
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    int32_t im = ia < ib ? ia : ib;                          /* non-negative floats order as their bits */
    float m;
    memcpy(&m, &im, 4);
    return m;
}

/* ½·erfc(z) = e^(−z²)·½P(z)/Q(z), z = |x|/√2 (activation._gelu_float32's fit), and Φ(x) from it.
   Past z = 9.3 (x < −13.15) e^(−z²) leaves float32's normal range and is taken as 0: then Φ = 0
   below, 1 above, and ±inf and NaN give what the NumPy code gives. The selects are written so that
   GCC vectorises the loop for AVX2 too (fminf, or a float clamp by ?:, kept it scalar there). */
#define MV_GELU_BODY                                                                     \
    float xi = x[i];                                                                     \
    float z = fabsf(xi) * 0.70710678118654752f;                                          \
    float inside = z < 9.3f ? 1.0f : 0.0f;                                               \
    float zc = mv_min_nonneg(z, 9.3f);                                                   \
    float e = mv_exp_neg(-(zc * zc)) * inside;                                           \
    float p = (((0.015881495f * zc + 0.11213406f) * zc + 0.36059175f) * zc + 0.61420886f) * zc + 0.5f; \
    float q = ((((0.05629755f * zc + 0.39753655f) * zc + 1.30592114f) * zc + 2.38053688f) * zc \
               + 2.35679736f) * zc + 1.0f;                                               \
    float half_erfc = e * (p / q);                                                       \
    float neg = xi < 0.0f ? 1.0f : 0.0f;                                                 \
    float cdf = (1.0f - neg) + (neg + neg - 1.0f) * half_erfc;      /* ½erfc or 1 − ½erfc, exactly */ \
    y[i] = xi * cdf;

MV_CLONES
void mv_gelu_forward(const float *restrict x, float *restrict y, float *restrict dydx, int64_t n) {
    if (dydx) {
        for (int64_t i = 0; i < n; i++) {
            MV_GELU_BODY
            dydx[i] = cdf + xi * (e * 0.39894228040143268f);              /* Φ + x·φ */
        }
    } else {
        for (int64_t i = 0; i < n; i++) {
            MV_GELU_BODY
        }
    }
}

/* Sums of a row in eight lanes (vectorised without reassociating the compiler's own sums). */
static inline float mv_sum(const float *restrict r, int64_t d) {
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= d; j += 8)
        for (int k = 0; k < 8; k++) a[k] += r[j + k];
    float s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (; j < d; j++) s += r[j];
    return s;
}

static inline float mv_sum_sq_dev(const float *restrict r, float mu, int64_t d) {
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= d; j += 8)
        for (int k = 0; k < 8; k++) { float c = r[j + k] - mu; a[k] += c * c; }
    float s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (; j < d; j++) { float c = r[j] - mu; s += c * c; }
    return s;
}

/* Rows [0, m) of x (m, d): y = (x − μ)·(1/σ)·w + b, μ and 1/σ kept per row (w, b may be NULL). */
MV_CLONES
void mv_layer_norm_forward(const float *restrict x, const float *restrict w, const float *restrict b,
                           float *restrict y, float *restrict mean, float *restrict rstd,
                           int64_t m, int64_t d, float eps) {
    for (int64_t i = 0; i < m; i++) {
        const float *xr = x + i * d;
        float *yr = y + i * d;
        float mu = mv_sum(xr, d) / (float)d;
        float var = mv_sum_sq_dev(xr, mu, d) / (float)d;                  /* biased, as PyTorch */
        float r = 1.0f / sqrtf(var + eps);
        mean[i] = mu;
        rstd[i] = r;
        if (w && b)      for (int64_t j = 0; j < d; j++) yr[j] = ((xr[j] - mu) * r) * w[j] + b[j];
        else if (w)      for (int64_t j = 0; j < d; j++) yr[j] = ((xr[j] - mu) * r) * w[j];
        else if (b)      for (int64_t j = 0; j < d; j++) yr[j] = ((xr[j] - mu) * r) + b[j];
        else             for (int64_t j = 0; j < d; j++) yr[j] = (xr[j] - mu) * r;
    }
}

/* Backward over rows [0, m): x̂ = (x − μ)/σ, g' = g·w,
   ∂x = (1/σ)(g' − mean(g') − x̂·mean(g'·x̂)); gw += g·x̂ and gb += g over the rows (either may be
   NULL; so may gx). gp is a scratch row of d floats. */
MV_CLONES
void mv_layer_norm_backward(const float *restrict g, const float *restrict x, const float *restrict w,
                            const float *restrict mean, const float *restrict rstd,
                            float *restrict gx, float *restrict gw, float *restrict gb,
                            float *restrict gp, float *restrict xh, int64_t m, int64_t d) {
    for (int64_t i = 0; i < m; i++) {
        const float *gr = g + i * d, *xr = x + i * d;
        float mu = mean[i], r = rstd[i];
        for (int64_t j = 0; j < d; j++) xh[j] = (xr[j] - mu) * r;
        if (gw) for (int64_t j = 0; j < d; j++) gw[j] += gr[j] * xh[j];
        if (gb) for (int64_t j = 0; j < d; j++) gb[j] += gr[j];
        if (!gx) continue;
        if (w) for (int64_t j = 0; j < d; j++) gp[j] = gr[j] * w[j];
        else   memcpy(gp, gr, (size_t)d * sizeof(float));
        float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t j = 0;
        for (; j + 8 <= d; j += 8)
            for (int k = 0; k < 8; k++) a[k] += gp[j + k] * xh[j + k];
        float s2 = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
        for (; j < d; j++) s2 += gp[j] * xh[j];
        float mean_g = mv_sum(gp, d) / (float)d, mean_gx = s2 / (float)d;
        float *out = gx + i * d;
        for (int64_t j = 0; j < d; j++) out[j] = ((gp[j] - mean_g) - xh[j] * mean_gx) * r;
    }
}

/* Depthwise conv, channels-last: x (n, H, W, C), taps (kh, kw, C), y (n, Ho, Wo, C);
   y[h, w, c] = b[c] + Σ_ij x[h·sh + i·dh − top, w·sw + j·dw − left, c] · taps[i, j, c] over the taps
   that fall inside x (outside is the zero padding). The loops over c run along memory. */
MV_CLONES
void mv_depthwise_forward(const float *restrict x, const float *restrict taps, const float *restrict b,
                          float *restrict y, int64_t n, int64_t H, int64_t W, int64_t C, int64_t Ho,
                          int64_t Wo, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh,
                          int64_t dw, int64_t top, int64_t left) {
    for (int64_t m = 0; m < n; m++)
        for (int64_t ho = 0; ho < Ho; ho++)
            for (int64_t wo = 0; wo < Wo; wo++) {
                float *yr = y + ((m * Ho + ho) * Wo + wo) * C;
                if (b) memcpy(yr, b, (size_t)C * sizeof(float));
                else   memset(yr, 0, (size_t)C * sizeof(float));
                for (int64_t i = 0; i < kh; i++) {
                    int64_t hi = ho * sh + i * dh - top;
                    if (hi < 0 || hi >= H) continue;
                    for (int64_t j = 0; j < kw; j++) {
                        int64_t wi = wo * sw + j * dw - left;
                        if (wi < 0 || wi >= W) continue;
                        const float *xr = x + ((m * H + hi) * W + wi) * C, *t = taps + (i * kw + j) * C;
                        for (int64_t c = 0; c < C; c++) yr[c] += xr[c] * t[c];
                    }
                }
            }
}

/* Its backward for images [0, n): gx = every output's gradient sent back along the taps that read
   it (gx zeroed first); gw[i, j, c] += g·x over those taps, gb[c] += g (any of the three may be NULL). */
MV_CLONES
void mv_depthwise_backward(const float *restrict g, const float *restrict x, const float *restrict taps,
                           float *restrict gx, float *restrict gw, float *restrict gb, int64_t n, int64_t H,
                           int64_t W, int64_t C, int64_t Ho, int64_t Wo, int64_t kh, int64_t kw, int64_t sh,
                           int64_t sw, int64_t dh, int64_t dw, int64_t top, int64_t left) {
    if (gx) memset(gx, 0, (size_t)(n * H * W * C) * sizeof(float));
    for (int64_t m = 0; m < n; m++)
        for (int64_t ho = 0; ho < Ho; ho++)
            for (int64_t wo = 0; wo < Wo; wo++) {
                const float *gr = g + ((m * Ho + ho) * Wo + wo) * C;
                if (gb) for (int64_t c = 0; c < C; c++) gb[c] += gr[c];
                for (int64_t i = 0; i < kh; i++) {
                    int64_t hi = ho * sh + i * dh - top;
                    if (hi < 0 || hi >= H) continue;
                    for (int64_t j = 0; j < kw; j++) {
                        int64_t wi = wo * sw + j * dw - left;
                        if (wi < 0 || wi >= W) continue;
                        int64_t at = ((m * H + hi) * W + wi) * C;
                        if (gx) {
                            const float *t = taps + (i * kw + j) * C;
                            float *gxr = gx + at;
                            for (int64_t c = 0; c < C; c++) gxr[c] += gr[c] * t[c];
                        }
                        if (gw) {
                            const float *xr = x + at;
                            float *gwr = gw + (i * kw + j) * C;
                            for (int64_t c = 0; c < C; c++) gwr[c] += gr[c] * xr[c];
                        }
                    }
                }
            }
}

/* Max pooling over (dilated) windows, any memory layout: x (n, C, H, W) read through its element
   strides xs[4], y and arg (n, C, Ho, Wo) written through ys[4]; the loop over channels is innermost
   (stride 1 for channels-last memory, where it vectorises). Taps outside x are the −inf padding: the
   first tap starts the max (−inf when it is padding), a later one wins only when strictly greater, so
   the first maximum in window order wins, as in PyTorch; arg is the winning tap's index i·kw + j. */
MV_CLONES
void mv_max_pool_forward(const float *restrict x, float *restrict y, int32_t *restrict arg, int64_t n,
                         int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo, const int64_t *xs,
                         const int64_t *ys, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                         int64_t pw, int64_t dh, int64_t dw) {
    for (int64_t m = 0; m < n; m++)
        for (int64_t ho = 0; ho < Ho; ho++)
            for (int64_t wo = 0; wo < Wo; wo++) {
                float *yr = y + m * ys[0] + ho * ys[2] + wo * ys[3];
                int32_t *ar = arg + m * ys[0] + ho * ys[2] + wo * ys[3];
                for (int64_t c = 0; c < C; c++) { yr[c * ys[1]] = -INFINITY; ar[c * ys[1]] = 0; }
                for (int64_t i = 0; i < kh; i++) {
                    int64_t hi = ho * sh - ph + i * dh;
                    if (hi < 0 || hi >= H) continue;
                    for (int64_t j = 0; j < kw; j++) {
                        int64_t wi = wo * sw - pw + j * dw;
                        if (wi < 0 || wi >= W) continue;
                        const float *xr = x + m * xs[0] + hi * xs[2] + wi * xs[3];
                        int32_t t = (int32_t)(i * kw + j);
                        if (t == 0) {
                            for (int64_t c = 0; c < C; c++) yr[c * ys[1]] = xr[c * xs[1]];
                        } else {
                            for (int64_t c = 0; c < C; c++) {
                                float v = xr[c * xs[1]];
                                int better = v > yr[c * ys[1]];
                                yr[c * ys[1]] = better ? v : yr[c * ys[1]];
                                ar[c * ys[1]] = better ? t : ar[c * ys[1]];
                            }
                        }
                    }
                }
            }
}

/* Its backward: each output's gradient g (read through ys) added onto the input position of its winning
   tap in gx (zeroed first; written through xs); a window that lay wholly in the padding sends nothing. */
MV_CLONES
void mv_max_pool_backward(const float *restrict g, const int32_t *restrict arg, float *restrict gx,
                          int64_t n, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                          const int64_t *xs, const int64_t *ys, int64_t gx_size, int64_t kh, int64_t kw,
                          int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
    memset(gx, 0, (size_t)gx_size * sizeof(float));
    for (int64_t m = 0; m < n; m++)
        for (int64_t ho = 0; ho < Ho; ho++)
            for (int64_t wo = 0; wo < Wo; wo++)
                for (int64_t c = 0; c < C; c++) {
                    int64_t at = m * ys[0] + c * ys[1] + ho * ys[2] + wo * ys[3];
                    int32_t t = arg[at];
                    int64_t hi = ho * sh - ph + (t / kw) * dh, wi = wo * sw - pw + (t % kw) * dw;
                    if (hi < 0 || hi >= H || wi < 0 || wi >= W) continue;
                    gx[m * xs[0] + c * xs[1] + hi * xs[2] + wi * xs[3]] += g[at];
                }
}
"""

# Not -ffast-math: NaN and inf go through as in NumPy, and no sum is reordered behind our back.
FLAGS = ("-O3", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math")


def _cache_dir() -> Path:
    return Path(os.environ.get("MINIVIT_CACHE") or Path.home() / ".cache" / "minivit")


_build = {"status": None}


@functools.lru_cache(maxsize=None)
def _library():
    """The compiled kernels (a ctypes CDLL), built on first use; None where they cannot be."""
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        _build["status"] = f"off: no C compiler ({cc!r} not found; set CC)"
        return None
    key = hashlib.sha256((SOURCE + " ".join(FLAGS) + cc).encode()).hexdigest()[:16]
    path = _cache_dir() / f"fused_cpu-{key}.so"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                src, out = Path(tmp) / "fused_cpu.c", Path(tmp) / "fused_cpu.so"
                src.write_text(SOURCE)
                done = subprocess.run([cc, *FLAGS, str(src), "-o", str(out), "-lm"], capture_output=True, text=True)
                if done.returncode != 0:
                    _build["status"] = f"off: {cc} failed: {done.stderr.strip().splitlines()[-1:]}"
                    return None
                os.replace(out, path)             # atomic: parallel test workers may build at once
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        _build["status"] = f"off: {e}"
        return None
    P, I = ctypes.c_void_p, ctypes.c_int64
    lib.mv_gelu_forward.argtypes = [P, P, P, I]
    lib.mv_layer_norm_forward.argtypes = [P, P, P, P, P, P, I, I, ctypes.c_float]
    lib.mv_layer_norm_backward.argtypes = [P] * 10 + [I, I]
    lib.mv_depthwise_forward.argtypes = [P] * 4 + [I] * 14
    lib.mv_depthwise_backward.argtypes = [P] * 6 + [I] * 14
    lib.mv_max_pool_forward.argtypes = [P] * 3 + [I] * 6 + [P, P] + [I] * 8
    lib.mv_max_pool_backward.argtypes = [P] * 3 + [I] * 6 + [P, P] + [I] * 9
    for f in (lib.mv_gelu_forward, lib.mv_layer_norm_forward, lib.mv_layer_norm_backward,
              lib.mv_depthwise_forward, lib.mv_depthwise_backward, lib.mv_max_pool_forward,
              lib.mv_max_pool_backward):
        f.restype = None
    _build["status"] = f"on ({path})"
    return lib


def available() -> bool:
    """True when the kernels are built (or build now) and load."""
    return _library() is not None


def status() -> str:
    """'on (library path)', 'off: why', or 'switched off' (MINIVIT_FUSED_CPU=0 / ``enabled``)."""
    if not enabled:
        return "switched off"
    available()
    return _build["status"]


def applies(*arrays, any_layout=False) -> bool:
    """True when these kernels should take these arrays: switched on, built, every array a
    C-contiguous float32 NumPy array (``any_layout``: dense in memory in any order of its axes, such
    as an (N, C, H, W) view of channels-last memory; for the elementwise GELU)."""
    def dense(a):
        return _memory_order(a) is not None if any_layout else a.flags.c_contiguous
    return (enabled and all(type(a) is np.ndarray and a.dtype == np.float32 and dense(a) for a in arrays)
            and available())                                           # (not a GPU stand-in's subclass)


def _memory_order(a):
    """The axes of ``a`` from the largest stride to the smallest, where ``a`` fills its memory
    densely in that order (so ``a.transpose(order).reshape(-1)`` is a view); else None."""
    order = tuple(int(i) for i in np.argsort([-abs(st) for st in a.strides], kind="stable"))
    return order if a.transpose(order).flags.c_contiguous else None


def _ptr(a):
    return None if a is None else a.ctypes.data


_BLOCK = 1 << 16     # elements: pieces smaller than this stay on the calling thread


def gelu_forward(x, with_grad=True):
    """(x·Φ(x), Φ(x) + x·φ(x) or None) for a float32 array dense in any layout; both come out in
    x's layout."""
    lib = _library()
    order = _memory_order(x)
    y = np.empty_like(x)                                   # (empty_like keeps a dense array's strides)
    d = np.empty_like(x) if with_grad else None
    fx, fy, fd = (None if a is None else a.transpose(order).reshape(-1) for a in (x, y, d))

    def piece(lo, hi):
        lib.mv_gelu_forward(_ptr(fx[lo:]), _ptr(fy[lo:]), None if fd is None else _ptr(fd[lo:]), hi - lo)
    backend.parallel_pieces(fx.size, piece, min_size=_BLOCK)
    return y, d


def layer_norm_forward(x2, w, b, eps):
    """(y, mean, rstd) for rows x2 (M, D), C-contiguous float32; w, b (D,) or None."""
    lib = _library()
    m, d = x2.shape
    y = np.empty_like(x2)
    mean, rstd = np.empty(m, np.float32), np.empty(m, np.float32)

    def rows(lo, hi):
        lib.mv_layer_norm_forward(_ptr(x2[lo:]), _ptr(w), _ptr(b), _ptr(y[lo:]), _ptr(mean[lo:]),
                                  _ptr(rstd[lo:]), hi - lo, d, eps)
    backend.parallel_pieces(m, rows, min_size=max(1, _BLOCK // max(d, 1)))
    return y, mean, rstd


def layer_norm_backward(g2, x2, w, mean, rstd, need_x=True, need_w=False, need_b=False):
    """(∂x or None, ∂w or None, ∂b or None) for layer_norm_forward's rows."""
    lib = _library()
    m, d = x2.shape
    g2 = np.ascontiguousarray(g2, dtype=np.float32)
    gx = np.empty_like(x2) if need_x else None

    def rows(lo, hi):
        gw = np.zeros(d, np.float32) if need_w else None
        gb = np.zeros(d, np.float32) if need_b else None
        scratch = np.empty((2, d), np.float32)
        lib.mv_layer_norm_backward(_ptr(g2[lo:]), _ptr(x2[lo:]), _ptr(w), _ptr(mean[lo:]), _ptr(rstd[lo:]),
                                   None if gx is None else _ptr(gx[lo:]), _ptr(gw), _ptr(gb),
                                   _ptr(scratch[0]), _ptr(scratch[1]), hi - lo, d)
        return gw, gb
    shares = backend.parallel_pieces(m, rows, min_size=max(1, _BLOCK // max(d, 1)))
    gw = functools.reduce(np.add, [s[0] for s in shares]) if need_w else None
    gb = functools.reduce(np.add, [s[1] for s in shares]) if need_b else None
    return gx, gw, gb


def _dw_dims(x_shape, taps, out_hw, stride, dilation, pads):
    n, H, W, C = x_shape
    kh, kw = taps.shape[:2]
    return (H, W, C, out_hw[0], out_hw[1], kh, kw, stride[0], stride[1], dilation[0], dilation[1],
            pads[0], pads[2])


def depthwise_conv_forward(x_cl, taps, b, out_hw, stride, dilation, pads):
    """y (n, Ho, Wo, C) of a depthwise conv of x_cl (n, H, W, C) with taps (kh, kw, C) and bias b
    (C,) or None, all C-contiguous float32; pads (top, bottom, left, right)."""
    lib = _library()
    n, C = x_cl.shape[0], x_cl.shape[3]
    y = np.empty((n,) + tuple(out_hw) + (C,), np.float32)
    dims = _dw_dims(x_cl.shape, taps, out_hw, stride, dilation, pads)
    backend.parallel_pieces(n, lambda lo, hi: lib.mv_depthwise_forward(
        _ptr(x_cl[lo:]), _ptr(taps), _ptr(b), _ptr(y[lo:]), hi - lo, *dims))
    return y


def depthwise_conv_backward(g_cl, x_cl, x_shape, taps, stride, dilation, pads, need_x=True, need_w=True,
                            need_b=False):
    """(∂x (n, H, W, C) or None, ∂taps (kh, kw, C) or None, ∂b (C,) or None) from g_cl (n, Ho, Wo, C);
    x_cl, the forward's input (n, H, W, C) = x_shape, is read only for ∂taps (None without)."""
    lib = _library()
    n, C = x_shape[0], x_shape[3]
    gx = np.empty(x_shape, np.float32) if need_x else None
    dims = _dw_dims(x_shape, taps, g_cl.shape[1:3], stride, dilation, pads)

    def piece(lo, hi):
        gw = np.zeros(taps.shape, np.float32) if need_w else None
        gb = np.zeros(C, np.float32) if need_b else None
        lib.mv_depthwise_backward(_ptr(g_cl[lo:]), None if x_cl is None else _ptr(x_cl[lo:]), _ptr(taps), None if gx is None else _ptr(gx[lo:]),
                                  _ptr(gw), _ptr(gb), hi - lo, *dims)
        return gw, gb
    shares = backend.parallel_pieces(n, piece)
    gw = functools.reduce(np.add, [s[0] for s in shares]) if need_w else None
    gb = functools.reduce(np.add, [s[1] for s in shares]) if need_b else None
    return gx, gw, gb


def _elem_strides(a):
    return np.array([st // a.itemsize for st in a.strides], dtype=np.int64)


def pool_layout_fits(x) -> bool:
    """max_pool_forward takes x: (n, C, H, W), dense with the batch axis outermost in memory (NCHW or
    channels-last), so that a piece of the batch is a piece of memory."""
    return x.ndim == 4 and applies(x, any_layout=True) and _memory_order(x)[0] == 0


def max_pool_forward(x, out_hw, k, s, p, d):
    """(y, arg) of a max pooling of x (``pool_layout_fits``); both come out in x's axis order, arg (int32)
    the winning tap i·kw + j of each output, as MaxPool2d keeps it."""
    lib = _library()
    n, C, H, W = x.shape
    order = _memory_order(x)
    shape = (n, C) + tuple(out_hw)
    y = np.empty(tuple(shape[i] for i in order), np.float32).transpose(np.argsort(order))   # x's axis order
    arg = np.empty_like(y, dtype=np.int32)                 # y's layout (4-byte elements: the same strides)
    xs, ys = _elem_strides(x), _elem_strides(y)
    geo = (*k, *s, *p, *d)
    backend.parallel_pieces(n, lambda lo, hi: lib.mv_max_pool_forward(
        _ptr(x[lo:]), _ptr(y[lo:]), _ptr(arg[lo:]), hi - lo, C, H, W, *out_hw, _ptr(xs), _ptr(ys), *geo))
    return y, arg


def max_pool_backward(g, arg, x_shape, k, s, p, d):
    """∂x (n, C, H, W) from g (the output's shape, any strides) and arg; ∂x comes out in arg's axis order,
    which is the forward's input's."""
    lib = _library()
    n, C, H, W = x_shape
    if g.dtype != np.float32 or not (_elem_strides(g) == _elem_strides(arg)).all():
        g_in, g = g, np.empty_like(arg, dtype=np.float32)   # read g in arg's layout: both through ys
        g[...] = g_in
    order = _memory_order(arg)
    gx = np.empty(tuple(x_shape[i] for i in order), np.float32).transpose(np.argsort(order))
    xs, ys = _elem_strides(gx), _elem_strides(arg)
    geo = (*k, *s, *p, *d)
    backend.parallel_pieces(n, lambda lo, hi: lib.mv_max_pool_backward(
        _ptr(g[lo:]), _ptr(arg[lo:]), _ptr(gx[lo:]), hi - lo, C, H, W, *arg.shape[2:], _ptr(xs), _ptr(ys),
        (hi - lo) * C * H * W, *geo))
    return gx
