"""ONNX export of a tiny model: one CoordinateTransfer node + function, metadata, fp16 policy, parity, CLI."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from fgdeploy.backends.ort_runner import OrtRunner
from fgdeploy.backends.torch_runner import TorchRunner
from fgdeploy.checkpoint import CheckpointMeta, save_checkpoint
from fgdeploy.cli import cli
from fgdeploy.fileio import file_sha256
from fgdeploy.models import create_model, load_model_config, with_backbone_options
from fgdeploy.parity import (
    DatasetImages, ParityConfig, RandomImages, compare_output, default_thresholds, run_batches, run_parity,
)
from fgdeploy.tensors import PART_NAMES

SIZE = 64
TINY_WIDTHS = [4, 8, 8, 16, 16]
CLASSES = [f"{i + 1:03d}.Bird_{i}" for i in range(3)]


def _tiny_config():  # type: ignore[no-untyped-def]
    return with_backbone_options(load_model_config("demo"), {"widths": TINY_WIDTHS}, input_size=SIZE)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    cfg = _tiny_config()
    model = create_model(cfg, len(CLASSES)).eval()
    with torch.no_grad():  # spread the logits so top-1 and keypoints are not decided by near-ties
        model.classifier.fc.weight.mul_(20.0)
    meta = CheckpointMeta.for_config(cfg, CLASSES, stage=4, epoch=1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="module")
def fp32_onnx(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    result = CliRunner().invoke(cli, ["export", str(ckpt), "--out", str(out), "--heatmaps"])
    assert result.exit_code == 0, result.output
    assert "1 CoordinateTransfer node(s)" in result.output and "precision fp32" in result.output
    return out


@pytest.fixture(scope="module")
def fp16_onnx(ckpt, tmp_path_factory):
    """fp16, fixed batch 2 (one export covers the fp16 policy and static batch)."""
    out = tmp_path_factory.mktemp("onnx16") / "tiny_fp16.onnx"
    result = CliRunner().invoke(cli, ["export", str(ckpt), "--out", str(out), "--fp16", "--batch", "2"])
    assert result.exit_code == 0, result.output
    return out


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


def test_export_has_one_coordinate_transfer_node_and_its_function(fp32_onnx):
    model = onnx.load(fp32_onnx)
    nodes = [n for n in model.graph.node if n.op_type == "CoordinateTransfer"]
    assert len(nodes) == 1 and nodes[0].domain == "fgdeploy"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs == {"window": 3, "mode": 0, "plugin_namespace": b"fgdeploy", "plugin_version": b"1"}
    assert [(f.domain, f.name) for f in model.functions] == [("fgdeploy", "CoordinateTransfer")]
    assert {(o.domain, o.version) for o in model.opset_import} >= {("", 18), ("fgdeploy", 1)}
    assert model.ir_version == 10
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["logits", "keypoints", "keypoint_scores", "heatmaps"]


def test_export_passes_full_checker_and_strict_shape_inference(fp32_onnx):
    from fgdeploy.export.onnx_function import register_coordinate_transfer_schema

    register_coordinate_transfer_schema()
    model = onnx.load(fp32_onnx)
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    shapes = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in inferred.graph.output}
    assert shapes["logits"][1] == len(CLASSES) and shapes["keypoints"][1:] == [len(PART_NAMES), 2]


def test_export_metadata_is_enough_for_inference(fp32_onnx, ckpt):
    with OrtRunner(fp32_onnx) as runner:
        meta = runner.metadata()
        spec = runner.input_specs()["images"]
    assert meta["class_names"] == CLASSES and meta["part_names"] == list(PART_NAMES)
    assert meta["input_size"] == SIZE and meta["input_dtype"] == "float32" and meta["input_range"] == [0.0, 1.0]
    assert meta["normalisation"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["source_sha256"] == file_sha256(ckpt) and meta["source_checkpoint"] == "tiny.pt"
    assert meta["precision"] == "fp32" and meta["batch"] == "dynamic" and meta["heatmap_size"] == [16, 16]
    assert meta["fgdeploy_version"] and meta["model_config"]["input_size"] == SIZE
    assert spec.shape == (-1, 3, SIZE, SIZE) and spec.dtype == np.float32


def test_dynamic_batch_gives_the_same_answers_alone_and_batched(fp32_onnx):
    images = _images(5, seed=1)
    with OrtRunner(fp32_onnx) as runner:
        batched = runner.infer({"images": images})
        alone = [runner.infer({"images": images[i:i + 1]}) for i in range(5)]
    assert batched["logits"].shape == (5, len(CLASSES)) and batched["heatmaps"].shape == (5, 15, 16, 16)
    for i, single in enumerate(alone):
        np.testing.assert_allclose(single["logits"][0], batched["logits"][i], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(single["keypoints"][0], batched["keypoints"][i])


def test_reference_evaluator_agrees_with_onnx_runtime(fp32_onnx):
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(fp32_onnx)
    images = _images(2, seed=2)
    ref = dict(zip([o.name for o in model.graph.output], ReferenceEvaluator(model).run(None, {"images": images})))
    with OrtRunner(fp32_onnx) as runner:
        got = runner.infer({"images": images})
    for name in ("logits", "keypoint_scores", "heatmaps"):
        np.testing.assert_allclose(ref[name], got[name], rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(ref["keypoints"], got["keypoints"])


def test_fp32_onnx_matches_pytorch_parity(ckpt, fp32_onnx):
    report = run_parity(lambda debug: TorchRunner(ckpt, debug=debug), lambda debug: OrtRunner(fp32_onnx, debug=debug),
                        RandomImages(6, SIZE, seed=3), ParityConfig(batch_size=4))
    assert report, report.render()
    logits = next(o for o in report.outputs if o.name == "logits")
    assert logits.max_abs / logits.ref_range <= 1e-4
    assert report.task.top1_agreement == 1.0 and report.task.keypoint_same_cell == 1.0


def test_fp16_export_keeps_precision_critical_parts_in_fp32(fp16_onnx):
    from fgdeploy.export.onnx_function import register_coordinate_transfer_schema

    register_coordinate_transfer_schema()
    model = onnx.load(fp16_onnx)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    convs = Counter(types[n.input[1]] for n in model.graph.node if n.op_type == "Conv")
    assert convs[f16] > convs[f32] > 0  # trunk convs fp16, heatmap score convs fp32
    (ct,) = [n for n in model.graph.node if n.op_type == "CoordinateTransfer"]
    assert types[ct.input[0]] == types[ct.input[1]] == f32
    for node in model.graph.node:
        if node.op_type in ("ArgMax", "Gemm", "Sigmoid", "ReduceMean"):
            assert types[node.input[0]] == f32, node.op_type
    assert all(o.type.tensor_type.elem_type == f32 for o in model.graph.output)
    assert model.graph.input[0].type.tensor_type.elem_type == f32
    with OrtRunner(fp16_onnx) as runner:
        meta = runner.metadata()
        assert runner.input_specs()["images"].shape == (2, 3, SIZE, SIZE)
    assert meta["precision"] == "fp16" and meta["batch"] == 2 and meta["fp32_kept"]


def test_fp16_onnx_parity_with_pytorch_fp32_on_synth_birds(ckpt, fp16_onnx, tmp_path):
    from fgdeploy.data.synthetic import generate_synth_birds

    root = generate_synth_birds(tmp_path / "synth", classes=3, images_per_class=4, size=80)
    source = DatasetImages(root, "test", SIZE, n=6)
    report = run_parity(lambda debug: TorchRunner(ckpt, debug=debug), lambda debug: OrtRunner(fp16_onnx, debug=debug),
                        source, ParityConfig(batch_size=2))
    assert report.precision == "fp16" and report.n_images == 6
    assert report.task.accuracy_ref is not None and report.task.pck_ref is not None
    assert report.batch is not None and report.batch.passed is None  # static batch 2: not checkable
    # This untrained model has nearly flat heatmaps: fp16 may move a keypoint, but only where the fp32
    # reference's best and chosen cells nearly tie (a trained model has clear peaks; see the README) ...
    assert report.task.keypoint_within_one_cell >= 0.9
    assert all(f.ref_margin is not None and f.ref_margin < 1e-3 for f in report.task.keypoint_flips)
    # ... and only such a move (which changes that part's pooled features) changes the answer.
    moved = {f.index for f in report.task.keypoint_flips}
    assert {f.index for f in report.task.class_flips} <= moved
    with TorchRunner(ckpt) as ref, OrtRunner(fp16_onnx) as test:
        r, t = run_batches(ref, source, range(6), 2), run_batches(test, source, range(6), 2)
    kept = [i for i in range(6) if i not in moved]
    assert kept and compare_output("logits", r["logits"][kept], t["logits"][kept],
                                   default_thresholds("fp16").tolerance).passed


def test_parity_cli_passes_writes_json_and_fails_with_zero_tolerance(ckpt, fp32_onnx, tmp_path):
    report = tmp_path / "parity.json"
    args = ["parity", "--ref", f"torch:{ckpt}", "--test", f"onnx:{fp32_onnx}", "--n", "4", "--batch", "2"]
    ok = CliRunner().invoke(cli, [*args, "--report", str(report)])
    assert ok.exit_code == 0, ok.output
    assert "RESULT: PASS" in ok.output and json.loads(report.read_text())["passed"] is True
    strict = CliRunner().invoke(cli, [*args, "--atol", "0", "--rtol", "0"])
    assert strict.exit_code == 1, strict.output
    assert "RESULT: FAIL" in strict.output and "first divergence: heatmaps" in strict.output


def test_export_rejects_a_non_fgdeploy_checkpoint(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    result = CliRunner().invoke(cli, ["export", str(foreign), "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and "not an fgdeploy checkpoint" in result.output
    assert not (tmp_path / "x.onnx").exists()
    bad = CliRunner().invoke(cli, ["export", str(foreign), "--out", str(tmp_path / "x.onnx"), "--batch", "zero"])
    assert bad.exit_code == 2 and "positive int or 'dynamic'" in bad.output


def test_parity_cli_clear_errors_for_corrupt_onnx_and_missing_provider(ckpt, fp32_onnx, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(fp32_onnx.read_bytes()[:1000])
    result = CliRunner().invoke(cli, ["parity", "--ref", f"torch:{ckpt}", "--test", f"onnx:{corrupt}"])
    assert result.exit_code == 1 and "cannot load the model" in result.output
    result = CliRunner().invoke(cli, ["parity", "--ref", f"torch:{ckpt}", "--test", f"onnx:{fp32_onnx}",
                                      "--providers", "cuda"])
    assert result.exit_code == 1 and "available providers are" in result.output


def test_export_engine_without_tensorrt_says_how_to_install_and_exits_1(ckpt, tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: the engine path is covered by tests/plugins/test_trt_engine.py")
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "m.onnx"), "--engine"])
    assert result.exit_code == 1, result.output
    assert (tmp_path / "m.onnx").is_file()  # the ONNX is kept; only the engine step failed
    assert "TensorRT" in result.output and "install" in result.output.lower()
    assert not (tmp_path / "m.engine").exists()


def test_open_runner_knows_trt_and_reports_it_unavailable_here():
    import importlib.util

    from fgdeploy.backends import BACKEND_ALIASES, BACKENDS, available_backends

    assert BACKENDS["trt"][1] == "TrtRunner" and BACKEND_ALIASES["tensorrt"] == "trt"
    assert ("trt" in available_backends()) == (importlib.util.find_spec("tensorrt") is not None)


# --------------------------------------------------------------------------------------------
# issue 17: what a new user met with exported models
def test_exported_model_file_honours_the_umask(ckpt, tmp_path):
    """#2: every file fgdeploy wrote was 0600 (mkstemp), so a server running as another user could not read it."""
    import os

    old = os.umask(0o022)
    try:
        result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "m.onnx")])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.onnx").stat().st_mode & 0o777 == 0o644
    assert result.output.count("wrote ") == 1   # #13: not once from the log and once from the command


