"""mypy over the TensorRT backend against `tensorrt-stubs`, so misspelled TensorRT calls fail without TensorRT.

Runs when the stubs are installed (`pip install --no-deps tensorrt-stubs`: its `tensorrt` dependency needs
NVIDIA's package index) or when TENSORRT_STUBS_DIR points at a `pip install --target` copy; skipped otherwise.
tensorrt-stubs 10.13.0.35.1 (and 10.8-10.12) contain Python syntax errors (a parameter named `in`, a
non-default parameter after defaults), so the stubs are copied and those lines repaired first; errors
reported *inside* the stubs are ignored, errors in fgdeploy's files fail the test.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("fgdeploy/backends/trt_runner.py", "fgdeploy/backends/trt_support.py", "fgdeploy/export/tensorrt.py")
STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")


def _stubs_root() -> Path:
    env = os.environ.get("TENSORRT_STUBS_DIR")
    if env and (Path(env) / "tensorrt_bindings").is_dir():
        return Path(env)
    try:
        dist = importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tensorrt-stubs not installed (pip install --no-deps tensorrt-stubs, or set TENSORRT_STUBS_DIR): "
                    "TensorRT type check skipped")
    return Path(str(dist.locate_file("")))


def _repair_def_line(line: str) -> str:
    line = re.sub(r"([(,]\s*)in(\s*:)", r"\1in_\2", line)  # `in` is a keyword
    match = re.match(r"^(\s*def \w+\()(.*)(\)\s*->.*)$", line)
    if not match:
        return line
    seen_default, params = False, []
    for param in match.group(2).split(", "):
        if "=" in param:
            seen_default = True
        elif seen_default and ":" in param and not param.strip().startswith("*"):
            param += " = ..."
        params.append(param)
    return match.group(1) + ", ".join(params) + match.group(3)


def _sanitized_stubs(root: Path, out: Path) -> Path:
    for package in STUB_PACKAGES:
        shutil.copytree(root / package, out / package, ignore=shutil.ignore_patterns("*.py", "*.pyc", "*.so"))
    for stub in out.rglob("*.pyi"):
        lines = stub.read_text().splitlines()
        for _ in range(100):
            try:
                ast.parse("\n".join(lines))
                break
            except SyntaxError as exc:
                index = (exc.lineno or 1) - 1
                repaired = _repair_def_line(lines[index])
                if repaired == lines[index]:
                    pytest.fail(f"cannot repair {stub}:{exc.lineno}: {exc.msg}")
                lines[index] = repaired
        stub.write_text("\n".join(lines) + "\n")
    return out


def _mypy(stubs: Path, files: list[str]) -> tuple[list[str], str]:
    # follow-imports=skip: torch etc. are not analysed (stubs, tensorrt's included, always are): fast.
    env = {**os.environ, "MYPYPATH": str(stubs)}
    cmd = [sys.executable, "-m", "mypy", "--follow-imports=skip", "--no-error-summary", "--show-error-codes",
           "--cache-dir", str(stubs.parent / "mypy-cache"), *files]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    ours = [line for line in proc.stdout.splitlines() if not line.startswith(str(stubs)) and ": error:" in line]
    return ours, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mypy")
    return _sanitized_stubs(_stubs_root(), tmp_path_factory.mktemp("trt-stubs") / "stubs")


def test_tensorrt_backend_type_checks_against_stubs(stubs: Path) -> None:
    errors, output = _mypy(stubs, list(CHECKED))
    assert errors == [], output[-4000:]


def test_type_check_catches_a_misspelled_tensorrt_call(stubs: Path, tmp_path: Path) -> None:
    source = (ROOT / "fgdeploy/export/tensorrt.py").read_text()
    assert "builder.build_serialized_network(" in source
    bad = tmp_path / "trt_build_misspelled.py"
    bad.write_text(source.replace("builder.build_serialized_network(", "builder.build_serialised_network(", 1))
    errors, output = _mypy(stubs, [str(bad)])
    assert any('"Builder" has no attribute "build_serialised_network"' in e for e in errors), output[-4000:]
