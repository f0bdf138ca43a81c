"""Fixtures of the data tests; the fixture dataset itself is described in cub_fixture.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cub_fixture import build_cub_fixture


@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    """A fresh copy of the fixture dataset."""
    return build_cub_fixture(tmp_path / "cub")


@pytest.fixture
def edit_line() -> Callable[[Path, int, str | None], None]:
    """``edit_line(file, line_number, text)`` replaces a line (None deletes it), keeping line endings."""
    def edit(path: Path, number: int, text: str | None) -> None:
        raw = path.read_bytes().decode("utf-8")
        ending = "\r\n" if "\r\n" in raw else "\n"
        lines = raw.split(ending)
        if text is None:
            del lines[number - 1]
        else:
            lines[number - 1] = text
        path.write_bytes(ending.join(lines).encode("utf-8"))
    return edit
