"""The ctypes kernel library: its C ABI and the kernel's per-element code, run on the CPU (host path).

The host path runs the same ``__host__ __device__`` functions as the CUDA kernel (argmax order, centre
mapping, window clipping, max / Kahan average, half conversions); only the warp-parallel argmax differs.
It is compared with the float64 NumPy reference and the torch op. GPU runs: test_kernel_gpu.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fgdeploy.ops  # noqa: F401  registers torch.ops.fgdeploy.coordinate_transfer
from fgdeploy.native.kernels import KERNEL_ABI_VERSION, KernelLibrary, compare_to_reference
from fgdeploy.reference.coordinate_transfer import coordinate_transfer as reference
from fgdeploy.reference.coordinate_transfer import make_coordinate_transfer_inputs

torch.set_num_threads(2)

SHAPES = [  # (N, P, (Hh, Wh), C, (Hf, Wf))
    (2, 15, (10, 10), 24, (32, 32)),   # the model's grids, small C
    (3, 5, (7, 9), 37, (5, 13)),       # odd sizes; window 7 exceeds the 5 rows
    (2, 15, (12, 12), 8, (12, 12)),    # same grid: border cells map to border cells (clipping at window 3)
]


def _inputs(seed: int, shape: tuple, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    n, p, hh, c, fh = shape
    heat, feat = make_coordinate_transfer_inputs(np.random.default_rng(seed), n, p, hh, c, fh, np.dtype(dtype), True)
    feat[feat == 0] = 0.5
    return heat, feat


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_host_path_matches_reference_and_torch_op(kernel_lib: KernelLibrary, shape: tuple, dtype: str) -> None:
    heat, feat = _inputs(sum(shape[:2]), shape, dtype)
    heat64, feat64 = heat.astype(np.float64), feat.astype(np.float64)
    for window in (1, 3, 5, 7):
        scale = reference(heat64, np.abs(feat64), window, 1)
        for mode in (0, 1):
            got = kernel_lib.forward_host(heat, feat, window, mode)
            assert got.dtype == np.dtype(dtype) and got.shape == (shape[0], shape[1], shape[3])
            exact = compare_to_reference(got, reference(heat64, feat64, window, mode), scale, dtype, mode)
            assert exact["passed"], (window, mode, exact)
            torch_out = torch.ops.fgdeploy.coordinate_transfer(torch.from_numpy(heat), torch.from_numpy(feat),
                                                               window, mode).numpy()
            vs_torch = compare_to_reference(got, torch_out, scale, dtype, mode)
            assert vs_torch["passed"], (window, mode, vs_torch)
            if mode == 0:
                assert exact["exact_match"] and vs_torch["exact_match"]


def test_kernel_tie_and_nan_rules(kernel_lib: KernelLibrary) -> None:
    feat = (np.arange(1, 1 + 2 * 8 * 8, dtype=np.float32).reshape(1, 2, 8, 8)) * np.array([1, -1], np.float32)[:, None,
                                                                                                               None]
    heat = np.full((1, 3, 8, 8), -1.0, dtype=np.float32)
    heat[0, 0, 5, 6] = heat[0, 0, 2, 7] = heat[0, 0, 7, 0] = 2.0  # tie: first in row-major order is (2, 7)
    heat[0, 1, 4, 4] = 9.0
    heat[0, 1, 1, 1] = np.nan                                      # NaN counts as the maximum (torch.argmax)
    heat[0, 2] = -np.inf                                           # all -inf: cell (0, 0)
    out = kernel_lib.forward_host(heat, feat, 1, 0)
    assert out[0, :, 0].tolist() == [feat[0, 0, 2, 7], feat[0, 0, 1, 1], feat[0, 0, 0, 0]]
    torch_out = torch.ops.fgdeploy.coordinate_transfer(torch.from_numpy(heat), torch.from_numpy(feat), 1, 0)
    assert np.array_equal(out, torch_out.numpy())


def test_kernel_average_divides_by_valid_cells_in_fp32(kernel_lib: KernelLibrary) -> None:
    feat = np.arange(1, 1 + 4 * 5, dtype=np.float32).reshape(1, 1, 4, 5)
    heat = np.zeros((1, 2, 4, 5), dtype=np.float32) - 1
    heat[0, 0, 0, 0] = 1.0  # corner: window 3 keeps cells 1, 2, 6, 7 -> 4.0
    heat[0, 1, 2, 2] = 1.0  # interior: rows 1..3, cols 1..3 -> 13.0
    assert kernel_lib.forward_host(heat, feat, 3, 1)[0, :, 0].tolist() == [4.0, 13.0]


@pytest.mark.parametrize("window, mode, dims, message", [
    (4, 0, (1, 1, 1, 2, 2, 2, 2), "window must be odd"),
    (0, 0, (1, 1, 1, 2, 2, 2, 2), "window must be odd"),
    (3, 2, (1, 1, 1, 2, 2, 2, 2), "mode must be 0"),
    (3, 0, (1, 1, 1, 0, 2, 2, 2), "spatial sizes"),
    (3, 0, (-1, 1, 1, 2, 2, 2, 2), "batch, parts and channels"),
])
def test_kernel_launcher_rechecks_arguments(kernel_lib: KernelLibrary, window: int, mode: int, dims: tuple,
                                            message: str) -> None:
    assert message in (kernel_lib.check_args(8, 8, 8, dims, window, mode) or "")
    # The launcher refuses before touching CUDA: cudaErrorInvalidValue (1) even without a GPU.
    assert kernel_lib.launch("float32", 8, 8, 8, dims, window, mode) == 1
    assert kernel_lib.error_string(1) == "invalid argument"


def test_kernel_launcher_rejects_null_pointers_but_allows_empty_batch(kernel_lib: KernelLibrary) -> None:
    dims = (2, 15, 16, 10, 10, 32, 32)
    assert "non-null" in (kernel_lib.check_args(0, 8, 8, dims, 3, 0) or "")
    assert kernel_lib.check_args(0, 0, 0, (0, *dims[1:]), 3, 0) is None
    assert kernel_lib.launch("float32", 0, 0, 0, (0, *dims[1:]), 3, 0) == 0  # nothing to launch


def test_kernel_library_abi_and_dtype_checks(kernel_lib: KernelLibrary) -> None:
    assert kernel_lib._lib.fgdeploy_ct_abi_version() == KERNEL_ABI_VERSION
    with pytest.raises(ValueError, match="float32 or float16"):
        kernel_lib.forward_host(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)))  # float64
    with pytest.raises(ValueError, match="window must be odd"):
        kernel_lib.forward_host(np.ones((1, 1, 2, 2), np.float32), np.ones((1, 1, 2, 2), np.float32), 2)
    with pytest.raises(ValueError, match="dtype must be one of"):
        kernel_lib.launch("bfloat16", 8, 8, 8, (1, 1, 1, 1, 1, 1, 1), 3, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error path")
def test_kernel_launch_without_gpu_reports_cuda_error(kernel_lib: KernelLibrary) -> None:
    code = kernel_lib.launch("float32", 8, 8, 8, (1, 1, 1, 2, 2, 2, 2), 3, 0)
    assert code not in (0, 1)  # not success, not an argument error: CUDA itself is missing
    assert kernel_lib.error_string(code)
