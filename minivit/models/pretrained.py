"""Trained weights as files: ``save_pretrained`` / ``load_pretrained``, and the weights that ship.

The format is **safetensors** (a JSON header, then the raw little-endian arrays: no pickle,
nothing executes on load), with timm's ``state_dict`` keys, so a file written here loads into
timm's twin of the model unchanged, and the other way round:

    save_pretrained(model, "vit.safetensors")                  # minivit → file
    timm_model.load_state_dict(safetensors.torch.load_file("vit.safetensors"))    # file → timm
    load_pretrained(model, "vit.safetensors")                  # file → minivit

Only the ``safetensors`` package's NumPy API is used: loading needs no torch.

Shipped weights live inside the package, in ``minivit/weights/<model>.safetensors`` (float16, to
keep the wheel small), each with a ``<model>.json`` record beside it that says how it was trained
and what it scored (``create_model(name, pretrained=True)`` reads both; a test re-measures the
score). ``pretrained_models()`` lists them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from minivit import backend

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
"""Where the shipped weights are (``minivit/weights``); tests point it elsewhere."""


def _safetensors_numpy():
    try:
        import safetensors.numpy
    except ImportError:
        raise ImportError("minivit's weight files are safetensors files: pip install safetensors "
                          "(its NumPy API is all minivit uses; torch is not needed)") from None
    return safetensors.numpy


def save_pretrained(model, path, dtype=None, metadata: dict | None = None) -> Path:
    """Write ``model.state_dict()`` to the safetensors file ``path``.

    ``dtype`` (e.g. ``np.float16``) casts the floating-point arrays; integer buffers keep
    theirs. ``metadata`` (str → str) goes into the file's header beside ``format: pt``, the
    tag timm and transformers expect of a PyTorch-layout file. The file is written whole or
    not at all (a temporary file renamed into place)."""
    st = _safetensors_numpy()
    tensors = {}
    for k, a in model.state_dict().items():
        a = np.ascontiguousarray(backend.to_numpy(a))
        if dtype is not None and a.dtype.kind == "f":
            a = a.astype(dtype)
        tensors[k] = a
    header = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    st.save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)
    return path


def load_pretrained(model, path, strict: bool = True):
    """Load a safetensors file (minivit's or timm's) into ``model``; returns ``model``.

    Each array is cast to the dtype of the parameter it replaces and moved to its device
    (``Module.load_state_dict``), so float16 files load into float32 or float64 models."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_pretrained: no file {path}")
    model.load_state_dict(_safetensors_numpy().load_file(str(path)), strict=strict)
    return model


def pretrained_models() -> list:
    """Names of the models whose trained weights ship with the package."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors") if p.with_suffix(".json").is_file())


def pretrained_record(name: str) -> dict:
    """The record beside a shipped weight file: data, recipe, command, accuracy."""
    path = WEIGHTS_DIR / f"{name}.json"
    if not path.is_file():
        have = ", ".join(pretrained_models()) or "none yet"
        raise ValueError(f"no trained weights ship for {name!r} (shipped: {have}); train it with "
                         f"python -m minivit.train --model {name} and load the checkpoint instead")
    return json.loads(path.read_text())


def load_shipped(model, name: str):
    """Load the shipped weights of ``name`` into ``model`` (what ``pretrained=True`` does)."""
    pretrained_record(name)                     # the clear error when there are none
    load_pretrained(model, WEIGHTS_DIR / f"{name}.safetensors")
    model.pretrained_cfg = {"name": name, "file": f"{name}.safetensors", **pretrained_record(name)}
    return model
