"""Multi-scale features (issue #19 §1): ``create_model(..., features_only=True, out_indices=…)``,
``feature_info`` and ``forward_intermediates`` of the pyramid models.

Against timm's own ``features_only`` models (PVT v2, Swin, PiT, MViT v2) with the weights
copied by ``minivit.convert.from_timm``: every feature map in float64 (1e-10), the gradient of a
random weighting of the maps w.r.t. the input and every parameter (1e-8 relative), and
``feature_info``'s channels and strides. timm has no PVT v1 (checked against the torch
re-implementation in test_models_pvt.py) and no CvT (checked against Hugging Face's
``CvtModel`` hidden states). Then: ``forward_intermediates(norm=True)`` and its final output
against timm's, other input sizes, and the errors.

Input sizes: PVT v2 and CvT run at any size (no position embeddings); PVT v1 at any multiple
of its total stride and PiT at any size ≥ its stem patch, with position embeddings resized
bilinearly (timm's PiT only runs at its built size, so there the reference is timm's PiT built
for the new size with the bilinearly resized embedding put in); Swin and MViT v2 only at their
``img_size`` (Swin's windows, shift masks and merges, and MViT v2's relative-position tables,
are sized at construction, in timm as in minivit): Swin is rebuilt at the new size with the same
state_dict (none of its parameters depends on the size); MViT v2 refuses another size.
"""
import copy
import re

import numpy as np
import pytest

from minivit import backend
from minivit.autograd import Tensor
from minivit.models import create_model, list_models
from minivit.models.features import FeatureGetterNet, FeatureInfo, feature_take_indices, features_only


