"""``python -m minivit.bench``: how fast is a training step, and how does it compare with PyTorch?

    python -m minivit.bench --model vit_tiny --batch-size 64 --compare torch --profile \\
        --threads 2 --json benchmarks/cpu_vit_tiny_b64_fp32.json --label after

Times one full training step (forward, cross-entropy, backward, AdamW update
with lr 1e-3 and weight decay 0.05) and inference (eval mode, no graph) of a
registry model on a random batch: warm-up steps, then the median of ``--steps``
timed ones, the GPU synchronised before every reading of the clock.

``--compare torch`` builds the same architecture in PyTorch (timm's model for
vit/deit/swin/pvt_v2/pit, Hugging Face transformers' CvT for cvt; there is none
for PVT v1), copies *its* weights into the minivit model (same names, see
:mod:`minivit.convert`), checks that both give the same eval-mode logits on the
benchmark batch, and times it in the same process on the same batch, dtype and
thread count (on GPU with TF32 off unless ``--precision tf32``). The two are timed
in rounds of alternating blocks of steps, so a change in the machine's load hits both alike. Ratios are
minivit / PyTorch: above 1, minivit is slower.

Threads: ``--threads N`` sets NumPy's BLAS (OpenBLAS, at run time), minivit's own
CPU threads (``backend.set_num_threads``: GELU, depthwise convs, layer norm, bias adds
and AdamW split their work over them; NumPy's other ops run on one thread) and
PyTorch to N. The share of CPU time other processes took during the timing is
measured and recorded: rerun when it is not near 0.

Memory: on CPU the increase of the process's peak resident set (VmHWM) over its
resident set before one step, freed heap returned to the OS first; on GPU the
growth of the memory pool over one step (CuPy's default pool; PyTorch's caching
allocator).

Precision, the same on both sides: fp32, fp64; tf32 (GPU only: float32 arrays, TF32
tensor-core matrix products; CuPy's compute type, PyTorch's ``allow_tf32``); fp16 (mixed
precision: float32 master weights, the forward and loss under autocast, PyTorch's
``torch.autocast(device, torch.float16)`` and ``torch.amp.GradScaler`` against
``minivit.amp.autocast`` and ``minivit.amp.GradScaler``; on the CPU both run but slowly,
NumPy having no float16 BLAS). The twins' logits are compared in float32 first.

``--profile`` adds a table of where minivit's step time goes, op type by op type
(:mod:`minivit.profiler`), and PyTorch's own profile of its step.

``--json PATH`` appends the record (settings, library versions, thread counts,
every step time, medians, ratios, memory, profile) to the list under
``"records"`` in PATH, replacing an earlier record with the same ``--label``.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import importlib
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import minivit
import minivit.autograd
import minivit.functional as F
import minivit.models
from minivit.models.registry import parse_model_kwargs
from minivit import amp, backend, blas, cli
from minivit.autograd import Tensor, no_grad
from minivit.functional import fused_cpu
from minivit.optim import AdamW

# --precision → the dtype of the parameters, inputs and optimizer state (fp16 keeps float32
# master weights and computes the matrix products in float16 under autocast).
PRECISIONS = {"fp32": np.float32, "fp64": np.float64, "tf32": np.float32, "fp16": np.float32}

# The PyTorch twins of the CIFAR-10 registry models: the reference class and the
# keyword arguments that build the same architecture (our registry's defaults,
# spelled in the reference's names; --model-kwargs override both sides alike).
# Building the twin and checking its logits against ours on the benchmark batch
# catches any drift between these and the registry.
_TIMM_TWINS = {
    "vit_tiny": ("timm.models.vision_transformer", "VisionTransformer",
                 dict(img_size=32, patch_size=4, num_classes=10, embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0)),
    "deit_tiny": ("timm.models.deit", "VisionTransformerDistilled",
                  dict(img_size=32, patch_size=4, num_classes=10, embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0)),
    "swin_tiny": ("timm.models.swin_transformer", "SwinTransformer",
                  dict(img_size=32, patch_size=2, in_chans=3, num_classes=10, embed_dim=64, depths=(2, 6, 2),
                       num_heads=(2, 4, 8), window_size=4, mlp_ratio=4.0, drop_path_rate=0.1)),
    # timm's PVT v2 has a fixed 7×7 stride-4 stem; ours is built with timm's own
    # OverlapPatchEmbed at (patch_size, patch_stride) and put in its place.
    "pvt_v2_tiny": ("timm.models.pvt_v2", "PyramidVisionTransformerV2",
                    dict(depths=(2, 2, 2, 2), embed_dims=(32, 64, 160, 256), num_heads=(1, 2, 5, 8),
                         sr_ratios=(4, 2, 1, 1), mlp_ratios=(8, 8, 4, 4), patch_size=3, patch_stride=2,
                         num_classes=10, img_size=32)),
    "pit_tiny": ("timm.models.pit", "PoolingVisionTransformer",
                 dict(img_size=32, patch_size=4, stride=2, base_dims=(32, 32, 32), depth=(2, 6, 4), heads=(2, 4, 8),
                      mlp_ratio=4, num_classes=10)),
    "mixer_tiny": ("timm.models.mlp_mixer", "MlpMixer",
                   dict(img_size=32, patch_size=4, num_blocks=8, embed_dim=192, num_classes=10)),
    "convmixer_tiny": ("timm.models.convmixer", "ConvMixer",
                       dict(dim=256, depth=16, kernel_size=5, patch_size=4, num_classes=10)),
}
# cvt_tiny in Hugging Face's CvtConfig names (our name → theirs where kwargs are given).
_CVT_HF = dict(embed_dim=[64, 128, 256], depth=[1, 2, 4], num_heads=[1, 2, 4], patch_sizes=[3, 3, 3],
               patch_stride=[2, 2, 2], patch_padding=[1, 1, 1], stride_kv=[2, 2, 1], cls_token=[False, False, True],
               drop_path_rate=[0.0, 0.0, 0.1], num_labels=10)
_CVT_KW = {"embed_dims": "embed_dim", "depths": "depth", "num_heads": "num_heads", "patch_sizes": "patch_sizes",
           "patch_strides": "patch_stride", "patch_paddings": "patch_padding", "stride_kv": "stride_kv",
           "num_classes": "num_labels"}
_NO_TWIN = {"pvt_tiny": "timm has no PVT v1 (and transformers' PVT is a different layout)"}


class TwinUnavailable(RuntimeError):
    """No PyTorch reference for this model (or torch / timm are not installed)."""


# =========================================================================== threads
# NumPy's OpenBLAS: found and driven by minivit.blas (minivit's import uses it too).
_openblas, _blas_config = blas.openblas, blas.blas_config
blas_threads, blas_thread_timeout = blas.blas_threads, blas.blas_thread_timeout


def _proc_status(key: str) -> int | None:
    """A kB field of /proc/self/status (VmRSS, VmHWM) in bytes, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _release_freed_memory():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)      # give freed heap pages back to the OS
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn, device: str, framework: str) -> dict:
    """Extra memory at the peak of ``fn()`` over what was held before it.

    CPU: the process's peak resident set (VmHWM, reset just before) minus its
    resident set before, freed heap pages returned to the OS first. It counts
    what the step touches: activations, gradients, temporaries, optimizer state
    made on a first step. GPU: bytes reserved by the framework's memory pool at
    the peak, minus before (CuPy: the default pool, emptied of cached blocks
    first; PyTorch: the caching allocator's ``max_memory_reserved``)."""
    if device == "cuda":
        if framework == "torch":
            import torch
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_reserved()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            return {"bytes": int(torch.cuda.max_memory_reserved() - base),
                    "method": "torch.cuda.max_memory_reserved() increase over the step"}
        pool = backend.xp_for("cuda").get_default_memory_pool()
        backend.synchronize(device)
        pool.free_all_blocks()
        base = pool.total_bytes()
        fn()
        backend.synchronize(device)
        # the pool keeps freed blocks, so its size after the step is its peak during it
        return {"bytes": int(pool.total_bytes() - base), "method": "CuPy memory pool growth over the step"}
    _release_freed_memory()
    base = _proc_status("VmRSS")
    if base is not None and _reset_peak_rss():
        fn()
        return {"bytes": int(_proc_status("VmHWM") - base),
                "method": "peak RSS (VmHWM, reset before) minus RSS before the step"}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"bytes": int(after - before), "method": "ru_maxrss increase (a lower bound: the peak is process-wide)"}


