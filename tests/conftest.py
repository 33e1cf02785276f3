"""Shared fixtures: one `xp` fixture runs every test on NumPy and, where a GPU is present, CuPy."""
import os

# Under pytest-xdist every core already runs a worker: one BLAS thread each avoids
# oversubscription (set before NumPy loads its BLAS).
if "PYTEST_XDIST_WORKER" in os.environ:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from minivit import backend

# Fixtures here hold no state, so hypothesis may reuse them across examples.
# CI: no deadline (a 2-core machine is slow and noisy), derandomized so a red run reproduces.
settings.register_profile("ci", deadline=None, derandomize=True, max_examples=20,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("dev", deadline=None, max_examples=20,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def _cupy_or_skip():
    if not backend.cupy_available():
        pytest.skip("CuPy with a GPU is not available")
    import cupy
    return cupy


@pytest.fixture(scope="session", params=["numpy", "cupy"])
def xp(request):
    """The array module under test: numpy always, cupy only with a GPU."""
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
