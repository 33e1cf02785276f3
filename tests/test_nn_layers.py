"""The layers: PyTorch parity in float64 (weights loaded from torch's state_dict, forward
and backward), dtypes end to end, train/eval behaviour, and a gradcheck of a small MLP."""
import numpy as np
import pytest

from minivit import backend, nn
from minivit.autograd import Tensor
from minivit.testing import gradcheck_directional
from tests.conftest import torch_or_skip


def host(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


def torch_parity(torch, ours, theirs, x_np, xp, device, atol=1e-10):
    """Load torch's weights into ours (float64, on device), run both forward and backward
    with the same upstream gradient, and compare outputs, input grads and param grads."""
    theirs = theirs.double()
    ours.to(device=device, dtype=np.float64)
    ours.load_state_dict(theirs.state_dict())
    x = Tensor(xp.asarray(x_np), requires_grad=True)
    tx = torch.tensor(x_np, requires_grad=True)
    y, ty = ours(x), theirs(tx)
    assert y.dtype == np.float64 and y.device == device
    np.testing.assert_allclose(host(y), ty.detach().numpy(), rtol=1e-10, atol=atol)
    g = np.random.randn(*ty.shape)
    y.backward(xp.asarray(g))
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(host(x.grad), tx.grad.numpy(), rtol=1e-9, atol=atol)
    ours_p = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(host(ours_p[name].grad), p.grad.numpy(), rtol=1e-9, atol=atol, err_msg=name)
    return ours, theirs


# --------------------------------------------------------------------------- parity with torch
@pytest.mark.parametrize("shape,bias", [((4, 6), True), ((2, 3, 6), False), ((2, 1, 3, 6), True)])
def test_linear_matches_torch(xp, device, shape, bias):
    torch = torch_or_skip()
    torch_parity(torch, nn.Linear(6, 5, bias=bias), torch.nn.Linear(6, 5, bias=bias),
                 np.random.randn(*shape), xp, device)


@pytest.mark.parametrize("kw", [dict(kernel_size=3), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=(2, 3), padding=(1, 0), dilation=(2, 1), bias=False),
                                dict(kernel_size=3, groups=2, padding="same"),
                                dict(kernel_size=4, stride=4)])          # a ViT patch embedding
def test_conv2d_matches_torch(xp, device, kw):
    torch = torch_or_skip()
    torch_parity(torch, nn.Conv2d(4, 6, **kw), torch.nn.Conv2d(4, 6, **kw),
                 np.random.randn(2, 4, 8, 9), xp, device)


@pytest.mark.parametrize("shape,norm,kw", [((2, 5, 6), 6, {}), ((3, 4, 5), (4, 5), dict(eps=1e-3)),
                                           ((4, 6), 6, dict(elementwise_affine=False)),
                                           ((4, 6), 6, dict(bias=False))])
def test_layer_norm_matches_torch(xp, device, shape, norm, kw):
    torch = torch_or_skip()
    theirs = torch.nn.LayerNorm(norm, **kw)
    with torch.no_grad():  # not the default 1/0, so that loading them is tested
        for p in theirs.parameters():
            p.uniform_(0.5, 1.5)
    torch_parity(torch, nn.LayerNorm(norm, **kw), theirs, np.random.randn(*shape), xp, device)


@pytest.mark.parametrize("kw", [{}, dict(momentum=None), dict(affine=False, eps=1e-3), dict(momentum=0.3)])
def test_batch_norm_matches_torch_in_train_and_eval(xp, device, kw):
    torch = torch_or_skip()
    theirs = torch.nn.BatchNorm2d(3, **kw)
    with torch.no_grad():
        for p in theirs.parameters():
            p.uniform_(0.5, 1.5)
    ours = nn.BatchNorm2d(3, **kw)
    x = np.random.randn(4, 3, 5, 6) * 2 + 1
    # Training: batch statistics; running stats and the batch counter updated as torch does.
    ours, theirs = torch_parity(torch, ours, theirs, x, xp, device)
    for _ in range(2):                       # a few more steps (momentum=None: cumulative average)
        x2 = np.random.randn(4, 3, 5, 6) + 0.5
        ours(Tensor(xp.asarray(x2)))
        theirs(torch.tensor(x2))
    for name, t in theirs.state_dict().items():
        np.testing.assert_allclose(host(ours.state_dict()[name]), t.numpy(), rtol=1e-12, atol=1e-14, err_msg=name)
    assert ours.num_batches_tracked.item() == 3 and ours.num_batches_tracked.dtype == np.int64
    # Evaluation: the running statistics, and they stay put.
    ours.eval()
    theirs.eval()
    torch_parity(torch, ours, theirs, np.random.randn(2, 3, 4, 4), xp, device)
    frozen = {k: host(v).copy() for k, v in ours.state_dict().items()}
    ours(Tensor(xp.asarray(np.random.randn(2, 3, 4, 4))))
    for k, v in ours.state_dict().items():
        np.testing.assert_array_equal(host(v), frozen[k], err_msg=k)


def test_batch_norm_without_running_stats_matches_torch(xp, device):
    torch = torch_or_skip()
    ours, theirs = nn.BatchNorm2d(3, track_running_stats=False), torch.nn.BatchNorm2d(3, track_running_stats=False)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight", "bias"]
    ours.eval()
    theirs.eval()                            # still batch statistics: there are no running ones
    torch_parity(torch, ours, theirs, np.random.randn(4, 3, 2, 2), xp, device)


