"""``fgdeploy demo``: the whole pipeline on a tiny model and tiny synth data, then a resumed rerun."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from fgdeploy.cli import cli
import fgdeploy.demo as demo
from fgdeploy.demo import STEPS, DemoOptions, DemoResult, run_demo, summary_table
from fgdeploy.errors import ConfigError

TINY_CONFIG = """\
name: tiny
input_size: 48
shared_backbone: false
localization:
  backbone: small
  backbone_options: {widths: [4, 8, 8, 16, 16], depth: 1}
  score_layers: [s32, s16, s8, s4]
classification:
  backbone: small
  backbone_options: {widths: [4, 8, 8, 16, 16], depth: 1}
  use_parts: true
  transfer_layer: s8
  window: 3
  mode: max
  holistic: global_avg
  holistic_layer: s32
  dropout: 0.5
zero_invisible_parts: true
visibility_threshold: 0.5
mean: [0.485, 0.456, 0.406]
std: [0.229, 0.224, 0.225]
"""
# the demo's default model has head/body part nets (#24): the demo test runs a tiny one
TINY_PARTNETS_CONFIG = TINY_CONFIG.replace("name: tiny", "name: tiny_partnets").replace("zero_invisible_parts", """\
part_nets:
  backbone: small
  backbone_options: {widths: [4, 8, 8, 16, 16], depth: 1}
  feature_layer: s16
  feature: global_avg
  crop_size: 24
  padding: 0.15
  min_side: 16
  dropout: 0.5
  end_to_end: true
