"""Parity between two runners (e.g. PyTorch eager vs an ONNX/TensorRT artifact), as data.

``run_parity`` feeds both runners the same images and returns a ``ParityReport``:

- per output: max/mean/p99 absolute and relative error, cosine similarity, the tolerance verdict
  (|test - ref| <= atol + rtol * |ref| for every element of at least ``min_fraction`` of the images)
  and the smallest atol (at the given rtol) and rtol (at the given atol) that would have passed;
- task level: top-1 agreement, keypoint agreement (same heatmap cell; within one cell), accuracy and
  PCK of each side and their difference when ground truth is given, and every image whose class or a
  keypoint changed with the margin that flipped;
- batch invariance of the test runner (images alone, in a full batch, in a partial last batch);
- when a check fails, where the two first diverge: heatmaps, keypoints, pooled part features or logits.

The report is truthy when every check passes, renders a table and dumps JSON. Default thresholds
depend on precision (fp16 looser than fp32); every tolerance can be overridden.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgdeploy.backends.base import Runner
from fgdeploy.geometry import point_to_cell
from fgdeploy.tensors import (
    INPUT_IMAGES, OUTPUT_HEATMAPS, OUTPUT_KEYPOINT_SCORES, OUTPUT_KEYPOINTS, OUTPUT_LOGITS,
)

logger = logging.getLogger(__name__)

PCK_ALPHA = 0.1
MAX_LISTED_FLIPS = 20  # in the rendered table; the JSON has them all
MAX_DEBUG_IMAGES = 16  # images rerun with debug outputs to locate a divergence


# --- thresholds ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerance:
    """Element check |test - ref| <= atol + rtol * |ref|; an output passes when at least
    ``min_fraction`` of the images have every element within it."""

    atol: float
    rtol: float
    min_fraction: float = 1.0


@dataclass(frozen=True)
class Thresholds:
    """What a parity run must meet; ``None`` disables a check."""

    tolerance: Tolerance                   # continuous outputs (logits, scores, heatmaps)
    top1_agreement: float                  # fraction of images with the same argmax class
    keypoint_same_cell: float | None       # fraction of (image, part) with the same heatmap cell
    keypoint_within_one_cell: float | None  # ... within one cell (Chebyshev distance <= 1)
    accuracy_diff_points: float | None     # |accuracy(test) - accuracy(ref)| in percentage points
    logit_error_over_range: float | None   # max |logit error| / (max - min of the reference logits)


DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(Tolerance(atol=1e-4, rtol=1e-3), top1_agreement=1.0, keypoint_same_cell=1.0,
                       keypoint_within_one_cell=1.0, accuracy_diff_points=0.0, logit_error_over_range=1e-4),
    # fp16 (eps ~1e-3) accumulates ~1e-2 relative error through a deep conv stack; a keypoint that moves
    # by a cell changes its part features, hence the per-image fraction instead of "every element".
    "fp16": Thresholds(Tolerance(atol=5e-2, rtol=5e-2, min_fraction=0.99), top1_agreement=0.99,
                       keypoint_same_cell=None, keypoint_within_one_cell=0.99, accuracy_diff_points=0.5,
                       logit_error_over_range=None),
}


def default_thresholds(precision: str, atol: float | None = None, rtol: float | None = None) -> Thresholds:
    """Thresholds for ``precision`` ("fp32"/"fp16"), with atol/rtol overridden when given."""
    if precision not in DEFAULT_THRESHOLDS:
        raise ValueError(f"unknown precision {precision!r}; valid: {sorted(DEFAULT_THRESHOLDS)}")
    base = DEFAULT_THRESHOLDS[precision]
    tol = dataclasses.replace(base.tolerance, **{k: v for k, v in (("atol", atol), ("rtol", rtol)) if v is not None})
    return dataclasses.replace(base, tolerance=tol)


# --- results ---------------------------------------------------------------------------------------
@dataclass
class OutputComparison:
    """Error statistics of one output; ``passed`` is None for outputs judged at task level (keypoints)."""

    name: str
    shape: list[int]
    max_abs: float
    mean_abs: float
    p99_abs: float
    max_rel: float
    mean_rel: float
    p99_rel: float
    cosine: float
    ref_range: float
    atol: float
    rtol: float
    min_fraction: float
    images_within: float             # fraction of images with every element within tolerance
    min_atol: float                  # smallest atol passing at this rtol (and min_fraction)
    min_rtol: float                  # smallest rtol passing at this atol
    passed: bool | None


@dataclass
class ClassFlip:
    """An image whose top-1 class differs; margins are top-1 minus the other side's class logit."""

    index: int
    image_id: int | None
    label: int | None
    ref_class: int
    test_class: int
    ref_margin: float   # how far the reference preferred its class over the test's choice
    test_margin: float