def host(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


def timm_or_skip():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    return torch, timm


def perturbed(torch, model, seed=0, scale=0.1):
    """Nudge every parameter (LayerNorm's 1s and 0s, zero biases too) so that no gradient is
    trivially shared and a wrong norm or bias shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.double().eval()


def timm_key(name: str) -> str:
    """A timm features-model parameter name → the classifier's: timm's wrappers prefix ``body.``
    or ``model.``, and FeatureListNet flattens ``stages.0`` into ``stages_0``."""
    name = re.sub(r"^(body|model)\.", "", name)
    return re.sub(r"^([a-z]+)_(\d+)\.", r"\1.\2.", name)


def load_into_features(tfeat, tm):
    """Copy the classifier ``tm``'s weights into timm's features model (strictly: every key)."""
    sd = tm.state_dict()
    tfeat.double().load_state_dict({k: sd[timm_key(k)] for k in tfeat.state_dict()})
    return tfeat.eval()


def compare_features(ours, theirs_fn, x_np, xp, params, key, nhwc=False):
    """Feature maps within 1e-10 (float64); then, for the loss Σ_i ⟨f_i, R_i⟩ with random R_i,
    the input's and every parameter's gradient within 1e-8 of the reference's largest entry
    for that tensor. ``params``: {reference name: torch parameter}; ``key`` maps a reference
    name to ours. A parameter with no reference gradient (pruned, unused) must get none here
    either, and gradients zero in exact arithmetic (key biases under softmax) must be
    rounding noise on both sides."""
    import torch
    tx = torch.tensor(x_np, requires_grad=True)
    tfeats = list(theirs_fn(tx))
    if nhwc:                                        # timm's features_only Swin is NHWC
        tfeats = [t.permute(0, 3, 1, 2) for t in tfeats]
    x = Tensor(xp.asarray(x_np), requires_grad=True)
    feats = ours(x)
    assert len(feats) == len(tfeats)
    rng = np.random.default_rng(7)
    tloss, loss = 0, 0
    for f, t in zip(feats, tfeats):
        ref = t.detach().numpy()
        assert f.shape == ref.shape and f.dtype == np.float64
        np.testing.assert_allclose(host(f), ref, rtol=0, atol=1e-10 * max(1.0, np.abs(ref).max()))
        R = rng.standard_normal(ref.shape)
        tloss = tloss + (t * torch.tensor(R)).sum()
        loss = loss + (f * Tensor(xp.asarray(R))).sum()
    tloss.backward()
    loss.backward()
    gx, tgx = host(x.grad), tx.grad.numpy()
    np.testing.assert_allclose(gx, tgx, rtol=0, atol=1e-8 * np.abs(tgx).max())
    ours_p = dict(ours.named_parameters())
    theirs_g = {n: p.grad for n, p in params.items()}
    if not params:                                  # maps and input gradient only
        return
    largest = max(float(g.abs().max()) for g in theirs_g.values() if g is not None)
    seen = set()
    for n, tg in theirs_g.items():
        p = ours_p[key(n)]
        seen.add(key(n))
        if tg is None:
            assert p.grad is None or np.abs(host(p.grad)).max() == 0, n
            continue
        g, tg = host(p.grad), tg.numpy()
        scale = np.abs(tg).max()
        if scale <= 1e-12 * largest:                # zero in exact arithmetic
            assert np.abs(g).max() <= 1e-12 * largest, n
            continue
        np.testing.assert_allclose(g, tg, rtol=0, atol=1e-8 * scale, err_msg=n)
    for n in set(ours_p) - seen:                    # ours keeps the head (timm prunes it)
        p = ours_p[n]
        assert p.grad is None or np.abs(host(p.grad)).max() == 0, n


def check_feature_info(ours, tfeat):
    assert ours.feature_info.channels() == tfeat.feature_info.channels()
    assert ours.feature_info.reduction() == tfeat.feature_info.reduction()


# =========================================================================== against timm
PVT_V2 = dict(depths=(1, 2, 1, 1), embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), sr_ratios=(4, 2, 1, 1),
              mlp_ratios=(2, 2, 2, 2))


@pytest.mark.parametrize("out_indices,size", [((0, 1, 2, 3), (64, 64)), ((1, 3), (64, 64)), (2, (48, 40))])
def test_pvt_v2_features_match_timm(xp, device, out_indices, size):
    """(48, 40) is another size than any built one (PVT v2 has no position embedding)."""
    torch, timm = timm_or_skip()
    from minivit.convert import from_timm
    tm = perturbed(torch, timm.create_model("pvt_v2_b0", **PVT_V2))
    tfeat = load_into_features(timm.create_model("pvt_v2_b0", features_only=True, out_indices=out_indices,
                                                 **PVT_V2), tm)
    ours = features_only(from_timm(tm), out_indices).to(device=device)
    check_feature_info(ours, tfeat)
    x = np.random.default_rng(1).standard_normal((2, 3, *size))
    compare_features(ours, tfeat, x, xp, dict(tfeat.named_parameters()), lambda n: "model." + timm_key(n))


SWIN = {
    "shifted": dict(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4),
    "three_stages": dict(img_size=32, patch_size=2, embed_dim=8, depths=(1, 2, 2), num_heads=(1, 2, 4),
                         window_size=4),
}


@pytest.mark.parametrize("name", list(SWIN))
def test_swin_features_match_timm(xp, device, name):
    """timm's features_only Swin returns its stages' NHWC maps; minivit's, NCHW (as every other
    backbone here), so timm's are permuted before comparing."""
    torch, timm = timm_or_skip()
    from minivit.convert import from_timm
    cfg = SWIN[name]
    variant = "swin_tiny_patch4_window7_224"
    tm = perturbed(torch, timm.create_model(variant, **cfg))
    tfeat = load_into_features(timm.create_model(variant, features_only=True, **cfg), tm)
    ours = features_only(from_timm(tm)).to(device=device)
    check_feature_info(ours, tfeat)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
    compare_features(ours, tfeat, x, xp, dict(tfeat.named_parameters()), lambda n: "model." + timm_key(n),
                     nhwc=True)


PIT = dict(img_size=32, patch_size=4, stride=2, base_dims=(8, 8, 8), depth=(1, 1, 1), heads=(1, 2, 4))