# =========================================================================== other processes' load
def _cpu_snapshot():
    """(seconds all CPUs were busy since boot, this process's CPU seconds, wall clock), or None."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)            # idle + iowait
    own = os.times()
    return (sum(ticks) - idle) / hz, own.user + own.system, time.perf_counter()


def background_cpus(before, after) -> float | None:
    """CPUs kept busy by *other* processes between two snapshots (0: the machine was ours).
    The load average cannot tell that apart from this benchmark's own threads."""
    if before is None or after is None or after[2] <= before[2]:
        return None
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / (after[2] - before[2]))


# =========================================================================== the two sides
def _cross_entropy(out, y, ce):
    """The loss on the model's output: DeiT in distillation mode returns two heads'
    logits; both are trained on the labels (the average of the two losses)."""
    if isinstance(out, tuple):
        return (ce(out[0], y) + ce(out[1], y)) * 0.5
    return ce(out, y)


class MinivitRunner:
    """The minivit side: one training step, inference, and the step in phases for the profiler.
    ``fp16``: autocast around the forward and the loss, and a GradScaler (PyTorch's recipe);
    otherwise the scaler is a pass-through and the step is the plain one."""

    name = "minivit"

    def __init__(self, model, x: np.ndarray, y: np.ndarray, device: str, lr=1e-3, weight_decay=0.05,
                 fp16: bool = False):
        self.model, self.device, self.fp16 = model, device, fp16
        self.x = Tensor(backend.to_device(x, device))
        self.y = Tensor(backend.to_device(y, device))
        self.opt = AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.scaler = amp.GradScaler(enabled=fp16)

    def sync(self):
        backend.synchronize(self.device)

    def forward_loss(self):
        with amp.autocast(enabled=self.fp16):
            return _cross_entropy(self.model(self.x), self.y, F.cross_entropy)

    def train_step(self):
        loss = self.forward_loss()
        self.opt.zero_grad()
        with amp.overflow_expected(self.fp16):
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
        self.scaler.update()
        self.sync()

    def infer(self):
        with no_grad(), amp.autocast(enabled=self.fp16):
            out = self.model(self.x)
        self.sync()
        return out

    def logits(self) -> np.ndarray:
        """Eval-mode logits in the parameters' dtype (no autocast), for the twin check."""
        self.model.eval()
        with no_grad():
            return backend.to_numpy(self.model(self.x).data)

    def train(self, mode=True):
        self.model.train(mode)

    def profile_step(self, prof):
        with prof.phase("forward"):
            loss = self.forward_loss()
        with prof.phase("optimizer"):
            self.opt.zero_grad()
        with prof.phase("backward"), amp.overflow_expected(self.fp16):
            self.scaler.scale(loss).backward()
        with prof.phase("optimizer"), amp.overflow_expected(self.fp16):
            self.scaler.step(self.opt)
            self.scaler.update()


