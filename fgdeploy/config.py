"""Loading frozen dataclass configs from YAML files, rejecting unknown keys by name.

Config files give defaults; CLI options override (``replace_fields``). Nested dataclass
fields are filled from nested mappings.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml  # type: ignore[import-untyped]

from fgdeploy.errors import ConfigError

T = TypeVar("T")

# Configs shipped with the project: <repo>/models/<name>.yaml
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def resolve_config_path(name_or_path: str | Path) -> Path:
    """Find a config by path, or by name in the project's ``models/`` folder ("demo" -> models/demo.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (MODELS_DIR / f"{name_or_path}.yaml", MODELS_DIR / str(name_or_path)):
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in MODELS_DIR.glob("*.yaml")) if MODELS_DIR.is_dir() else []
    raise ConfigError(f"config {str(name_or_path)!r} not found: give a YAML file path or one of {available}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file.

    Raises:
        ConfigError: unreadable file, invalid YAML, an empty file (it would silently mean "all defaults"),
        or a top level that is not a mapping.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    if data is None:
        raise ConfigError(f"{path}: empty config; write its keys as a YAML mapping (models/demo.yaml shows them) "
                          "or give a config name such as 'demo'")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data


def dataclass_from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys are an error listing the valid ones."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{source}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def dataclass_to_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict form (tuples as lists) suitable for YAML/JSON and checkpoints."""
    return _plain(dataclasses.asdict(obj))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return dataclass_from_dict(hint, value, where)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(members[0], value, where) if len(members) == 1 else value
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        return tuple(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value
