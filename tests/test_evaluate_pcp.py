"""Head/body PCP in eval (docs/method.md 12 (a)): boxes mapped back to original pixels, ground truth by the section 7
rule, table/JSON/summary entries, and the grid drawing both boxes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from fgdeploy.data.sample import Sample
from fgdeploy.data.transforms import EvalTransform
from fgdeploy.evaluate import Predictions, compute_metrics, format_table, predict, render_grid, unwarp_boxes
from fgdeploy.models import PartNetsConfig
from fgdeploy.reference.part_boxes import part_boxes
from fgdeploy.tensors import NUM_PARTS, PART_NAMES
from fgdeploy.train.data import EvalItems

HEAD_BOX_64 = [8.0, 4.0, 40.0, 36.0]   # on the 64 x 64 input
BODY_BOX_64 = [0.0, 0.0, 64.0, 64.0]


class _BoxModel(nn.Module):
    """Class 1, every keypoint at input (32, 32), fixed head/body boxes; has a part-nets config like the real model."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(part_nets=PartNetsConfig(backbone="small", crop_size=16), name="box")

    def forward(self, images):
        n = images.shape[0]
        return {"logits": torch.tensor([[0.0, 1.0]]).expand(n, 2),
                "keypoints": torch.full((n, NUM_PARTS, 2), 32.0),
                "keypoint_scores": torch.full((n, NUM_PARTS), 0.9),
                "part_boxes": torch.tensor([HEAD_BOX_64, BODY_BOX_64]).expand(n, 2, 4)}


def _sample(h: int, w: int, seed: int) -> Sample:
    rng = np.random.default_rng(seed)
    kp = np.zeros((NUM_PARTS, 2), np.float32)
    vis = np.zeros(NUM_PARTS, bool)
    for name, (fu, fv) in {"beak": (0.15, 0.1), "crown": (0.6, 0.5), "back": (0.2, 0.3), "tail": (0.9, 0.95)}.items():
        kp[PART_NAMES.index(name)] = (fu * w, fv * h)
        vis[PART_NAMES.index(name)] = True
    return Sample(image=rng.integers(0, 255, (h, w, 3), dtype=np.uint8), keypoints=kp, visible=vis,
                  bbox=np.array([0, 0, w, h], np.float32), label=1, image_id=seed + 1, path=f"x/{seed}.jpg",
                  orig_size=(h, w))


def test_unwarp_boxes_inverts_the_test_resize():
    affine = np.array([[[0.5, 0.0, 0.0], [0.0, 2.0, 0.0]]])          # original -> input: u/2, 2v
    boxes = np.array([[[10.0, 20.0, 30.0, 60.0]]])
    np.testing.assert_allclose(unwarp_boxes(boxes, affine), [[[20.0, 10.0, 60.0, 30.0]]])


def test_predict_gives_part_boxes_in_original_pixels_and_pcp():
    samples = [_sample(128, 256, 0), _sample(200, 100, 1)]
    preds = predict(_BoxModel(), EvalItems(samples, EvalTransform(64)), [0, 1], "cpu", batch_size=2)
    assert preds.has_part_boxes
    # head box [8, 4, 40, 36] on 64 px = [1/8, 1/16, 5/8, 9/16] of each image
    np.testing.assert_allclose(preds.part_boxes[0, 0], [32, 8, 160, 72], atol=1e-3)
    np.testing.assert_allclose(preds.part_boxes[1, 0], [12.5, 12.5, 62.5, 112.5], atol=1e-3)
    np.testing.assert_allclose(preds.part_boxes[1, 1], [0, 0, 100, 200], atol=1e-3)
    # ground truth: the same rule on the ground-truth keypoints in the 64 x 64 input frame (as the model's own
    # boxes, min side 32 input px), mapped back: x / 4, y / 2 for the 128 x 256 image
    scale = np.array([64 / 256, 64 / 128])
    gt = part_boxes((samples[0].keypoints * scale)[None], samples[0].visible[None], (64, 64))
    np.testing.assert_allclose(preds.gt_part_boxes[0], gt[0] / np.tile(scale, 2), atol=1e-4)
    assert preds.gt_part_boxes[0, 0, 2] - preds.gt_part_boxes[0, 0, 0] >= 32 * 4 - 1e-6
    res = compute_metrics(preds, ["x", "y"], PART_NAMES)
    ious = [[_iou(preds.part_boxes[i, k], preds.gt_part_boxes[i, k]) for k in (0, 1)] for i in (0, 1)]
    expected = (np.asarray(ious) >= 0.5).mean(axis=0)
    assert res.pcp == {"head": expected[0], "body": expected[1]}
    assert res.box_iou["head"] == np.mean([r[0] for r in ious])
    assert res.summary()["pcp_head"] == res.pcp["head"]
    payload = res.to_json()
    assert payload["pcp"] == res.pcp and payload["pcp_iou_threshold"] == 0.5
    table = format_table(res, PART_NAMES)
    assert "PCP head" in table and "PCP body" in table

    grid = render_grid(preds, samples, ["x", "y"], PART_NAMES, cols=2, tile=96)
    plain = Predictions(**{**preds.__dict__, "part_boxes": np.zeros((2, 0, 4)), "gt_part_boxes": np.zeros((2, 0, 4))})
    assert not plain.has_part_boxes and "pcp" not in compute_metrics(plain, ["x", "y"], PART_NAMES).to_json()
    no_boxes = render_grid(plain, samples, ["x", "y"], PART_NAMES, cols=2, tile=96)
    assert grid.shape == no_boxes.shape and (grid != no_boxes).any(axis=-1).sum() > 200  # the box outlines


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
