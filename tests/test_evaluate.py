"""Evaluation metrics against hand-computed cases, the mapping back to original pixels, table and grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fgdeploy.data.sample import Sample
from fgdeploy.data.transforms import EvalTransform
from fgdeploy.evaluate import Predictions, compute_metrics, format_table, predict, render_grid, unwarp_points
from fgdeploy.train.data import EvalItems

PARTS = ["a", "b", "c"]


def _preds(pred_kp, gt_kp, visible, bbox, labels=(0, 1), predicted=(0, 1), scores=None) -> Predictions:
    n = len(labels)
    return Predictions(indices=np.arange(n), labels=np.asarray(labels), predicted=np.asarray(predicted),
                       keypoints=np.asarray(pred_kp, float), scores=np.asarray(scores if scores is not None
                                                                               else np.ones((n, 3))),
                       gt_keypoints=np.asarray(gt_kp, float), gt_visible=np.asarray(visible, bool),
                       bbox=np.asarray(bbox, float))


def test_pck_matches_hand_computed_table():
    # Image 0: box 100 x 50 -> normaliser 100 (thresholds 2, 5, 8, 10 px at alpha .02 .05 .08 .10).
    # Image 1: box 20 x 80 -> normaliser 80 (thresholds 1.6, 4, 6.4, 8 px).
    gt = [[[10, 10], [20, 20], [30, 30]], [[15, 20], [20, 40], [25, 60]]]
    pred = [[[13, 14], [21, 20], [90, 90]],         # errors 5, 1, (invisible: ignored)
            [[22, 20], [20, 48.5], [25, 61.5]]]     # errors 7, 8.5, 1.5
    visible = [[1, 1, 0], [1, 1, 1]]
    bbox = [[0, 0, 100, 50], [10, 10, 30, 90]]
    res = compute_metrics(_preds(pred, gt, visible, bbox), ["x", "y"], PARTS)
    expected = {  # part a: 5 <= 5 at .05 on image 0, 7 <= 8 only at .10 on image 1
        "pck@0.02": {"a": 0.0, "b": 0.5, "c": 1.0}, "pck@0.05": {"a": 0.5, "b": 0.5, "c": 1.0},
        "pck@0.08": {"a": 0.5, "b": 0.5, "c": 1.0}, "pck@0.1": {"a": 1.0, "b": 0.5, "c": 1.0}}
    for key, parts in expected.items():
        for part, value in parts.items():
            assert res.pck[key][part] == pytest.approx(value), (key, part)
        assert res.pck[key]["mean"] == pytest.approx(np.mean(list(parts.values())))
    assert res.pck_counts == {"a": 2, "b": 2, "c": 1}
    assert "83.3" in format_table(res, PARTS)  # mean PCK@0.1 = (1 + 0.5 + 1) / 3


def test_pck_part_never_visible_is_nan_and_left_out_of_the_mean():
    gt = np.zeros((1, 3, 2)) + 10
    pred = gt + [[[0, 1], [0, 50], [0, 0]]]
    res = compute_metrics(_preds(pred, gt, [[1, 1, 0]], [[0, 0, 100, 100]], labels=(0,), predicted=(0,)),
                          ["x"], PARTS)
    assert np.isnan(res.pck["pck@0.1"]["c"])
    assert res.pck["pck@0.1"]["mean"] == pytest.approx(0.5)
    assert res.to_json()["pck"]["pck@0.1"]["a"] == 1.0


def test_accuracy_top1_and_mean_per_class():
    n = 4
    kp = np.zeros((n, 3, 2))
    res = compute_metrics(_preds(kp, kp, np.ones((n, 3)), [[0, 0, 10, 10]] * n, labels=(0, 0, 0, 1),
                                 predicted=(0, 0, 0, 0), scores=np.full((n, 3), 0.2)), ["x", "y"], PARTS)
    assert res.top1 == pytest.approx(0.75)
    assert res.mean_class_acc == pytest.approx(0.5)  # (3/3 + 0/1) / 2
    assert res.per_class_acc == {"x": 1.0, "y": 0.0}
    assert res.visibility_acc == 0.0  # all GT visible, all predicted invisible (score < 0.5)


def test_unwarp_points_inverts_scale_and_flip():
    affine = np.array([[[0.5, 0, 0], [0, 2.0, 0]], [[-1.0, 0, 64], [0, 1.0, 0]]])
    uv = np.array([[[10.0, 10.0]], [[4.0, 7.0]]])
    np.testing.assert_allclose(unwarp_points(uv, affine), [[[20.0, 5.0]], [[60.0, 7.0]]])


class _FixedModel(nn.Module):
    """Predicts every part at input pixel (48, 16) and class 1."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        n = images.shape[0]
        kp = torch.tensor([48.0, 16.0]).expand(n, 3, 2)
        return {"logits": torch.tensor([[0.0, 1.0]]).expand(n, 2), "keypoints": kp,
                "keypoint_scores": torch.full((n, 3), 0.9)}


def _sample(h: int, w: int, seed: int) -> Sample:
    rng = np.random.default_rng(seed)
    kp = np.array([[w * 0.75, h * 0.25], [1.0, 1.0], [w / 2, h / 2]], np.float32)
    return Sample(image=rng.integers(0, 255, (h, w, 3), dtype=np.uint8), keypoints=kp,
                  visible=np.array([True, True, False]), bbox=np.array([0, 0, w, h], np.float32), label=1,
                  image_id=seed + 1, path=f"x/{seed}.jpg", orig_size=(h, w))


def test_predict_maps_keypoints_back_to_original_pixels_and_grid_renders():
    samples = [_sample(100, 200, 0), _sample(64, 32, 1)]
    items = EvalItems(samples, EvalTransform(64))
    preds = predict(_FixedModel(), items, [0, 1], "cpu", batch_size=1)
    # (48, 16) on the 64 x 64 input = (0.75 W, 0.25 H) of each original image.
    np.testing.assert_allclose(preds.keypoints[0, 0], [150.0, 25.0], atol=1e-4)
    np.testing.assert_allclose(preds.keypoints[1, 0], [24.0, 16.0], atol=1e-4)
    np.testing.assert_allclose(preds.gt_keypoints[0, 0], [150.0, 25.0])
    res = compute_metrics(preds, ["x", "y"], PARTS)
    assert res.top1 == 1.0 and res.pck["pck@0.02"]["a"] == 1.0 and res.pck["pck@0.1"]["b"] == 0.0
    grid = render_grid(preds, samples, ["x", "y"], PARTS, cols=2, tile=64)
    assert grid.ndim == 3 and grid.shape[2] == 3 and grid.shape[1] > 2 * 2 * 64
    assert grid.std() > 0
