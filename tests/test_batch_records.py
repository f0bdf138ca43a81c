"""The per-batch step shared by local infer, infer --ray and serve: decoded items + outputs -> entries.

A fake predictor answers from the pixels (image filled with value v -> class v % K, every keypoint at
(v, v / 2) in input pixels, head box around (v, v)), so each record can be traced to the image it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from fgdeploy.errors import FgdeployError
from fgdeploy.inference.batch_records import (
    RecordMaker, check_fixed_batch, clamp_topk, default_labels, is_failure,
)
from fgdeploy.inference.local import Decoded
from fgdeploy.tensors import PART_NAMES

S = 64       # input size
K = 3        # classes


def _item(path: str, value: int, hw: tuple[int, int]) -> Decoded:
    return Decoded(path, np.full((S, S, 3), value, np.uint8), hw)


def _bad(path: str, reason: str = "empty file (0 bytes)") -> Decoded:
    return Decoded(path, error=reason)


@dataclass
class PixelPredictor:
    """Answers from each image's fill value; pads to ``fixed_batch`` like a static-shape export's runner."""

    input_size: int = S
    fixed_batch: int | None = None
    parts: int = len(PART_NAMES)
    boxes: bool = False
    calls: int = 0

    def prepare(self, images):
        batch = np.stack([im[0, 0, 0] for im in images]).astype(np.float64)
        if self.fixed_batch:
            batch = np.concatenate([batch, np.full(self.fixed_batch - len(batch), batch[-1])])
        return batch

    def predict(self, prepared, count):
        self.calls += 1
        n = len(prepared) if self.fixed_batch else count   # a padded engine returns every row
        v = prepared[:n]
        logits = np.zeros((n, K))
        logits[np.arange(n), v.astype(int) % K] = 5.0
        kp = np.stack([np.stack([v, v / 2], axis=1)] * self.parts, axis=1)
        out = {"logits": logits, "keypoints": kp, "keypoint_scores": np.full((n, self.parts), 0.9)}
        if self.boxes:
            out["part_boxes"] = np.stack([np.stack([v - 4, v - 4, v + 4, v + 4], 1), np.stack([0 * v, 0 * v, 0 * v + S,
                                                                                               0 * v + S], 1)], 1)
        return out


def test_bad_items_mixed_with_good_keep_their_place_and_each_record_is_its_own_image():
    items = [_bad("a.jpg"), _item("b.jpg", 1, (100, 200)), _bad("c.png", "not a decodable image"),
             _item("d.jpg", 2, (64, 32)), _item("e.jpg", 3, (10, 10))]
    entries = RecordMaker(S, 1, ["x", "y", "z"]).score(PixelPredictor(), items)
    assert [e["path"] for e in entries] == ["a.jpg", "b.jpg", "c.png", "d.jpg", "e.jpg"]
    assert [is_failure(e) for e in entries] == [True, False, True, False, False]
    assert entries[0] == {"path": "a.jpg", "error": "empty file (0 bytes)"}
    assert entries[2] == {"path": "c.png", "error": "not a decodable image"}
    assert [e["top"][0]["class"] for e in entries if not is_failure(e)] == ["y", "z", "x"]   # value % 3
    b, d = entries[1], entries[3]
    assert (b["width"], b["height"], d["width"], d["height"]) == (200, 100, 32, 64)
    # keypoint (v, v/2) in input pixels -> original: x * W / S, y * H / S
    assert (b["keypoints"][0]["x"], b["keypoints"][0]["y"]) == (round(1 * 200 / S, 3), round(0.5 * 100 / S, 3))
    assert (d["keypoints"][4]["x"], d["keypoints"][4]["y"]) == (2 * 32 / S, 1.0 * 64 / S)


def test_all_failed_batch_needs_no_model_call():
    predictor = PixelPredictor()
    entries = RecordMaker(S, 5).score(predictor, [_bad("a.jpg"), _bad("b.jpg")])
    assert predictor.calls == 0 and all(is_failure(e) for e in entries)


def test_topk_larger_than_classes_lists_every_class_once():
    assert clamp_topk(10, 3) == 3 and clamp_topk(2, 3) == 2 and clamp_topk(7, 0) == 7   # 0: not known
    (rec,) = RecordMaker(S, 10).score(PixelPredictor(), [_item("a.jpg", 2, (8, 8))])
    assert [t["label"] for t in rec["top"]] == [2, 0, 1]                    # all 3, best first, ties by index
    assert [t["class"] for t in rec["top"]] == ["class_2", "class_0", "class_1"]
    assert sum(t["prob"] for t in rec["top"]) == pytest.approx(1.0, abs=1e-5)
    (one,) = RecordMaker(S, 10).score(PixelPredictor(), [_item("a.jpg", 2, (8, 8))], topk=1)   # per call
    assert len(one["top"]) == 1


def test_fixed_batch_padding_rows_are_dropped_and_a_larger_batch_refused():
    predictor = PixelPredictor(fixed_batch=4)
    items = [_item("a.jpg", 1, (8, 8)), _bad("b.jpg"), _item("c.jpg", 2, (8, 8))]
    entries = RecordMaker(S, 1).score(predictor, items)       # 2 good images, 4 rows back (2 padding)
    assert [e.get("top", [{}])[0].get("label") for e in entries] == [1, None, 2]
    with pytest.raises(FgdeployError, match=r"exactly 4 images.*pass --batch 4 or less"):
        RecordMaker(S, 1).score(predictor, [_item(f"{i}.jpg", i, (8, 8)) for i in range(5)])
    with pytest.raises(FgdeployError, match=r"pass --max-batch 8 or less"):
        check_fixed_batch(8, 16, "--max-batch")
    check_fixed_batch(8, 8)
    check_fixed_batch(None, 1000)


def test_outputs_short_of_the_good_items_are_an_error_not_a_shifted_answer():
    out = PixelPredictor().predict(np.array([1.0]), 1)
    with pytest.raises(FgdeployError, match="1 result.*batch of 2"):
        RecordMaker(S, 1).entries([_item("a.jpg", 1, (8, 8)), _item("b.jpg", 2, (8, 8))], out)


def test_part_net_boxes_scale_to_each_images_own_size():
    items = [_item("a.jpg", 20, (128, 64)), _bad("x.jpg"), _item("b.jpg", 40, (64, 256))]
    entries = RecordMaker(S, 1).score(PixelPredictor(boxes=True), items)
    a, b = entries[0]["boxes"], entries[2]["boxes"]
    assert [x["part"] for x in a] == ["head", "body"]
    assert a[0] == {"part": "head", "x0": 16 * 64 / S, "y0": 16 * 128 / S, "x1": 24 * 64 / S, "y1": 24 * 128 / S}
    assert b[0] == {"part": "head", "x0": 36 * 256 / S, "y0": 36 * 64 / S, "x1": 44 * 256 / S, "y1": 44 * 64 / S}
    assert b[1] == {"part": "body", "x0": 0.0, "y0": 0.0, "x1": 256.0, "y1": 64.0}
    assert "boxes" not in RecordMaker(S, 1).score(PixelPredictor(), items[:1])[0]


def test_labels_the_model_records_win_else_defaults_fill_in_once():
    out = PixelPredictor(parts=3).predict(np.array([1.0]), 1)
    assert default_labels(out, [], []) == (["class_0", "class_1", "class_2"], ["part_0", "part_1", "part_2"])
    assert default_labels(PixelPredictor().predict(np.array([1.0]), 1), [], [])[1] == list(PART_NAMES)
    maker = RecordMaker(S, 1, ["x", "y", "z"], ["beak", "tail", "eye"])
    (rec,) = maker.score(PixelPredictor(parts=3), [_item("a.jpg", 1, (8, 8))])
    assert rec["top"][0]["class"] == "y" and [k["part"] for k in rec["keypoints"]] == ["beak", "tail", "eye"]
    fresh = RecordMaker(S, 1)
    assert fresh.part_names == []
    fresh.score(PixelPredictor(parts=3), [_bad("a.jpg")])      # nothing scored: nothing learnt
    assert fresh.part_names == []
    fresh.score(PixelPredictor(parts=3), [_item("a.jpg", 1, (8, 8))])
    assert fresh.part_names == ["part_0", "part_1", "part_2"]   # what render_outputs names the CSV columns by
