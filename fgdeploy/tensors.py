"""Names shared by every implementation: parts, flip pairs, tensor names, custom-op identity.

Defined once here and mirrored in ``plugins/coordinate_transfer`` (constants and README).
"""

from __future__ import annotations

# CUB-200-2011 parts in parts.txt order (part id = index + 1).
PART_NAMES: tuple[str, ...] = (
    "back", "beak", "belly", "breast", "crown", "forehead", "left_eye", "left_leg",
    "left_wing", "nape", "right_eye", "right_leg", "right_wing", "tail", "throat",
)
NUM_PARTS = len(PART_NAMES)

# 0-based permutation applied to part channels on a horizontal flip (7<->11, 8<->12, 9<->13 1-based).
FLIP_PERMUTATION: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 10, 11, 12, 9, 6, 7, 8, 13, 14)

# Tensor names at the model boundary (torch runner, ONNX, TensorRT engine).
INPUT_IMAGES = "images"            # (N, 3, S, S) float, RGB in [0, 1]; normalisation is inside the model
OUTPUT_LOGITS = "logits"           # (N, K) float
OUTPUT_KEYPOINTS = "keypoints"     # (N, P, 2) float, (u, v) in input pixels of the S x S image
OUTPUT_KEYPOINT_SCORES = "keypoint_scores"  # (N, P) float, sigmoid of the max heatmap logit
OUTPUT_HEATMAPS = "heatmaps"       # (N, P, Hh, Wh) float, raw keypoint logits
OUTPUT_PART_BOXES = "part_boxes"   # (N, 2, 4) float, head/body boxes [x0, y0, x1, y1] in input pixels (part nets)
MODEL_OUTPUTS: tuple[str, ...] = (OUTPUT_LOGITS, OUTPUT_KEYPOINTS, OUTPUT_KEYPOINT_SCORES)

# The custom op (docs/method.md section 4a).
OP_DOMAIN = "fgdeploy"
OP_NAME = "CoordinateTransfer"
OP_VERSION = "1"
PLUGIN_NAMESPACE = "fgdeploy"
MODE_MAX = 0
MODE_AVERAGE = 1
