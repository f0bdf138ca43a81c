"""The split forward of the torch fast path (two trunks as separate graphs, padded conv1_1, fused conv+ReLU)
gives the model's outputs. CPU, tiny VGG at 224 (fc6 needs a 16x16-ish pool5 grid); streams are CUDA-only."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from fgdeploy.errors import ConfigError
from fgdeploy.fastpath import ConvReLU, optimize_for_inference
from fgdeploy.stem_conv import StemConvReLU
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
    {"triton_stem": True},
    {"triton_stem": True, "conv_relu": True, "channels_last": True},
    {"split_streams": True, "triton_stem": True, "conv_relu": True},
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
    if kwargs.get("triton_stem"):
        assert all(isinstance(net.features[0], StemConvReLU) for net in (fast.loc_net, fast.cls_net))
    if kwargs.get("conv_relu"):   # every VGG-16 conv: ConvReLU, or the first one in StemConvReLU
        assert sum(isinstance(m, ConvReLU) for m in fast.modules()) == 2 * (12 if kwargs.get("triton_stem") else 13)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_pad_input_without_split_is_refused():
    with pytest.raises(ConfigError, match="pad_input needs split_streams"):
        optimize_for_inference(_tiny_vgg(), "cpu", pad_input=True)


def test_triton_stem_with_pad_input_is_refused():
    with pytest.raises(ConfigError, match="choose one"):
        optimize_for_inference(_tiny_vgg(), "cpu", split_streams=True, pad_input=True, triton_stem=True)


def test_triton_stem_rejects_a_model_it_cannot_rewrite():
    from fgdeploy.models import load_model_config

    model = create_model(load_model_config("demo"), 3).eval()   # stride-2 stem
    with pytest.raises(ConfigError, match="3x3 stride-1 pad-1 conv on 3 channels"):
        optimize_for_inference(model, "cpu", triton_stem=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("kwargs", [{"triton_stem": True}, {"triton_stem": True, "conv_relu": True},
                                    {"triton_stem": True, "conv_relu": True, "split_streams": True}])
def test_triton_stem_on_cuda_fp16_compiled_graphed_matches_the_fp32_model(kwargs):
    model = _tiny_vgg()
    u8 = torch.from_numpy(np.random.default_rng(4).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8))
    want = optimize_for_inference(copy.deepcopy(model), "cpu")(u8)
    fast = optimize_for_inference(copy.deepcopy(model), "cuda", fp16=True, channels_last=True,
                                  compile_mode="default", cuda_graphs=True, **kwargs)
    for _ in range(2):   # capture, then replay
        got = {k: v.float().cpu() for k, v in fast(u8.cuda()).items()}
    torch.testing.assert_close(got["logits"], want["logits"], rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(got["keypoint_scores"], want["keypoint_scores"], rtol=0, atol=2e-2)
