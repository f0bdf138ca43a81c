"""Running two runners on the same images: batches, batch invariance, divergence localisation, the whole run."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fgdeploy.backends.base import Runner
from fgdeploy.geometry import point_to_cell
from fgdeploy.text import plural
from fgdeploy.parity.compare import build_checks, compare_logits, compare_output, compare_tasks
from fgdeploy.parity.report import (
    BatchInvariance, Divergence, ParityReport, StageDiff, TaskComparison, Thresholds, Tolerance,
    default_thresholds,
)
from fgdeploy.parity.sources import ImageSource
from fgdeploy.tensors import (
    INPUT_IMAGES, OUTPUT_HEATMAPS, OUTPUT_KEYPOINT_SCORES, OUTPUT_KEYPOINTS, OUTPUT_LOGITS, OUTPUT_PART_BOXES,
)

logger = logging.getLogger(__name__)

MAX_DEBUG_IMAGES = 16  # images rerun with debug outputs to locate a divergence
MAX_TIE_IMAGES = 64    # images with moved keypoints rerun for the reference heatmaps (near-tie check)
RunnerFactory = Callable[[bool], Runner]  # debug flag -> a new, inactive runner


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
                           note=f"{plural(n, 'image')} alone vs a batch of {full}"
                                + (f" and a partial batch of {n - full}" if n > full else ""))


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


def _guard_overlap(source: ImageSource, *metas: dict[str, Any]) -> int | None:
    """How many of ``source``'s images a reduced-precision model's guard chose on (its metadata records them);
    None when neither model records a guard or the images do not come from files."""
    from fgdeploy.export.precision.images import GuardImages

    for meta in metas:
        guard = GuardImages.from_metadata(meta)
        if guard is not None and source.files:
            return guard.overlap(source.files)
    return None


def _stage(name: str, ref: np.ndarray, test: np.ndarray, tol: Tolerance) -> StageDiff:
    cmp = compare_output(name, ref, test, dataclasses.replace(tol, min_fraction=1.0))
    return StageDiff(name, cmp.max_abs, bool(cmp.passed))


@dataclass
class ParityConfig:
    """How ``run_parity`` runs; thresholds default by precision (``DEFAULT_THRESHOLDS``)."""

    batch_size: int = 8
    precision: str | None = None           # None: "int8"/"fp16" if either runner reports it, else "fp32"
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
        precision = config.precision or loosest_precision(ref_meta, test_meta)
        thresholds = config.thresholds or default_thresholds(precision, config.atol, config.rtol)
        batch = check_batch_invariance(t, source, config.batch_size, thresholds.tolerance) if config.batch_check else None
    input_size = int(test_meta.get("input_size") or ref_meta.get("input_size") or source.load([0]).shape[-1])
    heatmap_hw = _heatmap_hw(ref_meta, test_meta, ref_out, test_out)
    part_names = list(test_meta.get("part_names") or ref_meta.get("part_names") or [])
    outputs = [compare_logits(ref_out, test_out, thresholds.tolerance, thresholds.logits_on_settled_images)
               if name == OUTPUT_LOGITS else
               compare_output(name, ref_out[name], test_out[name], thresholds.tolerance,   # boxes: judged by IoU
                              judged=name not in (OUTPUT_KEYPOINTS, OUTPUT_PART_BOXES))
               for name in _common_outputs(ref_out, test_out)]
    task = TaskComparison(n_images=len(indices), top1_agreement=1.0)
    if heatmap_hw is not None:
        ref_task = with_ref_heatmaps(ref, ref_out, test_out, source, heatmap_hw, input_size, config.batch_size)
        task = compare_tasks(ref_task, test_out, input_size=input_size, heatmap_hw=heatmap_hw,
                             part_names=part_names or [str(p) for p in range(ref_out[OUTPUT_KEYPOINTS].shape[1])],
                             truth=source.truth, tie_tolerance=thresholds.tolerance, box_iou=thresholds.box_iou)
    else:
        task = compare_tasks({OUTPUT_LOGITS: ref_out[OUTPUT_LOGITS]}, {OUTPUT_LOGITS: test_out[OUTPUT_LOGITS]},
                             input_size=input_size, heatmap_hw=(1, 1), part_names=part_names, truth=source.truth,
                             tie_tolerance=thresholds.tolerance)
    report = ParityReport(ref=ref_name, test=test_name, precision=precision, n_images=len(indices),
                          data=source.description, thresholds=dataclasses.asdict(thresholds), outputs=outputs,
                          task=task, batch=batch, checks=build_checks(outputs, task, batch, thresholds),
                          image_ids=None if source.truth.image_ids is None else [int(i) for i in source.truth.image_ids],
                          guard_overlap=_guard_overlap(source, test_meta, ref_meta))
    if not report and config.locate_divergence:
        suspects = _suspect_images(task, ref_out, test_out, thresholds.tolerance) or indices[:MAX_DEBUG_IMAGES]
        report.divergence = locate_divergence(ref, test, source, suspects, thresholds.tolerance,
                                              input_size=input_size, heatmap_hw=heatmap_hw,
                                              batch_size=config.batch_size)
    return report


def with_ref_heatmaps(ref: RunnerFactory, ref_out: Mapping[str, np.ndarray], test_out: Mapping[str, np.ndarray],
                      source: ImageSource, heatmap_hw: tuple[int, int], input_size: int, batch_size: int
                      ) -> dict[str, np.ndarray]:
    """``ref_out`` plus the reference heatmaps of the images whose keypoints moved (NaN for the others).

    The heatmaps tell a real disagreement from a near-tie. When the main outputs lack them, the first
    ``MAX_TIE_IMAGES`` such images are rerun with the reference's intermediate outputs; a runner that has
    none leaves ``ref_out`` as it is.
    """
    if OUTPUT_HEATMAPS in ref_out or OUTPUT_KEYPOINTS not in ref_out or OUTPUT_KEYPOINTS not in test_out:
        return dict(ref_out)
    moved = np.any(point_to_cell(ref_out[OUTPUT_KEYPOINTS], heatmap_hw, input_size)
                   != point_to_cell(test_out[OUTPUT_KEYPOINTS], heatmap_hw, input_size), axis=(1, 2))
    indices = [int(i) for i in np.flatnonzero(moved)[:MAX_TIE_IMAGES]]
    if not indices:
        return dict(ref_out)
    from fgdeploy.export.debug_outputs import debug_heatmaps_name

    try:
        runner = ref(True)
    except (TypeError, NotImplementedError):
        return dict(ref_out)
    with runner:
        debug = run_batches(runner, source, indices, batch_size)
    name = next((n for n in (debug_heatmaps_name(0), OUTPUT_HEATMAPS) if n in debug), None)
    if name is None or tuple(debug[name].shape[-2:]) != tuple(heatmap_hw):
        return dict(ref_out)
    heat = np.full((len(moved), *debug[name].shape[1:]), np.nan, np.float32)
    heat[indices] = debug[name]
    return {**ref_out, OUTPUT_HEATMAPS: heat}


def loosest_precision(*metas: Mapping[str, Any]) -> str:
    """The loosest precision either runner reports: int8, then fp16, else fp32."""
    found = {m.get("precision") for m in metas}
    return next((p for p in ("int8", "fp16") if p in found), "fp32")


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
