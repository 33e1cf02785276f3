"""DeiT: "Training data-efficient image transformers & distillation through attention"
(Touvron et al., 2021).

DeiT's models are ViTs (``deit_tiny_224`` = ViT with D = 192, 3 heads; ``deit_small_224``
= D = 384, 6 heads); what is new is how they are trained, and one extra token (§4,
Fig. 2): a **distillation token** joins the class token in front of the patches,

    z₀ = [x_class; x_distill; x_p¹E; …; x_pᴺE] + E_pos          (E_pos has N + 2 rows)

passes through the same blocks, and gets its own linear head. In training the class
head learns from the true label and the distillation head from a teacher's (hard)
prediction (eq. "hard-label distillation"):

    L = ½ CE(ψ(Z_cls), y) + ½ CE(ψ(Z_dist), y_t),    y_t = argmax Z_teacher

so training mode returns both logits, ``(cls_logits, dist_logits)``; at test time
the two heads' logits are averaged (the paper's "late fusion", §5.2).
"""
from __future__ import annotations

import numpy as np

from minivit import nn
from minivit.models.registry import register_model
from minivit.models.vit import VisionTransformer


class VisionTransformerDistilled(VisionTransformer):
    """DeiT with distillation: ViT + ``dist_token`` (1, 1, D) + ``head_dist``.

    Takes VisionTransformer's arguments (``global_pool`` must be ``'token'``).
    forward: training → ``(cls_logits, dist_logits)``, each (B, num_classes);
    eval → ``(cls_logits + dist_logits) / 2``. ``set_distilled_training(False)``
    makes training mode return the average too (plain fine-tuning, timm's default).
    """

    num_extra_tokens = 1                # the distillation token, right after the class token

    def __init__(self, *args, **kwargs):
        weight_init = kwargs.pop("weight_init", "")
        super().__init__(*args, **kwargs, weight_init="skip")
        if self.global_pool != "token" or self.cls_token is None:
            raise ValueError("VisionTransformerDistilled reads the class and distillation tokens: "
                             "it needs class_token=True and global_pool='token'")
        self.dist_token = nn.Parameter(np.zeros((1, 1, self.embed_dim), dtype=np.float32))
        self.head_dist = nn.Linear(self.embed_dim, self.num_classes) if self.num_classes > 0 else nn.Identity()
        self.distilled_training = True
        if weight_init != "skip":
            self.init_weights()

    def init_weights(self):
        """ViT's init, and the distillation token ~ TruncNormal(std .02) (timm)."""
        nn.init.trunc_normal_(self.dist_token, std=0.02)
        super().init_weights()

    def set_distilled_training(self, enable: bool = True):
        self.distilled_training = enable

    def _prefix_tokens(self, B):
        return [self.cls_token.expand(B, -1, -1), self.dist_token.expand(B, -1, -1)]   # 2 × (B, 1, D)

    def forward_head(self, x, pre_logits: bool = False):
        """Tokens (B, 2 + N, D) → logits; see the class docstring for what training returns."""
        x, x_dist = x[:, 0], x[:, 1]                        # class token, distillation token: (B, D)
        x, x_dist = self.head_drop(x), self.head_drop(x_dist)
        if pre_logits:
            return (x + x_dist) / 2
        x, x_dist = self.head(x), self.head_dist(x_dist)
        if self.distilled_training and self.training:
            return x, x_dist                                # each head gets its own loss
        return (x + x_dist) / 2                             # late fusion at inference


# =========================================================================== configurations
@register_model
def deit_tiny(**kwargs):
    """CIFAR-10 DeiT with distillation: exactly ``vit_tiny``'s backbone (patch 4 → 8×8 tokens,
    7 blocks, D = 256, 4 heads, MLP ratio 2) plus the distillation token, its position
    entry and ``head_dist``: 3,725,332 parameters (vit_tiny + 3,082), so comparing the two
    isolates the effect of distillation."""
    defaults = dict(img_size=32, patch_size=4, num_classes=10, embed_dim=256, depth=7, num_heads=4,
                    mlp_ratio=2.0)
    return VisionTransformerDistilled(**dict(defaults, **kwargs))


@register_model
def deit_tiny_224(**kwargs):
    """DeiT-Ti (timm's ``deit_tiny_patch16_224``; DeiT Table 1: D = 192, 3 heads, 12 layers; 5.7M).
    No distillation token: a plain VisionTransformer."""
    defaults = dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return VisionTransformer(**dict(defaults, **kwargs))


@register_model
def deit_small_224(**kwargs):
    """DeiT-S (timm's ``deit_small_patch16_224``; DeiT Table 1: D = 384, 6 heads, 12 layers; 22.1M)."""
    defaults = dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return VisionTransformer(**dict(defaults, **kwargs))
