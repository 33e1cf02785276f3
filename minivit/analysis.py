"""Measurements the lessons make on models: shapes, attention statistics, speed, finished runs.

    from minivit import analysis
    analysis.trace_shapes(model, x)                    # what each submodule returned, in order
    analysis.receptive_field(conv, (1, 3, 16, 16), (1, 1))   # the input pixels one output sees
    maps = analysis.collect_attention(model, x)        # [(name, (B, heads, N, N') array), ...]
    analysis.attention_distance(maps[0][1], (8, 8), num_prefix_tokens=1, per_head=True)
    analysis.attention_rollout([a for _, a in maps])   # (B, N, N): through every layer
    analysis.throughput(model, batch_size=32, train=True)
    analysis.read_run("runs/pvt_tiny")                 # metrics.jsonl summarised, or None

Everything here observes a model and leaves it as it was (weights, train/eval mode);
only a timed training step moves BatchNorm's running statistics (see :func:`throughput`).

The attention statistics: how concentrated a query's attention is (:func:`attention_entropy`),
how far on the token grid it looks (:func:`attention_distance`, per layer or per head: the
mean attention distance of the ViT paper's Fig. 7, in units of the grid), both of which
PiT ("Rethinking Spatial Dimensions of Vision Transformers", Heo et al. 2021) uses to compare
ViT and PiT layer by layer; what the class token sees through all the layers
(:func:`attention_rollout`, Abnar & Zuidema 2020); and the share of keys a query attends to
above a threshold (:func:`spatial_interaction`), kept for reference: it jumps at its
threshold (uniform attention scores 0, uniform attention plus 1% noise about 0.5), so the
lessons use the entropy and the distance instead.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

import minivit as mv
import minivit.functional as F
from minivit import backend, nn, optim
from minivit.autograd import Tensor, no_grad


# =========================================================================== shapes
def _shapes(out):
    """The shape(s) of a module's output: a tuple for a tensor, a list for a tuple of outputs."""
    if isinstance(out, Tensor) or hasattr(out, "shape"):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        if all(isinstance(o, (int, np.integer)) for o in out):
            return tuple(out)                      # a grid size (H, W) passed along
        return [_shapes(o) for o in out]
    return out


def trace_shapes(model, *inputs, select=None) -> list[tuple[str, str, object]]:
    """Run ``model(*inputs)`` once (eval mode, no graph) and record what each submodule returned.

    Returns ``[(name, class name, output shape), ...]`` in the order the modules
    *finished* (inner modules before the blocks that contain them). ``select(name,
    module) -> bool`` keeps only some modules (default: all but the model itself).
    Output shapes are tuples; a module returning several values gives a list of them
    (e.g. ``ConvEmbed`` → ``[(B, N, C), (H, W)]``).
    """
    select = select or (lambda name, m: name != "")
    records, wrapped = [], []
    for name, m in model.named_modules():
        if not select(name, m):
            continue

        def make(orig, name=name, kind=type(m).__name__):
            def forward(*a, **k):
                out = orig(*a, **k)
                records.append((name, kind, _shapes(out)))
                return out
            return forward
        object.__setattr__(m, "forward", make(m.forward))       # as count_macs does
        wrapped.append(m)
    was_training = model.training
    model.eval()                                               # no dropout, no BatchNorm updates
    try:
        with no_grad():
            model(*inputs)
    finally:
        for m in wrapped:
            del m.__dict__["forward"]
        model.train(was_training)
    return records


def receptive_field(fn, input_shape, position, channels_last: bool = False, seed: int = 0,
                    device: str = "cpu") -> np.ndarray:
    """Which input pixels one output position depends on: a boolean (H, W) mask.

    ``fn`` maps an input of ``input_shape`` (B, C, H, W) to a map (B, C', H', W') —
    or (B, H', W', C') with ``channels_last``. The mask is read off the gradient:
    backpropagate a random mix of the C' channels at ``position = (i, j)`` to a
    random float64 input on ``device`` (``fn`` must run there, in float64) and mark the
    pixels whose gradient is not zero. For a convolution that is its k×k window (cut
    off by the zero padding at the border).
    """
    rng = np.random.default_rng(seed)
    x = mv.tensor(rng.standard_normal(input_shape).astype(np.float64), device=device, requires_grad=True)
    y = fn(x)
    if y.ndim != 4:
        raise ValueError(f"receptive_field: fn must return a 4-D map, got shape {y.shape}")
    i, j = position
    out = y[0, i, j, :] if channels_last else y[0, :, i, j]                # (C',)
    mix = mv.tensor(rng.standard_normal(out.shape).astype(np.float64), device=device)
    (out * mix).sum().backward()
    return np.abs(backend.to_numpy(x.grad[0])).sum(0) > 0                  # (H, W)


