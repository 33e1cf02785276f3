"""Shared fixtures: one `xp` fixture runs every test on NumPy and on CuPy: the real one where a GPU
is present, else minivit's strict CuPy stand-in (NumPy underneath, CuPy's rules at the
host/device boundary: minivit/testing/strict_cupy.py), which needs cupy-cuda12x installed
(`pip install 'minivit[gpucheck]'`) for CuPy's names. MINIVIT_STRICT_CUPY=0 turns the stand-in off."""
import os


def _use_strict_cupy_without_gpu():
    """Set MINIVIT_STRICT_CUPY=1 (before minivit is imported, and so for pytest-xdist's workers,
    which inherit the environment) unless a real CuPy sees a GPU, or the variable is already set."""
    if "MINIVIT_STRICT_CUPY" in os.environ:
        return
    try:
        import cupy
    except Exception:
        return                                    # not installed: the cupy runs skip, saying so
    try:
        gpu = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        gpu = False
    if not gpu:
        os.environ["MINIVIT_STRICT_CUPY"] = "1"


_use_strict_cupy_without_gpu()

# Under pytest-xdist every core already runs a worker: one BLAS thread each avoids
# oversubscription (set before NumPy loads its BLAS).
if "PYTEST_XDIST_WORKER" in os.environ:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from minivit import backend
from minivit.testing import strict_cupy

# Fixtures here hold no state, so hypothesis may reuse them across examples.
# CI: no deadline (a 2-core machine is slow and noisy), derandomized so a red run reproduces.
settings.register_profile("ci", deadline=None, derandomize=True, max_examples=20,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("dev", deadline=None, max_examples=20,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_report_header(config):
    if backend.is_strict_standin():
        return "cupy: strict stand-in (NumPy underneath)"
    if backend.cupy_available():
        return f"cupy: CuPy {backend.xp_for('cuda').__version__} on a GPU"
    return f"cupy: none ({strict_cupy.available() or 'no GPU, and MINIVIT_STRICT_CUPY=0'}): the cupy runs skip"


def pytest_configure(config):
    config.addinivalue_line("markers", "strict_cupy: a CuPy run on the strict stand-in (NumPy underneath), "
                                       "not on a GPU; set on such runs by tests/conftest.py")


def pytest_collection_modifyitems(config, items):
    """Mark the CuPy runs as stand-in runs when they are (select them with -m strict_cupy)."""
    if not backend.is_strict_standin():
        return
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("xp") == "cupy" or item.path.name in ("test_fused_cuda.py", "test_strict_cupy.py"):
            item.add_marker("strict_cupy")


def _cupy_or_skip():
    if not backend.cupy_available():
        pytest.skip(strict_cupy.available() or "CuPy with a GPU is not available (and MINIVIT_STRICT_CUPY=0)")
    return backend.xp_for("cuda")


@pytest.fixture(scope="session", params=["numpy", "cupy"])
def xp(request):
    """The array module under test: numpy always; cupy on a GPU, or else the strict stand-in."""
    return np if request.param == "numpy" else _cupy_or_skip()


@pytest.fixture(scope="session")
def device(xp):
    return "cuda" if xp is not np else "cpu"


@pytest.fixture(autouse=True)
def _seed():
    backend.manual_seed(0)


def torch_or_skip():
    """Import torch for a parity test, or skip it (users need not install torch)."""
    return pytest.importorskip("torch")


def _skip_reason(report) -> str:
    """A skip's reason, with importorskip's per-module message shortened to "X not installed"."""
    import re
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    m = re.match(r"could not import '([\w.]+)'", reason)
    return f"{m.group(1)} not installed" if m else reason


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """At the end of the session, the skips counted by reason (pytest's summary gives only the total):
    e.g. "746 skipped: CuPy with a GPU is not available", "120 skipped: torch not installed"."""
    from collections import Counter
    counts = Counter(_skip_reason(r) for r in terminalreporter.stats.get("skipped", []))
    if counts:
        terminalreporter.write_sep("-", f"{sum(counts.values())} skipped, by reason")
        for reason, n in counts.most_common():
            terminalreporter.write_line(f"{n:6d} skipped: {reason}")
