"""INT8 export (QDQ), the precision guard, task-driven fp16: a tiny model on tiny synth-birds.

One fp32 export is traced per module; the INT8 and fp16 variants are built from it through the API
(``reduce_exported``, ``Int8Builder``, ``Fp16Builder``) and once through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from fgdeploy.backends.ort_runner import OrtRunner
from fgdeploy.backends.torch_runner import TorchRunner
from fgdeploy.checkpoint import CheckpointMeta, save_checkpoint
from fgdeploy.cli import cli
from fgdeploy.data.synthetic import generate_synth_birds
from fgdeploy.errors import ImageError
from fgdeploy.cpu import cpu_features
from fgdeploy.export.precision.images import MIN_CALIBRATION_IMAGES, guard_source, load_image_set, guard_and_parity_halves
from fgdeploy.export.precision.fp16 import ALWAYS_FP32_REASON, Fp16Builder, fp32_node_names
from fgdeploy.export.precision.guard import Guard, GuardMetrics, GuardThresholds, guarded_search
from fgdeploy.export.precision.graph import float_policy
from fgdeploy.export.precision.int8 import SCHEMES, Int8Builder, Int8Settings, choose_scheme, quantized_nodes
from fgdeploy.export.exporter import ExportOptions, export_checkpoint, reduce_exported
from fgdeploy.export.precision import CalibrationOptions, GuardOptions, PrecisionOptions
from fgdeploy.models import create_model, load_model_config, with_backbone_options
from fgdeploy.parity import DatasetImages, ParityConfig, Tolerance, default_thresholds, run_parity

SIZE = 64
CLASSES = 3
STRICT_KEYPOINTS = Tolerance(atol=0.0, rtol=0.0)  # no near-tie allowance: every keypoint must keep its cell


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "birds"
    generate_synth_birds(root, classes=CLASSES, images_per_class=12, size=64, seed=0)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, data):
    from fgdeploy.data.cub import CubDataset

    classes = list(CubDataset(data, "train").class_names)   # parity checks the model's classes are the data's
    torch.manual_seed(0)
    cfg = with_backbone_options(load_model_config("demo"), {"widths": [4, 8, 8, 16, 16]}, input_size=SIZE)
    model = create_model(cfg, len(classes)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, CheckpointMeta.for_config(cfg, classes, stage=4, epoch=1))
    return path


@pytest.fixture(scope="module")
def fp32_onnx(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_checkpoint(ckpt, out, ExportOptions(verify_batches=(2,)))
    return out


@pytest.fixture(scope="module")
def int8_onnx(fp32_onnx, data):
    out = fp32_onnx.with_name("tiny_int8.onnx")
    precision = PrecisionOptions("int8", CalibrationOptions(data), GuardOptions())
    result = reduce_exported(fp32_onnx, out, ExportOptions(precision=precision))
    assert result.precision == "int8" and result.guard_report is not None
    return out


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


def _weights_from_dq(model: onnx.ModelProto) -> dict[str, bool]:
    """Conv name -> whether its weight input comes from a DequantizeLinear (int8 weights)."""
    producer = {out: n for n in model.graph.node for out in n.output}
    return {n.name: n.input[1] in producer and producer[n.input[1]].op_type == "DequantizeLinear"
            for n in model.graph.node if n.op_type == "Conv"}


# --- the INT8 model ---------------------------------------------------------------------------------
def test_int8_onnx_is_qdq_per_channel_with_float_head_op_and_classifier(fp32_onnx, int8_onnx):
    fp32, model = onnx.load(fp32_onnx), onnx.load(int8_onnx)
    policy = float_policy(fp32)
    int8_convs = _weights_from_dq(model)
    head = {n for n, why in policy.items() if "heatmap head" in why}
    assert head and all(not int8_convs[n] for n in head if n in int8_convs)   # score convs keep float weights
    trunk = [n for n in int8_convs if n not in policy]
    assert trunk and all(int8_convs[n] for n in trunk)
    inits = {i.name for i in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == n.input[0])).ndim == 4]
    assert weight_dq and all(any(a.name == "axis" for a in n.attribute) for n in weight_dq)  # per channel
    # CoordinateTransfer: still one custom node with its local function, fed and feeding float tensors
    ct = [n for n in model.graph.node if n.domain == "fgdeploy"]
    assert len(ct) == 1 and ct[0].op_type == "CoordinateTransfer"
    assert [(f.domain, f.name) for f in model.functions] == [("fgdeploy", "CoordinateTransfer")]
    producer = {out: n.op_type for n in model.graph.node for out in n.output}
    assert producer[ct[0].input[0]] != "DequantizeLinear"   # heatmaps straight from the float head
    assert [n for n in model.graph.node if n.op_type == "Gemm"][0].input[1] in inits  # float classifier
    assert quantized_nodes(model)["Conv int8"] == len(trunk)


def test_int8_metadata_records_precision_calibration_and_float_nodes(int8_onnx, data):
    with OrtRunner(int8_onnx) as runner:
        meta = runner.metadata()
        assert runner.name == "ort-cpu-int8"
    assert meta["precision"] == "int8"
    quant = meta["quantization"]
    assert quant["format"] == "QDQ" and quant["target"] == "cpu" and quant["activations"] == "uint8"
    assert quant["per_channel"] is True and quant["images"] == 18   # the train split: half of 3 x 12
    assert quant["source"] == str(data.resolve()) and "train split" in quant["description"]
    assert any("CoordinateTransfer" in k for k in meta["fp32_kept"])
    assert meta["float_kept_nodes"]["policy"] and meta["precision_guard"]["passed"] is True
    assert quant["scheme"] in SCHEMES and quant["scheme_chosen_by"] == "cpu flags" and quant["scheme_reason"]
    assert quant["scheme"] == choose_scheme(cpu_features())[0] and quant["cpu"]["flags"] == cpu_features()["flags"]
    report = json.loads(int8_onnx.with_name("tiny_int8.guard.json").read_text())
    assert report["passed"] is True and report["kept_float_nodes"] == meta["precision_guard"]["kept_float_nodes"]
    assert "RESULT: PASS" in int8_onnx.with_name("tiny_int8.guard.txt").read_text()
    # the guard chose on every other test image (9 of 18), and the metadata says which
    guard_ids, held_out_ids = guard_and_parity_halves(data)
    assert report["n_images"] == 9 and "the guard's half" in report["data"]
    recorded = meta["precision_guard"]
    assert recorded["image_ids"] == guard_ids and recorded["source"] == str(data.resolve())
    assert len(recorded["image_digests"]) == 9 and not set(guard_ids) & set(held_out_ids)
    assert recorded["thresholds"]["min_outputs_within"] == 0.95      # parity's element check, with a margin


def test_int8_outputs_track_fp32_and_parity_uses_the_int8_profile(ckpt, fp32_onnx, int8_onnx, data):
    images = _images(4)
    with OrtRunner(fp32_onnx) as ref, OrtRunner(int8_onnx) as test:
        want, got = ref.infer({"images": images}), test.infer({"images": images})
    span = np.ptp(want["logits"])
    assert 0 < np.abs(got["logits"] - want["logits"]).max() < 0.25 * span   # quantized, but close
    _, held_out = guard_and_parity_halves(data)
    report = run_parity(lambda debug: TorchRunner(ckpt, debug=debug), lambda debug: OrtRunner(int8_onnx, debug=debug),
                        DatasetImages(data, "test", SIZE, ids=held_out), ParityConfig(batch_size=8))
    assert report.passed, report.render()            # on images the guard never saw
    assert report.image_ids == held_out and report.guard_overlap == 0
    assert report.precision == "int8"
    assert report.thresholds["top1_agreement"] == default_thresholds("int8").top1_agreement == 0.99
    assert report.thresholds["keypoint_same_cell"] == 0.98 and report.thresholds["accuracy_diff_points"] == 0.5
    names = {c.name for c in report.checks}
    # (with the reference heatmaps both checks allow near-ties: "top-1 agreement (near-ties allowed)", ...)
    assert any(n.startswith("top-1 agreement") for n in names)
    assert any(n.startswith("|accuracy difference|") for n in names)
    assert report.batch is not None and report.batch.passed   # static scales: batch invariant


# --- the guard --------------------------------------------------------------------------------------
def test_strict_threshold_makes_the_guard_keep_named_nodes_float(fp32_onnx, data, tmp_path):
    fp32 = onnx.load(fp32_onnx)
    calib = load_image_set(data, SIZE, 64, "train", minimum=MIN_CALIBRATION_IMAGES)
    builder = Int8Builder(fp32, calib, Int8Settings(), tmp_path)
    strict = GuardThresholds(min_top1_agree=1.0, min_kp_agree=1.0, max_acc_drop=0.0)
    guard = Guard(fp32.SerializeToString(), DatasetImages(data, "test", SIZE), strict, STRICT_KEYPOINTS)
    model, report = guarded_search(builder, builder.candidates, guard, precision="int8",
                                   op_types=builder.op_types, policy_float=builder.policy)
    assert not report.initial.passes(strict)        # all-int8 moves some keypoints by a cell
    assert report.passed and report.kept_float       # ... and keeping some convs float fixes it
    kept = report.kept_names
    assert set(kept) <= set(builder.candidates)
    for node in report.kept_float:                   # every kept node is needed: without it the guard fails
        assert not node.without.passes(strict) and node.op_type == "Conv"
    float_weights = {n for n, q in _weights_from_dq(onnx.load_from_string(model)).items() if not q}
    assert set(kept) <= float_weights
    path = tmp_path / "guard.json"
    report.dump(path)
    saved = json.loads(path.read_text())
    assert saved["kept_float_nodes"] == kept and saved["passed"] is True
    table = report.render()
    assert all(name in table for name in kept) and "RESULT: PASS" in table and "all reduced" in table


def test_guard_metrics_against_thresholds():
    th = GuardThresholds(0.99, 0.98, 0.5)
    good = GuardMetrics(1.0, 0.99, 0.9, 0.0, 0.0, 0, 0, 0.01)
    bad = GuardMetrics(0.95, 0.97, 0.9, 2.0, 0.0, 3, 4, 0.05)
    no_labels = GuardMetrics(1.0, None, None, None, None, 0, 0, 0.0)
    assert good.passes(th) and no_labels.passes(th) and good.shortfall(th) < bad.shortfall(th)
    failures = bad.failures(th)
    assert len(failures) == 3 and "accuracy drop 2.00 points > 0.50" in failures[2]
    # parity's element check, mirrored with a margin (int8: parity wants 90 % of the images, the guard 95 %)
    from fgdeploy.export.precision import parity_profile

    strict, tolerance = parity_profile(th, "int8")
    assert strict.min_outputs_within == 0.95 and tolerance.min_fraction == 0.9 and tolerance.atol == 0.1
    at_parity = GuardMetrics(1.0, 0.99, 0.9, 0.0, 0.0, 0, 0, 0.01, outputs_within=0.92)
    assert at_parity.passes(th) and not at_parity.passes(strict)
    assert "outputs within the element tolerance on 92.00% of the images < 95.00%" in at_parity.failures(strict)[0]
    with pytest.raises(Exception, match="min-top1-agree"):
        GuardThresholds(min_top1_agree=1.5)


def test_a_keypoint_agreement_of_zero_ranks_below_any_other():
    """Review of #24: ``shortfall`` read a keypoint agreement of 0.0 as 1.0 (``or 1.0``), so a build that moved
    every keypoint ranked as the best near miss."""
    th = GuardThresholds(0.0, 0.0, 100.0)             # every build passes: only the continuous term ranks them
    every_keypoint_moved = GuardMetrics(1.0, 0.0, 0.0, None, None, 0, 30, 0.0)
    half_moved = GuardMetrics(1.0, 0.5, 0.5, None, None, 0, 15, 0.0)
    no_keypoints = GuardMetrics(1.0, None, None, None, None, 0, 0, 0.0)
    assert every_keypoint_moved.shortfall(th) > half_moved.shortfall(th) > no_keypoints.shortfall(th)


def test_guard_source_defaults_to_half_the_calibration_datasets_test_split(data, tmp_path):
    source = guard_source(None, data, SIZE, 500)
    guard_ids, held_out = guard_and_parity_halves(data)
    assert source is not None and "the guard's half" in source.description and source.truth.labels is not None
    assert list(source.truth.image_ids) == guard_ids and len(guard_ids) == len(held_out) == 9
    assert {int(data_label) for data_label in source.truth.labels} == set(range(CLASSES))  # every class in the half
    assert len(guard_source(None, data, SIZE, 4)) == 4      # --guard-images: spread over the half
    folder = tmp_path / "plain"
    folder.mkdir()
    assert guard_source(None, folder, SIZE, 500) is None     # a plain calibration folder: no held-out split
    (folder / "a.png").write_bytes((data / "images").glob("*/*.jpg").__next__().read_bytes())
    plain = guard_source(folder, None, SIZE, 500)
    assert plain is not None and len(plain) == 1 and plain.truth.labels is None


# --- the INT8 scheme by CPU -------------------------------------------------------------------------
@pytest.mark.parametrize("flags, scheme", [
    (["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"], "u8s8"),        # AVX-512 VNNI (Zen 4, Cascade Lake)
    (["avx2", "fma", "avx_vnni"], "u8s8"),                                   # AVX-VNNI (Alder Lake)
    (["avx2", "fma", "avx512f", "amx_int8", "amx_tile"], "u8s8"),             # AMX (Sapphire Rapids)
    (["avx2", "fma"], "u8s8-reduce-range"),                                   # AVX2 only: vpmaddubsw saturates
    (["avx2", "fma", "avx512f", "avx512bw"], "u8s8-reduce-range"),            # AVX-512 without VNNI (Skylake-X)
    ([], "u8s8"),                                                             # ARM, or flags unknown
])
def test_the_int8_scheme_follows_the_cpu_flags(flags, scheme):
    cpu = {"model": "test CPU", "machine": "x86_64" if flags else "aarch64", "flags": flags}
    settings = Int8Settings(cpu=cpu)
    assert settings.scheme == scheme and settings.chosen_by == "cpu flags"
    assert settings.reduce_range is (scheme == "u8s8-reduce-range") and settings.activation_type == "uint8"
    described = settings.describe()
    assert described["scheme"] == scheme and described["cpu"] == cpu and described["scheme_reason"]
    given = Int8Settings(scheme="u8u8", cpu=cpu)      # --int8-scheme overrides the CPU
    assert (given.scheme, given.chosen_by, given.weight_type) == ("u8u8", "given", "uint8")
    trt = Int8Settings.for_target("tensorrt")
    assert (trt.scheme, trt.activation_type, trt.symmetric_activations) == ("s8s8", "int8", True)


def test_cpu_features_reads_the_int8_flags_from_cpuinfo():
    text = "processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni amx_tile\n"
    cpu = cpu_features(text)
    assert cpu["model"] == "Some Xeon" and cpu["flags"] == ["avx2", "fma", "avx512f", "avx512_vnni", "amx_tile"]


def test_int8_scheme_option_reaches_the_weights_and_the_metadata(fp32_onnx, data, tmp_path):
    weights = {}
    for scheme in ("u8s8-reduce-range", "u8u8"):
        out = tmp_path / f"{scheme}.onnx"
        settings = Int8Settings(scheme=scheme)
        reduce_exported(fp32_onnx, out, ExportOptions(precision=PrecisionOptions("int8", CalibrationOptions(
            data, settings=settings))))
        model = onnx.load(out)
        assert json.loads(next(p.value for p in model.metadata_props if p.key == "quantization"))["scheme"] == scheme
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        weights[scheme] = [inits[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear"
                           and n.input[0] in inits and inits[n.input[0]].ndim == 4]
    reduced = weights["u8s8-reduce-range"]
    assert reduced and all(w.dtype == np.int8 and w.min() >= -64 and w.max() <= 64 for w in reduced)  # 7-bit
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in reduced) > 32                          # ... used
    assert weights["u8u8"] and all(w.dtype == np.uint8 for w in weights["u8u8"])


# --- task-driven fp16 ---------------------------------------------------------------------------------
def test_task_driven_fp16_starts_all_fp16_and_keeps_what_the_guard_needs(fp32_onnx, data):
    fp32 = onnx.load(fp32_onnx)
    builder = Fp16Builder(fp32)
    assert builder.policy and set(builder.policy.values()) == {ALWAYS_FP32_REASON}
    everything = builder.convert(frozenset())
    assert fp32_node_names(everything) == []           # every candidate (convs, CoordinateTransfer, Gemm) fp16
    onnx.checker.check_model(everything, full_check=True)
    conv = next(n for n in builder.candidates if builder.op_types[n] == "Conv")
    assert fp32_node_names(builder.convert(frozenset({conv}))) == [conv]
    strict = GuardThresholds(1.0, 1.0, 0.0)
    guard = Guard(fp32.SerializeToString(), DatasetImages(data, "test", SIZE), strict, STRICT_KEYPOINTS)
    model, report = guarded_search(builder, builder.candidates, guard, precision="fp16", op_types=builder.op_types)
    assert report.passed
    kept_fp32 = set(fp32_node_names(onnx.load_from_string(model)))
    assert kept_fp32 == set(report.kept_names)


def test_export_fp16_with_guard_via_api(fp32_onnx, data, tmp_path):
    out = tmp_path / "tiny_fp16_task.onnx"
    result = reduce_exported(fp32_onnx, out, ExportOptions(precision=PrecisionOptions("fp16", guard=GuardOptions(source=data))))
    assert result.precision == "fp16" and result.guard_passed is True
    with OrtRunner(out) as runner:
        meta = runner.metadata()
        got = runner.infer({"images": _images(2)})
    assert meta["precision"] == "fp16" and meta["fp16_policy"].startswith("task-driven")
    assert all(np.isfinite(v).all() and v.dtype == np.float32 for v in got.values())


# --- TensorRT flavour ---------------------------------------------------------------------------------
def test_tensorrt_target_is_signed_symmetric(fp32_onnx, data, tmp_path):
    out = tmp_path / "tiny_int8_trt.onnx"
    settings = Int8Settings.for_target("tensorrt")
    reduce_exported(fp32_onnx, out, ExportOptions(precision=PrecisionOptions("int8", CalibrationOptions(data, settings=settings))))
    model = onnx.load(out)
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zero_points and all(z.data_type == onnx.TensorProto.INT8 for z in zero_points)
    assert not any(onnx.numpy_helper.to_array(z).any() for z in zero_points)


# --- CLI and bad input ----------------------------------------------------------------------------------
def test_cli_int8_export_with_guard_prints_the_verdict(ckpt, data, tmp_path):
    out = tmp_path / "cli_int8.onnx"
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(out), "--int8", "--calib", str(data),
                                      "--calib-images", "8"])
    assert result.exit_code == 0, result.output
    assert "precision int8" in result.output and "guard: PASS" in result.output
    assert "calibrated on 8 of 18 train split" in result.output
    assert out.is_file() and out.with_name("cli_int8.guard.json").is_file()


@pytest.mark.parametrize("setup, message", [
    ("empty", "no images found"),
    ("few", f"at least {MIN_CALIBRATION_IMAGES} are needed"),
    ("broken", "cannot be decoded"),
    ("zero", "empty file (0 bytes)"),
])
def test_bad_calibration_input_is_a_one_line_error(ckpt, data, tmp_path, setup, message):
    folder = tmp_path / "calib"
    folder.mkdir()
    sample = next((data / "images").glob("*/*.jpg")).read_bytes()
    count = {"empty": 0, "few": 3}.get(setup, 10)
    for i in range(count):
        (folder / f"{i}.jpg").write_bytes(sample)
    if setup == "broken":
        (folder / "5.jpg").write_bytes(b"this is not a jpeg")
    if setup == "zero":
        (folder / "5.jpg").write_bytes(b"")
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "m.onnx"), "--int8", "--calib",
                                      str(folder), "--no-guard"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    if setup in ("broken", "zero"):
        assert str(folder / "5.jpg") in errors[0]
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("args, message", [
    (["--int8"], "--int8 needs calibration images"),
    (["--calib", "."], "--calib is for --int8"),
    (["--fp16", "--int8", "--calib", "."], "exclude each other"),
    (["--int8", "--calib", "missing-folder"], "not a folder"),
    (["--guard", "."], "use it with --int8 or --fp16"),
    (["--int8-target", "tensorrt"], "--int8-target is for --int8"),
    (["--int8-scheme", "u8u8"], "--int8-scheme is for --int8"),
    (["--int8", "--calib", ".", "--int8-target", "tensorrt", "--int8-scheme", "u8s8"], "TensorRT takes only"),
])
def test_export_precision_option_errors_are_usage_errors(ckpt, tmp_path, args, message):
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "m.onnx"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_calibration_images_are_the_infer_pixels(data):
    from fgdeploy.inference.local import decode_one

    images = load_image_set(data, SIZE, 4, "train")
    assert len(images) == 4 and images.labels is not None
    first = decode_one(images.paths[0], SIZE).image
    np.testing.assert_array_equal(images.images[0], first)
    batch = images.model_input(0, 2)
    assert batch.shape == (2, 3, SIZE, SIZE) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0], first.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0))
    with pytest.raises(ImageError, match="at least 100"):
        load_image_set(data, SIZE, None, "train", minimum=100)


def test_parity_cli_checks_an_int8_model_on_the_test_images_its_guard_did_not_use(ckpt, int8_onnx, data, tmp_path):
    """#24: the guard chose on the test split and parity then checked on the same images; now each takes one half,
    parity says which images it used, and it warns when --data includes the guard's."""
    report = tmp_path / "parity.json"
    result = CliRunner().invoke(cli, ["parity", "--ref", f"torch:{ckpt}", "--test", f"onnx:{int8_onnx}",
                                      "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "comparing on the test images its guard did not use" in result.output
    saved = json.loads(report.read_text())
    guard_ids, held_out = guard_and_parity_halves(data)
    assert saved["passed"] is True and saved["precision"] == "int8" and saved["n_images"] == 9
    assert saved["image_ids"] == held_out and not set(saved["image_ids"]) & set(guard_ids)
    assert saved["guard_overlap"] == 0 and "the test images the guard did not use" in saved["data"]
    assert saved["task"]["accuracy_ref"] is not None      # the dataset's labels, not random noise
    assert f"image ids: {', '.join(map(str, held_out))} (all in the JSON report)" in result.output
    assert "WARNING" not in result.output

    whole = CliRunner().invoke(cli, ["parity", "--ref", f"torch:{ckpt}", "--test", f"onnx:{int8_onnx}",
                                     "--data", str(data), "--report", str(report)])
    saved = json.loads(report.read_text())
    assert saved["n_images"] == 18 and saved["guard_overlap"] == 9
    assert "warning: 9 of the 18 images compared are ones the precision guard chose the float nodes on" in whole.output
