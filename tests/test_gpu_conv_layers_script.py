"""bench/gpu_conv_layers.py on the CPU: recorded shapes, FLOP counts, and the padded first convolution.

The script is meant for one prepared device run; this makes sure what it measures is right before that.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_conv_layers.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_conv_layers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_record_convs_shapes_and_flops_in_call_order(script):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 1, stride=2, groups=2))
    (first, _), (second, _) = script.record_convs(model, torch.rand(2, 3, 10, 12))
    assert first.name == "0" and first.input_shape == (2, 3, 10, 12) and first.output_shape == (2, 8, 10, 12)
    assert first.flops == 2 * 2 * 8 * 10 * 12 * 3 * 9
    assert second.name == "2" and second.output_shape == (2, 6, 5, 6) and second.stride == (2, 2)
    assert second.flops == 2 * 2 * 6 * 5 * 6 * 4 * 1   # groups=2: 4 input channels per output


def test_padding_the_input_channels_keeps_the_output(script):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    (shape, _), = script.record_convs(conv, torch.rand(2, 3, 9, 9))
    plain, x, _ = script.conv_call(shape, conv, torch.float64, torch.device("cpu"), channels_last=False)
    padded, xp, wp = script.conv_call(shape, conv, torch.float64, torch.device("cpu"), channels_last=False, pad_to=8)
    assert xp.shape[1] == wp.shape[1] == 8 and torch.count_nonzero(xp[:, 3:]) == 0
    xp[:, :3] = x   # same data in the real channels: the padded conv must give the same answer
    torch.testing.assert_close(padded(), plain(), rtol=0, atol=1e-12)


def test_script_writes_per_layer_json_on_cpu(tmp_path):
    out = tmp_path / "conv.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--config", "demo", "--batch", "1",
                           "--iters", "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    layers = data["layers"]
    assert len(layers) > 10 and [x["ms"] for x in layers] == sorted((x["ms"] for x in layers), reverse=True)
    assert abs(sum(x["share"] for x in layers) - 1.0) < 1e-2
    assert data["total_gflop"] > 0 and set(data["first_conv_padded_ms"]) == {"3", "4", "8", "16"}