@pytest.mark.parametrize("out_indices", [(0, 1, 2), (-1,)])
def test_pit_features_match_timm(xp, device, out_indices):
    torch, timm = timm_or_skip()
    from minivit.convert import from_timm
    tm = perturbed(torch, timm.create_model("pit_ti_224", **PIT))
    tfeat = load_into_features(timm.create_model("pit_ti_224", features_only=True, out_indices=out_indices,
                                                 **PIT), tm)
    ours = features_only(from_timm(tm), out_indices).to(device=device)
    # stage i's tokens are stride·2^i pixels apart; timm < 1.0.31 wrote (stride - 1)·2^i, so its
    # feature_info is compared only where it has the fix
    stages = [i % 3 for i in out_indices]
    assert ours.feature_info.reduction() == [PIT["stride"] * 2 ** i for i in stages]
    if [d["reduction"] for d in tfeat.feature_info.get_dicts()] == [(PIT["stride"] - 1) * 2 ** i for i in stages]:
        assert ours.feature_info.channels() == tfeat.feature_info.channels()
    else:
        check_feature_info(ours, tfeat)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
    compare_features(ours, tfeat, x, xp, dict(tfeat.named_parameters()), lambda n: "model." + timm_key(n))


MVIT = {
    # two stages on 32×32: 8×8 → 4×4 tokens
    "2-stage": (dict(depths=(1, 2), embed_dim=8, num_heads=1, stride_q=((1, 1), (2, 2))), 32),
    # a class token (left out of the maps), three stages on 64×64
    "3-stage-cls": (dict(depths=(1, 1, 1), embed_dim=4, num_heads=1, use_cls_token=True,
                         stride_q=((1, 1), (2, 2), (2, 2))), 64),
}


def timm_mvit(torch, name):
    from timm.models.mvitv2 import MultiScaleVit as TimmMViT, MultiScaleVitCfg as TimmCfg
    cfg, img = MVIT[name]
    return perturbed(torch, TimmMViT(TimmCfg(**cfg), img_size=img, num_classes=5)), img


@pytest.mark.parametrize("name", list(MVIT))
def test_mvitv2_features_match_timm(xp, device, name):
    """timm's mvitv2 factories fix the cfg, so the small model is timm's class, wrapped in the
    feature class timm's builder uses for MViT v2 (FeatureGetterNet)."""
    torch, timm = timm_or_skip()
    from timm.models._features import FeatureGetterNet as TimmGetter
    from minivit.convert import from_timm
    tm, img = timm_mvit(torch, name)
    tfeat = TimmGetter(copy.deepcopy(tm), out_indices=len(MVIT[name][0]["depths"]))
    ours = features_only(from_timm(tm)).to(device=device)
    check_feature_info(ours, tfeat)
    x = np.random.default_rng(1).standard_normal((2, 3, img, img))
    compare_features(ours, tfeat, x, xp, dict(tfeat.named_parameters()), lambda n: n)


# --------------------------------------------------------------------------- forward_intermediates itself
def _timm_pvt_v2(torch, timm):
    return perturbed(torch, timm.create_model("pvt_v2_b0", **PVT_V2)), (64, 64)


def _timm_swin(torch, timm):
    return perturbed(torch, timm.create_model("swin_tiny_patch4_window7_224", **SWIN["three_stages"])), (32, 32)


def _timm_pit(torch, timm):
    return perturbed(torch, timm.create_model("pit_ti_224", **PIT)), (32, 32)


def _timm_mvit(torch, timm):
    tm, img = timm_mvit(torch, "3-stage-cls")
    return tm, (img, img)


@pytest.mark.parametrize("make", [_timm_pvt_v2, _timm_swin, _timm_pit, _timm_mvit], ids=["pvt_v2", "swin", "pit",
                                                                                        "mvitv2"])
