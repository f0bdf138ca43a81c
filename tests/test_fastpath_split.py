"""The split forward of the torch fast path (two trunks as separate graphs, padded conv1_1, fused conv+ReLU)
gives the model's outputs. CPU, tiny VGG at 224 (fc6 needs a 16x16-ish pool5 grid); streams are CUDA-only."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from fgdeploy.errors import ConfigError
from fgdeploy.fastpath import ConvReLU, Im2ColConv, optimize_for_inference
from fgdeploy.models import create_model, load_model_config


def _tiny_vgg(size: int = 224):
    cfg = load_model_config("cub_vgg16_fc7")
    cfg = dataclasses.replace(cfg, input_size=size,
                              localization=dataclasses.replace(cfg.localization, backbone="vgg16_tiny"),
                              classification=dataclasses.replace(cfg.classification, backbone="vgg16_tiny"))
    torch.manual_seed(0)
    model = create_model(cfg, 7).eval()
    with torch.no_grad():   # random non-zero biases so the padded conv / fused bias are really exercised
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0.0, 0.05)
    return model


@pytest.mark.parametrize("kwargs", [
    {"split_streams": True},
    {"split_streams": True, "pad_input": True, "conv_relu": True, "channels_last": True},
    {"conv_relu": True},
    {"im2col": True},
    {"im2col": True, "conv_relu": True, "channels_last": True},
    {"split_streams": True, "im2col": True, "conv_relu": True},
])
def test_split_padded_fused_paths_equal_the_model(kwargs):
    torch.set_num_threads(2)
    model = _tiny_vgg()
    u8 = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8))
    want = optimize_for_inference(copy.deepcopy(model), "cpu")(u8)
    fast = copy.deepcopy(model)
    got = optimize_for_inference(fast, "cpu", **kwargs)(u8)
    assert want["logits"].std() > 0
    if kwargs.get("pad_input"):
        first = fast.cls_net.features[0]
        assert first.weight.shape[1] == 8 and first.weight[:, 3:].abs().sum() == 0
    if kwargs.get("im2col"):
        firsts = [net.features[0] for net in (fast.loc_net, fast.cls_net)]
        assert all(isinstance(f, Im2ColConv) and f.relu == bool(kwargs.get("conv_relu")) for f in firsts)
    if kwargs.get("conv_relu"):   # every VGG-16 conv: ConvReLU, or the first one fused into Im2ColConv
        assert sum(isinstance(m, ConvReLU) for m in fast.modules()) == 2 * (12 if kwargs.get("im2col") else 13)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_pad_input_without_split_is_refused():
    with pytest.raises(ConfigError, match="pad_input needs split_streams"):
        optimize_for_inference(_tiny_vgg(), "cpu", pad_input=True)


@pytest.mark.parametrize("relu", [False, True])
def test_im2col_conv_equals_the_3x3_conv_at_every_pixel(relu):
    """Random weights, bias and input (non-square, so a swapped axis fails); border pixels included."""
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    with torch.no_grad():
        conv.bias.normal_(0.0, 0.5)
    x = torch.randn(2, 3, 7, 11) * 2.0
    want = conv(x)
    want = torch.relu(want) if relu else want
    got = Im2ColConv(conv, channels_last=False, relu=relu)(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (want[..., 0, :] != 0).any() and (want[..., :, -1] != 0).any()   # borders carry signal


def test_im2col_patches_hold_each_neighbour_and_zeros_outside():
    conv = torch.nn.Conv2d(3, 2, 3, padding=1)
    x = torch.arange(3 * 4 * 5, dtype=torch.float32).reshape(1, 3, 4, 5) + 1.0
    cols = Im2ColConv(conv, channels_last=False, relu=False).patches(x)
    assert cols.shape == (1, 32, 4, 5)
    assert cols[:, 27:].abs().sum() == 0
    for dy in range(3):
        for dx in range(3):
            for c in range(3):
                got = cols[0, (dy * 3 + dx) * 3 + c]
                want = torch.nn.functional.pad(x[0, c], (1, 1, 1, 1))[dy:dy + 4, dx:dx + 5]
                assert torch.equal(got, want), (dy, dx, c)


def test_im2col_with_pad_input_is_refused():
    with pytest.raises(ConfigError, match="choose one"):
        optimize_for_inference(_tiny_vgg(), "cpu", split_streams=True, pad_input=True, im2col=True)


def test_im2col_rejects_a_conv_it_cannot_rewrite():
    with pytest.raises(ConfigError, match="unsupported conv"):
        Im2ColConv(torch.nn.Conv2d(3, 4, 5, padding=2), channels_last=False, relu=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("kwargs", [{"im2col": True}, {"im2col": True, "conv_relu": True},
                                    {"im2col": True, "conv_relu": True, "split_streams": True}])
def test_im2col_on_cuda_fp16_compiled_graphed_matches_the_fp32_model(kwargs):
    model = _tiny_vgg()
    u8 = torch.from_numpy(np.random.default_rng(4).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8))
    want = optimize_for_inference(copy.deepcopy(model), "cpu")(u8)
    fast = optimize_for_inference(copy.deepcopy(model), "cuda", fp16=True, channels_last=True,
                                  compile_mode="default", cuda_graphs=True, **kwargs)
    for _ in range(2):   # capture, then replay
        got = {k: v.float().cpu() for k, v in fast(u8.cuda()).items()}
    torch.testing.assert_close(got["logits"], want["logits"], rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(got["keypoint_scores"], want["keypoint_scores"], rtol=0, atol=2e-2)
