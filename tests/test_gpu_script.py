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
