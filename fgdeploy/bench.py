"""Latency and throughput per backend, precision and batch: model-only and end-to-end.

Model-only times ``predictor.predict`` on a batch already in host memory (random pixels, prepared
once): the runner call including host<->device copies, without decoding. End-to-end times
``fgdeploy.inference.local.run_inference`` over a folder: decode, resize, batch, predict, write results.
Both go through the same predictor, so their ratio is the pipeline's efficiency.

Each measurement runs ``warmup`` untimed calls first (lazy init, cuDNN autotuning, compilation).
On a CUDA device every call is timed with CUDA events (the predictor syncs before returning);
otherwise with ``time.perf_counter``.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fgdeploy.fileio import atomic_write_json
from fgdeploy.inference.local import InferOptions, discover_images, run_inference
from fgdeploy.inference.predictors import Predictor


@dataclass(frozen=True)
class BenchResult:
    """One row of the table: a backend at one batch size, in one mode."""

    backend: str            # predictor label, e.g. "ort-cpu-fp32", "torch-cuda-fp16-cl-max-autotune"
    mode: str               # "model" or "end-to-end"
    batch: int
    iters: int              # timed calls (model) or batches (end-to-end)
    timer: str              # "cuda-events" or "wall"
    p50_ms: float           # per-batch latency percentiles
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float     # model: batch / mean latency; end-to-end: images / wall time

    @classmethod
    def from_latencies(cls, backend: str, mode: str, batch: int, latencies_ms: Sequence[float], timer: str,
                       images_per_s: float | None = None) -> BenchResult:
        lat = np.asarray(latencies_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        mean = float(lat.mean())
        rate = images_per_s if images_per_s is not None else batch * 1000.0 / mean
        return cls(backend, mode, batch, len(lat), timer, round(float(p50), 3), round(float(p90), 3),
                   round(float(p99), 3), round(mean, 3), float(f"{rate:.4g}"))  # 4 digits: 0.4123 img/s too


def is_cuda(predictor: Any) -> bool:
    """Whether ``predictor`` (or the runner inside it) runs on a CUDA device."""
    target = getattr(predictor, "runner", predictor)
    return str(getattr(target, "device", "cpu")).startswith("cuda")


def time_calls(call: Callable[[], Any], iters: int, warmup: int, cuda: bool = False) -> tuple[list[float], str]:
    """Run ``call`` ``warmup`` times untimed, then ``iters`` times timed; returns (ms per call, timer name)."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    if cuda:
        import torch

        torch.cuda.synchronize()
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return times, "cuda-events"
    for _ in range(iters):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times, "wall"


def bench_model(predictor: Predictor, name: str, batch: int, iters: int = 20, warmup: int = 3,
                seed: int = 0) -> BenchResult:
    """Model-only latency/throughput of ``predictor`` at ``batch`` on random (non-constant) images."""
    size = predictor.input_size
    images = np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    prepared = predictor.prepare(list(images))
    times, timer = time_calls(lambda: predictor.predict(prepared, batch), iters, warmup, is_cuda(predictor))
    return BenchResult.from_latencies(name, "model", batch, times, timer)


def bench_end_to_end(predictor: Predictor, name: str, images: str | Path, batch: int, workers: int = 0,
                     warmup: int = 1, fast_decode: bool = False) -> BenchResult:
    """Decode-to-results throughput over ``images`` (a folder, glob or list); results go to a temp dir.

    ``fast_decode``: as ``fgdeploy infer --fast-decode`` (the backend name gets a "+fast-decode" suffix).

    Latency percentiles are of the time between consecutive finished batches.
    """
    paths = discover_images(images)
    bench_model(predictor, name, batch, iters=1, warmup=warmup)  # warm up outside the timed run
    stamps: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fgdeploy-bench-") as tmp:
        report = run_inference(paths, predictor, Path(tmp) / "results.jsonl",
                               options=InferOptions(batch=batch, workers=workers, topk=1, fast_decode=fast_decode),
                               on_start=lambda n: stamps.append(time.perf_counter()),
                               on_progress=lambda n: stamps.append(time.perf_counter()))
    gaps = list(np.diff(stamps) * 1000.0) if len(stamps) > 1 else [report.seconds * 1000.0]
    label = f"{name}+fast-decode" if fast_decode else name
    return BenchResult.from_latencies(label, "end-to-end", batch, gaps, "wall", report.images_per_s)


def environment() -> dict[str, Any]:
    """Versions and hardware the numbers were measured on."""
    from fgdeploy.cpu import cpu_features

    env: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                           "cpu_count": os.cpu_count(), "cpu": cpu_features()}
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        import onnxruntime  # type: ignore[import-untyped]

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        import openvino

        env["openvino"] = openvino.get_version()
    except ImportError:  # the [openvino] extra is optional
        pass
    return env


def render_table(results: Sequence[BenchResult]) -> str:
    """A fixed-width text table, one row per result."""
    head = ("backend", "mode", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s", "timer")
    rows = [(r.backend, r.mode, str(r.batch), f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}",
             f"{r.images_per_s:.1f}", r.timer) for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) if i >= 2 else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def write_json(path: str | Path, results: Sequence[BenchResult], extra: dict[str, Any] | None = None) -> Path:
    """Write results + environment as JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"environment": environment(), **(extra or {}), "results": [asdict(r) for r in results]}
    atomic_write_json(path, payload)
    return path
