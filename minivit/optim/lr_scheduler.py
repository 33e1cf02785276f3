"""Learning-rate schedules, stepped once per optimizer step (not per epoch).

The ViT recipe (DeiT, Swin, MAE) is a linear warmup then a cosine decay:
large early updates with Adam's still-noisy moment estimates can wreck a
transformer, so the lr ramps up over the first steps, then decays smoothly.
"Scaling Vision Transformers" uses warmup, a reciprocal square root decay and a
linear cooldown instead (``RsqrtCooldownLR``): only the cooldown depends on the
length of the run.

A scheduler follows PyTorch's protocol: on construction it records each
group's ``initial_lr`` and sets the lr for the first step; after every
``optimizer.step()`` call ``scheduler.step()`` to set the lr for the next one::

    for x, y in loader:
        loss = criterion(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        scheduler.step()

``last_epoch`` counts the steps taken (PyTorch's name, though here it counts steps).
"""
from __future__ import annotations

import math


class LRScheduler:
    """Base class: subclasses implement ``get_lr()`` -> one lr per group, for ``last_epoch``."""

    def __init__(self, optimizer, last_epoch: int = -1):
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}] when "
                                   f"resuming with last_epoch={last_epoch}: load the optimizer's "
                                   "state_dict first, or use last_epoch=-1 for a fresh run")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()  # last_epoch -1 -> 0: set the lr of the first optimizer step

    def get_lr(self) -> list[float]:
        raise NotImplementedError

    def step(self):
        """Advance one step and write the new lr into every parameter group."""
        self.last_epoch += 1
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        """The lr of each group as last set by the scheduler."""
        return self._last_lr

    def state_dict(self) -> dict:
        """Everything but the optimizer (and functions, which do not pickle reliably)."""
        return {k: v for k, v in self.__dict__.items()
                if k != "optimizer" and not callable(v)}

    def load_state_dict(self, state_dict: dict):
        self.__dict__.update(state_dict)


class LambdaLR(LRScheduler):
    """lr = initial_lr · lr_lambda(step), for each group (``torch.optim.lr_scheduler.LambdaLR``).

    ``lr_lambda`` is one function, or a list with one per parameter group. The
    functions are not saved in ``state_dict()``: rebuild the scheduler with the
    same functions, then load.
    """

    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1):
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"expected {n} lr_lambdas (one per parameter group), "
                                 f"got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * n
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base_lr * fn(self.last_epoch) for fn, base_lr in zip(self.lr_lambdas, self.base_lrs)]

    def state_dict(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}


def warmup_cosine(step: int, base_lr: float, warmup_steps: int, total_steps: int,
                  min_lr: float = 0.0, warmup_start_factor: float = 0.0) -> float:
    r"""The lr at optimizer step ``step`` (0-based) of a linear-warmup + cosine schedule.

    With W = warmup_steps, T = total_steps, s = warmup_start_factor::

        step < W:        lr = base_lr · (s + (1 − s) · step / W)
        W <= step <= T:  w  = ½ · (1 + cos(π · (step − W) / (T − W)))
                         lr = w · base_lr + (1 − w) · min_lr
        step > T:        lr = min_lr

    So the first step uses s·base_lr (0 by default), the lr reaches base_lr
    exactly at step W (w = 1) and min_lr exactly at step T (w = 0): writing the
    cosine part as a weighted mean of the two ends makes both ends exact in
    floating point. ``min_lr`` is absolute (the same for every group), as in timm.
    """
    if step < warmup_steps:
        return base_lr * (warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps)
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    w = 0.5 * (1.0 + math.cos(math.pi * progress))
    return w * base_lr + (1.0 - w) * min_lr


class CosineWarmupLR(LRScheduler):
    """Linear warmup over ``warmup_steps`` then cosine decay to ``min_lr`` at ``total_steps``.

    Each group's lr is ``warmup_cosine(step, group's initial lr, ...)`` (see its
    docstring for the exact formula). Step it after every optimizer step.
    """

    def __init__(self, optimizer, warmup_steps: int, total_steps: int, min_lr: float = 0.0,
                 warmup_start_factor: float = 0.0, last_epoch: int = -1):
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, "
                             f"total_steps={total_steps}")
        if not 0.0 <= warmup_start_factor <= 1.0:
            raise ValueError(f"warmup_start_factor must be in [0, 1], got {warmup_start_factor}")
        if min_lr < 0.0:
            raise ValueError(f"min_lr must be >= 0, got {min_lr}")
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.min_lr, self.warmup_start_factor = min_lr, warmup_start_factor
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [warmup_cosine(self.last_epoch, base_lr, self.warmup_steps, self.total_steps,
                              self.min_lr, self.warmup_start_factor) for base_lr in self.base_lrs]


