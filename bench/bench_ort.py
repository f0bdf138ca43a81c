"""CPU throughput of PyTorch eager vs ONNX Runtime FP32 on the demo model, batch 1 and 8, same run.

    python bench/bench_ort.py --out bench/results/ort_cpu.json [--checkpoint best.pt] [--threads 1,2]

Without --checkpoint an untrained demo model is used (speed does not depend on the weights). Both
backends get the same number of threads (each count in --threads is measured); their timed iterations
are interleaved so background load hits both alike. On a busy machine the single-thread numbers are the
trustworthy ones (spinning thread pools suffer most from oversubscription); the JSON records the load
average. Writes JSON (atomically) and prints it. Target: ONNX Runtime >= 1.5x PyTorch eager.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TARGET_SPEEDUP = 1.5


def _model(checkpoint: str | None) -> tuple[Any, Any]:
    """(model, meta) of the checkpoint, or an untrained demo model with matching meta."""
    from fgdeploy.checkpoint import CheckpointMeta, load_checkpoint
    from fgdeploy.models import create_model, load_model_config

    if checkpoint:
        return load_checkpoint(checkpoint)
    import torch

    torch.manual_seed(0)
    cfg = load_model_config("demo")
    classes = [f"class_{i:03d}" for i in range(20)]
    meta = CheckpointMeta.for_config(cfg, classes)
    return create_model(cfg, len(classes)).eval(), meta


def _time(runner: Any, images: np.ndarray) -> float:
    start = time.perf_counter()
    runner.infer({"images": images})
    return time.perf_counter() - start


def _measure(model: Any, onnx_path: Path, size: int, threads: int, iters: int, warmup: int,
             batches: list[int]) -> list[dict[str, Any]]:
    """Median latency of both backends at each batch size, with ``threads`` threads each."""
    import torch

    from fgdeploy.backends.ort_runner import OrtRunner
    from fgdeploy.backends.torch_runner import TorchRunner

    torch.set_num_threads(threads)
    rows = []
    with TorchRunner(model, outputs=["logits", "keypoints", "keypoint_scores"]) as eager, \
            OrtRunner(onnx_path, providers=["cpu"], threads=threads) as ort:
        for batch in batches:
            images = np.random.default_rng(batch).random((batch, 3, size, size), dtype=np.float32)
            for _ in range(warmup):
                _time(eager, images), _time(ort, images)
            t_eager, t_ort = [], []
            for _ in range(iters):  # interleaved: background load hits both alike
                t_eager.append(_time(eager, images))
                t_ort.append(_time(ort, images))
            me, mo = statistics.median(t_eager), statistics.median(t_ort)
            rows.append({"threads": threads, "batch": batch, "torch_eager_ms": 1e3 * me, "ort_fp32_ms": 1e3 * mo,
                         "torch_eager_img_per_s": batch / me, "ort_fp32_img_per_s": batch / mo,
                         "speedup": me / mo, "meets_target": me / mo >= TARGET_SPEEDUP})
    return rows


def bench(checkpoint: str | None, threads: list[int], iters: int, warmup: int, batches: list[int]) -> dict[str, Any]:
    import onnxruntime
    import torch

    from fgdeploy.export.exporter import ExportOptions, export_model

    model, meta = _model(checkpoint)
    size = int(meta.input_size)
    load_before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "demo.onnx"
        export_model(model, meta, onnx_path, ExportOptions())
        for count in threads:
            rows += _measure(model, onnx_path, size, count, iters, warmup, batches)
    return {
        "benchmark": "cpu throughput, PyTorch eager vs ONNX Runtime FP32 (CPUExecutionProvider)",
        "model": checkpoint or "demo config, untrained weights", "input_size": size,
        "iters": iters, "warmup": warmup, "statistic": "median latency per batch",
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "target_speedup": TARGET_SPEEDUP, "results": rows,
        "all_meet_target": all(r["meets_target"] for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="fgdeploy checkpoint (default: untrained demo model)")
    parser.add_argument("--out", default="bench/results/ort_cpu.json")
    parser.add_argument("--threads", default="1,2", help="thread counts to measure, comma separated")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args(argv)
    result = bench(args.checkpoint, [int(t) for t in args.threads.split(",")], args.iters, args.warmup,
                   [int(b) for b in args.batches.split(",")])
    from fgdeploy.fileio import atomic_write_bytes

    text = json.dumps(result, indent=2)
    atomic_write_bytes(args.out, (text + "\n").encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
