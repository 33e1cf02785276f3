"""The optimizer base class, and timm's weight-decay parameter groups.

An optimizer holds ``param_groups``: a list of dicts, each with ``"params"``
(a list of tensors) and that group's hyper-parameters (``"lr"``,
``"weight_decay"``, ...). Every group starts from the optimizer's ``defaults``
and may override any of them, so biases can skip weight decay or a head can
get a larger learning rate. Schedulers change ``group["lr"]`` between steps.

Per-parameter buffers (momentum, Adam's moments, step counts) live in
``self.state[param]`` and are made lazily on the first step that parameter has
a gradient. ``state_dict()`` snapshots all of it as host NumPy arrays keyed by
the parameter's index (PyTorch's format), so a checkpoint pickles, loads on any
device, and a resumed run continues exactly where it stopped.
"""
from __future__ import annotations

import numpy as np

from minivit import backend
from minivit.autograd import Tensor


class _Required:
    """Sentinel for a hyper-parameter without a default (SGD's ``lr``)."""

    def __repr__(self):
        return "<required parameter>"


required = _Required()


class Optimizer:
    """Base class: subclasses pass their ``defaults`` and implement ``step()``.

    ``params`` is an iterable of tensors, or of dicts (parameter groups) such as
    ``[{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]``.
    """

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.state: dict = {}            # param (Tensor, hashed by identity) -> dict of buffers
        self.param_groups: list[dict] = []
        if isinstance(params, Tensor):
            raise TypeError("params should be an iterable of Tensors or dicts (parameter groups), "
                            f"got a single Tensor of shape {params.shape}: pass [tensor] or "
                            "model.parameters()")
        groups = [params] if isinstance(params, dict) else list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list: pass model.parameters() "
                             "(check that the model has parameters with requires_grad=True)")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)
        if not any(group["params"] for group in self.param_groups):
            raise ValueError("optimizer got only empty parameter groups: nothing to optimize")

    def add_param_group(self, group: dict):
        """Add a group of parameters, filling in the hyper-parameters it does not set."""
        if not isinstance(group, dict):
            raise TypeError(f"a parameter group must be a dict, got {type(group).__name__}")
        if "params" not in group:
            raise ValueError(f"a parameter group needs a 'params' entry, got keys {sorted(group)}")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but params[{i}] is a "
                                f"{type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"can't optimize a non-leaf Tensor (params[{i}], shape {p.shape}): "
                                 "optimize the leaf it was computed from, or .detach() it and "
                                 "set requires_grad=True")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or any(id(p) in seen for p in params):
            raise ValueError("a parameter appears more than once (in this group or in another "
                             "one): each parameter must be in exactly one group")
        new = {"params": params}
        for key, default in self.defaults.items():
            value = group.get(key, default)
            if value is required:
                raise ValueError(f"parameter group didn't specify a value of required "
                                 f"optimization parameter {key!r}")
            new[key] = value
        new.update({k: v for k, v in group.items() if k not in new})  # extra keys (e.g. a name)
        self.param_groups.append(new)

    def zero_grad(self, set_to_none: bool = True):
        """Forget the gradients. ``set_to_none=False`` gives fresh zero arrays instead
        (never zeroed in place: the engine may share one gradient array between tensors)."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad = p.xp.zeros_like(p.grad)

    def step(self, closure=None):
        raise NotImplementedError

    def _closure_loss(self, closure):
        """PyTorch's optional closure: re-evaluate the model and return the loss."""
        return None if closure is None else closure()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """A snapshot of the optimizer, in PyTorch's layout:
        ``{"state": {index: {name: value}}, "param_groups": [{..., "params": [index, ...]}]}``.

        Parameters are numbered in the order they appear across the groups.
        Arrays are copied to host NumPy arrays, so the dict pickles, does not
        change as training goes on, and loads on any device.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[index[id(p)]] = {k: _to_host(v) for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict):
        """Restore a ``state_dict()``: buffers go to each parameter's device (and, when
        floating point, its dtype); group hyper-parameters (lr, ...) are restored too."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups, this "
                             f"optimizer has {len(self.param_groups)}: build the optimizer with "
                             "the same groups as the one that was saved")
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"parameter group {i} has {len(group['params'])} parameters, the "
                                 f"loaded state dict's has {len(saved['params'])}: the model or the "
                                 "grouping differs from the saved one")
        by_index = {i: p for saved, group in zip(saved_groups, self.param_groups)
                    for i, p in zip(saved["params"], group["params"])}
        self.state = {}
        for i, buffers in state_dict["state"].items():
            p = by_index[int(i)]
            self.state[p] = {k: _to_param_device(v, p) for k, v in buffers.items()}
        self.param_groups = [{**{k: v for k, v in saved.items() if k != "params"},
                              "params": group["params"]}
                             for saved, group in zip(saved_groups, self.param_groups)]

    def state_bytes(self) -> int:
        """Bytes of optimiser state: the array buffers in ``self.state`` (Adam's m and v,
        Adafactor's row and column statistics, ...), exactly, from their ``nbytes``. Step
        counters are Python ints here and not counted (PyTorch keeps each as a 4-byte tensor)."""
        return sum(int(v.nbytes) for buffers in self.state.values() for v in buffers.values()
                   if isinstance(v, np.ndarray) or backend.is_cupy_array(v))

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params"]
        return "\n".join(lines + [")"])


