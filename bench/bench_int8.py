"""ONNX Runtime CPU throughput, INT8 (QDQ) vs FP32, model-only at batch 16: demo models and the paper's best model.

    python bench/bench_int8.py --out bench/results/int8_cpu.json [--models demo,demo_partnets,cub_vgg16_cbp_partnets]
        [--demo-fp32 model.onnx --demo-int8 model_int8.onnx] [--scheme auto] [--iters 7] [--paper-iters 3]
        [--threads 2]

For each model: an fp32 export and its INT8 (``fgdeploy export --int8``, target cpu, the scheme the CPU flags
choose unless ``--scheme`` says) are timed on the same random batch, one call of each in turn (fp32, int8, fp32,
int8, ...), so background load hits both alike; the median of each gives img/s and their ratio is the speed-up
(the ratio of the fastest calls, least disturbed by load on a shared machine, is recorded too). Speed does not
depend on the weights: without --demo-fp32/--demo-int8 untrained models are exported (the paper model always
is) and calibrated on a small generated synth-birds set, without the guard, so every conv outside the float
policy is INT8, the part nets' included (counted in ``convs``). Targets (issue 24): on AVX2 without VNNI, demo
>= 1.6x and cub_vgg16_cbp_partnets >= 1.9x; with VNNI or AMX, >= 3x. The JSON records the CPU model and
flags (``fgdeploy.cpu.cpu_features``), the scheme used and why, and the load average before and after.
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

AVX2_TARGETS = {"demo": 1.6, "cub_vgg16_cbp_partnets": 1.9}   # AVX2 without VNNI/AMX
VNNI_TARGET = 3.0                                                # with VNNI or AMX, every model
BATCH = 16


def target(config: str, cpu: dict[str, Any]) -> float | None:
    """The issue's speed-up target for ``config`` on this CPU."""
    from fgdeploy.cpu import VNNI_FLAGS

    if set(cpu["flags"]) & set(VNNI_FLAGS):
        return VNNI_TARGET if config in AVX2_TARGETS else None
    return AVX2_TARGETS.get(config) if "avx2" in cpu["flags"] else None


def export_pair(config: str, work: Path, calib: Path, scheme: str) -> tuple[Path, Path]:
    """(fp32, int8) ONNX of an untrained ``config`` model."""
    import torch

    from fgdeploy.checkpoint import CheckpointMeta, save_checkpoint
    from fgdeploy.export.exporter import ExportOptions, export_checkpoint, reduce_exported
    from fgdeploy.export.precision import CalibrationOptions, PrecisionOptions
    from fgdeploy.export.precision.int8 import Int8Settings
    from fgdeploy.models import create_model, load_model_config

    torch.manual_seed(0)
    cfg = load_model_config(config)
    classes = [f"{i + 1:03d}.class_{i}" for i in range(20)]
    ckpt = work / f"{config}.pt"
    save_checkpoint(ckpt, create_model(cfg, len(classes)).eval(), CheckpointMeta.for_config(cfg, classes))
    fp32, int8 = work / f"{config}.onnx", work / f"{config}_int8.onnx"
    export_checkpoint(ckpt, fp32, ExportOptions(verify_batches=(1,)))
    calibration = CalibrationOptions(calib, images=8, settings=Int8Settings(scheme=scheme))
    reduce_exported(fp32, int8, ExportOptions(precision=PrecisionOptions("int8", calibration)))
    return fp32, int8


def int8_summary(int8: Path) -> dict[str, Any]:
    """The scheme recorded in the INT8 model's metadata and its conv counts (int8 / float, part nets)."""
    import onnx

    from fgdeploy.export.metadata import decode_metadata
    from fgdeploy.export.precision.int8 import quantized_nodes

    model = onnx.load(str(int8))
    quant = decode_metadata({p.key: p.value for p in model.metadata_props}).get("quantization") or {}
    return {"scheme": quant.get("scheme"), "scheme_reason": quant.get("scheme_reason"),
            "convs": {k: v for k, v in quantized_nodes(model).items() if "Conv" in k}}


