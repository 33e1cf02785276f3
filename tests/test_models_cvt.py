"""CvT: parity with Hugging Face transformers' CvtForImageClassification (logits in float32
and float64, gradients of every parameter in float64, BatchNorm in eval and training mode),
the building blocks' shapes and errors, registry configurations and parameter counts,
gradcheck, and dropout / drop path behaviour."""
import gc

import numpy as np
import pytest

import minivit.functional as F
import minivit.models.cvt  # noqa: F401  (registers the models)
from minivit import backend
from minivit.autograd import Tensor
from minivit.convert.cvt import from_transformers, hf_key_to_minivit
from minivit.layers.conv_embed import ConvEmbed
from minivit.layers.conv_projection import ConvProjectionAttention
from minivit.models.cvt import ConvolutionalVisionTransformer
from minivit.models.registry import create_model
from minivit.testing import gradcheck_directional
from minivit.testing.reference import randomize_


def host(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


def tiny(**kw):
    """A small CvT (3 stages, 32×32) for the engine-only checks."""
    cfg = dict(img_size=32, num_classes=5, embed_dims=(8, 12, 16), depths=(1, 1, 1), num_heads=(1, 2, 2),
               patch_sizes=(3, 3, 3), patch_strides=(2, 2, 2), patch_paddings=(1, 1, 1), drop_path_rate=0.0)
    cfg.update(kw)
    return ConvolutionalVisionTransformer(**cfg)


# =========================================================================== Hugging Face parity
def hf_or_skip():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


# Hugging Face's CvtStage indexes its drop-path list by the *stage* number, so stage i
# needs depth > i there. Configurations: the CvT layout (class token in the last stage,
# qkv bias), no class token and no qkv bias on a non-square image with 2 stages, and one
# stage with a class token, mixed-up kernel/stride/padding and mlp_ratio.
HF_CONFIGS = {
    "cls_qkvbias": dict(cfg=dict(embed_dim=[8, 12, 16], num_heads=[1, 2, 2], depth=[1, 2, 3], num_labels=5,
                                 drop_path_rate=[0.0, 0.0, 0.0]), size=(32, 32)),
    "nocls_nobias": dict(cfg=dict(embed_dim=[8, 16], num_heads=[2, 4], depth=[1, 2], num_labels=3,
                                  patch_sizes=[7, 3], patch_stride=[4, 2], patch_padding=[2, 1],
                                  cls_token=[False, False], qkv_bias=[False, False], mlp_ratio=[4.0, 2.0],
                                  drop_rate=[0.0, 0.0], attention_drop_rate=[0.0, 0.0],
                                  drop_path_rate=[0.0, 0.0], qkv_projection_method=["dw_bn"] * 2,
                                  kernel_qkv=[3, 3], padding_kv=[1, 1], stride_kv=[2, 2], padding_q=[1, 1],
                                  stride_q=[1, 1]), size=(28, 20)),
    "one_stage_cls": dict(cfg=dict(embed_dim=[12], num_heads=[3], depth=[2], num_labels=4, patch_sizes=[5],
                                   patch_stride=[3], patch_padding=[1], cls_token=[True], qkv_bias=[True],
                                   mlp_ratio=[3.0], drop_rate=[0.0], attention_drop_rate=[0.0],
                                   drop_path_rate=[0.0], qkv_projection_method=["dw_bn"], kernel_qkv=[5],
                                   padding_kv=[1], stride_kv=[3], padding_q=[2], stride_q=[1]), size=(17, 23)),
}


def make_hf(name, dtype):
    """A random Hugging Face CvT whose every weight, bias, norm affine and BatchNorm running
    statistic is non-trivial (so a wrong or missing one changes the logits)."""
    hf_or_skip()
    import torch
    from transformers import CvtConfig, CvtForImageClassification
    torch.manual_seed(0)
    hf = CvtForImageClassification(CvtConfig(**HF_CONFIGS[name]["cfg"])).to(dtype)
    randomize_(hf, is_embedding=lambda name: "cls_token" in name, batch_norm_stats=True)
    for m in hf.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.num_batches_tracked.fill_(7)
    return hf.eval()


def hf_logits(hf, x):
    """Hugging Face's logits. Its head reads ``outputs[1]`` (the class token) even when the last
    stage has none, which raises IndexError (transformers 5.x); there we run its other branch,
    LayerNorm → token mean → classifier, by hand on its encoder's output."""
    if hf.config.cls_token[-1]:
        return hf(pixel_values=x).logits
    h = hf.cvt(pixel_values=x).last_hidden_state                 # (B, C, H, W)
    return hf.classifier(hf.layernorm(h.flatten(2).transpose(1, 2)).mean(1))


def hf_input(name, dtype, batch=2):
    import torch
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, *HF_CONFIGS[name]["size"], generator=g, dtype=dtype)


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_logits_match_transformers_float32(xp, device, name):
    torch = pytest.importorskip("torch")
    hf = make_hf(name, torch.float32)
    model = from_transformers(hf).to(device)
    x = hf_input(name, torch.float32)
    with torch.no_grad():
        ref = hf_logits(hf, x).numpy()
    out = model(Tensor(xp.asarray(x.numpy())))
    assert out.dtype == np.float32 and out.device == device
    np.testing.assert_allclose(host(out), ref, rtol=0, atol=1e-5)
    assert np.abs(ref).max() > 0.1                  # the logits are not trivially small


