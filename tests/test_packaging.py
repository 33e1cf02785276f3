"""pyproject.toml's GPU extras install CuPy together with the CUDA libraries it loads.

Without CuPy's [ctk] extra (CuPy >= 14), `pip install minivit[cuda12]` gives a CuPy that
imports but fails at the first random draw on a driver-only machine
(ImportError: Failure finding "libcurand.so…")."""
import pathlib
import re

import pytest

tomllib = pytest.importorskip("tomllib")     # Python >= 3.11

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"


@pytest.mark.parametrize("extra, wheel", [("cuda12", "cupy-cuda12x"), ("cuda13", "cupy-cuda13x")])
def test_cuda_extras_bring_the_cuda_libraries(extra, wheel):
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    reqs = [r for r in extras[extra] if r.replace(" ", "").startswith(wheel)]
    assert len(reqs) == 1, f"[{extra}] should require {wheel} once, has {extras[extra]}"
    m = re.fullmatch(rf"{wheel}\[(?P<extras>[^\]]*)\]>=(?P<major>\d+)(\.\d+)*", reqs[0].replace(" ", ""))
    assert m, f"[{extra}]: {reqs[0]!r} should read {wheel}[ctk]>=14"
    assert "ctk" in m["extras"].split(","), f"[{extra}]: {reqs[0]!r} lacks CuPy's [ctk] extra"
    assert int(m["major"]) >= 14, f"[{extra}]: CuPy's [ctk] extra needs CuPy >= 14, got {reqs[0]!r}"
