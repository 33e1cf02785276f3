"""minivit.bench and minivit.profiler: the CLI end to end on tiny configurations, the JSON
record, the PyTorch twins (same weights: equal logits), the per-op profile. No timing
assertions: only that the numbers are there, consistent, and add up."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minivit.convert
import minivit.models
from minivit import bench
from minivit.autograd import Function
from minivit.functional.linear import Linear
from minivit.profiler import OpProfiler

TINY = ["--model", "vit_tiny", "--model-kwargs", "depth=1,embed_dim=32,num_heads=2", "--batch-size", "2",
        "--steps", "2", "--warmup", "0", "--rounds", "1"]


def _quiet(*args):
    pass


def _run(argv):
    return bench.main(argv, log=_quiet)


def _timed(entry):
    assert entry["median"] > 0 and entry["min"] <= entry["median"] and len(entry["all"]) >= 1


def test_cli_runs_end_to_end_and_writes_a_well_formed_json(tmp_path):
    """`python -m minivit.bench` itself, in a fresh process."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "minivit.bench", *TINY, "--json", str(out), "--label", "tiny"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "train step (median)" in proc.stdout
    data = json.loads(out.read_text())
    (rec,) = data["records"]
    assert rec["label"] == "tiny" and rec["model"] == "vit_tiny"
    assert rec["model_kwargs"] == {"depth": 1, "embed_dim": 32, "num_heads": 2}
    assert rec["batch_size"] == 2 and rec["precision"] == "fp32" and rec["dtype"] == "float32"
    assert rec["device"] == "cpu" and rec["device_name"] and rec["versions"]["numpy"] == np.__version__
    assert set(rec["threads"]) >= {"blas", "torch", "minivit", "openblas_thread_timeout"}
    assert rec["threads"]["minivit"] >= 1
    if rec["threads"]["openblas_thread_timeout"] is not None:   # minivit, imported first, set it
        assert rec["threads"]["openblas_thread_timeout"] == 4
    m = rec["results"]["minivit"]
    _timed(m["train_step_s"])
    _timed(m["inference_s"])
    assert len(m["train_step_s"]["all"]) == 2
    assert m["params"] == minivit.models.create_model("vit_tiny", depth=1, embed_dim=32, num_heads=2).num_parameters()
    assert m["train_img_per_s"] == pytest.approx(2 / m["train_step_s"]["median"])
    assert m["memory"]["train_step_bytes"] >= 0 and m["memory"]["method"]
    assert rec["ratio_minivit_over_torch"] is None and rec["profile"] is None
    assert rec["background_cpus"] is None or rec["background_cpus"] >= 0
    assert "malloc" in rec and "load_average" in rec


def test_json_records_append_and_replace_by_label(tmp_path, capsys):
    out = tmp_path / "b.json"
    base = TINY + ["--steps", "1", "--no-memory", "--json", str(out)]
    _run(base + ["--label", "before"])
    _run(base + ["--label", "after"])
    _run(base + ["--label", "before"])          # replaces the first "before"
    labels = [r["label"] for r in json.loads(out.read_text())["records"]]
    assert labels == ["after", "before"]
    out.write_text("{}")
    with pytest.raises(SystemExit) as e:
        _run(base + ["--label", "x"])
    assert e.value.code == 2 and "not a minivit.bench file" in capsys.readouterr().err


def test_bad_arguments_are_refused(capsys):
    for argv, message in ((TINY + ["--precision", "bf16"], "invalid choice"),     # NumPy has no bfloat16
                          (TINY + ["--precision", "tf32", "--device", "cpu"], "tf32 needs --device cuda"),
                          (TINY + ["--steps", "0"], "--steps must be at least 1"),
                          (["--model", "vit_nope", "--steps", "1"], "unknown model")):
        with pytest.raises(SystemExit) as e:
            _run(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_model_kwargs_parse_json_values_and_lists():
    assert bench.parse_model_kwargs("depth=1,depths=[1, 2],mlp_ratio=2.5,qkv_bias=false,x=None,name=abc") == \
        {"depth": 1, "depths": [1, 2], "mlp_ratio": 2.5, "qkv_bias": False, "x": None, "name": "abc"}


def test_openblas_threads_sleep_at_once_unless_the_user_says_otherwise():
    """minivit sets OPENBLAS_THREAD_TIMEOUT before NumPy loads OpenBLAS; the user's own value wins."""
    code = "import minivit.bench as b; print(b.blas_thread_timeout())"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    mine = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    if mine.stdout.strip() == "None":
        pytest.skip("NumPy's BLAS is not an OpenBLAS this module can reach")
    assert mine.stdout.strip() == "4"
    theirs = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=dict(env, OPENBLAS_THREAD_TIMEOUT="12"))
    assert theirs.stdout.strip() == "12"


