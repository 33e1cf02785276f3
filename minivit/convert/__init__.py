"""Weights between minivit and timm / torchvision / Hugging Face transformers / MONAI.

minivit's models use timm's parameter names and shapes, so moving weights is
``model.load_state_dict(torch_model.state_dict())``; what needs code is reading
a reference model's *configuration* to build the matching minivit model (MONAI's UNETR:
``from_monai``, convert/monai.py, with MONAI's names). That
lives in one small module per architecture (``convert/<arch>.py``, a function
``build_from_timm(torch_model)``; for torchvision, ``build_from_torchvision(torch_model)``, dispatched
by :func:`from_torchvision`; for Hugging Face transformers, ``from_transformers(hf_model)``,
dispatched on the class by :func:`from_transformers`). No module here imports torch: the torch
model is only read through its attributes and ``state_dict()``.
"""
from __future__ import annotations

import importlib

import numpy as np

# timm class name → minivit.convert module with build_from_timm(torch_model)
_TIMM = {
    "VisionTransformer": "vit",
    "VisionTransformerDistilled": "vit",
    "SwinTransformer": "swin",
    "PyramidVisionTransformerV2": "pvt_v2",
    "PoolingVisionTransformer": "pit",
    "MlpMixer": "mlp_mixer",
    "ConvMixer": "convmixer",
    "MultiScaleVit": "mvitv2",
    "Xcit": "xcit",
}


def torch_state_dict(torch_model) -> dict:
    """A torch module's state_dict as {name: numpy array} (float64 stays float64)."""
    return {k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()}


def from_timm(torch_model, dtype=None):
    """The minivit twin of a timm model: same configuration, same weights, in eval mode.

    dtype defaults to the torch model's own (float32 or float64).
    """
    name = type(torch_model).__name__
    if name not in _TIMM:
        raise ValueError(f"from_timm: no converter for timm's {name}; supported: {', '.join(sorted(_TIMM))}")
    module = importlib.import_module(f"minivit.convert.{_TIMM[name]}")
    return _load(module.build_from_timm(torch_model), torch_model, dtype).eval()


# Hugging Face transformers class name → minivit.convert module with from_transformers(hf_model, dtype)
_TRANSFORMERS = {
    "CvtForImageClassification": "cvt",
    "SegformerForSemanticSegmentation": "segformer",
    "SegformerModel": "segformer",
    "SegformerForImageClassification": "segformer",
    "TimesformerForVideoClassification": "timesformer",
}


def from_transformers(hf_model, dtype=None):
    """The minivit twin of a Hugging Face transformers model: same configuration, same
    weights, in eval mode; dtype defaults to the model's own (float32 or float64)."""
    name = type(hf_model).__name__
    if name not in _TRANSFORMERS:
        raise ValueError(f"from_transformers: no converter for transformers' {name}; supported: "
                         f"{', '.join(sorted(_TRANSFORMERS))}")
    module = importlib.import_module(f"minivit.convert.{_TRANSFORMERS[name]}")
    return module.from_transformers(hf_model, dtype=dtype)


# torchvision class name → minivit.convert module with build_from_torchvision(torch_model)
_TORCHVISION = {
    "MViT": "mvit_video",
}


def from_torchvision(torch_model, dtype=None):
    """The minivit twin of a torchvision model (``torchvision.models.video.MViT``, v1 configurations):
    same configuration, same weights (torchvision's names), in eval mode; dtype defaults to the
    torch model's own (float32 or float64)."""
    name = type(torch_model).__name__
    if name not in _TORCHVISION:
        raise ValueError(f"from_torchvision: no converter for torchvision's {name}; supported: "
                         f"{', '.join(sorted(_TORCHVISION))}")
    module = importlib.import_module(f"minivit.convert.{_TORCHVISION[name]}")
    return _load(module.build_from_torchvision(torch_model), torch_model, dtype).eval()


def _load(model, torch_model, dtype):
    """``model`` in ``dtype`` (default: the torch model's) with ``torch_model``'s state_dict loaded."""
    state = torch_state_dict(torch_model)
    if dtype is None:
        dtype = next(iter(v.dtype for v in state.values() if v.dtype.kind == "f"), np.float32)
    model.to(dtype=dtype)
    model.load_state_dict(state)
    return model


def from_monai(monai_model, dtype=None):
    """The minivit twin of a MONAI model (``monai.networks.nets.UNETR``): same configuration, same
    weights and buffers, in the MONAI model's train/eval mode; dtype defaults to the MONAI model's."""
    from minivit.convert import monai
    return _load(monai.build_from_monai(monai_model), monai_model, dtype).train(monai_model.training)


def cvt_from_transformers(hf_model, dtype=None):
    """The minivit CvT twin of Hugging Face transformers' ``CvtForImageClassification``
    (the CvT case of :func:`from_transformers`, kept under its old name)."""
    from minivit.convert import cvt
    return cvt.from_transformers(hf_model, dtype=dtype)


def timesformer_from_transformers(hf_model, dtype=None):
    """The minivit TimeSformer twin of Hugging Face transformers' ``TimesformerForVideoClassification``
    (the TimeSformer case of :func:`from_transformers`)."""
    from minivit.convert import timesformer
    return timesformer.from_transformers(hf_model, dtype=dtype)
