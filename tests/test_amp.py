"""minivit.amp: autocast's cast policy and gradients, GradScaler's rules (and PyTorch parity),
a short float16 run that tracks float32, and the TF32 switch (a no-op without a GPU)."""
import numpy as np
import pytest

import minivit.functional as F
import minivit.models
from minivit import amp, backend, data, nn, optim
from minivit.autograd import Tensor
from tests.conftest import torch_or_skip


def _t(xp, *shape, dtype=np.float32, requires_grad=False, scale=1.0):
    return Tensor(xp.asarray(np.random.standard_normal(shape) * scale, dtype=dtype), requires_grad=requires_grad)


# =========================================================================== autocast
def test_autocast_casts_gemms_down_and_sensitive_ops_up(xp):
    x = _t(xp, 4, 6, 8)
    w, b = _t(xp, 5, 8, requires_grad=True), _t(xp, 5, requires_grad=True)
    img, k = _t(xp, 2, 3, 6, 6), _t(xp, 4, 3, 3, 3, requires_grad=True)
    ln_w, ln_b = _t(xp, 5, requires_grad=True), _t(xp, 5, requires_grad=True)
    labels = xp.asarray([0, 1, 2, 3])
    with amp.autocast():
        assert amp.is_autocast_enabled() and amp.get_autocast_dtype() == np.float16
        y = F.linear(x, w, b)                                  # (4, 6, 5)
        assert y.dtype == np.float16
        assert (x @ x.transpose(-1, -2)).dtype == np.float16 and F.matmul(x, x.transpose(-1, -2)).dtype == np.float16
        assert F.conv2d(img, k, padding=1).dtype == np.float16
        assert F.softmax(y, -1).dtype == np.float32 and F.log_softmax(y, -1).dtype == np.float32
        assert F.layer_norm(y, (5,), ln_w, ln_b).dtype == np.float32
        assert F.gelu(y).dtype == np.float32
        c = F.conv2d(img, k)                                    # float16 into a float32 batch norm
        rm, rv = xp.zeros(4, np.float32), xp.ones(4, np.float32)
        assert F.batch_norm(c, rm, rv, training=True).dtype == np.float32 and rm.dtype == np.float32
        logits = y[:, 0]                                         # (4, 5) float16
        assert F.cross_entropy(logits, labels).dtype == np.float32
        assert F.nll_loss(F.log_softmax(logits, 1), labels).dtype == np.float32
        soft = xp.full((4, 5), 0.2, dtype=np.float32)           # a float32 soft target meets float16 logits
        assert F.cross_entropy(logits, soft).dtype == np.float32
        assert F.kl_div(logits, F.log_softmax(logits, 1), log_target=True).dtype == np.float32
        assert F.mse_loss(logits, Tensor(soft)).dtype == np.float32
        assert F.relu(y).dtype == np.float16                     # not listed: runs in its input's dtype
        assert (y + F.layer_norm(y, (5,))).dtype == np.float32   # mixed operands promote, as in PyTorch
        x64 = _t(xp, 3, 8, dtype=np.float64)
        assert (x64 @ x64.transpose(0, 1)).dtype == np.float64   # float64 is never cast (gradient checks)
    assert not amp.is_autocast_enabled()
    # Outside autocast nothing changes: the op takes the parameters themselves, no cast in between.
    y = F.linear(x, w, b)
    assert y.dtype == np.float32 and y._ctx.inputs[1] is w and y._ctx.inputs[2] is b
    assert F.softmax(x.to(dtype=np.float16), -1).dtype == np.float16


