"""Multi-scale features from the pyramid models, with timm's feature API.

Detection and segmentation heads (FPN, SegFormer's MLP decoder, UPerNet) read a
pyramid backbone at several scales: the map of every stage, (B, C_i, H/s_i, W/s_i).
timm's API for this, which minivit follows name for name:

* ``model.feature_info``: a list of dicts, one per stage,
  ``dict(num_chs=C_i, reduction=s_i, module='stages.i')`` (the module whose output
  the map is, in the model's own state_dict names).
* ``model.forward_intermediates(x, indices=None, norm=False, stop_early=False,
  output_fmt='NCHW', intermediates_only=False)``: the stage maps picked by
  ``indices`` (None: all; an int n: the last n; a sequence: those, negative ones
  counted from the end), as a list; with ``intermediates_only=False`` also the
  final features ``forward_features`` would give, as ``(final, intermediates)``.
* ``create_model(name, features_only=True, out_indices=(…))``: the model wrapped in
  :class:`FeatureGetterNet`, whose ``forward(x)`` returns the list of maps and whose
  ``feature_info`` is a :class:`FeatureInfo` (``.channels()``, ``.reduction()``,
  ``.module_name()`` of the chosen stages).

What a "stage map" is, and what ``norm=True`` does, is each model's (timm's where
timm has the model): see its ``forward_intermediates``.
"""
from __future__ import annotations

from minivit import nn


def feature_take_indices(num_features: int, indices=None, name: str = "indices") -> tuple:
    """timm's rule for which of ``num_features`` maps to take → (sorted-as-given list of
    absolute indices, the largest). None: all; int n: the last n; a sequence: those
    indices, negative ones counted from the end."""
    if indices is None:
        indices = num_features
    if isinstance(indices, bool) or not isinstance(indices, (int, list, tuple)):
        raise ValueError(f"{name} must be None, an int (the last n stages) or a list of stage indices, "
                         f"got {indices!r}")
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"{name}={indices} asks for the last {indices} stage maps, but the model has "
                             f"{num_features} stages; use 1 to {num_features}, or a list of indices")
        take = [num_features - indices + i for i in range(indices)]
    else:
        if len(indices) == 0:
            raise ValueError(f"{name} is empty; give at least one stage index (0 to {num_features - 1})")
        take = []
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, int) or not -num_features <= i < num_features:
                raise ValueError(f"{name}={tuple(indices)}: stage index {i!r} is out of range for a model with "
                                 f"{num_features} stages; use 0 to {num_features - 1} (or -{num_features} to -1)")
            take.append(i + num_features if i < 0 else i)
    return take, max(take)


def check_output_fmt(output_fmt: str, allowed, model_name: str) -> None:
    if output_fmt not in allowed:
        raise ValueError(f"{model_name}.forward_intermediates: output_fmt={output_fmt!r} is not supported; "
                         f"use {' or '.join(map(repr, allowed))}")


class FeatureInfo:
    """timm's ``FeatureInfo``: the per-stage dicts of a model and the stages taken.

    Without ``idx`` the accessors answer for the taken stages (``out_indices``); with an
    int or a list they answer for those stages of the whole model.
    """

    def __init__(self, feature_info: list, out_indices):
        prev = 1
        for i, fi in enumerate(feature_info):
            missing = {"num_chs", "reduction", "module"} - set(fi)
            if missing:
                raise ValueError(f"FeatureInfo: stage {i}'s entry {fi} lacks {sorted(missing)}; each entry is "
                                 f"dict(num_chs=, reduction=, module=)")
            if fi["reduction"] < prev:
                raise ValueError(f"FeatureInfo: reductions must not decrease from stage to stage, got "
                                 f"{[f['reduction'] for f in feature_info]}")
            prev = fi["reduction"]
        self.info = [dict(fi, index=i) for i, fi in enumerate(feature_info)]
        self.out_indices = tuple(out_indices)

    def get(self, key: str, idx=None):
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, (list, tuple)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def get_dicts(self, keys=None, idx=None):
        pick = self.out_indices if idx is None else idx
        if isinstance(pick, int):
            return self.info[pick] if keys is None else {k: self.info[pick][k] for k in keys}
        return [self.info[i] if keys is None else {k: self.info[i][k] for k in keys} for i in pick]

    def channels(self, idx=None):
        """Channels C_i of each taken map."""
        return self.get("num_chs", idx)

    def reduction(self, idx=None):
        """Output stride s_i of each taken map (input size / map size, for sizes the stride divides)."""
        return self.get("reduction", idx)

    def module_name(self, idx=None):
        """The module (state_dict name inside the model) whose output each taken map is."""
        return self.get("module", idx)

    def __getitem__(self, item):
        return self.info[item]

    def __len__(self):
        return len(self.info)

    def __repr__(self):
        return (f"FeatureInfo(out_indices={self.out_indices}, channels={self.channels()}, "
                f"reduction={self.reduction()})")


def supports_features(model) -> bool:
    return hasattr(model, "forward_intermediates") and hasattr(model, "feature_info")


class FeatureGetterNet(nn.Module):
    """A backbone: images (B, C, H, W) → the list of stage maps picked by ``out_indices``.

    timm's ``FeatureGetterNet``: it calls the model's ``forward_intermediates`` (with
    ``stop_early=True``, so stages after the last one taken are not run). The model is
    kept whole as ``self.model`` — its head and any later stages stay (they get no
    gradient), so a classifier's state_dict loads into ``.model`` unchanged; timm's
    wrapper instead prunes them (its state_dict has fewer keys).
    ``norm=True`` passes ``norm=True`` to ``forward_intermediates``.
    """

    def __init__(self, model: nn.Module, out_indices=None, norm: bool = False, output_fmt: str = "NCHW"):
        super().__init__()
        if not supports_features(model):
            raise ValueError(f"FeatureGetterNet: {type(model).__name__} has no forward_intermediates/feature_info; "
                             f"multi-scale features exist for the pyramid models (PVT, PVT v2, Swin, PiT, "
                             f"MViT v2, CvT)")
        take, _ = feature_take_indices(len(model.feature_info), out_indices, name="out_indices")
        self.model = model
        self.out_indices = tuple(sorted(set(take)))   # maps come out in stage order
        self.norm, self.output_fmt = norm, output_fmt
        self.feature_info = FeatureInfo(model.feature_info, self.out_indices)

    def forward(self, x):
        return self.model.forward_intermediates(x, indices=list(self.out_indices), norm=self.norm,
                                                stop_early=True, output_fmt=self.output_fmt,
                                                intermediates_only=True)


def features_only(model: nn.Module, out_indices=None, norm: bool = False) -> FeatureGetterNet:
    """``model`` as a features-only backbone (what ``create_model(..., features_only=True)`` returns)."""
    return FeatureGetterNet(model, out_indices=out_indices, norm=norm)
