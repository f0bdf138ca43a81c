"""CoordinateTransfer on CUDA (skipped without a GPU): reference parity, low precision, inductor compile.

Run on a GPU machine with ``python -m pytest -q -m gpu tests/ops``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fgdeploy.ops import coordinate_transfer
from fgdeploy.reference import create_layer
from fgdeploy.reference.coordinate_transfer import make_coordinate_transfer_inputs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("window", [1, 3, 5])
@pytest.mark.parametrize("mode", [0, 1])
def test_cuda_float64_matches_reference(window, mode):
    rng = np.random.default_rng(window + 10 * mode)
    heat, feats = make_coordinate_transfer_inputs(rng, 7, 15, (9, 7), 3, (5, 6), feature_ties=(mode == 0))
    layer = create_layer("CoordinateTransfer", window=window, mode=mode)
    (ref,) = layer.forward([heat, feats])
    top = rng.standard_normal(ref.shape)
    ref_grad = layer.backward([top], [heat, feats])[1]
    f = torch.from_numpy(feats).cuda().requires_grad_(True)
    out = coordinate_transfer(torch.from_numpy(heat).cuda(), f, window, mode)
    out.backward(torch.from_numpy(top).cuda())
    np.testing.assert_allclose(out.detach().cpu().numpy(), ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(f.grad.cpu().numpy(), ref_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", [0, 1])
def test_cuda_model_sized_batch_matches_cpu(dtype, mode):
    g = torch.Generator().manual_seed(0)
    heat = torch.randn(64, 15, 32, 32, generator=g).to(dtype)
    feats = torch.randn(64, 512, 32, 32, generator=g).to(dtype)
    grad = torch.randn(64, 15, 512, generator=g).to(dtype)
    outs, grads = [], []
    for device in ("cpu", "cuda"):
        f = feats.to(device).detach().requires_grad_(True)  # a fresh leaf on each device
        out = coordinate_transfer(heat.to(device), f, 3, mode)
        out.backward(grad.to(device))
        outs.append(out.detach().cpu().double())
        grads.append(f.grad.cpu().double())
    tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(outs[1], outs[0], rtol=tol, atol=tol)
    torch.testing.assert_close(grads[1], grads[0], rtol=tol, atol=tol)


def test_cuda_inductor_compile_fullgraph_matches_eager():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).cuda()

    def fn(heat: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return coordinate_transfer(heat, torch.relu(conv(image)), 3, 0).flatten(1)

    heat, image = torch.randn(4, 15, 10, 10, device="cuda"), torch.randn(4, 3, 32, 32, device="cuda")
    compiled = torch.compile(fn, fullgraph=True)
    out_c, out_e = compiled(heat, image), fn(heat, image)
    torch.testing.assert_close(out_c, out_e)
    (g_c,) = torch.autograd.grad(out_c.square().sum(), conv.weight)
    (g_e,) = torch.autograd.grad(out_e.square().sum(), conv.weight)
    torch.testing.assert_close(g_c, g_e)
