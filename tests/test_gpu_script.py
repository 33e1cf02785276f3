"""``bash .ci/gpu first-contact --dry-run``: the first GPU session's one prepared command, run here
on the strict CuPy stand-in at toy sizes (the PyTorch twin on the CPU), so that a mistake in the
script or in the GPU path it drives shows before a GPU's minutes are spent on it."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from minivit import backend

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
@pytest.mark.skipif(not backend.is_strict_standin(), reason="the dry run needs the strict CuPy stand-in "
                    "(cupy-cuda12x installed, no GPU); on a GPU run `bash .ci/gpu first-contact` itself")
def test_first_contact_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run(["bash", str(REPO / ".ci" / "gpu"), "first-contact", "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)
    out = tmp_path / "out"
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert set(files) == {"env.txt", "tests.log", "train.log", "bench.log", "benchmarks.tgz", "run.tgz",
                          "summary.txt"} and len(files) <= 8, files          # the device tool brings back 8
    assert "env: rc=0" in summary and "preflight: ok" in summary, summary
    assert "fused-kernel tests: rc=0" in summary and "CuPy tests: rc=0" in summary, summary
    assert "train pvt_tiny: rc=124" in summary or "train pvt_tiny: rc=0" in summary, summary
    for p in ("fp32", "tf32", "fp16"):
        assert f"bench vit_tiny {p}: rc=0" in summary, summary
    assert "ratio" in (out / "bench.log").read_text()            # the PyTorch twin was timed too


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("mpiexec") is None, reason="needs bash and mpiexec")
@pytest.mark.skipif(not backend.is_strict_standin(), reason="needs the strict CuPy stand-in (cupy-cuda12x installed, "
                    "no GPU); on a GPU run `bash .ci/gpu ddp` itself")
def test_ddp_phase_on_the_standin(tmp_path):
    """``bash .ci/gpu ddp`` here: the NCCL checks it runs pass on the stand-in's NCCL (over MPI)."""
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run(["bash", str(REPO / ".ci" / "gpu"), "ddp"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    log = (tmp_path / "out" / "ddp.txt").read_text()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "3 passed" in log and "failed" not in log, log[-3000:]


MiB = 2 ** 20
TRAVEL_LIMIT = 64 * MiB          # the device tool: tracked + untracked-not-ignored files + carried paths


def _checkout_bytes() -> int:
    """What travels of the checkout: the files git tracks (as they are on disk) and the untracked
    ones it does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout
    return sum((REPO / n).stat().st_size for n in out.decode().split("\0") if n and (REPO / n).is_file())


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_checkout_and_data_fit_one_gpu_call(tmp_path):
    """The first contact carries the 15,000-image subset; a long run carries the whole copy in three
    parts, one per call. Each call's checkout + data must stay under the 64 MiB that may travel
    (with 1 MiB to spare), else the GPU session's first call is refused."""
    from minivit.data import archive
    from minivit.data.cifar10 import shared_archive_candidates
    full = next((p for p in shared_archive_candidates() if p.is_file() and "jpeg" in p.name), None)
    if full is None:
        pytest.skip("the CIFAR-10 JPEG copy (../shared/data) is not here")
    checkout = _checkout_bytes()
    sub = tmp_path / "cifar10-jpeg-15k.tar.gz"
    archive.subset_archive(full, sub, train_per_class=1500)
    parts = archive.split_file(full, tmp_path / "p0", 3)
    largest = max(p.stat().st_size for p in parts)
    for what, size in (("the 15k subset (first contact)", sub.stat().st_size), ("one of three parts", largest)):
        total = checkout + size
        assert total <= TRAVEL_LIMIT - MiB, (
            f"checkout {checkout / MiB:.1f} MiB + {what} {size / MiB:.1f} MiB = {total / MiB:.1f} MiB: over "
            f"the 64 MiB a GPU call may carry; make the checkout smaller or the carried data")


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_gpu_scripts_find_the_python_that_has_numpy(tmp_path):
    """.ci/gpu-env: where `python` lacks NumPy and `python3` has it (the GPU image of 4 December),
    `python` becomes a wrapper that runs that python3 by its own path, inside its virtual
    environment; where neither has it, one error line and exit status 2."""
    import sys
    import venv
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "python").write_text("#!/bin/sh\nexit 1\n")                # a python without NumPy
    (fake / "python").chmod(0o755)
    env = tmp_path / "env"                      # a virtual environment whose python3 has NumPy (from
    venv.create(env, system_site_packages=True, symlinks=True)      # the site packages it sees)
    tools = tmp_path / "tools"                  # only what the script needs: no other python on PATH
    tools.mkdir()
    for t in ("bash", "sh", "mktemp", "chmod"):
        (tools / t).symlink_to(shutil.which(t))
    probe = "source .ci/gpu-env && python -c 'import numpy, sys; print(sys.prefix)'"
    run = lambda path: subprocess.run([str(tools / "bash"), "-c", probe], cwd=REPO, capture_output=True,
                                      text=True, timeout=120, env={"PATH": path, "HOME": str(tmp_path)})
    proc = run(f"{fake}:{env / 'bin'}:{tools}")
    # the environment's own prefix: a symlink to its python3 would have started the base Python
    assert proc.returncode == 0 and proc.stdout.strip() == str(env), proc.stdout + proc.stderr
    proc = run(f"{fake}:{tools}")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") \
        and "export PATH=" in lines[0] and not proc.stdout, proc.stderr
