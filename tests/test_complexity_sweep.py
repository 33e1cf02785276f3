"""The measured-growth sweep (minivit.complexity.sweep): the fit, the grids, a real (tiny) run, the CLI."""
import json

import numpy as np
import pytest

from minivit.complexity import sweep
from minivit.complexity.__main__ import main


def test_fit_slope_recovers_a_power_law_over_the_largest_grids():
    # t = a·hw + b·(hw)²: the fit over the largest grids sees the quadratic term; a fit that
    # took the small grids too would see the crossover and come out well below 2
    rows = [dict(tokens=n, forward_s=1e-6 * n + 1e-9 * n * n) for n in np.geomspace(16, 1e6, 12).astype(int)]
    assert abs(sweep.fit_slope(rows, "forward_s") - 2) < 0.01
    assert sweep.fit_slope(rows, "forward_s", n_large=len(rows)) < 1.8
    exact = [dict(tokens=n, forward_s=3e-7 * n ** 1.5) for n in (100, 400, 1600, 6400)]
    assert sweep.fit_slope(exact, "forward_s") == pytest.approx(1.5, abs=1e-9)


def test_slope_ok_is_the_issues_tolerance():
    ok = dict(theory=2, slope_forward=2.14, slope_forward_backward=1.86)
    assert sweep.slope_ok(ok)
    assert not sweep.slope_ok(dict(ok, slope_forward=2.16))
    assert not sweep.slope_ok(dict(ok, slope_forward_backward=float("nan")))


@pytest.mark.parametrize("multiple", [1, 2, 4, 7, 8])
def test_grid_sides_are_multiples_and_grow(multiple):
    sides = sweep._sides(multiple, 20 * multiple)
    assert sides == sorted(set(sides)) and len(sides) >= sweep.FIT_POINTS
    assert all(s % multiple == 0 for s in sides) and sides[-1] <= 20 * multiple


@pytest.mark.parametrize("name", list(sweep.LAYERS))
def test_every_layer_runs_and_records_its_score_memory(name):
    r = sweep.measure(name, "cpu", C=8, heads=2, max_side=8, repeats=1)
    assert r["layer"] == name and r["theory"] in (1, 2)
    rows = r["rows"]
    assert [row["tokens"] for row in rows] == [row["side"] ** 2 for row in rows]
    assert all(row["forward_s"] > 0 and row["forward_backward_s"] > 0 for row in rows)
    # the softmax output the layer built: MSA's is heads·(hw)² float32 numbers
    if name == "MSA":
        assert [row["score_bytes"] for row in rows] == [2 * row["tokens"] ** 2 * 4 for row in rows]
    assert np.isfinite(r["slope_forward"]) and np.isfinite(r["slope_forward_backward"])


def test_cli_sweep_writes_the_json_and_the_figure_from_fresh_processes(tmp_path, capsys):
    main(["sweep", "--device", "cpu", "--max-side", "6", "--dim", "8", "--repeats", "1", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "complexity_cpu.json").read_text())
    assert [r["layer"] for r in record["results"]] == list(sweep.LAYERS)
    assert record["device"] == "cpu" and record["C"] == 8 and record["threads"] == 1
    assert (tmp_path / "complexity_cpu.png").stat().st_size > 10_000
    assert "wrote" in out and all(name in out for name in sweep.LAYERS)


def test_measure_sets_the_threads_while_timing_and_puts_them_back(monkeypatch):
    """threads=1: minivit's and BLAS's thread counts are 1 inside the timed calls, and what
    they were afterwards."""
    from minivit import backend, blas
    seen = []
    real = sweep._time
    monkeypatch.setattr(sweep, "_time", lambda fn, device, repeats: seen.append(
        (backend.get_num_threads(), blas.blas_threads())) or real(fn, device, repeats))
    before = backend.get_num_threads(), blas.blas_threads()
    backend.set_num_threads(2)
    try:
        sweep.measure("XCA", "cpu", C=8, heads=2, max_side=4, repeats=1, threads=1)
        assert seen and all(n == 1 and b in (1, None) for n, b in seen)
        assert backend.get_num_threads() == 2
    finally:
        backend.set_num_threads(before[0])


def test_cli_sweep_rejects_zero_threads(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--threads", "0", "--out-dir", "runs/complexity"])
    assert "error: --threads 0" in capsys.readouterr().err