def warmup_rsqrt_cooldown(step: int, base_lr: float, warmup_steps: int, total_steps: int,
                          cooldown_steps: int, min_lr: float = 0.0, timescale: float | None = None,
                          warmup_start_factor: float = 0.0) -> float:
    r"""The lr at optimizer step ``step`` (0-based) of warmup + reciprocal square root + linear
    cooldown: the schedule of "Scaling Vision Transformers" (Zhai et al., 2022, §3.5;
    big_vision's ``decay_type="rsqrt"`` with ``cooldown_steps``).

    With W = warmup_steps, T = total_steps, C = cooldown_steps, τ = timescale (default W),
    s = warmup_start_factor::

        step < W:            lr = base_lr · (s + (1 − s) · step / W)            (as warmup_cosine)
        W <= step:           r  = max(base_lr / √(1 + (step − W) / τ), min_lr)  (rsqrt: 1 at step W)
        step <= T − C:       lr = r
        T − C < step:        f  = min(1, (step − (T − C)) / C)                   (cooldown progress)
                             lr = (1 − f) · r + f · min_lr

    The rsqrt part needs no end date: a run can be stopped, or continued, anywhere, and only
    the last C steps (the cooldown, a linear ramp to min_lr reached at step T) depend on when
    the run ends; the paper trains once along the rsqrt and branches off cooldowns to get
    several training lengths from one run. The rsqrt keeps decaying during the cooldown (the
    ramp multiplies it), as in big_vision and timm's ``WSDLRScheduler(stable_fn="rsqrt",
    decay_fn="linear")``, which this equals step for step (``tests/test_optim.py``) with
    ``t_initial = T − W``, ``decay_t = C``, ``stable_timescale = τ``. big_vision's default τ is
    10,000 steps; τ = W (timm's default) hands over from the warmup at exactly base_lr. min_lr
    is absolute, as in warmup_cosine.
    """
    if step < warmup_steps:
        return base_lr * (warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps)
    tau = warmup_steps if timescale is None else timescale
    r = max(base_lr * (1.0 + (step - warmup_steps) / tau) ** -0.5, min_lr)
    cooldown_start = total_steps - cooldown_steps
    if step <= cooldown_start:
        return r
    f = min(1.0, (step - cooldown_start) / cooldown_steps)
    return (1.0 - f) * r + f * min_lr


class RsqrtCooldownLR(LRScheduler):
    """Linear warmup over ``warmup_steps``, then base_lr/√(1 + (step − warmup)/timescale), then a
    linear cooldown to ``min_lr`` over the last ``cooldown_steps`` of ``total_steps``.

    Each group's lr is ``warmup_rsqrt_cooldown(step, group's initial lr, ...)`` (see its
    docstring for the formula and the paper). ``timescale`` defaults to ``warmup_steps``, so a
    run without warmup must give it. Step it after every optimizer step.
    """

    def __init__(self, optimizer, warmup_steps: int, total_steps: int, cooldown_steps: int,
                 min_lr: float = 0.0, timescale: float | None = None, warmup_start_factor: float = 0.0,
                 last_epoch: int = -1):
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, "
                             f"total_steps={total_steps}")
        if not 0 < cooldown_steps <= total_steps - warmup_steps:
            raise ValueError(f"need 0 < cooldown_steps <= total_steps - warmup_steps = "
                             f"{total_steps - warmup_steps}, got cooldown_steps={cooldown_steps}: "
                             f"the cooldown comes after the warmup")
        if timescale is None and warmup_steps == 0:
            raise ValueError("RsqrtCooldownLR: without warmup the rsqrt timescale cannot default to "
                             "warmup_steps; pass timescale (steps, > 0), e.g. 10000 as big_vision")
        if timescale is not None and timescale <= 0:
            raise ValueError(f"RsqrtCooldownLR: timescale must be > 0, got {timescale}")
        if not 0.0 <= warmup_start_factor <= 1.0:
            raise ValueError(f"warmup_start_factor must be in [0, 1], got {warmup_start_factor}")
        if min_lr < 0.0:
            raise ValueError(f"min_lr must be >= 0, got {min_lr}")
        self.warmup_steps, self.total_steps, self.cooldown_steps = warmup_steps, total_steps, cooldown_steps
        self.min_lr, self.timescale, self.warmup_start_factor = min_lr, timescale, warmup_start_factor
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [warmup_rsqrt_cooldown(self.last_epoch, base_lr, self.warmup_steps, self.total_steps,
                                      self.cooldown_steps, self.min_lr, self.timescale,
                                      self.warmup_start_factor) for base_lr in self.base_lrs]
