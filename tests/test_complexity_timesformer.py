"""TimeSformer's space-time attention: counted MACs of what ran equal the exact formulas, as
integers (one block of each kind, and whole models); the papers' shorthands against them; and
where divided attention is cheaper than joint."""
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit as mv
from minivit.complexity import count_macs, formulas
from minivit.layers import Block, DividedSpaceTimeBlock
from minivit.models import TimeSformer

ATTENTION = ["divided_space_time", "joint_space_time", "space_only"]


@given(N=st.integers(1, 6), T=st.integers(1, 5), heads=st.integers(1, 3), d=st.integers(1, 6),
       ratio=st.sampled_from([1.0, 2.0, 4.0]), B=st.integers(1, 2))
@settings(max_examples=25, deadline=None)
def test_divided_block_counted_equals_exact(N, T, heads, d, ratio, B):
    C = heads * d
    hidden = int(C * ratio)
    blk = DividedSpaceTimeBlock(C, heads, mlp_ratio=ratio, qkv_bias=True)
    counted = count_macs(lambda x: blk(x, T), mv.zeros(B, 1 + N * T, C)).total
    assert counted == B * (formulas.divided_space_time_exact(N, T, C) + 2 * (1 + N * T) * C * hidden)
    # the class token's T copies in the space attention are all that the shorthand leaves out
    assert formulas.divided_space_time_exact(N, T, C) - formulas.divided_space_time(N, T, C) \
        == 4 * T * C * C + 2 * T * (2 * N + 1) * C


@given(N=st.integers(1, 6), T=st.integers(1, 5), heads=st.integers(1, 3), d=st.integers(1, 6))
@settings(max_examples=20, deadline=None)
def test_joint_and_space_only_blocks_counted_equal_exact(N, T, heads, d):
    C = heads * d
    blk = Block(C, heads, mlp_ratio=2.0, qkv_bias=True)
    mlp = 2 * C * 2 * C
    joint = count_macs(blk, mv.zeros(1, 1 + N * T, C)).total          # all tokens of the clip at once
    assert joint == formulas.joint_space_time_exact(N, T, C) + (1 + N * T) * mlp
    assert formulas.joint_space_time_exact(N, T, C, num_prefix_tokens=0) == formulas.joint_space_time(N, T, C)
    space = count_macs(blk, mv.zeros(T, 1 + N, C)).total               # each frame alone
    assert space == formulas.space_only_exact(N, T, C) + T * (1 + N) * mlp


@given(g=st.integers(1, 3), P=st.sampled_from([2, 3]), T=st.integers(1, 4), heads=st.integers(1, 2),
       d=st.integers(1, 4), depth=st.integers(1, 2), K=st.integers(1, 5), attention=st.sampled_from(ATTENTION))
@settings(max_examples=20, deadline=None)
def test_whole_model_counted_equals_exact(g, P, T, heads, d, depth, K, attention):
    C = heads * d
    model = TimeSformer(img_size=g * P, patch_size=P, num_frames=T, num_classes=K, embed_dim=C, depth=depth,
                        num_heads=heads, mlp_ratio=2.0, attention_type=attention).eval()
    counted = count_macs(model, mv.zeros(1, T, 3, g * P, g * P)).total
    assert counted == formulas.timesformer_exact(g * g, T, C, depth, 2 * C, 3 * P * P, K, attention)


@given(N=st.integers(1, 400), T=st.integers(1, 32), C=st.integers(1, 1024))
@settings(max_examples=200, deadline=None)
def test_divided_is_cheaper_than_joint_exactly_when_2_NT_minus_N_minus_T_exceeds_5C(N, T, C):
    joint, divided = formulas.joint_space_time(N, T, C), formulas.divided_space_time(N, T, C)
    assert (joint - divided) == 2 * C * (N * T * N * T - T * N * N - N * T * T) - 5 * N * T * C * C
    assert (divided < joint) == (2 * (N * T - N - T) > 5 * C)


def test_paper_size_attention_terms_and_crossover():
    """At 8×224² (N = 196, T = 8, C = 768): divided's attention term is NT/(N+T) = 7.7× smaller than
    joint's, but its extra projections make the block dearer; at 16 frames it is cheaper."""
    N, T, C = 196, 8, 768
    attn_joint = formulas.joint_space_time(N, T, C) - 4 * N * T * C * C
    attn_divided = formulas.divided_space_time(N, T, C) - 9 * N * T * C * C
    assert attn_joint * (N + T) == attn_divided * N * T
    assert formulas.divided_space_time(N, T, C) > formulas.joint_space_time(N, T, C)
    assert formulas.divided_space_time(N, 16, C) < formulas.joint_space_time(N, 16, C)
    assert formulas.divided_space_time(324, T, C) < formulas.joint_space_time(324, T, C)   # 288² frames
