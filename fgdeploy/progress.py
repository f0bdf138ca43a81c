"""Progress bars for the CLI and training loop: on stderr, off under --quiet or when not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(
    items: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "img",
    enabled: bool | None = None,
) -> Iterator[T]:
    """Wrap an iterable in a tqdm bar showing rate (unit/s) and ETA.

    Args:
        items: what to iterate.
        total: number of items, if ``items`` has no len().
        desc: label at the left of the bar.
        unit: what one item is ("img", "batch").
        enabled: force on/off; None means on when stderr is a terminal.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    return iter(tqdm(items, total=total, desc=desc, unit=unit, disable=not enabled,
                     file=sys.stderr, dynamic_ncols=True, smoothing=0.1))


def progress_bar(*, total: int | None, desc: str = "", unit: str = "img", enabled: bool | None = None) -> tqdm:
    """A manually driven bar (``update(n)``, ``set_postfix(...)``, ``close()``) with ``progress``'s settings."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)
