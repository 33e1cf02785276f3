"""SegFormer: parity with Hugging Face transformers' SegformerForSemanticSegmentation and
SegformerModel (logits and encoder maps in float64 within 1e-10, every parameter's gradient
within 1e-8 relative, at the converted size and at another one), the converter's dispatch and
errors, the papers' parameter counts, the decoder, and the tiny CPU model."""
import gc

import numpy as np
import pytest

import minivit.functional as F
import minivit.models.segformer  # noqa: F401  (registers the models)
from minivit import backend
from minivit.autograd import Tensor
from minivit.convert import cvt_from_transformers, from_transformers
from minivit.convert.segformer import hf_key_to_minivit
from minivit.models.registry import create_model
from minivit.models.segformer import MixVisionTransformer, Segformer, SegformerHead
from minivit.testing import gradcheck_directional
from minivit.testing.reference import randomize_


def host(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


# =========================================================================== Hugging Face parity
# Four stages (the paper's layout, tiny widths), three stages with mixed MLP ratios and heads,
# two stages with a 5/3 stem and a 3/2 merge: non-square inputs, each run at a second size too.
HF_CONFIGS = {
    "four_stages": dict(cfg=dict(num_encoder_blocks=4, depths=[1, 2, 1, 1], hidden_sizes=[8, 12, 16, 20],
                                 num_attention_heads=[1, 2, 2, 4], sr_ratios=[4, 2, 2, 1], mlp_ratios=[4, 4, 4, 4],
                                 patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], decoder_hidden_size=12,
                                 num_labels=5),
                        sizes=[(64, 48), (40, 72)]),
    "three_stages": dict(cfg=dict(num_encoder_blocks=3, depths=[2, 1, 2], hidden_sizes=[8, 16, 24],
                                  num_attention_heads=[2, 2, 3], sr_ratios=[2, 2, 1], mlp_ratios=[2, 4, 3],
                                  patch_sizes=[7, 3, 3], strides=[4, 2, 2], decoder_hidden_size=10,
                                  num_labels=3),
                         sizes=[(32, 40), (52, 36)]),
    "two_stages": dict(cfg=dict(num_encoder_blocks=2, depths=[1, 2], hidden_sizes=[6, 12],
                                num_attention_heads=[1, 3], sr_ratios=[3, 1], mlp_ratios=[4, 2],
                                patch_sizes=[5, 3], strides=[3, 2], decoder_hidden_size=8, num_labels=4),
                       sizes=[(27, 33), (45, 21)]),
}


def hf_or_skip():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


def make_hf(name, dtype, cls="SegformerForSemanticSegmentation", **overrides):
    """A random Hugging Face SegFormer with every weight, bias, norm affine and BatchNorm
    running statistic non-trivial (so a wrong or missing one changes the logits)."""
    transformers = hf_or_skip()
    import torch
    torch.manual_seed(0)
    hf = getattr(transformers, cls)(transformers.SegformerConfig(**{**HF_CONFIGS[name]["cfg"], **overrides})).to(dtype)
    randomize_(hf, batch_norm_stats=True)
    return hf.eval()


def hf_input(size, dtype, batch=2, seed=1):
    import torch
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=g, dtype=dtype)


def _torch_grads(hf, x, R):
    import torch
    hf.zero_grad()
    tx = x.clone().requires_grad_(True)
    logits = hf(pixel_values=tx).logits
    (logits * torch.from_numpy(R)).sum().backward()
    return logits.detach().numpy(), tx.grad.numpy(), {k: p.grad.numpy() for k, p in hf.named_parameters()}


def _our_grads(model, x, R, xp):
    model.zero_grad()
    tx = Tensor(xp.asarray(x.numpy()), requires_grad=True)
    logits = model(tx)
    (logits * Tensor(xp.asarray(R))).sum().backward()
    return host(logits), host(tx.grad), {k: host(p.grad) for k, p in model.named_parameters()}


