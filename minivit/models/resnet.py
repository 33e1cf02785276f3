"""A CIFAR ResNet (He et al. 2016, §4.2): the CNN teacher for DeiT's distillation.

DeiT's point is that a transformer learns well from a *convolutional* teacher:
the teacher's inductive bias (locality, translation equivariance) reaches the
student through its soft labels. This is the small ResNet the paper's CIFAR
experiments would use, built from the same engine as the transformers:

    3×3 conv (w) → BN → ReLU                                   (B, w, 32, 32)
    stage 1: n BasicBlocks, w channels                         (B, w, 32, 32)
    stage 2: n BasicBlocks, 2w channels, first one stride 2    (B, 2w, 16, 16)
    stage 3: n BasicBlocks, 4w channels, first one stride 2    (B, 4w, 8, 8)
    global average pool → linear                               (B, num_classes)

with depth = 6n + 2 (ResNet-20: n = 3, w = 16, 0.27 M parameters). A BasicBlock
is ``relu(x + BN(conv(relu(BN(conv(x))))))``; where the shape changes, the
shortcut is a 1×1 conv + BN (the paper's option B).
"""
from __future__ import annotations

from minivit import nn
from minivit.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers and a residual connection (optionally stochastic depth)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU()
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_chs))
        else:
            self.downsample = None
        self.drop_path = nn.DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):                                        # (B, C_in, H, W)
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))                              # (B, C_out, H/s, W/s)
        return self.act(shortcut + self.drop_path(x))


class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2) with base width ``width``; names as timm/torchvision (conv1, bn1, layer1.0.conv1, fc)."""

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10, in_chans: int = 3,
                 drop_path_rate: float = 0.0):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (8, 14, 20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.depth, self.width, self.num_classes = depth, width, num_classes
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act = nn.ReLU()
        # Stochastic depth rises linearly with the block index, as in timm.
        rates = [drop_path_rate * i / max(3 * n - 1, 1) for i in range(3 * n)]
        chs, blocks = width, []
        for stage, out_chs in enumerate((width, 2 * width, 4 * width)):
            layer = nn.Sequential(*[BasicBlock(chs if i == 0 else out_chs, out_chs,
                                               stride=2 if (stage > 0 and i == 0) else 1,
                                               drop_path=rates[stage * n + i]) for i in range(n)])
            blocks.append(layer)
            chs = out_chs
        self.layer1, self.layer2, self.layer3 = blocks
        self.fc = nn.Linear(4 * width, num_classes)
        self.reset_parameters()

    def reset_parameters(self):
        """He-normal (fan_out) convs, BN scale 1 / shift 0, as torchvision's ResNets."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x):                               # (B, 3, 32, 32)
        x = self.act(self.bn1(self.conv1(x)))                    # (B, w, 32, 32)
        x = self.layer3(self.layer2(self.layer1(x)))             # (B, 4w, 8, 8)
        return x.mean(dim=(2, 3))                                # (B, 4w): global average pool

    def forward(self, x):
        return self.fc(self.forward_features(x))                 # (B, num_classes)

    def no_weight_decay(self):
        return set()


@register_model
def resnet_teacher(depth: int = 20, width: int = 16, num_classes: int = 10, **kwargs):
    """ResNet-20 for CIFAR (0.27 M parameters): the CNN teacher for DeiT distillation.
    ``depth`` = 6n + 2 and ``width`` (base channels) make it bigger or smaller."""
    return ResNet(depth=depth, width=width, num_classes=num_classes, **kwargs)