def _torch_grads(hf, x, R):
    import torch
    hf.zero_grad()
    tx = x.clone().requires_grad_(True)
    logits = hf_logits(hf, tx)
    (logits * torch.from_numpy(R)).sum().backward()
    return logits.detach().numpy(), tx.grad.numpy(), {k: p.grad.numpy() for k, p in hf.named_parameters()}


def _our_grads(model, x, R, xp):
    model.zero_grad()
    tx = Tensor(xp.asarray(x.numpy()), requires_grad=True)
    logits = model(tx)
    (logits * Tensor(xp.asarray(R))).sum().backward()
    return host(logits), host(tx.grad), {k: host(p.grad) for k, p in model.named_parameters()}


def structurally_zero(model, name):
    """Parameters whose gradient is exactly zero for any input, by the architecture:

    * the key Linear's bias shifts *all* keys by one vector c, adding the same q·c to
      every logit of a row, which softmax ignores (true of any attention); in a stage
      without a class token, so does the key BatchNorm's bias;
    * with a class token, the head reads only that token, whose query skips the convs, so
      the last block's query conv and BatchNorm only feed map-token outputs nobody reads.
    """
    if not name.startswith("stage"):
        return False
    stage = model.stages[int(name.split(".")[0][len("stage"):])]
    if name.endswith("attn.proj_k.bias") or (stage.cls_token is None and name.endswith("attn.conv_proj_k.bn.bias")):
        return True
    last = f"stage{model.num_stages - 1}.blocks.{len(model.stages[-1].blocks) - 1}.attn.conv_proj_q."
    return model.uses_cls_token and name.startswith(last)


def _check_grads(model, ours, theirs):
    """Every parameter's float64 gradient within 1e-8 of Hugging Face's, relative to its size;
    the structurally zero ones (see above) must be ≈ 0 on both sides."""
    (l1, gx1, g1), (l2, gx2, g2) = ours, theirs
    np.testing.assert_allclose(l1, l2, rtol=0, atol=1e-10)
    np.testing.assert_allclose(gx1, gx2, rtol=0, atol=1e-8 * np.abs(gx2).max())
    assert len(g1) == len(g2)
    largest = max(np.abs(g).max() for g in g2.values())
    for hf_name, ref in g2.items():
        name = hf_key_to_minivit(hf_name)
        got = g1[name]
        if structurally_zero(model, name):
            assert max(np.abs(got).max(), np.abs(ref).max()) < 1e-12 * largest, name
            continue
        scale = np.abs(ref).max()
        assert scale > 1e-6 * largest, f"{hf_name} gets (almost) no gradient: the test could not see an error"
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-8 * scale, err_msg=hf_name)


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_logits_and_grads_match_transformers_float64(xp, device, name):
    torch = pytest.importorskip("torch")
    hf = make_hf(name, torch.float64)
    model = from_transformers(hf).to(device)
    assert next(model.parameters()).dtype == np.float64
    x = hf_input(name, torch.float64)
    R = np.random.default_rng(2).standard_normal((x.shape[0], hf.config.num_labels))
    _check_grads(model, _our_grads(model, x, R, xp), _torch_grads(hf, x, R))


