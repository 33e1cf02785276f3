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


# ---------------------------------------------------------------- MViT v1 on video (3-D pooling attention)
@given(T=st.integers(1, 4), H=st.integers(2, 6), W=st.integers(2, 6), d=st.integers(1, 3),
       heads=st.sampled_from([1, 2]), k=st.sampled_from([[], [3, 3, 3], [1, 3, 3]]),
       s_q=st.sampled_from([[], [1, 2, 2], [2, 2, 2]]), s_kv=st.sampled_from([[], [1, 2, 2], [1, 1, 1]]),
       proj_after_attn=st.booleans(), K=st.integers(1, 4))
@settings(max_examples=20, deadline=None)
def test_mvit_video_counted_equals_exact(T, H, W, d, heads, k, s_q, s_kv, proj_after_attn, K):
    """A stem and two blocks (the first widening, the second pooling with the drawn kernel and
    strides; grids need not divide): counted MACs equal ``mvit_video_exact``, as integers."""
    from minivit.models.mvit_video import MSBlockConfig, MViT
    C = heads * d
    kq = k if s_q else ([3, 3, 3] if k else [])
    blocks = [MSBlockConfig(heads, C, 2 * C, [], [3, 3, 3], [], [1, 2, 2]),
              MSBlockConfig(heads, 2 * C, 2 * C, kq, k or [1, 1, 1], s_q, s_kv if k else [])]
    model = MViT((H, W), T, blocks, proj_after_attn=proj_after_attn, num_classes=K, dropout=0.0,
                 patch_embed_kernel=(1, 3, 3), patch_embed_stride=(1, 1, 1), patch_embed_padding=(0, 1, 1)).eval()
    counted = count_macs(model, mv.zeros(1, 3, T, H, W)).total
    assert counted == formulas.mvit_video_exact((T, H, W), blocks, K, 3 * 9, proj_after_attn=proj_after_attn)


def test_mvit_v1_b_formula_is_torchvisions_70_6_gmacs():
    """MViT-B 16×4 on one 16×224² clip: 70,599,407,808 MACs by the formula, which the counted model
    matches (test_complexity.py counts it against the paper's row); torchvision's mvit_v1_b weights
    list 70.599 GFLOPs."""
    from minivit.models.mvit_video import mvit_v1_block_setting
    from minivit.models.papers import PAPERS
    macs = formulas.mvit_video_exact((8, 56, 56), mvit_v1_block_setting(), 400, 3 * 3 * 7 * 7)
    assert macs == 70_599_407_808 and abs(macs / 1e9 / PAPERS["mvit_v1_b"].gmacs - 1) <= 0.05
