"""Batch inference (`fgdeploy infer`): one package for everything between an image folder and a results file.

- ``local``: image discovery, decode + resize, the threaded one-machine pipeline (``run_inference``).
- ``predictors``: the ``Predictor`` interface and ``open_predictor`` (model file -> backend).
- ``fastpath``: the torch fast path (fused conv+ReLU, channels-last, compile, CUDA graphs).
- ``results``: per-image records, the fsync'd journal, CSV/JSONL output, errors file, run record.
- ``ray_cluster``: connecting to Ray (a cluster's address or a loopback-only local instance), its errors and console;
  a multi-node loopback cluster for tests and benchmarks.
- ``ray_scoring``: ``infer --ray``, the same run on Ray (decode tasks, model actors, the driver's journal).
- ``ray_dispatch``: the driver handing blocks to the actors: bounded retries after worker deaths, poison images.
"""
