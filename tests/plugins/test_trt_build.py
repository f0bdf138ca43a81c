"""fgdeploy.export.tensorrt against a recording fake ``tensorrt`` (real TensorRT: test_trt_engine.py).

Checks the decisions that cannot be seen without TensorRT: network/parser flags per version, the batch
profile, workspace limit, timing cache, plugin-vs-inlined detection, the sidecar, and error messages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from fgdeploy.backends import trt_support
from fgdeploy.errors import BackendUnavailable, ExportError
from fgdeploy.export.metadata import encode_metadata
from fgdeploy.export.tensorrt import EngineBuildConfig, build_engine
from .fake_tensorrt import make_fake_tensorrt


def _onnx(path: Path, *, plugin_attr: bool = True, batch: int | str = "N", fp16: bool = False,
          qdq: int | None = None) -> Path:
    """A tiny model; ``qdq`` = an ONNX int type (INT8/UINT8) puts QuantizeLinear/DequantizeLinear before the Relu
    with a zero point of 0 (INT8) or 128 (UINT8), as ``fgdeploy export --int8`` does."""
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    attrs: dict[str, Any] = {"window": 3, "mode": 0}
    if plugin_attr:
        attrs.update(plugin_namespace="fgdeploy", plugin_version="1")
    first = "images"
    inits = []
    nodes = []
    if qdq is not None:
        zero = 128 if qdq == TensorProto.UINT8 else 0
        inits = [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.01]), helper.make_tensor("zp", qdq, [], [zero])]
        nodes = [helper.make_node("QuantizeLinear", ["images", "scale", "zp"], ["q"], name="q0"),
                 helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["dq"], name="dq0")]
        first = "dq"
    nodes += [helper.make_node("Relu", [first], ["feat"], name="relu"),
             helper.make_node("CoordinateTransfer", ["heat", "feat"], ["pooled"], name="ct0", domain="fgdeploy",
                              **attrs)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", elem, [batch, 3, 16, 16])],
                              [helper.make_tensor_value_info("pooled", elem, [batch, 15, 3])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("fgdeploy", 1)])
    for key, value in encode_metadata({"class_names": ["a", "b"], "part_names": ["beak"], "input_size": 16,
                                       "input_range": [0.0, 1.0], "precision": "fp16" if fp16 else "fp32"}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(version: str = "10.13.0.35", override_flag: bool = False) -> Any:
        trt = make_fake_tensorrt(version, override_flag)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(trt_support, "_LOADED_PLUGIN_LIBRARIES", {})
        return trt

    return install


@pytest.fixture
def plugin_lib(tmp_path: Path) -> Path:
    lib = tmp_path / "libfgdeploy_plugins.so"
    lib.write_bytes(b"not really a library")
    return lib


def test_build_engine_10x_strongly_typed_profile_cache_and_sidecar(fake_trt: Any, tmp_path: Path,
                                                                   plugin_lib: Path) -> None:
    trt = fake_trt("10.13.0.35")
    onnx_path = _onnx(tmp_path / "m.onnx")
    cache = tmp_path / "timing.cache"
    cfg = EngineBuildConfig(min_batch=1, opt_batch=4, max_batch=16, workspace_mib=512, timing_cache=cache,
                            plugin_library=plugin_lib)
    report = build_engine(onnx_path, tmp_path / "m.engine", cfg)

    network = trt.record["networks"][0]
    assert network.flags == 1 << 1  # STRONGLY_TYPED is member 1 on 10.x
    assert trt.record["parser_flags"] == []  # 10.13 has no ENABLE_PLUGIN_OVERRIDE
    config = trt.record["configs"][0]
    assert config.pool_limits == {trt.MemoryPoolType.WORKSPACE: 512 << 20}
    assert config.profiles[0].shapes == {"images": ([1, 3, 16, 16], [4, 3, 16, 16], [16, 3, 16, 16])}
    assert config.ignore_mismatch is False and cache.read_bytes() == b"+timed"
    assert trt.registry.loaded == [str(plugin_lib.resolve())]
    assert report.op_path == "plugin" and report.plugin_layers == ["ct0"] and report.precision == "fp32"

    plan = (tmp_path / "m.engine").read_bytes()
    assert plan.startswith(b"PLAN") and b"PLUGIN_V3" in plan
    sidecar = json.loads((tmp_path / "m.engine.json").read_text())
    assert sidecar == report.sidecar
    assert sidecar["format"] == trt_support.SIDECAR_FORMAT
    assert sidecar["machine"]["tensorrt_version"] == "10.13.0.35"
    assert sidecar["onnx"]["sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert sidecar["plugin_library"]["sha256"] == hashlib.sha256(plugin_lib.read_bytes()).hexdigest()
    assert sidecar["engine"]["sha256"] == hashlib.sha256(plan).hexdigest()
    assert sidecar["profile"]["max_batch"] == 16 and sidecar["precision"] == "fp32"
    assert sidecar["class_names"] == ["a", "b"] and sidecar["part_names"] == ["beak"]
    assert sidecar["preprocessing"]["input_size"] == 16
    assert sidecar["coordinate_transfer"] == {"onnx_nodes": 1, "plugin_layers": ["ct0"], "path": "plugin"}
    assert "--max-batch 16" in sidecar["rebuild_command"] and str(onnx_path.resolve()) in sidecar["rebuild_command"]


def test_build_engine_11x_has_no_typing_flag_and_sets_plugin_override(fake_trt: Any, tmp_path: Path,
                                                                      plugin_lib: Path) -> None:
    trt = fake_trt("11.1.0.106", override_flag=True)
    # Without plugin_namespace only the override flag makes the parser pick the plugin (10.15+ rule).
    report = build_engine(_onnx(tmp_path / "m.onnx", plugin_attr=False), tmp_path / "m.engine",
                          EngineBuildConfig(plugin_library=plugin_lib))
    assert trt.record["networks"][0].flags == 0
    assert trt.record["parser_flags"] == [trt.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE]
    assert report.parser_flags == ["ENABLE_PLUGIN_OVERRIDE"] and report.op_path == "plugin"


def test_build_engine_refuses_silent_inlining_and_names_the_cause(fake_trt: Any, tmp_path: Path,
                                                                  plugin_lib: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    fake_trt("10.13.0.35")
    onnx_path = _onnx(tmp_path / "m.onnx", plugin_attr=False)
    with pytest.raises(ExportError, match=r"inlined the ONNX local function for 1 of 1.*lack the attribute "
                                          r"plugin_namespace='fgdeploy'"):
        build_engine(onnx_path, tmp_path / "m.engine", EngineBuildConfig(plugin_library=plugin_lib))
    assert not (tmp_path / "m.engine").exists()
    with caplog.at_level(logging.WARNING):
        report = build_engine(onnx_path, tmp_path / "m.engine",
                              EngineBuildConfig(plugin_library=plugin_lib, require_plugin=False))
    assert report.op_path == "inlined" and report.sidecar["coordinate_transfer"]["path"] == "inlined"
    assert "building anyway" in caplog.text


def test_build_engine_without_plugin_library_says_how_to_get_one(fake_trt: Any, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake_trt()
    import fgdeploy.native.build as plugins

    monkeypatch.setattr(plugins, "find_plugin_library", lambda *a, **k: None)
    monkeypatch.setattr(plugins, "find_tensorrt_include", lambda *a, **k: None)
    with pytest.raises(ExportError, match="no TensorRT plugin library was found: set TENSORRT_INCLUDE_DIR"):
        build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine")


def test_build_engine_plugin_library_without_creator_fails(fake_trt: Any, tmp_path: Path, plugin_lib: Path) -> None:
    trt = fake_trt()
    trt.registry.library_registers = False
    with pytest.raises(trt_support.PluginLibraryError, match="registers no fgdeploy::CoordinateTransfer"):
        build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", EngineBuildConfig(plugin_library=plugin_lib))


def test_plugin_library_that_registered_itself_on_load_is_accepted(fake_trt: Any, plugin_lib: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """FGDEPLOY_PLUGIN_AUTOREGISTER=1 in this process: the library's constructor registers the creator during
    dlopen, so TensorRT's loadLibrary then refuses it (returns None); the creator is there all the same."""
    trt = fake_trt()

    def load_and_refuse(path: str) -> Any:
        trt.registry.creators.add(("CoordinateTransfer", "1", "fgdeploy"))
        return None

    monkeypatch.setattr(trt.registry, "load_library", load_and_refuse)
    trt_support.load_plugin_library(plugin_lib)
    trt.registry.creators.clear()
    monkeypatch.setattr(trt_support, "_LOADED_PLUGIN_LIBRARIES", {})
    monkeypatch.setattr(trt.registry, "load_library", lambda path: None)   # refused and nothing registered
    with pytest.raises(trt_support.PluginLibraryError, match="could not load the plugin library"):
        trt_support.load_plugin_library(plugin_lib)


