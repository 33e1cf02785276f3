"""The CNN teacher (minivit/models/resnet.py): shapes and parameter count, the registry,
parity with the same network written in torch (float64, train and eval mode, forward,
backward and BatchNorm running statistics), stochastic depth, and argument errors."""
import numpy as np
import pytest

import minivit as mv
import minivit.functional as F
import minivit.models.resnet  # noqa: F401  (registers resnet_teacher)
from minivit import Tensor
from minivit.models import create_model, list_models
from minivit.models.resnet import ResNet
from minivit.testing import gradcheck_directional
from tests.conftest import torch_or_skip


def host(a):
    return mv.backend.to_numpy(a)


def test_registered_shapes_and_size(device):
    assert "resnet_teacher" in list_models()
    model = create_model("resnet_teacher").to(device=device)
    # ResNet-20 (He et al. 2016, Table 6: 0.27M): 3 stages × 3 blocks, widths 16/32/64, option-B shortcuts.
    assert model.num_parameters() == 272_474
    x = mv.randn(2, 3, 32, 32, device=device)
    assert model(x).shape == (2, 10) and model(x).dtype == np.float32
    small = create_model("resnet_teacher", depth=8, width=4, num_classes=7)
    assert small(mv.randn(3, 3, 32, 32)).shape == (3, 7)
    assert len(small.layer1) == 1 and small.layer3[0].downsample is not None
    keys = list(small.state_dict())
    assert keys[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"] and keys[-2:] == ["fc.weight", "fc.bias"]
    with pytest.raises(ValueError, match="6n \\+ 2"):
        ResNet(depth=10)


def torch_resnet(torch, depth, width, num_classes):
    """The same network in torch, with the same module names (so state_dicts line up)."""
    tnn = torch.nn

    class Block(tnn.Module):
        def __init__(self, i, o, s):
            super().__init__()
            self.conv1 = tnn.Conv2d(i, o, 3, s, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(o)
            self.conv2 = tnn.Conv2d(o, o, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(o)
            self.downsample = (tnn.Sequential(tnn.Conv2d(i, o, 1, s, bias=False), tnn.BatchNorm2d(o))
                               if s != 1 or i != o else None)

        def forward(self, x):
            sc = x if self.downsample is None else self.downsample(x)
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(sc + self.bn2(self.conv2(y)))

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            n = (depth - 2) // 6
            self.conv1 = tnn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(width)
            chs = width
            for k, o in enumerate((width, 2 * width, 4 * width)):
                setattr(self, f"layer{k + 1}", tnn.Sequential(*[Block(chs if i == 0 else o, o, 2 if k and not i else 1)
                                                              for i in range(n)]))
                chs = o
            self.fc = tnn.Linear(4 * width, num_classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(x.mean(dim=(2, 3)))

    return Net()


@pytest.mark.parametrize("training", [True, False])
def test_torch_parity(xp, training):
    torch = torch_or_skip()
    device = "cpu" if xp is np else "cuda"
    ours = create_model("resnet_teacher", depth=14, width=4, num_classes=5).double().to(device=device)
    theirs = torch_resnet(torch, 14, 4, 5).double()
    # Random BN statistics and affine parameters, so eval mode is not an identity.
    rng = np.random.default_rng(0)
    state = {k: host(v) for k, v in ours.state_dict().items()}
    for k in state:
        if k.endswith(("running_mean", "bias")):
            state[k] = rng.normal(0, 0.1, state[k].shape)
        elif k.endswith(("running_var", "bn1.weight", "bn2.weight")):
            state[k] = rng.uniform(0.5, 1.5, state[k].shape)
    ours.load_state_dict(state)
    theirs.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    ours.train(training)
    theirs.train(training)
    x_np = rng.standard_normal((4, 3, 32, 32))
    x = Tensor(xp.asarray(x_np), requires_grad=True)
    tx = torch.tensor(x_np, requires_grad=True)
    y, ty = ours(x), theirs(tx)
    np.testing.assert_allclose(host(y.data), ty.detach().numpy(), rtol=1e-9, atol=1e-11)
    g = rng.standard_normal(y.shape)
    y.backward(xp.asarray(g))
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(host(x.grad), tx.grad.numpy(), rtol=1e-8, atol=1e-11)
    tparams = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(host(p.grad), tparams[name].grad.numpy(), rtol=1e-8, atol=1e-10,
                                   err_msg=name)
    tstate = theirs.state_dict()
    for name, v in ours.state_dict().items():   # running statistics updated alike (training)
        np.testing.assert_allclose(host(v), tstate[name].numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_gradient_finite_differences():
    model = create_model("resnet_teacher", depth=8, width=2, num_classes=3).double()
    model.eval()   # fixed BN statistics: a smooth function of the input and the weights
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 8, 8)), requires_grad=True)
    gradcheck_directional(lambda x, w: model(x), x, model.fc.weight, n_directions=3)
    gradcheck_directional(lambda x, w: model(x), x, model.layer2[0].conv1.weight, n_directions=2)


def test_drop_path(device):
    model = create_model("resnet_teacher", depth=14, width=4, drop_path_rate=0.5).to(device=device)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for layer in (model.layer1, model.layer2, model.layer3)
             for b in layer]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5) and rates == sorted(rates) and len(rates) == 6
    x = mv.randn(4, 3, 32, 32, device=device)
    model.eval()
    np.testing.assert_array_equal(host(model(x).data), host(model(x).data))   # deterministic in eval
    model.train()
    mv.manual_seed(1)
    a = host(model(x).data)
    mv.manual_seed(2)
    assert not np.array_equal(a, host(model(x).data))                             # stochastic in training


def test_it_learns():
    """A few steps on a fixed batch bring the loss down: the whole stack trains."""
    mv.manual_seed(0)
    model = create_model("resnet_teacher", depth=8, width=4)
    opt = mv.optim.AdamW(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((16, 3, 32, 32)).astype(np.float32))
    y = rng.integers(0, 10, 16)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