@pytest.mark.parametrize("indices,norm", [(None, True), ([0, -1], True), (1, False)])
def test_forward_intermediates_matches_timm(xp, device, make, indices, norm):
    """The maps, the final output (what forward_features gives when every stage runs) and
    norm=True (the final LayerNorm on the last stage's map: Swin and MViT v2; no effect in
    PVT v2 and PiT) as timm's ``forward_intermediates``, in float64."""
    torch, timm = timm_or_skip()
    from minivit.convert import from_timm
    tm, size = make(torch, timm)
    ours = from_timm(tm).to(device=device)
    x_np = np.random.default_rng(3).standard_normal((2, 3, *size))
    with torch.no_grad():
        tfinal, tints = tm.forward_intermediates(torch.tensor(x_np), indices=indices, norm=norm)
    final, ints = ours.forward_intermediates(Tensor(xp.asarray(x_np)), indices=indices, norm=norm)
    assert len(ints) == len(tints)
    for a, b in [(final, tfinal)] + list(zip(ints, tints)):
        b = b.numpy()
        assert a.shape == b.shape
        np.testing.assert_allclose(host(a), b, rtol=0, atol=1e-10 * max(1.0, np.abs(b).max()))
    only = ours.forward_intermediates(Tensor(xp.asarray(x_np)), indices=indices, norm=norm,
                                      intermediates_only=True, stop_early=True)
    assert len(only) == len(ints)
    for a, b in zip(only, ints):
        np.testing.assert_array_equal(host(a), host(b))


def test_norm_changes_the_last_map_where_timm_applies_it(xp, device):
    """A check that can fail the other way: in Swin norm=True changes the last map only."""
    model = create_model("swin_tiny", img_size=32, embed_dim=8, depths=(1, 1), num_heads=(1, 1)).eval()
    x = Tensor(np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32))
    plain = model.forward_intermediates(x, intermediates_only=True)
    normed = model.forward_intermediates(x, norm=True, intermediates_only=True)
    np.testing.assert_array_equal(plain[0].data, normed[0].data)
    assert np.abs(plain[1].data - normed[1].data).max() > 1e-3


# =========================================================================== PVT v1 (no timm)
def test_pvt_v1_features_match_the_torch_reimplementation(xp, device):
    """Every stage map at the built size (32×32) and at 48×64 (position embeddings resized
    bilinearly), forward and every gradient, against test_models_pvt.py's torch PVT."""
    torch = pytest.importorskip("torch")
    from minivit.models.pvt import PyramidVisionTransformer
    from tests.test_models_pvt import SMALL, perturb, torch_params, torch_pvt
    model = perturb(PyramidVisionTransformer(**SMALL)).to(device=device, dtype=np.float64).eval()
    sd = torch_params(torch, model)
    ours = features_only(model)
    assert ours.feature_info.channels() == list(SMALL["embed_dims"])
    assert ours.feature_info.reduction() == [2, 4, 8, 16]
    for size in [(32, 32), (48, 64)]:
        for p in list(sd.values()) + [q for q in ours.parameters()]:
            p.grad = None

        def reference(tx):
            feats = []
            torch_pvt(torch, sd, tx, SMALL, feats=feats)
            return feats
        x = np.random.default_rng(1).standard_normal((2, 3, *size))
        compare_features(ours, reference, x, xp, sd, lambda n: "model." + n)


# =========================================================================== CvT (no timm)
def test_cvt_features_match_hugging_face_hidden_states(xp, device):
    """The stage maps against ``CvtModel(..., output_hidden_states=True)``'s hidden states,
    forward and every gradient in float64, at 32×32 and at 40×24 (no position embeddings)."""
    pytest.importorskip("transformers")
    import torch
    from minivit.convert.cvt import from_transformers, hf_key_to_minivit
    from tests.test_models_cvt import make_hf
    hf = make_hf("cls_qkvbias", torch.float64)
    ours = features_only(from_transformers(hf).to(device=device))
    assert ours.feature_info.channels() == [8, 12, 16]
    assert ours.feature_info.reduction() == [4, 8, 16]
    for size in [(32, 32), (40, 24)]:
        hf.zero_grad(set_to_none=True)
        ours.zero_grad()

        def reference(tx):
            return hf.cvt(pixel_values=tx, output_hidden_states=True).hidden_states
        x = np.random.default_rng(1).standard_normal((2, 3, *size))
        compare_features(ours, reference, x, xp, dict(hf.named_parameters()),
                         lambda n: "model." + hf_key_to_minivit(n))


