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

from fgdeploy.parity.compare import build_checks, compare_output, compare_tasks, pck_of
from fgdeploy.parity.report import (
    DEFAULT_THRESHOLDS, BatchInvariance, Check, ClassFlip, Divergence, GroundTruth, KeypointFlip,
    OutputComparison, ParityReport, StageDiff, TaskComparison, Thresholds, Tolerance, default_thresholds,
    render_report,
)
from fgdeploy.parity.run import (
    ParityConfig, RunnerFactory, check_batch_invariance, image_feeds, locate_divergence, run_batches,
    run_parity, static_batch,
)
from fgdeploy.parity.sources import ArrayImages, DatasetImages, ImageSource, RandomImages

__all__ = [
    "DEFAULT_THRESHOLDS", "ArrayImages", "BatchInvariance", "Check", "ClassFlip", "DatasetImages", "Divergence",
    "GroundTruth", "ImageSource", "KeypointFlip", "OutputComparison", "ParityConfig", "ParityReport",
    "RandomImages", "RunnerFactory", "StageDiff", "TaskComparison", "Thresholds", "Tolerance", "build_checks",
    "check_batch_invariance", "compare_output", "compare_tasks", "default_thresholds", "image_feeds",
    "locate_divergence", "pck_of", "render_report", "run_batches", "run_parity", "static_batch",
]
