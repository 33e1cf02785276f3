"""Complexity lab for MViT v2: the counted MACs of the pooling attention equal the exact formula,
and MViTv2-T's totals are the paper's."""
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit as mv
from minivit.complexity import count_macs, count_params, formulas
from minivit.layers.pooling_attention import MultiScaleAttention


@given(m=st.integers(1, 2), heads=st.integers(1, 3), d=st.integers(1, 4), widen=st.booleans(),
       s_q=st.sampled_from([1, 2]), s_kv=st.sampled_from([1, 2, 4]), kernel=st.sampled_from([1, 3]),
       cls=st.booleans())
@settings(max_examples=20, deadline=None)
def test_pooling_attention_counted_equals_exact(m, heads, d, widen, s_q, s_kv, kernel, cls):
    n = 4 * m                                   # a square grid every stride divides (the rel-pos tables need it)
    C_out = heads * d
    C = C_out // 2 if widen and C_out % 2 == 0 else C_out
    layer = MultiScaleAttention(C, C_out, (n, n), num_heads=heads, kernel_q=kernel, kernel_kv=kernel,
                                stride_q=s_q, stride_kv=s_kv, has_cls_token=cls).eval()
    counted = count_macs(lambda x: layer(x, (n, n)), mv.zeros(1, n * n + cls, C)).total
    assert counted == formulas.pooling_attention_exact(n, n, C, C_out, stride_q=s_q, stride_kv=s_kv,
                                                       kernel=kernel, cls_token=cls)


@given(h=st.integers(1, 7), w=st.integers(1, 7), heads=st.integers(1, 2), d=st.integers(1, 4),
       s=st.sampled_from([1, 2, 3]), mode=st.sampled_from(["conv", "max", "avg"]), cls=st.booleans())
@settings(max_examples=20, deadline=None)
def test_pooling_attention_without_rel_pos_counted_equals_exact(h, w, heads, d, s, mode, cls):
    C = heads * d                               # any grid, ⌈h/s⌉ pooled sizes: no rel-pos tables to fit
    layer = MultiScaleAttention(C, C, (h, w), num_heads=heads, mode=mode, kernel_q=3, kernel_kv=3, stride_q=s,
                                stride_kv=s, has_cls_token=cls, rel_pos_type="none").eval()
    counted = count_macs(lambda x: layer(x, (h, w)), mv.zeros(1, h * w + cls, C)).total
    assert counted == formulas.pooling_attention_exact(h, w, C, stride_q=s, stride_kv=s, cls_token=cls,
                                                       rel_pos=False, mode=mode)


def test_mvitv2_t_224_matches_the_paper():
    from minivit.models import create_model
    from minivit.models.papers import PAPERS
    entry = PAPERS["mvitv2_t_224"]
    model = create_model("mvitv2_t_224").eval()
    params = count_params(model)
    macs = count_macs(model, mv.zeros(1, 3, 224, 224)).total
    assert params == 24_173_320 and abs(params / 1e6 / entry.params_m - 1) <= 0.01     # 24.17M vs 24M
    assert macs == 4_676_957_952 and abs(macs / 1e9 / entry.gmacs - 1) <= 0.05         # 4.677 vs 4.7 GMACs
