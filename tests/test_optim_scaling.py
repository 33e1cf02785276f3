"""The "Scaling Vision Transformers" recipe's optimisation parts: warmup + rsqrt + linear cooldown
against timm's WSDLRScheduler at every step, and the head's own weight decay in the parameter groups."""
import pickle

import numpy as np
import pytest

from minivit import Tensor
from minivit.optim import SGD, AdamW, RsqrtCooldownLR, param_groups_weight_decay, warmup_rsqrt_cooldown
from tests.conftest import torch_or_skip


def two_groups(lrs=(0.1, 0.03)):
    return [{"params": [Tensor(np.zeros(2), requires_grad=True)], "lr": lr} for lr in lrs]


# (warmup, total, cooldown, min_lr, timescale): cooldown right after warmup, long rsqrt, min_lr floor
SCHEDULES = [(10, 100, 20, 0.0, None), (5, 60, 55, 1e-4, None), (8, 200, 30, 1e-3, 50.0), (3, 40, 1, 0.0, 7.0)]


@pytest.mark.parametrize("W,T,C,min_lr,tau", SCHEDULES)
def test_rsqrt_cooldown_matches_timm_wsd_at_every_step(W, T, C, min_lr, tau):
    """timm's WSDLRScheduler(stable_fn='rsqrt', decay_fn='linear') stepped per update, with
    t_initial = T − W, decay_t = C: the same lr at every step, past the end too."""
    torch = torch_or_skip()
    timm_sched = pytest.importorskip("timm.scheduler")
    tparams = [torch.nn.Parameter(torch.zeros(2)) for _ in range(2)]
    topt = torch.optim.SGD([{"params": [tparams[0]], "lr": 0.1}, {"params": [tparams[1]], "lr": 0.03}])
    ref = timm_sched.WSDLRScheduler(topt, t_initial=T - W, decay_t=C, lr_min=min_lr, stable_fn="rsqrt",
                                    stable_timescale=tau, decay_fn="linear", warmup_t=W, warmup_lr_init=0.0,
                                    t_in_epochs=False)
    opt = SGD(two_groups(), lr=0.1)
    sched = RsqrtCooldownLR(opt, warmup_steps=W, total_steps=T, cooldown_steps=C, min_lr=min_lr, timescale=tau)
    ours, theirs = [], []
    for t in range(T + 5):
        if t > 0:
            sched.step()                         # after optimizer step t − 1: the lr of step t
            ref.step_update(num_updates=t)
        ours.append([g["lr"] for g in opt.param_groups])
        theirs.append([g["lr"] for g in topt.param_groups])
    np.testing.assert_allclose(ours, theirs, rtol=1e-13, atol=1e-16)
    ours = np.array(ours)
    # and the shape: warmup from 0, base lr at step W, min_lr from step T on, decreasing after W
    assert ours[0, 0] == 0.0 and ours[W, 0] == pytest.approx(0.1)
    np.testing.assert_allclose(ours[T:], min_lr)
    assert np.all(np.diff(ours[W:T + 1, 0]) <= 0)


def test_rsqrt_cooldown_formula_written_out():
    """big_vision's rsqrt with its timescale shift, 1/√((step + τ − W)/τ), times its cooldown factor
    min(1, (T − step)/C): transcribed independently of timm, min_lr = 0."""
    W, T, C, tau = 4, 50, 10, 10.0
    for step in range(T + 1):
        expected = (step / W if step < W
                    else 1.0 / np.sqrt((step + tau - W) / tau) * min(1.0, (T - step) / C))
        assert warmup_rsqrt_cooldown(step, 1.0, W, T, C, timescale=tau) == pytest.approx(expected, rel=1e-13,
                                                                                         abs=1e-15)


