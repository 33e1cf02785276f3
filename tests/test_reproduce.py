"""The README names the command behind every committed figure, table and benchmark record, and
those commands really give what is committed; defaults never overwrite committed files."""
import json
import re
import shlex
from pathlib import Path

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


def test_the_readmes_sweep_command_gives_the_committed_record():
    """The README's command, parsed by the sweep's own parser, has the settings behind
    figures/complexity_cpu.json: device, C, heads, repeats, and the grids of every layer."""
    record = json.loads((REPO / "figures" / "complexity_cpu.json").read_text())
    commands = [c for c in readme_commands(SWEEP) if "--out-dir figures" in c]
    assert commands, "the README must give the sweep command that wrote figures/complexity_cpu.json"
    for command in commands:
        args = complexity_main.build_parser().parse_args(shlex.split(command)[3:])
        assert (args.cmd, args.out_dir, args.device) == ("sweep", "figures", record["device"])
        assert (args.dim, args.heads, args.repeats) == (record["C"], record["heads"], record["repeats"])
        max_side = args.max_side or (96 if args.device == "cuda" else 64)       # sweep.run's default
        if "max_side" in record:
            assert max_side == record["max_side"]
        if "threads" in record:
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
        elif path.name.startswith("complexity_cpu"):
            assert any("--out-dir figures" in c for c in readme_commands(SWEEP)), path.name
        else:
            assert f"--json figures/{path.name}" in README or f"--out figures/{path.name}" in README, \
                f"the README names no command that writes {path.name}"
    for path in sorted((REPO / "benchmarks").glob("*.json")):
        if path.name.startswith("cpu_") and path.name.endswith("_b64_fp32.json"):
            assert "--json benchmarks/cpu_<model>_b64_fp32.json" in README
            records = json.loads(path.read_text())["records"]
            assert all(r.get("command", "").startswith("python -m minivit.bench") for r in records
                       if r.get("label", "").startswith("threads")), path.name
        else:
            assert f"--json benchmarks/{path.name}" in README, f"the README names no command that writes {path.name}"
