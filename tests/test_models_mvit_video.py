"""MViT v1 on video: parity with torchvision's ``torchvision.models.video.MViT`` for small
configurations built with its own constructor (logits in float32 and float64, every parameter's
gradient in float64, through ``minivit.convert.from_torchvision``), mvit_v1_b's parameters key by
key, the shared token pooling, input errors, and the CPU model on motion clips."""
import numpy as np
import pytest

import minivit as mv
import minivit.functional as F
from minivit import backend
from minivit.autograd import Tensor
from minivit.complexity import count_params
from minivit.convert import from_torchvision
from minivit.layers.pooling_attention import pool_grid_tokens
from minivit.models import MViT, create_model
from minivit.models.mvit_video import MSBlockConfig, mvit_v1_block_setting
from minivit.testing.reference import assert_grads_close, backward_both, randomize_


def host(a):
    return backend.to_numpy(a.data if isinstance(a, Tensor) else a)


# =========================================================================== torchvision parity
# 6 frames of 12×16 (every axis a different length), stem 3×3×3 stride 2: a 3×6×8 grid, width 8.
# (blocks: heads, C_in, C_out, kernel_q, kernel_kv, stride_q, stride_kv; [] = no pooling)
CONFIGS = {
    # v1's pattern: widen at the end of a stage (block 0), pool the queries 1×2×2 next (block 1),
    # keys/values pooled in space, then in time only (block 2); three stages
    "v1": dict(blocks=[(1, 8, 16, [], [3, 3, 3], [], [1, 2, 2]),
                       (2, 16, 16, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1]),
                       (2, 16, 24, [], [1, 3, 3], [], [2, 1, 1])]),
    # other kernels and strides: a 1×3×3 query pool of stride 2×2×2 (time pooled too), a 3×1×1
    # key/value pool; residual pooling with the class token included
    "strides": dict(blocks=[(2, 8, 8, [1, 3, 3], [3, 1, 1], [2, 2, 2], [1, 1, 1]),
                            (2, 8, 12, [], [3, 3, 3], [], [1, 2, 2])],
                    residual_pool=True, residual_with_cls_embed=True),
    # v2's flags without its relative positions: residual pooling (class token left out), widening
    # in the attention, a stride-1 query pool
    "v2_flags": dict(blocks=[(1, 8, 16, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 2, 2]),
                             (2, 16, 16, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1]),
                             (2, 16, 16, [], [3, 3, 3], [], [1, 1, 1])],
                     residual_pool=True, residual_with_cls_embed=False, proj_after_attn=True),
}
CLIP = (6, 12, 16)          # T, H, W


def make_tv(name, dtype, **kw):
    """A torchvision MViT with every weight, norm affine and embedding drawn non-trivially."""
    torch = pytest.importorskip("torch")
    video = pytest.importorskip("torchvision.models.video.mvit", reason="torchvision is not installed")
    cfg = dict(CONFIGS[name])
    blocks = [video.MSBlockConfig(*b) for b in cfg.pop("blocks")]
    cfg = dict(dict(residual_pool=False, residual_with_cls_embed=True, proj_after_attn=False), **cfg)
    torch.manual_seed(0)
    tv = video.MViT(CLIP[1:], CLIP[0], blocks, rel_pos_embed=False, num_classes=5,
                    patch_embed_kernel=(3, 3, 3), patch_embed_stride=(2, 2, 2), patch_embed_padding=(1, 1, 1),
                    **dict(dict(dropout=0.0), **cfg, **kw)).to(dtype)
    randomize_(tv, is_embedding=lambda name: "pos_encoding" in name)    # class token, position embeddings
    return tv.eval()


def tv_input(dtype, batch=2):
    import torch
    return torch.randn(batch, 3, *CLIP, generator=torch.Generator().manual_seed(1), dtype=dtype)


def zero_by_construction(name, tv):
    """Gradients that are exactly zero in any implementation: the key norm's bias shifts every
    key of a row by the same q·b, which the softmax ignores; and the last block's query pooling
    feeds only grid tokens, while the head reads the class token."""
    last = f"blocks.{len(tv.blocks) - 1}.attn.pool_q."
    return ".attn.pool_k.norm_act.0.bias" in name or name.startswith(last)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_torchvision_float32(xp, device, name):
    torch = pytest.importorskip("torch")
    tv = make_tv(name, torch.float32)
    model = from_torchvision(tv).to(device)
    assert next(model.parameters()).dtype == np.float32 and not model.training
    x = tv_input(torch.float32)
    with torch.no_grad():
        ref = tv(x).numpy()
    out = model(Tensor(xp.asarray(x.numpy())))
    assert out.dtype == np.float32 and out.shape == ref.shape == (2, 5)
    np.testing.assert_allclose(host(out), ref, rtol=0, atol=1e-5)
    assert np.abs(ref).max() > 0.1


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_and_grads_match_torchvision_float64(xp, device, name):
    """Train mode (no dropout or stochastic depth in these configs): logits within 1e-10; the
    input's and every parameter's gradient within 1e-8 of its largest entry, for a random
    cotangent on the logits."""
    torch = pytest.importorskip("torch")
    tv = make_tv(name, torch.float64).train()
    model = from_torchvision(tv).to(device).train()
    x = tv_input(torch.float64)
    ref, ours = backward_both(tv, model, x, xp=xp)
    np.testing.assert_allclose(ours["out"], ref["out"], rtol=0, atol=1e-10)
    assert_grads_close(ref, ours, rtol=1e-8, zero=lambda name: zero_by_construction(name, tv))


