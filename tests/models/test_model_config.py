"""Model configs: shipped YAMLs load and build; errors name the key/value; demo budget."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from fgdeploy.config import MODELS_DIR, dataclass_from_dict, dataclass_to_dict
from fgdeploy.errors import ConfigError
from fgdeploy.models import ModelConfig, create_model, load_model_config

SHIPPED = sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))


def test_required_configs_are_shipped():
    assert {"cub_vgg16_fc7", "cub_vgg16_cbp", "demo"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_builds_and_round_trips_through_a_dict(name):
    cfg = load_model_config(name)
    assert cfg.name == name
    assert dataclass_from_dict(ModelConfig, dataclass_to_dict(cfg)) == cfg  # what checkpoints store
    with torch.device("meta"):
        model = create_model(cfg, num_classes=7)
    assert model.config is cfg and model.input_size == cfg.input_size


def test_paper_configs_follow_the_paper():
    fc7, cbp = load_model_config("cub_vgg16_fc7"), load_model_config("cub_vgg16_cbp")
    for cfg in (fc7, cbp):
        assert cfg.input_size == 500 and not cfg.shared_backbone
        assert cfg.localization.score_layers == ("fc7",)
        assert (cfg.classification.transfer_layer, cfg.classification.window, cfg.classification.mode) == \
            ("conv5_3", 3, "max")
    assert fc7.classification.holistic == "fc7"
    assert (cbp.classification.holistic, cbp.classification.cbp_dim) == ("cbp", 5000)


def test_demo_config_geometry_and_budget():
    cfg = load_model_config("demo")
    model = create_model(cfg, num_classes=20).eval()
    assert cfg.input_size == 160 and model.heatmap_size == (40, 40)  # 4 px cells
    assert model.transfer_feature_size == (20, 20) and cfg.classification.window == 3  # stride-8 parts
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.rand(1, 3, 160, 160))
    assert 0.1e9 < counter.get_total_flops() < 1.0e9  # both nets, one 160 px image


def test_unknown_key_in_yaml_is_named_with_the_file(tmp_path):
    data = yaml.safe_load((MODELS_DIR / "demo.yaml").read_text())
    data["classification"]["windw"] = 5
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"typo\.yaml.*unknown key\(s\) \['windw'\].*valid keys"):
        load_model_config(path)


@pytest.mark.parametrize("section,key,value,match", [
    ("classification", "holistic", "fc8", r"holistic: 'fc8' is not one of"),
    ("classification", "mode", "median", r"mode: 'median' is not one of"),
    ("classification", "window", 4, r"window: must be an odd int"),
    ("localization", "score_layers", [], r"score_layers: give at least one layer"),
    (None, "visibility_threshold", 1.5, r"visibility_threshold: must be in \(0, 1\)"),
    (None, "mean", [0.5, 0.5], r"need 3 RGB values"),
])
def test_bad_values_are_reported_with_the_file(tmp_path, section, key, value, match):
    data = yaml.safe_load((MODELS_DIR / "demo.yaml").read_text())
    (data[section] if section else data)[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=match) as info:
        load_model_config(path)
    assert "bad.yaml" in str(info.value)


def test_classifier_without_inputs_and_mismatched_shared_trunks_are_rejected():
    with pytest.raises(ConfigError, match="use_parts is false and holistic is 'none'"):
        dataclass_from_dict(ModelConfig, {"classification": {"use_parts": False, "holistic": "none"}})
    with pytest.raises(ConfigError, match="shared_backbone.*differ"):
        dataclass_from_dict(ModelConfig, {"shared_backbone": True, "localization": {"backbone": "small"}})


def test_unknown_config_name_lists_shipped_ones():
    with pytest.raises(ConfigError, match=r"config 'demoo' not found.*'demo'"):
        load_model_config("demoo")


def test_with_backbone_options_narrows_both_nets_and_keeps_the_rest():
    from fgdeploy.models import with_backbone_options

    base = load_model_config("demo")
    small = with_backbone_options(base, {"widths": [4, 8, 8, 16, 16], "depth": 1}, input_size=48)
    assert small.localization.backbone_options == small.classification.backbone_options == {
        "widths": [4, 8, 8, 16, 16], "depth": 1}
    assert small.input_size == 48 and base.input_size == 160
    assert small.localization.score_layers == base.localization.score_layers
    assert small.classification.transfer_layer == base.classification.transfer_layer
    assert with_backbone_options(base, {"depth": 1}).input_size == base.input_size
