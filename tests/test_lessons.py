"""Every lesson runs top to bottom in quick mode (as CI runs them), and carries real outputs."""
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

LESSONS = sorted((pathlib.Path(__file__).resolve().parents[1] / "lessons").glob("*.ipynb"))


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_in_quick_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVIT_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("MINIVIT_FIGURES", str(tmp_path))       # leave the committed figures alone
    monkeypatch.setenv("MINIVIT_RUNS", str(tmp_path / "runs"))
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):  # small ops: one BLAS thread is faster
        monkeypatch.setenv(var, "1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, with the failing cell, on any error


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_is_committed_with_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), "run the notebook before committing it"
    first = " ".join(o.get("text", "") for o in code[0].get("outputs", []))
    assert "device:" in first and "mode:" in first, "the first cell must call minivit.notebook.setup()"
    images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "no figure shown inline: run `%matplotlib inline` in the first cell"
