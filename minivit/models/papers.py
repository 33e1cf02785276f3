"""The papers' own numbers for the 224×224 ImageNet configurations (and SegFormer's encoders,
TimeSformer's 8×224² clips, MViT-B's 16×224² clips).

Parameters in millions and FLOPs in GMACs (multiply-accumulates, the papers'
convention), as printed in each paper's main table. Where the paper's table
and the authors' released code disagree, ``released_params`` holds the count
of the released model (what minivit matches) and ``note`` says why.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperEntry:
    label: str                 # the paper's name for the configuration
    paper: str                 # where the numbers come from
    params_m: float            # parameters, millions, as printed
    gmacs: float | None        # GFLOPs (GMACs), as printed; None where the paper prints none (note says so)
    released_params_m: float | None = None   # the authors' released model, where it differs
    note: str = ""
    input_shape: tuple = (3, 224, 224)       # one input, without the batch: (C, H, W); video: (T, C, H, W)
    #                                          for TimeSformer, (C, T, H, W) for MViT (each model's layout)


PAPERS = {
    "deit_tiny_224": PaperEntry("DeiT-Ti", "DeiT Table 1", 5.7, 1.3),
    "deit_small_224": PaperEntry("DeiT-S", "DeiT Table 1", 22.1, 4.6),
    "vit_base_16_224": PaperEntry("ViT-B/16", "DeiT Table 1", 86.6, 17.6),
    "pvt_v1_tiny_224": PaperEntry("PVT-Tiny", "PVT Table 2", 13.2, 1.9),
    "pvt_v1_small_224": PaperEntry("PVT-Small", "PVT Table 2", 24.5, 3.8),
    "pvt_v1_medium_224": PaperEntry("PVT-Medium", "PVT Table 2", 44.2, 6.7),
    "pvt_v1_large_224": PaperEntry("PVT-Large", "PVT Table 2", 61.4, 9.8),
    "pvt_v2_b0_224": PaperEntry(
        "PVTv2-B0", "PVT v2 Table 5", 3.4, 0.6, released_params_m=3.7,
        note="the paper's table says 3.4M; the authors' released model has 3.7M (matched). "
             "The paper prints one decimal: 0.566 GMACs rounds to its 0.6"),
    "pvt_v2_b1_224": PaperEntry(
        "PVTv2-B1", "PVT v2 Table 5", 13.1, 2.1, released_params_m=14.0,
        note="the paper's table says 13.1M; the authors' released model has 14.0M (matched)"),
    "pvt_v2_b2_224": PaperEntry("PVTv2-B2", "PVT v2 Table 5", 25.4, 4.0),
    "pvt_v2_b2_li_224": PaperEntry("PVTv2-B2-Li", "PVT v2 Table 5", 22.6, 3.9),
    "pvt_v2_b3_224": PaperEntry("PVTv2-B3", "PVT v2 Table 5", 45.2, 6.9),
    "pvt_v2_b4_224": PaperEntry("PVTv2-B4", "PVT v2 Table 5", 62.6, 10.1),
    "pvt_v2_b5_224": PaperEntry("PVTv2-B5", "PVT v2 Table 5", 82.0, 11.8),
    "swin_t_224": PaperEntry("Swin-T", "Swin Table 1a", 28.3, 4.5),
    "swin_s_224": PaperEntry("Swin-S", "Swin Table 1a", 49.6, 8.7),
    "swin_b_224": PaperEntry("Swin-B", "Swin Table 1a", 87.8, 15.4),
    "cvt_13_224": PaperEntry("CvT-13", "CvT Table 2", 19.98, 4.5),
    "cvt_21_224": PaperEntry("CvT-21", "CvT Table 2", 31.54, 7.1),
    "pit_ti_224": PaperEntry(
        "PiT-Ti", "PiT Table 3", 4.9, 0.7, released_params_m=4.85,
        note="the released PiT-Ti (and timm's pit_ti_224) has 4,847,272 parameters, which "
             "rounds to 4.8M, not the table's 4.9M (1.1% apart); minivit matches the released model"),
    "pit_xs_224": PaperEntry("PiT-XS", "PiT Table 3", 10.6, 1.4),
    "pit_s_224": PaperEntry("PiT-S", "PiT Table 3", 23.5, 2.9),
    "pit_b_224": PaperEntry("PiT-B", "PiT Table 3", 73.8, 12.5),
    "mixer_s32_224": PaperEntry(
        "Mixer-S/32", "MLP-Mixer Table 1", 19.1, None,
        note="MLP-Mixer's tables give parameters and throughput, not FLOPs: the GMACs are minivit's count"),
    "mixer_s16_224": PaperEntry(
        "Mixer-S/16", "MLP-Mixer Table 1", 18.5, None,
        note="MLP-Mixer's tables give parameters and throughput, not FLOPs: the GMACs are minivit's count"),
    "mixer_b16_224": PaperEntry(
        "Mixer-B/16", "MLP-Mixer Table 1", 59.9, None,
        note="MLP-Mixer's tables give parameters and throughput, not FLOPs: the GMACs are minivit's count"),
    "convmixer_1536_20": PaperEntry(
        "ConvMixer-1536/20", "ConvMixer Table 1", 51.6, None,
        note="ConvMixer's tables give parameters and throughput, not FLOPs: the GMACs are minivit's count "
             "(k = 9, P = 7 at 224: a 32×32 grid of width 1536)"),
    "convmixer_768_32": PaperEntry(
        "ConvMixer-768/32", "ConvMixer Table 1", 21.1, None,
        note="ConvMixer's tables give parameters and throughput, not FLOPs: the GMACs are minivit's count"),
    "mvitv2_t_224": PaperEntry(
        "MViTv2-T", "MViTv2 Table 2", 24.0, 4.7,
        note="the paper prints 24M; the released model (timm's mvitv2_tiny) has 24,173,320 "
             "parameters (24.17M, 0.7% over the rounded 24M), and minivit matches it key by key"),
    "xcit_nano_12_p16_224": PaperEntry("XCiT-N12/16", "XCiT Table 1", 3.05, 0.56),
    "xcit_tiny_12_p16_224": PaperEntry("XCiT-T12/16", "XCiT Table 1", 6.7, 1.24),
    "xcit_small_12_p16_224": PaperEntry(
        "XCiT-S12/16", "XCiT Table 1", 26.0, 4.8,
        note="printed as 26M; the released model (and timm's) has 26,253,304 parameters, 0.97% more, "
             "within the 1% of the check"),
    "mit_b0": PaperEntry(
        "MiT-B0", "SegFormer Table 1a", 3.3, None,
        note="the encoder alone (no classifier). SegFormer's tables give the encoders' parameters, "
             "not FLOPs (those only for whole models at 512×512): the GMACs are minivit's count at 224"),
    "mit_b1": PaperEntry("MiT-B1", "SegFormer Table 1a", 13.1, None,
                         note="the encoder alone; parameters, not FLOPs, in the paper (see MiT-B0)"),
    "mit_b2": PaperEntry("MiT-B2", "SegFormer Table 1a", 24.2, None,
                         note="the encoder alone; parameters, not FLOPs, in the paper (see MiT-B0)"),
    "mit_b3": PaperEntry("MiT-B3", "SegFormer Table 1a", 44.0, None,
                         note="the encoder alone; parameters, not FLOPs, in the paper (see MiT-B0)"),
    "mit_b4": PaperEntry("MiT-B4", "SegFormer Table 1a", 60.8, None,
                         note="the encoder alone; parameters, not FLOPs, in the paper (see MiT-B0)"),
    "mit_b5": PaperEntry("MiT-B5", "SegFormer Table 1a", 81.4, None,
                         note="the encoder alone; parameters, not FLOPs, in the paper (see MiT-B0)"),
    "segformer_b0": PaperEntry(
        "SegFormer-B0", "SegFormer Table 2", 3.8, None, released_params_m=3.75,
        note="encoder + all-MLP decoder (width 256) + 150-class ADE20K classifier: 3,752,694 "
             "parameters, the same as the released model (Hugging Face's B0 config), printed as 3.8M. "
             "The paper's 8.4 GFLOPs are at 512×512, where minivit counts 8.388 GMACs "
             "(5.184 of them in the decoder); at 224 the paper prints parameters, not FLOPs: the GMACs "
             "are minivit's count"),
    "timesformer_base_patch16_224": PaperEntry(
        "TimeSformer (8×224²)", "TimeSformer Tables 1, 3", 121.4, 196.0, input_shape=(8, 3, 224, 224),
        note="divided space-time attention on 8 frames; the paper prints 0.59 TFLOPs for 3 views (Table 3): "
             "196 GMACs per view, the figure counted here on one clip"),
    "mvit_v1_b": PaperEntry(
        "MViT-B 16×4", "MViT, Kinetics-400 table", 36.6, 70.6, input_shape=(3, 16, 224, 224),
        note="16 frames of 224² (input (C, T, H, W), torchvision's layout); GFLOPs are per view, as "
             "torchvision's mvit_v1_b weights list them (70.599); the paper's Kinetics table multiplies "
             "by its 1×5 views. 36,610,672 parameters, torchvision's model key by key"),
}
