"""Module and Parameter: the bookkeeping that turns a tree of layers into a model.

A ``Module`` is a layer, a block or a whole model. Assigning attributes in
``__init__`` is all it takes to build the tree:

    class Mlp(Module):
        def __init__(self):
            super().__init__()
            self.fc1 = Linear(4, 8)        # a sub-Module: registered in _modules
            self.scale = Parameter(...)    # a Parameter: registered in _parameters
            self.register_buffer("step", np.zeros(()))   # state without a gradient

``__setattr__`` sorts each value into ``_parameters``, ``_modules`` or
``_buffers``; everything else (``named_parameters``, ``state_dict``, ``to``,
``train``/``eval``) is a walk over that tree. Names are dotted paths, exactly as
in PyTorch and timm (``blocks.0.attn.qkv.weight``), so their checkpoints load.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, NamedTuple

import numpy as np

from minivit import backend
from minivit.autograd import Tensor


class Parameter(Tensor):
    """A Tensor that is a learnable weight of a Module (``requires_grad=True`` by default).

    Being a Parameter is what makes ``module.x = Parameter(...)`` register it, so
    it shows up in ``parameters()`` and ``state_dict()``.
    """

    __slots__ = ()  # Tensor uses slots; keep Parameters as light as Tensors

    def __init__(self, data, requires_grad: bool = True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


def _as_tensor(value, name: str) -> Tensor:
    """A buffer value (Tensor or array-like) as a Tensor without a gradient."""
    if isinstance(value, Tensor):
        return value
    xp = backend.get_array_module(value)
    if isinstance(value, xp.ndarray):
        return Tensor(value)
    raise TypeError(f"buffer {name!r} must be a Tensor, an ndarray or None, got {type(value).__name__}")


def _to_array(value):
    """Anything array-like (ndarray, CuPy array, minivit or torch Tensor, list) as an array."""
    if isinstance(value, Tensor):
        return value.data
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        t = value.detach().cpu()  # a torch.Tensor, duck-typed: no torch import here
        try:
            return t.numpy()
        except TypeError:  # bfloat16 and friends have no NumPy dtype
            return t.float().numpy()
    xp = backend.get_array_module(value)
    return value if isinstance(value, xp.ndarray) else np.asarray(value)


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(..., strict=False)`` returns (as PyTorch's ``_IncompatibleKeys``)."""
    missing_keys: list
    unexpected_keys: list


