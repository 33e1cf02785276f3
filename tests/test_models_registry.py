"""Every registered model: the papers' parameter counts, the CIFAR variants' sizes, and the basics."""
import numpy as np
import pytest

import minivit as mv
import minivit.functional as F
from minivit.complexity import count_params
from minivit.models import create_model, list_models
from minivit.models.papers import PAPERS

CIFAR = ["vit_tiny", "deit_tiny", "pvt_tiny", "pvt_v2_tiny", "swin_tiny", "cvt_tiny", "pit_tiny", "mixer_tiny",
         "convmixer_tiny", "mvitv2_tiny", "xcit_tiny"]


def test_every_model_name_is_registered():
    names = set(list_models())
    assert set(CIFAR) <= names and set(PAPERS) <= names
    assert list_models("swin_*_224") == ["swin_b_224", "swin_s_224", "swin_t_224"]


def test_unknown_model_error_suggests_names():
    with pytest.raises(ValueError, match="did you mean|Did you mean") as e:
        create_model("vit_tinny")
    assert "vit_tiny" in str(e.value)


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_224_params_match_papers_within_1_percent(name):
    entry = PAPERS[name]
    target = entry.released_params_m or entry.params_m   # the released model where the table disagrees
    params = count_params(create_model(name)) / 1e6
    assert abs(params / target - 1) <= 0.01, (name, params, target)
    if entry.released_params_m is not None:
        assert entry.note                              # the table says why


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_variant_trains_one_step(name):
    model = create_model(name)
    n = count_params(model)
    assert 1e6 <= n <= 6e6, f"{name} has {n} parameters"
    x = mv.randn(2, 3, 32, 32)
    out = model(x)
    logits = out[0] if isinstance(out, tuple) else out          # the distilled DeiT trains two heads
    assert logits.shape == (2, 10)
    F.cross_entropy(logits, mv.tensor([1, 7])).backward()
    for pname, p in model.named_parameters():
        if name == "deit_tiny" and pname.startswith(("head_dist", "dist_token")):
            continue                                            # only the distillation loss reaches these
        assert p.grad is not None and np.isfinite(p.grad).all(), pname
    model.eval()
    with mv.no_grad():
        assert model(x).shape == (2, 10)


@pytest.mark.parametrize("name", CIFAR)
def test_wrong_input_names_the_problem(name):
    model = create_model(name).eval()
    with pytest.raises(ValueError, match="channel|in_chans|3"):
        model(mv.zeros(1, 1, 32, 32))


def test_to_is_in_place_and_returns_the_model():
    model = create_model("vit_tiny", depth=1)
    p = next(iter(model.parameters()))
    assert model.to(dtype=np.float64) is model and p.dtype == np.float64
