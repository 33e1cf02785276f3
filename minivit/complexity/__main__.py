"""``python -m minivit.complexity table | sweep``: the papers' tables and measured growth.

    python -m minivit.complexity table --markdown          # the README's table of the papers' numbers
    python -m minivit.complexity sweep --device cpu --repeats 7 --out-dir figures
                                                           # the README's figures/complexity_cpu.png/.json

Without ``--out-dir`` the sweep writes to runs/complexity/, so the committed figures change
only when asked to.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from minivit import cli

DEFAULT_OUT_DIR = "runs/complexity"


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m minivit.complexity", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="parameters and GMACs of the 224×224 configurations vs the papers")
    t.add_argument("--markdown", action="store_true", help="print a Markdown table (what the README shows)")
    t.add_argument("--json", help="also write the rows to this JSON file")
    s = sub.add_parser("sweep", help="time each attention type over growing token grids; fit log-log slopes",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    s.add_argument("--max-side", type=int, default=None,
                   help="the base grid side S (default 64 on the CPU, 96 on the GPU); each layer runs to S × its "
                        "reach, from 1.5 S for MSA (64 → 96²) to 6 S for SRA R=8 (64 → 384²), see sweep.LAYERS")
    s.add_argument("--dim", type=int, default=32, help="channels C")
    s.add_argument("--heads", type=int, default=2)
    s.add_argument("--repeats", type=int, default=3,
                   help="timed calls per grid (the minimum is kept); the README's figure used 7")
    s.add_argument("--threads", type=int, default=1,
                   help="CPU threads (NumPy's BLAS and minivit's own) while timing; 1 measures the growth law "
                        "alone (with more, the share of the work split over the threads grows with the grid)")
    s.add_argument("--out-dir", default=DEFAULT_OUT_DIR,
                   help="where complexity_<device>.png/.json go; the committed ones are in figures/")
    return p


def table(args):
    from minivit.complexity.table import format_table, paper_table
    if args.json and not pathlib.Path(args.json).parent.is_dir():      # say so before the minutes of counting
        raise cli.UsageError(f"--json {args.json}: its folder does not exist; create it or choose another path")
    from minivit.models.papers import PAPERS
    n, t0 = len(PAPERS), time.perf_counter()
    print(f"counting the parameters and MACs of {n} models on one 224×224 image (or clip), one line each:",
          file=sys.stderr, flush=True)

    def progress(i, row):       # one line per model on stderr: stdout keeps only the table
        print(f"  [{i}/{n}] {row['model']:<18} {row['params_m']:7.2f}M parameters  {row['gmacs']:7.3f} GMACs  "
              f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)

    rows = paper_table(progress=progress)
    print(format_table(rows, markdown=args.markdown))
    if args.json:
        try:
            pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
        except OSError as e:
            raise cli.UsageError(f"--json {args.json}: cannot write it ({e.strerror}); the table is above") from None


def sweep(args):
    from minivit.complexity.sweep import run, slope_ok
    cli.check_positive(args, "max_side", "dim", "heads", "repeats")
    if args.dim % args.heads:
        raise cli.UsageError(f"--dim {args.dim} must be a multiple of --heads {args.heads}")
    cli.check_device(args.device)
    out = pathlib.Path(args.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cli.UsageError(f"--out-dir {out}: cannot create it ({e.strerror})") from None
    if args.threads < 1:
        raise cli.UsageError(f"--threads {args.threads}: give a positive number of threads (1 for the growth law)")
    record = run(args.device, args.max_side, args.dim, args.heads, args.repeats, threads=args.threads,
                 out_json=out / f"complexity_{args.device}.json", out_png=out / f"complexity_{args.device}.png")
    bad = [r["layer"] for r in record["results"] if not slope_ok(r)]
    print(f"wrote {out}/complexity_{args.device}.png and .json; "
          + ("all fitted exponents within ±0.15 of theory" if not bad else f"outside ±0.15: {', '.join(bad)}"))


def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.run_cli(table if args.cmd == "table" else sweep, args)


if __name__ == "__main__":
    main()
