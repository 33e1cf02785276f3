"""Pictures for the lessons: the autograd graph, patches, position embeddings, attention maps.

    from minivit import viz
    viz.plot_graph(loss, names={id(x): "x"})            # the graph behind a tensor
    viz.draw_patch_grid(image, patch_size=4)             # an image cut into patches
    viz.plot_similarity_maps(pos_embed, (8, 8))          # cosine similarity of position embeddings
    viz.plot_attention_maps(image, maps, (8, 8))         # where the class token looks, per head

Every ``plot_*`` function returns its matplotlib Figure (the caller saves it);
the numbers behind the pictures (``trace_graph``, ``cosine_similarity_maps``,
``similarity_by_distance``) are plain functions, so they can be tested and
asserted on. matplotlib is imported only when something is drawn.
"""
from __future__ import annotations

import numpy as np

from minivit import backend
from minivit.autograd import Function, Node, Tensor, topological_order


def _np(a) -> np.ndarray:
    """A Tensor, NumPy or CuPy array as a host NumPy array."""
    return a.numpy() if isinstance(a, Tensor) else backend.to_numpy(a)


def _plt():
    import matplotlib.pyplot as plt
    return plt


# =========================================================================== the autograd graph
def trace_graph(output: Tensor):
    """The graph that ``output.backward()`` would walk, read from ``tensor._ctx.inputs``.

    An intermediate result appears as its Tensor while something holds it, else as
    the graph's :class:`~minivit.autograd.Node` for it (its data already freed).

    Returns ``(nodes, edges)``: ``nodes`` maps ``id(obj)`` to the Tensor or Function,
    in topological order (every node after all the nodes it was computed from), and
    ``edges`` lists ``(id(src), id(dst))``: input tensor → op and op → its output.
    Tensors that do not require a gradient (constants) are included as inputs but
    have no op behind them. Call it *before* ``backward()``, which frees the graph.
    """
    if not isinstance(output, Tensor):
        raise TypeError(f"trace_graph needs a Tensor, got {type(output).__name__}")
    nodes, edges = {}, []

    def shown(v):        # an op's result is drawn as its tensor while that is alive, else as its Node
        t = v.tensor if isinstance(v, Node) else None
        return v if t is None else t

    for v in topological_order(output, all_inputs=True):   # the order backward walks, reversed
        t = shown(v)
        if v._ctx is not None:
            nodes[id(v._ctx)] = v._ctx
            edges.extend((id(shown(x)), id(v._ctx)) for x in v._ctx.inputs)
            edges.append((id(v._ctx), id(t)))
        nodes[id(t)] = t
    return nodes, edges


def _node_label(node, names):
    if isinstance(node, Function):
        return type(node).__name__
    name = names.get(id(node))
    if name is None:
        name = f"{node.item():.3g}" if node.is_leaf and node.numel() == 1 and not node.requires_grad \
            else str(tuple(node.shape))
    return name


def plot_graph(output: Tensor, names: dict | None = None, ax=None, title: str = ""):
    """Draw the graph of ``output``: tensors as circles, ops as boxes, data flowing left to right.

    ``names`` maps ``id(tensor)`` to a label (unnamed tensors show their shape, or their
    value for scalar constants). Leaves that require a gradient are green, constants grey,
    intermediate results blue; the output is on the right.
    """
    names = names or {}
    nodes, edges = trace_graph(output)
    inputs_of = {k: [] for k in nodes}
    for src, dst in edges:
        inputs_of[dst].append(src)
    # Column = longest path from the output, so every node sits left of all its users.
    depth = {id(output): 0}
    for k in reversed(list(nodes)):                         # reverse topological: users first
        for src in inputs_of[k]:
            depth[src] = max(depth.get(src, 0), depth[k] + 1)
    columns: dict = {}
    for k in nodes:
        columns.setdefault(depth[k], []).append(k)
    pos = {}
    for d, ks in columns.items():
        for i, k in enumerate(ks):
            pos[k] = (-d, (len(ks) - 1) / 2 - i)
    plt = _plt()
    if ax is None:
        n_cols, n_rows = max(columns) + 1, max(len(v) for v in columns.values())
        _, ax = plt.subplots(figsize=(1.3 * n_cols + 1, 0.9 * n_rows + 1))
    for src, dst in edges:
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color="0.4", shrinkA=16, shrinkB=16, lw=1))
    for k, node in nodes.items():
        x, y = pos[k]
        label = _node_label(node, names)
        if isinstance(node, Function):
            ax.text(x, y, label, ha="center", va="center", fontsize=9,
                    bbox=dict(boxstyle="round,pad=0.35", fc="#fde0b6", ec="#c77d11"))
        else:
            color = ("#b9e4b0" if node.requires_grad else "#dddddd") if node.is_leaf else "#bcd6f2"
            if node is output:
                color = "#f4b6b6"
            ax.text(x, y, label, ha="center", va="center", fontsize=9,
                    bbox=dict(boxstyle="circle,pad=0.3", fc=color, ec="0.3"))
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
    ax.axis("off")
    if title:
        ax.set_title(title)
    return ax.figure


