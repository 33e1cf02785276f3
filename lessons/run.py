"""Execute lessons in place, as their committed outputs were made, and time each one.

    python lessons/run.py                      # every lesson, quick mode, solutions swapped in
    python lessons/run.py 02_self_attention 08_pit
    python lessons/run.py --no-solutions 03_vit   # your own exercise code (stops at the first stub)
    python lessons/run.py --mode cpu 03_vit 04_deit_distillation 07_cvt   # runs of a few minutes each

Each notebook runs top to bottom in quick mode (MINIVIT_QUICK=1, unless MINIVIT_QUICK or MINIVIT_MODE
is already set; --mode cpu or --mode full sets MINIVIT_MODE, see minivit.notebook.mode) and
MINIVIT_SOLUTIONS=1 (the reference solutions of lessons/solutions/ replace the exercise stubs),
one at a time, and is saved with its outputs. The seconds printed per lesson are the numbers in
lessons/README.md's table. Paths of this machine in the outputs are written the way a reader's
would be: relative to the repository (runs/lessons/..., ../shared/data/...) and ~ for the home folder.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent


def machine_free(text: str) -> str:
    """``text`` with this machine's absolute paths written as a reader would see them."""
    for path, shown in ((REPO, ""), (REPO.parent, ".."), (pathlib.Path.home(), "~")):
        text = text.replace(str(path) + "/", f"{shown}/" if shown else "")
    return text


def scrub(nb) -> None:
    """Apply ``machine_free`` to every text output of a notebook, in place."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = machine_free(out["text"])
            data = out.get("data", {})
            if "text/plain" in data:
                data["text/plain"] = machine_free(data["text/plain"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python lessons/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("lessons", nargs="*", help="notebook names without .ipynb (default: all)")
    p.add_argument("--no-solutions", action="store_true", help="run your own exercise code, not lessons/solutions/")
    p.add_argument("--mode", choices=("quick", "cpu", "full"), default=None,
                   help="the lessons' mode (MINIVIT_MODE): quick (default, CI's), cpu (full CIFAR-10, "
                        "training runs of a few minutes each on a 2-core CPU), full (a GPU)")
    p.add_argument("--timeout", type=int, default=None,
                   help="seconds per cell (default: 1200 in quick mode, 7200 in cpu and full mode)")
    args = p.parse_args(argv)
    if args.mode:
        os.environ["MINIVIT_MODE"] = args.mode
        os.environ.pop("MINIVIT_QUICK", None)          # MINIVIT_MODE decides
    elif not os.environ.get("MINIVIT_MODE"):
        os.environ.setdefault("MINIVIT_QUICK", "1")
    sys.path.insert(0, str(REPO))
    from minivit.notebook import mode
    try:
        chosen = mode()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    timeout = args.timeout or (1200 if chosen == "quick" else 7200)
    try:
        import nbclient
        import nbformat
    except ImportError:
        print('error: running the lessons needs nbclient and nbformat: pip install -e ".[lessons]"', file=sys.stderr)
        return 2
    paths = sorted(HERE.glob("*.ipynb"))
    if args.lessons:
        by_name = {q.stem: q for q in paths}
        unknown = [n for n in args.lessons if n not in by_name]
        if unknown:
            print(f"error: no lesson {', '.join(unknown)}; the lessons are: {', '.join(by_name)}", file=sys.stderr)
            return 2
        paths = [by_name[n] for n in args.lessons]
    os.environ["MINIVIT_SOLUTIONS"] = "0" if args.no_solutions else "1"
    os.environ.setdefault("MPLBACKEND", "Agg")
    total = 0.0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(HERE)}}).execute()
        seconds = time.perf_counter() - t0
        total += seconds
        scrub(nb)
        nbformat.write(nb, path)
        print(f"{path.stem:<24} {seconds:6.1f} s", flush=True)
    print(f"{'all':<24} {total:6.1f} s  (mode {chosen}, MINIVIT_SOLUTIONS={os.environ['MINIVIT_SOLUTIONS']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
