"""Keypoint targets and the sigmoid cross-entropy loss (torch side; parity with NumPy in tests/reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fgdeploy.geometry import point_to_cell
from fgdeploy.models.losses import keypoint_bce_loss, keypoint_targets


def test_keypoint_targets_one_positive_per_visible_part_at_the_geometry_cell():
    rng = np.random.default_rng(0)
    uv = rng.uniform(-5, 505, size=(4, 15, 2))
    uv[0, 0] = [499.999, 0.0]  # right edge -> last column
    uv[0, 1] = [125.0, 49.999]  # u exactly on a cell boundary (125 * 12 / 500 = 3)
    visible = rng.random((4, 15)) > 0.3
    t = keypoint_targets(torch.from_numpy(uv), torch.from_numpy(visible), (10, 12), 500)
    assert t.shape == (4, 15, 10, 12) and t.dtype == torch.float32
    ij = point_to_cell(uv, (10, 12), 500)
    for n in range(4):
        for p in range(15):
            expected = np.zeros((10, 12), np.float32)
            if visible[n, p]:
                expected[ij[n, p, 0], ij[n, p, 1]] = 1
            np.testing.assert_array_equal(t[n, p].numpy(), expected)
    if visible[0, 1]:
        assert t[0, 1, 0, 3] == 1


def test_keypoint_bce_loss_hand_computed():
    logits = torch.tensor([[[[2.0, -1.0]], [[0.5, 3.0]]]])  # (1, 2, 1, 2)
    targets = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]]])
    sp = lambda z: math.log1p(math.exp(z))  # noqa: E731  softplus
    expected = (sp(-2.0) + sp(-1.0) + sp(0.5) + sp(3.0)) / 2  # mean over N * P = 2
    assert keypoint_bce_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    weighted = (3 * sp(-2.0) + sp(-1.0) + sp(0.5) + sp(3.0)) / 2
    assert keypoint_bce_loss(logits, targets, pos_weight=3.0).item() == pytest.approx(weighted, rel=1e-6)


def test_keypoint_bce_loss_is_stable_for_large_logits_and_gradchecks():
    logits = torch.tensor([[[[300.0, -300.0]]]], dtype=torch.float64)
    loss = keypoint_bce_loss(logits, torch.tensor([[[[1.0, 0.0]]]], dtype=torch.float64))
    assert torch.isfinite(loss) and loss.item() < 1e-100
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    t = (torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64) > 0.9).double()
    assert torch.autograd.gradcheck(lambda x: keypoint_bce_loss(x, t, pos_weight=2.0), (z,))


def test_keypoint_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="must both be"):
        keypoint_bce_loss(torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 4))
    with pytest.raises(ValueError, match="visible must be"):
        keypoint_targets(torch.rand(2, 15, 2), torch.ones(2, 14), (10, 10), 500)
