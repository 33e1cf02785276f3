"""Complexity lab: counted MACs of what ran equal the exact formulas, as integers."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit as mv
import minivit.functional as F
from minivit.complexity import count_macs, count_params, formulas
from minivit.layers import Attention, Block


@given(h=st.integers(1, 6), w=st.integers(1, 6), heads=st.integers(1, 4), d=st.integers(1, 8),
       prefix=st.integers(0, 2), B=st.integers(1, 2))
@settings(max_examples=25)
def test_msa_counted_equals_exact(h, w, heads, d, prefix, B):
    C = heads * d
    x = mv.zeros(B, h * w + prefix, C)
    counted = count_macs(Attention(C, heads, qkv_bias=True), x).total
    assert counted == B * formulas.msa_exact(h, w, C, num_prefix_tokens=prefix)
    if prefix == 0:  # the seed's shorthand is exact without a class token
        assert counted == B * formulas.msa(h, w, C)


@given(h=st.integers(1, 5), w=st.integers(1, 5), C=st.sampled_from([4, 8, 12]), ratio=st.sampled_from([1.0, 2.0, 4.0]))
@settings(max_examples=15)
def test_block_is_msa_plus_mlp(h, w, C, ratio):
    n = h * w
    counted = count_macs(Block(C, 2, mlp_ratio=ratio), mv.zeros(1, n, C)).total
    assert counted == formulas.msa(h, w, C) + 2 * n * C * int(C * ratio)


@given(h=st.integers(1, 8), w=st.integers(1, 8), C=st.integers(1, 64), R=st.sampled_from([1, 2, 4, 8]))
def test_shorthands_versus_exact(h, w, C, R):
    # W-MSA: exact whenever the windows tile the map.
    M = R
    hh, ww = h * M, w * M
    assert formulas.wmsa_exact(hh, ww, C, M) == formulas.wmsa(hh, ww, C, M)
    # SRA: exact for R = 1; otherwise shorthand − exact = hwC²(1 − 2/R²): the paper's
    # two full-size K/V projections, less the reduced ones and the reduction conv.
    n = hh * ww
    diff = formulas.sra(hh, ww, C, R) - formulas.sra_exact(hh, ww, C, R)
    assert diff == (0 if R == 1 else n * C * C - 2 * (n // (R * R)) * C * C)
    assert formulas.sra(hh, ww, C, 1) == formulas.msa(hh, ww, C)


def test_ops_counted_by_kind():
    x = mv.zeros(2, 3, 8, 8)
    w = mv.zeros(4, 3, 3, 3)
    r = count_macs(lambda x: F.conv2d(x, w, padding=1).flatten(2) @ mv.zeros(64, 5), x)
    assert r.by_kind["conv"] == 2 * 4 * 8 * 8 * 27
    assert r.by_kind["matmul"] == 2 * 4 * 5 * 64
    assert r.total == r.by_kind["conv"] + r.by_kind["matmul"]


def test_module_breakdown_and_params():
    blk = Block(16, 2)
    r = count_macs(blk, mv.zeros(1, 9, 16))
    assert r.by_module["mlp.fc1"] == 9 * 16 * 64
    assert r.by_module["attn"] == 2 * 81 * 16          # QKᵀ and AV run in attn's own forward
    assert sum(r.by_module.values()) == r.total
    assert "mlp.fc1" in r.table(depth=2)
    assert count_params(blk) == sum(p.numel() for p in blk.parameters())
    # counting leaves the model as it was: no wrapped forwards, no hooks, no graph
    assert "forward" not in blk.mlp.__dict__
    assert not mv.autograd.forward_hooks