def test_numpy_imported_before_minivit_still_gets_the_short_timeout():
    """Importing NumPy first (so OpenBLAS has read its environment already) must not leave its idle
    threads spinning: the timeout reads back as 4 and, after a product, the process burns next to
    no CPU time while it sleeps (OpenBLAS's default spin burns about all of a 50 ms sleep)."""
    code = """if True:
        import time, warnings
        import numpy as np
        warnings.simplefilter("error")          # a fallback warning would fail the test
        import minivit
        from minivit import blas
        a = np.ones((600, 600), np.float32)
        burnt = []
        for _ in range(10):
            a @ a
            t0 = time.process_time(); time.sleep(0.05); burnt.append(time.process_time() - t0)
        print(blas.blas_thread_timeout(), blas.blas_threads(), sorted(burnt)[5])
    """
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_NUM_THREADS",
                                                            "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    timeout, threads, burnt = out.stdout.split()
    if timeout == "None":
        pytest.skip("NumPy's BLAS is not an OpenBLAS this module can reach")
    assert timeout == "4"
    if int(threads) > 1:                        # with one thread there is no idle thread to spin
        assert float(burnt) < 0.01, f"OpenBLAS's idle threads burnt {float(burnt) * 1e3:.0f} ms in a 50 ms sleep"


def test_blas_threads_can_be_read_and_set():
    n = bench.blas_threads()
    if n is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS this module can reach")
    try:
        assert bench.blas_threads(1) == 1
    finally:
        bench.blas_threads(n)


# --------------------------------------------------------------------------- the PyTorch twins
def _twin_or_skip(name):
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    if name == "cvt_tiny":
        pytest.importorskip("transformers")


@pytest.mark.parametrize("name", ["vit_nano", "vit_tiny", "deit_tiny", "swin_tiny", "pvt_v2_tiny", "pit_tiny", "cvt_tiny",
                                  "mixer_tiny", "convmixer_tiny", "xcit_tiny", "mvitv2_tiny"])
def test_torch_twin_has_our_weights_and_computes_our_logits(name):
    """The registry's configuration (not a small stand-in) built in PyTorch, its weights loaded
    into ours: the eval-mode logits agree, so the benchmark compares the same computation."""
    _twin_or_skip(name)
    import torch
    torch.manual_seed(0)
    model = minivit.models.create_model(name)
    tm, desc = bench.build_torch_twin(name, {}, model, np.float32)
    assert sum(p.numel() for p in tm.parameters()) == model.num_parameters()
    if name == "mixer_tiny":                 # its head starts at zero (all logits 0): give both the same random one
        with torch.no_grad():
            tm.head.weight.normal_(0, 0.1)
        model.load_state_dict(minivit.convert.torch_state_dict(tm))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ours = bench.MinivitRunner(model, x, np.zeros(2, dtype=np.int64), "cpu").logits()
    theirs = bench.TorchRunner(tm, x, np.zeros(2, dtype=np.int64), "cpu").logits()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5, err_msg=desc)


def test_torch_twin_follows_model_kwargs():
    _twin_or_skip("swin_tiny")
    model = minivit.models.create_model("swin_tiny", depths=[1, 1, 1], embed_dim=32)
    tm, _ = bench.build_torch_twin("swin_tiny", {"depths": [1, 1, 1], "embed_dim": 32}, model, np.float32)
    assert [len(s.blocks) for s in tm.layers] == [1, 1, 1]
    assert sum(p.numel() for p in tm.parameters()) == model.num_parameters()


def test_round_ratios_pair_each_rounds_steps():
    times = {"minivit": [1, 2, 3, 4, 5, 6, 7], "torch": [1, 1, 1, 2, 2, 2, 2]}
    assert bench._round_ratios(times, steps=7, rounds=3) == [2.0, 2.25, 3.25]   # rounds of 3, 2, 2 steps


def test_no_twin_for_pvt_v1():
    pytest.importorskip("torch")
    with pytest.raises(bench.TwinUnavailable, match="PVT v1"):
        bench.build_torch_twin("pvt_tiny", {}, minivit.models.create_model("pvt_tiny"), np.float32)


def test_compare_torch_reports_ratios_and_equal_logits(tmp_path):
    _twin_or_skip("vit_tiny")
    rec = _run(TINY + ["--compare", "torch", "--no-memory", "--json", str(tmp_path / "c.json")])
    ratio = rec["ratio_minivit_over_torch"]
    assert ratio["train_step"] > 0 and ratio["inference"] > 0
    t = rec["results"]["torch"]
    assert t["model"] == "timm.models.vision_transformer.VisionTransformer"
    assert ratio["train_step"] == pytest.approx(rec["results"]["minivit"]["train_step_s"]["median"]
                                                / t["train_step_s"]["median"])
    assert ratio["train_step_best"] == pytest.approx(rec["results"]["minivit"]["train_step_s"]["min"]
                                                     / t["train_step_s"]["min"])
    assert len(ratio["train_step_by_round"]) == rec["rounds"] and all(q > 0 for q in ratio["train_step_by_round"])
    assert rec["logit_check"]["max_abs_diff"] <= 1e-4 * max(1.0, rec["logit_check"]["max_abs_logit"])
    assert rec["threads"]["torch"] == rec["threads"]["blas"] or rec["threads"]["blas"] is None
    assert rec["versions"]["torch"] and rec["versions"]["timm"]


