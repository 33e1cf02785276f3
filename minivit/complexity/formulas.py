"""The papers' cost formulas and, beside each, the exact count for minivit's layer.

All counts are multiply-accumulates (MACs), the papers' "FLOPs". N = h·w tokens
of width C. Each ``*_exact`` function returns what :func:`count_macs` counts for
minivit's layer, as an integer; the shorthand functions are the papers' own.
"""
from __future__ import annotations

from math import prod


def msa(h: int, w: int, C: int) -> int:
    """Swin eq. (1): Ω(MSA) = 4hwC² + 2(hw)²C.

    4hwC²: the Q, K, V and output projections (four C×C maps per token);
    2(hw)²C: QKᵀ and AV, each N×N×C. Quadratic in the number of tokens.
    """
    return 4 * h * w * C * C + 2 * (h * w) ** 2 * C


def msa_exact(h: int, w: int, C: int, num_prefix_tokens: int = 0) -> int:
    """minivit's Attention on hw tokens plus ``num_prefix_tokens`` (class/distillation tokens).

    Exactly the shorthand with N = hw + prefix tokens in place of hw; equal to
    :func:`msa` when there is no class token. The head count does not matter:
    heads split C, and the products over all heads add up to the same total.
    """
    n = h * w + num_prefix_tokens
    return 4 * n * C * C + 2 * n * n * C


def wmsa(h: int, w: int, C: int, M: int) -> int:
    """Swin eq. (2): Ω(W-MSA) = 4hwC² + 2M²hwC — linear in hw for a fixed window M."""
    return 4 * h * w * C * C + 2 * M * M * h * w * C


