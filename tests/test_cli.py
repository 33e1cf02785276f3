"""Every command line reports a user's mistake the same way (minivit.cli): exit code 2 and one
line on stderr, ``error: ...``, that names the flag; never a traceback. A device that is not
there (no CuPy, or CuPy without a GPU) is such a mistake too."""
import os
import subprocess
import sys

import pytest

import minivit.__main__ as minivit_main
from minivit import backend, bench, cli, evaluate, train
from minivit.complexity import __main__ as complexity_main

CLIS = {"train": train.main, "evaluate": evaluate.main, "bench": bench.main,
        "complexity": complexity_main.main, "minivit": minivit_main.main}
SYNTH = ["--dataset", "synthetic", "--no-progress"]


def refused(capsys, cli_name, argv, *needles):
    """Run the CLI in this process; it must exit 2 with one ``error:`` line holding every needle."""
    with pytest.raises(SystemExit) as e:
        CLIS[cli_name](argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# (CLI, argv, what the line must name). Each is caught before any data or model work.
BAD_INPUTS = [
    ("train", SYNTH + ["--epochs", "0"], "--epochs"),
    ("train", SYNTH + ["--batch-size", "0"], "--batch-size"),
    ("train", SYNTH + ["--log-every", "0"], "--log-every"),
    ("train", SYNTH + ["--eval-every", "-1"], "--eval-every"),
    ("train", SYNTH + ["--subset", "0"], "--subset"),
    ("train", SYNTH + ["--model", "vit_tinyy"], "--model"),
    ("train", SYNTH + ["--device", "gpu"], "--device"),
    ("train", SYNTH + ["--randaugment", "2"], "--randaugment"),
    ("train", ["--resume", "no/such/run"], "--resume"),
    ("train", SYNTH + ["--teacher", "no/such/run"], "--teacher"),
    ("evaluate", ["nowhere", "--batch-size", "0"], "--batch-size"),
    ("evaluate", ["nowhere", "--test-subset", "0"], "--test-subset"),
    ("evaluate", ["nowhere/last.ckpt", "--device", "cpu"], "nowhere/last.ckpt"),
    ("bench", ["--model", "vit_tinyy"], "--model"),
    ("bench", ["--steps", "0"], "--steps"),
    ("bench", ["--warmup", "-1"], "--warmup"),
    ("bench", ["--threads", "0"], "--threads"),
    ("bench", ["--precision", "tf32", "--device", "cpu"], "--precision"),
    ("bench", ["--model-kwargs", "depht=1", "--steps", "1"], "--model-kwargs"),
    ("complexity", ["sweep", "--repeats", "0"], "--repeats"),
    ("complexity", ["sweep", "--max-side", "0"], "--max-side"),
    ("complexity", ["sweep", "--dim", "30", "--heads", "4"], "--heads"),
    ("complexity", ["sweep", "--out-dir", "/dev/null/x"], "--out-dir"),
    ("complexity", ["table", "--json", "no/such/folder/t.json"], "--json"),
    ("complexity", ["plot"], "table"),
    ("minivit", ["--steps", "0"], "--steps"),
    ("minivit", ["--device", "tpu"], "--device"),
]


@pytest.mark.parametrize("cli_name,argv,flag", BAD_INPUTS, ids=[f"{c}:{' '.join(a)}" for c, a, _ in BAD_INPUTS])
def test_bad_input_is_one_error_line_naming_the_flag(capsys, cli_name, argv, flag):
    refused(capsys, cli_name, argv, flag)


def test_bench_refuses_a_json_that_is_not_its_own_before_running(tmp_path, capsys):
    path = tmp_path / "other.json"
    path.write_text('{"something": 1}')
    refused(capsys, "bench", ["--steps", "1", "--json", str(path)], "--json", "not a minivit.bench file")
    path.write_text("not json")
    refused(capsys, "bench", ["--steps", "1", "--json", str(path)], "--json", "not JSON")


# ---------------------------------------------------------------------- --device cuda without a GPU
DEVICE_CUDA = {"train": SYNTH + ["--device", "cuda"], "evaluate": ["nowhere", "--device", "cuda"],
               "bench": ["--device", "cuda"], "complexity": ["sweep", "--device", "cuda"],
               "minivit": ["--device", "cuda"]}


@pytest.mark.parametrize("cli_name", DEVICE_CUDA)
def test_device_cuda_without_cupy_names_the_wheel(monkeypatch, capsys, cli_name):
    monkeypatch.setattr(backend, "_cupy", None)            # as if CuPy were not installed
    refused(capsys, cli_name, DEVICE_CUDA[cli_name], "--device cuda", "CuPy", "pip install")


MODULES = {"train": "minivit.train", "evaluate": "minivit.evaluate", "bench": "minivit.bench",
           "complexity": "minivit.complexity", "minivit": "minivit"}
# The suite may run on the strict CuPy stand-in (tests/conftest.py), which is no GPU to refuse:
# these commands run in a fresh process with the real CuPy, or none (MINIVIT_STRICT_CUPY=0).
REAL_GPU = backend.cupy_available() and not backend.is_strict_standin()
CUPY_INSTALLED = backend.is_strict_standin() or backend._cupy is not None    # (the stand-in needs cupy-cuda12x)


@pytest.mark.skipif(REAL_GPU, reason="a GPU is here: --device cuda is no mistake")
@pytest.mark.parametrize("cli_name", DEVICE_CUDA)
def test_device_cuda_without_a_gpu_from_the_shell(cli_name):
    """The real command, in a fresh process: exit 2, one line, no traceback; with CuPy installed
    (as here), the line says there is no GPU and names --device cpu."""
    proc = subprocess.run([sys.executable, "-m", MODULES[cli_name], *DEVICE_CUDA[cli_name]],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "MINIVIT_STRICT_CUPY": "0"})
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --device cuda"), proc.stderr
    assert "Traceback" not in proc.stderr
    if CUPY_INSTALLED:
        assert "no GPU" in lines[0] and "--device cpu" in lines[0], lines[0]
    else:
        assert "CuPy" in lines[0] and "pip install" in lines[0], lines[0]


