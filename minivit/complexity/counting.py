"""Count the multiply-accumulates (MACs) of the ops that actually ran.

Papers report "FLOPs" as multiply-accumulates of the matrix products:
linear layers, convolutions and the attention matmuls (QKᵀ and AV). Norms,
softmax, activations and additions are left out, so this counts exactly those
three ops. It is hooked into the engine (``autograd.forward_hooks`` sees every
op as it runs), not estimated from a model's configuration: what is counted is
what was computed.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from minivit import autograd, nn
from minivit.functional.attention import HeadsAttention, QKVAttention, QKVSplitAttention, ScaledDotProductAttention
from minivit.functional.basic import MatMul
from minivit.functional.conv import Conv2d as Conv2dOp, Conv2dTokens
from minivit.functional.convnd import ConvNd, ConvTransposeNd
from minivit.functional.linear import Linear as LinearOp


def op_macs(fn, inputs, out) -> tuple[str, int] | None:
    """(kind, MACs) of one executed op, or None for ops that papers do not count."""
    if isinstance(fn, LinearOp):            # (…, in) @ (in, out): one MAC per output per input feature
        w = inputs[1]
        return "linear", out.numel() * w.shape[1]
    if isinstance(fn, (Conv2dOp, ConvNd, Conv2dTokens)):   # each output value sums C_in/groups × Πk products
        w = inputs[1]
        return "conv", out.numel() * int(np.prod(w.shape[1:]))
    if isinstance(fn, ConvTransposeNd):     # each input value is spread by C_out/groups × Πk products
        w = inputs[1]
        return "conv", inputs[0].numel() * int(np.prod(w.shape[1:]))
    if isinstance(fn, MatMul):              # (…, M, K) @ (…, K, N): M·N·K per batch element
        k = inputs[0].shape[-1]
        return "matmul", out.numel() * k
    if isinstance(fn, ScaledDotProductAttention):   # Q Kᵀ and A V as one op: (…, L, S)·(d + d_v)
        q, k = inputs[0], inputs[1]
        return "matmul", (out.numel() // out.shape[-1]) * k.shape[-2] * (q.shape[-1] + out.shape[-1])
    if isinstance(fn, QKVAttention):            # the same from packed qkv (B, N, 3C) → (B, N, C): 2·B·N²·C
        B, N, C = out.shape
        return "matmul", 2 * B * N * N * C
    if isinstance(fn, (QKVSplitAttention, HeadsAttention)):   # queries (B, N, C) over M keys, values: 2·B·N·M·C
        B, N, C = out.shape
        return "matmul", 2 * B * N * inputs[1].shape[1] * C
    return None


@dataclass
class MacCount:
    """The result of :func:`count_macs`: totals and a per-module breakdown."""
    total: int = 0
    by_kind: dict = field(default_factory=lambda: defaultdict(int))
    by_module: dict = field(default_factory=lambda: defaultdict(int))

    @property
    def gmacs(self) -> float:
        return self.total / 1e9

    def table(self, depth: int = 2, top: int | None = None) -> str:
        """Per-module MACs, modules grouped to ``depth`` levels of their dotted names."""
        grouped = defaultdict(int)
        for name, macs in self.by_module.items():
            key = ".".join(name.split(".")[:depth]) if name else "(top level)"
            grouped[key] += macs
        rows = sorted(grouped.items(), key=lambda kv: -kv[1])[:top]
        width = max([len(k) for k, _ in rows] + [6])
        lines = [f"{'module':<{width}}  {'MACs':>15}  {'share':>6}"]
        for k, v in rows:
            lines.append(f"{k:<{width}}  {v:>15,}  {v / max(self.total, 1):>6.1%}")
        lines.append(f"{'total':<{width}}  {self.total:>15,}  ({self.gmacs:.3f} GMACs)")
        return "\n".join(lines)


def count_macs(model_or_fn, *inputs) -> MacCount:
    """Run ``model_or_fn(*inputs)`` once (no graph kept) and count its MACs.

    For a Module the count is also broken down by the innermost submodule that
    was running when each op executed (``result.by_module``, ``result.table()``).
    """
    result = MacCount()
    stack: list[str] = []

    def hook(fn, ins, out):
        counted = op_macs(fn, ins, out)
        if counted is not None:
            kind, macs = counted
            result.total += macs
            result.by_kind[kind] += macs
            result.by_module[stack[-1] if stack else ""] += macs

    wrapped = []
    if isinstance(model_or_fn, nn.Module):
        # Wrap each submodule's forward to know which module an op belongs to.
        for name, m in model_or_fn.named_modules():
            def make(orig, name=name):
                def forward(*a, **k):
                    stack.append(name)
                    try:
                        return orig(*a, **k)
                    finally:
                        stack.pop()
                return forward
            object.__setattr__(m, "forward", make(m.forward))
            wrapped.append(m)
    autograd.forward_hooks.append(hook)
    try:
        with autograd.no_grad():
            model_or_fn(*inputs)
    finally:
        autograd.forward_hooks.remove(hook)
        for m in wrapped:
            del m.__dict__["forward"]
    return result


def count_params(model) -> int:
    """Number of trainable parameters (what the papers' "#Param" columns count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