def test_plugin_library_is_loaded_once_per_process(fake_trt: Any, plugin_lib: Path) -> None:
    trt = fake_trt()
    trt_support.load_plugin_library(plugin_lib)
    trt_support.load_plugin_library(plugin_lib)
    assert trt.registry.loaded == [str(plugin_lib.resolve())]


def test_build_engine_fp16_onnx_gives_fp16_engine(fake_trt: Any, tmp_path: Path, plugin_lib: Path) -> None:
    fake_trt()
    report = build_engine(_onnx(tmp_path / "m.onnx", fp16=True), tmp_path / "m.engine",
                          EngineBuildConfig(plugin_library=plugin_lib))
    assert report.precision == "fp16" and report.sidecar["precision"] == "fp16"


def test_build_engine_takes_symmetric_int8_qdq_as_explicit_quantization(fake_trt: Any, tmp_path: Path,
                                                                        plugin_lib: Path) -> None:
    trt = fake_trt("11.1.0.106", override_flag=True)
    report = build_engine(_onnx(tmp_path / "m.onnx", qdq=TensorProto.INT8), tmp_path / "m.engine",
                          EngineBuildConfig(plugin_library=plugin_lib))
    assert report.precision == "int8" and report.sidecar["precision"] == "int8"
    assert trt.record["networks"][0].flags == 0          # strongly typed, no precision flags
    assert report.op_path == "plugin"


