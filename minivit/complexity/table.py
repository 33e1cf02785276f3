"""The papers' tables, recomputed: parameters and GMACs of every 224×224 configuration (one input of
each entry's ``input_shape``: an image, or TimeSformer's 8-frame clip)."""
from __future__ import annotations

import gc

import minivit as mv
from minivit.complexity.counting import count_macs, count_params
from minivit.models import create_model
from minivit.models.papers import PAPERS


def paper_table(names=None, progress=None) -> list[dict]:
    """One row per configuration: our counts (from the ops that ran) beside the paper's.
    ``progress(i, row)``, if given, is called as each row is done (the models take seconds each)."""
    rows = []
    for i, name in enumerate(names or PAPERS, 1):
        entry = PAPERS[name]
        model = create_model(name).eval()
        params = count_params(model)
        macs = count_macs(model, mv.zeros(1, *entry.input_shape)).total
        target_params = entry.released_params_m or entry.params_m
        rows.append(dict(model=name, label=entry.label, source=entry.paper,
                         params_m=params / 1e6, paper_params_m=entry.params_m,
                         params_dev=params / 1e6 / target_params - 1,
                         gmacs=macs / 1e9, paper_gmacs=entry.gmacs,
                         gmacs_dev=None if entry.gmacs is None else macs / 1e9 / entry.gmacs - 1,
                         note=entry.note))
        if progress is not None:
            progress(i, rows[-1])
        del model
        gc.collect()
    return rows


def _gmacs_cells(row) -> tuple[str, str]:
    """The paper's GMACs and our deviation as text; '—' where the paper prints no FLOPs."""
    if row["paper_gmacs"] is None:
        return "—", "—"
    return f"{row['paper_gmacs']:g}", f"{row['gmacs_dev']:+.1%}"


def format_table(rows, markdown: bool = False) -> str:
    if markdown:
        lines = ["| model | paper | params (M) | paper | Δ | GMACs | paper | Δ | note |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            paper, dev = _gmacs_cells(r)
            lines.append(f"| `{r['model']}` | {r['label']} | {r['params_m']:.2f} | {r['paper_params_m']:g} | "
                         f"{r['params_dev']:+.1%} | {r['gmacs']:.3f} | {paper} | {dev} | "
                         f"{r['note']} |")
        return "\n".join(lines)
    lines = [f"{'model':<18} {'paper':<12} {'params M':>9} {'paper':>7} {'Δ':>6}  {'GMACs':>7} {'paper':>6} {'Δ':>6}"]
    for r in rows:
        paper, dev = _gmacs_cells(r)
        lines.append(f"{r['model']:<18} {r['label']:<12} {r['params_m']:>9.2f} {r['paper_params_m']:>7g} "
                     f"{r['params_dev']:>+6.1%}  {r['gmacs']:>7.3f} {paper:>6} {dev:>6}")
        if r["note"]:
            lines.append(f"{'':<18}   note: {r['note']}")
    lines.append("Δ params is against the released model where the paper's table disagrees with it (see note).")
    return "\n".join(lines)
