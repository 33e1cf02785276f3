"""Scaled dot-product attention as one op (PyTorch's ``F.scaled_dot_product_attention``).

With queries Q (…, L, d), keys K (…, S, d), values V (…, S, d_v) and scale c = 1/√d:

    S = c·Q Kᵀ (+ M)          (…, L, S)   M an additive mask/bias, or a boolean "may attend" mask
    A = softmax(S)             (…, L, S)   along the keys, max subtracted (Softmax below)
    O = A V                    (…, L, d_v)

Written out of ``matmul``, ``softmax`` and ``matmul`` (``attention_simple`` below, what the
lessons and the MSA layer's docstring show), the engine derives the backward and keeps every
intermediate. As one ``Function`` the backward is derived by hand and keeps only Q, K, V and A.
Given dO = ∂L/∂O:

    dV = Aᵀ dO                 each value is read by every query, weighted by its attention
    dA = dO Vᵀ
    dS = A ⊙ (dA − rowsum(dA ⊙ A))          the softmax's vector–Jacobian product
    dQ = c · dS K,   dK = c · dSᵀ Q,   dM = dS (summed over the dims M was broadcast along)

The packed form ``qkv_attention`` takes the output of one ``qkv`` linear layer (B, N, 3·h·d),
as ViT's attention computes it, and returns the heads side by side (B, N, h·d): the split into
Q, K, V and the heads, and the merge after, are then index arithmetic inside the op instead of
three slices whose gradients would each be a zero-filled (B, N, 3·h·d) array added up.
``tests/test_attention.py`` holds both equal to ``attention_simple``.
"""
from __future__ import annotations

import numpy as np

from minivit import amp, backend, blas
from minivit.autograd import Function, Tensor
from minivit.backend import get_array_module
from minivit.functional import fused_cuda
from minivit.functional.activation import Softmax, dropout, softmax
from minivit.functional.basic import matmul, sum_to, where


def _t(a):
    return a.swapaxes(-1, -2)


def _scores(xp, q, k, scale, mask):
    """S = c·Q Kᵀ with the mask applied: added if it is a float bias, else where False → a finite
    −∞ (the dtype's most negative number, so a row with no key left gives uniform weights, not NaN)."""
    s = q @ _t(k)
    s *= s.dtype.type(scale)
    if mask is None:
        return s
    if mask.dtype == bool:
        return xp.where(mask, s, xp.finfo(s.dtype).min)
    return s + mask


