"""optim.Adafactor: step-for-step parity with torch.optim.Adafactor in float64 (synthetic gradients
for matrices, vectors, 3-D/4-D tensors and a scalar; and a small ViT trained 50 steps on its own
gradients), the rank-1 factored second moment, its memory, checkpoints that resume exactly, errors."""
import pickle

import numpy as np
import pytest

import minivit as mv
from minivit import Tensor
from minivit.optim import Adafactor
from tests.conftest import torch_or_skip

# a matrix, a vector, a 3-D tensor (a stack of matrices), a conv kernel, a scalar
SHAPES = [(5, 7), (6,), (3, 4, 5), (4, 2, 3, 3), ()]


def host(a):
    return mv.backend.to_numpy(a)


def make_params(xp, shapes=SHAPES, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [Tensor(xp.asarray(rng.standard_normal(s), dtype=dtype), requires_grad=True) for s in shapes]


def synthetic_grads(n_steps, shapes=SHAPES, seed=1):
    """Gradients of varying scale for each step; None: that parameter has no gradient that step."""
    rng = np.random.default_rng(seed)
    steps = [[rng.standard_normal(s) * 10.0 ** rng.uniform(-3, 1) for s in shapes] for _ in range(n_steps)]
    steps[2][2] = steps[7][0] = None
    return steps


KWARGS = [
    dict(),                                                              # torch's defaults
    dict(lr=0.3, weight_decay=0.1),                                      # ρ = 1/√t once t > 11; decay
    dict(lr=0.05, beta2_decay=-0.5, eps=(1e-6, 1e-2), d=1.5, maximize=True),
    dict(lr=0.02, d=1.0, eps=(0.5, 1e-3)),                               # a large ε₁: the clamps bite
]


@pytest.mark.parametrize("kw", KWARGS, ids=["defaults", "lr-cap-and-decay", "maximize-eps-d", "big-eps1"])
def test_adafactor_matches_torch_for_60_steps(xp, kw):
    torch = torch_or_skip()
    ours = make_params(xp)
    theirs = [torch.tensor(host(p.data), requires_grad=True) for p in ours]
    # two groups: the second with its own lr (a scheduler or a head would set this)
    opt = Adafactor([{"params": ours[:3]}, {"params": ours[3:], "lr": 0.7 * kw.get("lr", 1e-2)}], **kw)
    topt = torch.optim.Adafactor([{"params": theirs[:3]}, {"params": theirs[3:], "lr": 0.7 * kw.get("lr", 1e-2)}],
                                 **kw)
    moved = 0.0
    for grads in synthetic_grads(60):
        for p, tp, g in zip(ours, theirs, grads):
            p.grad = None if g is None else xp.asarray(g)
            tp.grad = None if g is None else torch.tensor(g)
        opt.step()
        topt.step()
        for p, tp in zip(ours, theirs):
            ref = tp.detach().numpy()
            np.testing.assert_allclose(host(p.data), ref, rtol=1e-12, atol=1e-14 * max(1.0, np.abs(ref).max()))
    for p0, p in zip(make_params(xp), ours):
        moved = max(moved, float(np.abs(host(p.data) - host(p0.data)).max()))
    assert moved > 1e-3                                                  # the parameters did move
    # the same state, under PyTorch's names and shapes
    for p, tp in zip(ours, theirs):
        st, tst = opt.state[p], topt.state[tp]
        assert {k for k in st} == set(tst) and st["step"] == int(tst["step"])
        for k in st:
            if k != "step":
                assert st[k].shape == tuple(tst[k].shape)
                np.testing.assert_allclose(host(st[k]), tst[k].numpy(), rtol=1e-12, atol=1e-300)


def test_adafactor_trains_a_small_vit_like_torch_for_50_steps(xp, device):
    """Closed loop: each step's gradients come from the current weights (a timm ViT and its minivit
    twin, float64), so any difference in an update would feed into every later gradient. No qkv bias:
    the key bias's gradient is 0 in exact arithmetic (softmax ignores a shift shared by all keys), and
    Adafactor's normalisation G/√V̂ would turn each side's rounding noise into a full-size step."""
    torch = torch_or_skip()
    timm = pytest.importorskip("timm")
    from minivit.convert import from_timm
    torch.manual_seed(0)
    tm = timm.models.vision_transformer.VisionTransformer(
        img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2, num_classes=3, mlp_ratio=2.0,
        qkv_bias=False).double()
    ours = from_timm(tm).to(device=device)
    tm.train()
    ours.train()                                           # no dropout in this model: the same function
    kinds = {p.ndim for p in ours.parameters()}
    assert {1, 2, 3, 4} <= kinds                           # vectors, matrices, tokens, the patch conv
    opt = Adafactor(ours.parameters(), lr=0.05, weight_decay=0.01)
    topt = torch.optim.Adafactor(tm.parameters(), lr=0.05, weight_decay=0.01)
    rng = np.random.default_rng(0)
    x_np, y_np = rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 3, 4)
    x, y = Tensor(xp.asarray(x_np)), Tensor(xp.asarray(y_np))
    tx, ty = torch.tensor(x_np), torch.tensor(y_np)
    names = dict(ours.named_parameters())
    losses = []
    for step in range(50):
        opt.zero_grad()
        topt.zero_grad()
        loss = mv.functional.cross_entropy(ours(x), y)
        tloss = torch.nn.functional.cross_entropy(tm(tx), ty)
        loss.backward()
        tloss.backward()
        opt.step()
        topt.step()
        losses.append(float(tloss.detach()))
        for name, tp in tm.named_parameters():
            ref = tp.detach().numpy()
            np.testing.assert_allclose(host(names[name].data), ref, rtol=1e-12,
                                       atol=1e-12 * np.abs(ref).max(), err_msg=f"{name}, step {step}")
    assert losses[-1] < 0.5 * losses[0]                    # and it learns


