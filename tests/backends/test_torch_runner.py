"""PyTorch runner on tiny modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fgdeploy.backends.base import RunnerError
from fgdeploy.backends.torch_runner import TorchRunner
from fgdeploy.export.debug_outputs import debug_heatmaps_name, debug_part_features_name
from fgdeploy.ops import coordinate_transfer


class TinyNet(nn.Module):
    """images (N, 3, 8, 8) -> heatmaps (N, 2, 4, 4), part features via the custom op, logits (N, 3)."""

    input_size = 8

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.feat = nn.Conv2d(3, 4, 3, padding=1)
        self.score = nn.Conv2d(4, 2, 2, stride=2)
        self.fc = nn.Linear(8, 3)

    @property
    def heatmap_size(self) -> tuple[int, int]:
        return (4, 4)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = torch.relu(self.feat(images))
        heat = self.score(f)
        parts = coordinate_transfer(heat, f, 3, 0)
        return {"logits": self.fc(parts.flatten(1)), "heatmaps": heat}


def _images(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 8, 8), dtype=np.float32)


def test_torch_runner_returns_named_float32_numpy_outputs():
    net = TinyNet()
    images = _images()
    with TorchRunner(net) as runner:
        assert runner.input_specs()["images"].shape == (-1, 3, 8, 8)
        out = runner.infer({"images": images})
    with torch.no_grad():
        expected = net(torch.from_numpy(images))
    assert sorted(out) == ["heatmaps", "logits"]
    assert out["logits"].dtype == np.float32 and out["logits"].shape == (2, 3)
    np.testing.assert_allclose(out["logits"], expected["logits"].numpy(), rtol=1e-6)
    assert runner.name == "torch-cpu-fp32"


def test_torch_runner_fp16_leaves_callers_module_alone():
    net = TinyNet().train()
    images = _images(3, seed=1)
    with TorchRunner(net, fp16=True, outputs=["logits"]) as runner:
        out = runner.infer({"images": images})
        assert runner.metadata()["precision"] == "fp16"
    assert next(net.parameters()).dtype == torch.float32 and net.training
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(images))["logits"].numpy()
    assert list(out) == ["logits"] and out["logits"].dtype == np.float32
    np.testing.assert_allclose(out["logits"], ref, atol=3e-2, rtol=3e-2)
    assert not np.array_equal(out["logits"], ref)  # really ran in half precision


def test_torch_runner_restores_training_mode():
    net = TinyNet().train()
    with TorchRunner(net) as runner:
        runner.infer({"images": _images()})
        assert not net.training
    assert net.training


def test_torch_runner_debug_captures_coordinate_transfer_tensors():
    net = TinyNet()
    images = _images(2, seed=3)
    with TorchRunner(net, debug=True) as runner:
        out = runner.infer({"images": images})
    np.testing.assert_array_equal(out[debug_heatmaps_name(0)], out["heatmaps"])
    with torch.no_grad():
        f = torch.relu(net.feat(torch.from_numpy(images)))
        parts = coordinate_transfer(net.score(f), f, 3, 0).numpy()
    np.testing.assert_allclose(out[debug_part_features_name(0)], parts, rtol=1e-6)


def test_torch_runner_unknown_output_and_non_dict_model_are_errors():
    with TorchRunner(TinyNet(), outputs=["keypoints"]) as runner, pytest.raises(RunnerError, match="no output"):
        runner.infer({"images": _images()})
    with TorchRunner(nn.Identity()) as runner, pytest.raises(RunnerError, match="must return a dict"):
        runner.infer({"images": _images()})


def test_torch_runner_cuda_without_gpu_is_backend_unavailable():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from fgdeploy.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="CUDA is not available"):
        TorchRunner(TinyNet(), device="cuda").activate()


def test_torch_runner_rejects_non_module_artifact():
    with pytest.raises(RunnerError, match="needs an nn.Module or a checkpoint path"):
        TorchRunner(42).activate()