def timeit(fn, device: str = "cpu", repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls, after ``warmup`` calls,
    with the GPU synchronised before each clock read."""
    return float(np.median(backend.time_calls(fn, device, repeats, warmup)))


# =========================================================================== attention maps
def attention_modules(model) -> list[tuple[str, nn.Module]]:
    """The submodules that can keep their attention weights (they have ``store_attn``):
    Attention, SpatialReductionAttention, WindowAttention, ConvProjectionAttention."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "store_attn")]


def collect_attention(model, x) -> list[tuple[str, np.ndarray]]:
    """Every attention layer's weights for the batch ``x``: ``[(name, (B, heads, N_q, N_kv))]``.

    Runs one forward pass in eval mode without a graph, with ``store_attn`` switched
    on, and puts everything back afterwards (``store_attn``, ``attn_map`` and the
    train/eval mode). The maps come back as host NumPy arrays, in the order the
    layers are defined, which is the order they run in every minivit model.
    """
    layers = attention_modules(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no attention layer with store_attn "
                         f"(Attention, SpatialReductionAttention, WindowAttention, ConvProjectionAttention)")
    was_training = model.training
    model.eval()
    for _, m in layers:
        m.store_attn = True
    try:
        with no_grad():
            model(x)
        maps = [(n, backend.to_numpy(m.attn_map.data)) for n, m in layers]
    finally:
        for _, m in layers:
            m.store_attn, m.attn_map = False, None
        model.train(was_training)
    return maps


def _spatial_block(attn, num_prefix_tokens: int):
    """(B, h, N, N') attention → its spatial-query × spatial-key block (B, h, N−T, N'−T)."""
    attn = np.asarray(backend.to_numpy(attn), dtype=np.float64)
    if attn.ndim != 4:
        raise ValueError(f"expected attention weights (B, heads, N_q, N_kv), got shape {attn.shape}")
    T = num_prefix_tokens
    if T < 0 or T >= min(attn.shape[-2:]):
        raise ValueError(f"num_prefix_tokens={T} leaves no spatial tokens in attention of shape {attn.shape}")
    return attn[:, :, T:, T:]


def spatial_interaction(attn, num_prefix_tokens: int = 0, threshold: float | None = None) -> float:
    """The share of (spatial query, spatial key) pairs whose attention weight exceeds ``threshold``.

    For attention weights α (B, heads, N_q, N_kv) — each row a softmax over the keys —
    drop the first ``num_prefix_tokens`` rows and columns (class/distillation tokens:
    they have no place on the grid), renormalise each query's weights over the M
    spatial keys that remain (α̃_ij = α_ij / Σ_k α_ik, so a layer whose queries look
    mostly at the class token is judged by how they spread the rest), and count

        interaction = mean over images, heads and queries of  #{j : α̃_ij > τ} / M

    with τ = ``threshold``, by default 1/M: the weight every key would get if the
    query attended uniformly. A query that looks at a few keys only has a small
    share; one that spreads its attention broadly, a large one (noise around the
    uniform level gives about ½). Because the default τ scales with the number of
    keys, layers with different token counts (PiT's stages) can be compared.
    """
    s = _spatial_block(attn, num_prefix_tokens)
    s = s / s.sum(-1, keepdims=True)
    tau = 1.0 / s.shape[-1] if threshold is None else float(threshold)
    return float((s > tau + 1e-12).mean())               # 1e-12: rounding of the renormalisation is not "above"


def attention_entropy(attn, normalized: bool = True) -> float:
    """Mean entropy of the attention rows, −Σ_j α_ij log α_ij, over images, heads and queries.

    All keys are kept (each row sums to 1). With ``normalized`` the entropy is divided
    by log N_kv, its value for uniform attention, so 1 means "attends to everything
    equally" and 0 "attends to one key", whatever the layer's token count.
    """
    a = np.asarray(backend.to_numpy(attn), dtype=np.float64)
    if a.ndim != 4:
        raise ValueError(f"expected attention weights (B, heads, N_q, N_kv), got shape {a.shape}")
    h = -(a * np.log(np.clip(a, 1e-300, None))).sum(-1).mean()
    h = h / math.log(a.shape[-1]) if normalized and a.shape[-1] > 1 else h
    return float(h) + 0.0                                # + 0.0: one-hot rows give 0, not −0


def attention_distance(attn, grid, num_prefix_tokens: int = 0, per_head: bool = False):
    """Mean distance on the token grid between a query and the keys it attends to.

    Queries and keys are the spatial tokens of one (h, w) ``grid`` (N_q = N_kv = h·w
    after dropping the prefix tokens), numbered row by row. Token i sits at
    p_i = (row/h, col/w) — coordinates in units of the map's size, so stages with
    different grids compare. With the spatial weights renormalised to sum to 1 per
    query (α̃_ij = α_ij / Σ_k α_ik over spatial keys k),

        distance = mean over images, heads and queries of  Σ_j α̃_ij · ‖p_i − p_j‖₂

    0 means every query attends only to itself; uniform attention over a square map
    gives about 0.52. ``per_head=True``: one mean per head, a (heads,) array (times the
    image side in pixels, the ViT paper's "mean attention distance" of Fig. 7).
    """
    s = _spatial_block(attn, num_prefix_tokens)
    h, w = grid
    if s.shape[-2] != h * w or s.shape[-1] != h * w:
        raise ValueError(f"attention_distance: the spatial block {s.shape[-2:]} is not {h}×{w} queries × keys; "
                         f"pass the layer's grid (and num_prefix_tokens); keys reduced by SRA/CvT strides "
                         f"live on another grid")
    s = s / s.sum(-1, keepdims=True)
    ys, xs = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
    p = np.stack([ys.ravel(), xs.ravel()], 1)                       # (hw, 2)
    d = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))      # (hw, hw)
    per_query = (s * d).sum(-1)                                      # (B, heads, hw)
    return per_query.mean(axis=(0, 2)) if per_head else float(per_query.mean())


