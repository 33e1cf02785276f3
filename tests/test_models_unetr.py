"""UNETR (minivit.models.unetr) against MONAI's reference ``monai.networks.nets.UNETR``: the
converter (minivit.convert.from_monai) on small random models in float64 (outputs within 1e-10,
every parameter's and the input's gradient within 1e-8 relative), the state_dict keys, the BTCV
model's parameter count, and the errors. LeakyReLU (the conv blocks' activation): finite
differences and torch. The MONAI tests skip when monai is not installed
(``pip install --no-deps monai einops``)."""
import numpy as np
import pytest

import minivit as mv
import minivit.functional as F
from minivit import Tensor, nn
from minivit.convert import from_monai
from minivit.models import create_model
from minivit.models.unetr import UNETR
from minivit.testing import gradcheck

from conftest import _cupy_or_skip, torch_or_skip


def host(a):
    return mv.backend.to_numpy(a)


def t64(xp, arr, grad=True):
    return Tensor(xp.asarray(arr, dtype=np.float64), requires_grad=grad)


@pytest.fixture
def monai_nets():
    torch_or_skip()
    pytest.importorskip("einops", reason="MONAI's attention needs einops: pip install --no-deps monai einops")
    return pytest.importorskip("monai.networks.nets",
                               reason="monai not installed: pip install --no-deps monai einops")


# =========================================================================== LeakyReLU
@pytest.mark.parametrize("slope", [0.01, 0.3])
def test_leaky_relu_gradcheck(xp, slope):
    x = np.random.default_rng(0).standard_normal((3, 5))
    x[np.abs(x) < 1e-3] = 0.5                                 # keep finite differences off the kink
    gradcheck(lambda t: F.leaky_relu(t, slope), t64(xp, x))


def test_leaky_relu_matches_torch_including_zero(xp):
    torch = torch_or_skip()
    x = np.array([-2.0, -0.0, 0.0, 1e-9, 3.0])
    ours = t64(xp, x)
    y = nn.LeakyReLU(0.1)(ours)
    ref = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.leaky_relu(ref, 0.1)
    np.testing.assert_array_equal(host(y.data), yt.detach().numpy())
    y.backward(xp.ones(5))
    yt.backward(torch.ones(5, dtype=torch.float64))
    np.testing.assert_array_equal(host(ours.grad), ref.grad.numpy())


def test_batchnorm3d_rejects_4d():
    with pytest.raises(ValueError, match="BatchNorm3d expects a 5-D NCDHW input"):
        nn.BatchNorm3d(2)(Tensor(np.zeros((2, 2, 3, 3), np.float32)))


# =========================================================================== parity with MONAI
SMALL = dict(feature_size=4, hidden_size=12, mlp_dim=20, num_heads=2)
CASES = {   # name: (MONAI kwargs, input shape)
    "instance_res": (dict(in_channels=1, out_channels=3, img_size=16, **SMALL), (2, 1, 16, 16, 16)),
    "batch_basic": (dict(in_channels=2, out_channels=2, img_size=16, norm_name="batch", res_block=False,
                         **SMALL), (2, 2, 16, 16, 16)),
    "affine_perceptron_noconv_qkvbias": (
        dict(in_channels=1, out_channels=2, img_size=(16, 32, 16), norm_name=("instance", {"affine": True}),
             conv_block=False, proj_type="perceptron", qkv_bias=True, **SMALL), (1, 1, 16, 32, 16)),
    "2d": (dict(in_channels=3, out_channels=2, img_size=32, spatial_dims=2, **SMALL), (2, 3, 32, 32)),
}


def _pair(monai_nets, kwargs, seed=0):
    import torch
    torch.manual_seed(seed)
    ref = monai_nets.UNETR(**kwargs).double()
    # random affine norms and biases (their init is 1 / 0), so a wrong key or a missing term shows
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("bias") or ".norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return ref


def _check_parity(monai_nets, case, device="cpu"):
    import torch
    kwargs, shape = CASES[case]
    ref = _pair(monai_nets, kwargs)
    ref.train()                                                 # batch norm: batch statistics
    ours = from_monai(ref).to(device)
    xp = mv.backend.xp_for(device)
    assert ours.training and next(iter(ours.parameters())).dtype == np.float64
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    x = np.random.default_rng(1).standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    xm = Tensor(xp.asarray(x), requires_grad=True)
    yt, y = ref(xt), ours(xm)
    assert y.shape == tuple(yt.shape) == (shape[0], kwargs["out_channels"], *shape[2:])
    np.testing.assert_allclose(host(y.data), yt.detach().numpy(), rtol=0, atol=1e-10)
    w = np.random.default_rng(2).standard_normal(y.shape)
    (yt * torch.tensor(w)).sum().backward()
    (y * Tensor(xp.asarray(w))).sum().backward()
    mine = dict(ours.named_parameters())
    checked = 0
    for name, p in ref.named_parameters():
        g_ref = p.grad
        if g_ref is None:                                       # MONAI's unused norm_cross_attn
            assert "norm_cross_attn" in name
            assert mine[name].grad is None or not np.any(host(mine[name].grad))
            continue
        g_ref = g_ref.numpy()
        err = np.abs(host(mine[name].grad) - g_ref).max() / max(np.abs(g_ref).max(), 1e-300)
        assert err <= 1e-8, f"{name}: relative gradient error {err:.2e}"
        checked += 1
    assert checked >= 100
    g_ref = xt.grad.numpy()
    assert np.abs(host(xm.grad) - g_ref).max() <= 1e-8 * np.abs(g_ref).max()
    if kwargs.get("norm_name") == "batch":                      # the running statistics moved alike
        for k, v in ref.state_dict().items():
            if "running" in k:
                np.testing.assert_allclose(host(ours.state_dict()[k]), v.numpy(), rtol=0, atol=1e-12, err_msg=k)
        ref.eval()
        ours.eval()
        with torch.no_grad():
            np.testing.assert_allclose(host(ours(Tensor(xp.asarray(x))).data), ref(torch.tensor(x)).numpy(),
                                       rtol=0, atol=1e-10)


