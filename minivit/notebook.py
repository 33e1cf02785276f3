"""Small helpers the lessons share: device, quick mode, where figures go.

    from minivit.notebook import setup, figure_path
    DEVICE, QUICK = setup()          # prints what produced this notebook's outputs

Quick mode shrinks data and epochs so a lesson runs top to bottom on a 2-core
CPU in about a minute. It is on when ``MINIVIT_QUICK=1``, off when
``MINIVIT_QUICK=0``, and otherwise on exactly when no GPU is present.
"""
from __future__ import annotations

import os
import pathlib
import platform

import numpy as np

import minivit
from minivit import backend


def quick_mode() -> bool:
    flag = os.environ.get("MINIVIT_QUICK")
    if flag is not None:
        return flag.strip() not in ("0", "", "false", "False")
    return not backend.cupy_available()


def setup(seed: int = 0):
    """Pick the device (the GPU when CuPy sees one), seed everything, and say so.

    Returns ``(device, quick)``. The printed line is the notebook's record of
    which device and mode produced its outputs.
    """
    device = backend.default_device()
    quick = quick_mode()
    backend.manual_seed(seed)
    print(f"minivit {minivit.__version__} | device: {device} ({backend.device_name(device)}) | "
          f"mode: {'quick (MINIVIT_QUICK=1: small data, few epochs)' if quick else 'full'} | "
          f"numpy {np.__version__}, Python {platform.python_version()}")
    return device, quick


def figure_path(name: str) -> pathlib.Path:
    """``figures/<name>.png`` at the repository root (``$MINIVIT_FIGURES`` overrides the folder)."""
    folder = os.environ.get("MINIVIT_FIGURES")
    root = pathlib.Path(folder) if folder else pathlib.Path(__file__).resolve().parents[1] / "figures"
    root.mkdir(parents=True, exist_ok=True)
    return root / f"{name}.png"


def run_dir(name: str) -> pathlib.Path:
    """Where a lesson's training run goes: ``runs/lessons/<name>`` (``$MINIVIT_RUNS`` overrides the folder)."""
    folder = os.environ.get("MINIVIT_RUNS")
    root = pathlib.Path(folder) if folder else pathlib.Path(__file__).resolve().parents[1] / "runs" / "lessons"
    return root / name