# =========================================================================== other input sizes
def test_pit_features_at_another_size_use_the_resized_position_embedding(xp, device):
    """Built for 32×32, run at 40×48: the reference is timm's PiT built for 40×48 with every
    weight the same and its position embedding the 32×32 one resized bilinearly by torch."""
    torch, timm = timm_or_skip()
    from minivit.convert import from_timm
    tm = perturbed(torch, timm.create_model("pit_ti_224", **PIT))
    ours = features_only(from_timm(tm)).to(device=device)
    big = timm.create_model("pit_ti_224", **dict(PIT, img_size=(40, 48))).double().eval()
    sd = dict(tm.state_dict())
    h, w = big.pos_embed.shape[2:]
    sd["pos_embed"] = torch.nn.functional.interpolate(sd["pos_embed"], size=(h, w), mode="bilinear",
                                                      align_corners=False)
    big.load_state_dict(sd)
    tfeat = load_into_features(timm.create_model("pit_ti_224", features_only=True, **dict(PIT, img_size=(40, 48))),
                               big)
    x = np.random.default_rng(1).standard_normal((2, 3, 40, 48))
    compare_features(ours, tfeat, x, xp, {}, lambda n: n)
    # the classifier itself keeps its fixed size
    with pytest.raises(ValueError, match="built for"):
        ours.model(Tensor(xp.asarray(x)))


def test_swin_at_another_size_is_the_same_weights_rebuilt(xp, device):
    """Swin's grid is fixed at construction (as timm's); for 64×64 build the model with
    img_size=64 and load the 32×32 model's state_dict; it matches timm's Swin built the same way."""
    torch, timm = timm_or_skip()
    from minivit.convert import from_timm
    cfg = SWIN["shifted"]
    variant = "swin_tiny_patch4_window7_224"
    tm = perturbed(torch, timm.create_model(variant, **cfg))
    small = from_timm(tm)
    ours = create_model("swin_tiny", **dict(cfg, img_size=64), num_classes=1000)
    ours.load_state_dict(small.state_dict())
    ours = features_only(ours.to(device=device, dtype=np.float64).eval())
    tbig = timm.create_model(variant, features_only=True, **dict(cfg, img_size=64))
    tbig = load_into_features(tbig, tm)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64))
    compare_features(ours, tbig, x, xp, {}, lambda n: n, nhwc=True)
    with pytest.raises(ValueError, match="built for img_size=32"):
        features_only(small)(Tensor(xp.asarray(x)))


def test_mvitv2_refuses_another_size():
    model = create_model("mvitv2_tiny", features_only=True)
    with pytest.raises(ValueError, match="built for img_size=32"):
        model(Tensor(np.zeros((1, 3, 64, 64), np.float32)))


@pytest.mark.parametrize("name,size", [("pvt_tiny", (48, 64)), ("pvt_v2_tiny", (48, 64)), ("pit_tiny", (40, 48)),
                                       ("cvt_tiny", (48, 40))])
def test_cifar_backbones_give_maps_at_another_size(name, size):
    """The shapes and strides at a size other than the built 32×32 (the values are checked
    against references above)."""
    model = create_model(name, features_only=True).eval()
    maps = model(Tensor(np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)))
    assert [m.shape[1] for m in maps] == model.feature_info.channels()
    for m, r in zip(maps, model.feature_info.reduction()):
        assert m.dtype == np.float32
        if name != "pit_tiny":                  # PiT's unpadded stem rounds (timm's nominal strides)
            assert m.shape[2:] == (size[0] // r, size[1] // r)


# =========================================================================== the API and its errors
FEATURE_CIFAR = ["pvt_tiny", "pvt_v2_tiny", "swin_tiny", "pit_tiny", "mvitv2_tiny", "cvt_tiny"]


@pytest.mark.parametrize("name", FEATURE_CIFAR)
def test_every_pyramid_cifar_model_is_a_backbone(name):
    model = create_model(name, features_only=True, out_indices=(-1, 0))
    assert isinstance(model, FeatureGetterNet) and isinstance(model.feature_info, FeatureInfo)
    n = len(model.model.feature_info)
    assert model.out_indices == (0, n - 1)             # sorted: maps come out in stage order
    maps = model(Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)))
    assert len(maps) == 2
    for m, c, r in zip(maps, model.feature_info.channels(), model.feature_info.reduction()):
        assert m.shape[:2] == (2, c)
        assert abs(m.shape[2] - 32 / r) <= 1 and abs(m.shape[3] - 32 / r) <= 1   # PiT's stem: 15 for 16
    # every named module exists in the model
    names = dict(model.model.named_modules())
    assert all(mod in names for mod in model.feature_info.module_name(list(range(n))))
    # the classifier's forward is untouched: logits of the same weights
    clf = create_model(name)
    assert clf(Tensor(np.zeros((1, 3, 32, 32), np.float32))).shape == (1, 10)