@dataclass
class KeypointFlip:
    """A (image, part) whose heatmap cell differs; margins are heatmap-logit gaps when heatmaps exist."""

    index: int
    image_id: int | None
    part: str
    ref_cell: list[int]
    test_cell: list[int]
    cell_distance: int  # Chebyshev distance in cells
    ref_margin: float | None   # ref logit at its cell minus ref logit at the test's cell
    test_margin: float | None


@dataclass
class TaskComparison:
    n_images: int
    top1_agreement: float
    keypoint_same_cell: float | None = None
    keypoint_within_one_cell: float | None = None
    keypoint_same_cell_visible: float | None = None  # only parts the reference scores >= 0.5
    accuracy_ref: float | None = None
    accuracy_test: float | None = None
    accuracy_diff_points: float | None = None        # (test - ref) * 100
    pck_ref: float | None = None                     # PCK@0.1 of the bounding box, visible parts
    pck_test: float | None = None
    pck_diff_points: float | None = None
    class_flips: list[ClassFlip] = field(default_factory=list)
    keypoint_flips: list[KeypointFlip] = field(default_factory=list)


@dataclass
class BatchInvariance:
    runner: str
    batch_size: int
    n_images: int
    partial_size: int
    max_abs_logit_diff: float | None
    top1_changes: int
    keypoint_changes: int
    passed: bool | None
    note: str = ""


@dataclass
class StageDiff:
    stage: str  # heatmaps | keypoints | part_features | logits
    max_abs: float
    passed: bool


@dataclass
class Divergence:
    first_stage: str | None  # None: the debug rerun showed no difference beyond tolerance
    images: list[int]
    stages: list[StageDiff]
    note: str = ""


@dataclass
class Check:
    name: str
    value: float | None
    threshold: float | None
    op: str  # ">=", "<=", "=="
    passed: bool


