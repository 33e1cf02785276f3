"""Reference models for parity tests (timm, torchvision, Hugging Face, on PyTorch).

A freshly built model leaves many parameters at 0 or 1 (biases, norm affines, zero-initialised
embeddings), where a missing or misplaced one in the twin changes nothing: :func:`randomize_`
draws them all so that each one shows in the output.
"""
from __future__ import annotations


def randomize_(torch_model, is_embedding=None, batch_norm_stats: bool = False):
    """Redraw every parameter of a torch model in place (seed torch first) and return the model.

    Names for which ``is_embedding(name)`` is true (class tokens, position embeddings) ~ N(0, 1);
    weights of two or more dims (linear, conv) ~ N(0, 1/fan_in); other weights (norm scales)
    ~ U(0.5, 1.5); the rest (biases, norm shifts) ~ U(−0.5, 0.5). ``batch_norm_stats``: the
    BatchNorm2d running means ~ U(−0.5, 0.5) and variances ~ U(0.5, 2) too."""
    import torch
    with torch.no_grad():
        for name, p in torch_model.named_parameters():
            if is_embedding is not None and is_embedding(name):
                p.normal_(0, 1.0)
            elif p.ndim >= 2:
                p.normal_(0, p[0].numel() ** -0.5)
            elif name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.uniform_(-0.5, 0.5)
        for m in torch_model.modules() if batch_norm_stats else ():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return torch_model


def backward_both(torch_model, twin, x, xp=None, seed: int = 2, torch_call=None, twin_call=None) -> tuple:
    """Forward and backward of a torch model and its minivit twin on the same input ``x`` (a torch
    tensor), each output weighted by the same random cotangent R (the loss Σ out·R, so every output
    matters). ``xp``: the twin's array module (NumPy default); ``torch_call(model, x)`` and
    ``twin_call(twin, x)`` replace the plain calls (e.g. to pick the logits out of an output object).

    Returns (reference, twin), each a dict of host NumPy arrays: ``out``, ``x_grad`` and ``grads``
    ({parameter name: gradient}, every parameter, None where none arrived)."""
    import numpy as np
    import torch

    from minivit import backend
    from minivit.autograd import Tensor
    xp = np if xp is None else xp
    tx = x.detach().clone().requires_grad_(True)
    out = torch_call(torch_model, tx) if torch_call is not None else torch_model(tx)
    R = np.random.default_rng(seed).standard_normal(tuple(out.shape))
    (out * torch.from_numpy(R).to(out.dtype)).sum().backward()
    ref = {"out": out.detach().numpy(), "x_grad": tx.grad.numpy(),
           "grads": {k: None if p.grad is None else p.grad.numpy() for k, p in torch_model.named_parameters()}}
    ox = Tensor(xp.asarray(x.detach().numpy()), requires_grad=True)
    o = twin_call(twin, ox) if twin_call is not None else twin(ox)
    (o * Tensor(xp.asarray(R.astype(o.dtype)))).sum().backward()

    def host(a):
        return None if a is None else backend.to_numpy(a.data if isinstance(a, Tensor) else a)
    ours = {"out": host(o), "x_grad": host(ox.grad), "grads": {k: host(p.grad) for k, p in twin.named_parameters()}}
    return ref, ours


def assert_grads_close(ref: dict, ours: dict, rtol: float = 1e-8, rename=None, zero=None):
    """Every reference parameter's gradient within ``rtol`` of its own largest entry (and the input's
    gradient likewise), from :func:`backward_both`'s results. ``rename(name)``: the twin's name for
    a reference parameter; ``zero(name)``: gradients that are zero by construction (checked against
    the largest gradient of all instead). Every other gradient must be well above zero
    (1e-6 of the largest), or the check could not see an error."""
    import numpy as np
    gx = ref["x_grad"]
    np.testing.assert_allclose(ours["x_grad"], gx, rtol=0, atol=rtol * np.abs(gx).max())
    assert len(ours["grads"]) == len(ref["grads"]), (sorted(ours["grads"]), sorted(ref["grads"]))
    largest = max(np.abs(g).max() for g in ref["grads"].values())
    for name, g in ref["grads"].items():
        mine = ours["grads"][rename(name) if rename is not None else name]
        if zero is not None and zero(name):
            np.testing.assert_allclose(mine, g, rtol=0, atol=rtol * 1e-4 * largest, err_msg=name)
            continue
        scale = np.abs(g).max()
        assert scale > 1e-6 * largest, f"{name} gets (almost) no gradient: the test could not see an error"
        np.testing.assert_allclose(mine, g, rtol=0, atol=rtol * scale, err_msg=name)
