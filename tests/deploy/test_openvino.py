"""OpenVINO backend: the runner on default and portable exports vs ONNX Runtime; parity, infer and bench with it."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fgdeploy.backends import open_runner
from fgdeploy.backends.base import RunnerError
from fgdeploy.backends.ort_runner import OrtRunner
from fgdeploy.cli import cli
from fgdeploy.errors import BackendUnavailable
from fgdeploy.export.portable import make_portable

from .conftest import SIZE

pytest.importorskip("openvino")

from fgdeploy.backends.openvino_runner import OpenVinoRunner, openvino_device  # noqa: E402


@pytest.fixture(scope="module")
def portable_fp32(exports, tmp_path_factory):
    path = tmp_path_factory.mktemp("ov") / "tiny_portable.onnx"
    onnx.save(make_portable(onnx.load(str(exports["fp32"]))), path)
    return path


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(5).random((n, 3, SIZE, SIZE), dtype=np.float32)


def test_openvino_runs_the_portable_and_the_default_export_like_onnx_runtime(exports, portable_fp32):
    images = _images(3)
    with OrtRunner(exports["fp32"]) as ort:
        want, classes = ort.infer({"images": images}), ort.metadata()["class_names"]
    for path, converted in ((portable_fp32, False), (exports["fp32"], True)):
        with open_runner("openvino", str(path)) as runner:
            assert isinstance(runner, OpenVinoRunner) and runner.converted_on_the_fly is converted
            assert runner.name == "ov-cpu-fp32" and runner.metadata()["class_names"] == classes
            assert runner.input_specs()["images"].shape == (-1, 3, SIZE, SIZE)
            got = runner.infer({"images": images})
        assert runner.output_names == list(want)
        for name in want:   # OpenVINO computes in f32 (not the CPU's bf16): fp32 parity
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5, err_msg=f"{path.name} {name}")


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_openvino_runs_reduced_precision_exports(exports, precision):
    images = _images(4)
    with OrtRunner(exports[precision]) as ort, OpenVinoRunner(exports[precision]) as ov:
        want, got = ort.infer({"images": images}), ov.infer({"images": images})
        assert ov.name == f"ov-cpu-{precision}"
    span = float(np.ptp(want["logits"]))
    assert np.abs(got["logits"] - want["logits"]).max() <= 0.02 * span
    assert (got["logits"].argmax(1) == want["logits"].argmax(1)).all()


def test_openvino_debug_outputs_locate_the_custom_op(exports):
    images = _images(2)
    with OrtRunner(exports["fp32"], debug=True) as ort, OpenVinoRunner(exports["fp32"], debug=True) as ov:
        want, got = ort.infer({"images": images}), ov.infer({"images": images})
    for name in ("debug.ct0.heatmaps", "debug.ct0.part_features"):
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5, err_msg=name)


def test_openvino_devices_and_errors(exports, tmp_path, monkeypatch):
    assert [openvino_device(d) for d in (None, "auto", "cpu", "gpu", "GPU.1", "npu")] == \
        ["CPU", "CPU", "CPU", "GPU", "GPU.1", "NPU"]
    with pytest.raises(RunnerError, match="OpenVINO does not run on CUDA GPUs"):
        OpenVinoRunner(exports["fp32"], device="cuda:0")
    with pytest.raises(BackendUnavailable, match=r"OpenVINO device NPU is not available here \(available: .*CPU"):
        OpenVinoRunner(exports["fp32"], device="npu").activate()
    with pytest.raises(RunnerError, match="fp16 requested but the model is fp32"):
        OpenVinoRunner(exports["fp32"], fp16=True).activate()
    (tmp_path / "junk.onnx").write_bytes(b"\x08not onnx")
    with pytest.raises(RunnerError, match="not an ONNX file"):
        OpenVinoRunner(tmp_path / "junk.onnx").activate()
    with pytest.raises(RunnerError, match="inference_precision 'f64'"):
        OpenVinoRunner(exports["fp32"], inference_precision="f64")
    with OpenVinoRunner(exports["fp32"], inference_precision="bf16") as runner:
        assert runner.name == "ov-cpu-fp32-exec-bf16"   # not f32: the name says so in every report
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    with pytest.raises(BackendUnavailable, match=r"openvino.*not installed here: pip install 'fgdeploy\[openvino\]'"):
        open_runner("openvino", str(exports["fp32"]))


def test_parity_torch_vs_openvino_on_synth_birds_passes(ckpt, portable_fp32, synth, tmp_path):
    report = tmp_path / "parity.json"
    result = CliRunner().invoke(cli, ["parity", "--ref", f"torch:{ckpt}", "--test", f"openvino:{portable_fp32}",
                                      "--data", str(synth), "--batch", "4", "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "RESULT: PASS" in result.output
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["n_images"] == 12   # the synth test split
    assert "ov-cpu-fp32" in json.dumps(data)


def test_infer_with_openvino_writes_onnx_runtimes_answers(exports, synth, tmp_path):
    rows = {}
    for backend in ("ort", "openvino"):
        out = tmp_path / f"{backend}.jsonl"
        result = CliRunner().invoke(cli, ["infer", str(synth / "images"), "--model", str(exports["fp32"]),
                                          "--backend", backend, "--out", str(out), "--batch", "4", "--topk", "2"])
        assert result.exit_code == 0, result.output
        rows[backend] = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(rows["openvino"]) == 24 and rows["openvino"].keys() == rows["ort"].keys()
    for path, row in rows["ort"].items():
        other = rows["openvino"][path]
        assert [t["class"] for t in other["top"]] == [t["class"] for t in row["top"]]
        assert [(k["x"], k["y"]) for k in other["keypoints"]] == [(k["x"], k["y"]) for k in row["keypoints"]]
    bad = CliRunner().invoke(cli, ["infer", str(synth / "images"), "--model", str(exports["fp32"]), "--device", "gpu",
                                   "--out", str(tmp_path / "x.csv")])
    assert bad.exit_code == 2 and "is an OpenVINO device: use it with --backend openvino" in bad.output


def test_an_openvino_device_needs_openvino_among_the_backends():
    import click

    from fgdeploy.commands.options import check_device_for_backend
    from fgdeploy.errors import ConfigError
    from fgdeploy.inference.predictors import resolve_device

    check_device_for_backend("GPU.1", "ort", "openvino")   # bench --backend ort,openvino --device GPU.1
    check_device_for_backend("cuda:0", "ort")
    with pytest.raises(click.UsageError, match="--device npu is an OpenVINO device: use it with --backend openvino"):
        check_device_for_backend("npu", "ort", "torch")
    with pytest.raises(ConfigError, match="--device gpu is an OpenVINO device: use it with --backend openvino"):
        resolve_device("ort", "gpu")
    assert resolve_device("openvino", "GPU.1") == "GPU.1" and resolve_device("ort", "cpu") == "cpu"


def test_bench_times_onnx_runtime_and_openvino_in_one_run(exports, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", "--model", str(exports["fp32"]), "--model", str(exports["int8"]),
                                      "--backend", "ort,openvino", "--batch", "1,2", "--iters", "2", "--warmup", "1",
                                      "--threads", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    rows = [(r["backend"], r["batch"]) for r in data["results"]]
    assert rows == [(f"{b}-cpu-{p} {f}", n) for f, p in (("tiny.onnx", "fp32"), ("tiny_int8.onnx", "int8"))
                    for b in ("ort", "ov") for n in (1, 2)]
    assert all(r["images_per_s"] > 0 for r in data["results"])
    assert data["backends"] == ["ort", "openvino", "ort", "openvino"] and data["threads"] == 1
    assert "openvino" in data["environment"] and "flags" in data["environment"]["cpu"]
    bad = CliRunner().invoke(cli, ["bench", "--model", str(exports["fp32"]), "--backend", "ort,tflite"])
    assert bad.exit_code == 2 and "give one or more of" in bad.output
