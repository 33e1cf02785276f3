"""``minivit.nn``: Module, Parameter, the standard layers and their initialisation.

    from minivit import nn
    mlp = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    nn.init.trunc_normal_(mlp[0].weight, std=.02)

Names, arguments and state_dict keys are PyTorch's (and timm's, for DropPath).
"""
from minivit.nn import init
from minivit.nn.layers import (GELU, AdaptiveAvgPool2d, BatchNorm2d, BatchNorm3d, Conv2d, Dropout, DropPath,
                               Flatten, LayerNorm, LeakyReLU, Linear, ReLU, Softmax)
from minivit.nn.layers3d import (AvgPool3d, Conv3d, ConvTranspose2d, ConvTranspose3d, InstanceNorm1d,
                                 InstanceNorm2d, InstanceNorm3d, MaxPool3d, Upsample)
from minivit.nn.module import IncompatibleKeys, Identity, Module, ModuleList, Parameter, Sequential
from minivit.nn import utils  # clip_grad_norm_, clip_grad_value_

__all__ = ["init", "utils", "Module", "Parameter", "ModuleList", "Sequential", "Identity", "IncompatibleKeys",
           "Linear", "Conv2d", "LayerNorm", "BatchNorm2d", "Dropout", "DropPath", "GELU", "ReLU",
           "Softmax", "Flatten", "AdaptiveAvgPool2d", "Conv3d", "ConvTranspose2d", "ConvTranspose3d",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "MaxPool3d", "AvgPool3d", "Upsample", "BatchNorm3d", "LeakyReLU"]
