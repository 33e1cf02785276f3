"""Every lesson runs top to bottom in quick mode (as CI runs them, with the exercises' hidden
solutions swapped in), and carries real outputs; its exercises are stubs the reader fills in."""
import ast
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

LESSONS = sorted((pathlib.Path(__file__).resolve().parents[1] / "lessons").glob("*.ipynb"))


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_in_quick_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVIT_QUICK", "1")
    monkeypatch.delenv("MINIVIT_MODE", raising=False)           # quick mode, whatever the shell says
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("MINIVIT_FIGURES", str(tmp_path))       # leave the committed figures alone
    monkeypatch.setenv("MINIVIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("MINIVIT_SOLUTIONS", "1")                # lessons/solutions/ replace the stubs
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
    texts = [o.get("text", "") + o.get("data", {}).get("text/plain", "") for c in code for o in c.get("outputs", [])]
    for where in (str(path.parents[1]) + "/", str(pathlib.Path.home()) + "/"):
        assert not any(where in t for t in texts), f"an output shows this machine's path {where}: `python lessons/run.py`"


SOLUTIONS = LESSONS[0].parent / "solutions"


def _stubs(path):
    """The notebook's exercise stubs: (qualified name, function node) of every def under @exercise."""
    nb = nbformat.read(path, as_version=4)
    stubs = []
    for cell in nb.cells:
        if cell.cell_type != "code" or "@exercise" not in cell.source:
            continue
        tree = ast.parse("\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("%")))
        for node in ast.walk(tree):
            body = getattr(node, "body", [])
            for child in body if isinstance(body, list) else []:      # (a lambda's body is one expression)
                if isinstance(child, ast.FunctionDef) and any(
                        isinstance(d, ast.Name) and d.id == "exercise" for d in child.decorator_list):
                    prefix = f"{node.name}." if isinstance(node, ast.ClassDef) else ""
                    stubs.append((prefix + child.name, child))
    return stubs


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_exercises_are_stubs_with_hidden_solutions(path):
    """The reader sees no answer: each stub's body ends in raise NotImplementedError (lines before it
    may set the stage), and every stub has its solution in lessons/solutions/<lesson>.py, which
    defines nothing else."""
    stubs = _stubs(path)
    assert len(stubs) >= 3, f"{path.name}: expected at least three exercises, found {len(stubs)}"
    for name, fn in stubs:
        last = fn.body[-1]
        assert isinstance(last, ast.Raise) and "NotImplementedError" in ast.unparse(last), \
            f"{path.name}: the stub {name} must end in raise NotImplementedError, not hold an answer"
        assert not any(isinstance(n, ast.Return) for n in ast.walk(fn)), f"{path.name}: {name} returns something"
    solution_file = SOLUTIONS / f"{path.stem}.py"
    tree = ast.parse(solution_file.read_text())
    defined = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            defined.add(node.name)
        elif isinstance(node, ast.ClassDef):
            defined |= {f"{node.name}.{f.name}" for f in node.body if isinstance(f, ast.FunctionDef)}
    assert defined == {name for name, _ in stubs}


def test_exercise_swaps_in_the_solution_only_when_asked(tmp_path, monkeypatch):
    from minivit.notebook import exercises
    (tmp_path / "99_demo.py").write_text("def double(x):\n    return 2 * x\n\n\n"
                                        "class Op:\n    def backward(self, g):\n        return -g\n")

    def double(x):
        raise NotImplementedError("Exercise 1: write double")

    class Op:
        def backward(self, g):
            raise NotImplementedError

    monkeypatch.delenv("MINIVIT_SOLUTIONS", raising=False)
    assert exercises("99_demo")(double) is double                  # the reader's own code runs
    monkeypatch.setenv("MINIVIT_SOLUTIONS", str(tmp_path))
    assert exercises("99_demo")(double)(21) == 42
    Op.backward = exercises("99_demo")(Op.backward)
    assert Op().backward(3) == -3
    with pytest.raises(FileNotFoundError, match="MINIVIT_SOLUTIONS"):
        exercises("98_missing")(double)

    def halve(x):
        raise NotImplementedError

    with pytest.raises(AttributeError, match="no solution 'halve'"):
        exercises("99_demo")(halve)


def test_source_diff_and_cost_table():
    """The "from ViT to X" helpers: the diff carries both sides' lines, marked - and +, and names
    both functions; the table's numbers are count_params and count_macs of the registry's models."""
    from minivit.complexity import count_macs, count_params
    from minivit.layers import Block
    from minivit.models import create_model
    from minivit.models.pvt import Block as PVTBlock
    from minivit.notebook import cost_table, source_diff
    diff = source_diff(Block.forward, PVTBlock.forward)
    assert "--- minivit.layers.block.Block.forward" in diff and "+++ minivit.models.pvt.Block.forward" in diff
    assert "-def forward(self, x):" in diff and "+def forward(self, x, feat_size):" in diff
    assert source_diff(Block.forward, Block.forward) == ""
    table = cost_table({"nano": ("vit_nano", None)}, sides=(32, 224)).splitlines()
    model = create_model("vit_nano").eval()
    macs = count_macs(model, __import__("minivit").randn(1, 3, 32, 32)).total
    assert len(table) == 2 and table[1].split()[:4] == ["nano", "vit_nano", f"{count_params(model) / 1e6:.2f}M",
                                                        f"{macs / 1e9:.3f}"]
    assert table[1].split()[4] == "—"