def wmsa_exact(h: int, w: int, C: int, M: int) -> int:
    """minivit's WindowAttention: (hw/M²) windows of M² tokens, each an MSA of cost
    4M²C² + 2M⁴C. The sum is exactly :func:`wmsa` (h and w must be multiples of M;
    the relative position bias and the shift mask are additions, not MACs)."""
    if h % M or w % M:
        raise ValueError(f"wmsa_exact: h={h}, w={w} must be multiples of the window size M={M}")
    windows = (h // M) * (w // M)
    return windows * (4 * M * M * C * C + 2 * M ** 4 * C)


def sra(h: int, w: int, C: int, R: int) -> int:
    """PVT §3.3: Ω(SRA) = 4hwC² + 2(hw)²C/R² — the attention term shrinks by R²."""
    return 4 * h * w * C * C + 2 * (h * w) ** 2 * C // (R * R)


def sra_exact(h: int, w: int, C: int, R: int) -> int:
    """minivit's SRA (PVT v1/v2), exactly:

        Q projection            hw·C²
        reduction conv (R×R/R)  (hw/R²)·C·(C·R²) = hw·C²     (absent when R = 1)
        K, V projections        2·(hw/R²)·C²                  (on the reduced tokens)
        QKᵀ and AV              2·hw·(hw/R²)·C
        output projection       hw·C²

    The paper's 4hwC² counts four full-size projections; in minivit's layer K and
    V act on R² times fewer tokens, but the reduction conv adds one hwC² back. So
    exact = shorthand − hwC²(1 − 2/R²) for R > 1, and exact = shorthand for R = 1.
    """
    if h % R or w % R:
        raise ValueError(f"sra_exact: h={h}, w={w} must be multiples of the reduction ratio R={R}")
    n, nr = h * w, (h // R) * (w // R)
    conv = n * C * C if R > 1 else 0
    return n * C * C + conv + 2 * nr * C * C + 2 * n * nr * C + n * C * C


def linear_sra_exact(h: int, w: int, C: int, pool: int = 7) -> int:
    """minivit's linear SRA (PVT v2-Li): K/V from a pool×pool average-pooled map, so

        Q + output projections  2·hw·C²
        1×1 conv on the pool     P²·C²            (P² = pool², fixed)
        K, V projections        2·P²·C²
        QKᵀ and AV              2·hw·P²·C

    Every term is linear in hw (or constant): doubling the image's area doubles the cost.
    Average pooling is additions, not MACs.
    """
    p2 = pool * pool
    return 2 * h * w * C * C + p2 * C * C + 2 * p2 * C * C + 2 * h * w * p2 * C


def cvt_projection_exact(h: int, w: int, C: int, stride_kv: int = 2, kernel: int = 3,
                         stride_q: int = 1, cls_token: bool = False) -> int:
    """minivit's CvT convolutional projection attention ("squeezed" K/V):

        depthwise k×k convs     (hw/s_q² + 2·hw/s_kv²)·C·k²
        Q, K, V linear maps     (N_q + 2·N_kv)·C²
        QKᵀ and AV              2·N_q·N_kv·C
        output projection       N_q·C²

    with N_q = hw/s_q² (+1 with a class token) and N_kv = hw/s_kv² (+1): stride 2 on
    K and V cuts the attention term by 4 (CvT §3.2). Output sizes assume the
    "same" padding CvT uses (⌈h/s⌉).
    """
    def out(n, s):
        return -(-n // s)
    nq_sp = out(h, stride_q) * out(w, stride_q)
    nkv_sp = out(h, stride_kv) * out(w, stride_kv)
    t = 1 if cls_token else 0
    nq, nkv = nq_sp + t, nkv_sp + t
    dw = (nq_sp + 2 * nkv_sp) * C * kernel * kernel
    return dw + (nq + 2 * nkv) * C * C + 2 * nq * nkv * C + nq * C * C


def pit_pooling_exact(h: int, w: int, C: int, kernel: int = 3, stride: int = 2) -> int:
    """minivit's PiT pooling: a depthwise conv (groups = C, 2C outputs, so each output
    channel sees one input channel) with stride 2, plus a C→2C linear for the class token:

        conv                    (⌈h/2⌉·⌈w/2⌉)·2C·k²
        class-token fc          C·2C

    Four times fewer tokens afterwards: every later attention layer's (hw)² term
    drops 16×, its hwC² term 4× (×4 for the doubled width) — PiT §3.2.
    """
    ho, wo = -(-h // stride), -(-w // stride)
    return ho * wo * 2 * C * kernel * kernel + C * 2 * C


def mixer_block_exact(S: int, C: int, D_S: int, D_C: int) -> int:
    """minivit's MixerBlock (MLP-Mixer eq. 1) on S tokens of width C:

        token-mixing MLP        2·S·D_S·C     (S → D_S → S, once per channel: C columns)
        channel-mixing MLP      2·S·C·D_C     (C → D_C → C, once per token: S rows)

    Linear in S at a fixed D_S — the paper picks D_S independently of S (§2), unlike
    attention's 2S²C. The token MLP's S·D_S weights are what is tied to the resolution:
    were D_S scaled with S (a fixed D_S/S), its cost would grow as S².
    """
    return 2 * S * D_S * C + 2 * S * C * D_C


def convmixer_layer_exact(h: int, w: int, C: int, k: int) -> int:
    """minivit's ConvMixer layer on an h×w grid of width C: k²NC + NC², N = hw.

        depthwise k×k conv      N·C·k²        ("same" padding: N outputs per channel,
                                               k² products each, zero padding included)
        pointwise 1×1 conv      N·C²

    Linear in N at any kernel size; the spatial mixing is k²/C of the channel mixing's
    cost (k = 9, C = 1536: 5%).
    """
    n = h * w
    return n * C * k * k + n * C * C


def pooling_attention_exact(h: int, w: int, C: int, C_out: int | None = None, stride_q: int = 1,
                            stride_kv: int = 1, kernel: int = 3, cls_token: bool = False,
                            rel_pos: bool = True, mode: str = "conv") -> int:
    """minivit's MViT v2 pooling attention (:class:`~minivit.layers.pooling_attention.MultiScaleAttention`)
    on an h×w grid of C-wide tokens, widening to C_out (default C):

        Q, K, V linear          N·C·3C_out                     (N = hw + class token, before pooling)
        depth-wise pool convs   (N_q' + 2·N_kv')·C_out·k²      (k×k, one filter per head channel,
                                                                shared by the heads: h·d = C_out)
        rel-pos terms           N_q'·(k_h + k_w)·C_out         Q̂·R_h and Q̂·R_w (matmuls, so counted)
        QKᵀ and AV              2·N_q·N_kv·C_out
        output projection       N_q·C_out²

    with N_q' = ⌈h/s_q⌉·⌈w/s_q⌉ and N_kv' = ⌈h/s_kv⌉·⌈w/s_kv⌉ the pooled grids (k_h × k_w the
    key grid), and N_q = N_q' (+1), N_kv = N_kv' (+1) with the class token. A kernel-1,
    stride-1 pooling is skipped (no conv); ``mode='max'``/``'avg'`` pool without MACs.

    Against its neighbours: PVT's SRA (:func:`sra_exact`) reduces only K and V, with a *dense*
    R×R conv (hw·C² MACs, as much as a linear layer); CvT's squeezed projection
    (:func:`cvt_projection_exact`) runs depth-wise convs *before* its Q/K/V linears, so the
    linears act on the pooled tokens (N_q + 2·N_kv)·C²; MViT pools *after* one qkv linear on all
    N tokens (3NC², none saved) with depth-wise convs that cost only k² per value, and pools Q
    too — a stride-2 query pooling quarters the output tokens, so proj and every later term
    shrink 4×. The attention term 2·N_q·N_kv·C is the one the pooling is for: MViTv2-T's stage
    1 at 224² has 56² queries but only 14² keys.
    """
    C_out = C if C_out is None else C_out
    t = 1 if cls_token else 0

    def out(n, s):
        return (n + 2 * (kernel // 2) - kernel) // s + 1

    def pools(s):
        return kernel > 1 or s > 1
    qh, qw = (out(h, stride_q), out(w, stride_q)) if pools(stride_q) else (h, w)
    kh, kw = (out(h, stride_kv), out(w, stride_kv)) if pools(stride_kv) else (h, w)
    nq_sp, nkv_sp = qh * qw, kh * kw
    nq, nkv = nq_sp + t, nkv_sp + t
    convs = 0
    if mode == "conv":
        convs = ((nq_sp if pools(stride_q) else 0) + (2 * nkv_sp if pools(stride_kv) else 0)) * C_out * kernel ** 2
    rel = nq_sp * (kh + kw) * C_out if rel_pos else 0
    return (h * w + t) * C * 3 * C_out + convs + rel + 2 * nq * nkv * C_out + nq * C_out * C_out


def xca(N: int, C: int, h: int) -> int:
    """XCiT §3.2: cross-covariance attention costs 4NC² + 2NC²/h — linear in N.

    4NC²: the Q, K, V and output projections (four C×C maps per token, as in MSA);
    2NC²/h: the two d×d products of each head, d = C/h: q̂ k̂ᵀ (d×d from N tokens: N·d²)
    and the attention map times V (N tokens, d outputs of d products: N·d²), so
    2·N·d²·h = 2NC²/h over the h heads. Compare MSA's 2N²C: XCA is cheaper as soon as
    N > C/h = d (196 tokens against d = 32 to 48 in the papers' models), and the gap grows
    with the resolution. The L2 normalisation, temperature and softmax are not MACs.
    """
    return 4 * N * C * C + 2 * N * C * C // h


def xca_exact(N: int, C: int, h: int) -> int:
    """minivit's XCA on N tokens, exactly: ``qkv`` 3NC², ``proj`` NC², and the two matmuls
    (B, h, d, N)·(B, h, N, d) → (B, h, d, d) and (B, h, d, d)·(B, h, d, N) → (B, h, d, N),
    N·d² MACs per head each. The same as :func:`xca` (h divides C)."""
    if C % h:
        raise ValueError(f"xca_exact: C={C} must be divisible by the number of heads h={h}")
    d = C // h
    return 3 * N * C * C + N * C * C + 2 * h * N * d * d


def lpi_exact(H: int, W: int, C: int, kernel: int = 3) -> int:
    """minivit's LPI (XCiT's local patch interaction): two depthwise k×k convs on the H×W grid,
    each HW·C·k² MACs ("same" padding keeps the grid): 2·HW·C·k², linear in N = HW, and
    small beside the linear layers (k² = 9 against C in the hundreds)."""
    return 2 * H * W * C * kernel * kernel


def joint_space_time(N: int, T: int, C: int) -> int:
    """TimeSformer §3 ("joint space-time", ST): one MSA over all N·T tokens of a clip (N patches
    per frame, T frames): 4NT·C² + 2(NT)²·C — quadratic in N·T, so doubling the frames
    quadruples the attention term."""
    return 4 * N * T * C * C + 2 * (N * T) ** 2 * C


def divided_space_time(N: int, T: int, C: int) -> int:
    """TimeSformer §3 ("divided space-time", T+S): per block, a time attention at each of the N
    patch positions over its T frames, then a space attention in each of the T frames over its N
    patches, each with its four C×C projections, and the time branch's extra ``temporal_fc``:

        time attention    4NT·C² + 2·N·T²·C        (N sequences of T)
        temporal_fc        NT·C²
        space attention   4NT·C² + 2·T·N²·C        (T sequences of N)

    The attention terms 2(T·N² + N·T²)·C against joint's 2(NT)²·C: NT/(N+T) times fewer
    (196·8/204 ≈ 7.7 at the paper's 8×224²), for 5NT·C² more in projections. So divided is
    cheaper exactly when 2(NT − N − T) > 5C (at C = 768, T = 8: N > 275, frames above 224² with
    16² patches); at 8×224² itself the whole ViT-B model counts 195.8 GMACs divided, 179.6 joint.
    What the paper's Fig. 3 shows is the growth: joint's term is quadratic in both N and T,
    divided's only in each separately, and joint runs out of memory (2(NT)² scores a head) first."""
    return 9 * N * T * C * C + 2 * (T * N * N + N * T * T) * C


def joint_space_time_exact(N: int, T: int, C: int, num_prefix_tokens: int = 1) -> int:
    """minivit's joint space-time attention: :func:`msa_exact` on 1 + N·T tokens (the class token
    joins the attention). Equals :func:`joint_space_time` without the class token."""
    n = N * T + num_prefix_tokens
    return 4 * n * C * C + 2 * n * n * C


def divided_space_time_exact(N: int, T: int, C: int) -> int:
    """minivit's :class:`~minivit.layers.divided_space_time.DividedSpaceTimeBlock` attention
    (everything but its MLP), with the class token as the released code treats it: left out of
    the time attention, copied into each frame's space attention (T sequences of N + 1):

        time attention    4NT·C² + 2·N·T²·C
        temporal_fc        NT·C²
        space attention   4T(N+1)·C² + 2·T·(N+1)²·C

    :func:`divided_space_time` plus the class token's T copies: 4T·C² + 2T(2N+1)·C."""
    return (4 * N * T * C * C + 2 * N * T * T * C + N * T * C * C
            + 4 * T * (N + 1) * C * C + 2 * T * (N + 1) ** 2 * C)


def space_only_exact(N: int, T: int, C: int) -> int:
    """minivit's space-only attention (TimeSformer's "S"): T independent image attentions of
    N + 1 tokens each (every frame has its class token): T·(4(N+1)·C² + 2(N+1)²·C)."""
    return T * msa_exact(N, 1, C, num_prefix_tokens=1)


def timesformer_exact(N: int, T: int, C: int, depth: int, hidden: int, patch_in: int, num_classes: int,
                      attention_type: str = "divided_space_time") -> int:
    """A whole minivit :class:`~minivit.models.timesformer.TimeSformer` on one clip:

        patch embedding   NT·C·patch_in         (patch_in = C_in·P², one conv per frame)
        per block         the attention above + its MLP, 2·(tokens)·C·hidden
        head              C·num_classes         (one class token; space-only averages its T first)

    with tokens 1 + NT (divided, joint) or T(N + 1) (space-only)."""
    if attention_type == "divided_space_time":
        attn, tokens = divided_space_time_exact(N, T, C), 1 + N * T
    elif attention_type == "joint_space_time":
        attn, tokens = joint_space_time_exact(N, T, C), 1 + N * T
    elif attention_type == "space_only":
        attn, tokens = space_only_exact(N, T, C), T * (N + 1)
    else:
        raise ValueError(f"timesformer_exact: attention_type must be 'divided_space_time', 'joint_space_time' "
                         f"or 'space_only', got {attention_type!r}")
    return N * T * C * patch_in + depth * (attn + 2 * tokens * C * hidden) + C * num_classes


def mvit_video_exact(thw, block_setting, num_classes: int, patch_in: int, proj_after_attn: bool = False) -> int:
    """A whole minivit :class:`~minivit.models.mvit_video.MViT` (MViT v1 on video) on one clip whose
    stem grid is ``thw`` = (T, H, W) (``patch_in`` = C_in·Πkernel of the Conv3d stem), block by
    block from torchvision's ``block_setting`` (heads, C → C_out, kernel and stride of the q and kv
    poolings; ``[]`` = none). With N = 1 + THW tokens coming in, C' the attention's width (C_out if
    ``proj_after_attn`` else C) and N_q = 1 + Π grid_q, N_kv = 1 + Π grid_kv after pooling:

        qkv                      N·C·3C'
        depth-wise pool convs    (Π grid_q·Πk_q + 2·Π grid_kv·Πk_kv)·C'   (one filter per head channel)
        QKᵀ and AV               2·N_q·N_kv·C'
        project                  N_q·C'²
        MLP                      N_q·(C'·4C' + 4C'·C_out)
        shortcut project         N·C·C_out (after the attention) or N_q·C·C_out (v1: on LN(x) before
                                 the MLP), where C_out ≠ C
        stem, head               THW·C₀·patch_in, C_last·num_classes

    grid' = ⌊(n + 2⌊k/2⌋ − k)/s⌋ + 1 per axis. Max-pooling the shortcut costs no MACs. Heads do not
    enter: they split C' (the pool convs are shared by the heads, h·d = C')."""
    def pooled(grid, kernel, stride):
        if prod(kernel) <= 1 and prod(stride) <= 1:
            return tuple(grid), 0
        kernel, stride = tuple(kernel) or (1,) * len(grid), tuple(stride) or (1,) * len(grid)
        out = tuple((n + 2 * (k // 2) - k) // s + 1 for n, k, s in zip(grid, kernel, stride))
        return out, prod(out) * prod(kernel)

    grid = tuple(thw)
    total = prod(grid) * block_setting[0].input_channels * patch_in
    for b in block_setting:
        C, C_out = b.input_channels, b.output_channels
        Ca = C_out if proj_after_attn else C
        n = 1 + prod(grid)
        q_grid, q_conv = pooled(grid, b.kernel_q, b.stride_q)
        kv_grid, kv_conv = pooled(grid, b.kernel_kv, b.stride_kv)
        nq, nkv = 1 + prod(q_grid), 1 + prod(kv_grid)
        total += n * C * 3 * Ca + (q_conv + 2 * kv_conv) * Ca + 2 * nq * nkv * Ca + nq * Ca * Ca
        total += nq * (Ca * 4 * Ca + 4 * Ca * C_out)
        if C != C_out:
            total += (n if proj_after_attn else nq) * C * C_out
        grid = q_grid
    return total + block_setting[-1].output_channels * num_classes