def test_parity_and_infer_say_when_an_export_is_not_from_the_checkpoint(ckpt, tmp_path):
    """#1: a retrained run made parity fail (top-1 agreement 65 %) without saying why."""
    import shutil

    from fgdeploy.data.synthetic import generate_synth_birds

    run = tmp_path / "run1"
    run.mkdir()
    shutil.copy(ckpt, run / "best.pt")
    onnx_path = tmp_path / "model.onnx"
    assert CliRunner().invoke(cli, ["export", str(run), "-o", str(onnx_path)]).exit_code == 0   # #4: a run folder
    args = ["parity", "--ref", f"torch:{run}", "--test", f"onnx:{onnx_path}", "--n", "2", "--batch", "2"]
    same = CliRunner().invoke(cli, args)
    assert same.exit_code == 0 and "was not exported from" not in same.output, same.output

    torch.manual_seed(1)   # retrain: other weights in the same place
    save_checkpoint(run / "best.pt", create_model(_tiny_config(), len(CLASSES)),
                    CheckpointMeta.for_config(_tiny_config(), CLASSES, stage=4, epoch=1))
    other = CliRunner().invoke(cli, args)
    assert f"{onnx_path} was not exported from {run / 'best.pt'}" in other.output, other.output
    assert f"fgdeploy export {run / 'best.pt'} -o {onnx_path}" in other.output

    images = generate_synth_birds(tmp_path / "birds", classes=1, images_per_class=1, size=64, seed=0) / "images"
    infer = CliRunner().invoke(cli, ["infer", str(images), "--model", str(onnx_path), "-o", str(tmp_path / "r.csv")])
    assert infer.exit_code == 0, infer.output
    assert f"{onnx_path} was exported from {(run / 'best.pt').resolve()}" in infer.output
    assert "the run was retrained after the export" in infer.output


