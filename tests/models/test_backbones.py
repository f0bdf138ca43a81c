"""Backbone registry and the small demo backbone."""

from __future__ import annotations

import pytest
import torch

from fgdeploy.errors import CheckpointError, ConfigError
from fgdeploy.models import backbone_options, create_backbone, list_backbones, register_backbone
from fgdeploy.models.small import STAGE_NAMES


def test_registry_lists_builtin_backbones_and_their_options():
    assert {"vgg16", "vgg16_tiny", "small"} <= set(list_backbones())
    assert backbone_options("vgg16") == ["fc6_padding", "fc_dropout"]
    assert backbone_options("small") == ["widths", "depth"]


def test_registry_errors_name_the_bad_value_and_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown backbone 'vgg61'.*registered backbones: \[.*'small'"):
        create_backbone("vgg61", ["fc7"])
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['fc6_pad'\]; valid options: \['fc6_padding'"):
        create_backbone("vgg16", ["fc7"], {"fc6_pad": 3})
    with pytest.raises(ConfigError, match=r"unknown layer\(s\) \['conv5_4'\]; valid layers: \[.*'conv5_3'"):
        create_backbone("vgg16_tiny", ["conv5_4"])
    with pytest.raises(ConfigError, match="widths must be 5 positive ints"):
        create_backbone("small", ["s8"], {"widths": [8, 8]})


def test_register_backbone_makes_a_new_architecture_creatable():
    from fgdeploy.models import registry
    from fgdeploy.models.small import SmallNet

    def tiny_test_backbone(out_layers, depth: int = 1):
        return SmallNet(out_layers, (2, 2, 2, 2, 2), depth)

    register_backbone(tiny_test_backbone)
    try:
        bb = create_backbone("tiny_test_backbone", ["s4"])
        assert bb.info("s4").num_chs == 2
    finally:
        registry._BACKBONES.pop("tiny_test_backbone")


@pytest.mark.parametrize("size", [160, 97, 64])
def test_small_backbone_feature_hw_matches_actual_shapes(size):
    bb = create_backbone("small", STAGE_NAMES, {"widths": [4, 4, 8, 8, 8]})
    with torch.no_grad():
        out = bb(torch.rand(1, 3, size, size))
    for name in STAGE_NAMES:
        assert bb.feature_hw(name, size) == tuple(out[name].shape[2:])
        assert out[name].shape[1] == bb.info(name).num_chs
    assert bb.feature_hw("s4", 160) == (40, 40) and bb.feature_hw("s8", 160) == (20, 20)


def test_small_backbone_builds_only_up_to_the_deepest_tap():
    shallow = create_backbone("small", ["s8"])
    deep = create_backbone("small", ["s8", "s32"])
    assert len(shallow.stages) == 3 and len(deep.stages) == 5
    assert sum(p.numel() for p in shallow.parameters()) < sum(p.numel() for p in deep.parameters())


def test_small_backbone_round_trips_its_own_weights(tmp_path):
    src = create_backbone("small", ["s16"], {"widths": [4, 4, 8, 8, 8]})
    with torch.no_grad():
        for p in src.parameters():
            p.uniform_(-1, 1)
    src.stages[1][0][1].running_mean.uniform_(-1, 1)
    path = tmp_path / "small.pt"
    torch.save(src.state_dict(), path)
    dst = create_backbone("small", ["s16"], {"widths": [4, 4, 8, 8, 8]})
    dst.load_pretrained(path)
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=k)
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): stages\.4\.0\.0\.weight"):
        create_backbone("small", ["s32"], {"widths": [4, 4, 8, 8, 8]}).load_pretrained(path)
    with pytest.raises(CheckpointError, match=r"mismatched shapes.*stages\.3\.0\.0\.weight: file \(8, 8, 3, 3\)"):
        create_backbone("small", ["s16"], {"widths": [4, 4, 8, 16, 8]}).load_pretrained(path)
