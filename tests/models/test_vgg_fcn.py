"""VGG-16 cast fully convolutional: equivalence with the Linear-layer classifier, paper geometry, weight loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fgdeploy.errors import CheckpointError
from fgdeploy.models import create_backbone, create_model, load_model_config
from fgdeploy.models.vgg import VGG16FCN

# torchvision vgg16 `features` indices of the 13 convs.
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def torchvision_state_dict(bb: VGG16FCN) -> dict[str, torch.Tensor]:
    """The backbone's weights under torchvision's keys and shapes (fc6/fc7 as Linear matrices)."""
    sd = {}
    for idx in CONV_INDICES:
        sd[f"features.{idx}.weight"] = bb.features[idx].weight.detach().clone()
        sd[f"features.{idx}.bias"] = bb.features[idx].bias.detach().clone()
    sd["classifier.0.weight"] = bb.fc6.weight.detach().flatten(1).clone()
    sd["classifier.0.bias"] = bb.fc6.bias.detach().clone()
    sd["classifier.3.weight"] = bb.fc7.weight.detach().flatten(1).clone()
    sd["classifier.3.bias"] = bb.fc7.bias.detach().clone()
    return sd


def linear_vgg16_fc7(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """torchvision's VGG-16 (floor-mode pools, adaptive 7x7 avgpool, Linear fc6/fc7) up to ReLU(fc7), in F ops."""
    h = x
    for block, idxs in enumerate(((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))):
        for idx in idxs:
            h = F.relu(F.conv2d(h, sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"], padding=1))
        h = F.max_pool2d(h, 2, 2)
    h = torch.flatten(F.adaptive_avg_pool2d(h, (7, 7)), 1)  # (N, 512 * 7 * 7), C-major like torchvision
    h = F.relu(F.linear(h, sd["classifier.0.weight"], sd["classifier.0.bias"]))
    return F.relu(F.linear(h, sd["classifier.3.weight"], sd["classifier.3.bias"]))


@pytest.mark.slow
def test_vgg16_fcn_fc7_equals_linear_classifier_at_224():
    torch.manual_seed(0)
    bb = create_backbone("vgg16", ["fc7"]).eval()
    x = torch.rand(1, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        fcn = bb(x)["fc7"]  # (1, 4096, 1, 1)
        ref = linear_vgg16_fc7(torchvision_state_dict(bb), x)
    assert fcn.shape == (1, 4096, 1, 1)
    assert ref.abs().max() > 1e-2  # a non-trivial comparison
    torch.testing.assert_close(fcn.flatten(1), ref, atol=1e-5, rtol=1e-5)


def test_vgg16_tiny_loaded_from_torchvision_file_matches_linear_classifier(tmp_path, random_vgg_state_dict):
    bb = create_backbone("vgg16_tiny", ["fc7"]).eval()
    sd = random_vgg_state_dict(((4, 4), (8, 8), (16, 16, 16), (32, 32, 32), (32, 32, 32)), 64, seed=1)
    path = tmp_path / "vgg16_tiny.pth"
    torch.save(sd, path)
    bb.load_pretrained(path)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        fcn = bb(x)["fc7"].flatten(1)
        ref = linear_vgg16_fc7(sd, x)
    assert ref.abs().max() > 1e-2
    torch.testing.assert_close(fcn, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bb.fc6.weight.flatten(1), sd["classifier.0.weight"], atol=0, rtol=0)


def test_vgg16_paper_geometry_on_meta_device():
    # 500 -> 250 -> 125 -> 63 -> 32 -> 16 (ceil-mode pools) -> fc6 7x7 no padding -> 10x10 (docs/method.md sec. 2).
    layers = ["conv3_3", "pool3", "conv4_3", "pool4", "conv5_3", "pool5", "fc6", "fc7"]
    with torch.device("meta"):
        bb = create_backbone("vgg16", layers)
        out = bb(torch.empty(1, 3, 500, 500))
    got = {n: tuple(t.shape[1:]) for n, t in out.items()}
    assert got == {
        "conv3_3": (256, 125, 125), "pool3": (256, 63, 63), "conv4_3": (512, 63, 63), "pool4": (512, 32, 32),
        "conv5_3": (512, 32, 32), "pool5": (512, 16, 16), "fc6": (4096, 10, 10), "fc7": (4096, 10, 10),
    }
    for name in layers:
        assert bb.feature_hw(name, 500) == got[name][1:]


@pytest.mark.parametrize("config,grid", [("cub_vgg16_fc7", (10, 10)), ("cub_vgg16_cbp", (10, 10)),
                                         ("cub_vgg16_fcn8s", (63, 63))])
def test_paper_configs_give_heatmap_grid_at_500(config, grid):
    with torch.device("meta"):
        model = create_model(load_model_config(config), num_classes=200).eval()
        out = model(torch.empty(1, 3, 500, 500))
    assert model.heatmap_size == grid
    assert out["heatmaps"].shape == (1, 15, *grid)
    assert out["logits"].shape == (1, 200)
    assert model.transfer_feature_size == (32, 32)


@pytest.mark.parametrize("size", [224, 257, 333])
def test_vgg_feature_hw_matches_actual_shapes(size):
    names = ["conv1_2", "pool1", "conv2_2", "pool2", "conv3_3", "pool3", "conv4_3", "pool4", "conv5_3", "pool5",
             "fc6", "fc7"]
    for padding in (0, 3):
        bb = create_backbone("vgg16_tiny", names, {"fc6_padding": padding})
        with torch.no_grad():
            out = bb(torch.rand(1, 3, size, size))
        for name in names:
            assert bb.feature_hw(name, size) == tuple(out[name].shape[2:]), (name, size, padding)


def test_vgg_trunk_stops_at_deepest_requested_layer():
    bb = create_backbone("vgg16_tiny", ["conv5_3"])
    assert bb.fc6 is None and bb.fc7 is None
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in list(bb.features)[-3:])
    assert "classifier.0.weight" not in bb.torchvision_targets()


def test_cbp_trunk_loads_full_torchvision_file_ignoring_fc(tmp_path, random_vgg_state_dict):
    sd = random_vgg_state_dict(((4, 4), (8, 8), (16, 16, 16), (32, 32, 32), (32, 32, 32)), 64, seed=2)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)  # wrapped + DataParallel prefix
    bb = create_backbone("vgg16_tiny", ["conv5_3"])
    bb.load_pretrained(path)
    torch.testing.assert_close(bb.features[28].weight, sd["features.28.weight"], atol=0, rtol=0)


def test_vgg_missing_and_mismatched_keys_are_named(tmp_path, random_vgg_state_dict):
    sd = random_vgg_state_dict(((4, 4), (8, 8), (16, 16, 16), (32, 32, 32), (32, 32, 32)), 64, seed=3)
    del sd["features.28.weight"]
    del sd["classifier.3.bias"]
    sd["features.5.weight"] = torch.randn(8, 5, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    bb = create_backbone("vgg16_tiny", ["fc7"])
    before = bb.features[0].weight.detach().clone()
    with pytest.raises(CheckpointError) as info:
        bb.load_pretrained(path)
    msg = str(info.value)
    assert "missing keys (2)" in msg and "features.28.weight" in msg and "classifier.3.bias" in msg
    assert "mismatched shapes (1)" in msg and "features.5.weight: file (8, 5, 3, 3)" in msg
    assert str(path) in msg
    torch.testing.assert_close(bb.features[0].weight, before, atol=0, rtol=0)  # nothing copied on failure


def test_vgg16_full_size_file_for_tiny_model_reports_shapes(tmp_path, random_vgg_state_dict):
    # A torchvision VGG-16 file used with the wrong architecture: every tensor mismatches, and the message says so.
    sd = random_vgg_state_dict(((8, 8), (8, 8), (16, 16, 16), (32, 32, 32), (32, 32, 32)), 64, seed=4)
    path = tmp_path / "other.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"features\.0\.weight: file \(8, 3, 3, 3\) vs model"):
        create_backbone("vgg16_tiny", ["pool1"]).load_pretrained(path)


def test_truncated_or_missing_weights_file_is_a_checkpoint_error(tmp_path, random_vgg_state_dict):
    sd = random_vgg_state_dict(((4, 4), (8, 8), (16, 16, 16), (32, 32, 32), (32, 32, 32)), 64, seed=5)
    path = tmp_path / "full.pth"
    torch.save(sd, path)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    bb = create_backbone("vgg16_tiny", ["fc7"])
    with pytest.raises(CheckpointError, match=r"cut\.pth.*truncated"):
        bb.load_pretrained(cut)
    with pytest.raises(CheckpointError, match=r"nowhere\.pth not found"):
        bb.load_pretrained(tmp_path / "nowhere.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read weights file"):
        bb.load_pretrained(text)
