"""Datasets and batches: CIFAR-10 (official archive, ImageFolder folder or tar), a synthetic set,
a generated segmentation set (``shapes``), and device-side augmentation.

    from minivit import data
    ds = data.load_dataset("cifar10")                 # or "synthetic"; data_dir=... to point at a copy
    ds.train.images, ds.train.labels                  # (50000, 3, 32, 32) uint8, (50000,) int64
    aug = data.Augment(xp, data.AugmentConfig(randaugment=(2, 9)), ds.num_classes, seed=0)
    loader = data.DeviceLoader(ds.train, "cuda", 128, shuffle=True, augment=aug)
    for x, target, labels in loader.batches(epoch=0): ...

Segmentation (``--task segmentation``): ``load_dataset("shapes")`` gives 64×64 scenes of
overlapping textured shapes with per-pixel masks (N, H, W): classes background, disk,
square, triangle, ring, and 255 (ignore) on every boundary; see :mod:`minivit.data.segmentation`.
``load_dataset("volumes", volume_size=32)`` gives 3-D volumes (N, 1, S, S, S) of spheres, rods and
discs in noise with per-voxel labels (N, S, S, S); see :mod:`minivit.data.volumes`.

Modules: ``cifar10`` (finding, checking, parsing and caching CIFAR-10), ``synthetic``
(generated shapes), ``segmentation`` (generated segmentation scenes), ``augment`` (crop/flip, RandAugment, random erasing, mixup/cutmix
on the device), ``loader`` (batching on the device), ``io`` (atomic writes, safe unpickling).
"""
from __future__ import annotations

from minivit.data.augment import (CIFAR10_MEAN, CIFAR10_STD, RANDAUGMENT_OPS, Augment,  # noqa: F401
                                  AugmentConfig, CounterRNG, mix_batch, normalize, rand_augment,
                                  parse_resize_schedule, random_crop_flip, random_erasing, resize_images,
                                  size_at_epoch)
from minivit.data.cifar10 import (CIFAR10_CLASSES, CIFAR10_MD5, CIFAR10_URL, DatasetError,  # noqa: F401
                                  ImageDataset, ImageSplit, default_cache_dir, load_cifar10,
                                  load_imagefolder, load_imagefolder_cached, load_official_archive,
                                  load_official_folder)
from minivit.data.loader import DeviceLoader  # noqa: F401
from minivit.data.segmentation import (IGNORE_INDEX, SHAPES_CLASSES, SHAPES_SIZES,  # noqa: F401
                                       SegmentationAugment, SegmentationSplit, load_shapes)
from minivit.data.synthetic import SYNTHETIC_CLASSES, load_synthetic  # noqa: F401
from minivit.data.volumes import (VOLUME_CLASSES, VOLUME_MEAN, VOLUME_STD, VOLUMES_SIZES,  # noqa: F401
                                   VolumeSplit, brightness_rule, load_volumes)
from minivit.data.motion import MOTION_CLASSES, ClipSplit, load_motion  # noqa: F401

DATASETS = ("cifar10", "synthetic", "shapes", "motion", "volumes")
SEGMENTATION_DATASETS = ("shapes", "volumes")   # per-pixel (per-voxel) masks: --task segmentation
VOLUME_DATASETS = ("volumes",)             # 3-D: (N, 1, D, H, W) volumes for a volume model (UNETR)
SYNTHETIC_SIZES = (10000, 2000)   # train, test
MOTION_SIZES = (4000, 1000)       # train, test clips (--task video)


def normalization(name: str) -> tuple:
    """(mean, std) per channel with which a dataset's uint8 inputs are normalised: CIFAR-10's
    statistics for the image and clip sets, (0.5,), (0.5,) for the one-channel volumes ([−1, 1])."""
    return (VOLUME_MEAN, VOLUME_STD) if name in VOLUME_DATASETS else (CIFAR10_MEAN, CIFAR10_STD)


def _generated_sizes(full, subset, test_subset, need_train) -> tuple:
    """(train, test) counts to generate of a set whose full sizes are ``full``: the --subset and
    --test-subset ones (a --subset alone: the same fraction of the test split)."""
    full_train, full_test = full
    n_train = min(subset or full_train, full_train) if need_train else 1
    n_test = min(test_subset or full_test, full_test)
    if test_subset is None and subset is not None and subset < full_train:
        n_test = max(1, round(full_test * subset / full_train))
    return n_train, n_test


def load_dataset(name: str, data_dir=None, *, subset: int | None = None, test_subset: int | None = None,
                 verbose: bool = False, need_train: bool = True, download: bool = False,
                 volume_size: int = 32) -> ImageDataset:
    """Load a dataset by name and keep the first ``subset`` train / ``test_subset`` test images.

    Without ``test_subset``, a ``subset`` of the training split scales the test split by the
    same fraction, stratified by class (``ImageSplit.stratified``): ``--subset 10000`` of
    CIFAR-10's 50,000 tests on 2,000 of its 10,000 images, 200 a class, so a short run does not
    spend most of its time testing. ``ds.test_selection`` says which was done.

    The generated sets are made only as far as needed (their first k images do not
    depend on how many are made); ``need_train=False`` (evaluation) skips most of the train split.
    ``volume_size``: the side of the ``volumes`` set's cubes (a multiple of 16).
    """
    if name == "synthetic":
        full_train, full_test = SYNTHETIC_SIZES
        n_train = min(subset or full_train, full_train) if need_train else 1
        n_test = min(test_subset or SYNTHETIC_SIZES[1], SYNTHETIC_SIZES[1])
        ds = load_synthetic(n_train, n_test)
    elif name == "shapes":
        full_train, full_test = SHAPES_SIZES
        ds = load_shapes(*_generated_sizes(SHAPES_SIZES, subset, test_subset, need_train))
    elif name == "volumes":                      # (N, 1, S, S, S) volumes, generated as far as needed
        full_train, full_test = VOLUMES_SIZES
        ds = load_volumes(*_generated_sizes(VOLUMES_SIZES, subset, test_subset, need_train), volume_size)
    elif name == "motion":                       # clips (N, 8, 3, 32, 32), generated as far as needed
        full_train, full_test = MOTION_SIZES
        n_train = min(subset or full_train, full_train) if need_train else 1
        ds = load_motion(n_train, min(test_subset or full_test, full_test))
    elif name == "cifar10":
        ds = load_cifar10(data_dir, download=download, verbose=verbose)
        full_train, full_test = len(ds.train), len(ds.test)
    else:
        raise ValueError(f"unknown dataset {name!r}: choose one of {DATASETS}")
    ds.train = ds.train.subset(subset)
    if test_subset is not None:
        ds.test = ds.test.subset(test_subset)
        if len(ds.test) < full_test:
            ds.test_selection = f"the first {len(ds.test)} of {full_test} test images (--test-subset)"
    elif subset is not None and subset < full_train:
        n = max(1, round(full_test * subset / full_train))
        ds.test = ds.test.stratified(n)
        ds.test_selection = (f"{len(ds.test)} of {full_test} test images, stratified by class: the --subset "
                             f"fraction ({subset}/{full_train}); --test-subset N to choose")
    return ds
