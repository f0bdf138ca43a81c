"""The GPU fast path runs the part-net model (CPU here): every variant gives the model's outputs, part boxes
included (split forward with padded conv1_1, fused conv+ReLU, channels_last, fp16, torch.compile tracing)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from fgdeploy.inference.fastpath import ConvReLU, default_outputs, optimize_for_inference
from fgdeploy.models import create_model, load_model_config, with_backbone_options


def _tiny_vgg_partnets(size: int = 224):
    cfg = load_model_config("cub_vgg16_cbp_partnets")
    tiny = {"backbone": "vgg16_tiny"}
    cfg = dataclasses.replace(cfg, input_size=size, localization=dataclasses.replace(cfg.localization, **tiny),
                              classification=dataclasses.replace(cfg.classification, cbp_dim=64, **tiny),
                              part_nets=dataclasses.replace(cfg.part_nets, crop_size=64, cbp_dim=32, **tiny),
                              zero_invisible_parts=False)
    torch.manual_seed(0)
    model = create_model(cfg, 7).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0.0, 0.05)
        for conv in model.keypoint_head.score:   # peaked heatmaps: some parts scored visible, boxes not trivial
            conv.weight.mul_(50.0)
    return model


def _tiny_demo_partnets():
    cfg = with_backbone_options(load_model_config("demo_partnets"), {"widths": [4, 8, 8, 16, 16]}, input_size=64)
    cfg = dataclasses.replace(cfg, part_nets=dataclasses.replace(cfg.part_nets, crop_size=16))
    torch.manual_seed(0)
    model = create_model(cfg, 5).eval()
    with torch.no_grad():   # clear heatmap peaks: fp16 rounding does not move the keypoints
        for conv in model.keypoint_head.score:
            conv.weight.mul_(30.0)
    return model


def _u8(n: int, size: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def test_default_outputs_include_the_part_boxes():
    assert default_outputs(_tiny_demo_partnets())[-1] == "part_boxes"
    assert "part_boxes" not in default_outputs(create_model(load_model_config("demo"), 3))


@pytest.mark.parametrize("kwargs", [
    {"split_streams": True},
    {"split_streams": True, "pad_input": True, "conv_relu": True, "channels_last": True},
    {"conv_relu": True, "channels_last": True},
])
def test_fast_path_variants_equal_the_part_net_model(kwargs):
    torch.set_num_threads(2)
    model = _tiny_vgg_partnets()
    u8 = _u8(2, 224)
    with torch.no_grad():
        want = model(u8.permute(0, 3, 1, 2).float() / 255.0)
    fast = copy.deepcopy(model)
    got = optimize_for_inference(fast, "cpu", **kwargs)(u8)
    assert set(got) == {"logits", "keypoints", "keypoint_scores", "part_boxes"}
    assert want["logits"].std() > 0
    assert not torch.equal(want["part_boxes"][:, 0], torch.tensor([0.0, 0.0, 224.0, 224.0]).expand(2, 4))
    if kwargs.get("conv_relu"):   # the head/body trunks are fused too
        assert sum(isinstance(m, ConvReLU) for m in fast.part_nets.modules()) == 2 * 13
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)


def test_fast_path_fp16_keeps_boxes_and_compile_traces_without_graph_breaks():
    torch.set_num_threads(2)
    model = _tiny_demo_partnets()
    u8 = _u8(3, 64)
    want = optimize_for_inference(copy.deepcopy(model), "cpu")(u8)
    half = optimize_for_inference(copy.deepcopy(model), "cpu", fp16=True)(u8)
    assert half["logits"].dtype == torch.float16 and half["part_boxes"].dtype == torch.float32
    visible = model.config.visibility_threshold
    same = ((half["keypoints"].float() == want["keypoints"]).all(dim=(1, 2))
            & ((half["keypoint_scores"] >= visible) == (want["keypoint_scores"] >= visible)).all(dim=1))
    assert same.sum() >= 2   # same keypoints and visibility -> the very same boxes
    torch.testing.assert_close(half["part_boxes"][same], want["part_boxes"][same])
    compiled = optimize_for_inference(copy.deepcopy(model), "cpu", compile_mode="default",
                                      compile_backend="aot_eager")(u8)   # fullgraph=True: a break would raise
    for name in want:
        torch.testing.assert_close(compiled[name], want[name], rtol=1e-4, atol=1e-5, msg=name)
