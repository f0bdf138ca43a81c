"""`fgdeploy export --portable` and `--triton REPO [--triton-name] [--engine]` end to end through the CLI."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from google.protobuf import text_format

from fgdeploy.backends.ort_runner import OrtRunner
from fgdeploy.cli import cli
from fgdeploy.export.portable import PORTABLE_KEY, is_portable

from .conftest import SIZE

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")


def _config(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_export_portable_with_triton_repository(ckpt, exports, synth, tmp_path):
    out, repo = tmp_path / "m.onnx", tmp_path / "triton"
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(out), "--max-batch", "8", "--portable",
                                      "--triton", str(repo), "--triton-name", "birds"])
    assert result.exit_code == 0, result.output
    assert "1 CoordinateTransfer node(s) inlined (portable: standard ONNX ops only)" in result.output
    assert "wrote Triton model repository" in result.output and "no Triton server was run" in result.output
    model = onnx.load(str(out))
    assert is_portable(model) and PORTABLE_KEY in {p.key for p in model.metadata_props}
    images = np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32)
    with OrtRunner(out) as portable, OrtRunner(exports["fp32"]) as default:   # same checkpoint, default export
        got, want = portable.infer({"images": images}), default.infer({"images": images})
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5, err_msg=name)
    parity = CliRunner().invoke(cli, ["parity", "--ref", f"torch:{ckpt}", "--test", f"onnx:{out}", "--data",
                                      str(synth), "--batch", "4"])
    assert parity.exit_code == 0 and "RESULT: PASS" in parity.output, parity.output   # as the default export does
    config = _config(repo / "birds" / "config.pbtxt")
    assert config.max_batch_size == 8 and config.parameters["portable"].string_value == "true"
    assert (repo / "birds" / "1" / "model.onnx").read_bytes() == out.read_bytes()


def test_export_engine_triton_through_the_cli_with_fake_tensorrt(ckpt, tmp_path, monkeypatch):
    from fgdeploy.backends import trt_support
    from tests.plugins.fake_tensorrt import make_fake_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.13.0.35"))
    monkeypatch.setattr(trt_support, "_LOADED_PLUGIN_LIBRARIES", {})
    library = tmp_path / "libfgdeploy_plugins.so"
    library.write_bytes(b"plugin")
    monkeypatch.setenv("FGDEPLOY_PLUGIN_LIB", str(library))
    out, repo = tmp_path / "m.onnx", tmp_path / "triton"
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(out), "--max-batch", "4", "--engine",
                                      "--triton", str(repo)])
    assert result.exit_code == 0, result.output
    assert "m (onnxruntime, max_batch_size 4), m_trt (tensorrt, max_batch_size 4)" in result.output
    sidecar = json.loads(out.with_suffix(".engine.json").read_text())
    assert sidecar["profile"]["max_batch"] == 4
    trt = _config(repo / "m_trt" / "config.pbtxt")
    assert trt.platform == "tensorrt_plan" and trt.max_batch_size == 4
    assert (repo / "libfgdeploy_plugins.so").read_bytes() == b"plugin"
    assert "--backend-config=tensorrt,plugins=/models/libfgdeploy_plugins.so" in (repo / "README.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--portable", "--engine"], "export without --portable for --engine"),
    (["--triton-name", "x"], "add --triton REPO"),
    (["--triton", "{tmp}/repo", "--triton-name", "a b"], "without spaces or slashes"),
])
def test_export_option_mistakes_are_usage_errors(ckpt, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "m.onnx"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "m.onnx").exists()


def test_export_triton_without_tritonclient_says_what_to_install_before_exporting(ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)   # import fails as if not installed
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "m.onnx"), "--triton",
                                      str(tmp_path / "repo")])
    assert result.exit_code == 1 and "pip install 'fgdeploy[triton]'" in result.output, result.output
    assert not (tmp_path / "m.onnx").exists()
