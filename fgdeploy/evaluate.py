"""Evaluation: top-1, mean per-class accuracy, PCK per part, head/body PCP (docs/method.md section 12), table, JSON,
PNG grid.

PCK is computed in the ORIGINAL image's pixels, normalised by max(w, h) of the ground-truth box as in
the paper: predictions (input pixels of the warped S x S image) are mapped back with each sample's affine.
The PCK formula itself is the NumPy reference's (``fgdeploy.reference.metrics.pck``), not a second copy.
For models with part nets, PCP (12 (a)): a predicted head/body box is correct when its IoU with the
ground-truth box is >= 0.5; ground-truth boxes are the section 7 rule (``fgdeploy.reference.part_boxes``) applied
to the ground-truth keypoints in the model input frame, like the model's own boxes; both are mapped back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PCK_ALPHAS: tuple[float, ...] = (0.02, 0.05, 0.08, 0.10)
PCP_IOU = 0.5
PCP_GROUND_TRUTH = ("docs/method.md 7 box rule on the ground-truth keypoints in the model input frame (as the model "
                    "applies it to its predictions), mapped back to original image pixels")


def pck_key(alpha: float) -> str:
    """Metric name of PCK at ``alpha``: "pck@0.02", ..., "pck@0.1"."""
    return f"pck@{alpha:g}"


@dataclass
class Predictions:
    """Model outputs and ground truth for a set of dataset items, in original-image pixels."""

    indices: np.ndarray          # (N,) dataset indices
    labels: np.ndarray           # (N,) ground-truth class
    predicted: np.ndarray        # (N,) argmax class
    keypoints: np.ndarray        # (N, P, 2) predicted (u, v), original image pixels
    scores: np.ndarray           # (N, P) sigmoid(max logit)
    gt_keypoints: np.ndarray     # (N, P, 2) original image pixels
    gt_visible: np.ndarray       # (N, P) bool
    bbox: np.ndarray             # (N, 4) ground-truth box [x0, y0, x1, y1], original pixels
    # head/body boxes [x0, y0, x1, y1], original pixels; (N, 0, 4) for a model without part nets
    part_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 4)))
    gt_part_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 4)))

    @property
    def has_part_boxes(self) -> bool:
        return self.part_boxes.ndim == 3 and self.part_boxes.shape[1] > 0

    @classmethod
    def concat(cls, parts: Sequence[Predictions]) -> Predictions:
        """Join several (e.g. one per process), ordered by dataset index."""
        parts = [p for p in parts if len(p.indices)]
        if not parts:
            return parts_empty()
        joined = {name: np.concatenate([getattr(p, name) for p in parts]) for name in cls.__dataclass_fields__}
        order = np.argsort(joined["indices"], kind="stable")
        return cls(**{k: v[order] for k, v in joined.items()})

    def merge(self, gathered: Sequence[Predictions]) -> Predictions:
        """The union of ``gathered`` (all processes' predictions, this one's included)."""
        return Predictions.concat(gathered)

    def __len__(self) -> int:
        return len(self.indices)


def parts_empty() -> Predictions:
    z = np.zeros((0,), np.int64)
    return Predictions(z, z, z, np.zeros((0, 0, 2)), np.zeros((0, 0)), np.zeros((0, 0, 2)),
                       np.zeros((0, 0), bool), np.zeros((0, 4)), np.zeros((0, 0, 4)), np.zeros((0, 0, 4)))


def predict(
    model: Any, dataset: Any, indices: Sequence[int], device: Any, batch_size: int = 32, amp: bool = False,
    progress: bool | None = False,
) -> Predictions:
    """Run ``model`` (eval mode, predicted parts) on ``dataset[i]`` for ``indices``.

    ``dataset`` items are dicts from ``fgdeploy.train.data.EvalItems``: the model input plus the
    original-image ground truth and the affine from original to input pixels.
    """
    import torch

    from fgdeploy.progress import progress as progress_iter
    from fgdeploy.train.data import collate_items

    chunks = [list(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]
    was_training = model.training
    model.eval()
    out: list[Predictions] = []
    try:
        with torch.no_grad():
            for chunk in progress_iter(chunks, desc="eval", unit="batch", enabled=progress):
                batch = collate_items([dataset[i] for i in chunk])
                images = batch["images"].to(device)
                with torch.autocast(device_type=torch.device(device).type, dtype=torch.float16, enabled=amp):
                    res = model(images)
                kp = res["keypoints"].float().cpu().numpy()
                affine = batch["affine"].numpy()
                boxes, gt_boxes = _part_boxes(model, res, batch, affine)
                out.append(Predictions(
                    indices=np.asarray(chunk, np.int64), labels=batch["labels"].numpy(),
                    predicted=res["logits"].float().argmax(1).cpu().numpy(),
                    keypoints=unwarp_points(kp, affine),
                    scores=res["keypoint_scores"].float().cpu().numpy(),
                    gt_keypoints=batch["orig_keypoints"].numpy(), gt_visible=batch["orig_visible"].numpy(),
                    bbox=batch["orig_bbox"].numpy(), part_boxes=boxes, gt_part_boxes=gt_boxes))
    finally:
        model.train(was_training)
    return Predictions.concat(out)


def _part_boxes(model: Any, res: dict[str, Any], batch: dict[str, Any], affine: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, ground-truth) head/body boxes in original-image pixels; (N, 0, 4) each without part nets.

    The ground-truth box is the model's own rule (docs/method.md 7, its padding and minimum side) applied to the
    ground-truth keypoints and visibility in the same frame the model applies it to its predictions (the S x S
    input), then mapped back like the predicted box; so PCP measures the keypoints and visibility, not a
    difference of frames (the minimum side is in input pixels).
    """
    from fgdeploy.reference.part_boxes import part_boxes
    from fgdeploy.tensors import OUTPUT_PART_BOXES

    n = len(affine)
    part_cfg = getattr(getattr(model, "config", None), "part_nets", None)
    if OUTPUT_PART_BOXES not in res or part_cfg is None:
        return np.zeros((n, 0, 4)), np.zeros((n, 0, 4))
    size = batch["images"].shape[-2:]
    pred = unwarp_boxes(res[OUTPUT_PART_BOXES].float().cpu().numpy(), affine)
    gt = part_boxes(batch["keypoints"].numpy(), batch["visible"].numpy() > 0.5, (int(size[0]), int(size[1])),
                    padding=part_cfg.padding, min_side=part_cfg.min_side)
    return pred, unwarp_boxes(gt, affine)