def test_resumed_cuda_run_on_a_machine_without_one_names_the_flag_to_change(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    train.run(["--model", "resnet_teacher", "--model-kwargs", "depth=8,width=4", *SYNTH, "--device", "cpu",
               "--subset", "64", "--test-subset", "32", "--epochs", "1", "--batch-size", "32",
               "--out-dir", str(run_dir)], log=lambda *a: None)
    ck = train.load_checkpoint(run_dir / "last.ckpt")
    ck["config"]["device"] = "cuda"                        # as if it had been trained on a GPU,
    ck["config"]["epochs"] = 2                             # and had an epoch to go
    train.save_checkpoint(run_dir / "last.ckpt", {k: v for k, v in ck.items() if k != "path"})
    monkeypatch.setattr(backend, "_cupy", None)
    refused(capsys, "train", ["--resume", str(run_dir)], "trained with --device", "cuda", "--device cpu")


# ---------------------------------------------------------------------- the helpers themselves
def test_fail_prints_one_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.fail("two\nlines   with  gaps")
    assert e.value.code == 2 and capsys.readouterr().err == "error: two lines with gaps\n"


def test_run_cli_lets_bugs_through(capsys):
    def bug():
        raise KeyError("a bug, not a user's mistake")
    with pytest.raises(KeyError):
        cli.run_cli(bug)
    assert cli.run_cli(lambda x: x + 1, 1) == 2
    with pytest.raises(SystemExit):
        cli.run_cli(lambda: cli.check_positive({"rounds": 0}, "rounds"))
    assert capsys.readouterr().err == "error: --rounds must be at least 1, got 0\n"


def test_complexity_table_json_check_happens_before_the_counting(monkeypatch, capsys):
    import minivit.complexity.table as table
    monkeypatch.setattr(table, "paper_table", lambda **kw: pytest.fail("counted before checking --json"))
    refused(capsys, "complexity", ["table", "--json", "no/such/folder/t.json"], "--json")


def test_check_device_speaks_in_flags_whatever_backends_wording(monkeypatch):
    """backend's errors say device='cpu' (Python); the command line's say --device cpu. Any
    RuntimeError of backend.check_device (backend.DeviceError is one) becomes a UsageError."""
    def missing_library(device):
        raise RuntimeError("CuPy cannot load libnvrtc.so.12: install nvidia-cuda-nvrtc-cu12.")
    monkeypatch.setattr(backend, "check_device", missing_library)
    with pytest.raises(cli.UsageError) as e:
        cli.check_device("cuda")
    assert str(e.value) == ("--device cuda: CuPy cannot load libnvrtc.so.12: install nvidia-cuda-nvrtc-cu12; "
                            "or run on the CPU with --device cpu")
