"""The part-net model deployed: one ONNX file with the crops inside (GridSample), parity with box agreement,
infer writing head/body boxes in original pixels (CSV/JSONL columns, drawings)."""

from __future__ import annotations

import dataclasses
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
from fgdeploy.inference.batch_records import to_records
from fgdeploy.inference.results import read_results
from fgdeploy.models import create_model, load_model_config, with_backbone_options
from fgdeploy.parity import DatasetImages, ParityConfig, run_parity
from fgdeploy.reference.part_boxes import part_boxes as reference_boxes
from fgdeploy.tensors import OP_DOMAIN, PART_NAMES

SIZE = 64
CLASSES = [f"{i + 1:03d}.Bird_{i}" for i in range(3)]


def _tiny_partnets_config():  # type: ignore[no-untyped-def]
    cfg = with_backbone_options(load_model_config("demo_partnets"), {"widths": [4, 8, 8, 16, 16]}, input_size=SIZE)
    return dataclasses.replace(cfg, part_nets=dataclasses.replace(cfg.part_nets, crop_size=24))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from fgdeploy.data.synthetic import generate_synth_birds

    return generate_synth_birds(tmp_path_factory.mktemp("synth") / "birds", classes=3, images_per_class=4, size=80)


def _tiny_partnets_checkpoint(path, classes: list[str], classifier_scale: float):  # type: ignore[no-untyped-def]
    """An untrained tiny part-net model with clear logits (classifier x ``classifier_scale``) and heatmap peaks
    (score convs x30), so answers are not decided by near-ties."""
    torch.manual_seed(0)
    cfg = _tiny_partnets_config()
    model = create_model(cfg, len(classes)).eval()
    with torch.no_grad():
        model.classifier.fc.weight.mul_(classifier_scale)
        for conv in model.keypoint_head.score:
            conv.weight.mul_(30.0)
    save_checkpoint(path, model, CheckpointMeta.for_config(cfg, classes, stage=4, epoch=1))
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _tiny_partnets_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_partnets.pt", CLASSES, 20.0)