def test_rsqrt_cooldown_resumes_and_rejects_bad_arguments():
    opt = SGD(two_groups(), lr=0.1)
    sched = RsqrtCooldownLR(opt, warmup_steps=3, total_steps=30, cooldown_steps=5, min_lr=1e-4)
    for _ in range(12):
        sched.step()
    saved = pickle.loads(pickle.dumps(sched.state_dict()))
    opt2 = SGD(two_groups(), lr=0.1)
    sched2 = RsqrtCooldownLR(opt2, warmup_steps=3, total_steps=30, cooldown_steps=5, min_lr=1e-4)
    sched2.load_state_dict(saved)
    for _ in range(20):
        sched.step()
        sched2.step()
        assert sched.get_last_lr() == sched2.get_last_lr()
    for kw, message in [(dict(warmup_steps=3, total_steps=30, cooldown_steps=0), "cooldown_steps"),
                        (dict(warmup_steps=3, total_steps=30, cooldown_steps=28), "after the warmup"),
                        (dict(warmup_steps=0, total_steps=30, cooldown_steps=5), "pass timescale"),
                        (dict(warmup_steps=3, total_steps=30, cooldown_steps=5, timescale=-1.0), "timescale"),
                        (dict(warmup_steps=30, total_steps=30, cooldown_steps=5), "warmup_steps < total_steps")]:
        with pytest.raises(ValueError, match=message):
            RsqrtCooldownLR(SGD(two_groups(), lr=0.1), **kw)


# ============================================================================ head weight decay
def test_head_weight_decay_gets_its_own_group():
    import minivit.models.deit  # noqa: F401
    import minivit.models.vit  # noqa: F401
    from minivit.models.registry import create_model
    model = create_model("deit_tiny", embed_dim=32, depth=1, num_heads=2)
    no_decay, body, head = param_groups_weight_decay(model, 0.03, head_weight_decay=3.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert (no_decay["weight_decay"], body["weight_decay"], head["weight_decay"]) == (0.0, 0.03, 3.0)
    assert sorted(names[id(p)] for p in head["params"]) == ["head.weight", "head_dist.weight"]
    nd = {names[id(p)] for p in no_decay["params"]}
    assert {"head.bias", "head_dist.bias", "cls_token", "dist_token", "pos_embed", "norm.weight", "norm.bias",
            "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"} <= nd
    assert all(p.ndim <= 1 or names[id(p)] in ("cls_token", "dist_token", "pos_embed") for p in no_decay["params"])
    assert "blocks.0.attn.qkv.weight" in {names[id(p)] for p in body["params"]}
    # every trainable parameter in exactly one group
    assert sorted(names[id(p)] for g in (no_decay, body, head) for p in g["params"]) == sorted(names.values())
    # without head_weight_decay: today's two groups, the head in the body's
    two = param_groups_weight_decay(model, 0.03)
    assert len(two) == 2 and id(model.head.weight) in {id(p) for p in two[1]["params"]}
    # the optimiser keeps each group's decay, and AdamW applies it: p ← p(1 − lr·λ) with a zero gradient
    opt = AdamW(param_groups_weight_decay(model, 0.03, head_weight_decay=3.0), lr=0.01)
    before = {n: np.array(p.data) for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = np.zeros_like(p.data)
    opt.step()
    for n, factor in [("head.weight", 1 - 0.01 * 3.0), ("blocks.0.mlp.fc1.weight", 1 - 0.01 * 0.03),
                      ("head.bias", 1.0), ("cls_token", 1.0)]:
        np.testing.assert_allclose(dict(model.named_parameters())[n].data, before[n] * factor, rtol=1e-6,
                                   err_msg=n)


def test_head_weight_decay_nested_heads_and_errors():
    import minivit.models.swin  # noqa: F401
    from minivit.models.registry import create_model
    swin = create_model("swin_tiny", embed_dim=12, depths=(1, 1), num_heads=(1, 1))
    _, _, head = param_groups_weight_decay(swin, 0.05, head_weight_decay=1.0)
    names = {id(p): n for n, p in swin.named_parameters()}
    assert [names[id(p)] for p in head["params"]] == ["head.fc.weight"]
    # skip_list under timm's name, no_weight_decay_list
    _, body = param_groups_weight_decay(swin, 0.05, no_weight_decay_list=("head.fc.weight",))
    assert "head.fc.weight" not in {names[id(p)] for p in body["params"]}
    with pytest.raises(ValueError, match="no trainable weight is under .'classifier',."):
        param_groups_weight_decay(swin, 0.05, head_weight_decay=1.0, head_names=("classifier",))
    with pytest.raises(ValueError, match="head_weight_decay must be >= 0"):
        param_groups_weight_decay(swin, 0.05, head_weight_decay=-1.0)