def test_training_mode_batchnorm_matches_transformers(xp, device):
    """Training mode: BatchNorm uses the batch's statistics (a different backward) and
    updates its running statistics; both must match PyTorch."""
    torch = pytest.importorskip("torch")
    name = "cls_qkvbias"
    hf = make_hf(name, torch.float64)
    model = from_transformers(hf).to(device)
    hf.train()
    model.train()
    x = hf_input(name, torch.float64, batch=3)
    R = np.random.default_rng(3).standard_normal((3, hf.config.num_labels))
    _check_grads(model, _our_grads(model, x, R, xp), _torch_grads(hf, x, R))
    ours = model.state_dict()
    for k, v in hf.state_dict().items():
        if "running" in k or "num_batches" in k:
            np.testing.assert_allclose(host(ours[hf_key_to_minivit(k)]), v.numpy(), rtol=0, atol=1e-12,
                                       err_msg=k)


def test_converter_reads_the_architecture():
    torch = pytest.importorskip("torch")
    hf = make_hf("nocls_nobias", torch.float32)
    model = from_transformers(hf, dtype=np.float64)
    assert next(model.parameters()).dtype == np.float64 and not model.training
    assert model.num_stages == 2 and not model.uses_cls_token and model.num_classes == 3
    assert model.stage1.blocks[0].attn.proj_q.bias is None
    assert model.stage0.patch_embed.norm.eps == hf.layernorm.eps
    assert model.num_parameters() == sum(p.numel() for p in hf.parameters())
    hf.config.qkv_projection_method = ["avg", "dw_bn"]
    with pytest.raises(ValueError, match="dw_bn"):
        from_transformers(hf)


def test_parameter_names_follow_the_released_code():
    model = tiny()
    keys = set(model.state_dict())
    for k in ["stage0.patch_embed.proj.weight", "stage0.patch_embed.norm.bias", "stage2.cls_token",
              "stage0.blocks.0.attn.conv_proj_q.conv.weight", "stage1.blocks.0.attn.conv_proj_k.bn.running_var",
              "stage2.blocks.0.attn.conv_proj_v.bn.num_batches_tracked", "stage2.blocks.0.attn.proj_q.weight",
              "stage2.blocks.0.attn.proj.bias", "stage1.blocks.0.norm1.weight", "stage1.blocks.0.mlp.fc2.weight",
              "norm.weight", "head.bias"]:
        assert k in keys, k
    assert "stage0.cls_token" not in keys and "stage0.blocks.0.attn.conv_proj_q.conv.bias" not in keys
    assert model.no_weight_decay() == {"stage2.cls_token"}
    assert hf_key_to_minivit("cvt.encoder.stages.2.layers.11.attention.attention.convolution_projection_value"
                             ".convolution_projection.normalization.running_mean") \
        == "stage2.blocks.11.attn.conv_proj_v.bn.running_mean"


