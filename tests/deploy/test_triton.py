"""Triton model repositories for the demo-architecture model: configs vs Triton's schema and the ONNX graph.

No Triton server runs on these machines: each config is parsed with tritonclient's ``model_config_pb2`` (strict
protobuf text format), compared with the ONNX file read independently here, and the client snippet the
repository README gives is executed against ONNX Runtime standing in for the server.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from google.protobuf import text_format

from fgdeploy.deploy.triton import (
    AUTOREGISTER_ENV, PLUGIN_FILE, TritonConfigError, check_config, parse_config, write_triton_repository,
)
from fgdeploy.export.metadata import decode_metadata

from .conftest import MAX_BATCH, SIZE

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
TRITON_TYPES = {np.dtype(np.float32): "TYPE_FP32", np.dtype(np.float16): "TYPE_FP16"}


def _strict(path: Path) -> Any:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _onnx_tensors(path: Path, batched: bool) -> dict[str, tuple[str, list[int]]]:
    model = onnx.load(str(path))
    out = {}
    for value in (*model.graph.input, *model.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
        out[value.name] = (TRITON_TYPES[dtype], dims[1:] if batched else dims)
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_repository_config_parses_and_matches_the_onnx(exports, tmp_path, precision):
    onnx_path = exports[precision]
    repo = write_triton_repository(tmp_path / "repo", onnx_path, name="birds")
    config_path = tmp_path / "repo" / "birds" / "config.pbtxt"
    config = _strict(config_path)
    assert [m.name for m in repo.models] == ["birds"] and repo.plugin_library is None
    assert config.name == "birds" and config.backend == "onnxruntime" and config.max_batch_size == MAX_BATCH
    assert config.HasField("dynamic_batching")
    declared = {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in (*config.input,
                                                                                              *config.output)}
    assert declared == _onnx_tensors(onnx_path, batched=True)
    assert declared["images"] == ("TYPE_FP32", [3, SIZE, SIZE])
    assert (tmp_path / "repo" / "birds" / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    meta = decode_metadata({p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props})
    labels = (tmp_path / "repo" / "birds" / "labels.txt").read_text().splitlines()
    assert labels == meta["class_names"] and len(labels) == 3
    assert [o.label_filename for o in config.output if o.name == "logits"] == ["labels.txt"]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["precision"] == precision and params["source_sha256"] == meta["source_sha256"]
    assert json.loads(params["part_names"]) == meta["part_names"]
    assert check_config(config, tmp_path / "repo" / "birds") == []
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert "`birds` | onnxruntime | " + precision in readme and "tritonserver --model-repository=/models" in readme
    assert "--backend-config=tensorrt" not in readme   # no engine, no plugin


def test_strict_parser_rejects_what_triton_would(tmp_path):
    good = 'name: "m"\nbackend: "onnxruntime"\nmax_batch_size: 4\n'
    assert parse_config(good).max_batch_size == 4
    with pytest.raises(TritonConfigError, match='has no field named "max_batch"'):
        parse_config('name: "m"\nmax_batch: 4\n')                          # a misspelt field
    with pytest.raises(TritonConfigError, match="TYPE_FLOAT32"):
        parse_config('name: "m"\ninput { name: "x" data_type: TYPE_FLOAT32 dims: [3] }\n')   # not a DataType
    with pytest.raises(TritonConfigError, match="max_batch_size"):
        parse_config('name: "m"\nmax_batch_size: 4\nmax_batch_size: 8\n')  # a singular field twice


def test_check_config_lists_what_triton_would_refuse(exports, tmp_path):
    write_triton_repository(tmp_path / "repo", exports["fp32"], name="birds")
    model_dir = tmp_path / "repo" / "birds"
    config = _strict(model_dir / "config.pbtxt")
    config.name = "other"
    config.max_batch_size = 0                      # dynamic batching without batching
    config.output[1].dims[:] = [15, 0]
    (model_dir / "labels.txt").unlink()
    problems = " | ".join(check_config(config, model_dir))
    assert "differs from the directory name" in problems and "dynamic_batching needs max_batch_size" in problems
    assert "dims [15, 0]" in problems and "label_filename labels.txt is missing" in problems


def test_max_batch_above_the_export_is_refused_and_below_is_written(exports, tmp_path):
    with pytest.raises(TritonConfigError, match=rf"--max-batch {MAX_BATCH + 1} is above the batch tiny.onnx was "
                                                 rf"exported and checked with \({MAX_BATCH}\)"):
        write_triton_repository(tmp_path / "repo", exports["fp32"], max_batch=MAX_BATCH + 1)
    assert not (tmp_path / "repo" / "tiny").exists()
    write_triton_repository(tmp_path / "repo", exports["fp32"], max_batch=4)
    assert _strict(tmp_path / "repo" / "tiny" / "config.pbtxt").max_batch_size == 4


def test_fixed_batch_export_gets_max_batch_size_zero_with_batch_in_dims(ckpt, tmp_path):
    from fgdeploy.export.exporter import ExportOptions, export_checkpoint

    fixed = tmp_path / "fixed.onnx"
    export_checkpoint(ckpt, fixed, ExportOptions(batch=2, verify_batches=(2,)))
    write_triton_repository(tmp_path / "repo", fixed)
    config = _strict(tmp_path / "repo" / "fixed" / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [2, 3, SIZE, SIZE]
    assert {t.name: list(t.dims) for t in config.output} == {k: v[1] for k, v in
                                                             _onnx_tensors(fixed, batched=False).items()
                                                             if k != "images"}
    with pytest.raises(TritonConfigError, match="fixed batch of 2, which Triton cannot batch"):
        write_triton_repository(tmp_path / "repo", fixed, max_batch=4)


def test_rewriting_replaces_the_model_and_keeps_other_models(exports, tmp_path):
    repo = tmp_path / "repo"
    (repo / "someone_else" / "1").mkdir(parents=True)
    (repo / "someone_else" / "config.pbtxt").write_text('name: "someone_else"\nbackend: "python"\n')
    write_triton_repository(repo, exports["fp32"], name="birds")
    write_triton_repository(repo, exports["fp16"], name="birds")
    assert (repo / "birds" / "1" / "model.onnx").read_bytes() == exports["fp16"].read_bytes()
    assert (repo / "someone_else" / "config.pbtxt").is_file()
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "birds", "someone_else"]   # no staging left


def test_bad_name_and_a_file_as_repository_are_refused(exports, tmp_path):
    with pytest.raises(TritonConfigError, match="without spaces or slashes"):
        write_triton_repository(tmp_path / "repo", exports["fp32"], name="my/model")
    (tmp_path / "file").write_text("x")
    with pytest.raises(TritonConfigError, match="is a file"):
        write_triton_repository(tmp_path / "file", exports["fp32"])


# --- TensorRT engines, with the fake TensorRT the engine-builder tests use ---------------------------------
@pytest.fixture
def fake_engine(monkeypatch, tmp_path, exports):
    """An engine 'built' from the fp32 export by the recording fake TensorRT, with profile 1..``max_batch``."""
    from fgdeploy.backends import trt_support
    from fgdeploy.export.tensorrt import EngineBuildConfig, build_engine
    from tests.plugins.fake_tensorrt import make_fake_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.13.0.35"))
    monkeypatch.setattr(trt_support, "_LOADED_PLUGIN_LIBRARIES", {})
    library = tmp_path / "libfgdeploy_plugins.so"
    library.write_bytes(b"plugin library bytes")

    def build(max_batch: int, min_batch: int = 1) -> Path:
        engine = tmp_path / f"tiny_{min_batch}_{max_batch}.engine"
        build_engine(exports["fp32"], engine, EngineBuildConfig(min_batch=min_batch, opt_batch=max_batch,
                                                                max_batch=max_batch, plugin_library=library))
        return engine

    return build


def test_max_batch_above_the_engine_profile_is_refused(exports, fake_engine, tmp_path):
    engine = fake_engine(4)
    with pytest.raises(TritonConfigError) as info:
        write_triton_repository(tmp_path / "repo", exports["fp32"], engine=engine, max_batch=6)
    message = str(info.value)
    assert "--max-batch 6 is above engine tiny_1_4.engine's optimization profile (batch 1..4)" in message
    assert "--max-batch 6 --workspace-mib" in message and "\n" not in message   # the rebuild command, one line
    assert not (tmp_path / "repo").exists()
    with pytest.raises(TritonConfigError, match="takes batches 2..4 only"):
        write_triton_repository(tmp_path / "repo", exports["fp32"], engine=fake_engine(4, min_batch=2))


def test_engine_model_plugin_library_and_server_flags(exports, fake_engine, tmp_path):
    engine = fake_engine(4)
    repo = write_triton_repository(tmp_path / "repo", exports["fp32"], name="birds", engine=engine)
    # no --max-batch: each model takes what its artifact does (the export's 8, the engine profile's 4)
    assert [(m.name, m.backend, m.max_batch_size) for m in repo.models] == [("birds", "onnxruntime", MAX_BATCH),
                                                                             ("birds_trt", "tensorrt", 4)]
    trt_dir = tmp_path / "repo" / "birds_trt"
    config = _strict(trt_dir / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.backend == "tensorrt"
    assert (trt_dir / "1" / "model.plan").read_bytes() == engine.read_bytes()
    declared = {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in (*config.input,
                                                                                              *config.output)}
    assert declared == _onnx_tensors(exports["fp32"], batched=True)
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["tensorrt_version"] == "10.13.0.35" and params["plugin_library"] == PLUGIN_FILE
    assert (tmp_path / "repo" / PLUGIN_FILE).read_bytes() == b"plugin library bytes"
    assert params["plugin_library_sha256"] == hashlib.sha256(b"plugin library bytes").hexdigest()
    assert repo.plugin_library == tmp_path / "repo" / PLUGIN_FILE
    assert not [p.name for p in (tmp_path / "repo").iterdir() if p.name.startswith(".")]   # no temp file left
    assert check_config(config, trt_dir) == []
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert f"--backend-config=tensorrt,plugins=/models/{PLUGIN_FILE}" in readme
    assert f"-e {AUTOREGISTER_ENV}=1" in readme and "--gpus all" in readme and "TensorRT 10.13.0.35" in readme
    assert "`birds_trt` | tensorrt" in readme and "`birds` | onnxruntime" in readme


def test_plugin_library_is_kept_for_the_same_build_and_another_build_is_refused(exports, fake_engine, tmp_path):
    engine, repo = fake_engine(4), tmp_path / "repo"
    write_triton_repository(repo, exports["fp32"], name="birds", engine=engine)
    again = write_triton_repository(repo, exports["fp32"], name="birds", engine=engine)   # same build: kept
    assert again.plugin_library == repo / PLUGIN_FILE and (repo / PLUGIN_FILE).read_bytes() == b"plugin library bytes"
    (tmp_path / PLUGIN_FILE).write_bytes(b"another build")   # the library the engine's sidecar names
    with pytest.raises(TritonConfigError, match="is another build of the plugin library"):
        write_triton_repository(repo, exports["fp32"], name="other", engine=engine)
    assert (repo / PLUGIN_FILE).read_bytes() == b"plugin library bytes" and not (repo / "other_trt").exists()


def test_engine_from_another_onnx_is_refused(exports, fake_engine, tmp_path):
    with pytest.raises(TritonConfigError, match="was built from another ONNX than .*tiny_fp16.onnx"):
        write_triton_repository(tmp_path / "repo", exports["fp16"], engine=fake_engine(4))


# --- the client snippet, against ONNX Runtime standing in for the server ------------------------------------
class _OrtServer:
    """tritonclient.grpc.InferenceServerClient look-alike: runs the repository's model.onnx with ONNX Runtime
    and answers like Triton (outputs by name; class_count -> b"score:index:label" from labels.txt)."""

    repo: Path

    def __init__(self, url: str) -> None:
        assert url == "localhost:8001"

    def infer(self, model_name: str, inputs: list[Any], outputs: list[Any]) -> Any:
        from fgdeploy.backends.ort_runner import OrtRunner

        model_dir = self.repo / model_name
        config = _strict(model_dir / "config.pbtxt")
        (request,) = inputs
        assert request.name() == config.input[0].name and request.datatype() == "FP32"
        array = np.frombuffer(request._raw_content, np.float32).reshape(request.shape())
        assert list(array.shape[1:]) == list(config.input[0].dims)
        with OrtRunner(model_dir / "1" / "model.onnx") as runner:
            results = runner.infer({"images": array})
        labels = (model_dir / "labels.txt").read_text().splitlines()
        answer = {}
        for wanted in outputs:
            name, count = wanted._output.name, wanted._output.parameters["classification"].int64_param
            if count:
                order = np.argsort(-results[name][0])[:count]
                answer[name] = np.array([[f"{results[name][0][i]:f}:{i}:{labels[i]}".encode() for i in order]])
            else:
                answer[name] = results[name]
        return type("Result", (), {"as_numpy": lambda self, n: answer[n]})()


def test_readme_client_snippet_sends_what_fgdeploy_infer_computes(exports, synth, tmp_path, monkeypatch):
    import cv2
    import tritonclient.grpc as grpcclient

    from fgdeploy.inference.local import InferOptions, run_inference
    from fgdeploy.inference.predictors import open_predictor

    write_triton_repository(tmp_path / "repo", exports["fp32"], name="birds")
    snippet = re.search(r"```python\n(.*?)```", (tmp_path / "repo" / "README.md").read_text(), re.S).group(1)
    photo = sorted((synth / "images").rglob("*.jpg"))[0]
    image = cv2.imread(str(photo))
    big = cv2.resize(image, (301, 233))      # larger than 1.5x the input: the snippet's area-average branch too
    cv2.imwrite(str(tmp_path / "bird.jpg"), big)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_OrtServer, "repo", tmp_path / "repo", raising=False)
    monkeypatch.setattr(grpcclient, "InferenceServerClient", _OrtServer)
    scope: dict[str, Any] = {}
    exec(compile(snippet, "README snippet", "exec"), scope)   # noqa: S102 - our own generated README
    with open_predictor(exports["fp32"], "ort", device="cpu") as loaded:
        report = run_inference([str(tmp_path / "bird.jpg")], loaded.predictor, tmp_path / "r.jsonl",
                               class_names=loaded.class_names, part_names=loaded.part_names,
                               options=InferOptions(batch=1, topk=3))
    assert report.scored == 1
    row = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert row["top"][0]["class"] == scope["top5"].as_numpy("logits")[0][0].decode().split(":", 2)[2]
    got = np.array([[k["x"], k["y"]] for k in row["keypoints"]])
    np.testing.assert_allclose(scope["keypoints"], got, atol=1e-3)


def test_main_readme_shows_the_client_program_the_repositories_get():
    from fgdeploy.deploy.triton import client_snippet

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Triton, OpenVINO, portable ONNX"):readme.index("## Scale out")]
    shown = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert shown == client_snippet("birds", 160)
