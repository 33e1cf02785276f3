"""Measured growth: time one layer of each attention type over growing token grids.

For each layer, forward and forward+backward are timed (minimum of repeats,
synchronising the GPU before reading the clock) at token grids s×s, and the
largest attention-score array the layer built is recorded (the softmax's
output, measured from the op that ran). A straight line fitted to log(time)
against log(hw) over the large-size end gives the exponent: 2 for MSA and SRA
(the (hw)² term dominates), 1 for W-MSA and linear SRA.
"""
from __future__ import annotations

import json
import math

import numpy as np

import minivit as mv
from minivit import autograd, backend
from minivit.functional.activation import Softmax
import minivit.functional as F
from minivit.layers import (XCA, Attention, Block, ConvProjectionAttention, DividedSpaceTimeBlock,
                            SpatialReductionAttention, WindowAttention, window_partition)
from minivit.layers.pooling_attention import MultiScaleAttention

# name → (theoretical exponent, grid sides must be multiples of this, reach, builder(C, heads) → fn(x (B, H, W, C)))
#
# "reach" scales the largest grid per layer. The exponent is an asymptote: for a cost
# a·hw + b·(hw)² the local slope is 1 + b·hw / (a + b·hw). SRA's quadratic term is R²
# times smaller (b = 2C/R²) while its linear terms stay ≈ 3hwC², so the crossover
# hw = a/b ≈ 1.5·C·R² tokens moves out with R², and a sweep that stopped at the same
# grid for every R would measure the crossover, not the growth law. Each quadratic
# layer therefore runs until its largest score array is ~0.5–3 GB. That also
# puts the fit past the CPU's last-level cache (32 MiB here): MSA's scores leave it
# between 32² and 64² tokens, where every (hw)² pass slows from cache to memory
# speed (a local slope near 2.4); beyond it the growth is (hw)² again.
LAYERS = {
    "MSA": (2, 1, 1.5, lambda C, h: _tokens(Attention(C, h, qkv_bias=True))),
    "SRA R=2": (2, 2, 2.0, lambda C, h: _grid(SpatialReductionAttention(C, h, sr_ratio=2))),
    "SRA R=4": (2, 4, 3.0, lambda C, h: _grid(SpatialReductionAttention(C, h, sr_ratio=4))),
    "SRA R=8": (2, 8, 6.0, lambda C, h: _grid(SpatialReductionAttention(C, h, sr_ratio=8))),
    "linear SRA": (1, 1, 2.0, lambda C, h: _grid(SpatialReductionAttention(C, h, linear_attn=True))),
    "W-MSA M=4": (1, 4, 2.0, lambda C, h: _windows(WindowAttention(C, h, window_size=4), 4)),
    "W-MSA M=7": (1, 7, 2.0, lambda C, h: _windows(WindowAttention(C, h, window_size=7), 7)),
    # K/V stride 2: attention over hw/4 keys, the same quadratic term as SRA with R = 2.
    "CvT projection": (2, 1, 2.0, lambda C, h: _grid(ConvProjectionAttention(C, h))),
    # XCiT: the attention map is d×d per head, whatever N; every term of 4NC² + 2NC²/h is linear in N.
    "XCA": (1, 1, 2.0, lambda C, h: _tokens(XCA(C, h, qkv_bias=True))),
    # MViT v2's first stage: Q kept (3×3 pool, stride 1), K and V pooled by stride 4, as SRA R=4,
    # plus the decomposed rel-pos bias, whose (N_q, N_kv) sum is quadratic too.
    "pooling attn kv/4": (2, 4, 3.0, lambda C, h: _pooling(C, h, stride_kv=4)),
    # TimeSformer on a clip of T = 4 frames of the h×w grid (hw is the tokens *per frame*), whole
    # blocks (MLP included, the same for both): joint attends over all 1 + 4hw tokens, (1 + 4hw)²
    # scores a head; divided over each frame's 1 + hw (4·(1 + hw)²) and each position's 4 frames.
    # Both grow as (hw)² at a fixed T; joint's term is ~T²/T = 4 times divided's, so its reach is
    # smaller for the same score memory. Formulas: formulas.joint_space_time / divided_space_time.
    "joint space-time T=4": (2, 1, 0.75, lambda C, h: _clip(Block(C, h, qkv_bias=True), 4, divided=False)),
    "divided space-time T=4": (2, 1, 1.0, lambda C, h: _clip(DividedSpaceTimeBlock(C, h, qkv_bias=True), 4,
                                                            divided=True)),
}


