"""The precision guard: keep in float only the nodes the task metrics need.

A reduced-precision build (INT8 in ``fgdeploy.export.precision.int8``, FP16 in ``fgdeploy.export.precision.fp16``) is
a function ``build(float_nodes) -> ONNX bytes``: the nodes named in ``float_nodes`` stay fp32. The guard
runs the fp32 model once on held-out images (``Guard``), then scores a build with parity's task metrics
(``fgdeploy.parity.compare_tasks``: top-1 agreement, keypoints in the same heatmap cell with parity's
near-ties, accuracy and PCK differences) against ``GuardThresholds``.

``guarded_search`` starts from the build with no extra float nodes. When it falls short it measures each
candidate node's effect (the build with only that node kept float), bisects for the fewest of the most
helpful nodes that make the guard pass, then quantizes again every kept node the guard passes without
(so each node left is needed). ``GuardReport`` records each evaluation and, for each node kept float,
the task metrics with and without it; it renders a table and dumps JSON.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgdeploy.errors import ConfigError
from fgdeploy.export.precision.images import file_digests
from fgdeploy.parity.report import Tolerance
from fgdeploy.parity.sources import ImageSource
from fgdeploy.tensors import OUTPUT_HEATMAPS, OUTPUT_KEYPOINT_SCORES, OUTPUT_KEYPOINTS, OUTPUT_LOGITS, PART_NAMES
from fgdeploy.text import percent as _pct

logger = logging.getLogger(__name__)

Build = Callable[[frozenset[str]], bytes]


@dataclass(frozen=True)
class GuardThresholds:
    """What a reduced-precision model must keep, measured against the fp32 model."""

    min_top1_agree: float = 0.99   # fraction of images with the fp32 model's top-1 class
    min_kp_agree: float = 0.98     # fraction of (image, part) in the same heatmap cell, near-ties allowed
    max_acc_drop: float = 0.5      # accuracy(fp32) - accuracy(reduced), percentage points (needs labels)
    # fraction of images whose logits and keypoint scores are all within the element tolerance (parity's check
    # of the same precision: ``reduce_precision`` sets parity's min_fraction, so the guard never passes a model
    # parity's element check would fail on the same images); 0: not checked
    min_outputs_within: float = 0.0
    logits_on_settled_images: bool = False   # as parity's profile: logits judged where keypoints and boxes agree

    def __post_init__(self) -> None:
        for name in ("min_top1_agree", "min_kp_agree", "min_outputs_within"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} {value}: give a fraction in [0, 1], e.g. 0.99")
        if self.max_acc_drop < 0:
            raise ConfigError(f"--max-acc-drop {self.max_acc_drop}: give points >= 0, e.g. 0.5")


@dataclass(frozen=True)
class GuardMetrics:
    """Parity's task metrics of one build against fp32 (a summary of ``TaskComparison``)."""

    top1_agreement: float
    keypoint_agreement: float | None     # same cell, near-ties allowed (None: the model has no keypoints)
    keypoint_same_cell: float | None     # same cell, no near-tie allowance
    accuracy_drop: float | None          # points; None without labels
    pck_drop: float | None               # points; None without keypoint ground truth
    class_flips: int
    keypoint_moves: int                  # moved keypoints that are not near-ties
    logit_error: float                   # mean |logit diff| / fp32 logit range (continuous tie-breaker)
    outputs_within: float | None = None  # images with logits and keypoint scores within the element tolerance

    def failures(self, th: GuardThresholds) -> list[str]:
        """The thresholds this build misses, as readable text (empty: it passes)."""
        out = []
        if self.top1_agreement < th.min_top1_agree - 1e-12:
            out.append(f"top-1 agreement {100 * self.top1_agreement:.2f}% < {100 * th.min_top1_agree:.2f}%")
        if self.keypoint_agreement is not None and self.keypoint_agreement < th.min_kp_agree - 1e-12:
            out.append(f"keypoints same cell {100 * self.keypoint_agreement:.2f}% < {100 * th.min_kp_agree:.2f}%")
        if self.accuracy_drop is not None and self.accuracy_drop > th.max_acc_drop + 1e-9:
            out.append(f"accuracy drop {self.accuracy_drop:.2f} points > {th.max_acc_drop:.2f}")
        if self.outputs_within is not None and self.outputs_within < th.min_outputs_within - 1e-12:
            out.append(f"outputs within the element tolerance on {100 * self.outputs_within:.2f}% of the images "
                       f"< {100 * th.min_outputs_within:.2f}%")
        return out

    def passes(self, th: GuardThresholds) -> bool:
        return not self.failures(th)

    def shortfall(self, th: GuardThresholds) -> float:
        """How far below the thresholds (0 when passing), plus a small continuous term to rank near misses."""
        miss = max(0.0, th.min_top1_agree - self.top1_agreement)
        if self.keypoint_agreement is not None:
            miss += max(0.0, th.min_kp_agree - self.keypoint_agreement)
        if self.accuracy_drop is not None:
            miss += max(0.0, self.accuracy_drop - th.max_acc_drop) / 100.0
        if self.outputs_within is not None:
            miss += max(0.0, th.min_outputs_within - self.outputs_within)
        keypoints = 1.0 if self.keypoint_agreement is None else self.keypoint_agreement   # None: no keypoints
        disagreement = (1.0 - self.top1_agreement) + (1.0 - keypoints)
        return miss + 1e-2 * disagreement + 1e-4 * self.logit_error