def _to_host(value):
    """A host NumPy copy of an array buffer; other values (ints, None) as they are."""
    if isinstance(value, np.ndarray) or backend.is_cupy_array(value):
        host = backend.to_numpy(value)
        return host.copy() if host is value else host  # to_numpy already copied a GPU array
    return value


def _to_param_device(value, p: Tensor):
    """A copy of a saved buffer on p's device; floating buffers take p's dtype (as PyTorch)."""
    if isinstance(value, np.ndarray) or backend.is_cupy_array(value):
        dtype = p.dtype if value.dtype.kind == "f" else value.dtype
        # to_device first: CuPy refuses to convert a GPU array to NumPy implicitly (and
        # xp.array then copies, so the loaded dict stays untouched)
        return p.xp.array(backend.to_device(value, p.device), dtype=dtype)
    return value


# ====================================================================== one flat array per group
class FlatGroup:
    """A parameter group's parameters, and named state buffers, as views of one flat array each,
    so that a multi-tensor (``foreach``) step updates them all with one whole-array operation
    instead of one chain of operations per parameter.

    ``FlatGroup.build(params, state, names)`` concatenates the parameters' arrays into one and
    makes each ``p.data`` a view of its slice (the model computes with the views, unaware), and
    does the same for ``state[p][name]`` of every name (zeros where a buffer does not exist yet).
    ``valid(params, state)`` says whether all of that still holds: code that assigns a new array
    to ``p.data`` (``Module.to``, a dtype change) or to a state buffer (``load_state_dict``) breaks
    the link, and the optimizer then builds the group again (one copy). ``grads(params)`` gathers
    the gradients into one reused flat array (one copy of every gradient, the price of one op)."""

    def __init__(self, params, flat: dict, views: dict):
        self.params, self.flat, self.views, self._grad = list(params), flat, views, None

    @classmethod
    def build(cls, params, state: dict, names) -> "FlatGroup":
        xp = params[0].xp
        flat, views = {}, {}
        sizes = [p.data.size for p in params]
        offsets = np.cumsum([0] + sizes)
        for name in ("param",) + tuple(names):
            if name == "param":
                parts = [p.data.reshape(-1) for p in params]
            else:
                parts = [state[p][name].reshape(-1) if name in state.get(p, {}) else xp.zeros(p.data.size, p.dtype)
                         for p in params]
            buf = xp.concatenate(parts).astype(params[0].dtype, copy=False)      # (Σ sizes,)
            views[name] = [buf[offsets[i]:offsets[i + 1]].reshape(p.data.shape) for i, p in enumerate(params)]
            flat[name] = buf
        for i, p in enumerate(params):
            p.data = views["param"][i]
            for name in names:
                state.setdefault(p, {})[name] = views[name][i]
        return cls(params, flat, views)

    def valid(self, params, state: dict) -> bool:
        if len(params) != len(self.params) or any(p is not q for p, q in zip(params, self.params)):
            return False
        return all(p.data is self.views["param"][i] and all(
                   state.get(p, {}).get(name) is self.views[name][i] for name in self.flat if name != "param")
                   for i, p in enumerate(params))

    def grads(self, params):
        """Every gradient, concatenated into one flat array (the same array each step)."""
        buf = self.flat["param"]
        if self._grad is None or self._grad.dtype != buf.dtype:
            self._grad = params[0].xp.empty_like(buf)
        params[0].xp.concatenate([p.grad.reshape(-1) for p in params], out=self._grad)
        return self._grad


