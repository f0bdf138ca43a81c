"""Backbone registry (timm-style): ``@register_backbone`` stores a factory under its name.

A factory takes the tap names to output plus explicit keyword options, and returns a
``Backbone``. ``create_backbone`` checks options against the factory's signature, so a typo in
a config file is reported by name with the valid options, not three frames down.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fgdeploy.errors import ConfigError
from fgdeploy.models.backbone import Backbone

logger = logging.getLogger(__name__)

BackboneFactory = Callable[..., Backbone]

# Filled at import by the decorators in vgg.py / small.py; read-only afterwards.
_BACKBONES: dict[str, BackboneFactory] = {}


def register_backbone(fn: BackboneFactory) -> BackboneFactory:
    """Decorator: register ``fn`` under ``fn.__name__`` (a warning on overwrite)."""
    name = fn.__name__
    if name in _BACKBONES:
        logger.warning("backbone %r registered twice; the later definition wins", name)
    _BACKBONES[name] = fn
    return fn


def list_backbones() -> list[str]:
    """Sorted names of the registered backbones."""
    _ensure_builtin()
    return sorted(_BACKBONES)


def backbone_options(name: str) -> list[str]:
    """Keyword options accepted by backbone ``name`` (besides ``out_layers``)."""
    fn = _lookup(name)
    return [p for p in inspect.signature(fn).parameters if p != "out_layers"]


def create_backbone(name: str, out_layers: Sequence[str], options: Mapping[str, Any] | None = None) -> Backbone:
    """Build backbone ``name`` outputting ``out_layers``.

    Args:
        name: a registered name (see ``list_backbones``).
        out_layers: tap names to return from ``forward``.
        options: extra keyword options of that backbone (see ``backbone_options``). Defaults to none.

    Raises:
        ConfigError: unknown name, unknown option, or unknown layer.
    """
    fn = _lookup(name)
    options = dict(options or {})
    valid = backbone_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"backbone {name!r}: unknown option(s) {unknown}; valid options: {valid}")
    return fn(out_layers=tuple(out_layers), **options)


def _lookup(name: str) -> BackboneFactory:
    _ensure_builtin()
    if name not in _BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; registered backbones: {sorted(_BACKBONES)}")
    return _BACKBONES[name]


def _ensure_builtin() -> None:
    # Importing the architecture modules runs their @register_backbone decorators.
    from fgdeploy.models import small, vgg  # noqa: F401