def _check_grads(ours, theirs, zero=(), encoder_prefix="backbone."):
    """Logits within 1e-10; the input's and every parameter's gradient within 1e-8 of Hugging
    Face's, relative to its size. Our ``kv`` is Hugging Face's ``k_proj`` and ``v_proj`` stacked;
    the key bias gets exactly no gradient (it adds one q·b to a whole row of logits, which
    softmax ignores), on both sides; so do the Hugging Face names in ``zero``."""
    (l1, gx1, g1), (l2, gx2, g2) = ours, theirs
    assert l1.shape == l2.shape
    np.testing.assert_allclose(l1, l2, rtol=0, atol=1e-10)
    assert np.abs(l2).max() > 0.1                   # the logits are not trivially small
    np.testing.assert_allclose(gx1, gx2, rtol=0, atol=1e-8 * np.abs(gx2).max())
    largest = max(np.abs(g).max() for g in g2.values())
    seen = set()
    for hf_name, ref in g2.items():
        name = hf_key_to_minivit(hf_name, encoder_prefix)
        seen.add(name)
        got = g1[name]
        if ".k_proj." in hf_name or ".v_proj." in hf_name:
            half = ref.shape[0]
            got = got[:half] if ".k_proj." in hf_name else got[half:]
            if hf_name.endswith("k_proj.bias"):
                assert max(np.abs(got).max(), np.abs(ref).max()) < 1e-12 * largest, hf_name
                continue
        if hf_name in zero:
            assert max(np.abs(got).max(), np.abs(ref).max()) < 1e-12 * largest, hf_name
            continue
        scale = np.abs(ref).max()
        assert scale > 1e-6 * largest, f"{hf_name} gets (almost) no gradient: the test could not see an error"
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-8 * scale, err_msg=hf_name)
    assert seen == set(g1)                          # every one of our parameters was compared


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_logits_and_grads_match_transformers_float64(xp, device, name):
    """At the first size, and (no position encoding) the same converted model at a second one."""
    torch = pytest.importorskip("torch")
    hf = make_hf(name, torch.float64)
    model = from_transformers(hf).to(device)
    assert next(model.parameters()).dtype == np.float64 and isinstance(model, Segformer)
    for i, size in enumerate(HF_CONFIGS[name]["sizes"]):
        x = hf_input(size, torch.float64, seed=1 + i)
        out_shape = hf(pixel_values=x).logits.shape
        R = np.random.default_rng(2 + i).standard_normal(tuple(out_shape))
        _check_grads(_our_grads(model, x, R, xp), _torch_grads(hf, x, R))


@pytest.mark.parametrize("name", ["four_stages", "two_stages"])
def test_encoder_maps_match_transformers(name):
    """Every stage's map (B, C_i, h_i, w_i): the segmentation model's encoder against Hugging
    Face's hidden_states, and SegformerModel converted on its own (→ MixVisionTransformer)."""
    torch = pytest.importorskip("torch")
    hf = make_hf(name, torch.float64)
    model = from_transformers(hf)
    enc_hf = make_hf(name, torch.float64, cls="SegformerModel")
    enc = from_transformers(enc_hf)
    assert isinstance(enc, MixVisionTransformer) and enc.num_classes == 0
    for i, size in enumerate(HF_CONFIGS[name]["sizes"]):
        x = hf_input(size, torch.float64, seed=5 + i)
        with torch.no_grad():
            ref = [h.numpy() for h in hf(pixel_values=x, output_hidden_states=True).hidden_states]
            ref_enc = enc_hf(pixel_values=x, output_hidden_states=True)
        ours = model.forward_features(Tensor(x.numpy()))
        assert len(ours) == len(ref) == len(HF_CONFIGS[name]["cfg"]["depths"])
        for a, b in zip(ours, ref):
            assert a.shape == b.shape
            np.testing.assert_allclose(host(a), b, rtol=0, atol=1e-10)
        final, maps = enc.forward_intermediates(Tensor(x.numpy()))
        np.testing.assert_allclose(host(final), ref_enc.last_hidden_state.numpy(), rtol=0, atol=1e-10)
        for a, b in zip(maps, ref_enc.hidden_states):
            np.testing.assert_allclose(host(a), b.numpy(), rtol=0, atol=1e-10)


def test_image_classifier_matches_transformers_float64(xp, device):
    """SegformerForImageClassification (the MiT pre-training model): token mean → Linear."""
    torch = pytest.importorskip("torch")
    hf = make_hf("three_stages", torch.float64, cls="SegformerForImageClassification")
    model = from_transformers(hf).to(device)
    assert isinstance(model, MixVisionTransformer) and model.num_classes == 3
    x = hf_input((36, 44), torch.float64)
    R = np.random.default_rng(4).standard_normal((2, 3))
    _check_grads(_our_grads(model, x, R, xp), _torch_grads(hf, x, R), encoder_prefix="")


