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
