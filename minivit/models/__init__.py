"""The architectures, one file each, and the registry that names their configurations.

    import minivit.models
    model = minivit.models.create_model("swin_tiny")      # CIFAR-10 variant, 32×32, 10 classes
    minivit.models.list_models("pvt_v2*")

Importing an architecture's module registers its configurations.
"""
from minivit.models.registry import create_model, list_models, register_model  # noqa: F401
from minivit.models.pretrained import load_pretrained, pretrained_models, save_pretrained  # noqa: F401
from minivit.models.vit import VisionTransformer  # noqa: F401
from minivit.models.deit import VisionTransformerDistilled  # noqa: F401
from minivit.models.pvt import PyramidVisionTransformer  # noqa: F401
from minivit.models.pvt_v2 import PyramidVisionTransformerV2  # noqa: F401
from minivit.models.swin import SwinTransformer  # noqa: F401
from minivit.models.cvt import ConvolutionalVisionTransformer  # noqa: F401
from minivit.models.pit import PoolingVisionTransformer  # noqa: F401
from minivit.models.mlp_mixer import MlpMixer  # noqa: F401
from minivit.models.convmixer import ConvMixer  # noqa: F401
from minivit.models.mvitv2 import MultiScaleVit  # noqa: F401
from minivit.models.xcit import Xcit  # noqa: F401
from minivit.models.segformer import MixVisionTransformer, Segformer  # noqa: F401
from minivit.models.timesformer import TimeSformer  # noqa: F401
from minivit.models.mvit_video import MViT  # noqa: F401  (MViT v1 on video, torchvision's)
from minivit.models.resnet import ResNet  # noqa: F401  (the CNN teacher for DeiT distillation)
from minivit.models.fpn import SemanticFPN  # noqa: F401  (Semantic FPN segmentation over the pyramids)
from minivit.models.unetr import UNETR  # noqa: F401
