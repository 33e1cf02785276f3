"""minivit.optim and minivit.nn.utils: parity with torch.optim step for step, schedules,
checkpoints that resume exactly, gradient clipping, weight-decay groups, and real minimisation."""
import math
import pickle

import numpy as np
import pytest

import minivit as mv
from minivit import Tensor
from minivit.nn.utils import clip_grad_norm_, clip_grad_value_
from minivit.optim import (SGD, AdamW, CosineWarmupLR, LambdaLR, Optimizer,
                           param_groups_weight_decay, warmup_cosine)
from tests.conftest import torch_or_skip

SHAPES = [(3, 4), (4,), (2, 2, 3)]


def host(a):
    return mv.backend.to_numpy(a)


def make_params(xp, shapes=SHAPES, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [Tensor(xp.asarray(rng.standard_normal(s), dtype=dtype), requires_grad=True) for s in shapes]


def synthetic_grads(n_steps, shapes=SHAPES, seed=1):
    """Gradients for each step (host arrays); None marks a parameter without a grad that step."""
    rng = np.random.default_rng(seed)
    steps = [[rng.standard_normal(s) for s in shapes] for _ in range(n_steps)]
    if n_steps > 2:
        steps[2][2] = None  # the third parameter gets no gradient on step 3: it must be skipped
    return steps


def torch_twins(torch, params):
    return [torch.tensor(host(p.data), requires_grad=True) for p in params]


def groups_of(params, no_decay_lr):
    """Group 0: matrices with the default weight decay; group 1: a bias, no decay, its own lr."""
    return [{"params": [params[0], params[2]]},
            {"params": [params[1]], "weight_decay": 0.0, "lr": no_decay_lr}]


def run_parity(xp, make_ours, make_torch, n_steps=6):
    torch = torch_or_skip()
    ours = make_params(xp)
    theirs = torch_twins(torch, ours)
    opt, topt = make_ours(ours), make_torch(theirs)
    for grads in synthetic_grads(n_steps):
        for p, tp, g in zip(ours, theirs, grads):
            p.grad = None if g is None else xp.asarray(g)
            tp.grad = None if g is None else torch.tensor(g)
        opt.step()
        topt.step()
        for p, tp in zip(ours, theirs):
            np.testing.assert_allclose(host(p.data), tp.detach().numpy(), rtol=1e-12, atol=1e-15)
    return ours, theirs


# ============================================================================ AdamW / SGD vs PyTorch
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_matches_torch_step_for_step(xp, amsgrad):
    torch = torch_or_skip()
    kw = dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, amsgrad=amsgrad)
    ours, _ = run_parity(
        xp,
        lambda ps: AdamW(groups_of(ps, 0.02), **kw),
        lambda ps: torch.optim.AdamW(groups_of(ps, 0.02), foreach=False, **kw))
    assert all(p.dtype == np.float64 for p in ours)


def test_adamw_default_hyperparameters_match_torch(xp):
    torch = torch_or_skip()
    run_parity(xp, lambda ps: AdamW(ps), lambda ps: torch.optim.AdamW(ps, foreach=False))


@pytest.mark.parametrize("kw", [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, dampening=0.3),
    dict(lr=0.1, momentum=0.9, nesterov=True),
    dict(lr=0.1, momentum=0.8, weight_decay=0.05),
    dict(lr=0.1, momentum=0.8, weight_decay=0.05, nesterov=True),
], ids=["plain", "momentum", "dampening", "nesterov", "wd", "wd-nesterov"])
def test_sgd_matches_torch_step_for_step(xp, kw):
    torch = torch_or_skip()
    run_parity(xp,
               lambda ps: SGD(groups_of(ps, 0.03), **kw),
               lambda ps: torch.optim.SGD(groups_of(ps, 0.03), foreach=False, **kw))


def test_adamw_first_step_closed_form(xp):
    # After one step from m = v = 0: m̂ = g and v̂ = g², so p ← p(1 − γλ) − γ g / (|g| + ε).
    p = make_params(xp, [(5,)])[0]
    p0 = host(p.data).copy()
    g = np.array([0.5, -2.0, 1e-3, 3.0, -0.25])
    p.grad = xp.asarray(g)
    AdamW([p], lr=0.1, eps=1e-8, weight_decay=0.2).step()
    np.testing.assert_allclose(host(p.data), p0 * (1 - 0.1 * 0.2) - 0.1 * g / (np.abs(g) + 1e-8),
                               rtol=1e-13)


