"""Cell mapping (docs/method.md sections 2 and 4a)."""

import numpy as np

from fgdeploy.geometry import cell_to_point, heatmap_cell_to_feature_cell, point_to_cell


def test_point_to_cell_paper_grid_and_clamping():
    # 500 px input, 10x10 grid: 50 px cells; u is the column, v the row.
    uv = np.array([[0.0, 0.0], [49.99, 50.0], [499.9, 250.0], [600.0, -3.0]])
    ij = point_to_cell(uv, (10, 10), 500)
    np.testing.assert_array_equal(ij, [[0, 0], [1, 0], [5, 9], [0, 9]])


def test_cell_centre_round_trips_to_same_cell():
    rng = np.random.default_rng(0)
    ij = np.stack([rng.integers(0, 7, 50), rng.integers(0, 13, 50)], axis=-1)
    uv = cell_to_point(ij, (7, 13), 500)
    np.testing.assert_array_equal(point_to_cell(uv, (7, 13), 500), ij)


def test_heatmap_to_feature_centre_integer_rule():
    # 10x10 heatmap onto 32x32 features: cy = ((2i+1)*32) // 20
    ij = np.array([[0, 0], [9, 9], [4, 5]])
    c = heatmap_cell_to_feature_cell(ij, (10, 10), (32, 32))
    np.testing.assert_array_equal(c, [[1, 1], [30, 30], [14, 17]])