def test_build_engine_refuses_uint8_qdq_and_says_how_to_export(fake_trt: Any, tmp_path: Path,
                                                               plugin_lib: Path) -> None:
    fake_trt()
    with pytest.raises(ExportError, match="--int8-target tensorrt"):
        build_engine(_onnx(tmp_path / "m.onnx", qdq=TensorProto.UINT8), tmp_path / "m.engine",
                     EngineBuildConfig(plugin_library=plugin_lib))
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.parametrize("cfg, message", [
    (EngineBuildConfig(min_batch=4, opt_batch=2, max_batch=8), "1 <= min <= opt <= max"),
    (EngineBuildConfig(workspace_mib=0), "workspace"),
    (EngineBuildConfig(optimization_level=9), "optimization_level"),
])
def test_engine_build_config_rejects_bad_values(tmp_path: Path, cfg: EngineBuildConfig, message: str) -> None:
    with pytest.raises(ExportError, match=message):
        build_engine(tmp_path / "missing.onnx", tmp_path / "m.engine", cfg)


def test_build_engine_rejects_fixed_batch_parse_errors_and_failed_builds(fake_trt: Any, tmp_path: Path,
                                                                         plugin_lib: Path) -> None:
    trt = fake_trt()
    cfg = EngineBuildConfig(plugin_library=plugin_lib)
    with pytest.raises(ExportError, match="fixed batch 1 but the profile asks for 1..32"):
        build_engine(_onnx(tmp_path / "fixed.onnx", batch=1), tmp_path / "m.engine", cfg)
    trt.record["parse_error"] = "node ct0: unsupported"
    with pytest.raises(ExportError, match=r"(?s)cannot parse .*node ct0: unsupported"):
        build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", cfg)
    trt.record["parse_error"] = None
    trt.record["build_result"] = None
    with pytest.raises(ExportError, match="failed to build an engine"):
        build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", cfg)
    with pytest.raises(ExportError, match="does not exist"):
        build_engine(tmp_path / "nope.onnx", tmp_path / "m.engine", cfg)


def test_import_tensorrt_explains_missing_or_stub_only_installs(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    with pytest.raises(BackendUnavailable, match="pip install tensorrt-cu13"):
        trt_support.import_tensorrt()
    stub_only = types.ModuleType("tensorrt")
    stub_only.__path__ = ["/site-packages/tensorrt"]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", stub_only)  # what `pip install tensorrt-stubs` alone leaves
    with pytest.raises(BackendUnavailable, match="type stubs only"):
        trt_support.import_tensorrt()