class Guard:
    """Scores builds against the fp32 model on ``source`` (the fp32 outputs are computed once).

    Args:
        reference: the fp32 ONNX (bytes).
        source: held-out images (``DatasetImages`` adds accuracy and PCK).
        thresholds: what a build must keep.
        tie_tolerance: parity's tolerance for the precision (``default_thresholds(precision).tolerance``): keypoint
            near-ties, and the element check of logits and keypoint scores.
        batch_size: images per runner call.
        threads: ONNX Runtime intra-op threads (None: its default).
    """

    def __init__(self, reference: bytes, source: ImageSource, thresholds: GuardThresholds, tie_tolerance: Tolerance,
                 batch_size: int = 16, threads: int | None = None) -> None:
        from fgdeploy.backends.ort_runner import OrtRunner
        from fgdeploy.export.debug_outputs import debug_heatmaps_name
        from fgdeploy.parity.run import run_batches

        self.source, self.thresholds, self.tie_tolerance = source, thresholds, tie_tolerance
        self.batch_size, self.threads = batch_size, threads
        self.indices = list(range(len(source)))
        if not self.indices:
            raise ConfigError(f"guard: no images in {source.description}")
        with OrtRunner(reference, providers=["cpu"], threads=threads, debug=True, name="fp32") as runner:
            self.meta = runner.metadata()
            out = run_batches(runner, source, self.indices, batch_size)
        heat = out.get(debug_heatmaps_name(0), out.get(OUTPUT_HEATMAPS))
        self.reference = {k: v for k, v in out.items() if not k.startswith("debug.")}
        if heat is not None:
            self.reference[OUTPUT_HEATMAPS] = heat   # tells near-ties from real moves
        self.input_size = int(self.meta.get("input_size") or source.load([0]).shape[-1])
        hw = self.meta.get("heatmap_size") or (heat.shape[-2:] if heat is not None else (1, 1))
        self.heatmap_hw = (int(hw[0]), int(hw[1]))
        self.part_names = list(self.meta.get("part_names") or PART_NAMES)
        self.evaluations = 0
        # which images the guard chooses on, for the metadata (parity warns when it is given any of them)
        self.image_source = str(source.root.resolve()) if source.root is not None else ""
        ids = source.truth.image_ids
        self.image_ids = None if ids is None else [int(i) for i in ids]
        self.image_digests = file_digests(source.files)

    def evaluate(self, model: bytes) -> GuardMetrics:
        """Run ``model`` on the guard images and compare it with fp32."""
        from fgdeploy.backends.ort_runner import OrtRunner
        from fgdeploy.parity.run import run_batches

        with OrtRunner(model, providers=["cpu"], threads=self.threads, name="guarded") as runner:
            out = run_batches(runner, self.source, self.indices, self.batch_size)
        self.evaluations += 1
        return self.compare(out)

    def compare(self, test: dict[str, np.ndarray]) -> GuardMetrics:
        """Parity's task comparison of ``test`` outputs with the fp32 ones, summarised."""
        from fgdeploy.parity.compare import compare_logits, compare_output, compare_tasks

        ref = self.reference
        with_kp = OUTPUT_KEYPOINTS in ref and OUTPUT_KEYPOINTS in test
        task = compare_tasks(ref if with_kp else {OUTPUT_LOGITS: ref[OUTPUT_LOGITS]},
                             test if with_kp else {OUTPUT_LOGITS: test[OUTPUT_LOGITS]},
                             input_size=self.input_size, heatmap_hw=self.heatmap_hw, part_names=self.part_names,
                             truth=self.source.truth, tie_tolerance=self.tie_tolerance)
        r, t = np.asarray(ref[OUTPUT_LOGITS], np.float64), np.asarray(test[OUTPUT_LOGITS], np.float64)
        span = float(np.ptp(r)) or 1.0
        within = [compare_logits(ref, test, self.tie_tolerance, self.thresholds.logits_on_settled_images).images_within]
        if OUTPUT_KEYPOINT_SCORES in ref and OUTPUT_KEYPOINT_SCORES in test:
            within.append(compare_output(OUTPUT_KEYPOINT_SCORES, ref[OUTPUT_KEYPOINT_SCORES],
                                         test[OUTPUT_KEYPOINT_SCORES], self.tie_tolerance).images_within)
        kp_agree = task.keypoint_same_cell_or_tie if task.keypoint_same_cell_or_tie is not None \
            else task.keypoint_same_cell
        return GuardMetrics(
            top1_agreement=task.top1_agreement, keypoint_agreement=kp_agree,
            keypoint_same_cell=task.keypoint_same_cell,
            accuracy_drop=None if task.accuracy_diff_points is None else 0.0 - task.accuracy_diff_points,
            pck_drop=None if task.pck_diff_points is None else 0.0 - task.pck_diff_points,
            class_flips=len(task.class_flips),
            keypoint_moves=sum(not f.near_tie for f in task.keypoint_flips),
            logit_error=float(np.abs(t - r).mean() / span), outputs_within=min(within) if within else None)


