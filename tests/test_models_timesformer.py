"""TimeSformer: parity with Hugging Face transformers' TimesformerForVideoClassification for the
three attention types (logits in float32 and float64, every parameter's gradient in float64),
the divided block's gradient against finite differences, the paper's parameter count, the
space-only model's blindness to frame order, input errors and the registry configurations."""
import numpy as np
import pytest

import minivit as mv
import minivit.functional as F
from minivit import backend
from minivit.autograd import Tensor
from minivit.complexity import count_params
from minivit.convert import timesformer_from_transformers
from minivit.convert.timesformer import hf_key_to_minivit
from minivit.layers import DividedSpaceTimeBlock
from minivit.models import TimeSformer, create_model
from minivit.testing import gradcheck_directional
from minivit.testing.reference import assert_grads_close, backward_both, randomize_


def host(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


# =========================================================================== Hugging Face parity
ATTENTION = ["divided_space_time", "joint_space_time", "space_only"]
# 3 frames of 12×12, patch 4: a 3×3 grid, 27 patch tokens; 3 heads of 4 channels, 2 blocks,
# MLP 3× (not ViT's 4×), qkv bias: small, but every axis has a different length.
HF_CFG = dict(image_size=12, patch_size=4, num_channels=3, num_frames=3, hidden_size=12, num_hidden_layers=2,
              num_attention_heads=3, intermediate_size=36, num_labels=5, qkv_bias=True)


def make_hf(attention_type, dtype, **kw):
    """A random Hugging Face TimeSformer whose every weight, bias, norm affine and embedding is
    non-trivial (the zero-initialised time embedding and temporal_dense included), so a wrong or
    missing one changes the logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.TimesformerConfig(**dict(HF_CFG, attention_type=attention_type, **kw))
    hf = transformers.TimesformerForVideoClassification(cfg).to(dtype)
    randomize_(hf, is_embedding=lambda name: "embeddings" in name and "patch" not in name)  # class, position, time
    return hf.eval()


def hf_input(dtype, batch=2):
    import torch
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, HF_CFG["num_frames"], 3, HF_CFG["image_size"], HF_CFG["image_size"], generator=g,
                       dtype=dtype)


def our_logits(model, x):
    """The logits Hugging Face's model returns: (B, K), or for space-only one row per frame
    (B·T, K), since its port never averages the frames (see minivit/convert/timesformer.py)."""
    if model.attention_type == "space_only":
        return model.head(model.norm(model.forward_tokens(x))[:, 0])     # (B·T, K)
    return model(x)


@pytest.mark.parametrize("attention_type", ATTENTION)
def test_logits_match_transformers_float32(xp, device, attention_type):
    torch = pytest.importorskip("torch")
    hf = make_hf(attention_type, torch.float32)
    model = timesformer_from_transformers(hf).to(device)
    x = hf_input(torch.float32)
    with torch.no_grad():
        ref = hf(pixel_values=x).logits.numpy()
    out = our_logits(model, Tensor(xp.asarray(x.numpy())))
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_allclose(host(out), ref, rtol=0, atol=1e-5)
    assert np.abs(ref).max() > 0.1


@pytest.mark.parametrize("attention_type", ATTENTION)
def test_logits_and_grads_match_transformers_float64(xp, device, attention_type):
    """Logits within 1e-10; the input's and every parameter's gradient within 1e-8 of its
    largest entry (relative), for a random cotangent R on the logits."""
    torch = pytest.importorskip("torch")
    hf = make_hf(attention_type, torch.float64)
    model = timesformer_from_transformers(hf).to(device)
    assert next(model.parameters()).dtype == np.float64
    x = hf_input(torch.float64)

    ref, ours = backward_both(hf, model, x, xp=xp, torch_call=lambda m, x: m(pixel_values=x).logits,
                              twin_call=our_logits)
    np.testing.assert_allclose(ours["out"], ref["out"], rtol=0, atol=1e-10)
    assert_grads_close(ref, ours, rtol=1e-8, rename=hf_key_to_minivit)


def test_converter_reads_the_architecture_and_names():
    torch = pytest.importorskip("torch")
    hf = make_hf("divided_space_time", torch.float32, qkv_bias=False, layer_norm_eps=1e-5,
                 hidden_act="gelu_pytorch_tanh")
    model = timesformer_from_transformers(hf, dtype=np.float64)
    assert next(model.parameters()).dtype == np.float64 and not model.training
    assert (model.num_frames, model.embed_dim, len(model.blocks), model.num_classes) == (3, 12, 2, 5)
    assert model.blocks[0].attn.qkv.bias is None and model.blocks[1].temporal_attn.qkv.bias is None
    assert model.norm.eps == 1e-5 and model.blocks[0].mlp.act.approximate == "tanh"
    assert count_params(model) == sum(p.numel() for p in hf.parameters())
    assert hf_key_to_minivit("timesformer.encoder.layer.11.temporal_attention.output.dense.weight") \
        == "blocks.11.temporal_attn.proj.weight"
    assert hf_key_to_minivit("timesformer.encoder.layer.0.output.dense.bias") == "blocks.0.mlp.fc2.bias"
    assert hf_key_to_minivit("timesformer.embeddings.time_embeddings") == "time_embed"
    with pytest.raises(ValueError, match="TimesformerForVideoClassification"):
        timesformer_from_transformers(torch.nn.Linear(2, 2))
    # the generic dispatcher finds it too, with the same weights
    from minivit.convert import from_transformers
    twin = from_transformers(hf, dtype=np.float64)
    assert isinstance(twin, TimeSformer) and not twin.training
    x = mv.randn(1, 3, 3, 12, 12).to(dtype=np.float64)
    np.testing.assert_array_equal(twin(x).numpy(), model(x).numpy())


# =========================================================================== the model itself
def tiny(attention_type="divided_space_time", **kw):
    cfg = dict(img_size=8, patch_size=4, num_frames=3, num_classes=4, embed_dim=8, depth=2, num_heads=2,
               attention_type=attention_type)
    cfg.update(kw)
    return TimeSformer(**cfg)


def test_divided_block_gradcheck():
    blk = DividedSpaceTimeBlock(8, 2, mlp_ratio=2.0, qkv_bias=True).to(dtype=np.float64)
    for p in blk.parameters():                                  # temporal_fc etc. not left at zero
        p.data[...] = np.random.default_rng(p.numel()).standard_normal(p.shape) * 0.3
    x = mv.tensor(np.random.default_rng(0).standard_normal((2, 1 + 4 * 3, 8)), requires_grad=True)
    assert gradcheck_directional(lambda x, *params: blk(x, 3), x, *blk.parameters(), n_directions=4)
    with pytest.raises(ValueError, match="1 \\+ N·T"):
        blk(mv.zeros(1, 12, 8), 5)


def test_space_only_cannot_see_the_order_of_frames_but_divided_and_joint_can():
    """Space-only attention never compares frames and has no time embedding: reversing the clip
    (the same frames, motion the other way) gives the same logits. Divided and joint do not."""
    x = mv.randn(2, 3, 3, 8, 8)
    rev = mv.tensor(x.numpy()[:, ::-1].copy())
    for attention_type in ATTENTION:
        model = tiny(attention_type).eval()
        rng = np.random.default_rng(0)
        for name, p in model.named_parameters():   # all non-trivial: time embedding, temporal_fc
            scale = 1.0 if name.endswith("embed") else 0.3
            p.data[...] = (name.endswith("norm1.weight") or name.endswith("norm2.weight")) \
                + rng.standard_normal(p.shape) * scale
        a, b = model(x).numpy(), model(rev).numpy()
        if attention_type == "space_only":
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(a).max())
        else:
            assert np.abs(a - b).max() > 1e-2 * np.abs(a).max(), attention_type


def test_paper_configuration_parameters():
    """TimeSformer (8×224², divided): 121.4M in the paper's Table 1 (ViT-B plus the time branch)."""
    model = create_model("timesformer_base_patch16_224")
    n = count_params(model)
    assert abs(n / 121.4e6 - 1) < 0.01, n
    vit_b = count_params(create_model("vit_base_16_224", num_classes=400))
    D = 768
    # per block: time attention's qkv + proj, temporal_fc, temporal_norm1; plus the time embedding
    assert n - vit_b == 12 * (3 * D * D + 3 * D + D * D + D + D * D + D + 2 * D) + 8 * D


@pytest.mark.parametrize("attention_type", ATTENTION)
def test_tiny_trains_one_step(attention_type):
    model = create_model("timesformer_tiny", attention_type=attention_type)
    assert 1e5 <= count_params(model) <= 1e6
    x = mv.randn(2, 8, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 2)
    F.cross_entropy(logits, mv.tensor([1, 0])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and np.isfinite(p.grad).all(), name
    assert model.no_weight_decay() <= set(dict(model.named_parameters()))


def test_temporal_fc_starts_at_zero_after_the_first_block():
    model = tiny(depth=3)
    assert np.abs(model.blocks[0].temporal_fc.weight.numpy()).max() > 0
    assert all(np.abs(b.temporal_fc.weight.numpy()).max() == 0 for b in list(model.blocks)[1:])
    assert "time_embed" not in dict(tiny("space_only").named_parameters())


def test_wrong_inputs_name_the_problem():
    model = tiny().eval()
    with pytest.raises(ValueError, match="clip batch \\(B, T, C, H, W\\)"):
        model(mv.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="num_frames=3"):
        model(mv.zeros(1, 4, 3, 8, 8))
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        model(mv.zeros(1, 3, 1, 8, 8))
    with pytest.raises(ValueError, match="img_size=8×8"):
        model(mv.zeros(1, 3, 3, 12, 12))
    with pytest.raises(ValueError, match="attention_type"):
        tiny("divided")


# =========================================================================== from-scratch init options
def test_time_embedding_init_options():
    """The released init (zero time embedding, Linear std 0.02) is the default; ``time_embed_init``
    'sincos' starts the time embedding at the Transformer's sinusoidal table (distinct rows, smooth in
    t), 'normal' at a truncated normal, both times ``time_embed_scale``; ``init_std`` is the Linear
    weights' std. The converter builds the class with the defaults and overwrites the embedding."""
    from minivit.models.timesformer import sincos_table
    mv.manual_seed(0)
    released = create_model("timesformer_tiny")
    assert np.abs(released.time_embed.numpy()).max() == 0
    assert abs(released.blocks[0].attn.qkv.weight.numpy().std() - 0.02) < 0.002
    mv.manual_seed(0)
    model = create_model("timesformer_tiny", time_embed_init="sincos", init_std=0.125)
    e = model.time_embed.numpy()[0]                                            # (T, D)
    np.testing.assert_allclose(e, sincos_table(8, 64), atol=1e-7)
    assert e[0, 0] == 0 and e[0, 32] == 1 and abs(e[1, 0] - np.sin(1)) < 1e-6 and abs(e[3, 1] - np.sin(3 * 10000 ** (-2 / 64))) < 1e-6
    gaps = np.linalg.norm(e[:, None] - e[None], axis=-1) + np.eye(8)          # every frame its own row
    assert gaps.min() > 0.5
    assert abs(model.blocks[0].attn.qkv.weight.numpy().std() - 0.125) < 0.01
    assert abs(model.head.weight.numpy().std() - 0.125) < 0.05
    assert np.abs(model.blocks[1].temporal_fc.weight.numpy()).max() == 0      # still the released block init
    half = create_model("timesformer_tiny", time_embed_init="sincos", time_embed_scale=0.5)
    np.testing.assert_allclose(half.time_embed.numpy()[0], 0.5 * sincos_table(8, 64), atol=1e-7)
    mv.manual_seed(0)
    normal = create_model("timesformer_tiny", time_embed_init="normal", time_embed_scale=0.3).time_embed.numpy()
    assert 0.25 < normal.std() < 0.35 and np.abs(normal).max() <= 0.6
    assert create_model("timesformer_tiny", attention_type="space_only", time_embed_init="sincos").time_embed is None
    with pytest.raises(ValueError, match="time_embed_init"):
        create_model("timesformer_tiny", time_embed_init="learned")


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time"])
def test_sincos_init_sees_frame_order_as_built(attention_type):
    """With the sinusoidal time embedding the untrained model already tells a clip from the clip
    played backwards (the released init cannot, tests/test_video_runs.py)."""
    mv.manual_seed(0)
    model = create_model("timesformer_tiny", attention_type=attention_type, depth=2, time_embed_init="sincos",
                         init_std=0.125).eval()
    x = np.random.default_rng(0).standard_normal((2, 8, 3, 32, 32)).astype(np.float32)
    with mv.no_grad():
        a, b = model(mv.tensor(x)).numpy(), model(mv.tensor(x[:, ::-1].copy())).numpy()
    assert np.abs(a - b).max() > 1e-3