def test_parameters_stay_float32_and_get_float32_grads_close_to_fp32_ones(xp):
    """A transformer-ish block (linear, attention matmuls, softmax, GELU MLP, layer norm, residuals,
    cross-entropy): the master weights' gradients under autocast are float32 and agree with
    the float32 ones to float16 accuracy."""
    backend.manual_seed(0)
    qkv, proj, fc1, fc2, head = (nn.Linear(16, 48), nn.Linear(16, 16), nn.Linear(16, 32),
                                 nn.Linear(32, 16), nn.Linear(16, 5))
    norm = nn.LayerNorm(16)
    mods = [qkv, proj, fc1, fc2, head, norm]
    for m in mods:
        m.to(device="cuda" if xp is not np else "cpu")
    x = _t(xp, 3, 7, 16)
    y = xp.asarray([0, 3, 4])

    def loss_and_grads(fp16):
        for m in mods:
            m.zero_grad()
        with amp.autocast(enabled=fp16):
            q, k, v = qkv(x).reshape(3, 7, 3, 16).permute(2, 0, 1, 3).unbind(0)
            h = x + proj(F.softmax(q @ k.transpose(-2, -1) * 0.25, -1) @ v)
            h = h + fc2(F.gelu(fc1(norm(h))))
            loss = F.cross_entropy(head(norm(h)).mean(1), y)
        loss.backward()
        return float(loss.data), [p.grad for p in params]

    params = [p for m in mods for p in m.parameters()]
    l32, g32 = loss_and_grads(False)
    l16, g16 = loss_and_grads(True)
    assert abs(l16 - l32) < 5e-3
    for p, a, b in zip(params, g32, g16):
        assert p.dtype == np.float32 and b.dtype == np.float32
        err = float(xp.linalg.norm(b - a) / (xp.linalg.norm(a) + 1e-12))
        # float16 keeps 11 significant bits (2^-11 ≈ 4.9e-4 relative per rounding); measured
        # on NumPy: at most 8.3e-4. 5e-3 leaves room for other roundings (cuBLAS), while an
        # error in the casts or the gradient dtypes is O(1).
        assert err < 5e-3, (p.shape, err)


def test_autocast_nests_restores_and_decorates():
    x = Tensor(np.ones((2, 3), np.float32))
    w = Tensor(np.ones((4, 3), np.float32))
    with amp.autocast():
        with amp.autocast(enabled=False):
            assert not amp.is_autocast_enabled() and F.linear(x, w).dtype == np.float32
        assert F.linear(x, w).dtype == np.float16
        with amp.autocast("cuda", dtype=np.float16):              # PyTorch's spelling
            assert amp.is_autocast_enabled()
        assert amp.is_autocast_enabled()
    with pytest.raises(KeyError):
        with amp.autocast():
            raise KeyError("boom")
    assert not amp.is_autocast_enabled()                          # restored after an exception

    @amp.autocast()
    def forward(a):
        """doc"""
        return F.linear(a, w)

    assert forward(x).dtype == np.float16 and forward.__doc__ == "doc" and not amp.is_autocast_enabled()
    assert amp.cast_inputs("linear", x, w) == (x, w)             # off: the inputs themselves
    with amp.autocast(), pytest.raises(ValueError, match="no autocast policy"):
        amp.cast_inputs("frobnicate", x)


def test_autocast_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="only dtype float16"):
        amp.autocast(dtype="bfloat16")
    with pytest.raises(ValueError, match="only dtype float16"):
        amp.autocast(dtype=np.float32)
    with pytest.raises(ValueError, match="device_type"):
        amp.autocast("float16")


# =========================================================================== GradScaler
def _param(xp, value=1.0, n=3):
    return Tensor(xp.full(n, value, dtype=np.float32), requires_grad=True)


def test_scale_and_unscale_are_exact_and_a_float16_loss_does_not_overflow(xp):
    scaler = amp.GradScaler(init_scale=2.0 ** 10)
    p = _param(xp)
    loss = (p * p).sum()
    scaled = scaler.scale(loss)
    assert float(scaled.data) == float(loss.data) * 1024
    scaled.backward()
    g_scaled = p.grad.copy()
    opt = optim.SGD([p], lr=0.1)
    scaler.unscale_(opt)
    assert xp.array_equal(p.grad, g_scaled / np.float32(1024))  # a power of two: exact
    assert xp.array_equal(p.grad, 2 * p.data)
    big = amp.GradScaler()                                       # 2^16 > 65504, float16's largest value
    assert big.scale(Tensor(np.array(2.5, np.float16))).dtype == np.float32
    assert np.isfinite(big.scale(Tensor(np.array(2.5, np.float16))).item())
    assert [t.item() for t in scaler.scale([loss, loss])] == [float(loss.data) * 1024] * 2