@dataclass
class Evaluation:
    """One build the guard scored."""

    step: str                 # "all reduced", "alone: NODE", "keep first N", "drop: NODE", "without: NODE"
    float_nodes: list[str]    # nodes kept float by the guard in this build (policy ones not listed)
    metrics: GuardMetrics
    passed: bool


@dataclass
class KeptNode:
    """A node the guard keeps float: the task metrics without it (it quantized, the other kept nodes float;
    the final build is the one with it float) and with only it float (its effect alone)."""

    node: str
    op_type: str
    without: GuardMetrics
    alone: GuardMetrics | None


@dataclass
class GuardReport:
    """What the guard measured and decided; ``passed`` is the final build's verdict."""

    precision: str
    data: str
    n_images: int
    thresholds: dict[str, Any]
    tie_tolerance: dict[str, float]
    policy_float: dict[str, str]             # node -> why the precision policy keeps it float
    candidates: int                          # nodes the guard could keep float
    initial: GuardMetrics
    final: GuardMetrics
    passed: bool
    kept_float: list[KeptNode] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)
    seconds: float = 0.0
    source: str = ""                         # the dataset or folder of the guard's images
    image_ids: list[int] | None = None       # their CUB image ids (None: a plain folder)
    image_digests: list[str] = field(default_factory=list)   # their content digests (``file_digests``)

    @property
    def kept_names(self) -> list[str]:
        return [k.node for k in self.kept_float]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "kept_float_nodes": self.kept_names, **dataclasses.asdict(self)}

    def dump(self, path: str | Path) -> None:
        """Write the JSON report atomically."""
        from fgdeploy.fileio import atomic_write_text
        from fgdeploy.parity.report import _json_safe

        atomic_write_text(path, json.dumps(_json_safe(self.to_dict()), indent=2) + "\n")

    def render(self) -> str:
        """Plain-text tables: thresholds, initial and final metrics, the nodes kept float and their effect."""
        th = self.thresholds
        lines = [f"precision guard ({self.precision}): {self.n_images} images ({self.data}); thresholds: top-1 "
                 f"agreement >= {100 * th['min_top1_agree']:.2f}%, keypoints same cell (near-ties allowed) >= "
                 f"{100 * th['min_kp_agree']:.2f}%, accuracy drop <= {th['max_acc_drop']:.2f} points"
                 + (f", logits and keypoint scores within atol={self.tie_tolerance['atol']:g} "
                    f"rtol={self.tie_tolerance['rtol']:g} on >= {100 * th['min_outputs_within']:.2f}% of the images"
                    + (" (logits: of those whose keypoints and boxes agree)" if th.get("logits_on_settled_images")
                       else "") if th.get("min_outputs_within") else ""), ""]
        rows = [("build", "top-1 agree", "kp same cell", "kp strict", "acc drop", "PCK drop", "outputs within",
                 "flips", "verdict"),
                _row("all reduced", self.initial, self._verdict(self.initial)),
                _row("final", self.final, "PASS" if self.passed else "FAIL")]
        lines += _table(rows) + [""]
        if self.kept_float:
            lines.append(f"kept float by the guard ({len(self.kept_float)} of {self.candidates} candidates): the final "
                         "build's metrics without the node (it reduced, the others kept), and with only it kept:")
            rows = [("node", "op", "without: top-1 / kp / acc drop", "change when kept", "only it kept: top-1 / kp")]
            for k in self.kept_float:
                w, f = k.without, self.final
                change = (f"top-1 {_signed(f.top1_agreement, w.top1_agreement)}, kp "
                          f"{_signed(f.keypoint_agreement, w.keypoint_agreement)}, acc drop "
                          f"{_diff(f.accuracy_drop, w.accuracy_drop)}")
                alone = "-" if k.alone is None else f"{_pct(k.alone.top1_agreement)} / {_pct(k.alone.keypoint_agreement)}"
                rows.append((k.node, k.op_type, f"{_pct(w.top1_agreement)} / {_pct(w.keypoint_agreement)} / "
                             f"{_pts(w.accuracy_drop)}", change, alone))
            lines += _table(rows)
        else:
            lines.append(f"kept float by the guard: none (of {self.candidates} candidates)")
        lines.append(f"kept float by the precision policy: {len(self.policy_float)} node(s) "
                     f"({', '.join(sorted(set(self.policy_float.values())))})")
        lines.append(f"{len(self.evaluations)} build(s) scored in {self.seconds:.1f} s; RESULT: "
                     f"{'PASS' if self.passed else 'FAIL: ' + '; '.join(self.final.failures(self._th()))}")
        return "\n".join(lines)

    def _th(self) -> GuardThresholds:
        return GuardThresholds(**self.thresholds)

    def _verdict(self, metrics: GuardMetrics) -> str:
        return "PASS" if metrics.passes(self._th()) else "FAIL"


