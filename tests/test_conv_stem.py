"""The convolutional stem (layers/conv_stem.py) and vit_nano: timm's ConvStem + HybridEmbed twin,
float64 parity of logits and gradients, the converter, the weight files, and the errors."""
from functools import partial

import numpy as np
import pytest

from minivit import nn
from minivit.autograd import Tensor
from minivit.layers.conv_stem import ConvStem, HybridEmbed
from minivit.models.registry import create_model
from minivit.models.vit import VisionTransformer
from tests.test_models_vit import host, timm_parity


def timm_hybrid(channels, kernel_size, stride, proj=False, **kw):
    """timm's ViT with its ConvStem in a HybridEmbed (what vit_nano's docstring says is its twin)."""
    pytest.importorskip("timm")
    from timm.layers import HybridEmbed as TimmHybridEmbed
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    from timm.models.vision_transformer_hybrid import ConvStem as TimmConvStem
    stem = TimmConvStem(in_chans=kw.get("in_chans", 3), depth=len(channels), channels=channels,
                        kernel_size=kernel_size, stride=stride)
    return TimmViT(patch_size=1, embed_layer=partial(TimmHybridEmbed, backbone=stem, proj=proj), **kw)


STEMS = [
    # vit_nano's layout, shrunk: 3×3 convs with BN + ReLU, a final 1×1 conv to the width
    dict(channels=(8, 16, 24), kernel_size=(3, 3, 1), stride=(1, 2, 1), proj=False,
         kw=dict(img_size=16, embed_dim=24, depth=1, num_heads=2, num_classes=5, class_token=False,
                 global_pool="avg", mlp_ratio=2.0)),
    # a class token, a 1×1 projection after the stem (proj=True), stride-2 first conv, 1 channel
    dict(channels=(8, 12), kernel_size=(3, 3), stride=(2, 2), proj=True,
         kw=dict(img_size=16, in_chans=1, embed_dim=16, depth=2, num_heads=4, num_classes=3)),
]


@pytest.mark.parametrize("stem", STEMS, ids=["nano-layout", "cls-proj"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train-batchnorm"])
def test_conv_stem_vit_matches_timm(xp, device, stem, train):
    """from_timm builds the stem from timm's modules; logits and every parameter's gradient agree
    in float64, with BatchNorm on running statistics (eval) and on the batch's (train)."""
    tm = timm_hybrid(stem["channels"], stem["kernel_size"], stem["stride"], stem["proj"], **stem["kw"])
    for m in tm.modules():                    # running statistics that are not the identity
        if type(m).__name__ == "BatchNormAct2d":
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = np.random.default_rng(0).standard_normal((3, stem["kw"].get("in_chans", 3), 16, 16))
    timm_parity(tm, x, xp, device, train=train)


def test_vit_nano_is_timms_twin_and_its_weight_file_loads_there(tmp_path):
    """vit_nano has timm's state_dict keys and shapes; a file saved by minivit gives timm's twin
    the same logits."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    import safetensors.torch
    from minivit.models.pretrained import save_pretrained

    model = create_model("vit_nano").eval()
    assert model.num_parameters() == 384_682
    tm = timm_hybrid((32, 64, 128, 128), (3, 3, 3, 1), (1, 2, 2, 1), img_size=32, embed_dim=128, depth=2,
                     num_heads=2, mlp_ratio=2.0, num_classes=10, class_token=False, global_pool="avg").eval()
    assert {k: tuple(v.shape) for k, v in tm.state_dict().items()} == \
           {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for m in model.modules():                 # trained-looking BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.data[...] = np.linspace(-0.3, 0.3, m.num_features)
            m.running_var.data[...] = np.linspace(0.5, 2.0, m.num_features)
    save_pretrained(model, tmp_path / "nano.safetensors")
    tm.load_state_dict(safetensors.torch.load_file(str(tmp_path / "nano.safetensors")))
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(host(model(Tensor(x))), ref, rtol=0, atol=1e-4)


def test_vit_nano_stem_follows_its_arguments():
    m = create_model("vit_nano", stem_channels=(16, 32), stem_stride=(2, 2), embed_dim=64, depth=1)
    stem = m.patch_embed.backbone
    assert [layer.conv.out_channels for layer in stem] == [16, 32, 64]
    assert [layer.conv.stride for layer in stem] == [(2, 2), (2, 2), (1, 1)]
    assert m.patch_embed.grid_size == (8, 8) and m.pos_embed.shape == (1, 64, 64)
    assert m(Tensor(np.zeros((2, 3, 32, 32), np.float32))).shape == (2, 10)


def test_conv_stem_errors_name_the_problem():
    with pytest.raises(ValueError, match="one entry per layer"):
        ConvStem(channels=(8, 16), kernel_size=(3, 3, 1), stride=(1, 2))
    with pytest.raises(ValueError, match="proj=False needs the stem to end at embed_dim=32"):
        HybridEmbed(ConvStem(channels=(8, 16), kernel_size=3, stride=(1, 2)), img_size=16, embed_dim=32, proj=False)
    with pytest.raises(ValueError, match="not divisible by the stem's total stride 4"):
        HybridEmbed(ConvStem(channels=(8, 16), kernel_size=3, stride=(2, 2)), img_size=18, embed_dim=16)
    with pytest.raises(ValueError, match="one entry per conv layer"):
        create_model("vit_nano", stem_channels=(16, 32), stem_stride=(2,))
    with pytest.raises(ValueError, match="dynamic_img_size=True needs the plain patch embedding"):
        VisionTransformer(img_size=16, embed_dim=16, depth=1, num_heads=2, dynamic_img_size=True,
                          embed_layer=lambda **kw: nn.Identity())
    VisionTransformer(img_size=16, patch_size=1, embed_dim=16, depth=1, num_heads=2, dynamic_img_size=True,  # fine
                      embed_layer=partial(HybridEmbed, ConvStem(channels=(8, 16), kernel_size=3, stride=(2, 2)), proj=False))
    model = create_model("vit_nano")
    with pytest.raises(ValueError, match="built for img_size=32×32"):
        model(Tensor(np.zeros((1, 3, 24, 24), np.float32)))