@pytest.mark.parametrize("bad", [None, np.inf, np.nan])
def test_unscale_as_whole_arrays_equals_the_per_parameter_reference(xp, bad):
    """_unscale_flat (one flat array per device and dtype) gives the reference's gradients bit
    for bit, in their shapes and dtypes, and the same finite flag; GradScaler uses it."""
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (5,), (2, 3, 2), (1,)]
    def params(dtype):
        ps = [Tensor(xp.zeros(s, dtype), requires_grad=True) for s in shapes]
        for p in ps:
            p.grad = xp.asarray((rng.standard_normal(p.shape) * 3e3).astype(dtype))
        if bad is not None:
            ps[2].grad[1, 2, 0] = bad
        return ps
    for dtype in (np.float32, np.float16):
        a = params(dtype)
        b = [Tensor(p.data.copy(), requires_grad=True) for p in a]
        for p, q in zip(a, b):
            q.grad = p.grad.copy()
        fa, fb = amp._unscale_each(a, 1 / 1024), amp._unscale_flat(b, 1 / 1024)
        assert bool(fa) == bool(fb) == (bad is None)
        for p, q in zip(a, b):
            assert q.grad.shape == p.grad.shape and q.grad.dtype == p.grad.dtype == dtype
            assert xp.array_equal(p.grad, q.grad, equal_nan=True)
    # through GradScaler: two dtypes, so two runs, and the flag over both
    p32, p16 = params(np.float32), params(np.float16)
    scaler = amp.GradScaler(init_scale=2.0 ** 10)
    expected = [p.grad / np.float32(1024) if p.grad.dtype == np.float32 else p.grad / np.float16(1024)
                for p in p32 + p16]
    scaler.unscale_(optim.SGD(p32 + p16, lr=0.1))
    for p, e in zip(p32 + p16, expected):
        assert xp.array_equal(p.grad, e, equal_nan=True)
    assert bool(scaler._per_optimizer[next(iter(scaler._per_optimizer))]["found_inf"]) == (bad is not None)


@pytest.mark.skipif(not backend.is_strict_standin(), reason="counts the strict CuPy stand-in's device operations")
def test_unscale_takes_the_same_device_operations_for_any_number_of_parameters():
    from minivit.testing import strict_cupy
    xp = backend.xp_for("cuda")
    def count(n):
        ps = [Tensor(xp.ones(4, np.float32), requires_grad=True) for _ in range(n)]
        for p in ps:
            p.grad = xp.full(4, 2.0, np.float32)
        scaler = amp.GradScaler()
        with strict_cupy.count_launches() as log:
            scaler.unscale_(optim.SGD(ps, lr=0.1))
        return len(log)
    assert count(2) == count(40) <= 8            # the reference: 3 a parameter, 120 for 40


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_an_overflowed_gradient_skips_the_step_and_halves_the_scale(xp, bad):
    p, q = _param(xp, 1.0), _param(xp, 2.0)
    opt = optim.AdamW([{"params": [p]}, {"params": [q], "weight_decay": 0.0}], lr=0.1)
    scaler = amp.GradScaler(init_scale=8.0)
    p.grad = xp.asarray([1.0, bad, 1.0], dtype=np.float32)
    q.grad = xp.ones(3, np.float32)
    before = p.data.copy(), q.data.copy()
    assert scaler.step(opt) is None
    scaler.update()
    assert xp.array_equal(p.data, before[0]) and xp.array_equal(q.data, before[1])  # no parameter moved
    assert opt.state == {}                                        # no optimizer state advanced either
    assert scaler.get_scale() == 4.0 and scaler.state_dict()["_growth_tracker"] == 0
    p.grad = xp.ones(3, np.float32)                               # a clean step goes through
    q.grad = xp.ones(3, np.float32)
    scaler.step(opt)
    scaler.update()
    assert not xp.array_equal(p.data, before[0]) and scaler.get_scale() == 4.0


