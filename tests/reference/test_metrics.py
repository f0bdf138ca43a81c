"""PCK against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from fgdeploy.reference.metrics import mean_pck, pck


def test_pck_hand_computed_per_part_and_mean():
    # Two images, three parts. Image 0 box 100 x 50 (normaliser 100), image 1 box 20 x 40 (normaliser 40).
    gt = np.array([[[10.0, 10.0], [50.0, 20.0], [0.0, 0.0]],
                   [[5.0, 5.0], [30.0, 30.0], [7.0, 7.0]]])
    pred = gt.copy()
    pred[0, 0] += [3.0, 4.0]   # distance 5   -> correct iff 5 <= a * 100
    pred[0, 1] += [0.0, 9.0]   # distance 9   -> correct iff 9 <= a * 100
    pred[0, 2] += [100.0, 0]   # invisible: ignored
    pred[1, 0] += [1.2, 1.6]   # distance 2   -> correct iff 2 <= a * 40
    pred[1, 1] += [0.0, 4.0]   # distance 4   -> correct iff 4 <= a * 40
    pred[1, 2] += [0.0, 0.0]   # distance 0 but invisible: part 2 never visible -> NaN
    visible = np.array([[True, True, False], [True, True, False]])
    bbox = np.array([[0.0, 0.0, 100.0, 50.0], [10.0, 10.0, 30.0, 50.0]])
    table = pck(pred, gt, visible, bbox, [0.04, 0.05, 0.1])
    assert table.shape == (3, 3)
    # a = 0.04: thresholds 4 and 1.6 -> part0: [5>4, 2>1.6] 0/2; part1: [9>4, 4>1.6] 0/2
    # a = 0.05: thresholds 5 and 2   -> part0: [5<=5, 2<=2] 2/2; part1: [9>5, 4>2] 0/2
    # a = 0.10: thresholds 10 and 4  -> part0: 2/2; part1: [9<=10, 4<=4] 2/2
    np.testing.assert_array_equal(table[:, :2], [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    assert np.all(np.isnan(table[:, 2]))
    np.testing.assert_array_equal(mean_pck(table), [0.0, 0.5, 1.0])


def test_pck_counts_only_visible_keypoints():
    gt = np.zeros((4, 1, 2)) + 50
    pred = gt + np.array([[[0.0, 1.0]], [[0.0, 30.0]], [[0.0, 30.0]], [[0.0, 1.0]]])
    visible = np.array([[True], [True], [False], [False]])
    bbox = np.tile([0.0, 0.0, 100.0, 100.0], (4, 1))
    assert pck(pred, gt, visible, bbox, [0.1])[0, 0] == 0.5


def test_pck_rejects_bad_shapes():
    with pytest.raises(ValueError, match="bbox must be"):
        pck(np.zeros((2, 3, 2)), np.zeros((2, 3, 2)), np.ones((2, 3), bool), np.zeros((2, 5)), [0.1])
