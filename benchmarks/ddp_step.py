"""Data parallelism on the CPU, measured, and the same step on 8 GPUs, on paper (issue #23).

    python benchmarks/ddp_step.py                       # measure, print, save benchmarks/ddp_cpu.json
    python benchmarks/ddp_step.py --paper-only          # only the 8-GPU arithmetic (no timing)

Measured: the trainer's training step (``vit_tiny``, a global batch of 64, float32, AdamW) as
1 process with 1 thread, 1 process with 2 threads, and ``mpiexec -n 2`` ranks of 1 thread each
(32 images each, then ``minivit.distributed.all_reduce_gradients``: the gradients copied into
flat buckets, one MPI all-reduce per bucket, divided by 2, copied back). Each configuration runs
in its own processes; medians over the timed steps. Per step, rank 0's clock around the
all-reduce reads the communication *and* any wait for the other rank (whichever finished its
backward first waits); ``allreduce_alone`` times the same all-reduce after a barrier, the cost
of the communication itself. Needs a quiet machine: the numbers are only meaningful alone.

On paper: the bytes one all-reduce moves per step, from the model's parameter count, and the
time a ring all-reduce takes over N = 8 GPUs, where each GPU sends (and receives)
2(N − 1)/N · bytes: N − 1 steps of reduce-scatter and N − 1 of all-gather, each moving
bytes/N. At bandwidth B (per direction, per GPU) that is 2(N − 1)/N · bytes / B, plus a latency
per step that this leaves out (a few microseconds each on NVLink).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL, GLOBAL_BATCH, WARMUP, STEPS = "vit_tiny", 64, 2, 8

# Assumed bandwidths, bytes per second per direction per GPU (vendor figures):
BANDWIDTHS = {
    "NVLink 4 (H100/H200 SXM, NVSwitch: 900 GB/s bidirectional)": 450e9,
    "InfiniBand NDR 400 Gb/s (one NIC per GPU)": 50e9,
    "PCIe 5.0 x16 (no NVLink)": 64e9,
}


def worker(model_name: str, global_batch: int, warmup: int, steps: int) -> None:
    """One rank (or the single process): time training steps; rank 0 prints a JSON line."""
    import numpy as np
    import minivit as mv
    import minivit.functional as F
    from minivit import backend, distributed as dist, optim
    from minivit.train import build_model
    world = dist.init() if dist.launched_by_mpi() else 1
    rank = dist.rank()
    backend.manual_seed(0)
    model = build_model(model_name, 10)
    model.train()
    dist.broadcast_parameters(model)
    opt = optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((global_batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, global_batch)
    xs, ys = dist.shard(x), dist.shard(y)
    step_s, reduce_s = [], []
    for s in range(warmup + steps):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(mv.tensor(xs)), mv.tensor(ys))
        opt.zero_grad()
        loss.backward()
        t1 = time.perf_counter()
        calls = dist.all_reduce_gradients(model.parameters())
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if s >= warmup:
            step_s.append(t3 - t0)
            reduce_s.append(t2 - t1)
    alone = []
    if world > 1:                                  # the communication itself: both ranks ready
        for _ in range(steps):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce_gradients(model.parameters())
            alone.append(time.perf_counter() - t0)
    grad_bytes = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    if rank == 0:
        print(json.dumps({
            "ranks": world, "threads_per_rank": backend.get_num_threads(),
            "step_ms_median": 1e3 * statistics.median(step_s), "step_ms_all": [round(1e3 * t, 1) for t in step_s],
            "allreduce_ms_median": 1e3 * statistics.median(reduce_s) if world > 1 else 0.0,
            "allreduce_share": statistics.median(r / t for r, t in zip(reduce_s, step_s)) if world > 1 else 0.0,
            "allreduce_alone_ms_median": 1e3 * statistics.median(alone) if alone else None,
            "allreduce_calls_per_step": calls, "gradient_bytes": grad_bytes,
            "images_per_s": global_batch / statistics.median(step_s)}), flush=True)


def _run(ranks: int, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MINIVIT_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--worker"]
    if ranks > 1:
        cmd = [shutil.which("mpiexec") or "mpiexec", "-n", str(ranks)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def paper(num_params: int, gpus: int = 8, bytes_per_value: int = 4) -> dict:
    """Ring all-reduce of the float32 gradients over ``gpus`` GPUs, at the assumed bandwidths."""
    grad_bytes = num_params * bytes_per_value
    sent = 2 * (gpus - 1) / gpus * grad_bytes
    return {"num_params": num_params, "gpus": gpus, "gradient_bytes": grad_bytes,
            "bytes_sent_per_gpu_per_step": sent,
            "ring_allreduce_us": {name: 1e6 * sent / bw for name, bw in BANDWIDTHS.items()},
            "bandwidths_bytes_per_s": BANDWIDTHS}


def _machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": list(os.getloadavg())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--paper-only", action="store_true", help="only the 8-GPU arithmetic, no timing")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "ddp_cpu.json"), help="where to save the results")
    args = ap.parse_args(argv)
    if args.worker:
        return worker(MODEL, GLOBAL_BATCH, WARMUP, STEPS)
    sys.path.insert(0, str(ROOT))
    import minivit.models
    num_params = minivit.models.create_model(MODEL, num_classes=10).num_parameters()
    result = {"model": MODEL, "global_batch": GLOBAL_BATCH, "dtype": "float32", "timed_steps": STEPS,
              "machine": _machine(), "on_paper_8_gpus": paper(num_params)}
    if not args.paper_only:
        if shutil.which("mpiexec") is None:
            raise SystemExit('error: mpiexec not found: pip install -e ".[mpi]" (mpi4py and the mpich wheel)')
        result["measured"] = {f"{r}x{t}": _run(r, t) for r, t in ((1, 1), (1, 2), (2, 1))}
        result["machine"]["load_average_at_end"] = list(os.getloadavg())
    p = result["on_paper_8_gpus"]
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores; load average {m['load_average_at_start'][0]:.1f} at the start"
          + (f", {m['load_average_at_end'][0]:.1f} at the end" if "load_average_at_end" in m else ""))
    busy = max(m["load_average_at_start"][0], m.get("load_average_at_end", [0])[0]) > 0.5
    if "measured" in result and busy:
        print("warning: other processes were running (load average above 0.5): these timings are not final; "
              "measure again on a quiet machine")
    result["quiet_machine"] = not busy
    print(f"{MODEL}: {num_params:,} parameters, {p['gradient_bytes'] / 1e6:.1f} MB of float32 gradients per step")
    for key, m in result.get("measured", {}).items():
        ranks, threads = key.split("x")
        comm = (f", all-reduce {m['allreduce_ms_median']:.1f} ms ({m['allreduce_share']:.1%} of the step; "
                f"alone after a barrier {m['allreduce_alone_ms_median']:.1f} ms, {m['allreduce_calls_per_step']} "
                f"call{'s' if m['allreduce_calls_per_step'] > 1 else ''})" if int(ranks) > 1 else "")
        print(f"  {ranks} rank{'s' if int(ranks) > 1 else ''} x {threads} thread{'s' if int(threads) > 1 else ''}: "
              f"{m['step_ms_median']:.0f} ms a step of {GLOBAL_BATCH} ({m['images_per_s']:.0f} img/s){comm}")
    print(f"on paper, {p['gpus']} GPUs, ring all-reduce: each GPU sends and receives 2(N-1)/N x "
          f"{p['gradient_bytes'] / 1e6:.1f} MB = {p['bytes_sent_per_gpu_per_step'] / 1e6:.1f} MB a step")
    for name, us in p["ring_allreduce_us"].items():
        print(f"  {name}: {us:,.0f} us")
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.json}")


if __name__ == "__main__":
    main()