def test_step_and_update_read_found_inf_from_the_device_once(xp):
    if xp is np:
        pytest.skip("device syncs: the CuPy run only")
    if not backend.is_strict_standin():
        pytest.skip("counts device syncs: needs the strict CuPy stand-in (not a real GPU)")
    from minivit.testing import strict_cupy
    p = _param(xp, 1.0)
    opt = optim.SGD([p], lr=0.1)
    scaler = amp.GradScaler(init_scale=8.0)
    for grad, scale in ((1.0, 8.0), (np.inf, 4.0)):
        p.grad = xp.full(3, grad, dtype=np.float32)
        with strict_cupy.count_syncs() as syncs:
            scaler.step(opt)
            scaler.update()
        assert len(syncs) == 1 and syncs[0][0].endswith("amp.py"), syncs
        assert scaler.get_scale() == scale


def test_the_scale_grows_after_growth_interval_clean_steps(xp):
    p = _param(xp)
    opt = optim.SGD([p], lr=0.0)
    scaler = amp.GradScaler(init_scale=2.0, growth_factor=4.0, backoff_factor=0.25, growth_interval=3)
    scales = []
    for bad in (0, 0, 0, 0, 0, 1, 0, 0, 0):
        p.grad = xp.full(3, np.inf if bad else 1.0, dtype=np.float32)
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    assert scales == [2, 2, 8, 8, 8, 2, 2, 2, 8]
    huge = amp.GradScaler(init_scale=2.0 ** 127, growth_interval=1)   # 2^128 overflows float32: S stays
    p.grad = xp.ones(3, np.float32)
    huge.step(opt)
    huge.update()
    assert huge.get_scale() == 2.0 ** 127


def test_unscale_then_clip_clips_the_true_gradients(xp):
    p = _param(xp, 0.0, n=4)
    opt = optim.SGD([p], lr=1.0)
    scaler = amp.GradScaler(init_scale=2.0 ** 12)
    scaler.scale((p * Tensor(xp.asarray([3.0, 4.0, 0.0, 0.0], np.float32))).sum()).backward()
    scaler.unscale_(opt)
    norm = nn.utils.clip_grad_norm_([p], 1.0)
    assert float(norm) == pytest.approx(5.0)                      # the true norm, not 5·2^12
    scaler.step(opt)                                              # uses the unscaled, clipped grads
    scaler.update()
    assert np.allclose(backend.to_numpy(p.data), [-0.6, -0.8, 0, 0], atol=1e-6)


def test_misuse_gives_pytorchs_errors(xp):
    p = _param(xp)
    opt = optim.SGD([p], lr=0.1)
    scaler = amp.GradScaler()
    with pytest.raises(RuntimeError, match="No inf checks were recorded"):
        scaler.update()
    p.grad = xp.ones(3, np.float32)
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="already been called on this optimizer"):
        scaler.unscale_(opt)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match="after step"):
        scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called"):
        scaler.step(opt)
    scaler.update()
    scaler.unscale_(opt)                                          # a new iteration starts clean
    with pytest.raises(TypeError, match="expects a Tensor"):
        scaler.scale(3.0)
    with pytest.raises(ValueError, match="backoff_factor"):
        amp.GradScaler(backoff_factor=2.0)


def test_state_dict_round_trip_and_the_disabled_pass_through(xp):
    p = _param(xp)
    opt = optim.SGD([p], lr=0.1)
    scaler = amp.GradScaler(init_scale=64.0, growth_interval=5)
    for _ in range(3):
        p.grad = xp.ones(3, np.float32)
        scaler.step(opt)
        scaler.update()
    sd = scaler.state_dict()
    assert sd == {"scale": 64.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 5,
                  "_growth_tracker": 3}
    other = amp.GradScaler()
    other.load_state_dict(sd)
    assert other.state_dict() == sd
    for s in (scaler, other):                                     # both grow on the same (5th) step
        for _ in range(2):
            p.grad = xp.ones(3, np.float32)
            s.step(opt)
            s.update()
    assert scaler.get_scale() == other.get_scale() == 128.0
    off = amp.GradScaler(enabled=False)
    loss = (p * p).sum()
    assert off.scale(loss) is loss and off.get_scale() == 1.0 and off.state_dict() == {}
    p.grad = xp.full(3, np.inf, dtype=np.float32)
    off.unscale_(opt)
    off.step(opt)                            # disabled: a plain optimizer.step(), no inf check
    off.update()
    assert not np.isfinite(backend.to_numpy(p.data)).any()
    with pytest.raises(RuntimeError, match="source state dict is empty"):
        amp.GradScaler().load_state_dict(off.state_dict())


