"""``minivit.optim``: optimizers and learning-rate schedules, with PyTorch's names and arguments."""
from minivit.optim import lr_scheduler
from minivit.optim.adamw import AdamW
from minivit.optim.lr_scheduler import CosineWarmupLR, LambdaLR, LRScheduler, warmup_cosine
from minivit.optim.optimizer import Optimizer, param_groups_weight_decay
from minivit.optim.sgd import SGD

__all__ = ["Optimizer", "SGD", "AdamW", "param_groups_weight_decay", "lr_scheduler",
           "LRScheduler", "LambdaLR", "CosineWarmupLR", "warmup_cosine"]