zero_invisible_parts""")


def test_summary_table_shows_failed_parity_checks_and_throughput():
    result = DemoResult(Path("x"), steps={
        "eval": {"images": 10, "top1": 0.5, "mean_class_acc": 0.45, "pck": {"0.1": 0.8}},
        "parity": [{"ref": "torch", "test": "ort-fp16", "passed": False, "top1_agreement": 0.9,
                    "failed_checks": ["logits within atol=0.01"]}],
        "bench": {"rows": [{"backend": "ort", "mode": "model", "batch": 8, "p50_ms": 2.0, "images_per_s": 4000.0},
                           {"backend": "ort", "mode": "end-to-end", "batch": 8, "p50_ms": 3.0,
                            "images_per_s": 900.0}]},
    }, seconds={"eval": 2.04, "parity": 3.0, "bench": 1.0})
    table = summary_table(result)
    # issue 17 #15: the table ends with each step's time and where the artefacts are
    assert [line.split("  ")[0] for line in table.splitlines()[-4:]] == [
        "time per step", "eval grid (GT vs predicted parts)", "parity reports", "benchmark"]
    assert table.splitlines()[-4].endswith("eval 2.0 s, parity 3.0 s, bench 1.0 s")
    assert table.splitlines()[-3].endswith(str(Path("x/eval/eval_grid.png")))
    assert "top-1 accuracy (torch, 10 test images)" in table and "50.0 %" in table and "80.0 %" in table
    assert "FAIL: logits within atol=0.01 (top-1 agreement 90.0 %)" in table
    assert "model 4000.0 img/s (batch 8, p50 2.0 ms), end-to-end 900.0 img/s" in table
    assert not result.passed


@pytest.mark.slow
def test_demo_quick_runs_every_step_then_resumes_without_redoing_them(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_PARTNETS_CONFIG)
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--quick", "--config", str(config), "--batch", "4"]
    first = CliRunner().invoke(cli, args)
    # A 1-epoch tiny model has near-flat heatmaps: torch and ORT may break a near-tie differently; parity
    # fetches the reference heatmaps for moved keypoints and accepts such moves, so the demo must pass.
    assert first.exit_code == 0, first.output
    for name in STEPS:
        assert f"[{name}] running" in first.output
    table = first.output[first.output.index("item "):]
    for row in ("top-1 accuracy", "PCK@0.1", "parity torch-cpu-fp32 vs ort-cpu-fp32   PASS",
                "parity torch-cpu-fp32 vs ort-cpu-fp16   PASS", "throughput torch-cpu-fp32-eager",
                "throughput ort-cpu-fp32", "throughput ort-cpu-fp16", "12 scored, 0 failed",
                "parity torch-cpu-fp32 vs ort-cpu-int8   PASS", "throughput ort-cpu-int8"):
        assert row in re.sub(r"  +", "   ", table), row
    guard_row = next(line for line in table.splitlines() if line.startswith("int8 guard (vs fp32, half the test"))
    assert "PASS; " in guard_row and "convs kept float by the guard:" in guard_row
    assert re.search(r"\d+ of \d+ convs int8 \(part nets [1-9]\d* of \d+\), scheme ", guard_row), guard_row
    int8_row = next(line for line in table.splitlines() if line.startswith("parity torch-cpu-fp32 vs ort-cpu-int8"))
    assert "test images the guard did not use" in int8_row, int8_row
    assert "PCP head box (IoU >= 0.5)" in table and "PCP body box (IoU >= 0.5)" in table
    state = json.loads((out / "demo_state.json").read_text())
    assert set(state["steps"]) == set(STEPS) and state["settings"]["quick"] is True
    assert (out / "model.onnx").is_file() and (out / "model_fp16.onnx").is_file()
    assert (out / "model_int8.onnx").is_file() and (out / "model_int8.guard.json").is_file()
    assert len((out / "infer" / "results.csv").read_text().splitlines()) == 1 + 12
    assert len(list((out / "infer" / "vis").glob("*.png"))) == 4 and "pictures (infer --save-vis)" in table
    assert "time per step" in table and "train " in table.split("time per step")[1]
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == first.exit_code, second.output
    assert all(f"[{name}] done before, skipped" in second.output for name in STEPS)
    assert second.output[second.output.index("item "):] == table


def test_demo_epochs_zero_is_a_usage_error(tmp_path):
    res = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "demo"), "--epochs", "0"])
    assert res.exit_code == 2 and "--epochs" in res.output, res.output
    assert not (tmp_path / "demo").exists()


@pytest.fixture
def fake_steps(monkeypatch):
    """Every demo step replaced by an instant stand-in; returns the list of steps run."""
    ran: list[str] = []
    for name in STEPS:
        def step(*args, name=name):
            ran.append(name)
            return [] if name == "parity" else {"files": []}
        monkeypatch.setattr(demo, f"_step_{name}", step)
    return ran


def test_demo_rerun_with_same_settings_skips_steps_and_other_settings_are_refused(tmp_path, fake_steps):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    out = tmp_path / "quick"
    run_demo(DemoOptions(out=out, quick=True, config=str(config)))
    assert fake_steps == list(STEPS)
    again = run_demo(DemoOptions(out=out, quick=True, config=str(config), device="cpu"))  # device may change
    assert again.ran == [] and fake_steps == list(STEPS)
    for changed, match in [({"quick": False}, r"made with quick True, not quick False"),   # no dict reprs (#10)
                           ({"epochs": 2}, r"made with epochs default, not epochs 2"),
                           ({"batch": 4}, r"made with batch 16, not batch 4"),
                           ({"config": "demo"}, r"config .*tiny.yaml, config_sha256 [0-9a-f]{12}, not config demo")]:
        options = DemoOptions(out=out, **({"quick": True, "config": str(config)} | changed))
        with pytest.raises(ConfigError, match=match + r".*; use another --out or delete "):
            run_demo(options)
    config.write_text(TINY_CONFIG.replace("visibility_threshold: 0.5", "visibility_threshold: 0.4"))
    with pytest.raises(ConfigError, match=r"made with config_sha256 [0-9a-f]{12}, not"):
        run_demo(DemoOptions(out=out, quick=True, config=str(config)))
    assert fake_steps == list(STEPS)  # nothing ran after the first demo


def test_demo_refuses_a_state_file_without_settings(tmp_path, fake_steps):
    out = tmp_path / "old"
    out.mkdir()
    (out / "demo_state.json").write_text(json.dumps({"data": {"files": []}}))
    with pytest.raises(ConfigError, match=r"demo_state.json records no demo settings.*use another --out or delete"):
        run_demo(DemoOptions(out=out, quick=True))
    assert fake_steps == []


def test_demo_cli_refuses_a_missing_cuda_device_before_any_step(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["demo", "--out", str(out), "--quick", "--device", "cuda"])
    assert res.exit_code == 1 and "--device cuda: CUDA is not available" in res.output, res.output
    assert "[data]" not in res.output and not out.exists()