def test_factored_second_moment_is_exact_for_a_rank_one_g_squared(xp):
    """If G² is rank 1 (G = a bᵀ), rᵢcⱼ/r̄ recovers it exactly at step 1 (β̂₂ = 0), so U = G/|G| = sign(G),
    RMS(U) = 1 (no clipping) and θ ← θ − max(ε₂, RMS(θ))·min(lr, 1)·sign(G): written out here."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(4), rng.standard_normal(6)
    g = np.outer(a, b)
    p0 = rng.standard_normal((2, 4, 6))                     # and per matrix of a stack
    p = Tensor(xp.asarray(p0.copy()), requires_grad=True)          # the step works in place
    p.grad = xp.asarray(np.stack([g, 3.0 * g]))
    opt = Adafactor([p], lr=0.05)
    opt.step()
    expected = p0 - np.sqrt(np.mean(p0 ** 2)) * 0.05 * np.sign(np.stack([g, g]))
    np.testing.assert_allclose(host(p.data), expected, rtol=1e-13)
    st = opt.state[p]
    np.testing.assert_allclose(host(st["row_var"])[0, :, 0], a ** 2 * np.mean(b ** 2), rtol=1e-13)
    np.testing.assert_allclose(host(st["col_var"])[1, 0, :], 9.0 * b ** 2 * np.mean(a ** 2), rtol=1e-13)


def test_adafactor_state_is_sublinear(xp):
    """n + m statistics for an n × m matrix (per matrix of a stack), a full vector for a vector."""
    params = make_params(xp, [(64, 32), (3, 16, 8), (10,)])
    for p in params:
        p.grad = xp.ones_like(p.data)
    opt = Adafactor(params)
    opt.step()
    sizes = [sum(v.size for k, v in opt.state[p].items() if k != "step") for p in params]
    assert sizes == [64 + 32, 3 * (16 + 8), 10]
    assert all(v.dtype == np.float64 for p in params for k, v in opt.state[p].items() if k != "step")


def test_adafactor_float32_stays_float32_and_shared_grad_is_untouched(xp):
    a, b = make_params(xp, [(3, 4), (3, 4)], dtype=np.float32)
    g = xp.ones((3, 4), dtype=np.float32)
    a.grad = b.grad = g
    opt = Adafactor([a, b], weight_decay=0.1, maximize=True)
    for _ in range(3):
        opt.step()
    np.testing.assert_array_equal(host(g), 1.0)
    assert a.dtype == b.dtype == np.float32
    assert all(v.dtype == np.float32 for st in opt.state.values() for k, v in st.items() if k != "step")


def test_adafactor_state_dict_resume_is_identical_to_uninterrupted_run(xp):
    all_grads = [[np.cos(np.arange(np.prod(s)) + k).reshape(s) * (1 + k) for s in SHAPES] for k in range(8)]

    def train(params, opt, grads):
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = xp.asarray(g) * p.data            # depends on p: a wrong resume would show
            opt.step()

    def fresh(params):
        return Adafactor([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}],
                         lr=0.2, weight_decay=0.05)

    ref = make_params(xp)
    train(ref, fresh(ref), all_grads)
    first = make_params(xp)
    opt = fresh(first)
    train(first, opt, all_grads[:3])
    saved = pickle.loads(pickle.dumps({"params": [host(p.data) for p in first], "opt": opt.state_dict()}))
    for buffers in saved["opt"]["state"].values():         # host arrays and numbers only
        assert all(isinstance(v, (np.ndarray, int)) for v in buffers.values())
    resumed = [Tensor(xp.asarray(a), requires_grad=True) for a in saved["params"]]
    opt2 = fresh(resumed)
    opt2.load_state_dict(saved["opt"])
    assert all(opt2.state[p]["step"] == 3 for p in resumed)
    train(resumed, opt2, all_grads[3:])
    for p, q in zip(resumed, ref):
        np.testing.assert_allclose(host(p.data), host(q.data), rtol=1e-15, atol=0)


def test_adafactor_bad_arguments():
    p = [Tensor(np.zeros(3), requires_grad=True)]
    for kw, message in [(dict(lr=-1.0), "learning rate"), (dict(beta2_decay=0.5), "beta2_decay"),
                        (dict(eps=(-1.0, 1e-3)), "eps"), (dict(eps=(None,)), "eps"), (dict(d=0.5), "clipping"),
                        (dict(weight_decay=-0.1), "weight_decay")]:
        with pytest.raises(ValueError, match=message):
            Adafactor(p, **kw)
