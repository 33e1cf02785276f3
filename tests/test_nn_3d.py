"""The volume layers (nn/layers3d.py): Conv3d, ConvTranspose2d/3d, InstanceNorm1d/2d/3d, MaxPool3d,
AvgPool3d, Upsample. PyTorch parity in float64 with torch's weights loaded (forward, input and
parameter gradients), train/eval and running statistics as torch, state_dict keys, repr and
PyTorch's default initialisation."""
import inspect
import math

import numpy as np
import pytest

from minivit import nn
from minivit.autograd import Tensor
from tests.conftest import torch_or_skip
from tests.test_nn_layers import host, torch_parity


@pytest.mark.parametrize("kw", [dict(kernel_size=3, padding=1), dict(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
                                dict(kernel_size=2, stride=2, bias=False),
                                dict(kernel_size=(3, 1, 2), groups=2, padding="same", dilation=(1, 1, 2)),
                                dict(kernel_size=3, groups=4, padding=1)])
def test_conv3d_matches_torch(xp, device, kw):
    torch = torch_or_skip()
    torch_parity(torch, nn.Conv3d(4, 8, **kw), torch.nn.Conv3d(4, 8, **kw), np.random.randn(2, 4, 3, 5, 4), xp, device)


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("kw", [dict(kernel_size=2, stride=2),
                                dict(kernel_size=3, stride=2, padding=1, output_padding=1),
                                dict(kernel_size=3, groups=2, dilation=2, bias=False),
                                dict(kernel_size=1, stride=3, groups=4)])
def test_conv_transpose_matches_torch(xp, device, nd, kw):
    torch = torch_or_skip()
    ours, theirs = getattr(nn, f"ConvTranspose{nd}d"), getattr(torch.nn, f"ConvTranspose{nd}d")
    torch_parity(torch, ours(4, 8, **kw), theirs(4, 8, **kw), np.random.randn(*(2, 4) + (3,) * nd), xp, device)


@pytest.mark.parametrize("nd", [2, 3])
def test_conv_transpose_output_size(nd):
    """forward(x, output_size) picks the output_padding that gives it, as torch; out of range is a clear error."""
    torch = torch_or_skip()
    ours = getattr(nn, f"ConvTranspose{nd}d")(2, 3, 3, stride=3, padding=1).to(dtype=np.float64)
    theirs = getattr(torch.nn, f"ConvTranspose{nd}d")(2, 3, 3, stride=3, padding=1).double()
    ours.load_state_dict(theirs.state_dict())
    x = np.random.randn(*(1, 2) + (3,) * nd)
    for size in [(7,) * nd, (8,) * nd, (9,) * (nd - 1) + (7,), (1, 3) + (9,) * nd]:
        y, ty = ours(Tensor(x), output_size=size), theirs(torch.tensor(x), output_size=list(size))
        assert y.shape == tuple(ty.shape)
        np.testing.assert_allclose(host(y), ty.detach().numpy(), atol=1e-12)
    with pytest.raises(ValueError, match=r"valid sizes range from \(7,.*to \(9,"):
        ours(Tensor(x), output_size=(10,) * nd)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kw", [{}, dict(affine=True), dict(affine=True, track_running_stats=True, momentum=0.3),
                                dict(track_running_stats=True, momentum=None), dict(affine=True, bias=False)])
def test_instance_norm_matches_torch_in_train_and_eval(xp, device, nd, kw):
    """Two training steps (running statistics updated as torch's), then evaluation (which uses
    them when tracked, and the instance statistics otherwise); unbatched input too."""
    torch = torch_or_skip()
    cls = getattr(torch.nn, f"InstanceNorm{nd}d")
    if "bias" in kw and "bias" not in inspect.signature(cls.__init__).parameters:
        pytest.skip(f"torch {torch.__version__}'s InstanceNorm has no bias= (a newer torch has)")
    theirs = cls(3, **kw)
    if theirs.affine:
        with torch.no_grad():   # not the default 1/0, so that loading them is tested
            for p in theirs.parameters():
                p.uniform_(0.5, 1.5)
    ours = getattr(nn, f"InstanceNorm{nd}d")(3, **kw)
    shape = (2, 3) + (4, 3, 2)[:nd]
    torch_parity(torch, ours, theirs, np.random.randn(*shape) * 2 + 1, xp, device)
    torch_parity(torch, ours, theirs, np.random.randn(*shape), xp, device)
    for name, buf in theirs.named_buffers():
        np.testing.assert_allclose(host(getattr(ours, name)), buf.numpy(), rtol=1e-12, err_msg=name)
    ours.eval(), theirs.eval()
    torch_parity(torch, ours, theirs, np.random.randn(*shape), xp, device)
    torch_parity(torch, ours, theirs, np.random.randn(*shape[1:]), xp, device)     # unbatched