def unwarp_boxes(boxes: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map (N, B, 4) axis-aligned boxes of the transformed image back to the original with (N, 2, 3) affines
    (the box around the mapped corners: exact for the scale/translation of the test-time resize)."""
    corners = boxes.reshape(len(boxes), -1, 2)                     # (N, 2B, 2): (x0, y0), (x1, y1), ...
    back = unwarp_points(corners, affine).reshape(boxes.shape)     # (N, B, 4)
    lo = np.minimum(back[..., :2], back[..., 2:])
    hi = np.maximum(back[..., :2], back[..., 2:])
    return np.concatenate([lo, hi], axis=-1)


def unwarp_points(uv: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map (N, P, 2) points of the transformed image back to the original with (N, 2, 3) affines."""
    a = affine[:, :, :2]                      # (N, 2, 2)
    t = affine[:, :, 2]                       # (N, 2)
    inv = np.linalg.inv(a)                    # (N, 2, 2)
    return np.einsum("nij,npj->npi", inv, uv - t[:, None, :])


@dataclass
class EvalResult:
    """Metrics of one evaluation; ``summary()`` is the flat dict logged per epoch."""

    num_images: int
    top1: float
    mean_class_acc: float
    per_class_acc: dict[str, float]
    pck: dict[str, dict[str, float]]          # pck_key(alpha) -> {part name: PCK, "mean": macro mean}
    pck_counts: dict[str, int]                # visible GT keypoints per part
    visibility_acc: float                     # predicted visible (score >= threshold) == GT visible
    normaliser: str = "max(w, h) of the ground-truth box, original image pixels"
    extra: dict[str, Any] = field(default_factory=dict)
    pcp: dict[str, float] | None = None       # {"head": PCP, "body": PCP} for models with part nets
    box_iou: dict[str, float] | None = None   # mean IoU of predicted vs ground-truth head/body boxes

    def summary(self) -> dict[str, float]:
        out = {"top1": self.top1, "mean_class_acc": self.mean_class_acc}
        out.update({key: vals["mean"] for key, vals in self.pck.items()})
        out.update({f"pcp_{name}": value for name, value in (self.pcp or {}).items()})
        return out

    def to_json(self) -> dict[str, Any]:
        pcp = {} if self.pcp is None else {"pcp": self.pcp, "pcp_iou_threshold": PCP_IOU, "box_mean_iou": self.box_iou,
                                           "pcp_ground_truth": PCP_GROUND_TRUTH}
        return {"num_images": self.num_images, "top1": self.top1, "mean_class_acc": self.mean_class_acc,
                "pck": self.pck, "pck_alphas": list(PCK_ALPHAS), "pck_normaliser": self.normaliser,
                "pck_counts": self.pck_counts, "visibility_acc": self.visibility_acc, **pcp,
                "per_class_acc": self.per_class_acc, **self.extra}


def compute_metrics(
    preds: Predictions, class_names: Sequence[str], part_names: Sequence[str],
    alphas: Sequence[float] = PCK_ALPHAS, visibility_threshold: float = 0.5,
) -> EvalResult:
    """Accuracy and PCK of ``preds`` (PCK: GT-visible keypoints only, argmax location, macro mean over parts)."""
    from fgdeploy.reference.metrics import mean_pck
    from fgdeploy.reference.metrics import pck as reference_pck

    n = len(preds)
    correct = preds.predicted == preds.labels
    per_class = {}
    for k, name in enumerate(class_names):
        mask = preds.labels == k
        if mask.any():
            per_class[name] = float(correct[mask].mean())
    top1 = float(correct.mean()) if n else 0.0
    mean_class = float(np.mean(list(per_class.values()))) if per_class else 0.0

    pck: dict[str, dict[str, float]] = {}
    counts = {name: int(preds.gt_visible[:, p].sum()) if n else 0 for p, name in enumerate(part_names)}
    if n:
        table = np.asarray(reference_pck(preds.keypoints, preds.gt_keypoints, preds.gt_visible, preds.bbox,
                                         list(alphas)), dtype=np.float64)  # (A, P), NaN for parts never visible
        means = mean_pck(table)  # (A,) macro mean over parts that were visible at least once
        for a, alpha in enumerate(alphas):
            row = {name: float(table[a, p]) for p, name in enumerate(part_names)}
            row["mean"] = float(means[a])
            pck[pck_key(alpha)] = row
    vis_acc = float(((preds.scores >= visibility_threshold) == preds.gt_visible).mean()) if n else 0.0
    pcp = mean_iou = None
    if n and preds.has_part_boxes:
        from fgdeploy.reference.part_boxes import PART_BOX_NAMES, box_iou
        from fgdeploy.reference.part_boxes import pcp as reference_pcp

        rates = reference_pcp(preds.part_boxes, preds.gt_part_boxes, PCP_IOU)
        ious = box_iou(preds.part_boxes, preds.gt_part_boxes).mean(axis=0)
        pcp = {name: float(r) for name, r in zip(PART_BOX_NAMES, rates)}
        mean_iou = {name: float(v) for name, v in zip(PART_BOX_NAMES, ious)}
    return EvalResult(num_images=n, top1=top1, mean_class_acc=mean_class, per_class_acc=per_class, pck=pck,
                      pck_counts=counts, visibility_acc=vis_acc, pcp=pcp, box_iou=mean_iou)


def format_table(result: EvalResult, part_names: Sequence[str]) -> str:
    """Plain-text table: accuracy lines, then PCK per part (rows) at each alpha (columns), in percent."""
    keys = list(result.pck)
    lines = [f"images: {result.num_images}",
             f"top-1 accuracy:          {100 * result.top1:6.2f} %",
             f"mean per-class accuracy: {100 * result.mean_class_acc:6.2f} %",
             f"visibility accuracy:     {100 * result.visibility_acc:6.2f} %   (parts called visible or hidden "
             "as annotated)",
             *[f"PCP {name + ' (IoU >= 0.5)':<20} {100 * value:6.2f} %   (mean IoU {result.box_iou[name]:.3f})"
               for name, value in (result.pcp or {}).items() if result.box_iou is not None],
             "", f"PCK (%), normalised by {result.normaliser}",
             f"{'part':<12} {'n':>5} " + " ".join(f"{k:>9}" for k in keys)]
    for name in [*part_names, "mean"]:
        count = str(result.pck_counts.get(name, "")) if name != "mean" else ""
        cells = " ".join(f"{_pct(result.pck[k].get(name)):>9}" for k in keys)
        if name == "mean":
            lines.append("-" * len(lines[-1]))
        lines.append(f"{name:<12} {count:>5} {cells}")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write JSON atomically (NaN written as null, NumPy scalars as numbers, keys sorted)."""
    from fgdeploy.fileio import atomic_write_json

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, float) and not np.isfinite(v):
            return None
        if isinstance(v, np.generic):
            return clean(v.item())
        return v

    atomic_write_json(path, clean(payload), sort_keys=True)
    return Path(path)


def render_grid(
    preds: Predictions, raw_dataset: Any, class_names: Sequence[str], part_names: Sequence[str],
    max_items: int = 12, cols: int = 3, tile: int = 240, visibility_threshold: float = 0.5,
) -> np.ndarray:
    """Ground truth vs prediction side by side (paper Fig. 3) for up to ``max_items`` images.

    Left: the image with GT keypoints (and GT head/body boxes) and the true class; right: predicted keypoints
    (rings where predicted invisible: score below ``visibility_threshold``), predicted head/body boxes and the
    predicted class, green when correct, red when wrong.
    """
    from fgdeploy.reference.part_boxes import PART_BOX_NAMES
    from fgdeploy.visualize import (
        draw_boxes, draw_caption, draw_keypoints, legend, make_grid, resize_for_display, side_by_side,
    )

    picks: list[int] = []
    if len(preds):
        picks = np.linspace(0, len(preds) - 1, num=min(max_items, len(preds))).round().astype(int).tolist()
    tiles = []
    for k in picks:
        sample = raw_dataset[int(preds.indices[k])]
        image, gt = resize_for_display(sample.image, preds.gt_keypoints[k], tile)
        _, pred = resize_for_display(sample.image, preds.keypoints[k], tile)
        ok = preds.predicted[k] == preds.labels[k]
        left_img, right_img = image, image
        if preds.has_part_boxes:  # boxes scale with the image like keypoints (corners as points)
            _, gt_box = resize_for_display(sample.image, preds.gt_part_boxes[k].reshape(-1, 2), tile)
            _, pred_box = resize_for_display(sample.image, preds.part_boxes[k].reshape(-1, 2), tile)
            left_img = draw_boxes(image, gt_box.reshape(-1, 4), PART_BOX_NAMES)
            right_img = draw_boxes(image, pred_box.reshape(-1, 4), PART_BOX_NAMES)
        left = draw_caption(draw_keypoints(left_img, gt, preds.gt_visible[k]),
                            f"GT: {_short(class_names[preds.labels[k]])}")
        right = draw_caption(draw_keypoints(right_img, pred, hollow=preds.scores[k] < visibility_threshold),
                             f"pred: {_short(class_names[preds.predicted[k]])}",
                             (120, 230, 120) if ok else (255, 110, 110))
        tiles.append(side_by_side(left, right))
    grid = make_grid(tiles, cols)
    return np.concatenate([grid, legend(grid.shape[1], part_names, abbreviated=False)])   # colour -> part


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else name[: width - 1] + "~"


@dataclass
class EvalOutput:
    result: EvalResult
    json_path: Path | None
    grid_path: Path | None
    table: str


def default_data_for(checkpoint: str | Path) -> Path | None:
    """The data folder recorded in the run folder's config.yaml beside ``checkpoint`` (None if absent)."""
    from fgdeploy.config import load_yaml

    cfg = Path(checkpoint).resolve().parent / "config.yaml"
    if cfg.is_file():
        data = load_yaml(cfg).get("data")
        if data and Path(data).is_dir():
            return Path(data)
    return None


def evaluate_checkpoint(
    checkpoint: str | Path, data: str | Path, split: str = "test", out_dir: str | Path | None = None,
    device: str = "auto", batch_size: int = 32, grid_items: int = 12, progress: bool | None = None,
) -> EvalOutput:
    """Evaluate an fgdeploy checkpoint on a CUB-format split; write eval.json and eval_grid.png to ``out_dir``.

    Raises:
        CheckpointError: unreadable checkpoint. DatasetError: bad data folder, or its classes differ from the
        checkpoint's.
    """
    from fgdeploy.checkpoint import load_checkpoint
    from fgdeploy.data.cub import CubDataset
    from fgdeploy.data.transforms import EvalTransform
    from fgdeploy.errors import DatasetError
    from fgdeploy.train.data import EvalItems
    from fgdeploy.train.distributed import resolve_device
    from fgdeploy.visualize import save_image

    dev = resolve_device(device)
    model, meta = load_checkpoint(checkpoint, dev)
    dataset = CubDataset(data, split)  # type: ignore[arg-type]
    if list(dataset.class_names) != list(meta.class_names):
        raise DatasetError(f"{data}: its {len(dataset.class_names)} classes differ from the "
                           f"{len(meta.class_names)} the checkpoint was trained on; evaluate on the same dataset")
    if len(dataset) == 0:
        raise DatasetError(f"{data}: the {split!r} split is empty; choose another --split")
    items = EvalItems(dataset, EvalTransform(meta.input_size))
    preds = predict(model, items, list(range(len(dataset))), dev, batch_size=batch_size, progress=progress)
    threshold = model.config.visibility_threshold   # calibrated in training (trainer.calibrate_visibility)
    result = compute_metrics(preds, meta.class_names, meta.part_names, visibility_threshold=threshold)
    result.extra = {"checkpoint": str(checkpoint), "checkpoint_sha256": meta.sha256, "data": str(data),
                    "split": split, "model": meta.model_config.get("name"), "stage": meta.stage}
    table = format_table(result, meta.part_names)
    json_path = grid_path = None
    if out_dir is not None:
        out = Path(out_dir)
        json_path = write_json(out / "eval.json", result.to_json())
        grid = render_grid(preds, dataset, meta.class_names, meta.part_names, max_items=grid_items,
                           visibility_threshold=threshold)
        grid_path = save_image(out / "eval_grid.png", grid)
        log.debug("wrote %s and %s", json_path, grid_path)
    return EvalOutput(result, json_path, grid_path, table)
