"""The lessons' mode (minivit.notebook.mode): quick, cpu or full, from MINIVIT_MODE, else
MINIVIT_QUICK, else whether a GPU is present; setup() returns (device, quick) and prints it."""
import importlib.util
import pathlib

import pytest

from minivit import backend, notebook


@pytest.fixture
def env(monkeypatch):
    for var in ("MINIVIT_MODE", "MINIVIT_QUICK"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.parametrize("gpu, expected", [(False, "quick"), (True, "full")])
def test_default_follows_the_gpu(env, gpu, expected):
    env.setattr(backend, "cupy_available", lambda: gpu)
    assert notebook.mode() == expected
    assert notebook.quick_mode() is (expected == "quick")


@pytest.mark.parametrize("flag, expected", [("1", "quick"), ("true", "quick"), ("0", "full"), ("false", "full")])
def test_minivit_quick_as_before(env, flag, expected):
    env.setattr(backend, "cupy_available", lambda: expected == "quick")    # the flag wins over the GPU
    env.setenv("MINIVIT_QUICK", flag)
    assert notebook.mode() == expected


@pytest.mark.parametrize("name", ["quick", "cpu", "full", " CPU "])
def test_minivit_mode_decides(env, name):
    env.setattr(backend, "cupy_available", lambda: False)
    env.setenv("MINIVIT_MODE", name)
    assert notebook.mode() == name.strip().lower()
    assert notebook.quick_mode() is (name.strip().lower() == "quick")


def test_minivit_mode_agreeing_with_minivit_quick(env):
    env.setenv("MINIVIT_MODE", "cpu")
    env.setenv("MINIVIT_QUICK", "0")
    assert notebook.mode() == "cpu"
    env.setenv("MINIVIT_MODE", "quick")
    env.setenv("MINIVIT_QUICK", "1")
    assert notebook.mode() == "quick"


@pytest.mark.parametrize("mode_, quick", [("cpu", "1"), ("full", "1"), ("quick", "0")])
def test_contradiction_is_an_error(env, mode_, quick):
    env.setenv("MINIVIT_MODE", mode_)
    env.setenv("MINIVIT_QUICK", quick)
    with pytest.raises(ValueError, match="contradicts MINIVIT_QUICK"):
        notebook.mode()


def test_unknown_mode_is_an_error(env):
    env.setenv("MINIVIT_MODE", "fast")
    with pytest.raises(ValueError, match="'fast' is not a mode"):
        notebook.mode()


@pytest.mark.parametrize("name", ["quick", "cpu", "full"])
def test_setup_returns_quick_and_prints_the_mode(env, capsys, name):
    env.setenv("MINIVIT_MODE", name)
    device, quick = notebook.setup()
    line = capsys.readouterr().out
    assert quick is (name == "quick")
    assert device == backend.default_device()
    assert "device:" in line and f"mode: {name} " in line


def _run_py():
    path = pathlib.Path(__file__).resolve().parents[1] / "lessons" / "run.py"
    spec = importlib.util.spec_from_file_location("lessons_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_py_mode_option_sets_minivit_mode(env, capsys):
    """--mode cpu sets MINIVIT_MODE and clears MINIVIT_QUICK (an unknown lesson stops it before any run)."""
    pytest.importorskip("nbclient")
    pytest.importorskip("nbformat")
    import os
    env.setenv("MINIVIT_QUICK", "1")
    for var, value in (("MINIVIT_MODE", "full"), ("MINIVIT_SOLUTIONS", "0"), ("MPLBACKEND", "Agg")):
        env.setenv(var, value)                    # recorded, so what run.py sets is undone afterwards
    assert _run_py().main(["--mode", "cpu", "no_such_lesson"]) == 2
    assert os.environ.get("MINIVIT_MODE") == "cpu" and "MINIVIT_QUICK" not in os.environ
    assert notebook.mode() == "cpu"
    assert "no lesson no_such_lesson" in capsys.readouterr().err