class Module:
    """Base class of every layer and model, mirroring ``torch.nn.Module``.

    Subclasses call ``super().__init__()`` first, assign their Parameters,
    sub-Modules and buffers as attributes, and define ``forward``. Calling the
    module calls ``forward``.
    """

    training: bool
    # Local state_dict entries a checkpoint may lack (they then keep their value):
    # BatchNorm's num_batches_tracked, absent from checkpoints saved before PyTorch 0.4.1.
    _optional_state: tuple = ()

    def __init__(self):
        # object.__setattr__: our own __setattr__ needs these dicts to exist already.
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers", set())
        object.__setattr__(self, "_modules", OrderedDict())

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward(); define one in the subclass")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ registration
    def _check_ready(self):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign attributes before Module.__init__() is called: "
                                 f"call super().__init__() first in {type(self).__name__}.__init__")

    def register_parameter(self, name: str, param: Parameter | None):
        """Add a Parameter (or None, a declared-but-absent one such as ``bias=False``)."""
        self._check_ready()
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign {type(param).__name__} as parameter {name!r}: "
                            f"wrap it as nn.Parameter(...) or pass None")
        self._forget(name)
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor, persistent: bool = True):
        """Add state that is not learnt (BatchNorm's running stats, Swin's position index).

        Buffers move with ``to()``; persistent ones are saved in ``state_dict()``.
        Takes a Tensor or an array (kept as a Tensor without a gradient), or None.
        """
        self._check_ready()
        if "." in name or name == "":
            raise KeyError(f"buffer name must be a non-empty name without dots, got {name!r}")
        self._forget(name)
        self._buffers[name] = None if tensor is None else _as_tensor(tensor, name)
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)

    def add_module(self, name: str, module: Module | None):
        self._check_ready()
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass (sub-module {name!r})")
        self._forget(name)
        self._modules[name] = module

    register_module = add_module

    def _forget(self, name):
        """Drop ``name`` from wherever it was, so each name lives in exactly one place."""
        self.__dict__.pop(name, None)
        for d in (self._parameters, self._buffers, self._modules):
            d.pop(name, None)
        self._non_persistent_buffers.discard(name)

    def __setattr__(self, name, value):
        d = self.__dict__
        if isinstance(value, Parameter):
            self.register_parameter(name, value)
        elif isinstance(value, Module):
            self.add_module(name, value)
        elif "_parameters" in d and name in self._parameters:
            if value is not None:  # e.g. `self.weight = some_tensor`: say what was meant
                raise TypeError(f"cannot assign {type(value).__name__} as parameter {name!r}: "
                                f"assign an nn.Parameter or None (or set {name}.data = array)")
            self._parameters[name] = None
        elif "_modules" in d and name in self._modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as child module {name!r}: "
                                f"assign a Module or None")
            self._modules[name] = None
        elif "_buffers" in d and name in self._buffers:
            self._buffers[name] = None if value is None else _as_tensor(value, name)
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only called when normal lookup fails, i.e. for registered names.
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                self._non_persistent_buffers.discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers) | set(self._modules))

    # ------------------------------------------------------------------ walking the tree
    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        """(name, module) for this module and every descendant, pre-order; a module
        reached twice (shared) is listed once."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(memo, prefix + ("." if prefix else "") + name, remove_duplicate)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def _named_members(self, store, prefix, recurse, remove_duplicate=True):
        seen = set()
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        for mod_prefix, mod in mods:
            for name, t in getattr(mod, store).items():
                if t is None or (remove_duplicate and id(t) in seen):
                    continue
                seen.add(id(t))
                yield mod_prefix + ("." if mod_prefix else "") + name, t

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """(dotted name, Parameter) pairs in PyTorch's order; a shared Parameter is listed once."""
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalar weights (shared ones counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def get_submodule(self, target: str) -> Module:
        """The module at a dotted path, e.g. ``model.get_submodule("blocks.3.attn")``."""
        mod = self
        for part in target.split(".") if target else []:
            if part not in mod._modules:
                raise AttributeError(f"{type(mod).__name__} has no sub-module {part!r} (looking for {target!r})")
            mod = mod._modules[part]
        return mod

    # ------------------------------------------------------------------ state_dict
    def _state_items(self, prefix=""):
        """(key, Tensor) for every entry of the state dict, in PyTorch's order:
        a module's own parameters, then its persistent buffers, then each child's."""
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, p
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent_buffers:
                yield prefix + name, b
        for name, child in self._modules.items():
            if child is not None:
                yield from child._state_items(prefix + name + ".")

    def state_dict(self, prefix: str = "") -> "OrderedDict[str, object]":
        """``{name: array}`` of every Parameter and persistent buffer.

        The arrays are *copies*, so training on afterwards does not change a saved
        dict, and they stay on the module's device: NumPy arrays for a CPU module,
        CuPy arrays for a CUDA one (``backend.to_numpy`` each value for a host copy,
        e.g. before ``np.savez``). Keys and order are PyTorch's, so
        ``model.load_state_dict(torch_model.state_dict())`` lines up by name.
        """
        return OrderedDict((k, t.data.copy()) for k, t in self._state_items(prefix))

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy values from ``state_dict`` into this module's Parameters and buffers.

        Values may be NumPy/CuPy arrays, minivit Tensors, torch Tensors or anything
        ``np.asarray`` takes; each is moved to the device and cast to the dtype of the
        Parameter it replaces (Parameters keep their identity, so an optimizer built
        earlier still holds them). Everything is checked before anything is copied:
        a failed load leaves the module unchanged.

        Shape mismatches always raise. Missing and unexpected keys raise when
        ``strict`` (the default); with ``strict=False`` they are returned as
        ``(missing_keys, unexpected_keys)``, as in PyTorch.
        """
        targets = OrderedDict(self._state_items())
        optional = {f"{p}.{n}" if p else n for p, m in self.named_modules() for n in m._optional_state}
        missing = [k for k in targets if k not in state_dict and k not in optional]
        unexpected = [k for k in state_dict if k not in targets]
        values, mismatched = {}, []
        for k, t in targets.items():
            if k not in state_dict:
                continue
            arr = _to_array(state_dict[k])
            if tuple(arr.shape) != tuple(t.shape):
                mismatched.append(f"{k!r}: checkpoint has shape {tuple(arr.shape)}, "
                                  f"model has shape {tuple(t.shape)}")
            values[k] = arr

        if mismatched or (strict and (missing or unexpected)):
            lines = [f"Error(s) in loading state_dict for {type(self).__name__}:"]
            if strict and missing:
                lines.append(f"  Missing key(s) ({len(missing)}): " + ", ".join(map(repr, missing)))
            if strict and unexpected:
                lines.append(f"  Unexpected key(s) ({len(unexpected)}): " + ", ".join(map(repr, unexpected)))
            if mismatched:
                lines.append(f"  Size mismatch ({len(mismatched)}):")
                lines += [f"    {m}" for m in mismatched]
            lines.append("Fix: check that the checkpoint matches this architecture and its arguments "
                         "(e.g. num_classes, embed_dim); drop or rename keys to fit"
                         + ("; pass strict=False to skip missing/unexpected keys." if not mismatched else "."))
            raise RuntimeError("\n".join(lines))

        for k, arr in values.items():
            t = targets[k]
            # Copy into the existing array: same object, same device, same dtype.
            t.data[...] = backend.to_device(arr, t.device).astype(t.dtype, copy=False)
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> Module:
        """Training mode (Dropout drops, BatchNorm uses batch stats) for this module and all below."""
        if not isinstance(mode, bool):
            raise ValueError(f"train(mode) takes a bool, got {mode!r}")
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Freeze (False) or unfreeze every Parameter."""
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none: bool = True):
        """Forget the gradients from the last backward (sets ``.grad`` to None)."""
        for p in self.parameters():
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad[...] = 0

    def apply(self, fn) -> Module:
        """Call ``fn(module)`` on every sub-module (children first) and then self, as PyTorch;
        the usual way to run a custom init: ``model.apply(init_weights)``."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------------ device and dtype
    def to(self, device=None, dtype=None) -> Module:
        """Move and/or cast every Parameter and buffer *in place*; returns self.

        In place means the Parameter objects stay the same (only their ``.data``
        and ``.grad`` arrays are replaced), so an optimizer made before ``to`` still
        updates the moved weights. ``dtype`` must be a floating dtype and applies to
        floating tensors only: integer buffers (``num_batches_tracked``, index
        tables) keep their dtype. Also accepts ``to(np.float64)`` or ``to("cuda")``.
        """
        if device is not None and not isinstance(device, str):  # to(np.float64)
            device, dtype = None, device
        if device is not None:
            backend.check_device(device)
        if dtype is not None:
            dtype = np.dtype(dtype)
            if dtype.kind != "f":
                raise TypeError(f"Module.to only casts to floating dtypes, got {dtype}; "
                                f"integer buffers keep their own dtype")

        def convert(a):
            if dtype is not None and a.dtype.kind == "f" and a.dtype != dtype:
                a = a.astype(dtype)
            return a if device is None else backend.to_device(a, device)

        for m in self.modules():
            for t in list(m._parameters.values()) + list(m._buffers.values()):
                if t is None:
                    continue
                t.data = convert(t.data)
                if t.grad is not None:
                    t.grad = convert(t.grad)
        return self

    def float(self) -> Module:
        return self.to(dtype=np.float32)

    def double(self) -> Module:
        return self.to(dtype=np.float64)

    def cpu(self) -> Module:
        return self.to(device="cpu")

    def cuda(self) -> Module:
        return self.to(device="cuda")

    # ------------------------------------------------------------------ printing
    def extra_repr(self) -> str:
        """The arguments shown inside ``Name(...)``; layers override it."""
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        lines = extra.split("\n") if extra else []
        children = []
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")  # indent the child's own lines
            children.append(f"({name}): {body}")
        if len(lines) == 1 and not children:
            return f"{type(self).__name__}({lines[0]})"
        if not lines and not children:
            return f"{type(self).__name__}()"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines + children) + "\n)"


# =========================================================================== containers
class _Container(Module):
    """What ModuleList and Sequential share: indexing, length, iteration, append."""

    def _key(self, i: int) -> str:
        n = len(self)
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"{type(self).__name__} indices must be integers or slices, got {type(i).__name__}")
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for {type(self).__name__} of length {n}")
        return list(self._modules)[i]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return type(self)(list(self._modules.values())[i])
        return self._modules[self._key(i)]

    def __setitem__(self, i, module):
        self.add_module(self._key(i), module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module: Module):
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self


class ModuleList(_Container):
    """A list of modules, registered under the names ``0``, ``1``, ... (timm's ``blocks.3``)."""

    def __init__(self, modules=None):
        super().__init__()
        self.extend(modules or ())

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleList is a container, not a layer: loop over it in "
                                  "your forward (or use Sequential)")


class Sequential(_Container):
    """Modules applied one after another: ``Sequential(a, b)(x) == b(a(x))``.

    Children are named ``0``, ``1``, ... or, given one OrderedDict, by its keys.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            self.extend(modules)

    def __getitem__(self, i):
        if isinstance(i, slice):  # a slice keeps the names, as in PyTorch
            return Sequential(OrderedDict(list(self._modules.items())[i]))
        return super().__getitem__(i)

    def forward(self, x):
        for m in self:
            x = m(x)
        return x


class Identity(Module):
    """Returns its input unchanged (a placeholder, e.g. ``head = Identity()`` for features)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x
