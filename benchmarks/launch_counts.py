"""Device operations per training step: minivit (counted by the strict CuPy stand-in) beside the
kernel-launching ops of its PyTorch twin (counted by PyTorch's profiler on the CPU).

    python benchmarks/launch_counts.py --json benchmarks/launch_counts.json

On a GPU each operation is at least one kernel launch, a few microseconds of Python and driver
time whatever its size, so a small model's step is bound by their number: this is the baseline
for the work on fewer, larger ops. One training step = forward, cross-entropy, backward and the
AdamW update (lr 1e-3, weight decay 0.05), after one warm-up step (the optimizer's state exists).
The counts do not depend on the batch size; batch 8 is used.

minivit: ``strict_cupy.count_launches`` counts every stand-in operation that computes or copies
(views are free), each custom kernel once (fp32; the fused kernels on, as on a GPU).
``graph_ops_forward`` is another count: the ops (``Function`` calls, views included) of the
model's forward in training mode, each a vertex of the autograd graph with Python work forward
and backward on any device.
PyTorch: the twin (``minivit.bench``'s, same architecture) runs on the CPU under
``torch.profiler``; an op counts when it is an ``aten::`` op with no ``aten::`` op inside it
(the ones that do the work), minus ops that only make views or allocate; AdamW runs with
``foreach=True`` (its default on a GPU), each ``_foreach_*`` op counted once, as one
multi-tensor launch (on a GPU it is one launch per chunk of tensors: a lower bound).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MODELS = ["vit_tiny", "deit_tiny", "pvt_tiny", "pvt_v2_tiny", "swin_tiny", "cvt_tiny", "pit_tiny", "resnet_teacher",
          "vit_nano", "mixer_tiny", "convmixer_tiny", "xcit_tiny", "mvitv2_tiny"]
# aten ops that launch no kernel: views, metadata, allocation.
NO_KERNEL = {"aten::view", "aten::reshape", "aten::_reshape_alias", "aten::as_strided", "aten::t", "aten::transpose",
             "aten::permute", "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice",
             "aten::detach", "aten::alias", "aten::empty", "aten::empty_like", "aten::empty_strided",
             "aten::resize_", "aten::unbind", "aten::split", "aten::chunk", "aten::narrow", "aten::_unsafe_view",
             "aten::lift_fresh", "aten::result_type", "aten::set_", "aten::expand_as", "aten::view_as",
             "aten::split_with_sizes", "aten::flatten", "aten::unflatten", "aten::movedim", "aten::numpy_T",
             "aten::detach_", "aten::is_nonzero", "aten::resolve_conj", "aten::resolve_neg"}


def minivit_counts(model_name: str, batch: int = 8) -> dict:
    """Device operations of one minivit training step on the stand-in (run in a child process)."""
    import numpy as np
    import minivit.models
    import minivit.functional as F
    from minivit import autograd, backend, Tensor
    from minivit.optim import AdamW
    from minivit.testing import strict_cupy
    if not backend.is_strict_standin():
        raise SystemExit("run with MINIVIT_STRICT_CUPY=1 (the script's children do)")
    backend.manual_seed(0)
    model = minivit.models.create_model(model_name).to(device="cuda")
    xp = backend.xp_for("cuda")
    rng = np.random.default_rng(0)
    x = Tensor(xp.asarray(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)))
    y = Tensor(xp.asarray(rng.integers(0, 10, batch)))
    opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

    def logits():
        out = model(x)
        return sum(out) / len(out) if isinstance(out, tuple) else out      # DeiT's two heads

    def step():
        loss = F.cross_entropy(logits(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    step()
    with strict_cupy.count_launches() as fwd:
        loss = F.cross_entropy(logits(), y)
    opt.zero_grad()
    with strict_cupy.count_launches() as bwd:
        loss.backward()
    with strict_cupy.count_launches() as upd:
        opt.step()
    with strict_cupy.count_launches() as total:
        step()
    graph_ops = []                                   # the model's forward as the autograd graph sees it
    autograd.forward_hooks.append(lambda op, inputs, out: graph_ops.append(type(op).__name__))
    try:
        logits()
    finally:
        autograd.forward_hooks.pop()
    return {"graph_ops_forward": len(graph_ops), "forward": len(fwd), "backward": len(bwd), "optimizer": len(upd), "step": len(total),
            "params": len(list(model.parameters()))}


def torch_counts(model_name: str, batch: int = 8) -> dict | None:
    import numpy as np
    import torch
    import minivit.models
    from minivit.bench import TwinUnavailable, build_torch_twin
    from torch.profiler import ProfilerActivity, profile
    try:
        tm, desc = build_torch_twin(model_name, {}, minivit.models.create_model(model_name), np.float32)
    except TwinUnavailable as e:
        return {"none": str(e)}
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.AdamW(tm.parameters(), lr=1e-3, weight_decay=0.05, foreach=True)
    tm.train()

    def logits():
        out = tm(x)
        out = out.logits if hasattr(out, "logits") else out
        return sum(out) / len(out) if isinstance(out, tuple) else out

    def step():
        loss = torch.nn.functional.cross_entropy(logits(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as p:
        step()
    n, foreach = 0, 0
    for e in p.events():
        if not e.name.startswith("aten::") or e.name in NO_KERNEL:
            continue
        if e.name.startswith("aten::_foreach_"):
            foreach += 1
            n += 1
            continue
        parent, inside_foreach = e.cpu_parent, False
        while parent is not None:
            if parent.name.startswith("aten::_foreach_"):
                inside_foreach = True
                break
            parent = parent.cpu_parent
        if inside_foreach or any(c.name.startswith("aten::") for c in e.cpu_children):
            continue
        n += 1
    return {"step": n, "foreach_ops": foreach, "twin": desc, "params": len(list(tm.parameters()))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--json", type=Path, default=None, help="write the counts here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(minivit_counts(args.child)))
        return
    rows = {}
    for m in args.models.split(","):
        env = {**os.environ, "MINIVIT_STRICT_CUPY": "1"}
        out = subprocess.run([sys.executable, __file__, "--child", m], env=env, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{m}: {out.stderr[-2000:]}")
        ours = json.loads(out.stdout.strip().splitlines()[-1])
        theirs = torch_counts(m)
        rows[m] = {"minivit": ours, "torch": theirs}
        t = theirs.get("step") if theirs else None
        print(f"{m:15s} graph ops forward {ours['graph_ops_forward']:4d}   minivit {ours['step']:5d} (fwd {ours['forward']}, bwd {ours['backward']}, "
              f"AdamW {ours['optimizer']} for {ours['params']} params)   PyTorch {t if t is not None else '—'}"
              + (f"   ratio {ours['step'] / t:.1f}" if t else ""), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"batch": 8, "method": __doc__.split("\n\n", 3)[3], "models": rows},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
