"""The lessons' one figure style (minivit.notebook.figure_style_problems / save_figure): each rule
fires on a figure that breaks it and stays quiet on one that keeps it."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from minivit import notebook  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_a_labelled_plot_passes_and_an_unlabelled_one_does_not():
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [3, 1, 2])
    assert any("no x label" in p for p in notebook.figure_style_problems(fig))
    assert any("no y label" in p for p in notebook.figure_style_problems(fig))
    ax.set_xlabel("epoch"); ax.set_ylabel("loss")
    assert notebook.figure_style_problems(fig) == []


def test_a_shared_axis_may_carry_one_label_and_a_picture_needs_none():
    fig, (a, b) = plt.subplots(1, 2, sharey=True)
    for ax in (a, b):
        ax.plot([0, 1], [0, 1]); ax.set_xlabel("x")
    a.set_ylabel("y")
    assert notebook.figure_style_problems(fig) == []
    fig, ax = plt.subplots()
    ax.imshow(np.random.default_rng(0).random((4, 4, 3)))       # an RGB picture
    ax.set_xticks([]); ax.set_yticks([])
    assert notebook.figure_style_problems(fig) == []


def test_a_colour_mapped_image_needs_a_labelled_colour_bar_or_a_shared_one():
    rng = np.random.default_rng(0)
    fig, (a, b) = plt.subplots(1, 2)
    ims = [ax.imshow(rng.random((4, 4)), vmin=0, vmax=1) for ax in (a, b)]
    for ax in (a, b):
        ax.set_xticks([]); ax.set_yticks([])
    assert sum("without a colour bar" in p for p in notebook.figure_style_problems(fig)) == 1   # one message
    cb = fig.colorbar(ims[1], ax=b)
    assert any("colour bar has no label" in p for p in notebook.figure_style_problems(fig))
    cb.set_label("attention weight")
    assert notebook.figure_style_problems(fig) == []              # one bar for both: same map, same limits
    ims[0].set_clim(0, 2)                                          # another scale: it needs its own bar
    assert any("without a colour bar" in p for p in notebook.figure_style_problems(fig))


def test_masks_and_categories_need_no_colour_bar():
    fig, (a, b) = plt.subplots(1, 2)
    a.imshow(np.eye(4), cmap="Greens")                             # two values: a mask
    b.imshow(np.arange(16).reshape(4, 4) % 5, cmap="tab10")        # categories
    for ax in (a, b):
        ax.set_xticks([]); ax.set_yticks([])
    assert notebook.figure_style_problems(fig) == []


def test_accuracy_is_in_percent():
    fig, ax = plt.subplots()
    ax.plot([1, 2], [0.3, 0.5]); ax.set_xlabel("epoch"); ax.set_ylabel("test accuracy")
    assert any("without '%'" in p for p in notebook.figure_style_problems(fig))
    ax.set_ylabel("test accuracy (%)")
    assert any("within [0, 1]" in p for p in notebook.figure_style_problems(fig))
    ax.lines[0].set_ydata([30, 50])
    assert notebook.figure_style_problems(fig) == []


def test_save_figure_refuses_a_broken_figure_and_writes_a_good_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVIT_FIGURES", str(tmp_path))
    monkeypatch.delenv("MINIVIT_FIGURE_AUDIT", raising=False)
    fig, ax = plt.subplots()
    ax.plot([1, 2], [1, 2])
    with pytest.raises(ValueError, match="breaks the lessons' figure style: .*no x label"):
        notebook.save_figure(fig, "broken")
    assert not (tmp_path / "broken.png").exists()
    ax.set_xlabel("a"); ax.set_ylabel("b")
    path = notebook.save_figure(fig, "good")
    assert path == tmp_path / "good.png" and path.stat().st_size > 1000


def test_the_trainers_curves_keep_the_style():
    from minivit.plotting import curves_figure
    metrics = [dict(epoch=e, train_loss=2.0 / e, test_loss=2.1 / e, train_acc=0.1 * e, test_acc=0.09 * e,
                    lr=1e-3, epoch_time_s=1.0, images_per_s=10.0) for e in (1, 2, 3)]
    assert notebook.figure_style_problems(curves_figure(metrics, "run")) == []


def test_every_lesson_saves_its_figures_through_the_style_check():
    """No lesson calls savefig itself: every figure goes through save_figure, so CI's run of the
    lessons holds each one to the style (lesson 03's curves and confusion come from minivit.plotting)."""
    import json
    import pathlib
    repo = pathlib.Path(__file__).resolve().parents[1]
    for path in sorted((repo / "lessons").glob("*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        assert ".savefig(" not in code, f"{path.name} saves a figure without the style check: use save_figure"
