"""Small helpers the lessons share: device, mode, where figures go.

    from minivit.notebook import setup, figure_path, mode
    DEVICE, QUICK = setup()          # prints what produced this notebook's outputs
    MODE = mode()                    # "quick", "cpu" or "full"
    exercise = exercises("03_vit")   # the decorator of the lesson's exercise stubs

A lesson that trains in its own cells sizes its runs by the mode:

- **quick**: small data, few epochs, so a lesson runs top to bottom on a 2-core CPU in
  about a minute (CI); the runs show the machinery, not results.
- **cpu**: the full CIFAR-10 training and test sets, each run sized to a few minutes on
  a 2-core CPU: long enough to learn something, short enough to rerun on a laptop.
- **full**: the papers' schedules (100+ epochs), which need a GPU.

``MINIVIT_MODE=quick|cpu|full`` picks one. Without it, ``MINIVIT_QUICK=1`` means quick and
``MINIVIT_QUICK=0`` full, and with neither, quick exactly when no GPU is present. Lessons
that do not train read only ``QUICK`` (``setup()``'s second value: true in quick mode only).
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


MODES = ("quick", "cpu", "full")
_MODE_LINE = {"quick": "quick (small data, few epochs)",
              "cpu": "cpu (full CIFAR-10, runs of a few minutes on a 2-core CPU)",
              "full": "full (the papers' schedules, for a GPU)"}


def _quick_flag():
    """MINIVIT_QUICK as a bool, or None when it is not set."""
    flag = os.environ.get("MINIVIT_QUICK")
    if flag is None:
        return None
    return flag.strip() not in ("0", "", "false", "False")


def mode() -> str:
    """The lessons' mode: ``"quick"``, ``"cpu"`` or ``"full"`` (see the module's docstring).

    ``MINIVIT_MODE`` decides when set; otherwise ``MINIVIT_QUICK`` (1: quick, 0: full); otherwise
    quick without a GPU and full with one. A ``MINIVIT_QUICK`` that contradicts ``MINIVIT_MODE``
    is an error rather than a silent choice."""
    quick = _quick_flag()
    chosen = os.environ.get("MINIVIT_MODE", "").strip().lower()
    if chosen:
        if chosen not in MODES:
            raise ValueError(f"MINIVIT_MODE={os.environ['MINIVIT_MODE']!r} is not a mode: use one of "
                             f"{', '.join(MODES)} (or unset it and use MINIVIT_QUICK=1/0)")
        if quick is not None and quick != (chosen == "quick"):
            raise ValueError(f"MINIVIT_MODE={chosen} contradicts MINIVIT_QUICK={os.environ['MINIVIT_QUICK']}: "
                             f"unset MINIVIT_QUICK (MINIVIT_MODE decides)")
        return chosen
    if quick is not None:
        return "quick" if quick else "full"
    return "full" if backend.cupy_available() else "quick"


def quick_mode() -> bool:
    """True in quick mode (:func:`mode` is ``"quick"``)."""
    return mode() == "quick"


def setup(seed: int = 0):
    """Pick the device (the GPU when CuPy sees one), seed everything, and say so.

    Returns ``(device, quick)``: ``quick`` is true in quick mode only; :func:`mode` tells quick,
    cpu and full apart. The printed line is the notebook's record of which device and mode
    produced its outputs.
    """
    device = backend.default_device()
    chosen = mode()
    backend.manual_seed(seed)
    print(f"minivit {minivit.__version__} | device: {device} ({backend.device_name(device)}) | "
          f"mode: {_MODE_LINE[chosen]} | numpy {np.__version__}, Python {platform.python_version()}")
    return device, chosen == "quick"


def figure_path(name: str) -> pathlib.Path:
    """``figures/<name>.png`` at the repository root (``$MINIVIT_FIGURES`` overrides the folder)."""
    folder = os.environ.get("MINIVIT_FIGURES")
    root = pathlib.Path(folder) if folder else pathlib.Path(__file__).resolve().parents[1] / "figures"
    root.mkdir(parents=True, exist_ok=True)
    return root / f"{name}.png"


# --------------------------------------------------------------------------- one figure style
FIGURE_DPI = 100
# Colour maps for categories (window ids, stage ids): a colour bar would say nothing there.
_CATEGORICAL = {"tab10", "tab20", "tab20b", "tab20c", "Set1", "Set2", "Set3", "Pastel1", "Pastel2",
                "Paired", "Accent", "Dark2", "binary", "gray", "Greys"}


def _colorbar_label(cb) -> str:
    return (cb.ax.get_ylabel() or cb.ax.get_xlabel() or "").strip()


def figure_style_problems(fig) -> list[str]:
    """What breaks the lessons' one figure style in ``fig`` (empty: none).

    - every panel that plots data labels each axis that has tick labels (a panel sharing an
      axis with a labelled one may leave it to that one);
    - every colour-mapped image (a 2-D array through a colour map, not an RGB picture, not a
      categorical map and not a two-valued mask) has a labelled colour bar: its own, or one drawn for its colour map
      and limits (panels that share one scale share one bar), so a uniform map cannot look
      like the brightest one;
    - an axis or colour bar about accuracy says "%", and a y axis in % plots percentages, not
      fractions (the console prints percent).
    """
    problems = []
    is_bar = [getattr(ax, "_colorbar", None) is not None or ax.get_label() == "<colorbar>" for ax in fig.axes]
    bars = [ax._colorbar for ax, b in zip(fig.axes, is_bar) if b and getattr(ax, "_colorbar", None) is not None]
    for cb in bars:
        if not _colorbar_label(cb):
            problems.append("a colour bar has no label: cb.set_label('what it shows (unit)')")
    scales = {(cb.mappable.get_cmap().name, tuple(np.round(cb.mappable.get_clim(), 12))) for cb in bars}
    for i, ax in enumerate(fig.axes):
        if is_bar[i]:
            continue
        where = f"panel {ax.get_title()!r}" if ax.get_title() else "a panel"
        for im in ax.get_images():
            a = im.get_array()
            if (a is None or a.ndim != 2 or im.get_cmap().name.removesuffix("_r") in _CATEGORICAL
                    or np.unique(np.asarray(a)).size <= 2):
                continue                                # a picture, categories, or a mask
            key = (im.get_cmap().name, tuple(np.round(im.get_clim(), 12)))
            if im.colorbar is None and key not in scales:
                problems.append(f"{where}: a colour-mapped image without a colour bar for its scale "
                                f"(fig.colorbar(im, ax=...) and set_label; one bar for panels with one vmin/vmax)")
        has_data = bool(ax.lines or ax.collections or ax.patches or ax.get_images())
        if ax.axison and has_data:
            for axis, name in ((ax.xaxis, "x"), (ax.yaxis, "y")):
                if (not axis.get_visible() or axis.get_label_text().strip()
                        or not any(t.get_text().strip() for t in axis.get_ticklabels())):
                    continue                            # hidden, labelled, or no tick labels (a picture)
                shared = (ax.get_shared_x_axes() if name == "x" else ax.get_shared_y_axes()).get_siblings(ax)
                if any(o is not ax and (o.xaxis if name == "x" else o.yaxis).get_label_text().strip() for o in shared):
                    continue
                problems.append(f"{where}: no {name} label (ax.set_{name}label('what (unit)'))")
        for axis, name in ((ax.xaxis, "x"), (ax.yaxis, "y")):
            text = axis.get_label_text()
            if "accuracy" in text.lower() and "%" not in text:
                problems.append(f"{where}: the {name} axis {text!r} is an accuracy without '%'")
        if "%" in ax.yaxis.get_label_text():
            ys = [np.nanmax(np.abs(np.asarray(line.get_ydata(), dtype=float))) for line in ax.lines
                  if len(line.get_ydata()) > 1]
            if ys and max(ys) <= 1.0:
                problems.append(f"{where}: the y axis says % but the lines stay within [0, 1]: plot 100 × the fraction")
    for cb in bars:
        text = _colorbar_label(cb)
        if "accuracy" in text.lower() and "%" not in text:
            problems.append(f"the colour bar {text!r} is an accuracy without '%'")
    return list(dict.fromkeys(problems))


def save_figure(fig, name: str) -> pathlib.Path:
    """Save ``fig`` as ``figures/<name>.png`` in the lessons' one style (``FIGURE_DPI``, tight
    bounding box), after checking it with :func:`figure_style_problems`: a figure that breaks
    the style raises ValueError listing what to fix, so CI's run of the lessons holds them to it."""
    problems = figure_style_problems(fig)
    audit = os.environ.get("MINIVIT_FIGURE_AUDIT")      # a file: list the problems there and go on
    if problems and audit:
        with open(audit, "a") as f:
            f.writelines(f"{name}: {p}\n" for p in problems)
    elif problems:
        raise ValueError(f"figure {name!r} breaks the lessons' figure style: " + "; ".join(problems))
    path = figure_path(name)
    fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight")
    return path


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