@dataclass
class ParityReport:
    ref: str
    test: str
    precision: str
    n_images: int
    data: str
    thresholds: dict[str, Any]
    outputs: list[OutputComparison]
    task: TaskComparison
    batch: BatchInvariance | None
    checks: list[Check]
    divergence: Divergence | None = None

    def __bool__(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def passed(self) -> bool:
        return bool(self)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(_json_safe(self.to_dict()), indent=2)

    def dump(self, path: str | Path) -> None:
        """Write the JSON report atomically."""
        from fgdeploy.checkpoint import atomic_write_bytes

        atomic_write_bytes(path, (self.to_json() + "\n").encode("utf-8"))

    def render(self) -> str:
        """Human-readable tables (outputs, task, checks, flips)."""
        return render_report(self)


# --- numeric comparison ----------------------------------------------------------------------------
def compare_output(name: str, ref: np.ndarray, test: np.ndarray, tol: Tolerance,
                   judged: bool = True) -> OutputComparison:
    """Statistics of ``test`` against ``ref`` (first axis = images) and the tolerance verdict.

    Relative errors are taken over the elements whose reference is non-zero (the verdict's
    atol + rtol * |ref| covers the zeros).
    """
    r = np.asarray(ref, dtype=np.float64)
    t = np.asarray(test, dtype=np.float64)
    if r.shape != t.shape:
        raise ValueError(f"output {name}: shapes differ, ref {r.shape} vs test {t.shape}")
    n = r.shape[0] if r.ndim else 1
    d = np.abs(t - r).reshape(n, -1)
    mag = np.abs(r).reshape(n, -1)
    nonzero = mag > 0
    rel = d[nonzero] / mag[nonzero]  # relative error over elements whose reference is not zero
    need_atol = np.maximum(d - tol.rtol * mag, 0.0).max(axis=1, initial=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = np.maximum(d - tol.atol, 0.0)
        need_rtol = np.where(excess > 0, excess / mag, 0.0).max(axis=1, initial=0.0)
    within = need_atol <= tol.atol
    k = max(1, math.ceil(tol.min_fraction * n))  # images that must pass
    fraction = float(within.mean()) if n else 1.0
    a, b = r.ravel(), t.ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(a @ b / norms) if norms > 0 else (1.0 if not a.any() and not b.any() else 0.0)
    return OutputComparison(
        name=name, shape=list(r.shape),
        max_abs=float(d.max(initial=0.0)), mean_abs=float(d.mean()) if d.size else 0.0,
        p99_abs=_p99(d), max_rel=float(rel.max(initial=0.0)), mean_rel=float(rel.mean()) if rel.size else 0.0,
        p99_rel=_p99(rel), cosine=cosine, ref_range=float(r.max() - r.min()) if r.size else 0.0,
        atol=tol.atol, rtol=tol.rtol, min_fraction=tol.min_fraction, images_within=fraction,
        min_atol=float(np.sort(need_atol)[k - 1]) if n else 0.0,
        min_rtol=float(np.sort(need_rtol)[k - 1]) if n else 0.0,
        passed=(fraction >= tol.min_fraction - 1e-12) if judged else None,
    )


def _p99(x: np.ndarray) -> float:
    return float(np.percentile(x, 99)) if x.size else 0.0


# --- task-level comparison -------------------------------------------------------------------------
@dataclass
class GroundTruth:
    """Optional ground truth: labels (N,); keypoints (N, P, 2), visible (N, P) and bbox (N, 4) in
    ORIGINAL image pixels with ``affine`` (N, 2, 3) mapping original to model-input pixels (identity
    when None), so PCK is computed exactly as ``fgdeploy eval`` does; image_ids (N,) for the report."""

    labels: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    visible: np.ndarray | None = None
    bbox: np.ndarray | None = None
    affine: np.ndarray | None = None
    image_ids: np.ndarray | None = None


def compare_tasks(
    ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray], *, input_size: int,
    heatmap_hw: tuple[int, int], part_names: Sequence[str], truth: GroundTruth | None = None,
) -> TaskComparison:
    """Top-1 / keypoint agreement, accuracy and PCK of each side, and the flipped images."""
    truth = truth or GroundTruth()
    ids = truth.image_ids
    r_log, t_log = np.asarray(ref[OUTPUT_LOGITS], np.float64), np.asarray(test[OUTPUT_LOGITS], np.float64)
    r_top, t_top = r_log.argmax(1), t_log.argmax(1)
    n = len(r_top)
    task = TaskComparison(n_images=n, top1_agreement=float((r_top == t_top).mean()) if n else 1.0)
    for i in (int(k) for k in np.flatnonzero(r_top != t_top)):
        task.class_flips.append(ClassFlip(
            index=i, image_id=_opt_int(ids, i), label=_opt_int(truth.labels, i),
            ref_class=int(r_top[i]), test_class=int(t_top[i]),
            ref_margin=float(r_log[i, r_top[i]] - r_log[i, t_top[i]]),
            test_margin=float(t_log[i, t_top[i]] - t_log[i, r_top[i]])))
    if truth.labels is not None:
        labels = np.asarray(truth.labels)
        task.accuracy_ref = float((r_top == labels).mean())
        task.accuracy_test = float((t_top == labels).mean())
        task.accuracy_diff_points = 100.0 * (task.accuracy_test - task.accuracy_ref)
    if OUTPUT_KEYPOINTS in ref and OUTPUT_KEYPOINTS in test:
        _compare_keypoints(task, ref, test, input_size, heatmap_hw, part_names, truth)
    return task


def _compare_keypoints(task: TaskComparison, ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                       input_size: int, heatmap_hw: tuple[int, int], part_names: Sequence[str],
                       truth: GroundTruth) -> None:
    r_kp, t_kp = np.asarray(ref[OUTPUT_KEYPOINTS]), np.asarray(test[OUTPUT_KEYPOINTS])
    r_cell = point_to_cell(r_kp, heatmap_hw, input_size)
    t_cell = point_to_cell(t_kp, heatmap_hw, input_size)
    dist = np.abs(r_cell - t_cell).max(axis=-1)  # (N, P)
    task.keypoint_same_cell = float((dist == 0).mean())
    task.keypoint_within_one_cell = float((dist <= 1).mean())
    if OUTPUT_KEYPOINT_SCORES in ref:
        vis = np.asarray(ref[OUTPUT_KEYPOINT_SCORES]) >= 0.5
        task.keypoint_same_cell_visible = float((dist[vis] == 0).mean()) if vis.any() else None
    r_heat = ref.get(OUTPUT_HEATMAPS)
    t_heat = test.get(OUTPUT_HEATMAPS)
    for i, p in zip(*np.nonzero(dist)):
        rc, tc = r_cell[i, p], t_cell[i, p]
        task.keypoint_flips.append(KeypointFlip(
            index=int(i), image_id=_opt_int(truth.image_ids, i),
            part=part_names[p] if p < len(part_names) else str(p),
            ref_cell=[int(x) for x in rc], test_cell=[int(x) for x in tc], cell_distance=int(dist[i, p]),
            ref_margin=_heat_gap(r_heat, i, p, rc, tc), test_margin=_heat_gap(t_heat, i, p, tc, rc)))
    if truth.keypoints is not None:
        ones = np.ones(r_kp.shape[:2])
        task.pck_ref = pck_of(r_kp, ref.get(OUTPUT_KEYPOINT_SCORES, ones), truth, part_names)
        task.pck_test = pck_of(t_kp, test.get(OUTPUT_KEYPOINT_SCORES, ones), truth, part_names)
        if task.pck_ref is not None and task.pck_test is not None:
            task.pck_diff_points = 100.0 * (task.pck_test - task.pck_ref)


def _heat_gap(heat: np.ndarray | None, i: int, p: int, own: np.ndarray, other: np.ndarray) -> float | None:
    if heat is None:
        return None
    h = heat[i, p]
    return float(h[own[0], own[1]]) - float(h[other[0], other[1]])


def pck_of(pred_uv: np.ndarray, scores: np.ndarray, truth: GroundTruth, part_names: Sequence[str],
           alpha: float = PCK_ALPHA) -> float | None:
    """Mean PCK@alpha over parts of model-input keypoints, computed by ``fgdeploy.evaluate`` (original
    pixels, max(w, h) of the box, visible parts only)."""
    if truth.keypoints is None or truth.visible is None or truth.bbox is None:
        return None
    from fgdeploy.evaluate import Predictions, compute_metrics, pck_key, unwarp_points

    n = len(pred_uv)
    affine = truth.affine if truth.affine is not None else np.tile(np.eye(2, 3), (n, 1, 1))
    labels = truth.labels if truth.labels is not None else np.zeros(n, np.int64)
    preds = Predictions(indices=np.arange(n), labels=labels, predicted=labels,
                        keypoints=unwarp_points(np.asarray(pred_uv, np.float64), np.asarray(affine, np.float64)),
                        scores=np.asarray(scores, np.float64), gt_keypoints=np.asarray(truth.keypoints, np.float64),
                        gt_visible=np.asarray(truth.visible, bool), bbox=np.asarray(truth.bbox, np.float64))
    result = compute_metrics(preds, [], list(part_names), alphas=[alpha])
    value = result.pck[pck_key(alpha)]["mean"]
    return None if not math.isfinite(value) else float(value)


def _opt_int(values: np.ndarray | None, i: int) -> int | None:
    return None if values is None else int(values[i])


# --- running the runners ---------------------------------------------------------------------------
class ImageSource:
    """Model-input images to compare on, loadable by index, plus optional ground truth."""

    description = "images"
    truth: GroundTruth

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, indices: Sequence[int]) -> np.ndarray:
        """(len(indices), 3, S, S) float32 RGB in [0, 1]."""
        raise NotImplementedError


