"""`fgdeploy doctor`: always exit 0, one row per component, JSON form, --no-build compiles nothing."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

import fgdeploy.native.build as plugins
from fgdeploy.cli import cli


def _no_build(*args: object, **kwargs: object) -> None:
    raise AssertionError("--no-build must not compile anything")


def test_doctor_json_reports_every_component_and_why_tensorrt_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT
    monkeypatch.setattr(plugins, "build_kernel_library", _no_build)
    monkeypatch.setattr(plugins, "build_plugin_library", _no_build)
    result = CliRunner().invoke(cli, ["doctor", "--json", "--no-build"])
    assert result.exit_code == 0, result.output
    rows = {row["component"]: row for row in json.loads(result.stdout)}
    for component in ("python", "fgdeploy", "torch", "onnxruntime", "openvino", "tritonclient", "tensorrt", "nvcc",
                      "kernel library",
                      "tensorrt headers", "trt plugin library", "cuda driver"):
        assert component in rows, sorted(rows)
    assert rows["tensorrt"]["status"] == "missing" and "pip install tensorrt-cu13" in rows["tensorrt"]["detail"]
    assert "CPUExecutionProvider" in rows["onnxruntime"]["detail"]
    assert rows["openvino"]["status"] == "missing" or "CPU" in rows["openvino"]["detail"]
    assert all(row["status"] in ("ok", "missing", "warn", "error") for row in rows.values())
    assert any(c.startswith("gpu") for c in rows)


def test_doctor_table_survives_a_crashing_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(plugins, "find_nvcc", boom)
    monkeypatch.setattr(plugins, "build_kernel_library", _no_build)
    result = CliRunner().invoke(cli, ["doctor", "--no-build"])
    assert result.exit_code == 0, result.output
    nvcc_line = next(line for line in result.output.splitlines() if line.startswith("nvcc"))
    assert "error" in nvcc_line and "RuntimeError: driver exploded" in nvcc_line
    assert any(line.startswith("python") for line in result.output.splitlines())


def test_doctor_builds_and_loads_the_kernel_library(nvcc: object) -> None:
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    row = next(r for r in json.loads(result.stdout) if r["component"] == "kernel library")
    assert row["status"] == "ok" and "builds and loads" in row["detail"], row
