"""Benchmark helpers and ``fgdeploy bench``: statistics, warm-up, table, JSON, CLI (no timing asserts)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from fgdeploy.bench import BenchResult, bench_end_to_end, bench_model, render_table, time_calls, write_json
from fgdeploy.cli import cli


class RecordingPredictor:
    """Remembers what it was given; outputs depend on the pixels so nothing is constant."""

    input_size = 8

    def __init__(self) -> None:
        self.prepared: list[np.ndarray] = []
        self.calls: list[int] = []

    def prepare(self, images) -> np.ndarray:
        images = np.stack(list(images))
        self.prepared.append(images)
        return images.astype(np.float32) / 255.0

    def predict(self, prepared: np.ndarray, count: int) -> dict[str, np.ndarray]:
        self.calls.append(count)
        mean = prepared[:count].mean(axis=(1, 2))            # (N, 3)
        return {"logits": mean, "keypoints": np.full((count, 15, 2), 4.0, np.float32),
                "keypoint_scores": np.full((count, 15), 0.9, np.float32)}


def _tiny_checkpoint(path):
    """A random-weight 32 px model with 3 classes, saved as an fgdeploy checkpoint."""
    import torch

    from fgdeploy.checkpoint import CheckpointMeta, save_checkpoint
    from fgdeploy.models import create_model, load_model_config, with_backbone_options

    cfg = with_backbone_options(load_model_config("demo"), {"widths": [4, 8, 8, 16, 16], "depth": 1}, input_size=32)
    torch.manual_seed(0)
    save_checkpoint(path, create_model(cfg, 3), CheckpointMeta.for_config(cfg, ["a", "b", "c"]))
    return path


def test_bench_result_percentiles_and_throughput_from_latencies():
    lat = [10.0, 20.0, 30.0, 40.0, 100.0]
    r = BenchResult.from_latencies("x", "model", 8, lat, "wall")
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    assert (r.p50_ms, r.p90_ms, r.p99_ms, r.mean_ms) == (round(p50, 3), round(p90, 3), round(p99, 3), 40.0)
    assert r.images_per_s == pytest.approx(8 * 1000.0 / 40.0) and r.iters == 5


def test_time_calls_runs_warmup_untimed_then_iters():
    calls = []
    times, timer = time_calls(lambda: calls.append(time.sleep(0.002)), iters=4, warmup=2)
    assert len(calls) == 6 and len(times) == 4 and timer == "wall"
    assert min(times) >= 2.0


def test_bench_model_prepares_once_and_calls_predict_per_iteration():
    predictor = RecordingPredictor()
    result = bench_model(predictor, "rec", batch=3, iters=5, warmup=2)
    assert len(predictor.prepared) == 1 and predictor.calls == [3] * 7
    images = predictor.prepared[0]
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8 and images.std() > 10
    assert (result.backend, result.mode, result.batch, result.iters) == ("rec", "model", 3, 5)


def test_bench_end_to_end_scores_every_image_of_the_folder(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    for k in range(7):
        cv2.imwrite(str(tmp_path / f"{k}.png"), rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    predictor = RecordingPredictor()
    result = bench_end_to_end(predictor, "rec", tmp_path, batch=3, workers=1, warmup=1)
    assert sum(predictor.calls[2:]) == 7 and predictor.calls[2:] == [3, 3, 1]  # after bench_model's 2 warm-up calls
    assert result.mode == "end-to-end" and result.images_per_s > 0 and result.iters == 3


def test_bench_end_to_end_fast_decode_reaches_the_decoder_and_names_the_row(tmp_path, monkeypatch):
    import cv2

    import fgdeploy.inference.local as infer

    real, asked = infer.read_rgb_sized, []

    def recording(path, reduce_to=None, **kwargs):
        asked.append(reduce_to)
        return real(path, reduce_to, **kwargs)

    monkeypatch.setattr(infer, "read_rgb_sized", recording)
    rng = np.random.default_rng(1)
    for k in range(4):
        cv2.imwrite(str(tmp_path / f"{k}.jpg"), rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    predictor = RecordingPredictor()
    result = bench_end_to_end(predictor, "rec", tmp_path, batch=2, workers=1, fast_decode=True)
    assert result.backend == "rec+fast-decode" and asked == [(8, 8)] * 4
    assert all(batch.shape[1:] == (8, 8, 3) for batch in predictor.prepared)
    asked.clear()
    assert bench_end_to_end(predictor, "rec", tmp_path, batch=2, workers=1).backend == "rec" and asked == [None] * 4


def test_render_table_one_aligned_row_per_result_and_json_round_trip(tmp_path):
    rows = [BenchResult.from_latencies("ort-cpu-fp32", "model", b, [5.0 * b, 6.0 * b], "wall") for b in (1, 16)]
    table = render_table(rows).splitlines()
    assert len(table) == 4 and table[0].startswith("backend") and "16" in table[3]
    assert len({len(line) for line in table}) == 1
    data = json.loads(write_json(tmp_path / "b.json", rows, {"models": ["m.onnx"]}).read_text())
    assert [r["batch"] for r in data["results"]] == [1, 16] and data["models"] == ["m.onnx"]
    assert "python" in data["environment"] and not list(tmp_path.glob(".*.tmp"))


def test_cli_bench_rejects_bad_batch_list(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    result = CliRunner().invoke(cli, ["bench", "--model", str(tmp_path / "m.onnx"), "--batch", "0,x"])
    assert result.exit_code == 2 and "positive batch sizes" in result.output


def test_cli_bench_missing_images_folder_fails_before_timing_anything(tmp_path, monkeypatch):
    import fgdeploy.bench as bench

    monkeypatch.setattr(bench, "bench_model", lambda *a, **k: pytest.fail("timed a model before checking --images"))
    ckpt = _tiny_checkpoint(tmp_path / "tiny.pt")
    result = CliRunner().invoke(cli, ["bench", "--model", str(ckpt), "--images", str(tmp_path / "nope")])
    assert result.exit_code == 1 and f"{tmp_path / 'nope'}" in result.output and "does not exist" in result.output


def test_cli_bench_tiny_checkpoint_model_and_end_to_end_rows(tmp_path):
    import cv2

    ckpt = _tiny_checkpoint(tmp_path / "tiny.pt")
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for k in range(5):
        cv2.imwrite(str(tmp_path / "imgs" / f"{k}.jpg"), rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    result = CliRunner().invoke(cli, ["bench", "--model", str(ckpt), "--batch", "1,2", "--iters", "2",
                                      "--warmup", "1", "--images", str(tmp_path / "imgs"),
                                      "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [(r["mode"], r["batch"]) for r in rows] == [("model", 1), ("model", 2), ("end-to-end", 2)]
    assert all(r["backend"] == "torch-cpu-fp32-eager" and r["images_per_s"] > 0 for r in rows)
    assert "torch-cpu-fp32-eager" in result.output and "end-to-end" in result.output


def test_cli_bench_fuse_conv_relu_reaches_the_fast_path(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path / "tiny.pt")
    result = CliRunner().invoke(cli, ["bench", "--model", str(ckpt), "--batch", "1", "--iters", "1", "--warmup", "0",
                                      "--fuse-conv-relu", "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [r["backend"] for r in rows] == ["torch-cpu-fp32-eager-convrelu"]


def test_cli_bench_of_several_models_names_each_file(tmp_path):
    import shutil

    ckpt = _tiny_checkpoint(tmp_path / "base.pt")
    shutil.copy(ckpt, tmp_path / "other.pt")
    result = CliRunner().invoke(cli, ["bench", "--model", str(ckpt), "--model", str(tmp_path / "other.pt"),
                                      "--batch", "1", "--iters", "1", "--warmup", "0", "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [r["backend"] for r in rows] == ["torch-cpu-fp32-eager base.pt", "torch-cpu-fp32-eager other.pt"]