def test_scale_sequence_matches_torch_grad_scaler():
    """The same inf/NaN pattern gives PyTorch's GradScaler and ours the same scales and counters."""
    torch = torch_or_skip()
    try:
        ts = torch.amp.GradScaler("cpu", init_scale=2.0 ** 14, growth_factor=3.0, backoff_factor=0.3,
                                  growth_interval=3)
    except (TypeError, RuntimeError, AttributeError) as e:
        pytest.skip(f"this PyTorch has no CPU GradScaler: {e}")
    tp = torch.nn.Parameter(torch.ones(3))
    topt = torch.optim.SGD([tp], lr=0.1)
    ms = amp.GradScaler(init_scale=2.0 ** 14, growth_factor=3.0, backoff_factor=0.3, growth_interval=3)
    mp = _param(np)
    mopt = optim.SGD([mp], lr=0.1)
    pattern = [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 2, 0, 0, 0, 0]       # 1: inf, 2: NaN
    for k, bad in enumerate(pattern):
        g = np.full(3, 0.5 * (k + 1), np.float32)
        if bad:
            g[1] = np.inf if bad == 1 else np.nan
        ts.scale(torch.ones(())), ms.scale(Tensor(np.ones((), np.float32)))   # torch sets S up lazily here
        tp.grad = torch.from_numpy(g.copy()) * ts.get_scale()    # as if backward of the scaled loss
        mp.grad = g * np.float32(ms.get_scale())
        ts.step(topt)
        ts.update()
        ms.step(mopt)
        ms.update()
        assert ms.get_scale() == ts.get_scale(), k
        assert ms.state_dict() == ts.state_dict(), k
        np.testing.assert_allclose(mp.data, tp.detach().numpy(), rtol=1e-6)


# =========================================================================== a short run
def _train_curve(fp16: bool, epochs: int = 8, n: int = 64, batch_size: int = 16):
    """Loss per step of a 1-block ViT (8x8 patches: 16 tokens) with AdamW on 64 synthetic images,
    from the same initialisation and the same batches."""
    backend.manual_seed(0)
    model = minivit.models.create_model("vit_tiny", depth=1, embed_dim=32, num_heads=2, patch_size=8)
    opt = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    scaler = amp.GradScaler(enabled=fp16)
    loader = data.DeviceLoader(data.load_synthetic(n, 1).train, "cpu", batch_size, shuffle=True, seed=0)
    losses = []
    for epoch in range(epochs):
        for x, target, _ in loader.batches(epoch):
            with amp.autocast(enabled=fp16):
                logits = model(Tensor(x))
                loss = F.cross_entropy(logits, target)
            assert logits.dtype == (np.float16 if fp16 else np.float32)
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss.data))
    assert all(p.dtype == np.float32 for p in model.parameters())
    return np.array(losses)


def test_a_short_fp16_run_tracks_fp32():
    fp32, fp16 = _train_curve(False), _train_curve(True)
    assert len(fp32) == len(fp16) == 32
    # Both learn: the last 8 steps' mean loss is well below the first 8 steps' (measured: 2.30 → 2.03).
    for curve in (fp32, fp16):
        assert curve[-8:].mean() < curve[:8].mean() - 0.15
    # And stay together: measured max |Δloss| 1.4e-4 over the 32 steps. 2e-3 is about one float16
    # rounding of a loss of 2.3 (2.3·2^-11 ≈ 1.1e-3) with room: the curves agree to float16's
    # resolution, while a wrong cast or a mis-scaled gradient moves them by 1e-1 or more.
    assert np.abs(fp32 - fp16).max() < 2e-3


# =========================================================================== TF32
def test_tf32_switch():
    if not backend.cupy_available():
        assert backend.set_tf32(True) is False and backend.tf32_enabled() is False   # CPU: a no-op
        return
    import cupy
    before = backend.tf32_enabled()
    try:
        on = backend.set_tf32(True)
        assert backend.tf32_enabled() == on == (int(cupy.cuda.Device().compute_capability) >= 80)
        assert backend.set_tf32(False) is False and backend.tf32_enabled() is False
    finally:
        backend.set_tf32(before)
