"""bench/gpu_kernel_check.py's checking logic, run on the CPU with the kernel's host path standing in.

The script itself needs a GPU (one prepared run on the device machine); this makes sure its input
generation, three-way comparison, tolerances and summary work before that single run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

import fgdeploy.ops  # noqa: F401  registers torch.ops.fgdeploy.coordinate_transfer
from fgdeploy.native.kernels import KernelLibrary

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_kernel_check.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_kernel_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class HostStandIn:
    """``forward`` on CPU tensors through the kernel library's host path (optionally corrupted)."""

    def __init__(self, lib: KernelLibrary, corrupt: bool = False) -> None:
        self.lib, self.corrupt = lib, corrupt

    def forward(self, heat: torch.Tensor, feat: torch.Tensor, window: int, mode: int) -> torch.Tensor:
        out = torch.from_numpy(self.lib.forward_host(heat.numpy(), feat.numpy(), window, mode))
        if self.corrupt and mode == 1:
            out[0, 0, 0] = out[0, 0, 0] * (1 + 1e-3)
        return out


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return _load_script()


def _small_configs(script: ModuleType) -> list[Any]:
    return [c for c in script.CONFIGS if c[0] in ("odd-shapes", "same-grid")]


def test_script_checks_pass_for_the_kernel_code_and_cover_borders(script: ModuleType,
                                                                  kernel_lib: KernelLibrary) -> None:
    torch.set_num_threads(2)
    rows = script.run_checks(HostStandIn(kernel_lib), seed=0, configs=_small_configs(script), device="cpu")
    assert len(rows) == (4 + 3) * 2 * 2 * 3  # windows of both configs x dtypes x modes x pairs
    assert all(r["passed"] for r in rows), [r for r in rows if not r["passed"]][:3]
    assert all(r["exact_match"] for r in rows if r["mode"] == 0)
    assert sum(r["clipped_windows"] for r in rows if r["window"] == 3 and r["config"] == "same-grid") > 0
    summary = script._summary({"environment": {"gpu": "cpu", "compute_capability": "-"}, "checks": rows,
                               "misc": [], "timing": [], "passed": True, "seconds": 1.0})
    assert "numeric checks: 84/84 passed" in summary and summary.endswith("PASSED in 1.0 s")


def test_script_flags_an_average_off_by_1e3(script: ModuleType, kernel_lib: KernelLibrary) -> None:
    rows = script.run_checks(HostStandIn(kernel_lib, corrupt=True), seed=0, configs=_small_configs(script)[:1],
                             device="cpu")
    failed = {(r["pair"], r["mode"]) for r in rows if not r["passed"]}
    assert failed == {("kernel~reference", 1), ("kernel~torch", 1)}


def test_script_inputs_are_never_zero(script: ModuleType) -> None:
    heat, feat = script.make_inputs(np.random.default_rng(1), 2, 15, 8, (10, 10), (32, 32), "float16", False)
    assert heat.dtype == np.float16 and np.all(heat != 0) and np.all(feat != 0)
