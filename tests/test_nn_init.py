"""nn.init and the layers' default initialisation: bounds and statistics against closed forms."""
import math

import numpy as np
import pytest
import scipy.stats

from minivit import backend, nn
from minivit.autograd import Tensor
from tests.conftest import torch_or_skip


def empty(xp, *shape, dtype=np.float32):
    return Tensor(xp.zeros(shape, dtype=dtype))


def host(t):
    return backend.to_numpy(t.data).astype(np.float64)


@pytest.mark.parametrize("mean,std,a,b", [(0.0, 1.0, -2.0, 2.0), (0.5, 1.0, -1.0, 1.0), (0.0, 2.0, 1.0, 4.0)])
def test_trunc_normal_is_the_truncated_normal(xp, mean, std, a, b):
    t = empty(xp, 200, 300, dtype=np.float64)
    assert nn.init.trunc_normal_(t, mean=mean, std=std, a=a, b=b) is t
    v = host(t).ravel()
    assert v.min() >= a and v.max() <= b
    ref = scipy.stats.truncnorm((a - mean) / std, (b - mean) / std, loc=mean, scale=std)
    se = ref.std() / math.sqrt(v.size)
    assert abs(v.mean() - ref.mean()) < 5 * se
    assert abs(v.std() - ref.std()) < 0.02 * ref.std()
    assert scipy.stats.kstest(v[:20000], ref.cdf).pvalue > 1e-3  # the whole distribution, not just 2 moments


def test_trunc_normal_vit_init_keeps_dtype_and_device(xp, device):
    t = empty(xp, 384, 96)                   # float32, timm's trunc_normal_(w, std=.02)
    nn.init.trunc_normal_(t, std=0.02)
    assert t.dtype == np.float32 and t.device == device
    v = host(t)
    assert abs(v.std() - 0.02) < 0.02 * 0.02 and abs(v.mean()) < 1e-3 and np.abs(v).max() <= 2.0
    t = empty(xp, 1000)
    nn.init.trunc_normal_(t, std=1.0, a=-0.3, b=0.7)   # bounds float32 cannot hold exactly
    assert (t.data >= np.float32(-0.3)).all() and (t.data <= np.float32(0.7)).all()


def test_trunc_normal_bad_arguments():
    t = Tensor(np.zeros(3))
    with pytest.raises(ValueError, match="a < b"):
        nn.init.trunc_normal_(t, a=1.0, b=-1.0)
    with pytest.raises(ValueError, match="tail"):
        nn.init.trunc_normal_(t, a=8.0, b=9.0)


def test_plain_fills(xp):
    t = empty(xp, 400, 250)
    n = t.numel()                            # tolerances: 5 standard errors
    v = host(nn.init.uniform_(t, -3.0, 1.0))
    assert v.min() >= -3 and v.max() <= 1 and abs(v.mean() + 1) < 5 * math.sqrt(16 / 12 / n)
    assert abs(v.var() - 16 / 12) < 5 * math.sqrt((256 / 80 - (16 / 12) ** 2) / n)
    v = host(nn.init.normal_(t, 2.0, 0.5))
    assert abs(v.mean() - 2) < 5 * 0.5 / math.sqrt(n) and abs(v.std() - 0.5) < 5 * 0.5 / math.sqrt(2 * n)
    assert (host(nn.init.constant_(t, 0.25)) == 0.25).all()
    assert (host(nn.init.ones_(t)) == 1).all() and (host(nn.init.zeros_(t)) == 0).all()
    assert t.dtype == np.float32


def test_fan_scaled_inits_match_closed_forms(xp):
    w = empty(xp, 200, 100, 3, 3)            # conv weight: fan_in = 900, fan_out = 1800
    fan_in, fan_out = 900, 1800
    v = host(nn.init.xavier_uniform_(w, gain=2.0))
    bound = 2.0 * math.sqrt(6 / (fan_in + fan_out))
    assert np.abs(v).max() <= bound and np.abs(v).max() > 0.99 * bound
    assert abs(v.std() - bound / math.sqrt(3)) < 0.01 * bound
    v = host(nn.init.kaiming_uniform_(w, a=0.0, nonlinearity="relu"))
    bound = math.sqrt(2) * math.sqrt(3 / fan_in)
    assert np.abs(v).max() <= bound and np.abs(v).max() > 0.99 * bound
    v = host(nn.init.kaiming_uniform_(w, mode="fan_out", nonlinearity="relu"))
    assert abs(v.std() - math.sqrt(2 / fan_out)) < 0.01 * math.sqrt(2 / fan_out)
    v = host(nn.init.kaiming_normal_(w, nonlinearity="relu"))
    assert abs(v.std() - math.sqrt(2 / fan_in)) < 0.01 * math.sqrt(2 / fan_in)
    v = host(nn.init.xavier_normal_(w))
    assert abs(v.std() - math.sqrt(2 / (fan_in + fan_out))) < 0.01 * math.sqrt(2 / (fan_in + fan_out))
    with pytest.raises(ValueError, match="at least 2 dims"):
        nn.init.xavier_uniform_(empty(xp, 5))
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.init.kaiming_uniform_(w, nonlinearity="swish")


def test_gain_table_matches_pytorch():
    torch = torch_or_skip()
    for name, param in [("linear", None), ("tanh", None), ("relu", None), ("leaky_relu", None),
                        ("leaky_relu", math.sqrt(5)), ("selu", None), ("sigmoid", None)]:
        assert nn.init.calculate_gain(name, param) == pytest.approx(torch.nn.init.calculate_gain(name, param))


@pytest.mark.parametrize("make,fan_in", [(lambda: nn.Linear(300, 500), 300),
                                         (lambda: nn.Conv2d(64, 256, 3, groups=4), 16 * 9)])
def test_default_init_is_pytorchs(make, fan_in):
    """U(±1/√fan_in) for weight and bias (kaiming_uniform_ with a=√5)."""
    m = make()
    bound = 1 / math.sqrt(fan_in)
    w, b = host(m.weight), host(m.bias)
    assert m.weight.dtype == np.float32
    assert np.abs(w).max() <= bound * (1 + 1e-6) and np.abs(w).max() > 0.99 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound
    assert np.abs(b).max() <= bound * (1 + 1e-6) and np.abs(b).max() > 0.9 * bound


def test_default_init_statistics_agree_with_torch():
    torch = torch_or_skip()
    ours, theirs = nn.Conv2d(32, 64, (3, 5), groups=2), torch.nn.Conv2d(32, 64, (3, 5), groups=2)
    a, b = host(ours.weight), theirs.weight.detach().numpy().astype(np.float64)   # 4800 values each
    assert abs(a.std() - b.std()) < 0.05 * b.std()
    assert abs(np.abs(a).max() - np.abs(b).max()) < 0.01 * np.abs(b).max()
    norms = [(nn.LayerNorm(6), torch.nn.LayerNorm(6)), (nn.BatchNorm2d(6), torch.nn.BatchNorm2d(6))]
    for ours, theirs in norms:
        for name, t in theirs.state_dict().items():
            assert np.array_equal(ours.state_dict()[name], t.numpy()), name


def test_same_seed_same_weights_on_every_device(xp, device):
    backend.manual_seed(3)
    a = nn.Linear(5, 7)
    backend.manual_seed(3)
    b = nn.Linear(5, 7, device=device)
    assert b.weight.device == device
    assert np.array_equal(host(a.weight), host(b.weight))
