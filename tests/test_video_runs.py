"""benchmarks/video_runs.py: the hand-made motion detector reads the labels of the motion clips
(and reads nothing when it is blind to order), every TimeSformer is exactly blind to the order of
the frames as built with the released init (its time embedding starts at zero: why those runs had no
signal) and sees it with the runs' init, and the label-signal measurement returns cosines."""
import importlib.util
import pathlib

import numpy as np
import pytest

import minivit as mv
from minivit.data.motion import ClipSplit, motion_split
from minivit.models import create_model

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def video_runs():
    spec = importlib.util.spec_from_file_location("video_runs", ROOT / "benchmarks" / "video_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hand_made_detector_reads_the_direction(video_runs):
    clips = motion_split(300, [0, 1])
    assert video_runs.shift_detector_accuracy(clips) > 0.98
    flipped = ClipSplit(clips.clips, 1 - clips.labels, clips.classes)                # labels swapped
    assert video_runs.shift_detector_accuracy(flipped) < 0.02
    backwards = ClipSplit(clips.clips[:, ::-1].copy(), 1 - clips.labels, clips.classes)  # played backwards
    assert video_runs.shift_detector_accuracy(backwards) > 0.98


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time", "space_only"])
def test_every_timesformer_is_blind_to_frame_order_as_built(attention_type):
    """The time embedding starts at zero (the released code's init), and nothing else in the model
    tells the frames apart: reversing the clip leaves the logits unchanged, to rounding. Once the
    time embedding is not zero, divided and joint attention see the order."""
    mv.manual_seed(0)
    model = create_model("timesformer_tiny", attention_type=attention_type, depth=2).eval()
    x = np.random.default_rng(0).standard_normal((2, 8, 3, 32, 32)).astype(np.float32)
    with mv.no_grad():
        forwards, backwards = model(mv.tensor(x)).numpy(), model(mv.tensor(x[:, ::-1].copy())).numpy()
    assert np.abs(forwards - backwards).max() < 1e-5
    if model.time_embed is not None:
        model.time_embed.data[...] = np.random.default_rng(1).standard_normal(model.time_embed.shape)
        with mv.no_grad():
            forwards, backwards = model(mv.tensor(x)).numpy(), model(mv.tensor(x[:, ::-1].copy())).numpy()
        assert np.abs(forwards - backwards).max() > 1e-4


@pytest.mark.parametrize("name", ["divided", "joint"])
def test_the_recipes_timesformer_sees_frame_order_as_built(video_runs, name):
    """The runs build TimeSformer with ``TIMESFORMER_INIT`` (sinusoidal time embedding, Linear std
    0.125): the untrained model already tells a clip from the clip played backwards."""
    from minivit.models.registry import parse_model_kwargs
    args = video_runs.model_args(name)
    kwargs = parse_model_kwargs(args[args.index("--model-kwargs") + 1])
    assert kwargs["time_embed_init"] == "sincos" and kwargs["init_std"] == 0.125
    mv.manual_seed(0)
    model = create_model("timesformer_tiny", **dict(kwargs, depth=2)).eval()
    x = np.random.default_rng(0).standard_normal((2, 8, 3, 32, 32)).astype(np.float32)
    with mv.no_grad():
        forwards, backwards = model(mv.tensor(x)).numpy(), model(mv.tensor(x[:, ::-1].copy())).numpy()
    assert np.abs(forwards - backwards).max() > 1e-3


def test_label_signal_returns_two_cosines(video_runs):
    mv.manual_seed(0)
    model = create_model("timesformer_tiny", depth=1)
    clips = motion_split(32, [0, 0])
    true, shuffled = video_runs.label_signal(model, clips.clips, clips.labels)
    assert -1 <= true <= 1 and -1 <= shuffled <= 1
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
