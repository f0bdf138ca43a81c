"""The split forward of the torch fast path (two trunks as separate graphs, padded conv1_1, fused conv+ReLU)
gives the model's outputs. CPU, tiny VGG at 224 (fc6 needs a 16x16-ish pool5 grid); streams are CUDA-only."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from fgdeploy.errors import ConfigError
from fgdeploy.inference.fastpath import ConvReLU, optimize_for_inference
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
    if kwargs.get("conv_relu"):
        assert sum(isinstance(m, ConvReLU) for m in fast.modules()) == 2 * 13   # every VGG-16 conv
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_pad_input_without_split_is_refused():
    with pytest.raises(ConfigError, match="pad_input needs split_streams"):
        optimize_for_inference(_tiny_vgg(), "cpu", pad_input=True)
