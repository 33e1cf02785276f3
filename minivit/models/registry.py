"""Model registry: ``create_model(name, **overrides)`` and ``list_models()``, as timm."""
from __future__ import annotations

import difflib
import fnmatch

_MODELS: dict = {}


def register_model(fn):
    """Decorator: make a model factory available to create_model under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str | None = None) -> list:
    names = sorted(_MODELS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def model_entrypoint(name: str):
    """The factory function registered under ``name`` (timm's name for this accessor)."""
    if name not in _MODELS:
        create_model(name)  # raises the unknown-model error, with suggestions
    return _MODELS[name]


def create_model(name: str, **overrides):
    """Build a registered model; keyword overrides go to its constructor (timm's names)."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Available: {', '.join(list_models())}")
    return _MODELS[name](**overrides)
