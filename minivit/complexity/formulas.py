"""The papers' cost formulas and, beside each, the exact count for minivit's layer.

All counts are multiply-accumulates (MACs), the papers' "FLOPs". N = h·w tokens
of width C. Each ``*_exact`` function returns what :func:`count_macs` counts for
minivit's layer, as an integer; the shorthand functions are the papers' own.
"""
from __future__ import annotations


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
