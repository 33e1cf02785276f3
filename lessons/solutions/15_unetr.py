"""Lesson 15_unetr: reference solutions of its exercises.

The notebook holds stubs that raise NotImplementedError; with MINIVIT_SOLUTIONS=1 (CI, and the
committed outputs) ``minivit.notebook.exercises`` swaps these in by name. Try the exercise first.
"""
import math
import warnings

import numpy as np


# Exercise 1: tokens_and_lifts
def tokens_and_lifts(img_size, patch=16):
    N = math.prod(s // patch for s in img_size)                 # one token per patch³ cube
    doublings = int(round(math.log2(patch)))                   # the token grid is 1/patch of the volume
    return N, [doublings - level for level in (1, 2, 3)]       # to 1/2, 1/4, 1/8: z3, z6, z9


# Exercise 2: dice_by_hand
def dice_by_hand(pred, target, num_classes):
    pred, target = np.asarray(pred), np.asarray(target)
    axes = tuple(range(1, target.ndim))
    per_class = []
    for c in range(1, num_classes):                             # the background left out
        P, G = pred == c, target == c
        inter = (P & G).sum(axis=axes).astype(np.float64)       # per volume
        total = (P.sum(axis=axes) + G.sum(axis=axes)).astype(np.float64)
        present = G.sum(axis=axes) > 0                          # volumes whose truth has the class
        per_class.append((2 * inter[present] / total[present]).mean() if present.any() else np.nan)
    per_class = np.array(per_class)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)         # every class absent: NaN
        return float(np.nanmean(per_class)), per_class


# Exercise 3: forward_without
def forward_without(model, x, drop=()):
    last, hidden = model.vit(x)                                 # norm(tokens after block 12), every block's tokens
    skips = {"encoder1": model.encoder1(x),
             "encoder2": model.encoder2(model.proj_feat(hidden[3])),
             "encoder3": model.encoder3(model.proj_feat(hidden[6])),
             "encoder4": model.encoder4(model.proj_feat(hidden[9]))}
    for name in drop:
        skips[name] = skips[name] * 0.0                         # zeros of the skip's shape
    d = model.decoder5(model.proj_feat(last), skips["encoder4"])
    d = model.decoder4(d, skips["encoder3"])
    d = model.decoder3(d, skips["encoder2"])
    d = model.decoder2(d, skips["encoder1"])
    return model.out(d)


# Exercise 4: decoder_macs
def decoder_macs(side, F, C, in_channels, num_classes):
    def conv(vox, c_in, c_out, k=3):                            # output voxels × C_in·k³ × C_out
        return vox * c_in * k ** 3 * c_out

    def up(vox_in, c_in, c_out):                                # transposed 2×2×2, stride 2: input voxels × C_in × 8·C_out
        return vox_in * c_in * 8 * c_out

    def res_block(vox, c_in, c_out):                            # conv1, conv2, and the 1×1×1 shortcut if channels change
        return conv(vox, c_in, c_out) + conv(vox, c_out, c_out) + (conv(vox, c_in, c_out, 1) if c_in != c_out else 0)

    def pr_up(g, c_out, num_layer):                             # UnetrPrUpBlock on a g³ token grid of width C
        macs = up(g ** 3, C, c_out)
        g *= 2
        for _ in range(num_layer):
            macs += up(g ** 3, c_out, c_out)
            g *= 2
            macs += res_block(g ** 3, c_out, c_out)
        return macs

    def up_block(g, c_in, c_out):                               # UnetrUpBlock from a g³ grid: up, cat skip, res block
        return up(g ** 3, c_in, c_out) + res_block((2 * g) ** 3, 2 * c_out, c_out)

    g = side // 16
    macs = res_block(side ** 3, in_channels, F)                 # encoder1, at full resolution
    macs += pr_up(g, 2 * F, 2) + pr_up(g, 4 * F, 1) + pr_up(g, 8 * F, 0)      # encoder2, 3, 4
    macs += up_block(g, C, 8 * F) + up_block(2 * g, 8 * F, 4 * F)             # decoder5, decoder4
    macs += up_block(4 * g, 4 * F, 2 * F) + up_block(8 * g, 2 * F, F)         # decoder3, decoder2
    return macs + conv(side ** 3, F, num_classes, 1)                          # out: 1×1×1 conv
