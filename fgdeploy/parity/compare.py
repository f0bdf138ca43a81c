"""Numeric and task-level comparison of two runners' outputs (first axis = images)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fgdeploy.errors import FgdeployError
from fgdeploy.geometry import point_to_cell
from fgdeploy.parity.report import (
    PCK_ALPHA, BatchInvariance, Check, ClassFlip, GroundTruth, KeypointFlip, OutputComparison, TaskComparison,
    Thresholds, Tolerance,
)
from fgdeploy.tensors import (
    OUTPUT_HEATMAPS, OUTPUT_KEYPOINT_SCORES, OUTPUT_KEYPOINTS, OUTPUT_LOGITS, OUTPUT_PART_BOXES,
)


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
        raise FgdeployError(f"output {name}: shapes differ, ref {r.shape} vs test {t.shape}: the two are not the "
                            "same model (parity compares artifacts of one checkpoint, e.g. the .pt and its export)")
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


def settled_images(ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N,) bool: images whose keypoints and head/body boxes are the same in ``test`` as in ``ref`` (all True for
    outputs without keypoints)."""
    n = len(ref[OUTPUT_LOGITS])
    same = np.ones(n, bool)
    if OUTPUT_KEYPOINTS in ref and OUTPUT_KEYPOINTS in test:
        same &= np.all(np.asarray(ref[OUTPUT_KEYPOINTS]) == np.asarray(test[OUTPUT_KEYPOINTS]), axis=(1, 2))
    if OUTPUT_PART_BOXES in ref and OUTPUT_PART_BOXES in test:
        diff = np.abs(np.asarray(ref[OUTPUT_PART_BOXES], np.float64) - np.asarray(test[OUTPUT_PART_BOXES], np.float64))
        same &= diff.reshape(n, -1).max(axis=1, initial=0.0) <= 1e-3
    return same


def compare_logits(ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray], tol: Tolerance,
                   settled_only: bool) -> OutputComparison:
    """The logits' element check, on every image or (``settled_only``) on the images whose keypoints and boxes
    agree (``settled_images``; all images when none do)."""
    if not settled_only:
        return compare_output(OUTPUT_LOGITS, ref[OUTPUT_LOGITS], test[OUTPUT_LOGITS], tol)
    rows = settled_images(ref, test)
    if not rows.any():
        rows[:] = True
    result = compare_output(OUTPUT_LOGITS, np.asarray(ref[OUTPUT_LOGITS])[rows], np.asarray(test[OUTPUT_LOGITS])[rows],
                            tol)
    result.judged_on = f"{int(rows.sum())} of {len(rows)} images whose keypoints and boxes agree"
    return result


def _p99(x: np.ndarray) -> float:
    return float(np.percentile(x, 99)) if x.size else 0.0


# --- task-level comparison -------------------------------------------------------------------------


def compare_tasks(
    ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray], *, input_size: int,
    heatmap_hw: tuple[int, int], part_names: Sequence[str], truth: GroundTruth | None = None,
    tie_tolerance: Tolerance | None = None, box_iou: float | None = None,
) -> TaskComparison:
    """Top-1 / keypoint agreement, accuracy and PCK of each side, head/body box agreement, and the flipped images.

    With the reference's heatmaps in ``ref`` and a ``tie_tolerance``, a keypoint that moved to a cell the
    reference scored within that tolerance of its own argmax is a near-tie: either cell is a correct
    argmax of the reference up to rounding, so it counts towards ``keypoint_same_cell_or_tie``. Likewise a
    class flip whose reference logits are within the tolerance of each other counts towards
    ``top1_agreement_or_tie``, and ``accuracy_diff_points_beyond_ties`` keeps the reference's class there. With
    ``part_boxes`` on both sides, boxes agree when their IoU is >= ``box_iou`` (default 0.999).
    """
    truth = truth or GroundTruth()
    ids = truth.image_ids
    r_log, t_log = np.asarray(ref[OUTPUT_LOGITS], np.float64), np.asarray(test[OUTPUT_LOGITS], np.float64)
    r_top, t_top = r_log.argmax(1), t_log.argmax(1)
    n = len(r_top)
    task = TaskComparison(n_images=n, top1_agreement=float((r_top == t_top).mean()) if n else 1.0)
    for i in (int(k) for k in np.flatnonzero(r_top != t_top)):
        ref_margin = float(r_log[i, r_top[i]] - r_log[i, t_top[i]])
        near_tie = None
        if tie_tolerance is not None:
            near_tie = ref_margin <= tie_tolerance.atol + tie_tolerance.rtol * abs(float(r_log[i, r_top[i]]))
        task.class_flips.append(ClassFlip(
            index=i, image_id=_opt_int(ids, i), label=_opt_int(truth.labels, i),
            ref_class=int(r_top[i]), test_class=int(t_top[i]), ref_margin=ref_margin,
            test_margin=float(t_log[i, t_top[i]] - t_log[i, r_top[i]]), near_tie=near_tie))
    untied_top = t_top.copy()  # the test's classes with each near-tie flip given the reference's class
    if tie_tolerance is not None:
        tied = [f.index for f in task.class_flips if f.near_tie]
        untied_top[tied] = r_top[tied]
        task.class_near_ties = len(tied)
        task.top1_agreement_or_tie = float((r_top == untied_top).mean()) if n else 1.0
    if truth.labels is not None:
        labels = np.asarray(truth.labels)
        task.accuracy_ref = float((r_top == labels).mean())
        task.accuracy_test = float((t_top == labels).mean())
        task.accuracy_diff_points = 100.0 * (task.accuracy_test - task.accuracy_ref)
        if tie_tolerance is not None:
            task.accuracy_diff_points_beyond_ties = 100.0 * float((untied_top == labels).mean() - task.accuracy_ref)
    if OUTPUT_KEYPOINTS in ref and OUTPUT_KEYPOINTS in test:
        _compare_keypoints(task, ref, test, input_size, heatmap_hw, part_names, truth, tie_tolerance)
    if OUTPUT_PART_BOXES in ref and OUTPUT_PART_BOXES in test:
        from fgdeploy.reference.part_boxes import box_iou as iou_of

        ious = iou_of(np.asarray(ref[OUTPUT_PART_BOXES]), np.asarray(test[OUTPUT_PART_BOXES]))   # (N, 2)
        task.box_iou_threshold = 0.999 if box_iou is None else box_iou
        task.box_agreement = float((ious >= task.box_iou_threshold).mean()) if ious.size else 1.0
        task.box_iou_mean = float(ious.mean()) if ious.size else 1.0
        task.box_iou_min = float(ious.min()) if ious.size else 1.0
    return task


