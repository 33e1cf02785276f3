"""The generated volumes (minivit.data.volumes): determinism, shapes, class statistics, the
shapes' geometry, and errors."""
import numpy as np
import pytest

from minivit.data.volumes import (CHUNK, VOLUME_CLASSES, VolumeSplit, load_volumes, make_volumes, to_float,
                                  volume_split)


@pytest.fixture(scope="module")
def split():
    return volume_split(CHUNK + 8, seed=5)            # two chunks


def test_shapes_dtypes_and_label_range(split):
    assert split.images.shape == (CHUNK + 8, 1, 32, 32, 32) and split.images.dtype == np.uint8
    assert split.labels.shape == (CHUNK + 8, 32, 32, 32) and split.labels.dtype == np.int64
    assert split.labels.min() == 0 and split.labels.max() == len(VOLUME_CLASSES) - 1
    assert split.num_classes == 4 and len(split.subset(3)) == 3
    x = to_float(split.images[:2])
    assert x.dtype == np.float32 and -1 <= x.min() and x.max() <= 1


def test_deterministic_and_prefix_stable(split):
    again = volume_split(CHUNK + 8, seed=5)
    np.testing.assert_array_equal(again.images, split.images)
    np.testing.assert_array_equal(again.labels, split.labels)
    short = volume_split(5, seed=5)                   # the first volumes do not depend on n
    np.testing.assert_array_equal(short.images, split.images[:5])
    np.testing.assert_array_equal(short.labels, split.labels[:5])
    other = volume_split(5, seed=6)
    assert not np.array_equal(other.labels, short.labels)
    ds = load_volumes(4, 4, seed=0)
    assert not np.array_equal(ds.train.labels, ds.test.labels)   # train and test from different seeds


def test_class_statistics(split):
    lab, vol = split.labels, split.images[:, 0].astype(np.float64)
    per_volume = np.stack([(lab == c).reshape(len(lab), -1).any(1) for c in range(4)], 1)   # (N, 4)
    assert per_volume[:, 1:].any(1).all()             # every volume has an object
    assert (per_volume[:, 1:].mean(0) > 0.5).all()    # each class in most volumes (2–5 objects of 3 kinds)
    frac = np.array([(lab == c).mean() for c in range(4)])
    assert 0.8 < frac[0] < 0.97 and (frac[1:] > 0.005).all()
    # brightness: classes ordered as CLASS_INTENSITY, but overlapping (intensity alone is not enough)
    means = np.array([vol[lab == c].mean() for c in range(4)])
    stds = np.array([vol[lab == c].std() for c in range(4)])
    assert (np.diff(means) > 5).all()
    assert (stds[1:] > np.diff(means[1:]).max()).all()
    # noise: the background is not flat
    assert vol[lab == 0].std() > 10


def _principal_axes(mask):
    """Square roots of the coordinate covariance's eigenvalues, ascending (∝ an ellipsoid's semi-axes)."""
    pts = np.argwhere(mask).astype(np.float64)
    return np.sqrt(np.linalg.eigvalsh(np.cov(pts.T)))


def test_each_class_has_its_shape():
    vol, lab = make_volumes(np.random.default_rng(0), 24, min_objects=1, max_objects=1)
    ratios = {1: [], 2: [], 3: []}
    for i in range(24):
        c = int(lab[i].max())
        ax = _principal_axes(lab[i] == c)
        ratios[c].append((ax[2] / ax[0], ax[1] / ax[0]))     # largest/smallest, middle/smallest
    assert all(ratios[c] for c in ratios), "each class drawn at least once"
    for big, mid in ratios[1]:
        assert big < 1.25                                    # sphere: round
    for big, mid in ratios[2]:
        assert big > 1.8 and mid < 1.3                       # rod: one long axis
    for big, mid in ratios[3]:
        assert big > 2.2 and mid > 2.2 and big / mid < 1.3   # disc: two long axes
    # objects are brighter than the background around them
    for i in range(24):
        inside = lab[i] > 0
        assert vol[i, 0][inside].mean() > vol[i, 0][~inside].mean() + 40


def test_errors():
    with pytest.raises(ValueError, match="multiple of 16"):
        load_volumes(2, 2, size=24)
    with pytest.raises(ValueError, match="min_objects"):
        make_volumes(np.random.default_rng(0), 2, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match=r"labels must have shape \(1, 4, 4, 4\)"):
        VolumeSplit(np.zeros((1, 1, 4, 4, 4), np.uint8), np.zeros((1, 4, 4), np.int64))
