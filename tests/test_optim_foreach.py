"""Multi-tensor (``foreach``) AdamW and SGD: one flat array per group gives the per-parameter
loop's numbers exactly, survives what breaks its views (a new ``p.data``, a loaded state), and
falls back to the loop where it does not apply."""
import numpy as np
import pytest

import minivit as mv
import minivit.functional as F
from minivit import nn
from minivit.optim import SGD, AdamW
from minivit.optim.optimizer import param_groups_weight_decay


def _model(dtype=np.float32):
    mv.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                      nn.Linear(4 * 6 * 6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    return m.to(dtype=dtype)


def _steps(model, opt, n, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = mv.tensor(rng.standard_normal((4, 3, 6, 6)).astype(dtype))
        y = mv.tensor(rng.integers(0, 3, 4))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _make(kind, model, foreach, **kw):
    groups = param_groups_weight_decay(model, 0.05)
    if kind == "adamw":
        return AdamW(groups, lr=1e-2, foreach=foreach, **kw)
    return SGD(groups, lr=0.05, momentum=0.9, foreach=foreach, **kw)


CASES = [("adamw", {}), ("adamw", {"amsgrad": True}), ("adamw", {"betas": (0.8, 0.95), "eps": 1e-6}),
         ("sgd", {}), ("sgd", {"dampening": 0.2}), ("sgd", {"nesterov": True})]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind,kw", CASES)
def test_foreach_equals_the_loop_exactly(kind, kw, dtype):
    a, b = _model(dtype), _model(dtype)
    oa, ob = _make(kind, a, False, **kw), _make(kind, b, None, **kw)
    _steps(a, oa, 4, dtype=dtype)
    _steps(b, ob, 4, dtype=dtype)
    assert len(ob._flat) == 2 and not oa._flat                       # the flat path ran, the loop did not
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert np.array_equal(pa.numpy(), pb.numpy()), n
    sa, sb = oa.state_dict(), ob.state_dict()
    for i, buffers in sa["state"].items():
        for name, v in buffers.items():
            assert np.array_equal(np.asarray(v), np.asarray(sb["state"][i][name])), (i, name)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_parameters_become_views_of_one_array_per_group(kind):
    m = _model()
    opt = _make(kind, m, None)
    _steps(m, opt, 1)
    for group in opt.param_groups:
        flat = opt._flat[id(group["params"])].flat["param"]
        assert all(np.shares_memory(p.data, flat) for p in group["params"])
        assert flat.size == sum(p.data.size for p in group["params"])


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_a_new_data_array_or_a_loaded_state_rebuilds_the_group(kind):
    ref, m = _model(), _model()
    oref, opt = _make(kind, ref, False), _make(kind, m, None)
    _steps(ref, oref, 2)
    _steps(m, opt, 2)
    saved = opt.state_dict()
    for p in m.parameters():                     # what Module.to or a dtype change does: new arrays
        p.data = p.data.copy()
    opt.load_state_dict(saved)                   # new state arrays too
    _steps(ref, oref, 2, seed=1)
    _steps(m, opt, 2, seed=1)
    for pa, pb in zip(ref.parameters(), m.parameters()):
        assert np.array_equal(pa.numpy(), pb.numpy())
    for group in opt.param_groups:                # and the views were made again
        flat = opt._flat[id(group["params"])].flat["param"]
        assert all(np.shares_memory(p.data, flat) for p in group["params"])


def test_a_resumed_foreach_run_continues_exactly():
    a, b = _model(), _model()
    oa = _make("adamw", a, None)
    _steps(a, oa, 3)
    b.load_state_dict(a.state_dict())
    ob = _make("adamw", b, None)
    ob.load_state_dict(oa.state_dict())
    _steps(a, oa, 2, seed=5)
    _steps(b, ob, 2, seed=5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert np.array_equal(pa.numpy(), pb.numpy())


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_a_parameter_without_gradient_falls_back_to_the_loop(kind):
    a, b = _model(), _model()
    oa, ob = _make(kind, a, False), _make(kind, b, None)
    frozen = [m[0].bias for m in (a, b)]
    for opt, m, f in ((oa, a, frozen[0]), (ob, b, frozen[1])):
        rng = np.random.default_rng(0)
        x = mv.tensor(rng.standard_normal((4, 3, 6, 6)).astype(np.float32))
        loss = F.cross_entropy(m(x), mv.tensor(rng.integers(0, 3, 4)))
        opt.zero_grad()
        loss.backward()
        f.grad = None                            # this one gets no update this step
        opt.step()
    no_decay = next(g for g in ob.param_groups if g["weight_decay"] == 0)
    assert id(no_decay["params"]) not in ob._flat                  # that group took the loop
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert np.array_equal(pa.numpy(), pb.numpy())


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_blocks_of_a_large_cpu_piece_equal_the_whole_update(monkeypatch, amsgrad):
    """A large parameter (or flat group) is updated block by block on each thread: the same
    numbers as the update of the whole array at once, bit for bit."""
    import minivit.optim.adamw as adamw
    from minivit import backend
    monkeypatch.setattr(adamw, "_BLOCK", 4099)                          # pieces are not whole blocks
    rng = np.random.default_rng(0)
    n = 100_003
    arrays = [rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32),
              rng.standard_normal(n).astype(np.float32) * 0.1, rng.random(n).astype(np.float32) * 0.01,
              rng.random(n).astype(np.float32) * 0.02 if amsgrad else None]
    whole = [None if a is None else a.copy() for a in arrays]
    adamw._update(*whole, 7, 1e-3, 0.9, 0.999, 1e-8, 0.05, np)
    blocks = [None if a is None else a.copy() for a in arrays]
    backend.parallel_pieces(n, lambda lo, hi: adamw._update_blocks(blocks, lo, hi, 7, 1e-3, 0.9, 0.999, 1e-8, 0.05),
                            min_size=adamw._PIECE)
    for i, (a, b) in enumerate(zip(whole, blocks)):
        if a is not None and i != 1:                                     # p, m, v (, vmax) change; g does not
            assert not np.array_equal(a, arrays[i])
            np.testing.assert_array_equal(a, b)
