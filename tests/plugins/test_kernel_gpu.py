"""The CUDA kernel on a GPU (through ctypes) vs the torch op vs the NumPy reference; skipped without CUDA.

The full-size check (batch 64, C=512, timings) is bench/gpu_kernel_check.py; these are small and quick.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fgdeploy.ops  # noqa: F401  registers torch.ops.fgdeploy.coordinate_transfer
from fgdeploy.native.kernels import KernelLibrary, compare_to_reference
from fgdeploy.reference.coordinate_transfer import coordinate_transfer as reference
from fgdeploy.reference.coordinate_transfer import make_coordinate_transfer_inputs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: CUDA kernel tests skipped"),
]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", [(4, 15, (10, 10), 512, (32, 32)), (3, 5, (7, 9), 37, (5, 13)),
                                   (2, 15, (12, 12), 64, (12, 12))])
def test_cuda_kernel_matches_reference_and_torch_op(kernel_lib: KernelLibrary, shape: tuple, dtype: str) -> None:
    n, p, hh, c, fh = shape
    heat, feat = make_coordinate_transfer_inputs(np.random.default_rng(n * p), n, p, hh, c, fh, np.dtype(dtype))
    feat[feat == 0] = 0.5
    heat64, feat64 = heat.astype(np.float64), feat.astype(np.float64)
    h, f = torch.from_numpy(heat).cuda(), torch.from_numpy(feat).cuda()
    for window in (1, 3, 5):
        scale = reference(heat64, np.abs(feat64), window, 1)
        for mode in (0, 1):
            got = kernel_lib.forward(h, f, window, mode)
            assert got.dtype == f.dtype and tuple(got.shape) == (n, p, c)
            got_np = got.cpu().numpy()
            exact = compare_to_reference(got_np, reference(heat64, feat64, window, mode), scale, dtype, mode)
            assert exact["passed"], (window, mode, exact)
            torch_out = torch.ops.fgdeploy.coordinate_transfer(h, f, window, mode).cpu().numpy()
            assert compare_to_reference(got_np, torch_out, scale, dtype, mode)["passed"]
            assert np.array_equal(got_np, kernel_lib.forward_host(heat, feat, window, mode))  # same code on CPU


def test_cuda_kernel_is_deterministic_and_fills_out(kernel_lib: KernelLibrary) -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    heat = torch.rand(8, 15, 10, 10, device="cuda", generator=g) + 0.1
    feat = torch.rand(8, 256, 32, 32, device="cuda", generator=g) + 0.1
    first = kernel_lib.forward(heat, feat, 3, 1)
    out = torch.full_like(first, 7.0)
    kernel_lib.forward(heat, feat, 3, 1, out=out)
    assert torch.equal(first, out)
    with pytest.raises(RuntimeError, match="window must be odd"):
        kernel_lib.forward(heat, feat, 2, 0)
