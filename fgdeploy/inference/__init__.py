"""Batch inference (`fgdeploy infer`): one package for everything between an image folder and a results file.

- ``local``: image discovery, decode + resize, the threaded one-machine pipeline (``run_inference``).
- ``predictors``: the ``Predictor`` interface and ``open_predictor`` (model file -> backend).
- ``fastpath``: the torch fast path (fused conv+ReLU, channels-last, compile, CUDA graphs).
- ``results``: per-image records, the fsync'd journal, CSV/JSONL output, errors file, run record.
"""
