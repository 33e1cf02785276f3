"""The README's main command, `python -m minivit`, end to end (short run)."""
import subprocess
import sys

import minivit.__main__ as main_mod


def test_main_trains_the_spirals():
    acc = main_mod.main(["--steps", "300", "--device", "cpu"])
    assert acc > 0.9  # three classes: chance is 1/3


def test_main_help_runs():
    out = subprocess.run([sys.executable, "-m", "minivit", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--device" in out.stdout


def test_spirals_are_deterministic():
    a, la = main_mod.spirals(seed=3)
    b, lb = main_mod.spirals(seed=3)
    assert (a == b).all() and (la == lb).all() and a.dtype.name == "float32"
