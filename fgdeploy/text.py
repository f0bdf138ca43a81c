"""Small helpers for text shown to users: counts with the right plural, values without Python reprs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def plural(count: int, noun: str, many: str = "") -> str:
    """'1 image', '3 images' (``many``: an irregular plural)."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"


def percent(fraction: float | None) -> str:
    """'12.34%' for 0.1234; '-' when there is no value."""
    return "-" if fraction is None else f"{100 * fraction:.2f}%"


def listed(items: Iterable[Any]) -> str:
    """'a, b, c' (not "['a', 'b', 'c']")."""
    return ", ".join(str(item) for item in items)


def settings_text(values: Mapping[str, Any]) -> str:
    """'quick True, epochs 1' (not "{'quick': True, 'epochs': 1}")."""
    return ", ".join(f"{key} {'default' if value is None else value}" for key, value in values.items())


def sentence(text: str) -> str:
    """``text`` ending in exactly one full stop (messages from libraries may end in one already)."""
    return text.rstrip().rstrip(".") + "."