def _compare_keypoints(task: TaskComparison, ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                       input_size: int, heatmap_hw: tuple[int, int], part_names: Sequence[str],
                       truth: GroundTruth, tie_tolerance: Tolerance | None) -> None:
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
        ref_margin = _heat_gap(r_heat, i, p, rc, tc)
        near_tie = None
        if ref_margin is not None and tie_tolerance is not None:
            top = abs(float(r_heat[i, p, rc[0], rc[1]]))  # type: ignore[index]  # ref_margin implies heatmaps
            near_tie = ref_margin <= tie_tolerance.atol + tie_tolerance.rtol * top
        task.keypoint_flips.append(KeypointFlip(
            index=int(i), image_id=_opt_int(truth.image_ids, i),
            part=part_names[p] if p < len(part_names) else str(p),
            ref_cell=[int(x) for x in rc], test_cell=[int(x) for x in tc], cell_distance=int(dist[i, p]),
            ref_margin=ref_margin, test_margin=_heat_gap(t_heat, i, p, tc, rc), near_tie=near_tie))
    if r_heat is not None and tie_tolerance is not None:
        task.keypoint_near_ties = sum(bool(f.near_tie) for f in task.keypoint_flips)
        far_ties = sum(bool(f.near_tie) and f.cell_distance > 1 for f in task.keypoint_flips)
        task.keypoint_same_cell_or_tie = float(((dist == 0).sum() + task.keypoint_near_ties) / dist.size)
        task.keypoint_within_one_cell_or_tie = float(((dist <= 1).sum() + far_ties) / dist.size)
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
    gap = float(h[own[0], own[1]]) - float(h[other[0], other[1]])
    return gap if math.isfinite(gap) else None   # NaN: this image's heatmaps were not fetched


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


def build_checks(outputs: Sequence[OutputComparison], task: TaskComparison, batch: BatchInvariance | None,
                 th: Thresholds) -> list[Check]:
    """Every pass/fail decision of a report, with the value and threshold."""
    checks = [Check(f"{o.name} within atol={o.atol:g} rtol={o.rtol:g}" + (f" ({o.judged_on})" if o.judged_on else ""),
                    o.images_within, o.min_fraction, ">=", bool(o.passed)) for o in outputs if o.passed is not None]
    logits = next((o for o in outputs if o.name == OUTPUT_LOGITS), None)
    if th.logit_error_over_range is not None and logits is not None:
        value = logits.max_abs / logits.ref_range if logits.ref_range > 0 else logits.max_abs
        checks.append(Check("logits max abs error / logit range", value, th.logit_error_over_range, "<=",
                            value <= th.logit_error_over_range))
    if task.top1_agreement_or_tie is not None:
        checks.append(_at_least("top-1 agreement (near-ties allowed)", task.top1_agreement_or_tie, th.top1_agreement))
    else:
        checks.append(_at_least("top-1 agreement", task.top1_agreement, th.top1_agreement))
    if task.keypoint_same_cell_or_tie is not None and th.keypoint_same_cell is not None:
        checks.append(_at_least("keypoints in the same cell (near-ties allowed)", task.keypoint_same_cell_or_tie,
                                th.keypoint_same_cell))
    elif task.keypoint_same_cell is not None and th.keypoint_same_cell is not None:
        checks.append(_at_least("keypoints in the same cell", task.keypoint_same_cell, th.keypoint_same_cell))
    if task.keypoint_within_one_cell_or_tie is not None and th.keypoint_within_one_cell is not None:
        checks.append(_at_least("keypoints within one cell (near-ties allowed)", task.keypoint_within_one_cell_or_tie,
                                th.keypoint_within_one_cell))
    elif task.keypoint_within_one_cell is not None and th.keypoint_within_one_cell is not None:
        checks.append(_at_least("keypoints within one cell", task.keypoint_within_one_cell,
                                th.keypoint_within_one_cell))
    if task.box_agreement is not None and th.box_agreement is not None:
        checks.append(_at_least(f"head/body boxes with IoU >= {task.box_iou_threshold:g}", task.box_agreement,
                                th.box_agreement))
    if task.accuracy_diff_points is not None and th.accuracy_diff_points is not None:
        beyond_ties = task.accuracy_diff_points_beyond_ties
        value = abs(task.accuracy_diff_points if beyond_ties is None else beyond_ties)
        name = "|accuracy difference| (points)" if beyond_ties is None else "|accuracy difference| beyond near-ties (points)"
        checks.append(Check(name, value, th.accuracy_diff_points, "<=", value <= th.accuracy_diff_points + 1e-9))
    if batch is not None and batch.passed is not None:
        checks.append(Check("batch invariance", float(batch.passed), 1.0, "==", batch.passed))
    return checks


def _at_least(name: str, value: float, threshold: float) -> Check:
    return Check(name, value, threshold, ">=", value >= threshold - 1e-12)