def test_converter_reads_the_configuration():
    """Block settings, flags, dropouts, stochastic depth and the norm's eps come off the modules;
    with dropouts and stochastic depth on, eval mode still matches."""
    torch = pytest.importorskip("torch")
    from functools import partial
    tv = make_tv("v1", torch.float32, dropout=0.3, attention_dropout=0.1, stochastic_depth_prob=0.2,
                 norm_layer=partial(torch.nn.LayerNorm, eps=1e-5))
    model = from_torchvision(tv, dtype=np.float64)
    assert next(model.parameters()).dtype == np.float64 and not model.training
    assert (model.temporal_size, model.spatial_size, model.num_classes) == (6, (12, 16), 5)
    assert model.block_setting[1] == MSBlockConfig(2, 16, 16, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1])
    assert model.block_setting[2].kernel_q == [] and model.block_setting[2].stride_kv == [2, 1, 1]
    assert model.head[0].p == 0.3 and model.blocks[0].attn.project[1].p == 0.1 and model.blocks[0].mlp[2].p == 0.1
    assert [b.stochastic_depth.drop_prob for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2])
    assert model.norm.eps == 1e-5 and model.blocks[0].attn.pool_k.norm_act[0].eps == 1e-5
    assert count_params(model) == sum(p.numel() for p in tv.parameters())
    x = tv_input(torch.float64)
    with torch.no_grad():
        ref = tv.double()(x).numpy()
    np.testing.assert_allclose(model(Tensor(x.numpy())).numpy(), ref, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="no converter for torchvision's Linear"):
        from_torchvision(torch.nn.Linear(2, 2))


def test_mvit_v1_b_is_torchvisions_key_by_key():
    """MViT-B 16×4: 36,610,672 parameters (the paper's 36.6M), every key and shape torchvision's."""
    video = pytest.importorskip("torchvision.models.video", reason="torchvision is not installed")
    import torch
    with torch.device("meta"):                      # shapes only: no 36.6M weights to draw
        tv = video.mvit_v1_b()
    model = create_model("mvit_v1_b")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in tv.state_dict().items()}
    assert count_params(model) == sum(p.numel() for p in tv.parameters()) == 36_610_672
    assert model.head[0].p == 0.5 and model.blocks[-1].stochastic_depth.drop_prob == pytest.approx(0.2)
    assert [c.num_heads for c in model.block_setting] == [1, 2, 2] + [4] * 11 + [8, 8]
    assert [c.stride_kv for c in model.block_setting[:4]] == [[1, 8, 8], [1, 4, 4], [1, 4, 4], [1, 2, 2]]


# =========================================================================== the model itself
def tiny(**kw):
    cfg = dict(spatial_size=(8, 8), temporal_size=4, num_classes=3, dropout=0.0,
               block_setting=mvit_v1_block_setting(depths=(1, 1), embed_dim=8, num_heads=1, stride_kv=(1, 2, 2)),
               patch_embed_kernel=(3, 3, 3), patch_embed_stride=(2, 2, 2), patch_embed_padding=(1, 1, 1))
    cfg.update(kw)
    return MViT(**cfg)


def test_pool_grid_tokens_in_2d_and_3d():
    """The shared pooling of MViT v1 (3-D) and v2 (2-D): prefix tokens pass, grid tokens pooled in
    row-major order, any leading axes."""
    rng = np.random.default_rng(0)
    t = rng.standard_normal((2, 3, 1 + 2 * 4 * 6, 5))                       # (B, h, 1 + T·H·W, d)
    out, grid = pool_grid_tokens(mv.tensor(t), lambda m: F.max_pool3d(m, (1, 2, 2), (1, 2, 2)), (2, 4, 6), 1)
    ref = t[:, :, 1:].reshape(2, 3, 2, 2, 2, 3, 2, 5).max(axis=(4, 6)).reshape(2, 3, 12, 5)
    assert grid == (2, 2, 3) and out.shape == (2, 3, 13, 5)
    np.testing.assert_array_equal(out.numpy()[:, :, 0], t[:, :, 0])
    np.testing.assert_array_equal(out.numpy()[:, :, 1:], ref)
    out2, grid2 = pool_grid_tokens(mv.tensor(t[0, :, 1:13]), lambda m: F.avg_pool2d(m, 2), (2, 6))  # (h, HW, d)
    assert grid2 == (1, 3)
    np.testing.assert_allclose(out2.numpy(), t[0, :, 1:13].reshape(3, 1, 2, 3, 2, 5).mean(axis=(2, 4)).reshape(3, 3, 5))
    with pytest.raises(ValueError, match="1 prefix tokens and a 2×4×5 grid"):
        pool_grid_tokens(mv.tensor(t), None, (2, 4, 5), 1)