@pytest.mark.parametrize("make_opt", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True),
    lambda ps: AdamW(ps, lr=0.1, weight_decay=0.1, amsgrad=True),
], ids=["sgd", "adamw"])
def test_step_never_modifies_a_shared_grad_array(xp, make_opt):
    a, b = make_params(xp, [(4,), (4,)])
    g = xp.asarray(np.arange(1.0, 5.0))
    a.grad = b.grad = g  # the engine may hand one array to several tensors
    opt = make_opt([a, b])
    for _ in range(3):
        opt.step()
    np.testing.assert_array_equal(host(g), np.arange(1.0, 5.0))
    assert a.grad is g and b.grad is g


def test_float32_stays_float32(xp):
    for make_opt in (lambda ps: AdamW(ps, lr=1e-2, amsgrad=True),
                     lambda ps: SGD(ps, lr=1e-2, momentum=0.9, weight_decay=1e-4)):
        params = make_params(xp, dtype=np.float32)
        opt = make_opt(params)
        for _ in range(2):
            for p in params:
                p.grad = xp.ones_like(p.data)
            opt.step()
        assert all(p.dtype == np.float32 for p in params)
        for state in opt.state.values():
            assert all(v.dtype == np.float32 for v in state.values() if hasattr(v, "dtype"))


# ============================================================================ actually minimising
def least_squares(xp, dtype=np.float64):
    """loss(w, b) = mean((A w + b − y)²), a well-conditioned problem with minimum 0."""
    rng = np.random.default_rng(3)
    A = rng.standard_normal((32, 6)) / math.sqrt(6)
    y = A @ rng.standard_normal(6) + 0.5
    A, y = Tensor(xp.asarray(A, dtype=dtype)), Tensor(xp.asarray(y, dtype=dtype))
    w = Tensor(xp.zeros(6, dtype=dtype), requires_grad=True)
    b = Tensor(xp.zeros(1, dtype=dtype), requires_grad=True)
    return [w, b], lambda: (((A @ w + b - y) ** 2).mean())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("make_opt", [
    lambda ps: SGD(ps, lr=0.3),
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    lambda ps: AdamW(ps, lr=0.05, weight_decay=0.0),
    lambda ps: AdamW(ps, lr=0.05, weight_decay=0.0, amsgrad=True),
], ids=["sgd", "nesterov", "adamw", "amsgrad"])
def test_optimizers_minimise_least_squares(xp, make_opt, dtype):
    params, loss_fn = least_squares(xp, dtype)
    opt = make_opt(params)
    sched = CosineWarmupLR(opt, warmup_steps=10, total_steps=300, warmup_start_factor=0.1)
    first = float(loss_fn().item())
    for _ in range(300):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        clip_grad_norm_(params, max_norm=10.0)
        opt.step()
        sched.step()
    last = float(loss_fn().item())
    assert last < first * 1e-6, (first, last)
    assert all(p.dtype == dtype for p in params)


# ============================================================================ checkpoints
@pytest.mark.parametrize("make_opt", [
    lambda ps: SGD(groups_of(ps, 0.01), lr=0.05, momentum=0.9, weight_decay=1e-3),
    lambda ps: AdamW(groups_of(ps, 0.01), lr=0.05, weight_decay=0.05, amsgrad=True),
], ids=["sgd", "adamw"])
def test_state_dict_resume_is_identical_to_uninterrupted_run(xp, make_opt):
    all_grads = [[np.cos(np.arange(np.prod(s)) + k).reshape(s) * (1 + k) for s in SHAPES]
                 for k in range(8)]

    def train(params, opt, sched, grads):
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = xp.asarray(g) * p.data  # depends on p: a wrong resume would show
            opt.step()
            sched.step()

    def fresh(params):
        opt = make_opt(params)
        return opt, CosineWarmupLR(opt, warmup_steps=3, total_steps=8, min_lr=1e-4)

    ref = make_params(xp)
    ref_opt, ref_sched = fresh(ref)
    train(ref, ref_opt, ref_sched, all_grads)

    first = make_params(xp)
    opt, sched = fresh(first)
    train(first, opt, sched, all_grads[:3])
    snapshot = opt.state_dict()
    blob = pickle.dumps({"params": [host(p.data) for p in first],
                         "opt": snapshot, "sched": sched.state_dict()})
    saved = pickle.loads(blob)
    for buffers in saved["opt"]["state"].values():  # device-neutral: host arrays and numbers only
        assert all(isinstance(v, (np.ndarray, int, float)) for v in buffers.values())
    train(first, opt, sched, all_grads[3:4])  # training on must not change the earlier snapshot
    for i, buffers in saved["opt"]["state"].items():
        for k, v in buffers.items():
            np.testing.assert_array_equal(v, snapshot["state"][i][k])

    resumed = [Tensor(xp.asarray(a), requires_grad=True) for a in saved["params"]]
    opt2, sched2 = fresh(resumed)
    assert opt2.param_groups[0]["lr"] != saved["opt"]["param_groups"][0]["lr"]  # loading matters
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    for state in opt2.state.values():
        for v in state.values():
            if hasattr(v, "dtype"):
                assert mv.backend.get_array_module(v) is xp
    train(resumed, opt2, sched2, all_grads[3:])
    assert sched2.get_last_lr() == ref_sched.get_last_lr()
    for p, q in zip(resumed, ref):
        if xp is np:
            np.testing.assert_array_equal(p.data, q.data)  # bitwise on CPU
        else:
            np.testing.assert_allclose(host(p.data), host(q.data), rtol=1e-14)