class TorchRunner:
    """The PyTorch side, under the same settings (torch's own AdamW with its default implementation;
    ``fp16``: ``torch.autocast`` with float16 and ``torch.amp.GradScaler``, the documented AMP recipe)."""

    name = "torch"

    def __init__(self, model, x: np.ndarray, y: np.ndarray, device: str, lr=1e-3, weight_decay=0.05,
                 fp16: bool = False):
        import torch
        self.torch = torch
        self.device, self.fp16 = device, fp16
        self.model = model.to(device)
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        self.y = torch.from_numpy(y).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        self.scaler = torch.amp.GradScaler(device, enabled=fp16)

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def _autocast(self):
        return self.torch.autocast(self.device, dtype=self.torch.float16, enabled=self.fp16)

    def train_step(self):
        with self._autocast():
            out = self.model(self.x)
            out = out.logits if hasattr(out, "logits") else out      # Hugging Face's output object
            loss = _cross_entropy(out, self.y, self.torch.nn.functional.cross_entropy)
        self.opt.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sync()

    def infer(self):
        with self.torch.no_grad(), self._autocast():
            out = self.model(self.x)
        self.sync()
        return out

    def logits(self) -> np.ndarray:
        """Eval-mode logits in the parameters' dtype (no autocast), for the twin check."""
        self.model.eval()
        with self.torch.no_grad():
            out = self.model(self.x)
        out = out.logits if hasattr(out, "logits") else out
        return out.detach().cpu().numpy()

    def train(self, mode=True):
        self.model.train(mode)


def _tuples(v):
    return tuple(v) if isinstance(v, list) else v


def timm_vit_nano(stem_channels=(32, 64, 128), stem_stride=(1, 2, 2), **kwargs):
    """timm's twin of ``vit_nano`` (its docstring): a VisionTransformer whose embedding is timm's
    ConvStem in a HybridEmbed, built with the same keywords as ``create_model("vit_nano", ...)``."""
    from functools import partial

    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_hybrid import ConvStem
    cfg = dict(img_size=32, patch_size=1, num_classes=10, embed_dim=128, depth=2, num_heads=2, mlp_ratio=2.0,
               class_token=False, global_pool="avg")
    cfg.update(kwargs)
    n = len(stem_channels)
    stem = ConvStem(in_chans=cfg.get("in_chans", 3), depth=n + 1, channels=(*stem_channels, cfg["embed_dim"]),
                    kernel_size=(3,) * n + (1,), stride=(*stem_stride, 1))
    return VisionTransformer(**cfg, embed_layer=partial(HybridEmbed, backbone=stem, proj=False))


