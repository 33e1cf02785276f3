"""MLP-Mixer and ConvMixer: the blocks against timm's (values and float64 gradients) and against
their written-out maths, whole-model timm parity (eval logits float32/float64, every gradient in
float64), finite-difference gradients, the counted MACs against the exact formulas, errors, and
the converter's refusals."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit as mv
import minivit.functional as F
from minivit import nn
from minivit.autograd import Tensor
from minivit.complexity import count_macs, formulas
from minivit.layers.convmixer_layer import convmixer_layer
from minivit.layers.mixer_block import MixerBlock
from minivit.models.convmixer import ConvMixer
from minivit.models.mlp_mixer import MlpMixer
from minivit.models.registry import create_model
from minivit.testing import gradcheck_directional
from tests.conftest import torch_or_skip
from tests.test_models_vit import host, timm_parity


def _randomize(torch_model, seed=0):
    """Every parameter ~ N(0, 0.3²) and BatchNorm's running statistics away from 0/1: timm's Mixer
    starts with a zero head (every logit 0), which would make a parity test unable to fail."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in torch_model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
        for m in torch_model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return torch_model


# --------------------------------------------------------------------------- the Mixer layer
def test_token_mixing_is_a_matrix_product_on_the_token_axis():
    """The paper's eq. 1, written with explicit matrices: U = X + (W₂ σ(W₁ LN(X)ᵀ + b₁) + b₂)ᵀ."""
    rng = np.random.default_rng(0)
    blk = MixerBlock(6, seq_len=5, mlp_ratio=(2.0, 1.0)).to(dtype=np.float64)
    for p in blk.parameters():
        p.data[...] = rng.standard_normal(p.shape)
    x = rng.standard_normal((2, 5, 6))
    xt = Tensor(x)
    y = host(blk.token_mixing(xt))
    ln = host(blk.norm1(xt))                                        # (B, S, C)
    W1, b1 = host(blk.mlp_tokens.fc1.weight), host(blk.mlp_tokens.fc1.bias)   # (D_S, S), (D_S,)
    W2, b2 = host(blk.mlp_tokens.fc2.weight), host(blk.mlp_tokens.fc2.bias)   # (S, D_S), (S,)
    h = host(F.gelu(Tensor(np.einsum("ds,bsc->bdc", W1, ln) + b1[:, None])))  # (B, D_S, C): per channel
    ref = np.einsum("sd,bdc->bsc", W2, h) + b2[:, None]                       # (B, S, C)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    # a token-mixing MLP moves information between tokens: token 0's output depends on token 4
    x2 = x.copy()
    x2[:, 4] += rng.standard_normal(6)          # not a constant: LayerNorm would remove that
    assert np.abs(host(blk.token_mixing(Tensor(x2)))[:, 0] - y[:, 0]).max() > 1e-3


