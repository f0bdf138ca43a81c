"""Torch implementations vs the NumPy reference (float64, 1e-10): CoordinateTransfer, keypoint loss, RM pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fgdeploy.models.compact_bilinear import L2_EPS, SIGNED_SQRT_EPS, CompactBilinearRM
from fgdeploy.models.losses import keypoint_bce_loss, keypoint_targets
from fgdeploy.ops import coordinate_transfer
from fgdeploy.reference import compact_bilinear as ref_cbp
from fgdeploy.reference import create_layer
from fgdeploy.reference.coordinate_transfer import make_coordinate_transfer_inputs
from fgdeploy.reference.keypoint_loss import keypoint_targets as ref_keypoint_targets

torch.set_num_threads(2)
TOL = 1e-10

# (batch, parts, heatmap (Hh, Wh), channels, features (Hf, Wf))
CT_SHAPES = [
    pytest.param(1, 15, (10, 10), 3, (32, 32), id="paper-grid-b1"),
    pytest.param(7, 15, (9, 7), 2, (4, 5), id="heat-finer-than-features-b7"),
    pytest.param(7, 4, (3, 5), 3, (8, 6), id="heat-coarser-b7"),
    pytest.param(2, 15, (6, 6), 2, (1, 2), id="tiny-feature-grid"),
]


def _ct_pair(window, mode, heat, feats):
    """Reference and torch outputs/gradients for one random output gradient."""
    layer = create_layer("CoordinateTransfer", window=window, mode=mode)
    (ref_out,) = layer.forward([heat, feats])
    top = np.random.default_rng(99).standard_normal(ref_out.shape)
    ref_grad = layer.backward([top], [heat, feats])[1]
    h = torch.from_numpy(heat)
    f = torch.from_numpy(feats).requires_grad_(True)
    out = coordinate_transfer(h, f, window, mode)
    out.backward(torch.from_numpy(top))
    return ref_out, ref_grad, out.detach().numpy(), f.grad.numpy()


@pytest.mark.parametrize("window", [1, 3, 5])
@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize(("n", "p", "heat_hw", "c", "feat_hw"), CT_SHAPES)
def test_coordinate_transfer_torch_matches_reference_and_gradchecks(window, mode, n, p, heat_hw, c, feat_hw):
    rng = np.random.default_rng(hash((window, mode, n, p, heat_hw, feat_hw)) % 2**32)
    heat, feats = make_coordinate_transfer_inputs(rng, n, p, heat_hw, c, feat_hw)
    ref_out, ref_grad, out, grad = _ct_pair(window, mode, heat, feats)
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=TOL)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=TOL)
    if n * c * feat_hw[0] * feat_hw[1] <= 400:  # numeric Jacobians of the big grids take too long
        f = torch.from_numpy(feats).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x: coordinate_transfer(torch.from_numpy(heat), x, window, mode), (f,))


@pytest.mark.parametrize("window", [1, 3, 5])
def test_coordinate_transfer_feature_ties_send_gradient_to_the_same_cell(window):
    rng = np.random.default_rng(window)
    heat, feats = make_coordinate_transfer_inputs(rng, 7, 15, (5, 5), 4, (6, 7), feature_ties=True)
    ref_out, ref_grad, out, grad = _ct_pair(window, 0, heat, feats)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=TOL)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_coordinate_transfer_low_precision_matches_reference(dtype):
    rng = np.random.default_rng(5)
    heat, feats = make_coordinate_transfer_inputs(rng, 3, 15, (8, 8), 4, (10, 10), dtype=dtype)
    for mode in (0, 1):
        ref = create_layer("CoordinateTransfer", window=3, mode=mode).forward([heat, feats])[0]
        out = coordinate_transfer(torch.from_numpy(heat), torch.from_numpy(feats), 3, mode).numpy()
        assert out.dtype == ref.dtype == dtype
        if mode == 0:
            np.testing.assert_array_equal(out, ref)
        else:
            np.testing.assert_allclose(out, ref, rtol=1e-3 if dtype == np.float16 else 1e-6, atol=1e-6)


@pytest.mark.parametrize("pos_weight", [None, 3.0])
def test_keypoint_loss_torch_matches_reference(pos_weight):
    rng = np.random.default_rng(6)
    uv = rng.uniform(0, 64, size=(7, 15, 2))
    visible = rng.random((7, 15)) > 0.25
    targets = keypoint_targets(torch.from_numpy(uv), torch.from_numpy(visible), (9, 11), 64, dtype=torch.float64)
    ref_targets = ref_keypoint_targets(uv, visible, (9, 11), 64)
    np.testing.assert_array_equal(targets.numpy(), ref_targets)
    logits = rng.standard_normal((7, 15, 9, 11)) * 4
    layer = create_layer("KeypointSigmoidCrossEntropy", pos_weight=pos_weight)
    (ref_loss,) = layer.forward([logits, ref_targets])
    ref_grad = layer.backward([np.array(0.7)], [logits, ref_targets])[0]
    z = torch.from_numpy(logits).requires_grad_(True)
    loss = keypoint_bce_loss(z, targets, pos_weight=pos_weight)
    (0.7 * loss).backward()
    assert abs(loss.item() - float(ref_loss)) <= TOL
    np.testing.assert_allclose(z.grad.numpy(), ref_grad, rtol=0, atol=TOL)


@pytest.mark.parametrize("hw", [(2, 3), (5, 6)])  # projection path (HW <= C) and Gram path (HW > C)
def test_compact_bilinear_torch_matches_reference(hw):
    assert (SIGNED_SQRT_EPS, L2_EPS) == (ref_cbp.EPS_SQRT, ref_cbp.EPS_L2)
    module = CompactBilinearRM(8, 50, seed=7).double()
    layer = create_layer("CompactBilinearRM", w1=module.w1.numpy(), w2=module.w2.numpy())
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 8) + hw)
    x[0] = np.abs(x[0])  # non-negative, like ReLU features
    (ref_out,) = layer.forward([x])
    top = rng.standard_normal(ref_out.shape)
    (ref_grad,) = layer.backward([top], [x])
    xt = torch.from_numpy(x).requires_grad_(True)
    out = module(xt)
    out.backward(torch.from_numpy(top))
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=0, atol=TOL)
    np.testing.assert_allclose(xt.grad.numpy(), ref_grad, rtol=0, atol=TOL)


@pytest.mark.parametrize("seed", range(6))
def test_coordinate_transfer_random_shapes_match_reference(seed):
    rng = np.random.default_rng(1000 + seed)
    n, p, c = int(rng.integers(1, 8)), int(rng.integers(1, 16)), int(rng.integers(1, 4))
    heat_hw = tuple(int(v) for v in rng.integers(1, 13, size=2))
    feat_hw = tuple(int(v) for v in rng.integers(1, 9, size=2))
    window, mode = int(rng.choice([1, 3, 5, 7])), int(rng.integers(0, 2))
    heat, feats = make_coordinate_transfer_inputs(rng, n, p, heat_hw, c, feat_hw)
    ref_out, ref_grad, out, grad = _ct_pair(window, mode, heat, feats)
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=TOL)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=TOL)
    f = torch.from_numpy(feats[:2]).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: coordinate_transfer(torch.from_numpy(heat[:2]), x, window, mode), (f,))