def test_logits_match_transformers_float32():
    torch = pytest.importorskip("torch")
    hf = make_hf("four_stages", torch.float32)
    model = from_transformers(hf)
    x = hf_input((64, 48), torch.float32)
    with torch.no_grad():
        ref = hf(pixel_values=x).logits.numpy()
    out = model(Tensor(x.numpy()))
    assert out.dtype == np.float32
    np.testing.assert_allclose(host(out), ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_training_mode_matches_transformers(xp, device):
    """Training mode without dropout or drop path: the decoder's BatchNorm uses the batch
    statistics (another backward) and updates its running statistics, as PyTorch's."""
    torch = pytest.importorskip("torch")
    hf = make_hf("three_stages", torch.float64, classifier_dropout_prob=0.0, drop_path_rate=0.0)
    model = from_transformers(hf).to(device)
    hf.train()
    model.train()
    x = hf_input((32, 40), torch.float64, batch=3)
    R = np.random.default_rng(3).standard_normal((3, 3, 8, 10))
    # With batch statistics the BatchNorm removes any per-channel constant added before it: the
    # projections' biases and the last stage's LayerNorm bias (which only reaches the decoder,
    # through a Linear and a bilinear resize, both of which keep a constant constant).
    zero = {f"decode_head.linear_projections.{i}.proj.bias" for i in range(3)} | {"segformer.stages.2.layer_norm.bias"}
    _check_grads(_our_grads(model, x, R, xp), _torch_grads(hf, x, R), zero=zero)
    ours = model.state_dict()
    for k in ("running_mean", "running_var"):
        np.testing.assert_allclose(host(ours[f"decode_head.batch_norm.{k}"]),
                                   hf.state_dict()[f"decode_head.batch_norm.{k}"].numpy(), rtol=0, atol=1e-12)


def test_converter_reads_the_architecture_and_names_unsupported_options():
    torch = pytest.importorskip("torch")
    hf = make_hf("two_stages", torch.float32)
    model = from_transformers(hf, dtype=np.float64)
    assert next(model.parameters()).dtype == np.float64 and not model.training
    assert model.num_parameters() == sum(p.numel() for p in hf.parameters())
    assert model.backbone.stages[0].patch_embed.proj.stride == (3, 3)
    assert model.backbone.stages[1].blocks[0].attn.sr is None             # sr_ratio 1: no reduction
    assert model.backbone.stages[0].norm.eps == 1e-5                      # read off HF's modules
    assert model.decode_head.embed_dim == 8 and model.num_classes == 4
    hf.config.hidden_act = "relu"
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        from_transformers(hf)
    hf.config.hidden_act = "gelu"
    hf.config.reshape_last_stage = False
    with pytest.raises(ValueError, match="reshape_last_stage=False"):
        from_transformers(hf)
    with pytest.raises(ValueError, match="no converter for transformers' Linear"):
        from_transformers(torch.nn.Linear(2, 2))


def test_cvt_is_one_case_of_from_transformers():
    torch = pytest.importorskip("torch")
    transformers = hf_or_skip()
    torch.manual_seed(0)
    hf = transformers.CvtForImageClassification(transformers.CvtConfig(
        embed_dim=[8, 12], num_heads=[1, 2], depth=[1, 2], num_labels=3, drop_path_rate=[0.0, 0.0],
        patch_sizes=[7, 3], patch_stride=[4, 2], patch_padding=[2, 1], cls_token=[False, True],
        qkv_bias=[True, True], mlp_ratio=[4.0, 4.0], drop_rate=[0.0, 0.0], attention_drop_rate=[0.0, 0.0],
        qkv_projection_method=["dw_bn"] * 2, kernel_qkv=[3, 3], padding_kv=[1, 1], stride_kv=[2, 2],
        padding_q=[1, 1], stride_q=[1, 1])).double().eval()
    x = hf_input((32, 32), torch.float64)
    with torch.no_grad():
        ref = hf(pixel_values=x).logits.numpy()
    for convert in (from_transformers, cvt_from_transformers):
        m = convert(hf)
        assert type(m).__name__ == "ConvolutionalVisionTransformer"
        np.testing.assert_allclose(host(m(Tensor(x.numpy()))), ref, rtol=0, atol=1e-10)


def test_key_names():
    assert hf_key_to_minivit("segformer.stages.3.blocks.1.attention.sequence_reduction.sequence_reduction.weight") \
        == "backbone.stages.3.blocks.1.attn.sr.weight"
    assert hf_key_to_minivit("segformer.stages.0.patch_embeddings.layer_norm.bias") \
        == "backbone.stages.0.patch_embed.norm.bias"
    assert hf_key_to_minivit("stages.2.layer_norm.weight") == "stages.2.norm.weight"           # SegformerModel
    assert hf_key_to_minivit("segformer.stages.1.blocks.0.mlp.dwconv.dwconv.weight") \
        == "backbone.stages.1.blocks.0.mlp.dwconv.weight"
    assert hf_key_to_minivit("decode_head.linear_projections.2.proj.weight") \
        == "decode_head.linear_projections.2.proj.weight"
    keys = set(create_model("segformer_tiny").state_dict())
    for k in ["backbone.stages.0.patch_embed.proj.weight", "backbone.stages.0.blocks.1.attn.kv.weight",
              "backbone.stages.0.blocks.0.attn.sr.weight", "backbone.stages.3.norm.bias",
              "decode_head.linear_fuse.weight", "decode_head.batch_norm.running_var", "decode_head.classifier.bias"]:
        assert k in keys, k
    assert "decode_head.linear_fuse.bias" not in keys and "backbone.stages.3.blocks.0.attn.sr.weight" not in keys


# =========================================================================== decoder and model behaviour
def test_decoder_is_the_papers_equation_4():
    """Rebuilt by hand in NumPy: per-stage Linear, bilinear resize to the finest map, concat
    coarsest first, 1×1 fuse, BatchNorm (running stats), ReLU, 1×1 classifier."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    head = SegformerHead((4, 6, 8), embed_dim=5, num_classes=3, dropout=0.0).to(np.float64).eval()
    head.batch_norm.running_mean.data[...] = rng.uniform(-0.5, 0.5, 5)
    head.batch_norm.running_var.data[...] = rng.uniform(0.5, 2.0, 5)
    feats = [rng.standard_normal((2, c, s, s + 1)) for c, s in [(4, 8), (6, 4), (8, 2)]]
    out = host(head([Tensor(f) for f in feats]))
    assert out.shape == (2, 3, 8, 9)
    maps = []
    for f, mlp in zip(feats, head.linear_projections):
        w, b = host(mlp.proj.weight), host(mlp.proj.bias)
        p = np.einsum("bchw,oc->bohw", f, w) + b[None, :, None, None]
        p = torch.nn.functional.interpolate(torch.from_numpy(p), size=(8, 9), mode="bilinear",
                                            align_corners=False).numpy()
        maps.append(p)
    x = np.einsum("bchw,oc->bohw", np.concatenate(maps[::-1], 1), host(head.linear_fuse.weight)[:, :, 0, 0])
    bn = head.batch_norm
    x = (x - host(bn.running_mean)[None, :, None, None]) / np.sqrt(host(bn.running_var)[None, :, None, None] + 1e-5)
    x = np.maximum(x * host(bn.weight)[None, :, None, None] + host(bn.bias)[None, :, None, None], 0)
    ref = np.einsum("bchw,oc->bohw", x, host(head.classifier.weight)[:, :, 0, 0]) \
        + host(head.classifier.bias)[None, :, None, None]
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="got 2 feature maps but was built for 3 stages"):
        head([Tensor(f) for f in feats[:2]])


def test_segformer_tiny_any_size_and_gradients(xp, device):
    m = create_model("segformer_tiny", num_classes=6).to(device).train()
    assert 0.5e6 < m.num_parameters() < 1.5e6
    assert m(Tensor(xp.asarray(np.random.randn(1, 3, 32, 32).astype(np.float32)))).shape == (1, 6, 8, 8)
    x = Tensor(xp.asarray(np.random.randn(2, 3, 64, 64).astype(np.float32)))
    logits = m(x)
    assert logits.shape == (2, 6, 16, 16) and logits.dtype == np.float32     # 1/4 resolution
    y = Tensor(xp.asarray(np.random.randint(0, 6, (2, 64, 64))))
    up = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)   # the paper's loss
    F.cross_entropy(up, y).backward()
    for name, p in m.named_parameters():
        g = np.abs(host(p.grad))
        assert np.isfinite(g).all(), name
        assert g.max() > 0 or name.endswith("attn.kv.bias"), name     # kv.bias: its key half gets none


def test_gradcheck_directional_float64():
    m = Segformer(embed_dims=(4, 8), depths=(1, 1), num_heads=(1, 2), sr_ratios=(2, 1), decoder_dim=4,
                  num_classes=3, decoder_dropout=0.0, drop_path_rate=0.0).to(np.float64).eval()
    m.decode_head.batch_norm.running_var.data[...] = np.random.uniform(0.5, 2.0, 4)
    x = Tensor(np.random.randn(2, 3, 16, 12), requires_grad=True)
    gradcheck_directional(lambda x, *ps: m(x), x, *m.parameters(), n_directions=3)


def test_bad_configs_and_inputs_raise_clearly():
    with pytest.raises(ValueError, match=r"patch_sizes\[1\]=2 ≤ strides\[1\]=2"):
        MixVisionTransformer(embed_dims=(4, 8), depths=(1, 1), num_heads=(1, 1), sr_ratios=(1, 1),
                             patch_sizes=(7, 2), strides=(4, 2))
    with pytest.raises(ValueError, match="num_heads has 3 entries"):
        MixVisionTransformer(embed_dims=(4, 8), depths=(1, 1), num_heads=(1, 1, 1))
    with pytest.raises(ValueError, match="3 input channels"):
        create_model("segformer_tiny")(Tensor(np.zeros((1, 1, 32, 32), dtype=np.float32)))


def test_mit_as_a_timm_style_backbone():
    m = create_model("mit_b0", features_only=True, out_indices=(1, 3))
    assert m.feature_info.channels() == [64, 256] and m.feature_info.reduction() == [8, 32]
    maps = m(Tensor(np.random.randn(1, 3, 64, 96).astype(np.float32)))
    assert [tuple(f.shape) for f in maps] == [(1, 64, 8, 12), (1, 256, 2, 3)]
    clf = create_model("mit_b0", num_classes=7)
    assert clf(Tensor(np.random.randn(1, 3, 64, 64).astype(np.float32))).shape == (1, 7)


# =========================================================================== the papers' sizes
# Encoder parameters of MiT-B0 … B5 and the decoder widths (256 for B0/B1, 768 for B2-B5), and
# the whole SegFormer-B0 with ADE20K's 150 classes, as the SegFormer paper prints them.
@pytest.mark.parametrize("variant,encoder_m,decoder_dim", [
    ("b0", 3.3, 256), ("b1", 13.1, 256), ("b2", 24.2, 768), ("b3", 44.0, 768), ("b4", 60.8, 768), ("b5", 81.4, 768)])
def test_mit_encoder_parameter_counts(variant, encoder_m, decoder_dim):
    m = create_model(f"mit_{variant}")
    n = m.num_parameters()
    assert m.embed_dims[-1] == (256 if variant == "b0" else 512)
    assert all(b.mlp.fc1.out_features == 4 * st.patch_embed.proj.out_channels
               for st in m.stages for b in st.blocks)                       # MLP ratio 4 in every stage
    del m
    gc.collect()
    assert abs(n / 1e6 - encoder_m) / encoder_m < 0.015, n
    assert minivit.models.segformer._DECODER_DIM[variant] == decoder_dim


def test_segformer_b0_full_parameter_count_and_macs():
    """3.8M parameters (decoder 0.4M) with 150 classes, the same count as Hugging Face's B0
    (its default config); 8.4 GFLOPs (= GMACs) at ADE20K's 512×512, most of them the decoder's."""
    import minivit as mv
    from minivit.complexity import count_macs
    m = create_model("segformer_b0").eval()
    n = m.num_parameters()
    assert m.num_classes == 150 and m.decode_head.embed_dim == 256
    assert abs(n / 1e6 - 3.8) / 3.8 < 0.015, n
    enc = m.backbone.num_parameters()
    assert abs((n - enc) / 1e6 - 0.4) / 0.4 < 0.1            # the paper's decoder column: 0.4M
    if hf_or_skip():
        import transformers
        cfg = transformers.SegformerConfig(num_labels=150)
        assert n == transformers.SegformerForSemanticSegmentation(cfg).num_parameters()
        assert enc == transformers.SegformerModel(cfg).num_parameters() == create_model("mit_b0").num_parameters()
    r = count_macs(m, mv.zeros(1, 3, 512, 512))
    decoder = sum(v for k, v in r.by_module.items() if k.startswith("decode_head"))
    assert abs(r.total / 1e9 - 8.4) / 8.4 < 0.01, r.total
    assert 0.5 < decoder / r.total < 0.7                    # the decoder's fuse at 128×128 dominates B0


def test_the_classifier_starts_near_zero():
    """A fresh SegFormer's first logits are small (classifier N(0, 0.01²), as mmsegmentation's), so the
    first per-pixel loss is near log K, not the 11.8 of a classifier initialised like the encoder's convs."""
    import minivit as mv
    from minivit.models import create_model
    mv.manual_seed(0)
    model = create_model("segformer_tiny", num_classes=5)
    out = model(mv.randn(2, 3, 64, 64)).numpy()
    assert np.abs(out).max() < 1.0
    assert np.allclose(model.decode_head.classifier.bias.numpy(), 0)
