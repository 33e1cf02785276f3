"""Lesson 13_segformer: reference solutions of its exercises.

The notebook holds stubs that raise NotImplementedError; with MINIVIT_SOLUTIONS=1 (CI, and the
committed outputs) ``minivit.notebook.exercises`` swaps these in by name. Try the exercise first.
"""
import numpy as np

import minivit.functional as F


# Exercise 1: miou_from_confusion
def miou_from_confusion(cm):
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp                            # predicted as c, truly another class
    fn = cm.sum(axis=1) - tp                            # truly c, predicted as another class
    union = tp + fp + fn
    iou = np.full(len(cm), np.nan)
    seen = union > 0                                    # present in the labels or predicted somewhere
    iou[seen] = tp[seen] / union[seen]
    return iou, float(np.mean(iou[seen]))


# Exercise 2: my_fuse
def my_fuse(head, maps):
    x = F.cat(maps[::-1], dim=1)                        # (B, S·C, H/4, W/4), coarsest stage first
    x = head.linear_fuse(x)                             # (B, C, H/4, W/4): a Linear(S·C, C) per pixel
    return head.activation(head.batch_norm(x))


# Exercise 3: mix_ffn_without_dwconv
def mix_ffn_without_dwconv(mlp, x, feat_size):
    x = mlp.act(mlp.relu(mlp.fc1(x)))                   # (B, N, C_hidden), no neighbour seen
    return mlp.drop(mlp.fc2(mlp.drop(x)))               # (B, N, C)


# Exercise 4: decoder_params and decoder_macs
def decoder_params(in_channels, C, K):
    S = len(in_channels)
    projections = sum(c * C + C for c in in_channels)   # one Linear(C_i, C) with bias per stage
    fuse = S * C * C                                    # 1×1 conv, no bias
    norm = 2 * C                                        # BatchNorm's weight and bias
    classifier = C * K + K
    return projections + fuse + norm + classifier


def decoder_macs(grids, in_channels, C, K):
    S = len(in_channels)
    fine = grids[0][0] * grids[0][1]                    # pixels at 1/4 resolution
    projections = sum(h * w * c * C for (h, w), c in zip(grids, in_channels))
    return projections + fine * S * C * C + fine * C * K   # (upsampling, BN, ReLU: no MACs)