def test_load_state_dict_rejects_other_grouping(xp):
    params = make_params(xp)
    opt = AdamW(groups_of(params, 0.01))
    with pytest.raises(ValueError, match="parameter groups"):
        AdamW(params).load_state_dict(opt.state_dict())
    other = [{"params": params[:1]}, {"params": params[1:]}]
    with pytest.raises(ValueError, match="group 0 has 1 parameters"):
        AdamW(other).load_state_dict(opt.state_dict())


def test_load_state_dict_casts_to_param_dtype(xp):
    p64 = make_params(xp, [(3,)])[0]
    p64.grad = xp.ones(3)
    opt = AdamW([p64])
    opt.step()
    p32 = Tensor(xp.zeros(3, dtype=np.float32), requires_grad=True)
    opt32 = AdamW([p32])
    opt32.load_state_dict(opt.state_dict())
    assert opt32.state[p32]["exp_avg"].dtype == np.float32
    assert opt32.state[p32]["step"] == 1


# ============================================================================ schedules
def reference_schedule(step, base, W, T, min_lr, s):
    """Closed form written independently of the implementation (the textbook cosine form)."""
    if step < W:
        return base * s + (base - base * s) * step / W
    if step >= T:
        return min_lr
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * (step - W) / (T - W)))


@pytest.mark.parametrize("W,s,min_lr", [(5, 0.0, 0.0), (4, 0.1, 1e-5), (0, 0.0, 1e-4)])
def test_cosine_warmup_matches_closed_form_and_torch(W, s, min_lr):
    torch = torch_or_skip()
    T, base = 20, [3e-3, 1e-3]
    p, q = make_params(np, [(2,), (2,)])
    opt = SGD([{"params": [p], "lr": base[0]}, {"params": [q], "lr": base[1]}], lr=1.0)
    sched = CosineWarmupLR(opt, warmup_steps=W, total_steps=T, min_lr=min_lr, warmup_start_factor=s)
    tp = [torch.zeros(2, requires_grad=True) for _ in range(2)]
    topt = torch.optim.SGD([{"params": [tp[0]], "lr": base[0]}, {"params": [tp[1]], "lr": base[1]}])
    tsched = torch.optim.lr_scheduler.LambdaLR(
        topt, [lambda k, b=b: warmup_cosine(k, b, W, T, min_lr, s) / b for b in base])
    seen = []
    for step in range(T + 4):
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs == sched.get_last_lr()
        for lr, b in zip(lrs, base):
            assert lr == pytest.approx(reference_schedule(step, b, W, T, min_lr, s), rel=1e-12, abs=1e-18)
        np.testing.assert_allclose(lrs, tsched.get_last_lr(), rtol=1e-15)
        seen.append(lrs[0])
        if step == W:
            assert lrs == base  # warmup ends exactly at base_lr
        if step >= T:
            assert lrs == [min_lr, min_lr]  # and decay ends exactly at min_lr
        opt.step()
        sched.step()
        topt.step()
        tsched.step()
    assert seen[0] == (base[0] * s if W else base[0])
    assert all(a < b for a, b in zip(seen[:W], seen[1:W + 1]))       # rising during warmup
    assert all(a > b for a, b in zip(seen[W:T], seen[W + 1:T + 1]))  # falling afterwards