def guarded_search(build: Build, candidates: Sequence[str], guard: Guard, *, precision: str,
                   op_types: dict[str, str] | None = None, policy_float: dict[str, str] | None = None,
                   progress: Callable[[str], None] | None = None) -> tuple[bytes, GuardReport]:
    """Find a small set of ``candidates`` to keep float so that ``guard`` passes; returns (model, report).

    1. Score the build with no candidate float; done when it passes.
    2. Score every candidate kept float alone, and rank them by how close each such build comes to
       passing (the most helpful first).
    3. Bisect for the shortest prefix of that ranking whose build passes (the whole ranking first: if
       even that fails, the report says FAIL and the caller decides what that means).
    4. Try quantizing each kept node again, latest-ranked first; keep the change when the guard still
       passes; repeat until no node can go. Every node left is needed: without it (the others kept) the guard
       fails.
    5. For each kept node, record the metrics with it float (the final build) and without it.
    """
    started = time.perf_counter()
    th = guard.thresholds
    op_types = op_types or {}
    say = progress or (lambda text: logger.info("guard: %s", text))
    evaluations: list[Evaluation] = []
    scored: dict[frozenset[str], tuple[bytes, GuardMetrics]] = {}

    def score(step: str, floated: frozenset[str]) -> tuple[bytes, GuardMetrics]:
        if floated not in scored:
            model = build(floated)
            metrics = guard.evaluate(model)
            scored[floated] = (model, metrics)
            evaluations.append(Evaluation(step, sorted(floated), metrics, metrics.passes(th)))
            say(f"{step}: top-1 {_pct(metrics.top1_agreement)}, keypoints {_pct(metrics.keypoint_agreement)}, "
                f"accuracy drop {_pts(metrics.accuracy_drop)} -> {'pass' if metrics.passes(th) else 'fail'}")
        return scored[floated]

    model, initial = score("all reduced", frozenset())
    current, floated, alone = initial, frozenset[str](), {}
    if not initial.passes(th) and candidates:
        order = list(candidates)
        alone = {c: score(f"alone: {c}", frozenset({c}))[1] for c in order}
        ranked = sorted(order, key=lambda c: (alone[c].shortfall(th), order.index(c)))
        lo, hi = 0, len(ranked)   # prefix lo fails (lo = 0: the initial build); prefix hi is tried first
        model, current = score(f"keep all {hi}", frozenset(ranked))
        if current.passes(th):
            while hi - lo > 1:
                mid = (lo + hi) // 2
                trial = score(f"keep first {mid}", frozenset(ranked[:mid]))
                if trial[1].passes(th):
                    hi, (model, current) = mid, trial
                else:
                    lo = mid
            floated = frozenset(ranked[:hi])
            dropped = True
            while dropped and len(floated) > 1:   # until every node left is needed (a later drop can free one)
                dropped = False
                for node in [n for n in reversed(ranked) if n in floated]:
                    if len(floated) == 1:
                        break
                    trial = score(f"drop: {node}", floated - {node})
                    if trial[1].passes(th):
                        floated, (model, current), dropped = floated - {node}, trial, True
        else:
            floated = frozenset(ranked)
    kept = []
    if current.passes(th):
        for node in sorted(floated, key=list(candidates).index):
            without = score(f"without: {node}", floated - {node})[1]
            kept.append(KeptNode(node, op_types.get(node, ""), without=without, alone=alone.get(node)))
    report = GuardReport(precision=precision, data=guard.source.description, n_images=len(guard.indices),
                         thresholds=dataclasses.asdict(th), tie_tolerance=dataclasses.asdict(guard.tie_tolerance),
                         policy_float=dict(policy_float or {}), candidates=len(candidates), initial=initial,
                         final=current, passed=current.passes(th), kept_float=kept, evaluations=evaluations,
                         seconds=time.perf_counter() - started, source=guard.image_source, image_ids=guard.image_ids,
                         image_digests=guard.image_digests)
    return model, report


# --- formatting ------------------------------------------------------------------------------------
def _row(name: str, m: GuardMetrics, verdict: str) -> tuple[str, ...]:
    return (name, _pct(m.top1_agreement), _pct(m.keypoint_agreement), _pct(m.keypoint_same_cell),
            _pts(m.accuracy_drop), _pts(m.pck_drop), _pct(m.outputs_within),
            f"{m.class_flips} class, {m.keypoint_moves} kp", verdict)


def _pts(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _signed(after: float | None, before: float | None) -> str:
    """Change of a fraction, in percentage points."""
    return "-" if after is None or before is None else f"{100 * (after - before):+.2f}"


def _diff(after: float | None, before: float | None) -> str:
    return "-" if after is None or before is None else f"{after - before:+.2f}"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
