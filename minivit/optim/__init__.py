"""``minivit.optim``: optimizers and learning-rate schedules, with PyTorch's names and arguments."""
from minivit.optim import lr_scheduler
from minivit.optim.adafactor import Adafactor
from minivit.optim.adamw import AdamW
from minivit.optim.lr_scheduler import (CosineWarmupLR, LambdaLR, LRScheduler, RsqrtCooldownLR, warmup_cosine,
                                        warmup_rsqrt_cooldown)
from minivit.optim.optimizer import Optimizer, param_groups_weight_decay
from minivit.optim.sgd import SGD

__all__ = ["Optimizer", "SGD", "AdamW", "Adafactor", "param_groups_weight_decay", "lr_scheduler",
           "LRScheduler", "LambdaLR", "CosineWarmupLR", "warmup_cosine", "RsqrtCooldownLR",
           "warmup_rsqrt_cooldown"]
