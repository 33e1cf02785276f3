"""CPU threads (backend.parallel_pieces): the ops that split their work over threads give what
they give on one thread, the pieces cover the work exactly once, and a forked child still runs.

The pieces normally have a minimum size (small work stays on the calling thread), so these tests
lower it to one item and use three threads: every split point, uneven pieces, more threads than
the machine has cores."""
import multiprocessing
import os

import numpy as np
import pytest

import minivit.functional as F
from minivit import Tensor, backend, optim
from minivit.functional import activation


@pytest.fixture
def threads(monkeypatch):
    """Run the test body's ops on 3 threads with pieces of any size; restore the count after."""
    before = backend.get_num_threads()
    real = backend.parallel_pieces
    calls = []

    def pieces(n, fn, min_size=1):
        calls.append(n)
        return real(n, fn, 1)
    monkeypatch.setattr(backend, "parallel_pieces", pieces)

    def use(k):
        backend.set_num_threads(k)
    yield use, calls
    backend.set_num_threads(before)


# =========================================================================== parallel_pieces itself
@pytest.mark.parametrize("n, k, min_size", [(10, 3, 1), (7, 4, 1), (2, 3, 1), (100, 2, 60), (0, 2, 1), (5, 1, 1)])
def test_pieces_cover_the_range_once_and_in_order(n, k, min_size):
    before = backend.get_num_threads()
    backend.set_num_threads(k)
    try:
        got = backend.parallel_pieces(n, lambda lo, hi: (lo, hi), min_size=min_size)
    finally:
        backend.set_num_threads(before)
    assert got[0][0] == 0 and got[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(got, got[1:]))          # contiguous, in order
    assert len(got) == max(1, min(k, n // min_size))                   # small work stays whole


def test_an_exception_in_a_piece_reaches_the_caller():
    before = backend.get_num_threads()
    backend.set_num_threads(3)

    def fn(lo, hi):
        if lo > 0:
            raise ValueError(f"piece {lo}")
        return lo
    try:
        with pytest.raises(ValueError, match="piece"):
            backend.parallel_pieces(9, fn)
    finally:
        backend.set_num_threads(before)


def test_two_callers_at_once_each_get_their_own_pieces():
    """Each call collects its pieces' results on a queue of its own: two Python threads using
    the workers at the same time (a loader thread and the training loop, say) never swap results."""
    import threading
    before = backend.get_num_threads()
    backend.set_num_threads(3)
    out, errors = {}, []

    def caller(tag):
        try:
            for _ in range(200):
                got = backend.parallel_pieces(30, lambda lo, hi: (tag, lo, hi))
                assert got == [(tag, 0, 10), (tag, 10, 20), (tag, 20, 30)], got
            out[tag] = True
        except BaseException as e:                                   # noqa: BLE001 (reported below)
            errors.append(e)
    try:
        threads = [threading.Thread(target=caller, args=(t,)) for t in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        backend.set_num_threads(before)
    assert not errors and out == {"a": True, "b": True}


def test_pieces_inside_pieces_run_whole_instead_of_waiting_on_the_pool():
    before = backend.get_num_threads()
    backend.set_num_threads(2)
    try:
        got = backend.parallel_pieces(4, lambda lo, hi: backend.parallel_pieces(10, lambda a, b: (a, b)))
    finally:
        backend.set_num_threads(before)
    assert got == [[(0, 5), (5, 10)], [(0, 10)]]     # the caller's piece splits; the worker's runs whole


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="positive int"):
        backend.set_num_threads(bad)


def test_num_threads_default_and_environment():
    import subprocess
    import sys
    code = "import minivit.backend as b; print(b.get_num_threads())"
    env = dict(os.environ, MINIVIT_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "3"
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(env, MINIVIT_NUM_THREADS="two"))
    assert bad.returncode != 0 and "MINIVIT_NUM_THREADS must be a positive integer" in bad.stderr
    env.pop("MINIVIT_NUM_THREADS")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert int(out.stdout.strip()) == cores


def _child(queue):
    backend.set_num_threads(2)
    queue.put(backend.parallel_pieces(8, lambda lo, hi: hi - lo))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")   # Python 3.12+: that is the point
def test_a_forked_child_gets_its_own_threads():
    """The parent's worker threads do not exist in a forked child (a DataLoader worker, say):
    reusing the parent's pool there would wait for ever."""
    before = backend.get_num_threads()
    backend.set_num_threads(2)
    backend.parallel_pieces(8, lambda lo, hi: None)                     # the parent's pool exists
    backend.set_num_threads(before)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    proc.join(timeout=60)
    alive = proc.is_alive()
    if alive:
        proc.kill()
    assert not alive and proc.exitcode == 0
    assert queue.get(timeout=5) == [4, 4]


# =========================================================================== ops: threads give what one thread gives
def _run(fn, arrays, g, dtype):
    ts = [Tensor(np.asarray(a, dtype=dtype), requires_grad=True) for a in arrays]
    y = fn(*ts)
    y.backward(np.asarray(g, dtype=dtype))
    return [y.data] + [t.grad for t in ts]


def _same(fn, arrays, dtype, threads, rtol):
    use, calls = threads
    rng = np.random.default_rng(0)
    y_shape = fn(*[Tensor(np.asarray(a, dtype=dtype)) for a in arrays]).shape
    g = rng.standard_normal(y_shape)
    use(1)
    one = _run(fn, arrays, g, dtype)
    use(3)
    calls.clear()
    many = _run(fn, arrays, g, dtype)
    assert calls, "the op never asked for pieces"
    for a, b in zip(one, many):
        if rtol == 0:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


def test_gelu_on_threads_is_bit_for_bit_one_thread(threads, monkeypatch):
    monkeypatch.setattr(activation, "_BLOCK", 5)                       # several blocks per piece, a ragged last one
    x = np.random.default_rng(1).standard_normal((3, 7, 4)) * 3
    _same(F.gelu, [x], np.float32, threads, rtol=0)


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 1), (1, 0)])
def test_depthwise_conv_on_threads_matches_one_thread(threads, stride, padding):
    rng = np.random.default_rng(2)
    x = np.ascontiguousarray(rng.standard_normal((5, 6, 6, 4))).transpose(0, 3, 1, 2)   # channels-last, as tokens
    w, b = rng.standard_normal((4, 1, 3, 3)), rng.standard_normal(4)
    _same(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding, groups=4), [x, w, b],
          np.float64, threads, rtol=1e-13)


