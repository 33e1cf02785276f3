"""The generated motion clips (minivit.data.motion): deterministic, balanced and prefix-stable;
the label is in the order of the frames and nowhere else — exactly (a left clip is a right clip
played in reverse; every frame position is uniform), and measured (nearest-class-mean
classifiers on one frame or on the frame average stay at chance while a motion estimator reads
every label)."""
import numpy as np
import pytest

from minivit.data.motion import (MOTION_CLASSES, SHAPES, ClipSplit, load_motion, make_motion_clips,
                                 motion_split, render_clips, sprite)


@pytest.fixture(scope="module")
def split():
    return motion_split(1200, [7, 0])


def test_deterministic_balanced_and_prefix_stable(split):
    again = motion_split(1200, [7, 0])
    np.testing.assert_array_equal(split.clips, again.clips)
    np.testing.assert_array_equal(split.labels, again.labels)
    assert split.clips.shape == (1200, 8, 3, 32, 32) and split.clips.dtype == np.uint8
    assert np.bincount(split.labels[:1000]).tolist() == [500, 500]
    np.testing.assert_array_equal(motion_split(300, [7, 0]).clips, split.clips[:300])
    assert not np.array_equal(motion_split(300, [8, 0]).clips, split.clips[:300])
    ds = load_motion(40, 20, seed=3)
    assert (len(ds.train), len(ds.test), ds.classes) == (40, 20, MOTION_CLASSES)
    assert not np.array_equal(ds.train.clips[:20], ds.test.clips)


def test_a_left_clip_is_a_right_clip_played_in_reverse():
    """The label's only trace: reversing time maps one class onto the other, appearance kept."""
    rng = np.random.default_rng(0)
    n, T, S = 6, 5, 16
    masks = np.zeros((n, S, S), dtype=bool)
    masks[:, :5, :5] = sprite("triangle", 5)
    starts = rng.integers(0, S, (n, 2))
    v = np.array([[0, 1], [0, 2], [0, 1], [0, 2], [1, 0], [2, 0]])      # any velocity: vertical too
    fg, bg = rng.uniform(0.5, 1, (n, 3)).astype(np.float32), rng.uniform(0, 0.3, n).astype(np.float32)
    noise = rng.standard_normal((n, T, 3, S, S)).astype(np.float32) * 0.05
    forward = render_clips(masks, starts, v, fg, bg, noise)
    backward = render_clips(masks, (starts + (T - 1) * v) % S, -v, fg, bg, noise[:, ::-1])
    np.testing.assert_array_equal(backward, forward[:, ::-1])
    assert not np.array_equal(backward, forward)


@pytest.mark.parametrize("t", [0, 3])
def test_every_frame_has_the_same_distribution_under_both_labels(t):
    """Over all S² (uniform) starts, frame t of the right-moving clips and of the left-moving ones are
    the same multiset of pictures: every translation of the shape, once."""
    S, T = 12, 4
    mask = np.zeros((S, S), dtype=bool)
    mask[:5, :5] = sprite("plus", 5)
    starts = np.stack(np.meshgrid(np.arange(S), np.arange(S), indexing="ij"), -1).reshape(-1, 2)
    n = len(starts)
    masks, fg, bg = np.repeat(mask[None], n, 0), np.tile([[0.9, 0.2, 0.4]], (n, 1)), np.full(n, 0.1)
    noise = np.zeros((n, T, 3, S, S), dtype=np.float32)
    for v in ([0, 2], [1, 0]):
        fwd = render_clips(masks, starts, np.tile(v, (n, 1)), fg, bg, noise)[:, t]
        bwd = render_clips(masks, starts, -np.tile(v, (n, 1)), fg, bg, noise)[:, t]
        key = lambda frames: sorted(f.tobytes() for f in frames)  # noqa: E731
        assert key(fwd) == key(bwd)
        assert len(set(key(fwd))) == n                          # all S² translations, each once


def _nearest_mean_accuracy(train_x, train_y, test_x, test_y):
    means = np.stack([train_x[train_y == c].mean(0) for c in (0, 1)])      # (2, F)
    d = ((test_x[:, None] - means[None]) ** 2).sum(-1)
    return float((d.argmin(1) == test_y).mean())


def test_one_frame_or_the_frame_average_stays_at_chance_but_the_motion_tells_every_label(split):
    x, y = split.clips.astype(np.float32) / 255, split.labels
    tr, te = slice(0, 800), slice(800, 1200)
    for feats in (x[:, 0].reshape(len(x), -1), x[:, 5].reshape(len(x), -1), x.mean(1).reshape(len(x), -1)):
        acc = _nearest_mean_accuracy(feats[tr], y[tr], feats[te], y[te])
        assert abs(acc - 0.5) < 0.08, acc                       # 400 test clips: std of chance is 0.025
    # a hand-made motion estimator: which shift (±1, ±2 px along rows or columns) best carries
    # each frame onto the next; shifts to the right (label 0) are positive
    g = x.mean(2)
    g = g - g.mean(axis=(2, 3), keepdims=True)                  # (n, T, H, W)
    scores = {}
    for axis in (2, 3):
        for d in (-2, -1, 1, 2):
            scores[(axis, d)] = (np.roll(g[:, :-1], d, axis=axis) * g[:, 1:]).sum(axis=(1, 2, 3))
    keys = list(scores)
    best = np.stack([scores[k] for k in keys]).argmax(0)
    pred = np.array([0 if keys[b][1] > 0 else 1 for b in best])
    assert (pred == y).mean() > 0.99


def test_shapes_and_errors():
    for kind in SHAPES:
        m = sprite(kind, 7)
        assert m.shape == (7, 7) and 0 < m.sum() <= 49
    with pytest.raises(ValueError, match="unknown shape"):
        sprite("star", 5)
    with pytest.raises(ValueError, match="0 \\(right\\) or 1"):
        make_motion_clips(np.array([0, 2]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least one clip"):
        motion_split(0, 0)
    with pytest.raises(ValueError, match="uint8 \\(N, T, 3, H, W\\)"):
        ClipSplit(np.zeros((2, 3, 32, 32), np.uint8), np.zeros(2, np.int64), MOTION_CLASSES)