@pytest.fixture(scope="module")
def onnx_files(ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, extra in (("fp32", []), ("fp16", ["--fp16"])):
        out[name] = folder / f"tiny_{name}.onnx"
        result = CliRunner().invoke(cli, ["export", str(ckpt), "--out", str(out[name]), *extra])
        assert result.exit_code == 0, result.output
        assert "part_boxes" in result.output
    return out


def test_export_is_one_file_with_the_crops_as_grid_sample_nodes(onnx_files):
    for path in onnx_files.values():
        model = onnx.load(str(path))
        ops = Counter(n.op_type for n in model.graph.node)
        assert ops["GridSample"] == 2                              # head and body crops, inside the graph
        custom = {n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")}
        assert custom == {"CoordinateTransfer"} and all(n.domain == OP_DOMAIN for n in model.graph.node
                                                         if n.op_type == "CoordinateTransfer")
        assert [o.name for o in model.graph.output] == ["logits", "keypoints", "keypoint_scores", "part_boxes"]
        assert not list(path.parent.glob(path.stem + "*.data"))    # no external weight files


def test_onnx_boxes_follow_the_box_rule_on_its_own_keypoints(ckpt, onnx_files):
    images = np.random.default_rng(0).random((5, 3, SIZE, SIZE), dtype=np.float32)
    with OrtRunner(onnx_files["fp32"]) as runner, TorchRunner(ckpt) as ref:
        got, want = runner.infer({"images": images}), ref.infer({"images": images})
    np.testing.assert_array_equal(got["part_boxes"], want["part_boxes"])
    vis = got["keypoint_scores"] >= 0.5
    np.testing.assert_allclose(got["part_boxes"], reference_boxes(got["keypoints"], vis, (SIZE, SIZE)), atol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_parity_compares_boxes_and_passes(ckpt, onnx_files, synth, precision):
    source = DatasetImages(synth, "test", SIZE, n=6)
    report = run_parity(lambda debug: TorchRunner(ckpt, debug=debug),
                        lambda debug: OrtRunner(onnx_files[precision], debug=debug), source, ParityConfig(batch_size=2))
    names = [c.name for c in report.checks]
    assert any(n.startswith("head/body boxes with IoU") for n in names)
    assert bool(report), [c for c in report.checks if not c.passed]
    if precision == "fp32":
        assert report.task.top1_agreement == 1.0 and report.task.box_agreement == 1.0
        assert report.task.box_iou_min > 0.999
    else:
        assert report.task.box_iou_mean > 0.9


def test_infer_writes_boxes_in_original_pixels_csv_and_jsonl(ckpt, onnx_files, synth, tmp_path):
    images = sorted((synth / "images").rglob("*.jpg"))[:3]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, p in enumerate(images):
        (folder / f"{i}.jpg").write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not an image")
    for model, out in ((onnx_files["fp32"], tmp_path / "res.csv"), (ckpt, tmp_path / "res.jsonl")):
        result = CliRunner().invoke(cli, ["infer", str(folder), "--model", str(model), "--out", str(out),
                                          "--save-vis", str(tmp_path / f"vis_{out.suffix[1:]}")])
        assert result.exit_code == 0, result.output
        records = read_results(out)
        assert len(records) == 3
        for rec in records:
            assert [b["part"] for b in rec["boxes"]] == ["head", "body"]
            for b in rec["boxes"]:
                assert 0 <= b["x0"] < b["x1"] <= rec["width"] and 0 <= b["y0"] < b["y1"] <= rec["height"]
        assert len(list((tmp_path / f"vis_{out.suffix[1:]}").glob("*.png"))) == 3
    header = (tmp_path / "res.csv").read_text().splitlines()[0].split(",")
    assert header[-8:] == [f"{b}_{k}" for b in ("head", "body") for k in ("x0", "y0", "x1", "y1")]
    csv_recs, json_recs = read_results(tmp_path / "res.csv"), read_results(tmp_path / "res.jsonl")
    for a, b in zip(csv_recs, json_recs):   # ONNX fp32 and the checkpoint agree, in both formats
        np.testing.assert_allclose([[x[k] for k in ("x0", "y0", "x1", "y1")] for x in a["boxes"]],
                                   [[x[k] for k in ("x0", "y0", "x1", "y1")] for x in b["boxes"]], atol=2e-3)


def test_to_records_scales_boxes_to_the_original_image():
    item = type("Item", (), {"size_hw": (100, 200), "path": "a.jpg"})()
    outputs = {"logits": np.zeros((1, 2)), "keypoints": np.zeros((1, 15, 2)), "keypoint_scores": np.zeros((1, 15)),
               "part_boxes": np.array([[[8.0, 16.0, 32.0, 48.0], [0.0, 0.0, 64.0, 64.0]]])}
    (rec,) = to_records(outputs, [item], 64, 1, ["a", "b"], PART_NAMES)
    assert rec["boxes"] == [{"part": "head", "x0": 25.0, "y0": 25.0, "x1": 100.0, "y1": 75.0},
                            {"part": "body", "x0": 0.0, "y0": 0.0, "x1": 200.0, "y1": 100.0}]


# --- INT8 through the part nets (#24) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def calib_synth(tmp_path_factory):
    """18 train images (INT8 calibration needs 8) and 18 test images: 9 for the guard, 9 held out for parity."""
    from fgdeploy.data.synthetic import generate_synth_birds

    return generate_synth_birds(tmp_path_factory.mktemp("calib") / "birds", classes=3, images_per_class=12, size=80)


@pytest.fixture(scope="module")
def int8_ckpt(tmp_path_factory, calib_synth):
    """As ``ckpt``, with ``calib_synth``'s classes (parity checks them) and a classifier scaled x5, not x20: parity's
    int8 element check (logits within atol = rtol = 0.1 on 90 % of the images) is absolute, and x20 logits (range
    ~8) move by ~0.36 in INT8 (measured), where a trained model's move by less."""
    from fgdeploy.data.cub import CubDataset

    classes = list(CubDataset(calib_synth, "train").class_names)
    return _tiny_partnets_checkpoint(tmp_path_factory.mktemp("ckpt8") / "tiny_partnets.pt", classes, 5.0)


def test_int8_part_net_model_end_to_end_export_guard_parity_infer(int8_ckpt, calib_synth, tmp_path):
    """The part nets' convs are INT8 candidates like the trunks' (the float parts stop at the crop), the guard
    decides, parity checks on the test images the guard did not use, and infer writes the boxes."""
    from fgdeploy.export.precision.int8 import quantized_nodes

    out = tmp_path / "tiny_int8.onnx"
    ckpt = int8_ckpt
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(out), "--int8", "--calib", str(calib_synth)])
    assert result.exit_code == 0, result.output
    assert "guard: PASS" in result.output and "part nets:" in result.output
    model = onnx.load(str(out))
    nodes = quantized_nodes(model)
    assert nodes["part-net Conv int8"] >= 1 and nodes["part-net Conv int8"] + nodes.get("part-net Conv float", 0) == 14
    meta = {p.key: p.value for p in model.metadata_props}
    policy = set(json.loads(meta["float_kept_nodes"])["policy"])
    grid = [n for n in model.graph.node if n.op_type == "GridSample"]
    assert len(grid) == 2 and all(n.name in policy for n in grid)          # the crops stay float ...
    producer = {o: n for n in model.graph.node for o in n.output}
    readers = [n for n in model.graph.node if any(i == g.output[0] for g in grid for i in n.input)]
    assert readers and all(n.op_type == "QuantizeLinear" for n in readers)  # ... and what they crop is quantized
    assert all(producer[n.input[0]].op_type == "GridSample" for n in readers)

    report = tmp_path / "parity.json"
    parity = CliRunner().invoke(cli, ["parity", "--ref", f"torch:{ckpt}", "--test", f"onnx:{out}", "--report",
                                      str(report)])
    assert parity.exit_code == 0, parity.output
    saved = json.loads(report.read_text())
    assert saved["passed"] is True
    assert saved["n_images"] == 9 and saved["guard_overlap"] == 0 and "guard did not use" in saved["data"]
    assert saved["task"]["box_iou_mean"] is not None and saved["task"]["box_iou_mean"] > 0.8

    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted((calib_synth / "images").rglob("*.jpg"))[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    infer = CliRunner().invoke(cli, ["infer", str(folder), "--model", str(out), "--out", str(tmp_path / "r.jsonl")])
    assert infer.exit_code == 0, infer.output
    records = read_results(tmp_path / "r.jsonl")
    assert len(records) == 3 and all([b["part"] for b in r["boxes"]] == ["head", "body"] for r in records)
