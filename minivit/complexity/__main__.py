"""``python -m minivit.complexity table | sweep``: the papers' tables and measured growth."""
from __future__ import annotations

import argparse
import json
import pathlib


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minivit.complexity", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="parameters and GMACs of the 224×224 configurations vs the papers")
    t.add_argument("--markdown", action="store_true", help="print a Markdown table (what the README shows)")
    t.add_argument("--json", help="also write the rows to this JSON file")
    s = sub.add_parser("sweep", help="time each attention type over growing token grids; fit log-log slopes")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    s.add_argument("--max-side", type=int, default=None,
                   help="largest token grid side for MSA (default 64 CPU, 96 GPU); layers whose quadratic "
                        "term is smaller (SRA with large R) or that are linear reach further")
    s.add_argument("--dim", type=int, default=32, help="channels C (default 32)")
    s.add_argument("--heads", type=int, default=2)
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--out-dir", default="figures", help="where complexity_<device>.png/.json go")
    args = p.parse_args(argv)

    if args.cmd == "table":
        from minivit.complexity.table import format_table, paper_table
        rows = paper_table()
        print(format_table(rows, markdown=args.markdown))
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    else:
        from minivit import backend
        from minivit.complexity.sweep import run, slope_ok
        backend.check_device(args.device)
        out = pathlib.Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        record = run(args.device, args.max_side, args.dim, args.heads, args.repeats,
                     out_json=out / f"complexity_{args.device}.json", out_png=out / f"complexity_{args.device}.png")
        bad = [r["layer"] for r in record["results"] if not slope_ok(r)]
        print(f"wrote {out}/complexity_{args.device}.png and .json; "
              + ("all fitted exponents within ±0.15 of theory" if not bad else f"outside ±0.15: {', '.join(bad)}"))


if __name__ == "__main__":
    main()