def test_lambda_lr_matches_torch_and_resumes():
    torch = torch_or_skip()
    fns = [lambda k: 0.95 ** k, lambda k: 1.0 / (1 + k)]
    p, q = make_params(np, [(2,), (2,)])
    make = lambda: SGD([{"params": [p]}, {"params": [q], "lr": 0.5}], lr=0.1)  # noqa: E731
    opt = make()
    sched = LambdaLR(opt, fns)
    topt = torch.optim.SGD([{"params": [torch.zeros(1)]}, {"params": [torch.zeros(1)], "lr": 0.5}], lr=0.1)
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, fns)
    for _ in range(5):
        np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-15)
        opt.step()
        topt.step()  # (torch warns when a scheduler steps before its optimizer)
        sched.step()
        tsched.step()
    state_opt, state_sched = pickle.loads(pickle.dumps((opt.state_dict(), sched.state_dict())))
    opt2 = make()
    opt2.load_state_dict(state_opt)
    sched2 = LambdaLR(opt2, fns, last_epoch=state_sched["last_epoch"])
    sched2.load_state_dict(state_sched)
    for _ in range(3):
        sched.step()
        sched2.step()
        assert sched2.get_last_lr() == sched.get_last_lr()
        assert [g["lr"] for g in opt2.param_groups] == sched.get_last_lr()


def test_cosine_warmup_rejects_bad_arguments():
    opt = SGD(make_params(np, [(2,)]), lr=0.1)
    with pytest.raises(ValueError, match="warmup_steps < total_steps"):
        CosineWarmupLR(opt, warmup_steps=10, total_steps=10)
    with pytest.raises(ValueError, match="warmup_start_factor"):
        CosineWarmupLR(opt, warmup_steps=1, total_steps=10, warmup_start_factor=2.0)


# ============================================================================ gradient clipping
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(xp, norm_type, max_norm):
    torch = torch_or_skip()
    params = make_params(xp)
    grads = synthetic_grads(1)[0][:2] + [np.full(SHAPES[2], -0.7)]
    theirs = torch_twins(torch, params)
    for p, tp, g in zip(params, theirs, grads):
        p.grad, tp.grad = xp.asarray(g), torch.tensor(g)
    total = clip_grad_norm_(params, max_norm, norm_type=norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type, foreach=False)
    assert total.shape == () and mv.backend.get_array_module(total) is xp
    np.testing.assert_allclose(float(total), ttotal.item(), rtol=1e-13)
    for p, tp in zip(params, theirs):
        np.testing.assert_allclose(host(p.grad), tp.grad.numpy(), rtol=1e-13)
    clipped = np.linalg.norm([np.linalg.norm(host(p.grad).ravel(), norm_type) for p in params], norm_type)
    assert clipped <= max_norm * (1 + 1e-12)


def test_clip_grad_norm_does_not_scale_a_shared_grad_in_place(xp):
    a, b, c = make_params(xp, [(3,), (3,), (3,)])
    g = xp.asarray([3.0, 4.0, 0.0])
    a.grad = b.grad = g
    c.grad = None  # skipped
    total = clip_grad_norm_([a, b, c], max_norm=1.0)
    np.testing.assert_allclose(float(total), math.sqrt(50.0), rtol=1e-14)
    np.testing.assert_array_equal(host(g), [3.0, 4.0, 0.0])  # the shared array is untouched
    scale = 1.0 / (math.sqrt(50.0) + 1e-6)
    for p in (a, b):
        assert p.grad is not g
        np.testing.assert_allclose(host(p.grad), np.array([3.0, 4.0, 0.0]) * scale, rtol=1e-14)
    assert c.grad is None


def test_clip_grad_norm_keeps_dtype_and_flags_nonfinite(xp):
    p = Tensor(xp.ones(4, dtype=np.float32), requires_grad=True)
    p.grad = xp.full(4, 10.0, dtype=np.float32)
    total = clip_grad_norm_([p], 1.0)
    assert p.grad.dtype == np.float32 and total.dtype == np.float32
    p.grad = xp.asarray([1.0, np.inf, 0.0, 0.0], dtype=np.float32)
    with pytest.raises(RuntimeError, match="non-?finite|cannot be clipped"):
        clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    assert float(clip_grad_norm_([Tensor(xp.ones(2), requires_grad=True)], 1.0)) == 0.0  # no grads


def test_clip_grad_value(xp):
    p = make_params(xp, [(4,)])[0]
    g = xp.asarray([-3.0, -0.5, 0.2, 7.0])
    p.grad = g
    clip_grad_value_([p], 1.0)
    np.testing.assert_array_equal(host(p.grad), [-1.0, -0.5, 0.2, 1.0])
    np.testing.assert_array_equal(host(g), [-3.0, -0.5, 0.2, 7.0])


