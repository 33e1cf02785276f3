"""Small helpers the lessons share: device, quick mode, where figures go.

    from minivit.notebook import setup, figure_path
    DEVICE, QUICK = setup()          # prints what produced this notebook's outputs
    exercise = exercises("03_vit")   # the decorator of the lesson's exercise stubs

Quick mode shrinks data and epochs so a lesson runs top to bottom on a 2-core
CPU in about a minute. It is on when ``MINIVIT_QUICK=1``, off when
``MINIVIT_QUICK=0``, and otherwise on exactly when no GPU is present.
"""
from __future__ import annotations

import functools
import importlib.util
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


# --------------------------------------------------------------------------- exercises
# A lesson's exercises are stubs the reader fills in, with the checks right under them:
#
#     @exercise
#     def vit_params(img=32, patch=4, ...):
#         raise NotImplementedError("Exercise 1: write vit_params")
#
#     assert vit_params() == count_params(vit)
#
# The reference solutions are not in the notebook (the reader should not see the answer next to
# the question): they live in lessons/solutions/<lesson>.py, one function (or one method, in a
# class of the same name) per stub. With MINIVIT_SOLUTIONS=1, as CI runs the lessons and as the
# committed outputs were made, ``exercise`` swaps each stub for its solution, which proves that
# the checks pass; otherwise it returns the reader's own function untouched.

def solutions_on() -> bool:
    """MINIVIT_SOLUTIONS=1 (or a folder of solution files): the reference solutions replace the stubs."""
    return os.environ.get("MINIVIT_SOLUTIONS", "").strip() not in ("", "0", "false", "False")


def solutions_dir() -> pathlib.Path:
    """``lessons/solutions`` of the repository, or the folder MINIVIT_SOLUTIONS names."""
    flag = os.environ.get("MINIVIT_SOLUTIONS", "").strip()
    if flag and flag not in ("1", "true", "True"):
        return pathlib.Path(flag)
    return pathlib.Path(__file__).resolve().parents[1] / "lessons" / "solutions"


@functools.lru_cache(maxsize=None)
def _solutions(path: str):
    spec = importlib.util.spec_from_file_location(f"minivit_solutions_{pathlib.Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exercises(lesson: str):
    """The decorator for lesson ``lesson``'s exercise stubs (``exercises("03_vit")``).

    Without MINIVIT_SOLUTIONS it returns the stub itself: the reader's code runs and the checks
    judge it. With it, the stub's namesake in ``lessons/solutions/<lesson>.py`` (looked up by
    ``__qualname__``: ``Softplus.backward`` is the method ``backward`` of class ``Softplus``
    there)."""
    def exercise(fn):
        if not solutions_on():
            return fn
        path = solutions_dir() / f"{lesson}.py"
        if not path.is_file():
            raise FileNotFoundError(f"MINIVIT_SOLUTIONS is set but {path} does not exist: unset it to run "
                                    f"your own solutions, or point it at the folder of solution files")
        obj = _solutions(str(path))
        name = fn.__qualname__.rsplit("<locals>.", 1)[-1]       # (a stub made inside a function)
        for part in name.split("."):
            if not hasattr(obj, part):
                raise AttributeError(f"{path} has no solution {name!r} for this exercise")
            obj = getattr(obj, part)
        return obj
    return exercise


# --------------------------------------------------------------------------- "from ViT to X"
def source_diff(before, after, context: int = 1) -> str:
    """A unified diff of two functions' (or classes') source code, as the package has them:
    what an architecture lesson's block changes in ViT's block. ``-`` lines are ``before``'s,
    ``+`` lines ``after``'s; each side's source is dedented and named by its qualified name."""
    import difflib
    import inspect
    import textwrap

    def lines(obj):
        return textwrap.dedent(inspect.getsource(obj)).splitlines()

    def name(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    return "\n".join(difflib.unified_diff(lines(before), lines(after), name(before), name(after),
                                          n=context, lineterm=""))


def cost_table(rows: dict, sides=(32, 224)) -> str:
    """Parameters and MACs of registered models at two image sizes, as a text table.

    ``rows``: ``{label: (model at the first size, model at the second)}``, registry names
    (e.g. ``{"ViT": ("vit_tiny", "deit_tiny_224"), "PVT": ("pvt_tiny", "pvt_v1_tiny_224")}``);
    each model is built untrained (counts do not depend on the weights), counted on one image
    of its size with ``complexity.count_macs``, and dropped. ``None``: no model at that size."""
    from minivit.autograd import no_grad
    from minivit.complexity import count_macs, count_params
    from minivit.models import create_model

    w = max([20] + [len(n) + 1 for names in rows.values() for n in names if n])    # the name column
    head = f"{'':28}" + "".join(f"{f'{s}×{s}: model':>{w}} {'params':>8} {'GMACs':>7}" for s in sides)
    out = [head]
    for label, names in rows.items():
        cells = []
        for side, name in zip(sides, names):
            if name is None:                      # no such configuration
                cells.append(f"{'—':>{w}} {'':8} {'':7}")
                continue
            model = create_model(name).eval()
            with no_grad():
                macs = count_macs(model, minivit.randn(1, 3, side, side)).total
            cells.append(f"{name:>{w}} {count_params(model) / 1e6:7.2f}M {macs / 1e9:7.3f}")
        out.append(f"{label:28}" + "".join(cells))
    return "\n".join(out)
