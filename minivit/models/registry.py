"""Model registry: ``create_model(name, **overrides)`` and ``list_models()``, as timm."""
from __future__ import annotations

import argparse
import difflib
import fnmatch
import json

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


# The pyramid models that give multi-scale features (``features_only=True``).
FEATURE_MODELS = ("pvt_*", "pvt_v2_*", "swin_*", "pit_*", "mvitv2_*", "cvt_*", "mit_*")


def create_model(name: str, pretrained: bool = False, features_only: bool = False, out_indices=None,
                 **overrides):
    """Build a registered model; keyword overrides go to its constructor (timm's names).

    ``pretrained=True`` loads the trained weights that ship with the package, offline
    (``minivit.models.pretrained``); the model's ``pretrained_cfg`` then says how they were
    trained and what they scored.

    ``features_only=True`` (the pyramid models: ``FEATURE_MODELS``) returns the model as a
    backbone, ``minivit.models.features.FeatureGetterNet``: ``forward(x)`` gives the list
    of stage maps (B, C_i, H/s_i, W/s_i) picked by ``out_indices`` (None: every stage; an
    int n: the last n; a list of stage indices), and ``.feature_info`` their channels and
    strides, as timm."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Available: {', '.join(list_models())}")
    if out_indices is not None and not features_only:
        raise ValueError(f"create_model: out_indices={out_indices!r} picks feature maps, which needs "
                         f"features_only=True")
    if pretrained:
        from minivit.models.pretrained import load_shipped, pretrained_record
        # built for the classes the weights were trained on (a shipped segmentation model: the
        # 5 of the shapes scenes, where the factory's default is ADE20K's 150)
        classes = pretrained_record(name).get("num_classes")
        if classes is not None and "num_classes" not in overrides:
            overrides["num_classes"] = classes
    model = _MODELS[name](**overrides)
    if pretrained:
        load_shipped(model, name)
    if features_only:
        from minivit.models.features import features_only as _features_only, supports_features
        if not supports_features(model):
            raise ValueError(f"create_model: {name!r} ({type(model).__name__}) is not a pyramid and has no "
                             f"multi-scale features, so features_only=True does not apply; it works for "
                             f"{', '.join(FEATURE_MODELS)}")
        model = _features_only(model, out_indices)
    return model


# The command-line form of constructor overrides, shared by train and bench: --model-kwargs K=V,...
def parse_model_kwargs(text: str) -> dict:
    """'depth=1,num_heads=2,depths=[1,1]' → {'depth': 1, 'num_heads': 2, 'depths': [1, 1]} (JSON values)."""
    out = {}
    for item in _split_top(text or ""):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"--model-kwargs items must be KEY=VALUE, got {item!r}")
        k, v = (s.strip() for s in item.split("=", 1))
        low = v.lower()
        if low in ("true", "false"):
            out[k] = low == "true"
        elif low in ("none", "null"):
            out[k] = None
        else:
            try:
                out[k] = json.loads(v)
            except json.JSONDecodeError:
                out[k] = v
    return out


def _split_top(text: str):
    """Split on commas outside brackets: 'depths=[1,1],x=2' → ['depths=[1,1]', 'x=2']."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]
