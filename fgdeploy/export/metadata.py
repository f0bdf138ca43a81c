"""ONNX ``metadata_props`` of an fgdeploy export: what ``infer`` needs besides the graph.

Every value is stored as JSON text under a plain key (``class_names`` -> '["001.A", ...]'), so any
ONNX tool shows it and ``decode_metadata`` gets the Python values back. Keys written by the exporter:

=====================  ===============================================================
``fgdeploy_format``    format version of this metadata (int, currently 1)
``fgdeploy_version``   fgdeploy version that exported the file
``class_names``        list[str], index = class id of ``logits``
``part_names``         list[str], index = part id of ``keypoints``/``keypoint_scores``
``input_name``         name of the image input ("images")
``input_size``         S: the input is (N, 3, S, S)
``input_dtype``        "float32" or "float16": dtype of the image input
``input_range``        [0.0, 1.0]: RGB / 255, no mean/std (``normalisation`` is inside the graph)
``normalisation``      {"mean": [...], "std": [...], "applied": "in_graph"}
``heatmap_size``       [Hh, Wh] of the keypoint score maps
``precision``          "fp32", "fp16" or "int8"
``fp32_kept``          list[str]: what an fp16/int8 export keeps in float, and why (empty for fp32)
``quantization``       int8 only: dict, QDQ format, target, activation/weight types, calibration set
``float_kept_nodes``   int8 and guarded fp16: {"policy": [node names], "guard": [node names]}
``precision_guard``    int8 and guarded fp16: the guard's verdict, data, thresholds, kept nodes (or null)
``fp16_policy``        guarded fp16 only: "task-driven (...)"
``batch``              "dynamic" or the fixed batch size (int)
``max_batch``          largest batch the export was checked with
``outputs``            list[str] of output names in order
``model_config``       dict: the resolved model config
``source_checkpoint``  file name of the checkpoint
``source_path``        absolute path of the checkpoint when exported (to notice a retrained run)
``source_sha256``      sha256 of the checkpoint file
``stage`` / ``epoch``  training stage and epoch of the checkpoint
``opset``              default-domain opset
``portable``           ``--portable`` only: {"inlined": [ops], "by": inliner, "coordinate_transfer_tensors": [[in, out]]}
=====================  ===============================================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METADATA_FORMAT = 1


def encode_metadata(values: Mapping[str, Any]) -> dict[str, str]:
    """JSON-encode each value (keys unchanged)."""
    return {str(key): json.dumps(value, sort_keys=True) for key, value in values.items()}


def decode_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of ``encode_metadata``; a value that is not JSON (written by another tool) stays a string."""
    out: dict[str, Any] = {}
    for key, text in props.items():
        try:
            out[key] = json.loads(text)
        except (TypeError, ValueError):
            out[key] = text
    return out


def stale_export_note(model: str | Path, recorded: Mapping[str, Any], checkpoint: str | Path | None = None,
                      checkpoint_sha256: str = "") -> str | None:
    """One line when the export ``model`` (its decoded metadata ``recorded``) does not come from the checkpoint.

    With ``checkpoint_sha256`` (of ``checkpoint``): the export must have been made from that file. Without it:
    the checkpoint the export records (``source_path``) must still hold the weights it was exported from, i.e.
    the run was not retrained since. None when they match or nothing can be compared.
    """
    from fgdeploy.fileio import file_sha256

    exported_from = str(recorded.get("source_sha256") or "")
    if not exported_from:
        return None
    if not checkpoint_sha256:
        checkpoint = recorded.get("source_path") or None
        if checkpoint is None or not Path(checkpoint).is_file():
            return None
        checkpoint_sha256 = file_sha256(checkpoint)
        if checkpoint_sha256 == exported_from:
            return None
        return (f"{model} was exported from {checkpoint} (sha256 {exported_from[:12]}), which now holds other "
                f"weights (sha256 {checkpoint_sha256[:12]}): the run was retrained after the export; export it "
                f"again with `fgdeploy export {checkpoint} -o {model}`")
    if checkpoint_sha256 == exported_from:
        return None
    return (f"{model} was not exported from {checkpoint}: it records checkpoint sha256 {exported_from[:12]}, "
            f"{checkpoint} has {checkpoint_sha256[:12]} (retrained since?), so the two are different models; "
            f"export it again with `fgdeploy export {checkpoint} -o {model}`")
