"""Every Python block of README.md and lessons/README.md runs as a newcomer would paste it: on
its own, in a fresh namespace. A block that needs more than the core install says so on the
line before it, ``<!-- needs: cuda -->`` or ``<!-- needs: timm, transformers -->``, and is
skipped, with the reason, where that is missing. Imports of the optional packages count as
such a need even when the comment is forgotten."""
import importlib.util
import re
from pathlib import Path

import pytest

from minivit import backend

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "lessons/README.md")
OPTIONAL = ("torch", "timm", "transformers", "cupy")      # not in the core install
NEEDS = re.compile(r"<!--\s*needs:\s*(.*?)\s*-->")


def python_blocks(text: str):
    """(line number, code, needs) of every ```python block; needs from the comment line before it."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, j = i + 1, i + 1
            while lines[j].strip() != "```":
                j += 1
            code = "\n".join(lines[start:j])
            before = next((line for line in reversed(lines[:i]) if line.strip()), "")
            m = NEEDS.search(before)
            needs = {n.strip() for n in m.group(1).split(",")} if m else set()
            needs |= {mod for mod in OPTIONAL
                      if re.search(rf"^\s*(import|from)\s+([\w.]+\s*,\s*)*{mod}\b", code, re.M)}
            blocks.append((start + 1, code, needs))
            i = j
        i += 1
    return blocks


def _missing(need: str) -> str | None:
    if need == "cuda":
        return None if backend.cupy_available() else "needs CuPy and a GPU"
    return None if importlib.util.find_spec(need) else f"needs {need}, not installed"


CASES = [(doc, line, code, needs) for doc in DOCS for line, code, needs in python_blocks((REPO / doc).read_text())]


def test_the_readme_has_python_blocks_and_the_parser_finds_needs():
    assert sum(doc == "README.md" for doc, *_ in CASES) >= 4
    text = "intro\n<!-- needs: timm, cuda -->\n```python\nimport numpy\n```\n\n```python\nimport torch.nn\n```\n"
    assert [needs for _, _, needs in python_blocks(text)] == [{"timm", "cuda"}, {"torch"}]


@pytest.mark.parametrize("doc,line,code,needs", CASES, ids=[f"{doc}:{line}" for doc, line, *_ in CASES])
def test_python_block_runs(doc, line, code, needs, tmp_path, monkeypatch):
    missing = [reason for reason in map(_missing, sorted(needs)) if reason]
    if missing:
        pytest.skip("a README block that " + "; ".join(missing))     # the test id names the block
    monkeypatch.chdir(tmp_path)                     # whatever a block writes stays out of the repository
    exec(compile(code, f"{doc}:{line}", "exec"), {"__name__": "__readme__"})