# =========================================================================== building blocks
@pytest.mark.parametrize("k,s,p,H,W", [(7, 4, 2, 32, 32), (3, 2, 1, 9, 14), (5, 3, 0, 17, 11)])
def test_conv_embed_grid_and_layernorm(xp, device, k, s, p, H, W):
    emb = ConvEmbed(k, 3, 6, s, p).to(device, np.float64)
    x = Tensor(xp.asarray(np.random.randn(2, 3, H, W)))
    tokens, (h, w) = emb(x)
    assert (h, w) == ((H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1) == emb.output_size(H, W)
    assert tokens.shape == (2, h * w, 6)
    # the tokens are the conv map read row by row, each normalised over its channels
    conv = host(emb.proj(x)).reshape(2, 6, h * w).transpose(0, 2, 1)
    ref = (conv - conv.mean(-1, keepdims=True)) / np.sqrt(conv.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(host(tokens), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls,stride_kv,H,W", [(False, 2, 8, 8), (True, 2, 5, 7), (False, 1, 4, 6)])
def test_squeezed_attention_shapes(xp, device, cls, stride_kv, H, W):
    attn = ConvProjectionAttention(8, 2, stride_kv=stride_kv, with_cls_token=cls).to(device, np.float64)
    attn.store_attn = True
    n = int(cls)
    x = Tensor(xp.asarray(np.random.randn(2, n + H * W, 8)))
    y = attn(x, (H, W))
    assert y.shape == x.shape
    kv = (-(-H // stride_kv)) * (-(-W // stride_kv))   # 3×3 conv, padding 1: ⌈H/s⌉⌈W/s⌉ keys
    assert attn.attn_map.shape == (2, 2, n + H * W, n + kv)
    np.testing.assert_allclose(host(attn.attn_map).sum(-1), 1.0, rtol=1e-12)


def test_attention_scale_is_the_released_codes():
    assert ConvProjectionAttention(64, 4).scale == 64 ** -0.5


def test_class_token_skips_the_convolutions():
    """The depth-wise convs act on the map tokens only: the class token's attention row is
    softmax over [q_cls·k_cls, q_cls·k_map] with q_cls = proj_q(cls), k_cls = proj_k(cls)
    straight from the token, even after the convs change."""
    attn = ConvProjectionAttention(4, 1, with_cls_token=True).to(np.float64).eval()
    attn.store_attn = True
    x = Tensor(np.random.randn(1, 1 + 9, 4))
    y0 = host(attn(x, (3, 3)))
    attn.conv_proj_q.conv.weight.data *= 3.0
    attn.conv_proj_k.conv.weight.data *= -2.0
    attn.conv_proj_v.conv.weight.data *= 0.5
    y1 = host(attn(x, (3, 3)))
    assert not np.allclose(y0[:, 1:], y1[:, 1:])          # map tokens see the convs
    # the class token's row, rebuilt by hand: its q and k come from the raw token, no conv
    q = attn.proj_q(x[:, :1]).data
    k = attn.proj_k(x[:, :1]).data
    logit_self = float((q * k).sum()) * attn.scale
    a = host(attn.attn_map)[0, 0, 0]                       # softmax over [cls, map keys…]
    map_keys = attn.proj_k(attn.conv_proj_k(x[:, 1:].transpose(1, 2).reshape(1, 4, 3, 3))).data[0]
    logits = np.concatenate([[logit_self], (q[0, 0] @ map_keys.T) * attn.scale])
    np.testing.assert_allclose(a, np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum(),
                               rtol=1e-10)


# =========================================================================== model behaviour and errors
def test_forward_features_and_any_image_size():
    m = tiny(img_size=None).to(np.float64).eval()
    for size in [(32, 32), (20, 28)]:
        x = Tensor(np.random.randn(2, 3, *size))
        f = m.forward_features(x)
        assert f.shape == (2, 1, 16)                               # the normalised class token
        assert m.forward_head(f, pre_logits=True).shape == (2, 16)
        assert m(x).shape == (2, 5)
    m = tiny(cls_token=False).to(np.float64).eval()
    assert m.forward_features(Tensor(np.random.randn(2, 3, 32, 32))).shape == (2, 16, 16)   # 4×4 tokens
    assert m.no_weight_decay() == set()


def test_bad_input_and_configs_raise_clearly():
    m = tiny()
    with pytest.raises(ValueError, match="3 input channels"):
        m(Tensor(np.zeros((1, 4, 32, 32), dtype=np.float32)))
    with pytest.raises(ValueError, match="img_size"):
        m(Tensor(np.zeros((1, 3, 28, 32), dtype=np.float32)))
    with pytest.raises(ValueError, match="too small"):
        tiny(img_size=4, patch_sizes=(5, 3, 3), patch_paddings=(0, 1, 1))        # 5×5 kernel on 4×4
    with pytest.raises(ValueError, match="too small"):
        tiny(img_size=None, patch_paddings=0)(Tensor(np.zeros((1, 3, 2, 2), dtype=np.float32)))
    with pytest.raises(ValueError, match="num_heads has 2 entries"):
        tiny(num_heads=(1, 2))
    with pytest.raises(ValueError, match="stride_q=1"):
        tiny(stride_q=2)
    with pytest.raises(ValueError, match="dw_bn"):
        tiny(qkv_proj_method="avg")
    with pytest.raises(ValueError, match="divisible by num_heads"):
        tiny(num_heads=3)


def test_float32_stays_float32():
    m = tiny()
    out = m(Tensor(np.random.randn(2, 3, 32, 32).astype(np.float32)))
    assert out.dtype == np.float32


def test_every_parameter_gets_a_finite_gradient(xp, device):
    m = create_model("cvt_tiny").to(device).train()
    x = Tensor(xp.asarray(np.random.randn(4, 3, 32, 32).astype(np.float32)))
    y = Tensor(xp.asarray(np.array([0, 3, 7, 9])))
    F.cross_entropy(m(x), y).backward()
    largest = max(np.abs(host(p.grad)).max() for p in m.parameters())
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        g = np.abs(host(p.grad))
        assert np.isfinite(g).all(), name
        if structurally_zero(m, name):             # zero up to float32 rounding
            assert g.max() < 1e-6 * largest, name
        else:
            assert g.max() > 0, name


@pytest.mark.parametrize("train", [False, True])
def test_gradcheck_directional_float64(train):
    m = tiny(embed_dims=(4, 6, 8), num_heads=(1, 2, 2), img_size=16, num_classes=3).to(np.float64)
    m.train(train)                                  # eval: running stats; train: batch stats
    for mod in m.modules():                         # non-trivial running stats and affines
        if hasattr(mod, "running_var") and mod.running_var is not None:
            mod.running_mean.data[...] = np.random.uniform(-0.5, 0.5, mod.running_mean.shape)
            mod.running_var.data[...] = np.random.uniform(0.5, 2.0, mod.running_var.shape)
    x = Tensor(np.random.randn(2, 3, 16, 16), requires_grad=True)
    gradcheck_directional(lambda x, *ps: m(x), x, *m.parameters(), n_directions=3)


def test_dropout_and_drop_path_only_in_training():
    drop = tiny(depths=(1, 2, 2), drop_rate=0.2, attn_drop_rate=0.2, drop_path_rate=(0.3, 0.3, 0.3))
    plain = tiny(depths=(1, 2, 2), drop_path_rate=0.0)
    drop.to(np.float64), plain.to(np.float64)
    plain.load_state_dict(drop.state_dict())
    assert any(type(mod).__name__ == "DropPath" for mod in drop.modules())
    x = Tensor(np.random.randn(4, 3, 32, 32))
    drop.eval(), plain.eval()
    np.testing.assert_array_equal(host(drop(x)), host(plain(x)))           # eval: no randomness
    drop.train(), plain.train()
    a, b = host(drop(x)), host(drop(x))
    assert not np.allclose(a, b)                                           # train: random masks
    np.testing.assert_array_equal(host(plain(x)), host(plain(x)))          # … and only from them


def test_drop_path_schedule():
    m = tiny(depths=(1, 2, 3), drop_path_rate=0.3)
    rates = [[getattr(b.drop_path, "drop_prob", 0.0) for b in st.blocks] for st in m.stages]
    assert rates == [[0.0], [0.0, 0.0], [0.0, 0.15, 0.3]]
    m = tiny(depths=(2, 1, 1), drop_path_rate=(0.2, 0.0, 0.0))
    assert m.stage0.blocks[1].drop_path.drop_prob == pytest.approx(0.2)


# =========================================================================== registry
def test_cvt_tiny_for_cifar(xp, device):
    m = create_model("cvt_tiny").to(device)
    n = m.num_parameters()
    assert 1e6 <= n <= 6e6
    assert m.grid_sizes == [(16, 16), (8, 8), (4, 4)]
    out = m(Tensor(xp.asarray(np.random.randn(2, 3, 32, 32).astype(np.float32))))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name,paper", [("cvt_13_224", 19.98e6), ("cvt_21_224", 31.54e6)])
def test_imagenet_parameter_counts(name, paper):
    m = create_model(name)
    n = sum(p.numel() for p in m.parameters())
    assert m.num_classes == 1000 and m.grid_sizes == [(56, 56), (28, 28), (14, 14)]
    del m
    gc.collect()
    assert abs(n - paper) / paper < 0.01, n