class ScaledDotProductAttention(Function):
    """softmax(c·Q Kᵀ + M) V with the hand-derived backward of the module docstring."""

    # On the CPU the same formulas run on pieces of the leading (batch) dim, on backend's
    # threads (_cpu_*, below): NumPy's batched matmul calls one small single-threaded GEMM per
    # (batch, head), so one core would do them all. False: always this reference code.
    fast_path = True

    def __init__(self, scale, has_mask):
        self.scale, self.has_mask = scale, has_mask

    def forward(self, q, k, v, mask=None):
        xp = get_array_module(q)
        self.q, self.k, self.v = q, k, v
        self.mask_shape = None if mask is None else mask.shape
        self.cpu_fast = self.fast_path and q.ndim >= 3 and backend.device_of(q) == "cpu"
        if self.cpu_fast:
            return self._cpu_forward(q, k, v, mask)
        self.softmax = Softmax(-1)                      # its array code: threads on the CPU, a kernel on a GPU
        # On a GPU the fused softmax kernel takes c·S itself, and a float mask (Swin's bias) added
        # after it (its backward returns c·dS, and dS for the bias): the same roundings as `s *= c`,
        # `s + mask` and `ds * c`, up to two launches fewer each way.
        self.scale_in_kernel = (Softmax.fast_path and fused_cuda.applies(q, k) and (
            mask is None or (mask.dtype == q.dtype and backend.is_cupy_array(mask)
                             and fused_cuda.bias_fits(q.shape[:-1] + k.shape[-2:-1], mask.shape))))
        if self.scale_in_kernel:
            a = self.softmax.y = fused_cuda.softmax_forward(q @ _t(k), scale=self.scale, bias=mask)
        else:
            a = self.softmax.forward(_scores(xp, q, k, self.scale, mask))   # (…, L, S)
        self.score_nbytes = a.nbytes                    # (the complexity lab's memory probe reads it)
        return a @ v                                    # (…, L, d_v)

    def backward(self, go, out=None):
        """dQ, dK, dV (None where not needed). On a GPU ``out`` (three arrays or None) receives them:
        each product written in place, so that a caller packing them (QKVAttention) copies once."""
        if self.cpu_fast:
            return self._cpu_backward(go)
        xp = get_array_module(go)
        a = self.softmax.y
        need = self.needs_grad

        def mm(x, y, i):                                # x @ y, into out[i] when given
            o = None if out is None else out[i]
            return x @ y if o is None else xp.matmul(x, y, out=o)
        dv = mm(_t(a), go, 2) if need[2] else None      # (…, S, d_v)
        if self.scale_in_kernel:                        # c·dS (and dS for a learned bias) from the kernel
            if self.has_mask and need[3]:
                dsc, ds = fused_cuda.softmax_backward(go @ _t(self.v), a, scale=self.scale, unscaled=True)
            else:
                dsc = fused_cuda.softmax_backward(go @ _t(self.v), a, scale=self.scale)
        else:
            ds = self.softmax.backward(go @ _t(self.v))     # dS = A ⊙ (dA − rowsum(dA ⊙ A))
            dsc = ds * ds.dtype.type(self.scale) if need[0] or need[1] else None   # c·dS: scaled once, for both
        dq = mm(dsc, self.k, 0) if need[0] else None    # (…, L, d)
        dk = mm(_t(dsc), self.q, 1) if need[1] else None   # (…, S, d)
        if not self.has_mask:
            return dq, dk, dv
        dm = sum_to(ds, self.mask_shape) if need[3] else None   # a bias (Swin's) learns from dS
        return dq, dk, dv, dm

    # ----------------------------------------------------------------------- the CPU fast path
    # The scores are computed, soft-maxed and multiplied by V one block of query rows at a
    # time, a block of about this many scores (1 MiB of float32): the softmax's passes then
    # run while the block is in the core's cache, not over an (L, S) array that may be
    # hundreds of MB. Measured on one image's MSA at 96² tokens (C = 32, 2 heads, 1 thread):
    # see the complexity sweep in the README. The full A is still written once, for backward.
    score_block = 1 << 18

    def _blocks(self, a):
        """(lead, rows) blocks of one piece's scores ``a`` (n, …, L, S), each about ``score_block``
        scores: several whole (L, S) maps at a time (a slice of axis 0: Swin's windows, a batch
        of small images) when a map is smaller than a block, else one index of axis 0 at a time
        in blocks of query rows (one image's MSA over thousands of tokens)."""
        n, (L, S) = a.shape[0], a.shape[-2:]
        inner = max(1, int(np.prod(a.shape[1:-2])))          # maps per index of axis 0 (heads)
        if inner * L * S <= self.score_block:
            c = max(1, self.score_block // (inner * L * S))
            return [(slice(i, i + c), slice(None)) for i in range(0, n, c)]
        step = max(1, self.score_block // (inner * S))
        return [(slice(i, i + 1), slice(r, r + step)) for i in range(n) for r in range(0, L, step)]

    def _cpu_forward(self, q, k, v, mask):
        dtype = np.result_type(q, k, v)
        a = np.empty(q.shape[:-1] + (k.shape[-2],), dtype=dtype)           # (…, L, S)
        o = np.empty(q.shape[:-1] + (v.shape[-1],), dtype=dtype)           # (…, L, d_v)
        m = None if mask is None else mask.reshape((1,) * (q.ndim - mask.ndim) + mask.shape)
        c = dtype.type(self.scale)

        def piece(lo, hi):                              # batch elements lo..hi-1, on one of the threads
            # Q, K, V are often strided views (QKVAttention's of the packed qkv): every block's
            # products would gather them afresh, so they are made contiguous once (O(N·d)).
            qp, kp, vp = (np.ascontiguousarray(t[lo:hi]) for t in (q, k, v))
            ap, kt, op = a[lo:hi], _t(kp), o[lo:hi]
            mp = None if m is None else (m[lo:hi] if m.shape[0] > 1 else m)
            for lead, rows in self._blocks(ap):         # a block of scores that stays in cache
                s = ap[lead][..., rows, :]
                np.matmul(qp[lead][..., rows, :], kt[lead], out=s)   # S = c·Q Kᵀ (+ M), in place
                s *= c
                if mp is not None:
                    mb = mp[lead] if mp.shape[0] > 1 else mp
                    mb = mb[..., rows, :] if mb.shape[-2] > 1 else mb
                    if mb.dtype == bool:
                        np.copyto(s, np.finfo(dtype).min, where=~mb)
                    else:
                        s += mb
                s -= s.max(axis=-1, keepdims=True)      # A = softmax(S), the max subtracted
                np.exp(s, out=s)
                s /= s.sum(axis=-1, keepdims=True)
                np.matmul(s, vp[lead], out=op[lead][..., rows, :])   # O = A V
        with blas.single_threaded(min(backend.get_num_threads(), q.shape[0]) > 1):   # one BLAS thread a piece
            backend.parallel_pieces(q.shape[0], piece)
        self.a = a
        self.score_nbytes = a.nbytes
        return o

    def _cpu_backward(self, go):
        need, a, q, k, v = self.needs_grad, self.a, self.q, self.k, self.v
        c = a.dtype.type(self.scale)
        dq = np.empty(q.shape, dtype=a.dtype) if need[0] else None
        dk = np.empty(k.shape, dtype=a.dtype) if need[1] else None
        dv = np.empty(v.shape, dtype=a.dtype) if need[2] else None
        want_m = self.has_mask and need[3]
        ds_all = a if want_m else None                  # backward writes dS over A (A is not needed after)

        def piece(lo, hi):
            ap, g = a[lo:hi], go[lo:hi]
            qp, kp, vp = (np.ascontiguousarray(t[lo:hi]) for t in (q, k, v))
            tmp = np.empty(vp.shape[:-1] + (max(q.shape[-1], v.shape[-1]),), dtype=a.dtype)   # (…, S, d)
            for lead, rows in self._blocks(ap):         # one pass over A, a block at a time
                first = rows.start in (None, 0)         # dV and dK sum over the row blocks
                ab, gb, tb = ap[lead][..., rows, :], g[lead][..., rows, :], tmp[lead]
                if dv is not None:
                    _add_product(_t(ab), gb, dv[lo:hi][lead], tb, first)    # dV = Aᵀ dO
                ds = gb @ _t(vp[lead])                  # dA = dO Vᵀ
                ds -= np.einsum("...ls,...ls->...l", ds, ab)[..., None]
                np.multiply(ds, ab, out=ab)             # dS = A ⊙ (dA − rowsum(dA ⊙ A)), over A's block
                if dq is not None:
                    np.matmul(ab, kp[lead], out=dq[lo:hi][lead][..., rows, :])   # dQ = c·dS K
                if dk is not None:
                    _add_product(_t(ab), qp[lead][..., rows, :], dk[lo:hi][lead], tb, first)   # dK = c·dSᵀ Q
            if dq is not None:
                dq[lo:hi] *= c
            if dk is not None:
                dk[lo:hi] *= c
        with blas.single_threaded(min(backend.get_num_threads(), q.shape[0]) > 1):   # one BLAS thread a piece
            backend.parallel_pieces(q.shape[0], piece)
        self.a = None
        if not self.has_mask:
            return dq, dk, dv
        return dq, dk, dv, (sum_to(ds_all, self.mask_shape) if want_m else None)


def _add_product(x, y, out, tmp, first):
    """out = x @ y (first block) or out += x @ y (the next ones), through ``tmp``'s buffer."""
    if first:
        np.matmul(x, y, out=out)
    else:
        t = tmp[..., :out.shape[-1]]
        np.matmul(x, y, out=t)
        out += t


def attention_simple(q, k, v, attn_mask=None, scale=None, dropout_p=0.0):
    """The same attention written out of ops (matmul, softmax, dropout, matmul): the engine derives
    the backward. The readable reference the one-op forms are tested against."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q * scale) @ k.transpose(-2, -1)                       # (…, L, S)
    if attn_mask is not None:
        if attn_mask.dtype == bool:
            s = where(attn_mask, s, float(get_array_module(s.data).finfo(s.dtype).min))
        else:
            s = s + attn_mask
    a = softmax(s, dim=-1)
    return matmul(dropout(a, p=dropout_p) if dropout_p > 0 else a, v)   # (…, L, d_v)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None):
    """``torch.nn.functional.scaled_dot_product_attention``: query (…, L, d), key (…, S, d), value
    (…, S, d_v) → (…, L, d_v). ``attn_mask`` broadcasts to (…, L, S): a bool mask (True: may
    attend) or a float bias added to the scores (it gets a gradient if it requires one).
    ``scale`` defaults to 1/√d. With ``dropout_p > 0`` or under autocast the op is composed of
    matmul, softmax, dropout and matmul, each with its own rules."""
    if query.ndim < 2 or key.ndim != query.ndim or value.ndim != query.ndim:
        raise ValueError(f"scaled_dot_product_attention: query, key and value need the same number (≥ 2) of "
                         f"dims (…, L, d), got shapes {tuple(query.shape)}, {tuple(key.shape)}, "
                         f"{tuple(value.shape)}")
    if query.shape[-1] != key.shape[-1] or key.shape[-2] != value.shape[-2] or \
            query.shape[:-2] != key.shape[:-2] or key.shape[:-2] != value.shape[:-2]:
        raise ValueError(f"scaled_dot_product_attention: expected query (…, L, d), key (…, S, d) and value "
                         f"(…, S, d_v) with the same leading dims, got {tuple(query.shape)}, "
                         f"{tuple(key.shape)}, {tuple(value.shape)}")
    scale = query.shape[-1] ** -0.5 if scale is None else float(scale)
    xp = get_array_module(query.data)
    if is_causal:
        if attn_mask is not None:
            raise ValueError("scaled_dot_product_attention: pass either attn_mask or is_causal=True, not both")
        L, S = query.shape[-2], key.shape[-2]
        attn_mask = Tensor(xp.tril(xp.ones((L, S), dtype=bool)))
    if attn_mask is not None and not isinstance(attn_mask, Tensor):
        attn_mask = Tensor(xp.asarray(attn_mask))
    if attn_mask is not None:
        scores = (*query.shape[:-1], key.shape[-2])
        try:
            fits = np.broadcast_shapes(attn_mask.shape, scores) == scores
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"scaled_dot_product_attention: attn_mask of shape {tuple(attn_mask.shape)} does not "
                             f"broadcast to the scores' shape {scores} (…, L, S)")
    if dropout_p > 0 or amp._enabled:                 # the composed ops, each with its own rules
        return attention_simple(query, key, value, attn_mask, scale, dropout_p)
    op = ScaledDotProductAttention(scale, attn_mask is not None)
    return op(query, key, value) if attn_mask is None else op(query, key, value, attn_mask)


# ----------------------------------------------------------------------------- packed Q, K, V
class QKVAttention(Function):
    """Multi-head attention from a packed ``qkv`` (B, N, 3·h·d) to the heads side by side (B, N, h·d).

    Forward views qkv as (B, N, 3, h, d) and takes Q, K, V as strided views (no copies); the
    attention is the op above; the output (B, h, N, d) is written back as (B, N, h·d).
    Backward writes dQ, dK, dV straight into one (B, N, 3, h, d) gradient.

    With an additive ``mask`` (Swin's relative-position bias, and its shift mask) of shape
    (nW, h, N, N), ``windows`` = nW: the rows of qkv are B/nW images of nW windows each, viewed
    as (B/nW, nW, …) so that window w of every image adds mask[w]; backward also returns the
    mask's gradient, dS summed over the images."""

    def __init__(self, num_heads, scale, windows=1, has_mask=False):
        self.num_heads, self.scale, self.windows = num_heads, scale, windows
        self.inner = ScaledDotProductAttention(scale, has_mask=has_mask)

    def _lead(self, B):
        return (B,) if self.windows == 1 else (B // self.windows, self.windows)

    def forward(self, qkv, mask=None):
        xp = get_array_module(qkv)
        B, N, C3 = qkv.shape
        h = self.num_heads
        d = C3 // (3 * h)
        lead = self._lead(B)
        n = len(lead)                                 # (B,) or (images, windows)
        q, k, v = qkv.reshape(*lead, N, 3, h, d).transpose(n + 1, *range(n), n + 2, n, n + 3)   # each (…, h, N, d), a view
        self.inner.needs_grad = (True, True, True) + (() if mask is None else (self.needs_grad[1],))
        o = self.inner.forward(q, k, v) if mask is None else self.inner.forward(q, k, v, mask)   # (…, h, N, d)
        self.score_nbytes = self.inner.score_nbytes
        return xp.ascontiguousarray(o.swapaxes(n, n + 1)).reshape(B, N, h * d)

    def backward(self, go):
        xp = get_array_module(go)
        B, N, C = go.shape
        h = self.num_heads
        d = C // h
        lead = self._lead(B)
        n = len(lead)
        go = go.reshape(*lead, N, h, d).swapaxes(n, n + 1)               # (…, h, N, d)
        if not self.inner.cpu_fast:
            # On a GPU the three products write into one (3, …, h, N, d) array, laid out as
            # (…, N, 3, h, d) by one copy: one launch where the loop below takes three.
            g3 = xp.empty((3, *lead, h, N, d), dtype=go.dtype)
            grads = self.inner.backward(go, out=g3)
            g = xp.ascontiguousarray(g3.transpose(*range(1, n + 1), n + 2, 0, n + 1, n + 3))
        else:
            grads = self.inner.backward(go)                              # dQ, dK, dV (…, h, N, d)[, dM]
            g = xp.empty((*lead, N, 3, h, d), dtype=go.dtype)
            for i, part in enumerate(grads[:3]):
                g[(slice(None),) * (n + 1) + (i,)] = part.swapaxes(n, n + 1)   # (…, N, h, d)
        g = g.reshape(B, N, 3 * h * d)
        return g if len(grads) == 3 else (g, grads[3])


class QKVSplitAttention(Function):
    """Multi-head attention from queries (B, N, h·d) and packed keys and values (B, M, 2·h·d), laid out
    (2, h, d) along the last dim (PVT's ``q`` and ``kv`` linear layers), to the heads side by side
    (B, N, h·d). As :class:`QKVAttention`: the heads are strided views, the output written back once;
    backward writes dK, dV into one (B, M, 2, h, d) gradient."""

    def __init__(self, num_heads, scale):
        self.num_heads, self.scale = num_heads, scale
        self.inner = ScaledDotProductAttention(scale, has_mask=False)

    def forward(self, q, kv):
        xp = get_array_module(q)
        B, N, C = q.shape
        M = kv.shape[1]
        h = self.num_heads
        d = C // h
        qh = q.reshape(B, N, h, d).transpose(0, 2, 1, 3)                 # (B, h, N, d), a view
        k, v = kv.reshape(B, M, 2, h, d).transpose(2, 0, 3, 1, 4)         # each (B, h, M, d), a view
        self.inner.needs_grad = (self.needs_grad[0], self.needs_grad[1], self.needs_grad[1])
        o = self.inner.forward(qh, k, v)                                 # (B, h, N, d)
        self.score_nbytes = self.inner.score_nbytes
        self.M = M
        return xp.ascontiguousarray(o.transpose(0, 2, 1, 3)).reshape(B, N, C)

    def backward(self, go):
        xp = get_array_module(go)
        B, N, C = go.shape
        h = self.num_heads
        d = C // h
        go = go.reshape(B, N, h, d).transpose(0, 2, 1, 3)                # (B, h, N, d)
        if not self.inner.cpu_fast and self.needs_grad[1]:
            # On a GPU dK and dV are written into one (2, B, h, M, d) array and laid out by one copy.
            g2 = xp.empty((2, B, h, self.M, d), dtype=go.dtype)
            dq, _, _ = self.inner.backward(go, out=(None, g2[0], g2[1]))
            gq = xp.ascontiguousarray(dq.transpose(0, 2, 1, 3)).reshape(B, N, C) if self.needs_grad[0] else None
            return gq, xp.ascontiguousarray(g2.transpose(1, 3, 0, 2, 4)).reshape(B, self.M, 2 * C)
        dq, dk, dv = self.inner.backward(go)                             # (B, h, ·, d)
        gq = xp.ascontiguousarray(dq.transpose(0, 2, 1, 3)).reshape(B, N, C) if self.needs_grad[0] else None
        gkv = None
        if self.needs_grad[1]:
            gkv = xp.empty((B, self.M, 2, h, d), dtype=go.dtype)
            gkv[:, :, 0] = dk.transpose(0, 2, 1, 3)                      # (B, M, h, d)
            gkv[:, :, 1] = dv.transpose(0, 2, 1, 3)
            gkv = gkv.reshape(B, self.M, 2 * C)
        return gq, gkv


class HeadsAttention(Function):
    """Multi-head attention from queries (B, N, h·d), keys and values (B, M, h·d), each made by its own
    layer (CvT's ``proj_q``, ``proj_k``, ``proj_v``), to the heads side by side (B, N, h·d): the three
    head splits, the attention and the merge as one op. As :class:`QKVSplitAttention`: the heads are
    strided views, the output is written back once, and backward returns dQ, dK, dV in the tokens' layout."""

    def __init__(self, num_heads, scale):
        self.num_heads, self.scale = num_heads, scale
        self.inner = ScaledDotProductAttention(scale, has_mask=False)

    def forward(self, q, k, v):
        xp = get_array_module(q)
        h = self.num_heads
        heads = [t.reshape(t.shape[0], t.shape[1], h, -1).transpose(0, 2, 1, 3) for t in (q, k, v)]  # (B, h, ·, d)
        self.inner.needs_grad = self.needs_grad
        o = self.inner.forward(*heads)                                   # (B, h, N, d)
        self.score_nbytes = self.inner.score_nbytes
        B, N, C = q.shape
        return xp.ascontiguousarray(o.transpose(0, 2, 1, 3)).reshape(B, N, C)

    def backward(self, go):
        xp = get_array_module(go)
        B, N, C = go.shape
        h = self.num_heads
        grads = self.inner.backward(go.reshape(B, N, h, C // h).transpose(0, 2, 1, 3))   # each (B, h, ·, d)
        return tuple(None if g is None else xp.ascontiguousarray(g.transpose(0, 2, 1, 3)).reshape(B, -1, C)
                     for g in grads)


def heads_attention(q, k, v, num_heads: int, scale=None):
    """Multi-head attention of queries (B, N, C) over keys and values (B, M, C), each from its own linear
    layer (CvT's projections), to (B, N, C), the heads side by side, ready for ``proj``: the head splits,
    attention and merge as one op (``HeadsAttention``). Under autocast the composed form runs instead."""
    B, N, C = q.shape
    if C % num_heads or k.shape != v.shape or k.shape[0] != B or k.shape[-1] != C:
        raise ValueError(f"heads_attention: q (B, N, C) = {tuple(q.shape)} needs C divisible by num_heads "
                         f"({num_heads}) and k, v both of shape (B, M, C), got {tuple(k.shape)} and {tuple(v.shape)}")
    scale = (C // num_heads) ** -0.5 if scale is None else float(scale)
    if amp._enabled:
        from minivit.functional.layout import rearrange
        qh, kh, vh = (rearrange(t, "b n (h d) -> b h n d", h=num_heads) for t in (q, k, v))
        return rearrange(scaled_dot_product_attention(qh, kh, vh, scale=scale), "b h n d -> b n (h d)")
    return HeadsAttention(num_heads, scale)(q, k, v)


def q_kv_attention(q, kv, num_heads: int, scale=None):
    """Multi-head attention of queries (B, N, C) over packed keys and values (B, M, 2·C) (PVT's ``q`` and
    ``kv`` layers; the last dim of kv laid out (2, heads, head_dim), as timm reads it) to (B, N, C), the
    heads side by side, ready for ``proj``: the head split, ``unbind``, attention and merge as one op
    (``QKVSplitAttention``). Under autocast the composed form runs instead."""
    B, N, C = q.shape
    if C % num_heads or kv.shape[-1] != 2 * C or kv.shape[0] != B:
        raise ValueError(f"q_kv_attention: q (B, N, C) = {tuple(q.shape)} needs C divisible by num_heads "
                         f"({num_heads}) and kv of shape (B, M, 2·C), got {tuple(kv.shape)}")
    d = C // num_heads
    scale = d ** -0.5 if scale is None else float(scale)
    if amp._enabled:
        from minivit.functional.layout import rearrange
        qh = rearrange(q, "b n (h d) -> b h n d", h=num_heads)
        k, v = rearrange(kv, "b n (two h d) -> two b h n d", two=2, h=num_heads).unbind(0)
        return rearrange(scaled_dot_product_attention(qh, k, v, scale=scale), "b h n d -> b n (h d)")
    return QKVSplitAttention(num_heads, scale)(q, kv)


def qkv_attention(qkv, num_heads: int, scale=None, attn_mask=None):
    """Multi-head self-attention from the ``qkv`` linear layer's output (B, N, 3·C), laid out
    (3, heads, head_dim) along the last dim as timm's ``Attention`` reads it, to (B, N, C): the
    heads' outputs side by side, ready for ``proj``. One op (``QKVAttention``); under autocast
    the composed form runs instead.

    ``attn_mask``: an additive float bias, (h, N, N) for every row of the batch, or (nW, h, N, N)
    for a batch of windows (Swin's: B = images × nW, each image's nW windows consecutive), where
    window w of every image adds attn_mask[w]."""
    B, N, C3 = qkv.shape
    if C3 % (3 * num_heads):
        raise ValueError(f"qkv_attention: the last dim ({C3}) must be 3 × num_heads ({num_heads}) × head_dim")
    d = C3 // (3 * num_heads)
    scale = d ** -0.5 if scale is None else float(scale)
    windows = 1
    if attn_mask is not None:
        mshape = tuple(attn_mask.shape)
        if len(mshape) not in (3, 4) or mshape[-3:] != (num_heads, N, N) or (len(mshape) == 4 and B % mshape[0]):
            raise ValueError(f"qkv_attention: attn_mask must be ({num_heads}, {N}, {N}), or (nW, {num_heads}, {N}, {N}) "
                             f"with the batch ({B}) a multiple of nW; got {mshape}")
        windows = mshape[0] if len(mshape) == 4 else 1
    if amp._enabled:
        lead = (B,) if windows == 1 else (B // windows, windows)
        n = len(lead)
        q, k, v = qkv.reshape(*lead, N, 3, num_heads, d).permute(n + 1, *range(n), n + 2, n, n + 3).unbind(0)
        x = scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
        return x.transpose(n, n + 1).reshape(B, N, C3 // 3)
    if attn_mask is None:
        return QKVAttention(num_heads, scale)(qkv)
    return QKVAttention(num_heads, scale, windows, has_mask=True)(qkv, attn_mask)


# =========================================================================== Swin's relative position bias
class RelativePositionBias(Function):
    """B[h, i, j] = B̂[index[i, j], h]: the (T, heads) table gathered to (heads, N, N) (Swin eq. 4).

    Backward: ∂B̂[t, h] = Σ of ∂B[h, i, j] over the pairs with index[i, j] = t. With E the (T, N·N)
    one-hot matrix of the index (E[t, (i, j)] = 1 where index[i, j] = t) that is one product,
    ∂B̂ = E · ∂B(heads, N·N)ᵀ: one GEMM, where the scatter-add of ``table[index]``'s backward is two
    device operations (a zero fill, then the adds). Sums of the same terms, in another order."""

    def __init__(self, index, one_hot):
        self.index, self.one_hot = index, one_hot              # (N, N) int; (T, N·N) 0/1 of the table's dtype

    def forward(self, table):
        return table.T[:, self.index]                          # (heads, N, N)

    def backward(self, gy):
        h = gy.shape[0]
        return self.one_hot.astype(gy.dtype, copy=False) @ gy.reshape(h, -1).T    # (T, heads)


def index_one_hot(index, rows: int, dtype):
    """The (rows, index.size) matrix E[t, k] = [index.flat[k] = t] of ``dtype``, on index's device."""
    xp = get_array_module(index)
    return (xp.arange(rows)[:, None] == index.reshape(1, -1)).astype(dtype)


def relative_position_bias(table, index, one_hot=None):
    """Swin's B (heads, N, N) from the bias table B̂ (T, heads) and the (N, N) index into it;
    ``one_hot``, ``index_one_hot(index, T, table.dtype)``, is made here unless the caller keeps one."""
    if one_hot is None:
        one_hot = index_one_hot(index, table.shape[0], table.dtype)
    return RelativePositionBias(index, one_hot)(table)
