"""Checkpoint -> ONNX (and a TensorRT engine), in the precision asked for.

- ``exporter``: the entry points. ``export_checkpoint(checkpoint, out, ExportOptions(precision=...))`` is
  ``fgdeploy export``; ``reduce_exported`` makes the fp16/INT8 model of an existing fp32 export.
- ``onnx``: tracing (dynamo, one ``fgdeploy::CoordinateTransfer`` node per op call), the metadata, checking
  (onnx.checker, ONNX Runtime vs PyTorch) and writing.
- ``precision``: the precision choice, ``reduce_precision(fp32_model, size, PrecisionOptions)``; its
  modules ``graph`` (shared graph analysis), ``fp16``, ``int8``, ``guard`` and ``images`` (calibration
  and guard images).
- ``tensorrt``: ONNX -> TensorRT engine with the CoordinateTransfer plugin (``python -m fgdeploy.export.tensorrt``).
- ``onnx_function``: the CoordinateTransfer model-local ONNX function; ``metadata``: the metadata keys;
  ``debug_outputs``: extra outputs parity uses to locate a divergence.
"""
