"""Registry of reference layers keyed by ONNX-style op name (like Polygraphy's pluginref ``@register``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fgdeploy.reference.base import Layer

L = TypeVar("L", bound=type[Layer])

# Filled at import time by @register, read-only afterwards.
LAYERS: dict[str, type[Layer]] = {}


def register(op_name: str) -> Callable[[L], L]:
    """Class decorator: register a Layer subclass under ``op_name`` (a duplicate name is an error)."""

    def decorate(cls: L) -> L:
        if op_name in LAYERS and LAYERS[op_name] is not cls:
            raise ValueError(f"reference layer {op_name!r} is already registered by {LAYERS[op_name].__name__}")
        cls.op_name = op_name
        LAYERS[op_name] = cls
        return cls

    return decorate


def create_layer(op_name: str, **params: Any) -> Layer:
    """Instantiate the reference layer registered as ``op_name`` with its parameters.

    Raises:
        KeyError: no layer of that name; the message lists the registered ones.
    """
    try:
        cls = LAYERS[op_name]
    except KeyError:
        raise KeyError(f"no reference layer {op_name!r}; registered: {sorted(LAYERS)}") from None
    return cls(**params)


def list_layers() -> list[str]:
    """Names of the registered reference layers, sorted."""
    return sorted(LAYERS)
