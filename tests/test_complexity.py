"""Complexity lab: counted MACs of what ran equal the exact formulas, as integers."""
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


# ---------------------------------------------------------------- every attention type, counted = exact
from minivit.layers import (ConvHeadPooling, ConvProjectionAttention, SpatialReductionAttention,  # noqa: E402
                            WindowAttention, window_partition)


@given(gh=st.integers(1, 3), gw=st.integers(1, 3), R=st.sampled_from([1, 2, 3, 4]), heads=st.integers(1, 3),
       d=st.integers(1, 6))
@settings(max_examples=20)
def test_sra_counted_equals_exact(gh, gw, R, heads, d):
    C, h, w = heads * d, gh * R, gw * R
    layer = SpatialReductionAttention(C, heads, sr_ratio=R)
    counted = count_macs(lambda x: layer(x, (h, w)), mv.zeros(1, h * w, C)).total
    assert counted == formulas.sra_exact(h, w, C, R)
    if R == 1:
        assert counted == formulas.sra(h, w, C, 1) == formulas.msa(h, w, C)


@given(h=st.integers(1, 9), w=st.integers(1, 9), heads=st.integers(1, 3), d=st.integers(1, 6),
       pool=st.integers(1, 4))
@settings(max_examples=20)
def test_linear_sra_counted_equals_exact(h, w, heads, d, pool):
    C = heads * d
    layer = SpatialReductionAttention(C, heads, linear_attn=True, pool_size=pool)
    counted = count_macs(lambda x: layer(x, (h, w)), mv.zeros(1, h * w, C)).total
    assert counted == formulas.linear_sra_exact(h, w, C, pool)


@given(nh=st.integers(1, 3), nw=st.integers(1, 3), M=st.integers(1, 4), heads=st.integers(1, 3), d=st.integers(1, 6))
@settings(max_examples=20)
def test_wmsa_counted_equals_exact_and_shorthand(nh, nw, M, heads, d):
    C, h, w = heads * d, nh * M, nw * M
    layer = WindowAttention(C, heads, window_size=M)
    counted = count_macs(lambda x: layer(window_partition(x, M).reshape(-1, M * M, C)), mv.zeros(1, h, w, C)).total
    assert counted == formulas.wmsa_exact(h, w, C, M) == formulas.wmsa(h, w, C, M)


@given(h=st.integers(2, 9), w=st.integers(2, 9), heads=st.integers(1, 3), d=st.integers(1, 6),
       s=st.sampled_from([1, 2, 3]), cls=st.booleans())
@settings(max_examples=20)
def test_cvt_projection_counted_equals_exact(h, w, heads, d, s, cls):
    C = heads * d
    layer = ConvProjectionAttention(C, heads, stride_kv=s, with_cls_token=cls).eval()
    counted = count_macs(lambda x: layer(x, (h, w)), mv.zeros(1, h * w + cls, C)).total
    assert counted == formulas.cvt_projection_exact(h, w, C, stride_kv=s, cls_token=cls)


@given(h=st.integers(1, 9), w=st.integers(1, 9), C=st.integers(1, 16))
@settings(max_examples=20)
def test_pit_pooling_counted_equals_exact(h, w, C):
    layer = ConvHeadPooling(C, 2 * C)
    counted = count_macs(lambda x, t: layer(x, t), mv.zeros(1, C, h, w), mv.zeros(1, 1, C)).total
    assert counted == formulas.pit_pooling_exact(h, w, C)


# ---------------------------------------------------------------- the papers' tables
from minivit.models import create_model  # noqa: E402
from minivit.models.papers import PAPERS  # noqa: E402

# PVTv2-B0's paper FLOPs are printed with one decimal: 0.566 GMACs rounds to the paper's 0.6.
_ROUNDED_TO_ONE_DECIMAL = {"pvt_v2_b0_224"}


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_224_gmacs_match_papers_within_5_percent(name):
    entry = PAPERS[name]
    model = create_model(name).eval()
    gmacs = count_macs(model, mv.zeros(1, *entry.input_shape)).total / 1e9
    if entry.gmacs is None:                            # the paper prints no FLOPs: the note must say so
        assert "not FLOPs" in entry.note and gmacs > 0
    elif name in _ROUNDED_TO_ONE_DECIMAL:
        assert round(gmacs, 1) == entry.gmacs and entry.note
    else:
        assert abs(gmacs / entry.gmacs - 1) <= 0.05, (name, gmacs, entry.gmacs)


def test_table_cli_prints_a_line_per_model_as_it_goes(monkeypatch, capsys):
    """`python -m minivit.complexity table` takes minutes: each model's line on stderr as it is
    counted, the table alone on stdout (so --markdown > file still works)."""
    import minivit.complexity.table as table_mod
    import minivit.models.papers as papers
    from minivit.complexity.__main__ import main
    few = {name: papers.PAPERS[name] for name in ("pvt_v2_b0_224", "pit_ti_224")}
    monkeypatch.setattr(papers, "PAPERS", few)
    monkeypatch.setattr(table_mod, "PAPERS", few)
    main(["table", "--markdown"])
    out, err = capsys.readouterr()
    assert "[1/2] pvt_v2_b0_224" in err and "[2/2] pit_ti_224" in err and "GMACs" in err
    assert out.startswith("| model |") and "pvt_v2_b0_224" in out and "[1/2]" not in out