# =========================================================================== images and patches
def to_hwc(image) -> np.ndarray:
    """An image (3, H, W) or (H, W, 3) — uint8, or float in [0, 1] — as (H, W, 3) for imshow."""
    img = _np(image)
    if img.ndim != 3:
        raise ValueError(f"expected one image (3, H, W) or (H, W, 3), got shape {img.shape}")
    if img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.dtype.kind == "f":
        img = np.clip(img, 0.0, 1.0)
    return img


def draw_patch_grid(image, patch_size: int, ax=None, numbers: bool = True, title: str = ""):
    """The image with the P×P patch grid drawn on it and each patch's token index."""
    img = to_hwc(image)
    H, W = img.shape[:2]
    if H % patch_size or W % patch_size:
        raise ValueError(f"image {H}×{W} is not divisible by patch size {patch_size}")
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(img, extent=(0, W, H, 0), interpolation="nearest")
    for v in range(0, W + 1, patch_size):
        ax.axvline(v, color="white", lw=1)
    for v in range(0, H + 1, patch_size):
        ax.axhline(v, color="white", lw=1)
    if numbers:
        w = W // patch_size
        for r in range(H // patch_size):
            for c in range(w):
                ax.text((c + 0.5) * patch_size, (r + 0.5) * patch_size, str(r * w + c), color="yellow",
                        ha="center", va="center", fontsize=6)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{H // patch_size}×{W // patch_size} patches of {patch_size}×{patch_size}")
    return ax.figure


def plot_patch_sequence(image, patch_size: int, ax=None, per_row: int | None = None, title: str = ""):
    """The patches laid out in token order (row by row), with gaps: what the transformer sees."""
    img = to_hwc(image)
    P = patch_size
    h, w = img.shape[0] // P, img.shape[1] // P
    per_row = per_row or w * 2
    n = h * w
    rows = -(-n // per_row)
    gap = max(1, P // 4)
    canvas = np.ones((rows * (P + gap), per_row * (P + gap), 3), dtype=np.float32)
    scale = 255.0 if img.dtype == np.uint8 else 1.0
    for k in range(n):
        r, c = divmod(k, w)
        patch = img[r * P:(r + 1) * P, c * P:(c + 1) * P] / scale
        rr, cc = divmod(k, per_row)
        canvas[rr * (P + gap):rr * (P + gap) + P, cc * (P + gap):cc * (P + gap) + P] = patch
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 8 * canvas.shape[0] / canvas.shape[1] + 0.5))
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    ax.set_title(title or f"the same image as a sequence of {n} tokens (token 0 top left)")
    return ax.figure


def plot_image_grid(images, titles=None, colors=None, ncols: int = 8, size: float = 1.3, title: str = ""):
    """Images (each (3, H, W) or (H, W, 3)) in a grid, each with an optional coloured title."""
    plt = _plt()
    n = len(images)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + 0.35) * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(to_hwc(images[i]), interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=7, color=colors[i] if colors is not None else "black")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# =========================================================================== position embeddings
def cosine_similarity_maps(emb, grid_size) -> np.ndarray:
    """(h, w, h, w): ``S[i, j, k, l]`` = cosine similarity of the embeddings of grid positions
    (i, j) and (k, l). ``emb`` is (h·w, D) or (1, h·w, D), positions row by row (no prefix tokens)."""
    e = _np(emb).astype(np.float64)
    e = e.reshape(-1, e.shape[-1])
    h, w = grid_size
    if e.shape[0] != h * w:
        raise ValueError(f"{e.shape[0]} embeddings do not form a {h}×{w} grid; drop the class/distillation "
                         f"token rows first (pos_embed[:, num_prefix_tokens:])")
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return (e @ e.T).reshape(h, w, h, w)


def similarity_by_distance(emb, grid_size):
    """Mean cosine similarity between positions at each city-block distance |Δrow| + |Δcol| ≥ 1.

    Returns ``(distances, mean_similarity)``: a smooth embedding (neighbours alike) decays
    with distance; a random one stays near 0 at every distance.
    """
    h, w = grid_size
    S = cosine_similarity_maps(emb, grid_size).reshape(h * w, h * w)
    r, c = np.divmod(np.arange(h * w), w)
    dist = np.abs(r[:, None] - r[None]) + np.abs(c[:, None] - c[None])
    ds = np.arange(1, dist.max() + 1)
    return ds, np.array([S[dist == d].mean() for d in ds])


def plot_similarity_maps(emb, grid_size, title: str = "", vmin: float | None = None, size: float = 0.6):
    """ViT Fig. 7 (centre): for every grid position, its embedding's cosine similarity with
    all positions, drawn as a small h×w image at that position's place in the grid.

    One colour scale for all maps, from ``vmin`` (default: the lowest similarity present) to 1.
    """
    h, w = grid_size
    S = cosine_similarity_maps(emb, grid_size)
    vmin = float(S.min()) if vmin is None else vmin
    plt = _plt()
    fig, axes = plt.subplots(h, w, figsize=(size * w + 0.8, size * h + 0.4), squeeze=False)
    for i in range(h):
        for j in range(w):
            im = axes[i, j].imshow(S[i, j], vmin=vmin, vmax=1, cmap="viridis", interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    for j in range(w):
        axes[-1, j].set_xlabel(str(j + 1), fontsize=7)
    for i in range(h):
        axes[i, 0].set_ylabel(str(i + 1), fontsize=7, rotation=0, labelpad=6)
    fig.subplots_adjust(wspace=0.08, hspace=0.08, right=0.88)
    cax = fig.add_axes([0.9, 0.15, 0.02, 0.7])
    fig.colorbar(im, cax=cax, label="cosine similarity")
    if title:
        fig.suptitle(title, y=0.93)
    return fig


# =========================================================================== attention
def attention_to_grid(attn, grid_size, query: int = 0, num_prefix_tokens: int = 1) -> np.ndarray:
    """(heads, h, w): how much token ``query`` attends to each patch, per head.

    ``attn`` is one image's attention weights (heads, N, N) (``Attention.attn_map[b]``);
    the first ``num_prefix_tokens`` columns (class/distillation tokens) are dropped.
    """
    a = _np(attn)
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"expected one image's attention weights (heads, N, N), got shape {a.shape}")
    h, w = grid_size
    if a.shape[-1] - num_prefix_tokens != h * w:
        raise ValueError(f"{a.shape[-1]} tokens minus {num_prefix_tokens} prefix tokens do not form a "
                         f"{h}×{w} grid")
    return a[:, query, num_prefix_tokens:].reshape(a.shape[0], h, w)


def plot_attention_maps(image, attn_per_block, grid_size, query: int = 0, num_prefix_tokens: int = 1,
                        size: float = 1.5, title: str = "", vmax: float | None = None):
    """One row per block: the image, then where token ``query`` (the class token by default)
    looks in each head, upsampled to the image and drawn over it.

    ``attn_per_block``: a list of (heads, N, N) arrays, one per block, for one image.
    Every map shares one colour scale, from 0 to ``vmax`` (default: the largest weight in the
    figure), with a colour bar in attention weight: a head that attends uniformly over N tokens
    is 1/N everywhere, so it shows as dark, not as bright as the most concentrated head.
    Each head's title gives its largest weight.
    """
    img = to_hwc(image)
    H, W = img.shape[:2]
    maps = [attention_to_grid(a, grid_size, query, num_prefix_tokens) for a in attn_per_block]
    heads = maps[0].shape[0]
    top = float(max(m.max() for m in maps)) if vmax is None else float(vmax)
    plt = _plt()
    fig, axes = plt.subplots(len(maps), heads + 1, figsize=(size * (heads + 1) + 0.9, (size + 0.3) * len(maps)),
                             squeeze=False)
    for b, m in enumerate(maps):
        axes[b, 0].imshow(img, interpolation="nearest")
        axes[b, 0].set_ylabel(f"block {b}", fontsize=8)
        for hd in range(heads):
            ax = axes[b, hd + 1]
            ax.imshow(img, interpolation="nearest", extent=(0, W, H, 0))
            shown = ax.imshow(m[hd], cmap="inferno", alpha=0.65, extent=(0, W, H, 0),
                              interpolation="nearest", vmin=0, vmax=top)
            ax.set_title(f"head {hd} (max {m[hd].max():.2f})", fontsize=7)
        for ax in axes[b]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    bar = fig.colorbar(shown, ax=axes.ravel().tolist(), fraction=0.025, pad=0.02)
    bar.set_label(f"attention weight of token {query}", fontsize=8)
    return fig


__all__ = ["trace_graph", "plot_graph", "to_hwc", "draw_patch_grid", "plot_patch_sequence", "plot_image_grid",
           "cosine_similarity_maps", "similarity_by_distance", "plot_similarity_maps", "attention_to_grid",
           "plot_attention_maps"]
