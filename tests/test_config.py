"""Config loading: unknown keys are named, types are checked, nesting works."""

from dataclasses import dataclass, field

import pytest

from fgdeploy.config import dataclass_from_dict, dataclass_to_dict
from fgdeploy.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    window: int = 3
    mode: str = "max"


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    lr: float = 0.1
    sizes: tuple[int, ...] = (1, 2)
    inner: Inner = field(default_factory=Inner)


def test_config_unknown_key_is_named_with_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['windw'\].*valid keys"):
        dataclass_from_dict(Outer, {"inner": {"windw": 5}}, "demo.yaml")


def test_config_nested_and_coerced():
    cfg = dataclass_from_dict(Outer, {"lr": 1, "sizes": [3, 4], "inner": {"window": 5}})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.sizes == (3, 4)
    assert cfg.inner == Inner(window=5)
    assert dataclass_to_dict(cfg)["sizes"] == [3, 4]


def test_config_wrong_type_is_reported():
    with pytest.raises(ConfigError, match=r"cfg.inner.window: expected int"):
        dataclass_from_dict(Outer, {"inner": {"window": "three"}}, "cfg")


@pytest.mark.parametrize("text, match", [("", "empty config"), ("# only a comment\n", "empty config"),
                                         ("- a\n- b\n", "expected a mapping")])
def test_load_model_config_rejects_empty_or_non_mapping_yaml_naming_the_file(tmp_path, text, match):
    from fgdeploy.models import load_model_config

    path = tmp_path / "cfg_empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"cfg_empty\.yaml: {match}"):
        load_model_config(path)


def test_train_cli_empty_config_is_a_one_line_error(tmp_path):
    from click.testing import CliRunner

    from fgdeploy.cli import cli

    path = tmp_path / "cfg_empty.yaml"
    path.write_text("")
    (tmp_path / "data").mkdir()  # an empty data folder: without the check, training fails fast on it instead
    res = CliRunner().invoke(cli, ["train", "--config", str(path), "--data", str(tmp_path / "data"), "--out",
                                   str(tmp_path / "run"), "--epochs", "1"])
    assert res.exit_code == 1 and "cfg_empty.yaml: empty config" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