# ============================================================================ groups, zero_grad, errors
class TinyViT:
    """Duck-typed model: just named_parameters() and no_weight_decay(), with timm's names."""

    def __init__(self, xp):
        shapes = {"cls_token": (1, 1, 4), "pos_embed": (1, 5, 4), "patch_embed.proj.weight": (4, 3, 2, 2),
                  "patch_embed.proj.bias": (4,), "blocks.0.norm1.weight": (4,), "blocks.0.norm1.bias": (4,),
                  "blocks.0.attn.qkv.weight": (12, 4), "blocks.0.attn.relative_position_bias_table": (9, 2),
                  "head.weight": (10, 4), "frozen.weight": (4, 4)}
        self.params = {n: Tensor(xp.zeros(s), requires_grad=True) for n, s in shapes.items()}
        self.params["frozen.weight"].requires_grad = False

    def named_parameters(self):
        return iter(self.params.items())

    def no_weight_decay(self):
        return {"cls_token", "pos_embed"}


def test_param_groups_weight_decay_splits(xp):
    model = TinyViT(xp)
    no_decay, decay = param_groups_weight_decay(model, 0.05, skip_list=("relative_position_bias_table",))
    names = {id(p): n for n, p in model.params.items()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [names[id(p)] for p in decay["params"]] == [
        "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "head.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == sorted([
        "cls_token", "pos_embed", "patch_embed.proj.bias", "blocks.0.norm1.weight",
        "blocks.0.norm1.bias", "blocks.0.attn.relative_position_bias_table"])
    opt = AdamW(param_groups_weight_decay(model, 0.05), lr=1e-3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.05]
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)


def test_zero_grad(xp):
    a, b = make_params(xp, [(3,), (3,)])
    g = xp.ones(3)
    a.grad = b.grad = g
    opt = SGD([a, b], lr=0.1)
    opt.zero_grad(set_to_none=False)
    assert a.grad is not g and not a.grad.any() and not b.grad.any()
    np.testing.assert_array_equal(host(g), np.ones(3))  # fresh zeros, not zeroed in place
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_group_overrides_and_step_skips_params_without_grad(xp):
    a, b = make_params(xp, [(3,), (3,)])
    b0 = host(b.data).copy()
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.5, "momentum": 0.9}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert opt.param_groups[0]["momentum"] == 0.0 and opt.param_groups[1]["momentum"] == 0.9
    a.grad = xp.ones(3)
    opt.step()
    np.testing.assert_array_equal(host(b.data), b0)
    assert b not in opt.state


def test_bad_arguments_raise_clear_errors(xp):
    p = make_params(xp, [(3,)])[0]
    with pytest.raises(ValueError, match="empty parameter list"):
        AdamW([])
    with pytest.raises(TypeError, match="only optimize Tensors"):
        SGD([p, np.zeros(3)], lr=0.1)
    with pytest.raises(TypeError, match="single Tensor"):
        AdamW(p)
    with pytest.raises(ValueError, match="more than once"):
        AdamW([{"params": [p]}, {"params": [p]}])
    with pytest.raises(ValueError, match="required optimization parameter 'lr'"):
        SGD([p])
    with pytest.raises(ValueError, match="non-leaf"):
        SGD([p * 2], lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        AdamW([p], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        AdamW([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([p], lr=0.1, nesterov=True)
    assert isinstance(SGD((q for q in [p]), lr=0.1), Optimizer)  # generators (model.parameters()) work


def test_trains_a_real_module_with_weight_decay_groups(xp, device):
    from minivit import nn
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 3))
    y = np.sin(x @ np.array([[1.0], [-2.0], [0.5]]))
    x, y = Tensor(xp.asarray(x)), Tensor(xp.asarray(y))
    model = nn.Sequential(nn.Linear(3, 16), nn.GELU(), nn.Linear(16, 1))
    model.to(device=device, dtype=np.float64)
    groups = param_groups_weight_decay(model, 1e-4)
    assert [p.ndim for p in groups[0]["params"]] == [1, 1] and [p.ndim for p in groups[1]["params"]] == [2, 2]
    opt = AdamW(groups, lr=0.02)
    sched = CosineWarmupLR(opt, warmup_steps=20, total_steps=300)
    loss_fn = lambda: ((model(x) - y) ** 2).mean()  # noqa: E731
    first = loss_fn().item()
    for _ in range(300):
        opt.zero_grad()
        loss_fn().backward()
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    assert loss_fn().item() < first * 0.1, (first, loss_fn().item())
