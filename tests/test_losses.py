"""minivit.losses: DeiT's distillation losses — finite differences in float64, closed forms,
and parity with the DeiT repository's formulas written in torch ops (float64, forward and
backward), plus the criterion with a teacher module and a two-headed (distilled) student."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit as mv
from minivit import Tensor, nn
from minivit.losses import (DistillationLoss, cross_entropy, distillation_loss, hard_distillation_loss,
                            hard_distillation_term, merge_heads, soft_distillation_loss,
                            soft_distillation_term)
from minivit.testing import gradcheck
from tests.conftest import torch_or_skip


def host(a):
    return mv.backend.to_numpy(a)


def logits(xp, rng, b, c, scale=2.0, grad=True):
    return Tensor(xp.asarray(rng.standard_normal((b, c)) * scale), requires_grad=grad)


def soft_targets(rng, b, c):
    p = rng.uniform(0.05, 1.0, (b, c))
    return p / p.sum(axis=1, keepdims=True)


# =========================================================================== finite differences
@settings(max_examples=8)
@given(b=st.integers(1, 4), c=st.integers(2, 6), tau=st.sampled_from([0.5, 1.0, 3.0]),
       reduction=st.sampled_from(["batchmean", "numel"]), seed=st.integers(0, 2**16))
def test_soft_term_gradcheck(xp, b, c, tau, reduction, seed):
    rng = np.random.default_rng(seed)
    zs, zt = logits(xp, rng, b, c), logits(xp, rng, b, c, grad=False)
    gradcheck(lambda z: soft_distillation_term(z, zt, tau, reduction), zs)


@settings(max_examples=8)
@given(b=st.integers(1, 4), c=st.integers(2, 6), alpha=st.sampled_from([0.0, 0.3, 1.0]),
       smoothing=st.sampled_from([0.0, 0.1]), soft=st.booleans(), seed=st.integers(0, 2**16))
def test_soft_loss_gradcheck(xp, b, c, alpha, smoothing, soft, seed):
    rng = np.random.default_rng(seed)
    zs, zt = logits(xp, rng, b, c), logits(xp, rng, b, c, grad=False)
    y = xp.asarray(soft_targets(rng, b, c)) if soft else xp.asarray(rng.integers(0, c, b))
    gradcheck(lambda z: soft_distillation_loss(z, zt, y, alpha, tau=2.0, label_smoothing=smoothing), zs)


@settings(max_examples=8)
@given(b=st.integers(1, 4), c=st.integers(2, 6), smoothing=st.sampled_from([0.0, 0.1]),
       seed=st.integers(0, 2**16))
def test_hard_loss_gradcheck(xp, b, c, smoothing, seed):
    rng = np.random.default_rng(seed)
    zs, zt = logits(xp, rng, b, c), logits(xp, rng, b, c, grad=False)
    y = xp.asarray(rng.integers(0, c, b))
    gradcheck(lambda z: hard_distillation_loss(z, zt, y, smoothing), zs)


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_two_head_gradcheck(xp, kind):
    """Distilled DeiT: gradients flow to both heads, each from its own term."""
    rng = np.random.default_rng(0)
    z_cls, z_dist, zt = logits(xp, rng, 3, 5), logits(xp, rng, 3, 5), logits(xp, rng, 3, 5, grad=False)
    y = xp.asarray(rng.integers(0, 5, 3))
    gradcheck(lambda a, b: distillation_loss((a, b), zt, y, kind, alpha=0.4, tau=2.0, label_smoothing=0.1),
              z_cls, z_dist)


# =========================================================================== closed forms
def test_closed_forms(xp):
    rng = np.random.default_rng(1)
    zs, zt = logits(xp, rng, 6, 4), logits(xp, rng, 6, 4, grad=False)
    y = xp.asarray(rng.integers(0, 4, 6))
    ce = cross_entropy(zs, y).item()
    # λ = 0: plain cross-entropy; the student as its own teacher: KL = 0.
    assert soft_distillation_loss(zs, zt, y, alpha=0.0).item() == pytest.approx(ce, rel=1e-12)
    assert soft_distillation_term(zs, zs.detach(), tau=3.0).item() == pytest.approx(0.0, abs=1e-12)
    # The KL term by hand: τ² · mean_b Σ_c pt (log pt − log ps).
    tau = 2.0
    s, t = host(zs.data) / tau, host(zt.data) / tau
    log_ps = s - np.log(np.exp(s).sum(1, keepdims=True))
    log_pt = t - np.log(np.exp(t).sum(1, keepdims=True))
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(1).mean()
    assert soft_distillation_term(zs, zt, tau).item() == pytest.approx(tau * tau * kl, rel=1e-12)
    assert soft_distillation_term(zs, zt, tau, "numel").item() == pytest.approx(tau * tau * kl / 4, rel=1e-12)
    # Hard: when the teacher agrees with the label, ½CE + ½CE = CE.
    zt_agree = Tensor(xp.asarray(np.eye(4)[host(y)] * 5.0))
    assert hard_distillation_loss(zs, zt_agree, y).item() == pytest.approx(ce, rel=1e-12)
    assert hard_distillation_term(zs, zt).item() == pytest.approx(
        cross_entropy(zs, host(zt.data).argmax(1)).item(), rel=1e-12)
    # The teacher's logits never get a gradient.
    zt2 = logits(xp, rng, 6, 4)
    soft_distillation_loss(zs, zt2, y, 0.5, 2.0).backward()
    assert zt2.grad is None and zs.grad is not None


def test_dtype_and_errors(xp):
    rng = np.random.default_rng(0)
    zs = Tensor(xp.asarray(rng.standard_normal((2, 3)), dtype=np.float32), requires_grad=True)
    zt = Tensor(xp.asarray(rng.standard_normal((2, 3)), dtype=np.float32))
    y = xp.asarray([0, 2])
    assert soft_distillation_loss(zs, zt, y, 0.5, 2.0).dtype == np.float32
    assert hard_distillation_loss(zs, zt, y).dtype == np.float32
    with pytest.raises(ValueError, match="tau must be positive"):
        soft_distillation_term(zs, zt, tau=0.0)
    with pytest.raises(ValueError, match=r"alpha .* must be in \[0, 1\]"):
        distillation_loss(zs, zt, y, "soft", alpha=1.5)
    with pytest.raises(ValueError, match="kind must be 'soft' or 'hard'"):
        distillation_loss(zs, zt, y, "medium")
    with pytest.raises(ValueError, match="same shape"):
        soft_distillation_term(zs, Tensor(xp.zeros((2, 4), dtype=np.float32)))
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationLoss(None, "hard")


# =========================================================================== PyTorch parity
def deit_repo_loss(torch, outputs, teacher_outputs, labels, kind, alpha, tau, smoothing):
    """The DeiT repository's DistillationLoss.forward (losses.py), in torch ops."""
    Fnn = torch.nn.functional
    outputs_kd = None
    if not isinstance(outputs, torch.Tensor):
        outputs, outputs_kd = outputs
    base_loss = Fnn.cross_entropy(outputs, labels, label_smoothing=smoothing)
    if outputs_kd is None:
        outputs_kd = outputs
    if kind == "soft":
        T = tau
        distillation_loss = Fnn.kl_div(Fnn.log_softmax(outputs_kd / T, dim=1),
                                       Fnn.log_softmax(teacher_outputs / T, dim=1),
                                       reduction="sum", log_target=True) * (T * T) / outputs_kd.numel()
    else:
        distillation_loss = Fnn.cross_entropy(outputs_kd, teacher_outputs.argmax(dim=1))
    return base_loss * (1 - alpha) + distillation_loss * alpha