@pytest.mark.parametrize("make", [lambda m: m.GELU(), lambda m: m.GELU(approximate="tanh"), lambda m: m.ReLU(),
                                  lambda m: m.Softmax(dim=1), lambda m: m.Flatten(), lambda m: m.Flatten(0, 1),
                                  lambda m: m.Identity()])
def test_parameter_free_layers_match_torch(xp, device, make):
    torch = torch_or_skip()
    torch_parity(torch, make(nn), make(torch.nn), np.random.randn(3, 4, 5) + 0.1, xp, device)


def test_small_cnn_loads_torch_weights_and_matches(xp, device):
    """The layers together, torch state_dict in, float64 parity of the whole net."""
    torch = torch_or_skip()

    def net(m):
        return m.Sequential(m.Conv2d(3, 8, 3, stride=2, padding=1), m.BatchNorm2d(8), m.ReLU(),
                            m.Conv2d(8, 8, 3, padding=1, groups=4, bias=False), m.Flatten(),
                            m.LayerNorm(8 * 4 * 4), m.Linear(8 * 4 * 4, 10), m.GELU(), m.Dropout(0.3),
                            m.Linear(10, 4), m.Softmax(dim=-1))
    ours, theirs = net(nn), net(torch.nn)
    ours.eval()
    theirs.eval()                            # dropout off, so the two nets are deterministic
    torch_parity(torch, ours, theirs, np.random.randn(2, 3, 8, 8), xp, device, atol=1e-12)


# --------------------------------------------------------------------------- dtypes
def _tiny_net():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.GELU(), nn.Flatten(),
                         nn.LayerNorm(4 * 3 * 3), nn.Dropout(0.2), nn.Linear(36, 5), nn.DropPath(0.2),
                         nn.ReLU(), nn.Softmax(dim=-1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_kept_end_to_end(xp, device, dtype):
    m = _tiny_net().to(device=device, dtype=dtype)
    x = Tensor(xp.asarray(np.random.randn(3, 2, 3, 3).astype(dtype)), requires_grad=True)
    seen = []
    for layer in m:                          # every intermediate keeps the dtype
        x_in = x
        x = layer(x)
        seen.append((type(layer).__name__, x.dtype))
    assert all(d == dtype for _, d in seen), seen
    (x * x).sum().backward()
    assert x_in.requires_grad
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.dtype == dtype and backend.device_of(p.grad) == device, name
    for name, b in m.named_buffers():
        assert b.dtype == (np.int64 if name.endswith("num_batches_tracked") else dtype), name


def test_dtype_mismatch_is_an_error_not_an_upcast():
    m = nn.Linear(3, 2)                      # float32
    with pytest.raises(TypeError, match="float64"):
        m(Tensor(np.zeros((1, 3))))          # float64 input


# --------------------------------------------------------------------------- train / eval behaviour
def test_dropout_train_and_eval(xp):
    m = nn.Dropout(0.5)
    x = Tensor(xp.ones((200, 50), dtype=np.float32))
    y = host(m(x))
    assert set(np.unique(y)) == {0.0, 2.0} and abs((y == 0).mean() - 0.5) < 0.02
    m.eval()
    assert np.array_equal(host(m(x)), host(x))
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)


def test_drop_path_drops_whole_samples(xp):
    m = nn.DropPath(0.5)
    x = Tensor(xp.ones((400, 3, 4), dtype=np.float32))
    y = host(m(x)).reshape(400, -1)
    rows = y[:, 0]
    assert (y == rows[:, None]).all()        # one coin per sample
    assert set(np.unique(rows)) == {0.0, 2.0} and abs((rows == 0).mean() - 0.5) < 0.1
    m.eval()
    assert np.array_equal(host(m(x)), host(x))
    assert np.array_equal(host(nn.DropPath(0.0)(x)), host(x))


def test_eval_switches_behaviour_through_the_tree(xp, device):
    m = _tiny_net().to(device=device)
    x = Tensor(xp.asarray(np.random.randn(4, 2, 3, 3).astype(np.float32)))
    m.train()
    assert not xp.array_equal(m(x).data, m(x).data)   # dropout and drop path draw anew
    before = host(m[1].running_mean).copy()
    m.eval()
    y1, y2 = m(x), m(x)
    assert xp.array_equal(y1.data, y2.data)           # deterministic
    assert np.array_equal(host(m[1].running_mean), before)   # eval does not touch running stats
    assert m[1].num_batches_tracked.item() == 2


# --------------------------------------------------------------------------- gradients
def test_mlp_gradcheck(xp, device):
    mlp = nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.LayerNorm(7), nn.Linear(7, 3), nn.Softmax(dim=-1))
    mlp.to(device=device, dtype=np.float64)
    for p in mlp[2].parameters():            # LayerNorm away from its 1/0 init
        nn.init.uniform_(p, 0.5, 1.5)
    x = Tensor(xp.asarray(np.random.randn(4, 5)), requires_grad=True)
    assert gradcheck_directional(lambda x, *ps: mlp(x), x, *mlp.parameters(), n_directions=4)


def test_conv_bn_gradcheck(xp, device):
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(12, 2)).to(device=device, dtype=np.float64)
    x = Tensor(xp.asarray(np.random.randn(3, 2, 4, 4)), requires_grad=True)
    # momentum=0: the running stats do not drift between the finite-difference evaluations
    net[1].momentum = 0.0
    assert gradcheck_directional(lambda x, *ps: net(x), x, *net.parameters(), n_directions=3)
