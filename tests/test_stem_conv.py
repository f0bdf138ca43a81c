"""The Triton stem kernel (conv1_1 + bias + ReLU, ``fgdeploy.stem_conv``) against ``relu(conv2d)``.

On a GPU the kernel runs natively; without one it runs in Triton's interpreter (``TRITON_INTERPRET=1``,
set in a subprocess so this process's Triton is untouched). Skipped where Triton is not installed
(CPU-only torch builds do not ship it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fgdeploy.stem_conv import patch_weight, triton_available

needs_triton = pytest.mark.skipif(not triton_available(), reason="Triton is not installed (CPU-only torch build); "
                                  "pip install triton to run the stem kernel in its interpreter")


def test_patch_weight_rows_are_tap_major_then_channel():
    w = torch.randn(4, 3, 3, 3)
    rows = patch_weight(w)
    assert rows.shape == (32, 4) and rows[27:].abs().sum() == 0
    for dy in range(3):
        for dx in range(3):
            for c in range(3):
                assert torch.equal(rows[(dy * 3 + dx) * 3 + c], w[:, c, dy, dx])


def test_stem_op_on_cpu_is_conv_then_relu():
    torch.manual_seed(1)
    x, w, b = torch.randn(2, 3, 6, 7), torch.randn(16, 3, 3, 3), torch.randn(16)
    got = torch.ops.fgdeploy.stem_conv_relu(x, w, b, True)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, torch.relu(torch.nn.functional.conv2d(x, w, b, padding=1)))


_INTERPRETED = textwrap.dedent("""
    import torch
    from fgdeploy.stem_conv import launch, patch_weight
    torch.manual_seed(0)
    worst = 0.0
    # 2 x 9 x 13 = 234 pixels: a partial last block; non-square so a swapped axis fails; both layouts
    for fmt in (torch.channels_last, torch.contiguous_format):
        x = (torch.randn(2, 3, 9, 13) * 2).contiguous(memory_format=fmt)
        w, b = torch.randn(16, 3, 3, 3), torch.randn(16)
        want = torch.relu(torch.nn.functional.conv2d(x, w, b, padding=1))
        assert (want[..., 0, :] > 0).any() and (want[..., :, -1] > 0).any() and (want == 0).any()
        out = torch.full_like(want, float("nan")).contiguous(memory_format=fmt)
        launch(x, patch_weight(w), b, out)
        worst = max(worst, (out - want).abs().max().item())
    print(worst)
""")


@needs_triton
def test_stem_kernel_in_triton_interpreter_equals_conv_relu_at_every_pixel():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", _INTERPRETED], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_stem_kernel_on_cuda_equals_cudnn(dtype):
    torch.manual_seed(2)
    x = torch.randn(3, 3, 37, 50, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 3, 3, 3, device="cuda", dtype=dtype)
    b = torch.randn(64, device="cuda", dtype=dtype)
    want = torch.relu(torch.nn.functional.conv2d(x.float(), w.float(), b.float(), padding=1))
    got = torch.ops.fgdeploy.stem_conv_relu(x, w, b, True)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    tol = 2e-2 if dtype == torch.float16 else 1e-4
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)