def timm_xcit_tiny(**kwargs):
    """timm's twin of ``xcit_tiny``: timm's Xcit with its patch-8 stem cut to the first two
    stride-2 convs (3 → D/2 → D), the stem minivit builds for P = 4 (timm's takes 8 or 16 only)."""
    import torch
    from timm.models.xcit import Xcit, conv3x3
    cfg = dict(img_size=32, patch_size=4, num_classes=10, embed_dim=128, depth=12, num_heads=4, eta=1.0,
               tokens_norm=False)
    cfg.update(kwargs)
    if cfg.pop("patch_size") != 4:
        raise TwinUnavailable("the xcit_tiny twin is set up for patch_size=4 only")
    tm = Xcit(patch_size=8, **cfg)
    d, c = cfg["embed_dim"], cfg.get("in_chans", 3)
    tm.patch_embed.proj = torch.nn.Sequential(conv3x3(c, d // 2, 2), torch.nn.GELU(), conv3x3(d // 2, d, 2))
    tm.patch_embed.patch_size = 4
    return tm


def timm_mvitv2_tiny(**kwargs):
    """timm's twin of ``mvitv2_tiny``: timm's MultiScaleVit with the configuration of its docstring."""
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg
    if kwargs:
        raise TwinUnavailable(f"the mvitv2_tiny twin takes no --model-kwargs here (got {', '.join(kwargs)})")
    cfg = MultiScaleVitCfg(depths=(1, 2, 4), embed_dim=(64, 128, 256), num_heads=(1, 2, 4),
                           stride_q=((1, 1), (2, 2), (2, 2)), stride_kv_adaptive=(2, 2),
                           patch_kernel=(3, 3), patch_stride=(2, 2), patch_padding=(1, 1))
    return MultiScaleVit(cfg=cfg, img_size=(32, 32), num_classes=10, drop_path_rate=0.1)


_TWIN_BUILDERS = {"vit_nano": timm_vit_nano, "xcit_tiny": timm_xcit_tiny, "mvitv2_tiny": timm_mvitv2_tiny}


def build_torch_twin(name: str, model_kwargs: dict, model, dtype):
    """The PyTorch reference of registry model ``name`` and the minivit model ``model``
    (built with the same ``model_kwargs``), with the reference's weights copied into ours.

    Returns ``(torch_model, description)``; raises TwinUnavailable when there is none."""
    from minivit.convert import torch_state_dict
    if name in _NO_TWIN:
        raise TwinUnavailable(f"no PyTorch reference for {name}: {_NO_TWIN[name]}")
    try:
        import torch
    except ImportError as e:
        raise TwinUnavailable(f"--compare torch needs PyTorch ({e})") from None
    torch.manual_seed(0)
    if name == "cvt_tiny":
        try:
            from transformers import CvtConfig, CvtForImageClassification
        except ImportError as e:
            raise TwinUnavailable(f"the PyTorch CvT is Hugging Face transformers' ({e})") from None
        from minivit.convert.cvt import convert_state_dict
        cfg = dict(_CVT_HF)
        for k, v in model_kwargs.items():
            if k not in _CVT_KW:
                raise TwinUnavailable(f"cvt_tiny's {k} has no mapping to Hugging Face's CvtConfig here")
            cfg[_CVT_KW[k]] = list(v) if isinstance(v, (list, tuple)) else v
        tm = CvtForImageClassification(CvtConfig(**cfg))
        state = convert_state_dict(torch_state_dict(tm))
        desc = "transformers.CvtForImageClassification"
    elif name in _TWIN_BUILDERS:
        try:
            tm = _TWIN_BUILDERS[name](**model_kwargs)
        except ImportError as e:
            raise TwinUnavailable(f"--compare torch for {name} needs timm ({e})") from None
        state = torch_state_dict(tm)
        desc = {"vit_nano": "timm VisionTransformer + HybridEmbed(ConvStem)",
                "xcit_tiny": "timm Xcit, its stem cut to two convs (P = 4)",
                "mvitv2_tiny": "timm MultiScaleVit"}[name]
    elif name in _TIMM_TWINS:
        try:
            module = importlib.import_module(_TIMM_TWINS[name][0])
        except ImportError as e:
            raise TwinUnavailable(f"--compare torch for {name} needs timm ({e})") from None
        modname, clsname, defaults = _TIMM_TWINS[name]
        cfg = {k: _tuples(v) for k, v in {**defaults, **model_kwargs}.items()}
        stem = None
        if name == "pvt_v2_tiny":
            stem = (cfg.pop("patch_size"), cfg.pop("patch_stride"))
            cfg.pop("img_size", None)                      # timm's PVT v2 takes any image size
        tm = getattr(module, clsname)(**cfg)
        if stem is not None:
            tm.patch_embed = module.OverlapPatchEmbed(patch_size=stem[0], stride=stem[1],
                                                      in_chans=cfg.get("in_chans", 3),
                                                      embed_dim=cfg["embed_dims"][0])
        if hasattr(tm, "set_distilled_training") and hasattr(model, "distilled_training"):
            tm.set_distilled_training(bool(model.distilled_training))     # same outputs in training
        state = torch_state_dict(tm)
        desc = f"{modname}.{clsname}"
    else:
        raise TwinUnavailable(f"no PyTorch reference is set up for {name}; models with one: "
                              f"{', '.join(sorted([*_TIMM_TWINS, *_TWIN_BUILDERS, 'cvt_tiny']))}")
    model.load_state_dict(state)                           # strict: every name and shape must match
    model.to(dtype=dtype)
    tm = tm.to(torch.float64 if dtype == np.float64 else torch.float32)
    return tm, desc


# =========================================================================== timing
def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()                           # every runner's step ends by synchronising its device
    return time.perf_counter() - t0


def _time_rounds(runners, method: str, warmup: int, steps: int, rounds: int) -> dict:
    """Time ``steps`` calls of each runner's ``method``, in ``rounds`` blocks that take turns.

    In every round each runner makes ``warmup`` untimed calls, then its share of
    the timed ones. Blocks rather than single steps in turn: after a NumPy BLAS
    call OpenBLAS's threads spin for a while, as do PyTorch's OpenMP threads
    after a parallel region, and a step that starts while the other library's
    threads still spin is slowed by them (measured: up to 3x on 2 cores). The
    untimed calls at the start of each block absorb that, and several rounds
    spread a change in the machine's background load over both sides."""
    times = {r.name: [] for r in runners}
    per_round = [steps // rounds + (i < steps % rounds) for i in range(rounds)]
    for n in per_round:
        for r in runners:
            fn = getattr(r, method)
            for _ in range(warmup):
                fn()
            times[r.name].extend(_timed(fn) for _ in range(n))
    return times


def _round_ratios(times: dict, steps: int, rounds: int) -> list:
    """minivit/PyTorch of each round's median step (the rounds as _time_rounds split them)."""
    per_round = [steps // rounds + (i < steps % rounds) for i in range(rounds)]
    out, start = [], 0
    for n in per_round:
        if n:
            out.append(statistics.median(times["minivit"][start:start + n])
                       / statistics.median(times["torch"][start:start + n]))
        start += n
    return out


def _summary(ts: list) -> dict:
    return {"median": statistics.median(ts), "min": min(ts), "mean": statistics.fmean(ts),
            "stdev": statistics.stdev(ts) if len(ts) > 1 else 0.0, "all": ts}


def _torch_profile(runner, steps: int, top: int = 15):
    """PyTorch's own per-op profile of its training step (CPU time by aten op)."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runner.device == "cuda" else [])
    with profile(activities=acts) as p:
        for _ in range(steps):
            runner.train_step()
    key = "self_device_time_total" if runner.device == "cuda" else "self_cpu_time_total"
    events = sorted(p.key_averages(), key=lambda e: -getattr(e, key))
    rows = []
    for e in events[:top]:
        rows.append({"name": e.key, "calls": e.count / steps, "self_ms": getattr(e, key) / 1e3 / steps})
    return rows


# =========================================================================== the command
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option's default."""


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m minivit.bench", description=__doc__.replace("``", ""),
                           formatter_class=_HelpFormatter)
    p.add_argument("--model", default="vit_tiny", help="a registry model (minivit.models.list_models())")
    p.add_argument("--model-kwargs", type=parse_model_kwargs, default={},
                   help="constructor overrides for both sides, KEY=VALUE,... with JSON values, e.g. depth=1")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (throughput = batch / median time)")
    p.add_argument("--device", choices=backend.DEVICES, default="cpu", help="cpu: NumPy; cuda: CuPy (PyTorch on cuda too)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                   help="the same on both sides: fp32 or fp64 (TF32 off on the GPU); tf32 (GPU only: TF32 "
                        "tensor-core matmuls in CuPy and PyTorch); fp16 (mixed precision: autocast + GradScaler "
                        "on both sides, float32 master weights). The record's dtype is the parameters' dtype")
    p.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps on each side at the start of every round")
    p.add_argument("--rounds", type=int, default=2,
                   help="the timed steps are split into this many rounds; in each, minivit's block then PyTorch's")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for NumPy's BLAS and for PyTorch (set at run time on both). "
                        "Default: NumPy's BLAS count as it is (OPENBLAS_NUM_THREADS or all cores), torch set to match")
    p.add_argument("--compare", choices=["none", "torch"], default="none",
                   help="also time the PyTorch twin (timm's model, or transformers' for CvT) with the same weights")
    p.add_argument("--torch-device", choices=backend.DEVICES, default=None,
                   help="where the PyTorch twin runs (default: --device). Only for checking the benchmark's "
                        "code on a machine without a GPU (the strict CuPy stand-in with a CPU build of torch, "
                        "as .ci/gpu first-contact --dry-run does): its ratios compare different devices")
    p.add_argument("--profile", action="store_true", help="per-op time table of minivit's step (and PyTorch's)")
    p.add_argument("--profile-steps", type=int, default=3, help="steps averaged in the profile")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--seed", type=int, default=0, help="seeds the batch and both models' construction")
    p.add_argument("--json", type=Path, default=None,
                   help="append the record to PATH's 'records' list (created if missing)")
    p.add_argument("--label", default=None, help="name of the record in the JSON; replaces one with the same label")
    return p


def _image_size(model) -> tuple:
    for owner in (model, getattr(model, "patch_embed", None)):
        size = getattr(owner, "img_size", None)
        if size is not None:
            return tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
    return (32, 32)


def _versions() -> dict:
    v = {"minivit": minivit.__version__, "numpy": np.__version__, "python": platform.python_version(),
         "platform": platform.platform(), "blas": _blas_config()}
    for mod in ("scipy", "torch", "timm", "transformers", "cupy"):
        if mod == "cupy" and not backend.cupy_available():
            continue
        m = sys.modules.get(mod)
        if m is not None:
            v[mod] = getattr(m, "__version__", "?")
    return v


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _read_records(path: Path) -> dict:
    """The JSON file's content ({"records": [...]}, empty if the file does not exist yet)."""
    if not path.exists():
        return {"records": []}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise cli.UsageError(f"--json {path} exists but is not JSON; move it away or pick another --json path") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise cli.UsageError(f"--json {path} is not a minivit.bench file (no 'records' list); "
                             "pick another --json path")
    return data


def _write_json(path: Path, record: dict):
    data = _read_records(path)
    label = record.get("label")
    data["records"] = [r for r in data["records"] if label is None or r.get("label") != label] + [record]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def _ms(s):
    return f"{1e3 * s:9.1f} ms"


def run(args, log=print) -> dict:
    """Run the benchmark described by parsed ``args``; returns the record (also written with --json)."""
    device = cli.check_device(args.device)
    dtype = PRECISIONS[args.precision]
    fp16 = args.precision == "fp16"
    if args.precision == "tf32" and device != "cuda":
        raise cli.UsageError("--precision tf32 needs --device cuda: TF32 is a tensor-core mode of NVIDIA GPUs "
                         "(Ampere and later); on the CPU it would be plain fp32, so use --precision fp32")
    if fp16 and device == "cpu":
        log("note: --precision fp16 on the CPU is slow on both sides (no float16 BLAS); it checks the "
            "mixed-precision step, the GPU is where it pays")
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None

    # ---- threads: the same count on both sides
    threads = args.threads if args.threads is not None else blas_threads()
    blas = blas_threads(threads) if threads is not None else None
    if threads is not None:
        backend.set_num_threads(int(threads))
    timeout = blas_thread_timeout()
    if timeout is not None and (timeout == 0 or timeout > 4) and device == "cpu":
        log(f"note: OpenBLAS's idle threads spin for 2^{timeout or 28} clock ticks after each product "
            "(OPENBLAS_THREAD_TIMEOUT was set, or NumPy was imported before minivit), taking the cores "
            "minivit's own threads need; minivit sets it to 4 when it is imported first")
    torch = None
    if args.compare == "torch":
        try:
            import torch
        except ImportError:
            log("--compare torch: PyTorch is not installed; timing minivit only")
    if torch is not None and threads is not None:
        torch.set_num_threads(int(threads))

    # ---- the models and the batch
    backend.manual_seed(args.seed)
    kwargs = dict(args.model_kwargs)
    try:
        model = minivit.models.create_model(args.model, **kwargs).to(dtype=dtype)
    except TypeError as e:                 # a keyword the model's constructor does not take
        raise cli.UsageError(f"--model-kwargs {args.model}: {e}") from None
    H, W = _image_size(model)
    num_classes = getattr(model, "num_classes", 10) or 10
    in_chans = getattr(model, "in_chans", 3) or 3
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.batch_size, in_chans, H, W)).astype(dtype)
    y = rng.integers(0, num_classes, size=args.batch_size).astype(np.int64)

    twin_note, torch_desc, runners, logit_check = None, None, [], None
    if torch is not None:
        try:
            tm, torch_desc = build_torch_twin(args.model, kwargs, model, dtype)
        except TwinUnavailable as e:
            twin_note = str(e)
            log(f"--compare torch: {twin_note}")
            tm = None
    else:
        tm = None
    tf32 = False
    if device == "cuda":                 # TF32 off for the logit check; on for the timing only with tf32
        backend.set_tf32(False)
        if torch is not None:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    model.to(device=device)
    runners.append(MinivitRunner(model, x, y, device, fp16=fp16))
    if tm is not None:
        runners.append(TorchRunner(tm, x, y, args.torch_device or device, fp16=fp16))
        # Same weights, same function: the eval-mode logits on the benchmark batch must agree.
        ours, theirs = runners[0].logits(), runners[1].logits()
        diff = float(np.max(np.abs(ours - theirs)))
        scale = float(np.max(np.abs(theirs))) or 1.0
        logit_check = {"max_abs_diff": diff, "max_abs_logit": scale}
        tol = 1e-3 if dtype == np.float32 else 1e-9
        if not diff <= tol * max(scale, 1.0):
            raise RuntimeError(f"the PyTorch twin ({torch_desc}) does not compute what {args.model} does: eval logits "
                               f"differ by {diff:.3g} (logits up to {scale:.3g}); its configuration in "
                               f"minivit.bench has drifted from the registry's")
    if args.precision == "tf32":
        tf32 = backend.set_tf32(True)
        if not tf32:
            log("note: this GPU has no TF32 (compute capability below 8.0): tf32 runs as plain fp32")
        if torch is not None:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32

    n_params = sum(int(p.data.size) for p in model.parameters())
    log(f"{args.model}: {n_params / 1e6:.2f}M parameters, batch {args.batch_size} of {in_chans}x{H}x{W}, "
        f"{device} ({backend.device_name(device)}), {args.precision}, threads: BLAS {blas}, "
        f"minivit {backend.get_num_threads()}"
        + (f", torch {torch.get_num_threads()}" if torch is not None else "")
        + (f"; load average {load_before[0]:.2f}" if load_before else "")
        + (f"; compiled CPU kernels {fused_cpu.status().split(' (')[0]}" if device == "cpu" else ""))
    if torch_desc:
        log(f"PyTorch twin: {torch_desc}, same weights (eval logits agree to {logit_check['max_abs_diff']:.2g})")

    # ---- timing: training steps, then inference
    snap0 = _cpu_snapshot()
    for r in runners:
        r.train(True)
    train = _time_rounds(runners, "train_step", args.warmup, args.steps, args.rounds)
    for r in runners:
        r.train(False)
    infer = _time_rounds(runners, "infer", args.warmup, args.steps, args.rounds)
    background = background_cpus(snap0, _cpu_snapshot())

    # ---- per-op profile (after the timing: its wrappers must not slow the timed steps)
    profile = torch_profile = None
    if args.profile:
        from minivit.profiler import OpProfiler
        runners[0].train(True)
        runners[0].train_step()                          # back in training mode: one step to warm up
        with OpProfiler(device) as prof:
            for _ in range(args.profile_steps):
                runners[0].profile_step(prof)
        profile = {"steps": prof.steps, "step_s": prof.total, "rows": prof.rows()}
        log(f"\nminivit per-op profile ({args.model}, training step; unprofiled median "
            f"{1e3 * statistics.median(train['minivit']):.1f} ms):")
        log(prof.table())
        if len(runners) > 1:
            runners[1].train(True)
            runners[1].train_step()
            torch_profile = _torch_profile(runners[1], args.profile_steps)
            log("\nPyTorch's profile of its step (self time per op, ms per step):")
            for row in torch_profile:
                log(f"  {row['name']:<40} {row['calls']:>6.0f} {row['self_ms']:>9.2f}")

    # ---- memory, one side at a time (last: releasing freed memory to measure it disturbs timings)
    memory = {}
    if not args.no_memory:
        for r in runners:
            r.train(True)
            mt = peak_memory(r.train_step, r.device, r.name)
            r.train(False)
            mi = peak_memory(r.infer, r.device, r.name)
            memory[r.name] = {"train_step_bytes": mt["bytes"], "inference_bytes": mi["bytes"], "method": mt["method"]}

    # ---- the record
    results = {}
    for r in runners:
        tr, inf = _summary(train[r.name]), _summary(infer[r.name])
        results[r.name] = {"train_step_s": tr, "inference_s": inf,
                           "train_img_per_s": args.batch_size / tr["median"],
                           "inference_img_per_s": args.batch_size / inf["median"],
                           **({"memory": memory[r.name]} if r.name in memory else {})}
        if fp16:             # where dynamic loss scaling ended: each halving was a skipped step
            results[r.name]["final_loss_scale"] = float(r.scaler.get_scale())
    results["minivit"]["params"] = n_params
    ratios = None
    if "torch" in results:
        results["torch"]["model"] = torch_desc
        results["torch"]["optimizer"] = "torch.optim.AdamW (default implementation)"
        ratios = {"train_step": results["minivit"]["train_step_s"]["median"] / results["torch"]["train_step_s"]["median"],
                  "inference": results["minivit"]["inference_s"]["median"] / results["torch"]["inference_s"]["median"],
                  # Two readings less moved by a machine whose speed changes during the run: the
                  # fastest step of each side, and the median ratio of the rounds, each of which
                  # times both sides within seconds of each other.
                  "train_step_best": results["minivit"]["train_step_s"]["min"] / results["torch"]["train_step_s"]["min"],
                  "train_step_by_round": _round_ratios(train, args.steps, args.rounds)}

    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    record = {
        "label": args.label,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m minivit.bench " + " ".join(getattr(args, "argv", []) or []),
        "model": args.model, "model_kwargs": kwargs, "batch_size": args.batch_size,
        "image_size": [in_chans, H, W], "device": device, "device_name": backend.device_name(device),
        "cpu_model": _cpu_model(), "precision": args.precision, "dtype": np.dtype(dtype).name,
        "autocast_dtype": "float16" if fp16 else None, "tf32": tf32,
        "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "seed": args.seed,
        "threads": {"blas": blas, "torch": torch.get_num_threads() if torch is not None else None,
                    "minivit": backend.get_num_threads(), "openblas_thread_timeout": timeout,
                    "env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                            "MKL_NUM_THREADS") if os.environ.get(k)}},
        "load_average": {"before": load_before, "after": load_after},
        "background_cpus": background,
        "malloc": getattr(minivit.backend, "malloc_settings", None),
        "fused_cpu": fused_cpu.status() if device == "cpu" else None,
        "timing": ("median of the timed steps, taken in rounds of one block per side (warm-up steps first in "
                   "every block); GPU synchronised before each clock read"),
        "versions": _versions(),
        "results": results,
        "ratio_minivit_over_torch": ratios,
        "torch_unavailable": twin_note,
        "logit_check": logit_check,
        "profile": profile,
        "torch_profile": torch_profile,
    }

    # ---- the summary
    log("")
    head = f"{'':<24}{'minivit':>14}" + (f"{'PyTorch':>14}{'ratio':>9}" if ratios else "")
    log(head)
    m = results["minivit"]
    t = results.get("torch")
    log(f"{'train step (median)':<24}{_ms(m['train_step_s']['median']):>14}"
        + (f"{_ms(t['train_step_s']['median']):>14}{ratios['train_step']:>8.2f}x" if ratios else ""))
    if ratios:
        log(f"{'train step (fastest)':<24}{_ms(m['train_step_s']['min']):>14}{_ms(t['train_step_s']['min']):>14}"
            f"{ratios['train_step_best']:>8.2f}x")
        log(f"{'train step, each round':<24}{'':>28}" + " ".join(f"{q:.2f}x" for q in ratios["train_step_by_round"]))
    log(f"{'inference (median)':<24}{_ms(m['inference_s']['median']):>14}"
        + (f"{_ms(t['inference_s']['median']):>14}{ratios['inference']:>8.2f}x" if ratios else ""))
    log(f"{'training img/s':<24}{m['train_img_per_s']:>14.1f}" + (f"{t['train_img_per_s']:>14.1f}" if ratios else ""))
    log(f"{'inference img/s':<24}{m['inference_img_per_s']:>14.1f}"
        + (f"{t['inference_img_per_s']:>14.1f}" if ratios else ""))
    if memory:
        for key, label in (("train_step_bytes", "peak memory, train"), ("inference_bytes", "peak memory, infer")):
            log(f"{label:<24}{memory['minivit'][key] / 2**20:>11.1f} MB"
                + (f"{memory['torch'][key] / 2**20:>11.1f} MB" if "torch" in memory else ""))
        log(f"(memory: {memory['minivit']['method']})")
    if background is not None:
        log(f"other processes kept {background:.2f} CPUs busy while timing"
            + (" -- the numbers are disturbed; rerun on a quiet machine" if background > 0.25 else ""))
    if args.json is not None:
        _write_json(args.json, record)
        log(f"wrote {args.json}")
    if tf32:                             # TF32 is process-wide: turn it off again for whatever runs next
        backend.set_tf32(False)
        if torch is not None:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return record


def main(argv=None, log=print) -> dict:
    """The command line; a mistake in it (or a device that is not there) is one ``error:`` line, exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return cli.run_cli(_checked_run, args, log)


def _checked_run(args, log) -> dict:
    cli.check_positive(args, "steps", "batch_size", "profile_steps", "rounds", "threads")
    cli.check_positive(args, "warmup", minimum=0)
    try:                                     # a typo in --model: the registry's suggestions, before any work
        minivit.models.registry.model_entrypoint(args.model)
    except ValueError as e:
        raise cli.UsageError(f"--model {args.model}: {e}") from None
    if args.json is not None:
        _read_records(args.json)             # a --json that cannot take the record: say so now, not after the run
    return run(args, log=log)


if __name__ == "__main__":
    main()