def test_fp16_mixed_precision_on_both_sides(tmp_path):
    """--precision fp16: autocast + GradScaler on both sides (float32 master weights), recorded as such;
    the twins' logits are still compared in float32. On the CPU, to check the step: it is slow there."""
    _twin_or_skip("vit_tiny")
    rec = _run(TINY + ["--precision", "fp16", "--compare", "torch", "--no-memory", "--profile", "--profile-steps", "1"])
    assert rec["precision"] == "fp16" and rec["dtype"] == "float32" and rec["autocast_dtype"] == "float16"
    assert rec["tf32"] is False
    assert set(rec["results"]) == {"minivit", "torch"}
    for side in rec["results"].values():
        _timed(side["train_step_s"])
        assert side["final_loss_scale"] > 0
    assert rec["logit_check"]["max_abs_diff"] <= 1e-4 * max(1.0, rec["logit_check"]["max_abs_logit"])
    linear = next(r for r in rec["profile"]["rows"] if r["name"] == "Linear")
    assert linear["dtypes"] == ["float16"]                       # minivit's GEMMs ran in float16
    fp32 = _run(TINY + ["--no-memory"])
    assert fp32["autocast_dtype"] is None and "final_loss_scale" not in fp32["results"]["minivit"]


def test_compare_torch_without_a_twin_still_times_minivit():
    pytest.importorskip("torch")
    rec = _run(["--model", "pvt_tiny", "--model-kwargs", "depths=[1,1,1,1]", "--batch-size", "2", "--steps", "1",
                "--warmup", "0", "--rounds", "1", "--no-memory", "--compare", "torch"])
    assert "PVT v1" in rec["torch_unavailable"] and rec["ratio_minivit_over_torch"] is None
    _timed(rec["results"]["minivit"]["train_step_s"])


# --------------------------------------------------------------------------- the profile
def test_profile_rows_add_up_to_the_profiled_step_and_cover_the_ops():
    rec = _run(TINY + ["--profile", "--profile-steps", "2", "--no-memory"])
    prof = rec["profile"]
    rows = prof["rows"]
    assert prof["steps"] == 2
    assert sum(r["total"] for r in rows) == pytest.approx(prof["step_s"], rel=1e-9)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0, rel=1e-9)
    names = {r["name"] for r in rows}
    assert {"Linear", "LayerNorm", "GELU", "QKVAttention", "CrossEntropy"} <= names   # attention: one op
    ops = [r for r in rows if r["calls"] is not None]
    assert all(r["forward"] >= 0 and r["backward"] >= 0 for r in ops)
    linear = next(r for r in ops if r["name"] == "Linear")
    assert linear["calls"] == 5 and linear["dtypes"] == ["float32"] and linear["upcasts"] == 0   # qkv, proj, fc1, fc2, head
    # The op rows are measured inside the phases: together they cannot exceed the step.
    assert sum(r["total"] for r in ops) <= prof["step_s"] * (1 + 1e-9)


def test_profiler_restores_the_unwrapped_methods_and_flags_upcasts():
    from minivit.autograd import Tensor
    originals = {(cls, k): cls.__dict__[k] for cls in _all_functions() for k in ("forward", "backward")
                 if k in cls.__dict__}

    class Upcast(Function):                  # float32 in, float64 out: what the profile flags
        def forward(self, x):
            return x.astype(np.float64)

        def backward(self, gy):
            return gy.astype(np.float32)

    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    with OpProfiler() as prof:
        assert Linear.forward is not originals[(Linear, "forward")]
        with prof.phase("forward"):
            y = Upcast()(x).sum()
        with prof.phase("backward"):
            y.backward()
    for (cls, k), fn in originals.items():
        assert cls.__dict__[k] is fn, f"{cls.__name__}.{k} still wrapped"
    rows = {r["name"]: r for r in prof.rows()}
    assert rows["Upcast"]["upcasts"] == 1 and rows["Upcast"]["dtypes"] == ["float64"]
    assert "UPCAST" in prof.table()
    with pytest.raises(ValueError, match="unknown phase"):
        with prof.phase("nope"):
            pass


def _all_functions(cls=Function):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_functions(sub)
