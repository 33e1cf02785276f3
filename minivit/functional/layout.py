"""Layout changes as one op: ``rearrange`` (einops' pattern language) = reshape → permute → reshape.

Vision transformers move tokens between layouts all the time: a (B, H, W, C) map cut into
windows (Swin), a (B, N, 3·h·d) projection split into heads, a (B, N, C) sequence turned back
into a (B, C, H, W) map for a convolution (CvT, PVT v2). Written with ``reshape`` and
``permute`` each move is a chain of two or three ops, and each op is a vertex of the graph
(Python work forward and backward; on a GPU, a launch where the last reshape copies).
``rearrange`` does the whole chain as one ``Function``::

    rearrange(x, "b (h p) (w q) c -> (b h w) (p q) c", p=7, q=7)    # Swin's window partition
    # the same as
    x.reshape(B, H // 7, 7, W // 7, 7, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, 49, C)

A pattern names the input's axes on the left and the output's on the right; parentheses group
axes that share one dimension (split on the left, merged on the right); every name appears once
on each side. Sizes the input shape does not fix (one unknown per group at most) are passed as
keywords. Forward reshapes x to its elementary axes, permutes them into the output's order and
merges the groups; backward runs the same three steps in reverse on the gradient. No data is
computed, only moved: the output is a view where NumPy can make one, one copy otherwise.
``tests/test_layout.py`` holds every pattern used in the models equal to its reshape/permute
chain, values and gradients.
"""
from __future__ import annotations

from functools import lru_cache
from math import prod

import numpy as np

from minivit.autograd import Function


def _parse_side(side: str) -> tuple:
    """'b (h p) c' → (('b',), ('h', 'p'), ('c',)): one tuple of names per dimension."""
    groups, current = [], None
    for tok in side.replace("(", " ( ").replace(")", " ) ").split():
        if tok == "(":
            if current is not None:
                raise ValueError(f"rearrange: nested parentheses in {side!r}")
            current = []
        elif tok == ")":
            if not current:
                raise ValueError(f"rearrange: an empty or unopened group in {side!r}")
            groups.append(tuple(current))
            current = None
        elif current is not None:
            current.append(tok)
        else:
            groups.append((tok,))
    if current is not None:
        raise ValueError(f"rearrange: unclosed parenthesis in {side!r}")
    return tuple(groups)


@lru_cache(maxsize=512)
def _plan(pattern: str, shape: tuple, sizes: tuple) -> tuple:
    """(elementary shape, permutation, output shape) for ``pattern`` on an input of ``shape``."""
    if pattern.count("->") != 1:
        raise ValueError(f"rearrange: the pattern needs one '->', got {pattern!r}")
    left, right = (_parse_side(s) for s in pattern.split("->"))
    names_in = [n for g in left for n in g]
    names_out = [n for g in right for n in g]
    if len(set(names_in)) != len(names_in) or sorted(names_in) != sorted(names_out):
        raise ValueError(f"rearrange: each axis name must appear once on each side of {pattern!r}")
    if len(left) != len(shape):
        raise ValueError(f"rearrange: {pattern!r} names {len(left)} dimensions but the input has "
                         f"{len(shape)} (shape {shape})")
    known = dict(sizes)
    unknown_keys = set(known) - set(names_in)
    if unknown_keys:
        raise ValueError(f"rearrange: sizes given for axes not in {pattern!r}: {sorted(unknown_keys)}")
    for group, dim in zip(left, shape):
        missing = [n for n in group if n not in known]
        fixed = prod(known[n] for n in group if n in known)
        if len(missing) > 1:
            raise ValueError(f"rearrange: group {'(' + ' '.join(group) + ')'} of {pattern!r} needs the "
                             f"sizes of all but one of its axes; pass e.g. {missing[0]}=... ")
        if missing:
            if fixed == 0 or dim % fixed:
                raise ValueError(f"rearrange: dimension {dim} does not split into {group} with sizes {known}")
            known[missing[0]] = dim // fixed
        elif fixed != dim:
            raise ValueError(f"rearrange: group {group} has size {fixed} but the input's dimension is {dim} "
                             f"(shape {shape}, pattern {pattern!r})")
    elementary = tuple(known[n] for n in names_in)
    perm = tuple(names_in.index(n) for n in names_out)
    out_shape = tuple(prod(known[n] for n in g) for g in right)
    return elementary, perm, out_shape


class Rearrange(Function):
    """reshape(elementary) → transpose(perm) → reshape(out); backward: the reverse on the gradient."""

    def __init__(self, elementary, perm, out_shape):
        self.elementary, self.perm, self.out_shape = elementary, perm, out_shape

    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(self.elementary).transpose(self.perm).reshape(self.out_shape)

    def backward(self, gy):
        permuted = tuple(self.elementary[p] for p in self.perm)
        return gy.reshape(permuted).transpose(tuple(np.argsort(self.perm))).reshape(self.in_shape)


def rearrange(x, pattern: str, **sizes):
    """einops' ``rearrange`` for the patterns a transformer needs (see the module's docstring)."""
    elementary, perm, out_shape = _plan(pattern, tuple(x.shape), tuple(sorted(sizes.items())))
    return Rearrange(elementary, perm, out_shape)(x)


# =========================================================================== tokens in another order
class PermuteTokens(Function):
    """y = x.reshape(B, L, C).take(order, axis=1).reshape(shape); backward: the same with the inverse."""

    def __init__(self, order, inverse, shape):
        self.order, self.inverse, self.shape = order, inverse, shape

    def forward(self, x):
        self.in_shape = x.shape
        B, C = x.shape[0], x.shape[-1]
        return x.reshape(B, -1, C).take(self.order, axis=1).reshape(self.shape)

    def backward(self, gy):
        B, C = self.in_shape[0], self.in_shape[-1]
        return gy.reshape(B, -1, C).take(self.inverse, axis=1).reshape(self.in_shape)


def permute_tokens(x, order, shape, inverse=None):
    """The tokens of x (B, ..., C) in another order, as one op: the L = prod(x.shape[1:-1]) token
    positions flattened, token i of the result taken from position ``order[i]``, then reshaped to
    ``shape``. ``order`` is a permutation of range(L) (an integer array on x's device); backward
    gathers with its inverse (``inverse``, the argsort of ``order``, passed when it is kept).

    Swin's cyclic shift and window partition are such a reordering: a roll and a rearrange (two
    copies each way) become one gather each way (``SwinTransformerBlock._attn``)."""
    L = prod(x.shape[1:-1])
    if order.shape != (L,):
        raise ValueError(f"permute_tokens: order must hold the {L} token positions of x {tuple(x.shape)}, "
                         f"got shape {tuple(order.shape)}")
    if inverse is None:
        inverse = x.xp.argsort(order)
    return PermuteTokens(order, inverse, tuple(shape))(x)
