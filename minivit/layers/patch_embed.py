"""Patch embedding: an image becomes a sequence of tokens (ViT §3.1).

The paper's view: cut the (C, H, W) image into N = HW/P² patches of P×P pixels,
flatten each to a vector of length C·P², and multiply by a matrix E (C·P² × D):

    z = [x_p¹ E; x_p² E; …; x_pᴺ E]

The implementation view: that is exactly a convolution with kernel = stride = P
(each output position sees one patch, with shared weights E). Both are here;
``PatchEmbed.forward_linear`` computes the paper's view with the conv's weights
and a test shows the two agree.
"""
from __future__ import annotations

import minivit.functional as F
from minivit import nn


def to_2tuple(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def patchify(x, patch_size: int):
    """(B, C, H, W) → (B, N, C·P·P): the flattened patches, row by row, each flattened
    channel-first (C, P, P) so it lines up with a conv weight reshaped to (D, C·P·P)."""
    B, C, H, W = x.shape
    P = patch_size
    if H % P or W % P:
        raise ValueError(f"patchify: image size {H}×{W} is not divisible by patch size {P}")
    x = x.reshape(B, C, H // P, P, W // P, P)           # (B, C, h, P, w, P)
    x = x.permute(0, 2, 4, 1, 3, 5)                     # (B, h, w, C, P, P)
    return x.reshape(B, (H // P) * (W // P), C * P * P)


def check_image(x, img_size, in_chans: int, who: str):
    """A clear error for the wrong channel count or image size (NCHW input)."""
    if x.ndim != 4:
        raise ValueError(f"{who}: expected an image batch (B, C, H, W), got shape {x.shape}")
    if x.shape[1] != in_chans:
        raise ValueError(f"{who}: expected {in_chans} input channels, got {x.shape[1]} (input shape {x.shape})")
    if img_size is not None and tuple(x.shape[2:]) != tuple(img_size):
        raise ValueError(f"{who}: input is {x.shape[2]}×{x.shape[3]} but the model was built for "
                         f"img_size={img_size[0]}×{img_size[1]}; resize the input or build the model "
                         f"with img_size={tuple(x.shape[2:])}")


def check_clip(x, num_frames: int, img_size, in_chans: int, who: str, layout: str = "BTCHW",
               names=("num_frames", "img_size")):
    """A clear error for a clip batch of the wrong rank, channels, frame count or frame size.

    ``layout``: 'BTCHW' (TimeSformer, as Hugging Face) or 'BCTHW' (torchvision's video models);
    ``names``: the model's own arguments for the frame count and the frame size, which the
    messages quote."""
    shape, axes = tuple(x.shape), ", ".join(layout)
    if x.ndim != 5:
        raise ValueError(f"{who}: expected a clip batch ({axes}), got shape {shape}; an image batch (B, C, H, W) "
                         f"needs a frame axis: x.unsqueeze({layout.index('T')}) for T = 1")
    dims = dict(zip(layout, shape))
    T, C, H, W = dims["T"], dims["C"], dims["H"], dims["W"]
    if C != in_chans:
        raise ValueError(f"{who}: expected {in_chans} input channels, got {C} (input shape {shape}, read as "
                         f"({axes}); a clip in the other layout needs x.permute(0, 2, 1, 3, 4))")
    frames, size = names
    if T != num_frames:
        raise ValueError(f"{who}: the clip has {T} frames but the model was built for {frames}={num_frames} (its "
                         f"time embedding is sized for them); sample {num_frames} frames or build the model "
                         f"with {frames}={T}")
    if (H, W) != tuple(img_size):
        raise ValueError(f"{who}: frames are {H}×{W} but the model was built for {size}={img_size[0]}×"
                         f"{img_size[1]}; resize the frames or build the model with {size}={(H, W)}")


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens: (B, C, H, W) → (B, N, D) with N = (H/P)(W/P).

    timm's names: ``proj`` (the conv), ``norm``.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans: int = 3, embed_dim: int = 768,
                 norm_layer=None, flatten: bool = True, bias: bool = True):
        super().__init__()
        self.img_size = to_2tuple(img_size) if img_size is not None else None
        self.patch_size = to_2tuple(patch_size)
        if self.img_size is not None:
            for s, p in zip(self.img_size, self.patch_size):
                if s % p:
                    raise ValueError(f"PatchEmbed: img_size {self.img_size} is not divisible by "
                                     f"patch_size {self.patch_size}; pick a patch size that divides it")
            self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
            self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans, self.flatten = in_chans, flatten
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x):
        check_image(x, self.img_size, self.in_chans, type(self).__name__)
        x = self.proj(x)                                    # (B, D, H/P, W/P)
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)                # (B, N, D)
        return self.norm(x)

    def forward_linear(self, x):
        """The paper's view: flatten the patches, multiply by E (the conv weight as a matrix)."""
        if self.patch_size[0] != self.patch_size[1]:
            raise ValueError("forward_linear needs square patches")
        E = self.proj.weight.reshape(self.proj.weight.shape[0], -1)          # (D, C·P·P)
        return self.norm(F.linear(patchify(x, self.patch_size[0]), E, self.proj.bias))  # (B, N, D)
