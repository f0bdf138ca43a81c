"""ONNX Runtime CPU throughput, INT8 (QDQ) vs FP32, model-only at batch 16: demo model and paper model.

    python bench/bench_int8.py --out bench/results/int8_cpu.json [--models demo,cub_vgg16_fc7]
        [--demo-fp32 model.onnx --demo-int8 model_int8.onnx] [--iters 5] [--paper-iters 3] [--threads 2]

For each model: an fp32 export and its INT8 (``fgdeploy export --int8``, target cpu) are timed on the
same random batch, one call of each in turn (fp32, int8, fp32, int8, ...), so background load hits both
alike; the median of each gives img/s and their ratio is the speed-up (the ratio of the fastest calls,
least disturbed by load on a shared machine, is recorded too). Speed does not depend on the
weights: without --demo-fp32/--demo-int8 untrained models are exported (the paper model, cub_vgg16_fc7 at
500 px, always is) and calibrated on a small generated synth-birds set, without the guard. Targets (issue
#15): demo >= 2x, paper >= 2.5x. The JSON records the CPU's vector extensions (INT8 speed depends on
AVX-512 VNNI / AMX; an AVX2-only CPU has neither) and the load average before and after.
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

TARGETS = {"demo": 2.0, "cub_vgg16_fc7": 2.5}
BATCH = 16


def cpu_info() -> dict[str, Any]:
    """CPU model and the vector extensions that decide INT8 speed."""
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile"]
    return {"model": model, "cores": os.cpu_count(), **{f: f in flags for f in wanted}}


def export_pair(config: str, work: Path, calib: Path) -> tuple[Path, Path]:
    """(fp32, int8) ONNX of an untrained ``config`` model."""
    import torch

    from fgdeploy.checkpoint import CheckpointMeta, save_checkpoint
    from fgdeploy.export.exporter import ExportOptions, export_checkpoint, reduce_exported
    from fgdeploy.export.precision import CalibrationOptions, PrecisionOptions
    from fgdeploy.models import create_model, load_model_config

    torch.manual_seed(0)
    cfg = load_model_config(config)
    classes = [f"{i + 1:03d}.class_{i}" for i in range(20)]
    ckpt = work / f"{config}.pt"
    save_checkpoint(ckpt, create_model(cfg, len(classes)).eval(), CheckpointMeta.for_config(cfg, classes))
    fp32, int8 = work / f"{config}.onnx", work / f"{config}_int8.onnx"
    export_checkpoint(ckpt, fp32, ExportOptions(verify_batches=(1,)))
    reduce_exported(fp32, int8, ExportOptions(precision=PrecisionOptions("int8", CalibrationOptions(calib, images=8))))
    return fp32, int8


def time_pair(fp32: Path, int8: Path, iters: int, threads: int) -> dict[str, Any]:
    """Interleaved model-only timings at batch 16; medians, img/s and the ratio."""
    from fgdeploy.backends.ort_runner import OrtRunner

    with OrtRunner(fp32, threads=threads, name="fp32") as a, OrtRunner(int8, threads=threads, name="int8") as b:
        size = int(a.metadata()["input_size"])
        images = np.random.default_rng(0).random((BATCH, 3, size, size), dtype=np.float32)
        for runner in (a, b):          # warm-up: allocations, weight packing
            runner.infer({"images": images})
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        for _ in range(iters):
            for name, runner in (("fp32", a), ("int8", b)):
                start = time.perf_counter()
                runner.infer({"images": images})
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"input_size": size, "batch": BATCH, "iters": iters, "threads": threads,
            "fp32_ms": [round(1e3 * t, 1) for t in times["fp32"]], "int8_ms": [round(1e3 * t, 1) for t in times["int8"]],
            "fp32_img_s": round(BATCH / med["fp32"], 2), "int8_img_s": round(BATCH / med["int8"], 2),
            "speedup": round(med["fp32"] / med["int8"], 3),
            "speedup_fastest_calls": round(min(times["fp32"]) / min(times["int8"]), 3),  # least disturbed by load
            "fp32_mb": round(fp32.stat().st_size / 1e6, 1), "int8_mb": round(int8.stat().st_size / 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write.")
    parser.add_argument("--models", default="demo,cub_vgg16_fc7", help="Configs to time, comma separated.")
    parser.add_argument("--demo-fp32", type=Path, help="An existing fp32 demo export (e.g. of a trained model).")
    parser.add_argument("--demo-int8", type=Path, help="Its INT8 export (with --demo-fp32).")
    parser.add_argument("--iters", type=int, default=7, help="Timed calls per precision, demo model.")
    parser.add_argument("--paper-iters", type=int, default=3, help="Timed calls per precision, paper model.")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads.")
    args = parser.parse_args(argv)

    import onnxruntime

    from fgdeploy.data.synthetic import generate_synth_birds
    from fgdeploy.fileio import atomic_write_json

    result: dict[str, Any] = {"machine": {**cpu_info(), "python": platform.python_version(),
                                          "onnxruntime": onnxruntime.__version__},
                              "load_average_before": list(os.getloadavg()), "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        work = Path(tmp)
        calib = work / "calib"
        generate_synth_birds(calib, classes=4, images_per_class=4, size=256, seed=0)
        for config in [m.strip() for m in args.models.split(",") if m.strip()]:
            started = time.perf_counter()
            if config == "demo" and args.demo_fp32 and args.demo_int8:
                pair, source = (args.demo_fp32, args.demo_int8), f"given: {args.demo_fp32}, {args.demo_int8}"
            else:
                pair, source = export_pair(config, work, calib), "untrained weights, calibrated on 8 synth images"
            iters = args.iters if config == "demo" else args.paper_iters
            row = {"source": source, **time_pair(*pair, iters=iters, threads=args.threads)}
            row["target"] = TARGETS.get(config)
            row["meets_target"] = None if row["target"] is None else row["speedup"] >= row["target"]
            row["seconds"] = round(time.perf_counter() - started, 1)
            result["models"][config] = row
            print(json.dumps({config: row}), file=sys.stderr)
    result["load_average_after"] = list(os.getloadavg())
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
