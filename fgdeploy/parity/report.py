"""Parity results as data: thresholds, per-output and task-level comparisons, checks, the report.

``ParityReport`` is truthy when every check passes, renders plain-text tables and dumps JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgdeploy.text import percent as _pct, plural

PCK_ALPHA = 0.1
MAX_LISTED_FLIPS = 20  # in the rendered table; the JSON has them all


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
    box_iou: float | None = None           # head/body boxes (part-net models) agree when IoU(ref, test) >= this
    box_agreement: float | None = None     # fraction of (image, box) that must agree
    # judge the logits' element check only on images whose keypoints and boxes agree: an image where a keypoint
    # moved (allowed only as a near-tie) or a box changed pools other features, and its class is judged by the
    # task checks (top-1, accuracy)
    logits_on_settled_images: bool = False


DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(Tolerance(atol=1e-4, rtol=1e-3), top1_agreement=1.0, keypoint_same_cell=1.0,
                       keypoint_within_one_cell=1.0, accuracy_diff_points=0.0, logit_error_over_range=1e-4,
                       box_iou=0.999, box_agreement=1.0),
    # fp16 (eps ~1e-3) accumulates ~1e-2 relative error through a deep conv stack; a keypoint that moves
    # by a cell changes its part features, hence the per-image fraction instead of "every element".
    "fp16": Thresholds(Tolerance(atol=5e-2, rtol=5e-2, min_fraction=0.99), top1_agreement=0.99,
                       keypoint_same_cell=None, keypoint_within_one_cell=0.99, accuracy_diff_points=0.5,
                       logit_error_over_range=None, box_iou=0.9, box_agreement=0.99),
    # int8 (static, per-channel weights; 256 activation levels per tensor): logits and scores move by a few
    # percent, so outputs are judged at task level (the export guard's defaults): top-1 agreement, keypoints
    # in the same cell (a move between cells the fp32 heatmap scores within the tolerance is a near-tie),
    # accuracy. The element check stays, loosely, to catch a broken model (NaNs, a wrong output).
    # Head/body boxes of part-net models are reported but not judged (they follow the keypoints). The logits'
    # element check counts only images whose keypoints and boxes agree: measured on a trained demo_partnets INT8
    # model (500 held-out images), every one of the 50 images outside the tolerance had a moved keypoint (near-
    # ties) or a changed box, and all images without either were within it.
    "int8": Thresholds(Tolerance(atol=0.1, rtol=0.1, min_fraction=0.9), top1_agreement=0.99,
                       keypoint_same_cell=0.98, keypoint_within_one_cell=None, accuracy_diff_points=0.5,
                       logit_error_over_range=None, logits_on_settled_images=True),
}


def default_thresholds(precision: str, atol: float | None = None, rtol: float | None = None) -> Thresholds:
    """Thresholds for ``precision`` ("fp32"/"fp16"/"int8"), with atol/rtol overridden when given."""
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
    judged_on: str = ""              # which images the verdict counts, when not all ("N of M whose ...")


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
    near_tie: bool | None = None  # ref_margin within the tolerance: both classes are the reference's argmax


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
    near_tie: bool | None = None  # ref_margin within the tolerance: both cells are the reference's argmax


@dataclass
class TaskComparison:
    n_images: int
    top1_agreement: float
    keypoint_same_cell: float | None = None
    keypoint_within_one_cell: float | None = None
    keypoint_same_cell_visible: float | None = None  # only parts the reference scores >= 0.5
    keypoint_near_ties: int | None = None            # moved keypoints whose reference heatmap had a near-tie
    keypoint_same_cell_or_tie: float | None = None   # same cell, or moved between near-tied cells
    keypoint_within_one_cell_or_tie: float | None = None
    accuracy_ref: float | None = None
    accuracy_test: float | None = None
    accuracy_diff_points: float | None = None        # (test - ref) * 100
    class_near_ties: int | None = None               # class flips whose reference logits had a near-tie
    top1_agreement_or_tie: float | None = None       # same class, or moved between near-tied classes
    accuracy_diff_points_beyond_ties: float | None = None  # accuracy diff if near-tie flips kept ref's class
    pck_ref: float | None = None                     # PCK@0.1 of the bounding box, visible parts
    pck_test: float | None = None
    pck_diff_points: float | None = None
    box_iou_threshold: float | None = None           # head/body boxes (part-net models): IoU counted as agreeing
    box_agreement: float | None = None               # fraction of (image, box) with IoU(ref, test) >= threshold
    box_iou_mean: float | None = None
    box_iou_min: float | None = None
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
    image_ids: list[int] | None = None      # CUB image ids of the images compared (None: not from a dataset)
    guard_overlap: int | None = None        # how many of them a precision guard chose on (None: no guard recorded)

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
        from fgdeploy.fileio import atomic_write_bytes

        atomic_write_bytes(path, (self.to_json() + "\n").encode("utf-8"))

    def render(self) -> str:
        """Human-readable tables (outputs, task, checks, flips)."""
        return render_report(self)


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


def id_list(ids: Sequence[int], head: int = 6, tail: int = 2) -> str:
    """``1, 3, 5, 7, 9, 11, ..., 597, 599``: the first and last few of a long list."""
    shown = [str(i) for i in ids]
    return ", ".join(shown if len(shown) <= head + tail + 1 else shown[:head] + ["..."] + shown[-tail:])


def guard_overlap_warning(overlap: int, n_images: int) -> str:
    """The warning when parity compares on images the precision guard chose on."""
    return (f"WARNING: {overlap} of the {n_images} images compared are ones the precision guard chose the float "
            "nodes on (recorded in the model's metadata): on them the agreement is what the guard tuned to, not an "
            "independent check; compare on other images (without --data parity takes the test images the guard "
            "did not use)")


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


# --- rendering -------------------------------------------------------------------------------------
def render_report(report: ParityReport) -> str:
    """The report as plain-text tables."""
    lines = [f"parity: {report.ref} (ref) vs {report.test} (test), {report.precision} thresholds, "
             f"{plural(report.n_images, 'image')} ({report.data})"]
    if report.image_ids:
        lines.append(f"image ids: {id_list(report.image_ids)} (all in the JSON report)")
    if report.guard_overlap:
        lines.append(guard_overlap_warning(report.guard_overlap, report.n_images))
    lines.append("")
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
    lines += [_check_line(c) for c in report.checks]
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


def _check_line(check: Check) -> str:
    """'  PASS  top-1 agreement: 100.00% >= 99.00%' (">=" checks are fractions of images; "==" a yes/no check)."""
    verdict = "PASS" if check.passed else "FAIL"
    if check.op == "==":
        return f"  {verdict}  {check.name}"
    shown = _pct if check.op == ">=" else (lambda v: _g(v, 6))
    return f"  {verdict}  {check.name}: {shown(check.value)} {check.op} {shown(check.threshold)}"


def _task_lines(task: TaskComparison) -> list[str]:
    lines = [f"top-1 agreement: {_pct(task.top1_agreement)} ({task.n_images - len(task.class_flips)}"
             f"/{task.n_images})"]
    if task.keypoint_same_cell is not None:
        lines.append(f"keypoints: same cell {_pct(task.keypoint_same_cell)}, within one cell "
                     f"{_pct(task.keypoint_within_one_cell)}, same cell (parts scored visible) "
                     f"{_pct(task.keypoint_same_cell_visible)}")
    if task.keypoint_near_ties:
        lines.append(f"keypoints: {task.keypoint_near_ties} moved between cells the reference scores within "
                     f"tolerance (near-ties); same cell or near-tie {_pct(task.keypoint_same_cell_or_tie)}")
    if task.class_near_ties:
        lines.append(f"top-1: {task.class_near_ties} image(s) moved between classes the reference scores within "
                     f"tolerance (near-ties); same class or near-tie {_pct(task.top1_agreement_or_tie)}")
    if task.box_agreement is not None:
        lines.append(f"head/body boxes: IoU >= {task.box_iou_threshold:g} for {_pct(task.box_agreement)}, mean IoU "
                     f"{task.box_iou_mean:.4f}, min {task.box_iou_min:.4f}")
    if task.accuracy_ref is not None:
        lines.append(f"accuracy: ref {_pct(task.accuracy_ref)}, test {_pct(task.accuracy_test)}, "
                     f"diff {task.accuracy_diff_points:+.2f} points")
    if task.pck_ref is not None:
        lines.append(f"PCK@{PCK_ALPHA:g}: ref {_pct(task.pck_ref)}, test {_pct(task.pck_test)}, "
                     f"diff {task.pck_diff_points:+.2f} points")
    for f in task.class_flips[:MAX_LISTED_FLIPS]:
        known = ", ".join(f"{k} {v}" for k, v in (("id", f.image_id), ("label", f.label)) if v is not None)
        lines.append(f"  class flip: image {f.index}{f' ({known})' if known else ''}: ref {f.ref_class} -> "
                     f"test {f.test_class}; ref margin {f.ref_margin:.4g}, test margin {f.test_margin:.4g}"
                     f"{' (near-tie)' if f.near_tie else ''}")
    for k in task.keypoint_flips[:MAX_LISTED_FLIPS]:
        lines.append(f"  keypoint flip: image {k.index}{'' if k.image_id is None else f' (id {k.image_id})'} {k.part}: cell {k.ref_cell} -> "
                     f"{k.test_cell} ({k.cell_distance} cell(s)); ref margin {_g(k.ref_margin)}, "
                     f"test margin {_g(k.test_margin)}{' (near-tie)' if k.near_tie else ''}")
    hidden = sum(max(0, len(f) - MAX_LISTED_FLIPS) for f in (task.class_flips, task.keypoint_flips))
    if hidden:
        lines.append(f"  ... {hidden} more flip(s) in the JSON report")
    return lines


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _g(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