def test_instance_norm_state_dict_and_checks():
    torch = torch_or_skip()
    for kw in [{}, dict(affine=True), dict(track_running_stats=True), dict(affine=True, track_running_stats=True)]:
        assert list(nn.InstanceNorm3d(4, **kw).state_dict()) == list(torch.nn.InstanceNorm3d(4, **kw).state_dict())
    with pytest.raises(ValueError, match=r"expected a 5-D \(batched\) or 4-D"):
        nn.InstanceNorm3d(3)(Tensor(np.zeros((2, 3, 4))))
    with pytest.raises(ValueError, match=r"expected 4 channels"):
        nn.InstanceNorm2d(4, affine=True)(Tensor(np.zeros((2, 3, 4, 4))))


@pytest.mark.parametrize("layer, kw", [
    ("MaxPool3d", dict(kernel_size=2)), ("MaxPool3d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("MaxPool3d", dict(kernel_size=(1, 2, 2), dilation=(1, 2, 1))),
    ("AvgPool3d", dict(kernel_size=2)), ("AvgPool3d", dict(kernel_size=3, stride=2, padding=1)),
    ("AvgPool3d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ("Upsample", dict(scale_factor=2)), ("Upsample", dict(size=(3, 7, 5), mode="trilinear")),
    ("Upsample", dict(scale_factor=(1.5, 2, 0.5), mode="trilinear", align_corners=True)),
])
def test_pool_and_upsample_match_torch(xp, device, layer, kw):
    torch = torch_or_skip()
    torch_parity(torch, getattr(nn, layer)(**kw), getattr(torch.nn, layer)(**kw), np.random.randn(2, 3, 4, 5, 6),
                 xp, device)


def test_upsample_keeps_4d_behaviour(xp, device):
    torch = torch_or_skip()
    for kw in (dict(scale_factor=2, mode="bilinear"), dict(size=(5, 3), mode="nearest")):
        torch_parity(torch, nn.Upsample(**kw), torch.nn.Upsample(**kw), np.random.randn(2, 3, 4, 5), xp, device)


def test_max_pool3d_return_indices_matches_torch():
    torch = torch_or_skip()
    x = np.random.randn(2, 3, 4, 5, 6)
    y, idx = nn.MaxPool3d(2, return_indices=True)(Tensor(x))
    ty, tidx = torch.nn.MaxPool3d(2, return_indices=True)(torch.tensor(x))
    np.testing.assert_array_equal(host(y), ty.numpy())
    np.testing.assert_array_equal(host(idx), tidx.numpy())


@pytest.mark.parametrize("make", [
    lambda m: m.Conv3d(4, 6, (1, 3, 3), padding=1, bias=False), lambda m: m.Conv3d(4, 8, 3, groups=2, padding="same"),
    lambda m: m.ConvTranspose3d(4, 6, 3, stride=2, output_padding=1, groups=2),
    lambda m: m.ConvTranspose2d(4, 6, 2, stride=2, dilation=2, bias=False),
    lambda m: m.InstanceNorm3d(4, affine=True, track_running_stats=True), lambda m: m.InstanceNorm1d(4),
    lambda m: m.MaxPool3d(2), lambda m: m.AvgPool3d(3, 2, 1), lambda m: m.Upsample(scale_factor=2, mode="trilinear"),
    lambda m: m.Upsample(size=(2, 3, 4))])
def test_repr_matches_torch(make):
    torch = torch_or_skip()
    assert repr(make(nn)) == repr(make(torch.nn))


@pytest.mark.parametrize("make, fan_in", [(lambda: nn.Conv3d(6, 4, (2, 3, 3), groups=2), 3 * 18),
                                          (lambda: nn.ConvTranspose3d(6, 4, (2, 3, 3), groups=2), 2 * 18),
                                          (lambda: nn.ConvTranspose2d(3, 8, 4), 8 * 16)])
def test_default_init_is_pytorchs(make, fan_in):
    """weight and bias ~ U(±1/√fan_in), fan_in = weight.shape[1]·Πk: for a transposed conv that is
    out_channels/groups·Πk (its weight is (C_in, C_out/groups, *k)), as torch."""
    m = make()
    bound = 1 / math.sqrt(fan_in)
    for p in (m.weight, m.bias):
        v = host(p)
        assert v.dtype == np.float32 and np.abs(v).max() <= bound
    assert np.abs(host(m.weight)).max() > 0.9 * bound      # spread over the whole range, not a narrower one
    assert host(nn.InstanceNorm3d(4, affine=True).weight).tolist() == [1, 1, 1, 1]


def test_conv3d_layer_errors():
    with pytest.raises(ValueError, match=r"divisible by groups"):
        nn.Conv3d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"padding_mode='zeros'"):
        nn.Conv3d(2, 4, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match=r"tuple of 3 ints"):
        nn.Conv3d(2, 4, (3, 3))
