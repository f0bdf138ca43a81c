"""Torch keypoint decoding mirrors fgdeploy.geometry and takes the first maximum."""

from __future__ import annotations

import numpy as np
import torch

from fgdeploy.geometry import cell_to_point as np_cell_to_point
from fgdeploy.geometry import point_to_cell
from fgdeploy.models.keypoints import cell_to_point, decode_keypoints, heatmap_argmax


def test_cell_to_point_matches_geometry_on_non_square_grid():
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 7, (4, 15), generator=g)
    cols = torch.randint(0, 13, (4, 15), generator=g)
    got = cell_to_point(rows, cols, (7, 13), 160).numpy()
    want = np_cell_to_point(np.stack([rows.numpy(), cols.numpy()], -1), (7, 13), 160)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_decode_returns_argmax_cell_centre_and_sigmoid_of_max():
    g = torch.Generator().manual_seed(1)
    heatmaps = torch.randn(3, 15, 40, 40, generator=g)
    keypoints, scores = decode_keypoints(heatmaps, 160)
    flat = heatmaps.flatten(2).numpy()
    idx = flat.argmax(-1)
    ij = np.stack([idx // 40, idx % 40], -1)
    np.testing.assert_allclose(keypoints.numpy(), np_cell_to_point(ij, (40, 40), 160), rtol=1e-6)
    np.testing.assert_allclose(scores.numpy(), 1 / (1 + np.exp(-flat.max(-1))), rtol=1e-6)
    # A decoded point falls back into its own cell (the training-target mapping).
    np.testing.assert_array_equal(point_to_cell(keypoints.numpy(), (40, 40), 160), ij)


def test_argmax_ties_take_first_maximum_in_row_major_order():
    heatmaps = torch.rand(1, 2, 5, 6) - 2.0
    heatmaps[0, 0, 3, 1] = 1.0
    heatmaps[0, 0, 1, 4] = 1.0  # earlier in row-major order: wins
    heatmaps[0, 1, 2, 2] = 1.0
    heatmaps[0, 1, 2, 5] = 1.0
    rows, cols, value = heatmap_argmax(heatmaps)
    assert rows.tolist() == [[1, 2]] and cols.tolist() == [[4, 2]]
    assert value.tolist() == [[1.0, 1.0]]