@pytest.mark.parametrize("kind", ["soft", "hard"])
@pytest.mark.parametrize("two_heads", [False, True])
@pytest.mark.parametrize("soft_labels", [False, True])
def test_torch_parity(xp, kind, two_heads, soft_labels):
    torch = torch_or_skip()
    rng = np.random.default_rng(2)
    b, c, alpha, tau, eps = 5, 7, 0.3 if kind == "soft" else 0.5, 2.5, 0.1
    zc, zd, zt = (rng.standard_normal((b, c)) * 3 for _ in range(3))
    y = soft_targets(rng, b, c) if soft_labels else rng.integers(0, c, b)
    ours = [Tensor(xp.asarray(a), requires_grad=True) for a in (zc, zd)]
    theirs = [torch.tensor(a, requires_grad=True) for a in (zc, zd)]
    out = (ours[0], ours[1]) if two_heads else ours[0]
    tout = (theirs[0], theirs[1]) if two_heads else theirs[0]
    # The DeiT repository divides the soft term by B·C: kl_reduction="numel" reproduces it.
    loss = distillation_loss(out, Tensor(xp.asarray(zt)), xp.asarray(y), kind, alpha, tau, eps, kl_reduction="numel")
    ref = deit_repo_loss(torch, tout, torch.tensor(zt), torch.tensor(y), kind, alpha, tau, eps)
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-12)
    g = rng.standard_normal()
    loss.backward(xp.asarray(g))
    ref.backward(torch.tensor(g, dtype=torch.float64))
    for o, t in zip(ours[: 1 + two_heads], theirs[: 1 + two_heads]):
        np.testing.assert_allclose(host(o.grad), t.grad.numpy(), rtol=1e-10, atol=1e-14)
    # The paper's batch mean is the repository's term times C.
    if kind == "soft":
        paper = soft_distillation_term(Tensor(xp.asarray(zd)), Tensor(xp.asarray(zt)), tau).item()
        Fnn = torch.nn.functional
        kl = Fnn.kl_div(Fnn.log_softmax(torch.tensor(zd) / tau, 1), Fnn.log_softmax(torch.tensor(zt) / tau, 1),
                        reduction="batchmean", log_target=True) * tau * tau
        np.testing.assert_allclose(paper, kl.item(), rtol=1e-12)


