"""The README names the command behind every committed figure, table and benchmark record, and
those commands really give what is committed; defaults never overwrite committed files."""
import json
import re
import shlex
from pathlib import Path

import pytest

from minivit.complexity import __main__ as complexity_main
from minivit.complexity import sweep

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
SWEEP = "python -m minivit.complexity sweep"


def readme_commands(prefix: str) -> list[str]:
    """Every command in the README (inline code or an indented block) that starts with prefix."""
    found = re.findall(rf"`({re.escape(prefix)}[^`]*)`", README)
    found += [line.strip() for line in README.splitlines() if line.startswith("    " + prefix)]
    return found


def test_the_sweeps_default_out_dir_leaves_the_committed_figures_alone():
    args = complexity_main.build_parser().parse_args(["sweep"])
    out = (REPO / args.out_dir).resolve()
    assert out != (REPO / "figures").resolve() and (REPO / "figures").resolve() not in out.parents


def _sweep_commands(device):
    """The README's sweep commands that write figures/complexity_<device>.*, parsed by the sweep's parser."""
    parsed = [(c, complexity_main.build_parser().parse_args(shlex.split(c)[3:])) for c in readme_commands(SWEEP)
              if "--out-dir figures" in c]
    return [(c, a) for c, a in parsed if a.device == device]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_readmes_sweep_command_gives_the_committed_record(device):
    """The README's command, parsed by the sweep's own parser, has the settings behind
    figures/complexity_<device>.json: device, C, heads, repeats, and the grids of every layer."""
    path = REPO / "figures" / f"complexity_{device}.json"
    if not path.exists():
        pytest.skip(f"no {path.name} committed")
    record = json.loads(path.read_text())
    commands = _sweep_commands(device)
    assert commands, f"the README must give the sweep command that wrote figures/{path.name}"
    for command, args in commands:
        assert (args.cmd, args.out_dir, args.device) == ("sweep", "figures", record["device"])
        assert (args.dim, args.heads, args.repeats) == (record["C"], record["heads"], record["repeats"])
        max_side = args.max_side or (96 if args.device == "cuda" else 64)       # sweep.run's default
        if "max_side" in record:
            assert max_side == record["max_side"]
        if record.get("threads") is not None:              # a GPU sweep records none
            assert args.threads == record["threads"]
        for r in record["results"]:
            _, multiple, reach, _ = sweep.LAYERS[r["layer"]]
            assert [row["side"] for row in r["rows"]] == sweep._sides(multiple, int(max_side * reach)), r["layer"]


def test_every_committed_figure_and_record_has_its_command_in_the_readme():
    lessons = " ".join(p.read_text() for p in (REPO / "lessons").glob("*.ipynb"))
    for path in sorted((REPO / "figures").iterdir()):
        if path.name.startswith("lesson"):         # saved by a notebook, which the README's command runs
            assert (f'figure_path(\\"{path.stem}\\")' in lessons or f'save_figure(fig, \\"{path.stem}\\")' in lessons), \
                f"no lesson saves {path.name}"
            assert "python lessons/run.py" in README
        elif path.name.startswith("complexity_"):
            device = path.stem.split("_")[1]
            assert _sweep_commands(device), f"the README names no sweep command that writes {path.name}"
        else:
            assert f"--json figures/{path.name}" in README or f"--out figures/{path.name}" in README, \
                f"the README names no command that writes {path.name}"
    for path in sorted((REPO / "benchmarks").glob("*.json")):
        if path.name.startswith("cpu_") and path.name.endswith("_b64_fp32.json"):
            assert "--json benchmarks/cpu_<model>_b64_fp32.json" in README
            records = json.loads(path.read_text())["records"]
            assert all(r.get("command", "").startswith("python -m minivit.bench") for r in records
                       if r.get("label", "").startswith("threads")), path.name
        elif path.name.startswith("cuda_") and path.name.endswith(".json"):    # GPU records: a GPU session's script
            assert "bash .ci/gpu first-contact" in README and "benchmarks/cuda_<model>_b256_<precision>.json" in README
            records = json.loads(path.read_text())["records"]
            assert records and all(r["command"].startswith("python -m minivit.bench") and
                                   f"--json benchmarks/{path.name}" in r["command"] for r in records), path.name
        else:
            assert f"--json benchmarks/{path.name}" in README, f"the README names no command that writes {path.name}"


def test_the_readmes_gpu_sweep_table_is_the_scripts_output():
    import subprocess
    import sys
    path = REPO / "figures" / "complexity_cuda.json"
    if not path.exists():
        pytest.skip("no GPU sweep committed")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sweep_table.py"), str(path)],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out.count("\n") == 1 + len(json.loads(path.read_text())["results"])
    assert out in README, "the README's GPU sweep table differs from benchmarks/sweep_table.py's output"


@pytest.mark.parametrize("label", ["first-contact", "gpu"])
def test_the_readmes_gpu_benchmark_tables_are_the_scripts_output(label):
    import subprocess
    import sys
    if not any(r["label"] == label for p in (REPO / "benchmarks").glob("cuda_*_b256_*.json")
               for r in json.loads(p.read_text())["records"]):
        pytest.skip(f"no GPU records labelled {label} committed")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cuda_table.py"), "--label", label],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out.count("\n") >= 2, out
    assert out in README, f"the README's GPU table ({label}) differs from benchmarks/cuda_table.py's output"
    assert "python benchmarks/cuda_table.py --label" in README, "the README must name the table's command"
