"""fgdeploy.fileio: atomic writes leave the mode a plain open() would (issue 17 #2)."""

import os

import pytest

from fgdeploy import fileio
from fgdeploy.fileio import atomic_open, atomic_write_bytes


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        with atomic_open(tmp_path / "b.csv", "w", encoding="utf-8") as handle:
            handle.write("y")
        with open(tmp_path / "plain", "w", encoding="utf-8") as handle:   # what the user expects
            handle.write("z")
    finally:
        os.umask(old)
    assert (tmp_path / "plain").stat().st_mode & 0o777 == mode
    if hasattr(fileio, "current_umask"):
        old = os.umask(umask)
        try:
            assert fileio.current_umask() == umask
        finally:
            os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.csv").stat().st_mode & 0o777 == mode


def test_files_written_by_fgdeploy_commands_honour_the_umask(tmp_path):
    """A dataset written by `data synth` (JPEGs, annotation text, preview PNG) is readable by the group/others."""
    from click.testing import CliRunner

    from fgdeploy.cli import cli

    old = os.umask(0o022)
    try:
        result = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "set"), "--classes", "1",
                                          "--images-per-class", "2", "--size", "64", "--preview"])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    files = [p for p in (tmp_path / "set").rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".jpg", ".txt", ".png"}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o644)}


def test_atomic_write_failure_names_the_target_not_the_temp_file(tmp_path, monkeypatch):
    """Issue 17 #7: `export -o /proc/x.onnx` named fgdeploy's internal temp file."""
    import errno
    import tempfile

    def refuse(prefix, suffix, dir):   # noqa: A002  (what a read-only or virtual file system does)
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, f"{prefix}abc{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OSError) as info:
        atomic_write_bytes(tmp_path / "x.onnx", b"x")
    assert info.value.filename == str(tmp_path / "x.onnx") and info.value.errno == errno.EACCES