@pytest.mark.parametrize("case", list(CASES))
def test_from_monai_matches_output_and_every_gradient(monai_nets, case):
    _check_parity(monai_nets, case)


@pytest.mark.parametrize("case", ["batch_basic", "affine_perceptron_noconv_qkvbias"])
def test_from_monai_parity_on_the_cupy_side(monai_nets, case):
    """The same on the GPU path: CuPy on a GPU, or the strict CuPy stand-in on the CPU."""
    _cupy_or_skip()
    _check_parity(monai_nets, case, device="cuda")


def test_from_monai_keeps_attention_maps_and_eval_mode(monai_nets):
    import torch
    ref = _pair(monai_nets, dict(in_channels=1, out_channels=2, img_size=32, save_attn=True, **SMALL)).eval()
    ours = from_monai(ref)
    assert not ours.training
    x = np.random.default_rng(3).standard_normal((1, 1, 32, 32, 32))
    with torch.no_grad():
        yt = ref(torch.tensor(x))
    np.testing.assert_allclose(ours(Tensor(x)).data, yt.numpy(), rtol=0, atol=1e-10)
    for i in (0, 11):
        a, b = ours.vit.blocks[i].attn.att_mat, ref.vit.blocks[i].attn.att_mat
        assert a.shape == tuple(b.shape) == (1, 2, 8, 8)
        np.testing.assert_allclose(a.data, b.numpy(), rtol=0, atol=1e-12)


def test_from_monai_float32_default_dtype(monai_nets):
    ref = monai_nets.UNETR(1, 2, 16, **SMALL)
    ours = from_monai(ref)
    assert next(iter(ours.parameters())).dtype == np.float32
    assert ours.hidden_size == 12 and ours.img_size == (16, 16, 16)


def test_from_monai_names_every_unsupported_option(monai_nets):
    import torch
    ref = monai_nets.UNETR(1, 2, 16, **SMALL)
    ref.vit.blocks[0].mlp.fn = torch.nn.ReLU()
    ref.vit.blocks[0].attn.causal = True
    ref.encoder1.layer.lrelu = torch.nn.PReLU()
    with pytest.raises(ValueError) as e:
        from_monai(ref)
    msg = str(e.value)
    assert msg.startswith("from_monai: this UNETR uses options minivit's UNETR does not have")
    for part in ("causal attention", "MLP activation ReLU", "PReLU"):
        assert part in msg
    with pytest.raises(ValueError, match="no converter for MONAI's Linear; supported: UNETR"):
        from_monai(torch.nn.Linear(2, 2))


def test_unetr_btcv_parameter_count_matches_monai(monai_nets):
    import torch
    with torch.device("meta"):                                  # count only: no 92M-weight allocation
        ref = monai_nets.UNETR(in_channels=1, out_channels=14, img_size=(96, 96, 96), feature_size=16,
                               hidden_size=768, mlp_dim=3072, num_heads=12, norm_name="instance", res_block=True)
    n_ref = sum(p.numel() for p in ref.parameters())
    ours = create_model("unetr_btcv")
    assert sum(p.numel() for p in ours.parameters()) == n_ref
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    norm_cross = 12 * 2 * 768                # MONAI's unused cross-attention LayerNorms, kept for the keys
    assert n_ref - norm_cross > 92e6


# =========================================================================== without MONAI
def test_unetr_tiny_shapes_and_backward():
    model = create_model("unetr_tiny")
    x = Tensor(np.random.default_rng(0).standard_normal((1, 1, 32, 32, 32)).astype(np.float32))
    y = model(x)
    assert y.shape == (1, 4, 32, 32, 32) and y.dtype == np.float32
    y.mean().backward()
    assert all(p.grad is not None and np.isfinite(p.grad).all()
               for n, p in model.named_parameters() if "norm_cross_attn" not in n)


def test_unetr_errors():
    with pytest.raises(ValueError, match=r"multiple of the patch size 16.*got \(24, 32, 32\).*\(32, 32, 32\)"):
        UNETR(1, 2, (24, 32, 32), **SMALL)
    with pytest.raises(ValueError, match="norm_name 'group' is not supported"):
        UNETR(1, 2, 16, norm_name="group", **SMALL)
    with pytest.raises(ValueError, match="proj_type must be one of"):
        UNETR(1, 2, 16, proj_type="linear", **SMALL)
    with pytest.raises(ValueError, match=r"hidden_size \(12\) must be divisible by num_heads \(5\)"):
        UNETR(1, 2, 16, feature_size=4, hidden_size=12, mlp_dim=8, num_heads=5)
    model = UNETR(1, 2, 16, **SMALL)
    with pytest.raises(ValueError, match=r"expected input \(B, 1, 16, 16, 16\), got shape \(1, 1, 32, 32, 32\)"):
        model(Tensor(np.zeros((1, 1, 32, 32, 32), np.float32)))