def attention_rollout(attn_per_layer, residual: float = 0.5):
    """Attention rollout (Abnar & Zuidema, 2020): how much each token's output after the
    last layer draws on each input token, through all the layers.

    Each layer's weights (B, heads, N, N) are averaged over the heads, the residual path is
    added as ``residual``·I (then each row renormalised to sum to 1), and the layers are
    multiplied in order: R = Â_L ⋯ Â_2 Â_1, a (B, N, N) array whose row of the class token,
    over the patch tokens, is a map of what the class token "sees". All layers must attend
    over the same N tokens (a ViT/DeiT's blocks, not a pyramid's stages)."""
    maps = [np.asarray(backend.to_numpy(a), dtype=np.float64) for a in attn_per_layer]
    if not maps or any(m.ndim != 4 or m.shape[-1] != m.shape[-2] or m.shape[0] != maps[0].shape[0]
                       or m.shape[-1] != maps[0].shape[-1] for m in maps):
        raise ValueError("attention_rollout: expects one (B, heads, N, N) array per layer, the same B and N "
                         f"for all, got shapes {[m.shape for m in maps]}")
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"attention_rollout: residual must be in [0, 1], got {residual}")
    B, _, N, _ = maps[0].shape
    rollout = np.broadcast_to(np.eye(N), (B, N, N)).copy()
    for m in maps:
        a = (1 - residual) * m.mean(axis=1) + residual * np.eye(N)  # (B, N, N)
        a /= a.sum(-1, keepdims=True)
        rollout = a @ rollout
    return rollout


def square_grid(n_tokens: int, num_prefix_tokens: int = 0) -> tuple[int, int]:
    """(h, w) of a square token grid holding ``n_tokens`` tokens after ``num_prefix_tokens``."""
    n = n_tokens - num_prefix_tokens
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n_tokens} tokens minus {num_prefix_tokens} prefix tokens = {n} is not a square "
                         f"grid; pass the grid explicitly")
    return side, side


