"""One batch of decoded images (good and failed) plus the model's outputs -> one entry per image.

The per-batch step every way of scoring shares: local ``infer`` (``ResultWriter``), ``infer --ray`` (the model
actor) and ``fgdeploy serve`` (the replica). An entry is a result record, or ``{"path", "error"}`` for an image
that could not be decoded, in the order of the batch. A record holds ``path``, ``width``, ``height`` (the image
as stored), ``top`` (k dicts: ``label``, ``class``, ``prob``), ``keypoints`` (P dicts: ``part``, ``x``, ``y``,
``score``; x, y in the original image's continuous pixels), and for part-net models ``boxes`` (head and body:
``part``, ``x0``, ``y0``, ``x1``, ``y1`` in the original image's pixels).

Also here, written once: the labels used when a model records none, the static-batch check and the top-k limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from fgdeploy.errors import FgdeployError
from fgdeploy.tensors import OUTPUT_KEYPOINT_SCORES, OUTPUT_KEYPOINTS, OUTPUT_LOGITS, OUTPUT_PART_BOXES, PART_NAMES

BOX_KEYS = ("x0", "y0", "x1", "y1")   # a head/body box in records and CSV columns (<part>_x0 ...)


class BatchItem(Protocol):
    """One decoded image (``fgdeploy.inference.local.Decoded``): the model input or why there is none."""

    path: str
    image: np.ndarray | None          # (S, S, 3) uint8 RGB; None when ``error`` is set
    size_hw: tuple[int, int]          # (H, W) of the image as stored
    error: str | None


def is_failure(entry: dict[str, Any]) -> bool:
    """Whether an entry says why its image failed rather than holding a result."""
    return "error" in entry


def check_fixed_batch(fixed_batch: int | None, batch: int, option: str = "--batch") -> None:
    """Refuse a batch larger than a static-batch export takes (smaller ones are padded by the predictor).

    Raises:
        FgdeployError: saying which ``option`` value fits.
    """
    if fixed_batch and batch > fixed_batch:
        raise FgdeployError(f"the model takes batches of exactly {fixed_batch} images (a static-shape export); "
                            f"pass {option} {fixed_batch} or less (smaller batches are padded)")


def clamp_topk(topk: int, classes: int) -> int:
    """The number of classes a record lists: ``topk``, at most the model's ``classes`` (0: not known, keep it)."""
    return min(topk, classes) if classes else topk


def default_labels(outputs: dict[str, np.ndarray], class_names: Sequence[str],
                   part_names: Sequence[str]) -> tuple[list[str], list[str]]:
    """The labels to write: the model's, else "class_<i>" and the CUB part names (or "part_<i>")."""
    classes = list(class_names) or [f"class_{i}" for i in range(outputs[OUTPUT_LOGITS].shape[1])]
    p = outputs[OUTPUT_KEYPOINTS].shape[1]
    parts = list(part_names) or (list(PART_NAMES) if p == len(PART_NAMES) else [f"part_{i}" for i in range(p)])
    return classes, parts


def to_records(outputs: dict[str, np.ndarray], items: Sequence[Any], input_size: int, topk: int,
               class_names: Sequence[str], part_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per-image result dicts: top-k classes with softmax probabilities, keypoints in original pixels.

    ``outputs`` row n belongs to ``items[n]`` (each with ``path`` and ``size_hw``); rows past the items
    (a static-batch export's padding) are ignored.
    """
    logits = outputs[OUTPUT_LOGITS].astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :topk]   # stable: ties -> lowest index, like argmax
    keypoints = outputs[OUTPUT_KEYPOINTS].astype(np.float64)
    scores = outputs[OUTPUT_KEYPOINT_SCORES].astype(np.float64)
    records = []
    for n, item in enumerate(items):
        h, w = item.size_hw
        xs, ys = keypoints[n, :, 0] * w / input_size, keypoints[n, :, 1] * h / input_size
        records.append({
            "path": item.path, "width": int(w), "height": int(h),
            "top": [{"label": int(c), "class": class_names[c], "prob": round(float(probs[n, c]), 6)}
                    for c in order[n]],
            "keypoints": [{"part": part_names[p], "x": round(float(xs[p]), 3), "y": round(float(ys[p]), 3),
                           "score": round(float(scores[n, p]), 6)} for p in range(len(part_names))],
        })
        if OUTPUT_PART_BOXES in outputs:
            records[-1]["boxes"] = _box_records(outputs[OUTPUT_PART_BOXES][n], w / input_size, h / input_size)
    return records


def _box_records(boxes: np.ndarray, sx: float, sy: float) -> list[dict[str, Any]]:
    """Head/body boxes of one image, input pixels -> original pixels (the test resize is a plain scale)."""
    from fgdeploy.reference.part_boxes import PART_BOX_NAMES

    b = np.asarray(boxes, np.float64) * np.array([sx, sy, sx, sy])
    return [{"part": name, **{k: round(float(v), 3) for k, v in zip(BOX_KEYS, b[i])}}
            for i, name in enumerate(PART_BOX_NAMES)]


class RecordMaker:
    """Turns batches into entries for one model: its input size, labels (filled in from the first outputs when
    the model records none) and the run's top-k.

    Args:
        input_size: S of the model's S x S input (keypoints and boxes are scaled from it).
        topk: classes per record (``clamp_topk`` first if the model's class count is known).
        class_names, part_names: the labels the model records (empty: ``default_labels``).
    """

    def __init__(self, input_size: int, topk: int, class_names: Sequence[str] | None = None,
                 part_names: Sequence[str] | None = None) -> None:
        self.input_size = int(input_size)
        self.topk = topk
        self.class_names = list(class_names or [])
        self.part_names = list(part_names or [])

    def entries(self, items: Sequence[BatchItem], outputs: dict[str, np.ndarray],
                topk: int | None = None) -> list[dict[str, Any]]:
        """One entry per item, in order: a record for a good item, ``{"path", "error"}`` for a failed one.

        Args:
            items: the batch, good and failed.
            outputs: the model's outputs for the good items, in order (row n: the n-th good item); extra rows
                (a static-batch export's padding) are ignored; may be empty when no item is good.
            topk: classes for these records (default: the maker's ``topk``).

        Raises:
            FgdeployError: the outputs hold fewer rows than there are good items.
        """
        good = [d for d in items if d.error is None]
        records: list[dict[str, Any]] = []
        if good:
            rows = len(outputs[OUTPUT_LOGITS]) if OUTPUT_LOGITS in outputs else 0
            if rows < len(good):
                raise FgdeployError(f"the model returned {rows} result(s) for a batch of {len(good)} images")
            self.class_names, self.part_names = default_labels(outputs, self.class_names, self.part_names)
            records = to_records(outputs, good, self.input_size, self.topk if topk is None else topk,
                                 self.class_names, self.part_names)
        scored = iter(records)
        return [next(scored) if d.error is None else {"path": d.path, "error": d.error} for d in items]

    def score(self, predictor: Any, items: Sequence[BatchItem], topk: int | None = None) -> list[dict[str, Any]]:
        """``entries`` after running ``predictor`` on the good items (in one call: at most a static-batch
        export's batch of them; ``check_fixed_batch``)."""
        good = [d.image for d in items if d.error is None]
        outputs: dict[str, np.ndarray] = {}
        if good:
            check_fixed_batch(getattr(predictor, "fixed_batch", None), len(good))
            outputs = predictor.predict(predictor.prepare(good), len(good))
        return self.entries(items, outputs, topk)