def test_feature_take_indices_rules():
    assert feature_take_indices(4) == ([0, 1, 2, 3], 3)
    assert feature_take_indices(4, 2) == ([2, 3], 3)
    assert feature_take_indices(4, [0, -1]) == ([0, 3], 3)
    info = FeatureInfo([dict(num_chs=8, reduction=4, module="a"), dict(num_chs=16, reduction=8, module="b")], (1,))
    assert info.channels() == [16] and info.reduction() == [8] and info.module_name() == ["b"]
    assert info.channels(0) == 8 and info.reduction([0, 1]) == [4, 8] and len(info) == 2
    assert info.get_dicts(keys=["num_chs"]) == [{"num_chs": 16}]


@pytest.mark.parametrize("out_indices,match", [
    ((0, 4), r"stage index 4 is out of range for a model with 4 stages; use 0 to 3"),
    ((-5,), r"stage index -5 is out of range"),
    (5, r"out_indices=5 asks for the last 5 stage maps, but the model has 4 stages"),
    (0, r"out_indices=0 asks for the last 0"),
    ((), r"out_indices is empty"),
    ("all", r"out_indices must be None, an int"),
])
def test_out_indices_out_of_range_is_one_clear_error(out_indices, match):
    with pytest.raises(ValueError, match=match):
        create_model("pvt_v2_tiny", features_only=True, out_indices=out_indices)


def test_features_only_on_a_model_without_stages_says_which_models_have_them():
    with pytest.raises(ValueError, match=r"'vit_tiny' \(VisionTransformer\) is not a pyramid.*pvt_\*.*swin_\*"):
        create_model("vit_tiny", features_only=True)
    for name in ("mixer_tiny", "convmixer_tiny", "xcit_tiny", "deit_tiny"):
        with pytest.raises(ValueError, match="features_only=True does not apply"):
            create_model(name, features_only=True)
    with pytest.raises(ValueError, match="out_indices=.* needs features_only=True"):
        create_model("swin_tiny", out_indices=(0, 1))


def test_output_fmt_errors_and_swin_nhwc():
    swin = create_model("swin_tiny").eval()
    x = Tensor(np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32))
    nhwc = swin.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
    nchw = swin.forward_intermediates(x, intermediates_only=True)
    for a, b in zip(nhwc, nchw):
        np.testing.assert_array_equal(a.data.transpose(0, 3, 1, 2), b.data)
    with pytest.raises(ValueError, match=r"PyramidVisionTransformerV2.forward_intermediates: output_fmt='NHWC' "
                                         r"is not supported; use 'NCHW'"):
        create_model("pvt_v2_tiny").forward_intermediates(x, output_fmt="NHWC")


def test_feature_models_list_matches_the_registry():
    """FEATURE_MODELS (named in the error) covers exactly the models that build as backbones."""
    from minivit.models.registry import FEATURE_MODELS
    import fnmatch
    covered = {n for n in list_models() if any(fnmatch.fnmatch(n, p) for p in FEATURE_MODELS)}
    assert set(FEATURE_CIFAR) <= covered
    assert not covered & {"vit_tiny", "deit_tiny", "mixer_tiny", "convmixer_tiny", "xcit_tiny"}