def attention_stats(model, x, num_prefix_tokens: int = 1, threshold: float | None = None) -> list[dict]:
    """Per attention layer of a ViT-style model (square grids, same tokens for queries and keys):
    name, heads, tokens, grid, and the three measures above, for the batch ``x``."""
    rows = []
    for name, a in collect_attention(model, x):
        grid = square_grid(a.shape[-1], num_prefix_tokens)
        rows.append(dict(layer=name, heads=a.shape[1], tokens=a.shape[-1], grid=grid,
                         interaction=spatial_interaction(a, num_prefix_tokens, threshold),
                         entropy=attention_entropy(a),
                         distance=attention_distance(a, grid, num_prefix_tokens)))
    return rows


# =========================================================================== speed
def throughput(model, batch_size: int = 32, device: str = "cpu", repeats: int = 3, train: bool = False,
               image_size: int = 32, in_chans: int = 3, seed: int = 0) -> dict:
    """Images per second of a forward pass (eval mode, no graph) or of a training step.

    A training step is forward, cross-entropy on random labels (each head's, for a
    model with two heads), backward and an AdamW step with learning rate 0 — the
    same work as a real step, but the weights do not move. (BatchNorm's running
    statistics do: it is a train-mode pass.) One warm-up call, then the median of
    ``repeats`` timed calls, with the GPU synchronised before each clock read.
    """
    if batch_size < 1 or repeats < 1:
        raise ValueError(f"throughput: batch_size and repeats must be positive, got {batch_size}, {repeats}")
    rng = np.random.default_rng(seed)
    x = mv.tensor(rng.standard_normal((batch_size, in_chans, image_size, image_size)).astype(np.float32),
                  device=device)
    was_training = model.training
    if train:
        model.train()
        opt = optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.0)
        labels = None

        def step():
            nonlocal labels
            out = model(x)
            heads = out if isinstance(out, (tuple, list)) else (out,)
            if labels is None:
                labels = mv.tensor(rng.integers(0, heads[0].shape[-1], batch_size), device=device)
            loss = sum(F.cross_entropy(h, labels) for h in heads) * (1.0 / len(heads))
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        model.eval()

        def step():
            with no_grad():
                model(x)
    try:
        seconds = timeit(step, device, repeats)                     # one warm-up, then the median
    finally:
        model.train(was_training)
        if train:
            model.zero_grad()
    return dict(images_per_s=batch_size / seconds, seconds=seconds, batch_size=batch_size,
                mode="train step" if train else "forward", repeats=repeats, device=device)


# =========================================================================== finished runs
def read_run(run_dir) -> dict | None:
    """Summary of a training run directory made by ``python -m minivit.train``, or None
    when it holds no ``metrics.jsonl`` (or no evaluated epoch yet).

    Keys: run_dir, model, epochs (recorded), planned_epochs, final_test_acc,
    best_test_acc, best_epoch, train_time_s (sum of epoch times), images_per_s
    (median training speed), device, config (config.json, or {}).
    """
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    metrics = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    tested = [m for m in metrics if m.get("test_acc") is not None]
    if not tested:
        return None
    cfg_path = run_dir / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    best = max(tested, key=lambda m: m["test_acc"])
    speeds = [m["images_per_s"] for m in metrics if m.get("images_per_s")]
    return dict(run_dir=str(run_dir), model=cfg.get("model", run_dir.name), epochs=len(metrics),
                planned_epochs=cfg.get("epochs"), final_test_acc=tested[-1]["test_acc"],
                best_test_acc=best["test_acc"], best_epoch=best["epoch"],
                train_time_s=sum(m.get("epoch_time_s") or 0.0 for m in metrics),
                images_per_s=float(np.median(speeds)) if speeds else None,
                device=cfg.get("device"), config=cfg)


def find_runs(models, runs_root) -> dict:
    """``{model: read_run(runs_root / model)}`` — None for models without a finished run there."""
    root = Path(runs_root)
    return {m: read_run(root / m) for m in models}