class RandomImages(ImageSource):
    """Seeded uniform-noise images (no ground truth): numeric parity without a dataset."""

    def __init__(self, n: int, size: int, seed: int = 0) -> None:
        self.n, self.size, self.seed = n, size, seed
        self.truth = GroundTruth()
        self.description = f"{n} random images {size}x{size} (seed {seed})"

    def __len__(self) -> int:
        return self.n

    def load(self, indices: Sequence[int]) -> np.ndarray:
        out = np.empty((len(indices), 3, self.size, self.size), np.float32)
        for row, i in enumerate(indices):
            out[row] = np.random.default_rng([self.seed, int(i)]).random((3, self.size, self.size), np.float32)
        return out


class ArrayImages(ImageSource):
    """Images already in memory, (N, 3, S, S) float32 in [0, 1]."""

    def __init__(self, images: np.ndarray, truth: GroundTruth | None = None, description: str = "") -> None:
        self.images = np.asarray(images, np.float32)
        self.truth = truth or GroundTruth()
        self.description = description or f"{len(self.images)} given images"

    def __len__(self) -> int:
        return len(self.images)

    def load(self, indices: Sequence[int]) -> np.ndarray:
        return self.images[np.asarray(indices, dtype=np.int64)]


class DatasetImages(ImageSource):
    """Images of a CUB-format dataset split, warped like ``fgdeploy eval`` (EvalTransform), with ground truth.

    Args:
        root: dataset root (a synth-birds folder or CUB_200_2011).
        split: "train", "test" or "all".
        size: model input side S.
        n: number of images, spread evenly over the split (all when None or larger).
    """

    def __init__(self, root: str | Path, split: str, size: int, n: int | None = None) -> None:
        from fgdeploy.data.cub import CubDataset
        from fgdeploy.data.transforms import EvalTransform

        dataset = CubDataset(root, split)  # type: ignore[arg-type]
        total = len(dataset)
        count = total if n is None else max(0, min(n, total))
        picks = np.unique(np.linspace(0, total - 1, count).round().astype(np.int64)) if count else np.zeros(0, int)
        transform = EvalTransform(size)
        images, labels, ids, kps, vis, boxes, affines = [], [], [], [], [], [], []
        for index in picks:
            raw = dataset[int(index)]
            warped = transform(raw, None)
            images.append(warped.image)
            labels.append(raw.label)
            ids.append(raw.image_id)
            kps.append(np.asarray(raw.keypoints, np.float64))
            vis.append(np.asarray(raw.visible, bool))
            boxes.append(np.asarray(raw.bbox, np.float64))
            affines.append(np.asarray(warped.affine, np.float64)[:2])
        self._images = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
        self.truth = GroundTruth(labels=np.asarray(labels, np.int64), keypoints=np.stack(kps) if kps else None,
                                 visible=np.stack(vis) if vis else None, bbox=np.stack(boxes) if boxes else None,
                                 affine=np.stack(affines) if affines else None, image_ids=np.asarray(ids, np.int64))
        self.class_names = list(dataset.class_names)
        self.description = f"{len(picks)} of {total} {split} images of {dataset.root}"

    def __len__(self) -> int:
        return len(self._images)

    def load(self, indices: Sequence[int]) -> np.ndarray:
        batch = self._images[np.asarray(indices, dtype=np.int64)]  # (n, S, S, 3) uint8
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def run_batches(runner: Runner, source: ImageSource, indices: Sequence[int], batch_size: int,
                progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Run ``runner`` on ``source[indices]`` in batches and concatenate its outputs.

    A static-batch runner gets batches of its own size; a short last batch is padded by repeating its
    last image, and the padding's outputs are dropped.
    """
    fixed = static_batch(runner)
    parts: dict[str, list[np.ndarray]] = {}
    for chunk in _chunks(list(indices), fixed or batch_size):
        images = source.load(chunk)
        if fixed and len(chunk) < fixed:
            images = np.concatenate([images, np.repeat(images[-1:], fixed - len(chunk), axis=0)])
        outs = runner.infer(image_feeds(runner, images))
        for name, value in outs.items():
            parts.setdefault(name, []).append(value[:len(chunk)])
        if progress is not None:
            progress(len(chunk))
    return {name: np.concatenate(values, axis=0) for name, values in parts.items()}


def image_feeds(runner: Runner, images: np.ndarray) -> dict[str, np.ndarray]:
    """Feed dict for a one-input model, cast to the input's dtype (an fp16-input ONNX gets float16)."""
    specs = runner.input_specs()
    name = INPUT_IMAGES if INPUT_IMAGES in specs else next(iter(specs))
    return {name: np.ascontiguousarray(images.astype(specs[name].dtype, copy=False))}


def static_batch(runner: Runner) -> int | None:
    """The fixed batch size of the runner's image input, or None when dynamic."""
    specs = runner.input_specs()
    spec = specs.get(INPUT_IMAGES) or next(iter(specs.values()))
    first = spec.shape[0] if spec.shape else -1
    return None if first in (-1, None) else int(first)


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return _json_safe(value.item())
    return value


# --- batch invariance ------------------------------------------------------------------------------
def check_batch_invariance(runner: Runner, source: ImageSource, batch_size: int, tol: Tolerance) -> BatchInvariance:
    """Score the first images alone, in one full batch and in a partial last batch; answers must agree.

    Top-1 classes and keypoints must be identical; logits within ``tol`` (every image).
    """
    fixed = static_batch(runner)
    if fixed is not None:
        return BatchInvariance(runner.name, fixed, 0, 0, None, 0, 0, None,
                               note=f"static batch {fixed}: only full batches run; export with --batch dynamic "
                                    "to check batch invariance")
    full = max(1, min(batch_size, len(source) - 1))
    n = min(len(source), full + max(1, full // 2 - 1))
    indices = list(range(n))
    alone = [runner.infer(image_feeds(runner, source.load([i]))) for i in indices]
    single = {k: np.concatenate([a[k] for a in alone], axis=0) for k in alone[0]} if alone else {}
    batched = run_batches(runner, source, indices, full)
    logits = compare_output(OUTPUT_LOGITS, single[OUTPUT_LOGITS], batched[OUTPUT_LOGITS],
                            dataclasses.replace(tol, min_fraction=1.0))
    top1 = int((single[OUTPUT_LOGITS].argmax(1) != batched[OUTPUT_LOGITS].argmax(1)).sum())
    kp = 0
    if OUTPUT_KEYPOINTS in single and OUTPUT_KEYPOINTS in batched:
        kp = int(np.any(single[OUTPUT_KEYPOINTS] != batched[OUTPUT_KEYPOINTS], axis=-1).sum())
    passed = bool(logits.passed) and top1 == 0 and kp == 0
    return BatchInvariance(runner.name, full, n, n - full, logits.max_abs, top1, kp, passed,
                           note=f"{n} images alone vs a batch of {full} and a partial batch of {n - full}")


# --- divergence localisation -----------------------------------------------------------------------
STAGES = ("heatmaps", "keypoints", "part_features", "logits")


def locate_divergence(
    ref: RunnerFactory, test: RunnerFactory, source: ImageSource, indices: Sequence[int], tol: Tolerance,
    *, input_size: int, heatmap_hw: tuple[int, int] | None, batch_size: int = 8,
) -> Divergence:
    """Rerun ``indices`` with intermediate outputs on both sides and name the first stage that differs.

    Stages, in pipeline order: heatmaps (the CoordinateTransfer input), keypoints (heatmap cells),
    pooled part features (the CoordinateTransfer output) and logits. A runner that cannot expose
    intermediates is compared on its final outputs only (said in ``note``).
    """
    indices = list(indices)[:MAX_DEBUG_IMAGES]
    notes: list[str] = []
    outs = []
    for factory in (ref, test):
        try:
            runner = factory(True)
        except (TypeError, NotImplementedError) as exc:
            notes.append(f"no intermediate outputs from this runner ({exc}); final outputs only")
            runner = factory(False)
        with runner:
            outs.append(run_batches(runner, source, indices, batch_size))
    r, t = outs
    stages: list[StageDiff] = []
    from fgdeploy.export.debug_outputs import debug_heatmaps_name, debug_part_features_name

    heat_names = [n for n in (debug_heatmaps_name(0), OUTPUT_HEATMAPS) if n in r and n in t]
    if heat_names:
        stages.append(_stage("heatmaps", r[heat_names[0]], t[heat_names[0]], tol))
    if OUTPUT_KEYPOINTS in r and OUTPUT_KEYPOINTS in t:
        diff = float(np.abs(r[OUTPUT_KEYPOINTS] - t[OUTPUT_KEYPOINTS]).max(initial=0.0))
        same = heatmap_hw is None or bool(np.array_equal(point_to_cell(r[OUTPUT_KEYPOINTS], heatmap_hw, input_size),
                                                         point_to_cell(t[OUTPUT_KEYPOINTS], heatmap_hw, input_size)))
        stages.append(StageDiff("keypoints", diff, same and (heatmap_hw is not None or diff == 0.0)))
    k = 0
    while debug_part_features_name(k) in r and debug_part_features_name(k) in t:
        stages.append(_stage("part_features" if k == 0 else f"part_features[{k}]",
                             r[debug_part_features_name(k)], t[debug_part_features_name(k)], tol))
        k += 1
    if k == 0:
        notes.append("pooled part features not available on both sides")
    stages.append(_stage("logits", r[OUTPUT_LOGITS], t[OUTPUT_LOGITS], tol))
    first = next((s.stage for s in stages if not s.passed), None)
    return Divergence(first, indices, stages, note="; ".join(dict.fromkeys(notes)))


def _stage(name: str, ref: np.ndarray, test: np.ndarray, tol: Tolerance) -> StageDiff:
    cmp = compare_output(name, ref, test, dataclasses.replace(tol, min_fraction=1.0))
    return StageDiff(name, cmp.max_abs, bool(cmp.passed))


# --- the whole run ---------------------------------------------------------------------------------
RunnerFactory = Callable[[bool], Runner]  # debug flag -> a new, inactive runner


@dataclass
class ParityConfig:
    """How ``run_parity`` runs; thresholds default by precision (``DEFAULT_THRESHOLDS``)."""

    batch_size: int = 8
    precision: str | None = None           # None: "fp16" if either runner reports fp16, else "fp32"
    atol: float | None = None              # override the precision's default tolerance
    rtol: float | None = None
    thresholds: Thresholds | None = None   # replaces the defaults entirely
    batch_check: bool = True               # batch invariance of the test runner
    locate_divergence: bool = True         # on failure, rerun a few images with intermediate outputs


def run_parity(ref: RunnerFactory, test: RunnerFactory, source: ImageSource, config: ParityConfig | None = None,
               progress: Callable[[int], None] | None = None) -> ParityReport:
    """Run both runners on every image of ``source`` and compare (see the module docstring).

    Args:
        ref, test: factories ``debug -> Runner``; each runner is opened once, one at a time.
        source: the images (and optional ground truth).
        config: batch size, precision, tolerances. Defaults to ``ParityConfig()``.
        progress: called with the number of images done after every batch.
    """
    config = config or ParityConfig()
    indices = list(range(len(source)))
    with ref(False) as r:
        ref_name, ref_meta = r.name, r.metadata()
        ref_out = run_batches(r, source, indices, config.batch_size, progress)
    with test(False) as t:
        test_name, test_meta = t.name, t.metadata()
        test_out = run_batches(t, source, indices, config.batch_size, progress)
        precision = config.precision or _precision(ref_meta, test_meta)
        thresholds = config.thresholds or default_thresholds(precision, config.atol, config.rtol)
        batch = check_batch_invariance(t, source, config.batch_size, thresholds.tolerance) if config.batch_check else None
    input_size = int(test_meta.get("input_size") or ref_meta.get("input_size") or source.load([0]).shape[-1])
    heatmap_hw = _heatmap_hw(ref_meta, test_meta, ref_out, test_out)
    part_names = list(test_meta.get("part_names") or ref_meta.get("part_names") or [])
    outputs = [compare_output(name, ref_out[name], test_out[name], thresholds.tolerance,
                              judged=name != OUTPUT_KEYPOINTS) for name in _common_outputs(ref_out, test_out)]
    task = TaskComparison(n_images=len(indices), top1_agreement=1.0)
    if heatmap_hw is not None:
        task = compare_tasks(ref_out, test_out, input_size=input_size, heatmap_hw=heatmap_hw,
                             part_names=part_names or [str(p) for p in range(ref_out[OUTPUT_KEYPOINTS].shape[1])],
                             truth=source.truth)
    else:
        task = compare_tasks({OUTPUT_LOGITS: ref_out[OUTPUT_LOGITS]}, {OUTPUT_LOGITS: test_out[OUTPUT_LOGITS]},
                             input_size=input_size, heatmap_hw=(1, 1), part_names=part_names, truth=source.truth)
    report = ParityReport(ref=ref_name, test=test_name, precision=precision, n_images=len(indices),
                          data=source.description, thresholds=dataclasses.asdict(thresholds), outputs=outputs,
                          task=task, batch=batch, checks=build_checks(outputs, task, batch, thresholds))
    if not report and config.locate_divergence:
        suspects = _suspect_images(task, ref_out, test_out, thresholds.tolerance) or indices[:MAX_DEBUG_IMAGES]
        report.divergence = locate_divergence(ref, test, source, suspects, thresholds.tolerance,
                                              input_size=input_size, heatmap_hw=heatmap_hw,
                                              batch_size=config.batch_size)
    return report


def build_checks(outputs: Sequence[OutputComparison], task: TaskComparison, batch: BatchInvariance | None,
                 th: Thresholds) -> list[Check]:
    """Every pass/fail decision of a report, with the value and threshold."""
    checks = [Check(f"{o.name} within atol={o.atol:g} rtol={o.rtol:g}", o.images_within, o.min_fraction, ">=",
                    bool(o.passed)) for o in outputs if o.passed is not None]
    logits = next((o for o in outputs if o.name == OUTPUT_LOGITS), None)
    if th.logit_error_over_range is not None and logits is not None:
        value = logits.max_abs / logits.ref_range if logits.ref_range > 0 else logits.max_abs
        checks.append(Check("logits max abs error / logit range", value, th.logit_error_over_range, "<=",
                            value <= th.logit_error_over_range))
    checks.append(_at_least("top-1 agreement", task.top1_agreement, th.top1_agreement))
    if task.keypoint_same_cell is not None and th.keypoint_same_cell is not None:
        checks.append(_at_least("keypoints in the same cell", task.keypoint_same_cell, th.keypoint_same_cell))
    if task.keypoint_within_one_cell is not None and th.keypoint_within_one_cell is not None:
        checks.append(_at_least("keypoints within one cell", task.keypoint_within_one_cell,
                                th.keypoint_within_one_cell))
    if task.accuracy_diff_points is not None and th.accuracy_diff_points is not None:
        value = abs(task.accuracy_diff_points)
        checks.append(Check("|accuracy difference| (points)", value, th.accuracy_diff_points, "<=",
                            value <= th.accuracy_diff_points + 1e-9))
    if batch is not None and batch.passed is not None:
        checks.append(Check("batch invariance", float(batch.passed), 1.0, "==", batch.passed))
    return checks


def _at_least(name: str, value: float, threshold: float) -> Check:
    return Check(name, value, threshold, ">=", value >= threshold - 1e-12)


def _precision(*metas: Mapping[str, Any]) -> str:
    return "fp16" if any(m.get("precision") == "fp16" for m in metas) else "fp32"


def _heatmap_hw(ref_meta: Mapping[str, Any], test_meta: Mapping[str, Any], ref_out: Mapping[str, np.ndarray],
                test_out: Mapping[str, np.ndarray]) -> tuple[int, int] | None:
    for meta in (test_meta, ref_meta):
        if meta.get("heatmap_size"):
            h, w = meta["heatmap_size"]
            return int(h), int(w)
    for out in (ref_out, test_out):
        if OUTPUT_HEATMAPS in out:
            return int(out[OUTPUT_HEATMAPS].shape[-2]), int(out[OUTPUT_HEATMAPS].shape[-1])
    return None


def _common_outputs(ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray]) -> list[str]:
    known = [OUTPUT_LOGITS, OUTPUT_KEYPOINTS, OUTPUT_KEYPOINT_SCORES, OUTPUT_HEATMAPS]
    common = [n for n in known if n in ref and n in test]
    return common + sorted(n for n in set(ref) & set(test) if n not in known and not n.startswith("debug."))


def _suspect_images(task: TaskComparison, ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                    tol: Tolerance) -> list[int]:
    """Images that flipped or whose logits are out of tolerance, worst first."""
    r, t = np.asarray(ref[OUTPUT_LOGITS], np.float64), np.asarray(test[OUTPUT_LOGITS], np.float64)
    excess = (np.abs(t - r) - tol.atol - tol.rtol * np.abs(r)).max(axis=1)
    flipped = [f.index for f in task.class_flips] + [f.index for f in task.keypoint_flips]
    bad = [int(i) for i in np.argsort(-excess) if excess[i] > 0]
    return list(dict.fromkeys(flipped + bad))[:MAX_DEBUG_IMAGES]


# --- rendering -------------------------------------------------------------------------------------
def render_report(report: ParityReport) -> str:
    """The report as plain-text tables."""
    lines = [f"parity: {report.ref} (ref) vs {report.test} (test), {report.precision} thresholds, "
             f"{report.n_images} images ({report.data})", ""]
    head = ("output", "max_abs", "mean_abs", "p99_abs", "max_rel", "p99_rel", "cosine", "range", "within",
            "min_atol", "min_rtol", "verdict")
    rows = [head] + [(o.name, _g(o.max_abs), _g(o.mean_abs), _g(o.p99_abs), _g(o.max_rel), _g(o.p99_rel),
                      f"{o.cosine:.7f}", _g(o.ref_range), f"{100 * o.images_within:.2f}%", _g(o.min_atol),
                      _g(o.min_rtol), "task" if o.passed is None else ("PASS" if o.passed else "FAIL"))
                     for o in report.outputs]
    lines += _table(rows) + [""]
    lines += _task_lines(report.task)
    if report.batch is not None:
        b = report.batch
        verdict = "skipped" if b.passed is None else ("PASS" if b.passed else "FAIL")
        lines.append(f"batch invariance ({b.runner}): {b.note}; max |logit diff| {_g(b.max_abs_logit_diff)}, "
                     f"top-1 changes {b.top1_changes}, keypoint changes {b.keypoint_changes}: {verdict}")
    lines += ["", "checks:"]
    lines += [f"  {'PASS' if c.passed else 'FAIL'}  {c.name}: {_g(c.value)} {c.op} {_g(c.threshold)}"
              for c in report.checks]
    if report.divergence is not None:
        d = report.divergence
        where = d.first_stage or "nowhere beyond tolerance (on the rerun images)"
        lines.append(f"first divergence: {where} [" + ", ".join(
            f"{s.stage} max_abs {_g(s.max_abs)} {'ok' if s.passed else 'DIFFERS'}" for s in d.stages)
            + f"] on images {d.images}" + (f"; {d.note}" if d.note else ""))
    failed = sum(not c.passed for c in report.checks)
    lines.append(f"RESULT: {'PASS' if report else 'FAIL'} ({len(report.checks) - failed}/{len(report.checks)} "
                 "checks passed)")
    return "\n".join(lines)


def _task_lines(task: TaskComparison) -> list[str]:
    lines = [f"top-1 agreement: {_pct(task.top1_agreement)} ({task.n_images - len(task.class_flips)}"
             f"/{task.n_images})"]
    if task.keypoint_same_cell is not None:
        lines.append(f"keypoints: same cell {_pct(task.keypoint_same_cell)}, within one cell "
                     f"{_pct(task.keypoint_within_one_cell)}, same cell (parts scored visible) "
                     f"{_pct(task.keypoint_same_cell_visible)}")
    if task.accuracy_ref is not None:
        lines.append(f"accuracy: ref {_pct(task.accuracy_ref)}, test {_pct(task.accuracy_test)}, "
                     f"diff {task.accuracy_diff_points:+.2f} points")
    if task.pck_ref is not None:
        lines.append(f"PCK@{PCK_ALPHA:g}: ref {_pct(task.pck_ref)}, test {_pct(task.pck_test)}, "
                     f"diff {task.pck_diff_points:+.2f} points")
    for f in task.class_flips[:MAX_LISTED_FLIPS]:
        lines.append(f"  class flip: image {f.index} (id {f.image_id}, label {f.label}): ref {f.ref_class} -> "
                     f"test {f.test_class}; ref margin {f.ref_margin:.4g}, test margin {f.test_margin:.4g}")
    for k in task.keypoint_flips[:MAX_LISTED_FLIPS]:
        lines.append(f"  keypoint flip: image {k.index} (id {k.image_id}) {k.part}: cell {k.ref_cell} -> "
                     f"{k.test_cell} ({k.cell_distance} cell(s)); ref margin {_g(k.ref_margin)}, "
                     f"test margin {_g(k.test_margin)}")
    hidden = sum(max(0, len(f) - MAX_LISTED_FLIPS) for f in (task.class_flips, task.keypoint_flips))
    if hidden:
        lines.append(f"  ... {hidden} more flip(s) in the JSON report")
    return lines


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