def foreach_applies(params) -> bool:
    """A multi-tensor step can take the group: every parameter has a gradient of its own shape,
    all on one device with one floating dtype."""
    if not params:
        return False
    p0 = params[0]
    return all(p.grad is not None and p.grad.shape == p.data.shape and p.grad.dtype == p.dtype == p0.dtype
               and p.device == p0.device for p in params) and np.dtype(p0.dtype).kind == "f"


# ====================================================================== parameter groups
def param_groups_weight_decay(model, weight_decay: float = 1e-5, skip_list=(), *, no_weight_decay_list=(),
                              head_weight_decay: float | None = None,
                              head_names=("head", "head_dist")) -> list[dict]:
    """Parameter groups ``[no_decay, decay]`` (timm's helper), and ``[no_decay, decay, head]``
    when ``head_weight_decay`` is given.

    Weight decay pulls weights towards 0; that regularises matrices, but on a
    bias, a norm's scale/shift (any parameter with ndim <= 1) or an embedding
    that only says *where* (position embeddings, class token, Swin's relative
    position bias table) it just hurts, so these go to a group with
    ``weight_decay=0``. A name is skipped if it is in ``skip_list`` (timm's
    ``no_weight_decay_list``, which is accepted too) or in
    ``model.no_weight_decay()`` (when the model defines it), either exactly
    (``"pos_embed"``) or as its last dotted part(s)
    (``"relative_position_bias_table"`` matches
    ``"layers.0.blocks.1.attn.relative_position_bias_table"``). Parameters with
    ``requires_grad=False`` (frozen) are left out.

    ``head_weight_decay``: the classifier's weights get their own decay
    ("Scaling Vision Transformers", Zhai et al. 2022, §3.1: decoupled weight decay
    for the head, e.g. 3.0 on the head against 0.03 on the body, which helps few-shot
    transfer). The head is every module named in ``head_names`` (``head``, and
    DeiT's ``head_dist``; ``head.fc`` in Swin and MViT v2 is inside ``head``); its
    biases still go to the no-decay group. With AdamW the decay is decoupled
    (``p ← p − lr·λ·p``), so ``head_weight_decay`` is a λ on the same scale as
    ``weight_decay``.
    """
    skip = set(skip_list) | set(no_weight_decay_list)
    if hasattr(model, "no_weight_decay"):
        skip |= set(model.no_weight_decay())

    def skipped(name: str) -> bool:
        return name in skip or any(name.endswith("." + s) for s in skip)

    def in_head(name: str) -> bool:
        return any(name.startswith(h + ".") for h in head_names)

    decay, no_decay, head = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or skipped(name):
            no_decay.append(p)
        elif head_weight_decay is not None and in_head(name):
            head.append(p)
        else:
            decay.append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0},
              {"params": decay, "weight_decay": weight_decay}]
    if head_weight_decay is None:
        return groups
    if head_weight_decay < 0:
        raise ValueError(f"param_groups_weight_decay: head_weight_decay must be >= 0, got {head_weight_decay}")
    if not head:
        names = [n for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1][-3:]
        raise ValueError(f"param_groups_weight_decay: head_weight_decay={head_weight_decay} but no trainable "
                         f"weight is under {tuple(head_names)} (the last weights are {names}): pass the "
                         f"classifier's module name in head_names, or leave head_weight_decay=None")
    return groups + [{"params": head, "weight_decay": head_weight_decay}]