@pytest.mark.parametrize("weights", [True, False])
def test_layer_norm_on_threads_matches_one_thread(threads, weights):
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((5, 7, 6)) * 2 + 1]
    if weights:
        arrays += [rng.standard_normal(6), rng.standard_normal(6)]
        fn = lambda x, w, b: F.layer_norm(x, (6,), w, b)          # noqa: E731
    else:
        fn = lambda x: F.layer_norm(x, (6,))                       # noqa: E731
    _same(fn, arrays, np.float64, threads, rtol=1e-13)


@pytest.mark.parametrize("shape", [(4, 3, 5), (7, 9)])
def test_softmax_on_threads_is_bit_for_bit_one_thread(threads, shape):
    x = np.random.default_rng(6).standard_normal(shape) * 4
    _same(lambda x: F.softmax(x, dim=-1), [x], np.float64, threads, rtol=0)


def test_linear_and_dense_conv_bias_on_threads_match_one_thread(threads):
    rng = np.random.default_rng(4)
    _same(F.linear, [rng.standard_normal((9, 5)), rng.standard_normal((3, 5)), rng.standard_normal(3)],
          np.float64, threads, rtol=0)
    x = np.ascontiguousarray(rng.standard_normal((3, 4, 4, 2))).transpose(0, 3, 1, 2)
    _same(lambda x, w, b: F.conv2d(x, w, b, stride=2), [x, rng.standard_normal((5, 2, 2, 2)),
                                                       rng.standard_normal(5)], np.float64, threads, rtol=0)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_on_threads_is_bit_for_bit_one_thread(threads, monkeypatch, amsgrad):
    from minivit.optim import adamw
    monkeypatch.setattr(adamw, "_PIECE", 4)                              # every parameter is "large"
    use, calls = threads
    rng = np.random.default_rng(5)
    start = [rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal(11).astype(np.float32)]
    grads = [[rng.standard_normal(a.shape).astype(np.float32) for a in start] for _ in range(3)]
    results = []
    for k in (1, 3):
        use(k)
        calls.clear()
        params = [Tensor(a.copy(), requires_grad=True) for a in start]
        opt = optim.AdamW(params, lr=0.1, weight_decay=0.05, amsgrad=amsgrad)
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = g.copy()
            opt.step()
        results.append([p.data for p in params])
        assert calls or k == 1
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