def session(path: Path, threads: int, arena: bool, spin: bool = False) -> Any:
    """An ONNX Runtime CPU session as ``OrtRunner`` makes it (all graph optimisations, ``threads`` intra-op
    threads); ``arena`` False returns freed tensors to the system instead of keeping them in ORT's arena.
    ``spin`` False makes idle intra-op threads sleep: two sessions called in turn otherwise compete, the idle
    one's spinning threads taking cores from the other's call (``--spin`` keeps ORT's default to show it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_cpu_mem_arena = arena
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def time_pair(fp32: Path, int8: Path, iters: int, threads: int, arena: bool = True,
              spin: bool = False) -> dict[str, Any]:
    """Interleaved model-only timings at batch 16; medians, img/s and the ratio. ``arena`` False for the paper
    models: with ORT's memory arena each session keeps its batch-16 peak (fp32 cub_vgg16_cbp_partnets: 10.4 GB
    measured), and the two sessions open side by side were killed at 23 GB."""
    import onnx

    sessions = {"fp32": session(fp32, threads, arena, spin), "int8": session(int8, threads, arena, spin)}
    size = int(json.loads(next(p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props
                               if p.key == "input_size")))
    images = np.random.default_rng(0).random((BATCH, 3, size, size), dtype=np.float32)
    for sess in sessions.values():     # warm-up: allocations, weight packing
        sess.run(None, {"images": images})
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for _ in range(iters):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, {"images": images})
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"input_size": size, "batch": BATCH, "iters": iters, "threads": threads, "cpu_mem_arena": arena,
            "ort_threads_spin": spin,
            "fp32_ms": [round(1e3 * t, 1) for t in times["fp32"]], "int8_ms": [round(1e3 * t, 1) for t in times["int8"]],
            "fp32_img_s": round(BATCH / med["fp32"], 2), "int8_img_s": round(BATCH / med["int8"], 2),
            "speedup": round(med["fp32"] / med["int8"], 3),
            "speedup_fastest_calls": round(min(times["fp32"]) / min(times["int8"]), 3),  # least disturbed by load
            "fp32_mb": round(fp32.stat().st_size / 1e6, 1), "int8_mb": round(int8.stat().st_size / 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write.")
    parser.add_argument("--models", default="demo,demo_partnets,cub_vgg16_cbp_partnets",
                        help="Configs to time, comma separated.")
    parser.add_argument("--demo-fp32", type=Path, help="An existing fp32 export of the first model (e.g. trained).")
    parser.add_argument("--demo-int8", type=Path, help="Its INT8 export (with --demo-fp32).")
    parser.add_argument("--scheme", default="auto", help="INT8 scheme (fgdeploy export --int8-scheme).")
    parser.add_argument("--iters", type=int, default=7, help="Timed calls per precision, demo models.")
    parser.add_argument("--paper-iters", type=int, default=3, help="Timed calls per precision, paper models.")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads.")
    parser.add_argument("--spin", action="store_true",
                        help="Let idle ONNX Runtime threads spin (its default; the two sessions then compete).")
    args = parser.parse_args(argv)

    import onnxruntime

    from fgdeploy.cpu import cpu_features
    from fgdeploy.data.synthetic import generate_synth_birds
    from fgdeploy.fileio import atomic_write_json

    cpu = cpu_features()
    result: dict[str, Any] = {"machine": {**cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                                          "onnxruntime": onnxruntime.__version__},
                              "load_average_before": list(os.getloadavg()), "models": {}}
    configs = [m.strip() for m in args.models.split(",") if m.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        work = Path(tmp)
        calib = work / "calib"
        generate_synth_birds(calib, classes=4, images_per_class=4, size=256, seed=0)
        for config in configs:
            started = time.perf_counter()
            if config == configs[0] and args.demo_fp32 and args.demo_int8:
                pair, source = (args.demo_fp32, args.demo_int8), f"given: {args.demo_fp32}, {args.demo_int8}"
            else:
                pair = export_pair(config, work, calib, args.scheme)
                source = "untrained weights, calibrated on 8 synth images, no guard"
            paper = config.startswith("cub_")
            row = {"source": source, **int8_summary(pair[1]),
                   **time_pair(*pair, iters=args.paper_iters if paper else args.iters, threads=args.threads,
                               arena=not paper, spin=args.spin)}
            row["target"] = target(config, cpu)
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