def test_shapes_through_the_stages():
    model = tiny().eval()
    seen = []
    x = model.pos_encoding(model.conv_proj(mv.randn(2, 3, 4, 8, 8)).flatten(2).transpose(1, 2))
    thw = (2, 4, 4)
    assert x.shape == (2, 1 + 2 * 4 * 4, 8)
    for blk in model.blocks:
        x, thw = blk(x, thw)
        seen.append((tuple(x.shape), thw))
    assert seen == [((2, 33, 16), (2, 4, 4)), ((2, 9, 16), (2, 2, 2))]     # widen, then pool 1×2×2
    assert model(mv.randn(2, 3, 4, 8, 8)).shape == (2, 3)
    assert model.forward_head(model.forward_features(mv.randn(1, 3, 4, 8, 8)), pre_logits=True).shape == (1, 16)
    one = tiny(temporal_size=1, patch_embed_stride=(1, 2, 2)).eval()         # (B, C, H, W): one frame
    img = mv.randn(2, 3, 8, 8)
    np.testing.assert_array_equal(one(img).numpy(), one(img.unsqueeze(2)).numpy())


def test_the_position_embedding_is_separable():
    pe = tiny().pos_encoding
    x = pe(mv.zeros(1, 2 * 16, 8)).numpy()[0]                                # (1 + T·HW, C)
    t, s = pe.temporal_pos.numpy(), pe.spatial_pos.numpy()
    np.testing.assert_allclose(x[0], pe.class_token.numpy() + pe.class_pos.numpy())
    np.testing.assert_allclose(x[1 + 16 + 5], t[1] + s[5])                    # frame 1, cell 5
    no_decay = tiny().no_weight_decay()
    assert no_decay == {"pos_encoding.class_token", "pos_encoding.class_pos", "pos_encoding.spatial_pos",
                        "pos_encoding.temporal_pos"}
    assert no_decay <= set(dict(tiny().named_parameters()))


def test_wrong_inputs_and_configurations_name_the_problem():
    model = tiny().eval()
    with pytest.raises(ValueError, match="clip batch \\(B, C, T, H, W\\)"):
        model(mv.zeros(1, 3, 4, 8, 8, 1))
    with pytest.raises(ValueError, match="has 2 frames but the model was built for temporal_size=4"):
        model(mv.zeros(1, 3, 2, 8, 8))
    with pytest.raises(ValueError, match="3 input channels, got 4 .*permute"):
        model(mv.zeros(1, 4, 3, 8, 8))
    with pytest.raises(ValueError, match="frames are 12×12 .*spatial_size=8×8"):
        model(mv.zeros(1, 3, 4, 12, 12))
    with pytest.raises(ValueError, match="rel_pos_embed=True"):
        tiny(rel_pos_embed=True)
    with pytest.raises(ValueError, match="block 1 takes 8 channels but block 0 gives 16"):
        tiny(block_setting=[MSBlockConfig(1, 8, 16), MSBlockConfig(1, 8, 8)])
    with pytest.raises(ValueError, match="divisible by patch_embed_stride"):
        tiny(spatial_size=(9, 9))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        tiny(block_setting=[MSBlockConfig(3, 8, 8)])


def test_mvit_v1_tiny_trains_on_motion_clips():
    """The registered CPU model: forward and backward on a batch of generated motion clips,
    permuted to torchvision's (B, C, T, H, W); every parameter gets a finite gradient."""
    from minivit.data.motion import motion_split
    split = motion_split(4, [0, 1])
    model = create_model("mvit_v1_tiny")
    assert model.clip_layout == "BCTHW" and model.task == "video"
    assert 1e5 <= count_params(model) <= 1e6
    clips = split.clips.astype(np.float32) / 255                                # (B, T, C, H, W)
    x = mv.tensor(np.ascontiguousarray(clips.transpose(0, 2, 1, 3, 4)))      # (B, C, T, H, W)
    logits = model(x)
    assert logits.shape == (4, 2)
    F.cross_entropy(logits, mv.tensor(split.labels.astype(np.int64))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and np.isfinite(p.grad).all() and np.abs(p.grad).max() > 0, name