# =========================================================================== the criterion
class TwoHeads(nn.Module):
    """A stand-in for the distilled DeiT: (cls, dist) logits in training, their mean in eval."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        x = x.reshape(x.shape[0], -1)
        if self.training:
            return self.a(x), self.b(x)
        return (self.a(x) + self.b(x)) * 0.5


def test_criterion_with_teacher(xp):
    device = "cpu" if xp is np else "cuda"
    rng = np.random.default_rng(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).to(device=device)
    teacher.train()
    student = TwoHeads().to(device=device)
    x = Tensor(xp.asarray(rng.standard_normal((5, 1, 2, 2)), dtype=np.float32))
    y = xp.asarray(rng.integers(0, 3, 5))
    crit = DistillationLoss(teacher, "soft", alpha=0.4, tau=2.0, label_smoothing=0.1)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    out = student(x)
    loss = crit(x, out, y)
    with mv.no_grad():
        zt = teacher(x)
    ref = distillation_loss(out, zt, y, "soft", 0.4, 2.0, 0.1)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    assert student.b.weight.grad is not None and student.a.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    # Without a teacher, both heads learn from the label.
    plain = DistillationLoss()(x, out, y).item()
    assert plain == pytest.approx((cross_entropy(out[0], y).item() + cross_entropy(out[1], y).item()) / 2, rel=1e-6)
    student.eval()   # late fusion: scoring the training outputs = what the model gives in eval mode
    np.testing.assert_allclose(host(merge_heads(out).data), host(student(x).data), rtol=1e-6)
    assert merge_heads(out[0]) is out[0]                               # a single head is passed through