def _tokens(layer):
    def fn(x):
        B, H, W, C = x.shape
        return layer(x.reshape(B, H * W, C))
    return layer, fn


def _clip(layer, T, divided):
    """The grid's hw tokens as every frame of a T-frame clip, plus one class token: (B, 1 + hw·T, C)."""
    def fn(x):
        B, H, W, C = x.shape
        frame = x.reshape(B, H * W, C)
        tokens = F.cat([frame[:, :1]] + [frame] * T, dim=1)       # order is immaterial to the cost
        return layer(tokens, T) if divided else layer(tokens)
    return layer, fn


def _grid(layer):
    def fn(x):
        B, H, W, C = x.shape
        return layer(x.reshape(B, H * W, C), (H, W))
    return layer, fn


def _windows(layer, M):
    def fn(x):
        C = x.shape[-1]
        return layer(window_partition(x, M).reshape(-1, M * M, C))
    return layer, fn


class _PerGrid(mv.nn.Module):
    """One layer per grid side, built on first use: MViT v2's rel-pos tables are sized
    for one grid. Built on the input's device during the (untimed) warm-up call."""

    def __init__(self, make):
        super().__init__()
        self.make, self.layers = make, {}

    def forward(self, x):
        B, H, W, C = x.shape
        if (H, W) not in self.layers:
            self.layers[(H, W)] = self.make((H, W)).to(device=x.device)
        out, _ = self.layers[(H, W)](x.reshape(B, H * W, C), (H, W))
        return out


def _pooling(C, h, stride_kv):
    layer = _PerGrid(lambda hw: MultiScaleAttention(C, C, hw, h, kernel_q=3, kernel_kv=3, stride_kv=stride_kv,
                                                    has_cls_token=False))
    return layer, layer


def _sides(multiple: int, max_side: int, n: int = 12):
    """About n grid sides from small to max_side, each a multiple of `multiple`."""
    raw = np.geomspace(max(multiple, 4), max_side, n)
    sides = sorted({max(multiple, int(round(s / multiple)) * multiple) for s in raw})
    return [s for s in sides if s <= max_side]


def _time(fn, device, repeats):
    # the least-disturbed run: other processes only ever add time
    return float(np.min(backend.time_calls(fn, device, repeats)))


def measure(name, device="cpu", C=32, heads=2, max_side=64, repeats=3, batch=1, threads=None):
    """Timings and score memory of one layer type over its grid sides (up to max_side × its reach).

    ``threads``: the CPU threads of NumPy's BLAS and of minivit's own ops while timing (None:
    as they are). One thread measures the growth law alone: with two, each op splits its
    work over the threads only above a size (a hand-off costs tens of microseconds), so the
    split share, and the speed per token, grows with the grid and bends every slope down
    (measured: 0.76–0.82 for the linear layers with 2 threads, 0.95–1.03 with 1)."""
    if threads is not None and device == "cpu":
        from minivit import blas
        saved = backend.get_num_threads(), blas.blas_threads()
        backend.set_num_threads(threads)
        blas.blas_threads(threads)
        try:
            return measure(name, device, C, heads, max_side, repeats, batch, None)
        finally:
            backend.set_num_threads(saved[0])
            if saved[1] is not None:
                blas.blas_threads(saved[1])
    exponent, multiple, reach, build = LAYERS[name]
    layer, fn = build(C, heads)
    layer.to(device=device)
    rows = []
    for s in _sides(multiple, int(max_side * reach)):
        x = mv.randn(batch, s, s, C, device=device, requires_grad=True)
        peak = [0]

        def hook(f, ins, out):
            if isinstance(f, Softmax):
                peak[0] = max(peak[0], out.data.nbytes)
            elif hasattr(f, "score_nbytes"):        # attention as one op (F.scaled_dot_product_attention)
                peak[0] = max(peak[0], f.score_nbytes)

        autograd.forward_hooks.append(hook)
        try:
            with mv.no_grad():
                fn(x)  # warm-up (and the memory probe)
        finally:
            autograd.forward_hooks.remove(hook)

        def fwd():
            with mv.no_grad():
                fn(x)

        def fwd_bwd():
            fn(x).sum().backward()

        fwd_bwd()  # warm-up for backward
        rows.append(dict(side=s, tokens=s * s, forward_s=_time(fwd, device, repeats),
                         forward_backward_s=_time(fwd_bwd, device, repeats), score_bytes=peak[0]))
    return dict(layer=name, theory=exponent, rows=rows,
                slope_forward=fit_slope(rows, "forward_s"), slope_forward_backward=fit_slope(rows, "forward_backward_s"))