def test_mixer_block_matches_timm(xp, device):
    torch = torch_or_skip()
    pytest.importorskip("timm")
    from timm.models.mlp_mixer import MixerBlock as TimmBlock
    theirs = _randomize(TimmBlock(8, 6, mlp_ratio=(0.5, 2.0)).double())
    ours = MixerBlock(8, 6, mlp_ratio=(0.5, 2.0)).to(device=device, dtype=np.float64)
    ours.load_state_dict(theirs.state_dict())
    x_np = np.random.default_rng(1).standard_normal((3, 6, 8))
    tx, x = torch.tensor(x_np, requires_grad=True), Tensor(xp.asarray(x_np), requires_grad=True)
    ty, y = theirs(tx), ours(x)
    np.testing.assert_allclose(host(y), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    r = np.random.default_rng(2).standard_normal(ty.shape)
    (ty * torch.tensor(r)).sum().backward()
    (y * Tensor(xp.asarray(r))).sum().backward()
    np.testing.assert_allclose(host(x.grad), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    ours_p = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(host(ours_p[name].grad), p.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_mixer_block_finite_differences():
    rng = np.random.default_rng(3)
    blk = MixerBlock(4, seq_len=3, mlp_ratio=(1.0, 2.0)).to(dtype=np.float64)
    x = Tensor(rng.standard_normal((2, 3, 4)), requires_grad=True)
    gradcheck_directional(lambda t: blk(t), x)


def test_convmixer_layer_finite_differences():
    """Training mode: BatchNorm on the batch's statistics, the residual around the depthwise conv."""
    rng = np.random.default_rng(4)
    layer = convmixer_layer(3, kernel_size=3).to(dtype=np.float64)
    x = Tensor(rng.standard_normal((2, 3, 5, 4)), requires_grad=True)
    gradcheck_directional(lambda t: layer(t), x)


def test_convmixer_depthwise_conv_mixes_only_its_neighbourhood():
    """k×k depthwise: an output pixel sees its own channel within (k−1)/2 pixels, nothing else."""
    layer = convmixer_layer(2, kernel_size=3).to(dtype=np.float64).eval()
    spatial = layer[0].fn
    x = np.zeros((1, 2, 7, 7))
    base = host(spatial(Tensor(x)))
    x[0, 0, 3, 3] = 1.0
    changed = np.abs(host(spatial(Tensor(x))) - base) > 0
    assert not changed[0, 1].any()                                   # the other channel: untouched
    rows, cols = np.nonzero(changed[0, 0])
    assert rows.min() == 2 and rows.max() == 4 and cols.min() == 2 and cols.max() == 4


# --------------------------------------------------------------------------- the models vs timm
MIXER_CONFIGS = [
    dict(img_size=16, patch_size=4, num_blocks=2, embed_dim=12, num_classes=5),
    # non-square image and patches, a single ratio for both MLPs, a stem LayerNorm
    dict(img_size=(12, 16), patch_size=(4, 8), num_blocks=1, embed_dim=8, mlp_ratio=2.0, stem_norm=True,
         num_classes=3),
    # no pooling: the head acts on every token, (B, S, num_classes)
    dict(img_size=8, patch_size=4, num_blocks=2, embed_dim=6, mlp_ratio=(1.0, 3.0), global_pool="", num_classes=4),
]


@pytest.mark.parametrize("cfg", MIXER_CONFIGS)
def test_mlp_mixer_matches_timm(cfg, xp, device):
    torch_or_skip()
    timm = pytest.importorskip("timm")
    tm = _randomize(timm.models.mlp_mixer.MlpMixer(**cfg))
    size = cfg["img_size"] if isinstance(cfg["img_size"], tuple) else (cfg["img_size"],) * 2
    x = np.random.default_rng(0).standard_normal((2, 3, *size))
    # The token MLP's output bias adds one constant to all channels of a token; every path from it
    # to the logits passes a LayerNorm over channels (norm2, the next norm1, the final norm), which
    # removes exactly that: its gradient is zero.
    timm_parity(tm, x, xp, device, zero_grads=("mlp_tokens.fc2.bias",))


CONVMIXER_CONFIGS = [
    dict(dim=8, depth=2, kernel_size=3, patch_size=2, num_classes=4),
    # ReLU (ConvMixer-768/32's), an even kernel ("same" pads one more at the bottom/right)
    dict(dim=6, depth=1, kernel_size=4, patch_size=3, num_classes=3, relu=True),
    # the grid without pooling: the head on (B, C, h, w) is the timm behaviour only with num_classes=0
    dict(dim=4, depth=2, kernel_size=5, patch_size=4, num_classes=0, global_pool=""),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("cfg", CONVMIXER_CONFIGS)
def test_convmixer_matches_timm(cfg, xp, device):
    torch = torch_or_skip()
    timm = pytest.importorskip("timm")
    cfg = dict(cfg)
    if cfg.pop("relu", False):
        cfg["act_layer"] = torch.nn.ReLU
    tm = _randomize(timm.models.convmixer.ConvMixer(**cfg))
    x = np.random.default_rng(0).standard_normal((2, 3, 13, 11))      # 13×11: P does not divide it
    if cfg.get("global_pool") == "" and not hasattr(tm, "global_pool"):
        # timm < 1.0.31 flattens the unpooled grid to (B, C·h·w): the converter says so, not a wrong shape
        from minivit.convert import from_timm
        with pytest.raises(ValueError, match=r"flattens the unpooled .*timm>=1\.0\.31"):
            from_timm(tm)
        return
    timm_parity(tm, x, xp, device)


def test_convmixer_takes_any_image_size_the_mixer_does_not():
    conv = ConvMixer(dim=4, depth=1, kernel_size=3, patch_size=2, num_classes=3).eval()
    for s in (8, 10, 32):
        assert conv(mv.zeros(1, 3, s, s)).shape == (1, 3)
    mixer = MlpMixer(img_size=16, patch_size=4, num_blocks=1, embed_dim=8, num_classes=3).eval()
    assert mixer(mv.zeros(1, 3, 16, 16)).shape == (1, 3)
    with pytest.raises(ValueError, match=r"built for 16×16 images \(16 patches\); a 32×32 input would give 64.*"
                                         r"img_size=\(32, 32\)"):
        mixer(mv.zeros(1, 3, 32, 32))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        create_model("mixer_tiny")(mv.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        create_model("convmixer_tiny")(mv.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="smaller than one 7×7 patch"):
        ConvMixer(dim=4, depth=1, patch_size=7, num_classes=2)(mv.zeros(1, 3, 5, 5))
    with pytest.raises(ValueError, match="global_pool"):
        MlpMixer(global_pool="token")
    with pytest.raises(ValueError, match="global_pool"):
        ConvMixer(dim=4, depth=1, global_pool="max")
    with pytest.raises(ValueError, match="seq_len=4"):
        MixerBlock(4, seq_len=4)(mv.zeros(1, 5, 4))


@pytest.mark.filterwarnings("ignore")
def test_converter_refuses_resmlp_and_gmlp():
    torch_or_skip()
    timm = pytest.importorskip("timm")
    from minivit.convert import from_timm
    for name, what in (("resmlp_12_224", "block ResBlock"), ("gmixer_12_224", "MLP GluMlp"),
                       ("gmlp_ti16_224", "block SpatialGatingBlock")):
        tm = timm.create_model(name, img_size=32, num_classes=3)
        with pytest.raises(ValueError, match=f"minivit.convert.mlp_mixer: timm's MlpMixer uses {what}"):
            from_timm(tm)


def test_mixer_init_is_timms():
    """The head starts at zero (so every class starts equal), the MLPs' biases near zero, and the
    channel MLP's weights at Xavier's scale."""
    m = create_model("mixer_tiny")
    assert not host(m.head.weight).any() and not host(m.head.bias).any()
    fc1 = m.blocks[0].mlp_channels.fc1
    fan_in, fan_out = fc1.weight.shape[1], fc1.weight.shape[0]
    bound = np.sqrt(6 / (fan_in + fan_out))
    w = host(fc1.weight)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert 0 < np.abs(host(fc1.bias)).max() < 1e-4


# --------------------------------------------------------------------------- counted = formula
@given(S=st.integers(1, 9), C=st.integers(1, 12), rs=st.sampled_from([0.5, 1.0, 2.0]), rc=st.sampled_from([1.0, 4.0]))
@settings(max_examples=20)
def test_mixer_block_counted_equals_exact(S, C, rs, rc):
    blk = MixerBlock(C, S, mlp_ratio=(rs, rc)).eval()
    counted = count_macs(blk, mv.zeros(1, S, C)).total
    ds = int(rs * C) or S           # a hidden width of 0 means "the input's" in Mlp, as in timm's
    assert counted == formulas.mixer_block_exact(S, C, ds, int(rc * C))


@given(h=st.integers(1, 7), w=st.integers(1, 7), C=st.integers(1, 12), k=st.sampled_from([1, 3, 4, 5]))
@settings(max_examples=20)
def test_convmixer_layer_counted_equals_exact(h, w, C, k):
    counted = count_macs(convmixer_layer(C, k).eval(), mv.zeros(1, C, h, w)).total
    assert counted == formulas.convmixer_layer_exact(h, w, C, k)


def test_mixer_cost_is_linear_in_tokens_attentions_is_not():
    """At a fixed D_S a Mixer layer's MACs grow as S; an attention block's as S²."""
    C = 16
    mix = [formulas.mixer_block_exact(S, C, C // 2, 4 * C) for S in (64, 256)]
    msa = [formulas.msa(h, h, C) for h in (8, 16)]
    assert mix[1] == 4 * mix[0]
    assert msa[1] > 4 * msa[0]


@pytest.mark.parametrize("name,size", [("mixer_tiny", 32), ("convmixer_tiny", 32)])
def test_model_macs_add_up_from_the_blocks(name, size):
    model = create_model(name).eval()
    total = count_macs(model, mv.zeros(1, 3, size, size)).total
    if name == "mixer_tiny":
        S, C = 64, 192
        blocks = 8 * formulas.mixer_block_exact(S, C, C // 2, 4 * C)
        rest = S * C * 3 * 4 * 4 + C * 10                             # patch conv + head
    else:
        C = 256
        blocks = 16 * formulas.convmixer_layer_exact(8, 8, C, 5)
        rest = 8 * 8 * C * 3 * 4 * 4 + C * 10
    assert total == blocks + rest