def test_export_checks_the_output_before_the_work(ckpt, tmp_path, monkeypatch):
    """#3, #7: -o x.txt exited 0; /proc/x.onnx and notes.txt/x.onnx failed only after the whole export."""
    import fgdeploy.export.exporter as exporter

    def never(*args, **kwargs):
        raise AssertionError("export ran although its output path is unusable")

    monkeypatch.setattr(exporter, "export_checkpoint", never)
    (tmp_path / "notes.txt").write_text("a file")
    for out, message in [(tmp_path / "x.txt", "name the file .onnx"),
                         (tmp_path / "x.engine", "give " + str(tmp_path / "x.onnx") + " --engine"),
                         (tmp_path / "notes.txt" / "x.onnx", f"{tmp_path / 'notes.txt'} is a file"),
                         (tmp_path / "x", "name the file .onnx")]:
        result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(out)])
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1   # #11: usage errors in one line
        assert not out.exists()
    if os_can_write_proc():
        return
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", "/proc/x.onnx"])
    assert result.exit_code == 2 and "cannot write in /proc" in result.output and ".tmp" not in result.output


def os_can_write_proc() -> bool:
    import tempfile

    try:
        with tempfile.TemporaryFile(dir="/proc"):
            return True
    except OSError:
        return False


def test_model_kind_hints_name_the_fix_that_applies(ckpt, fp32_onnx, tmp_path):
    """#3: an ONNX model given as a checkpoint was told to use the command that had just failed."""
    from fgdeploy.data.synthetic import generate_synth_birds

    images = generate_synth_birds(tmp_path / "birds", classes=1, images_per_class=1, size=64, seed=0) / "images"
    renamed = tmp_path / "model.bin"   # an ONNX model under another name: auto picks ONNX Runtime from its bytes
    renamed.write_bytes(fp32_onnx.read_bytes())
    ok = CliRunner().invoke(cli, ["infer", str(images), "--model", str(renamed), "-o", str(tmp_path / "a.csv")])
    assert ok.exit_code == 0 and "on ort-cpu" in ok.output, ok.output

    wrong = CliRunner().invoke(cli, ["infer", str(images), "--model", str(fp32_onnx), "--backend", "torch"])
    assert wrong.exit_code == 2 and f"{fp32_onnx} is an ONNX model, not a PyTorch checkpoint; pass --backend ort" \
        in wrong.output, wrong.output
    parity = CliRunner().invoke(cli, ["parity", "--ref", f"torch:{fp32_onnx}", "--test", f"onnx:{fp32_onnx}"])
    assert parity.exit_code == 2 and f"give it as onnx:{fp32_onnx}" in parity.output, parity.output
    backwards = CliRunner().invoke(cli, ["parity", "--ref", f"torch:{ckpt}", "--test", f"onnx:{ckpt}"])
    assert backwards.exit_code == 2 and f"give it as torch:{ckpt}" in backwards.output
    export = CliRunner().invoke(cli, ["export", str(fp32_onnx), "-o", str(tmp_path / "again.onnx")])
    assert export.exit_code == 2 and "export takes the checkpoint" in export.output
    assert "run those with `fgdeploy infer" not in wrong.output + parity.output + export.output


def test_missing_inputs_exit_2_on_every_command(tmp_path):
    """#11: a missing input file was exit 2 in eval/infer/bench, 1 in export/parity."""
    missing = str(tmp_path / "nope.pt")
    for args in (["export", missing, "-o", str(tmp_path / "m.onnx")], ["eval", missing],
                 ["parity", "--ref", f"torch:{missing}", "--test", f"onnx:{missing}"],
                 ["infer", str(tmp_path), "--model", missing], ["bench", "--model", missing]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and "nope.pt" in result.output and "does not exist" in result.output, args
