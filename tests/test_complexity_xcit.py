"""XCiT's costs: the counted MACs of minivit's XCA and LPI equal the exact formulas; XCA's
cost is linear in the number of tokens (the paper's point, §3.2)."""
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit as mv
from minivit.complexity import count_macs, formulas
from minivit.layers.xca import XCA
from minivit.layers.xcit_blocks import LPI


@given(N=st.integers(1, 20), heads=st.integers(1, 4), d=st.integers(1, 6), B=st.integers(1, 2),
       qkv_bias=st.booleans())
@settings(max_examples=25, deadline=None)
def test_xca_counted_equals_exact_and_paper(N, heads, d, B, qkv_bias):
    C = heads * d
    counted = count_macs(XCA(C, heads, qkv_bias=qkv_bias), mv.zeros(B, N, C))
    assert counted.total == B * formulas.xca_exact(N, C, heads) == B * formulas.xca(N, C, heads)
    assert counted.by_kind["matmul"] == B * 2 * N * C * C // heads       # q̂ k̂ᵀ and A·v are counted


@given(H=st.integers(1, 6), W=st.integers(1, 6), C=st.integers(1, 12))
@settings(max_examples=20, deadline=None)
def test_lpi_counted_equals_exact(H, W, C):
    layer = LPI(C).eval()
    counted = count_macs(lambda x: layer(x, H, W), mv.zeros(1, H * W, C)).total
    assert counted == formulas.lpi_exact(H, W, C)


def test_xca_is_linear_in_tokens_msa_is_not():
    C, h = 64, 4
    assert formulas.xca(2 * 196, C, h) == 2 * formulas.xca(196, C, h)
    assert formulas.msa(28, 28, C) > 2 * formulas.msa(14, 14, C)
    # at the papers' 14×14 grid the d×d maps are a small part of XCA (d = 16 here)
    assert formulas.xca(196, C, h) < formulas.msa(14, 14, C)