FIT_POINTS = 4      # the fit uses this many of the largest grids


def fit_slope(rows, key, n_large: int = FIT_POINTS) -> float:
    """Least-squares slope of log(time) against log(hw) over the n_large largest grids."""
    pts = rows[-n_large:]
    x = np.log([r["tokens"] for r in pts])
    y = np.log([r[key] for r in pts])
    return float(np.polyfit(x, y, 1)[0])


def _measure_in_a_fresh_process(*args):
    """measure(*args) in a new Python process (spawned: safe with CUDA), which then exits.

    The largest grids allocate gigabytes. A process keeps its freed memory for reuse
    (see backend's malloc settings; CuPy's pool does the same), so a layer timed after
    them would run in a heap shaped by them: measured on the CPU, W-MSA's largest grid
    took 1.6× longer after the SRA sweeps than in a process of its own, and its slope
    came out 1.36 instead of 1.07. One process per layer keeps the layers independent."""
    import concurrent.futures
    import multiprocessing
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure, *args).result()


def run(device="cpu", max_side=None, C=32, heads=2, repeats=3, layers=None, out_json=None, out_png=None,
        fresh_process=True, threads=1):
    """Sweep every layer (each in its own process unless ``fresh_process=False``), print the
    fitted slopes, and write the JSON record and the figure when paths are given."""
    max_side = max_side or (96 if device == "cuda" else 64)
    results = []
    for name in layers or LAYERS:
        args = (name, device, C, heads, max_side, repeats, 1, threads)
        r = _measure_in_a_fresh_process(*args) if fresh_process else measure(*args)
        print(f"{name:<15} theory {r['theory']}  fitted forward {r['slope_forward']:.2f}  "
              f"forward+backward {r['slope_forward_backward']:.2f}  "
              f"(grids {r['rows'][0]['side']}² … {r['rows'][-1]['side']}², fit over the last {FIT_POINTS})", flush=True)
        results.append(r)
    record = dict(device=device, device_name=backend.device_name(device), C=C, heads=heads, batch=1, repeats=repeats,
                  max_side=max_side, threads=threads if device == "cpu" else None,
                  numpy=np.__version__, results=results)
    if out_json:
        with open(out_json, "w") as f:
            json.dump(record, f, indent=1)
    if out_png:
        plot(record, out_png)
    return record


def plot(record, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key, title in ((axes[0], "forward_s", "forward"), (axes[1], "forward_backward_s", "forward + backward")):
        for r, c in zip(record["results"], colors * 2):
            hw = np.array([row["tokens"] for row in r["rows"]])
            t = np.array([row[key] for row in r["rows"]])
            slope = r["slope_forward" if key == "forward_s" else "slope_forward_backward"]
            ax.loglog(hw, t, "o-", color=c, label=f"{r['layer']} (fit {slope:.2f}, theory {r['theory']})")
            # the theory line t ∝ (hw)^theory through the largest point, over the fitted grids
            # and a little below them (at small hw the other terms of the cost dominate)
            span = np.geomspace(hw[-min(FIT_POINTS, len(hw))] / 3, hw[-1], 20)
            ax.loglog(span, t[-1] * (span / hw[-1]) ** r["theory"], "--", color=c, alpha=0.7, lw=1.2)
        ax.set_xlabel("tokens hw")
        ax.set_ylabel("seconds")
        ax.set_title(f"{title} — dashed: theory slope through the largest grid")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    ax = axes[2]
    for r, c in zip(record["results"], colors * 2):
        hw = [row["tokens"] for row in r["rows"]]
        ax.loglog(hw, [max(row["score_bytes"], 1) / 2**20 for row in r["rows"]], "o-", color=c, label=r["layer"])
    ax.set_xlabel("tokens hw")
    ax.set_ylabel("MiB")
    ax.set_title("attention-score memory (softmax output)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"How attention cost grows — {record['device_name']}, C={record['C']}, heads={record['heads']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def slope_ok(result, tol=0.15) -> bool:
    return all(math.isfinite(s) and abs(s - result["theory"]) <= tol
               for s in (result["slope_forward"], result["slope_forward_backward"]))
