"""INT8 schemes side by side on one trained model: agreement before the guard, nodes the guard keeps float, speed.

    python bench/bench_int8_schemes.py --onnx runs/demo/model.onnx --data runs/demo/synth-birds \\
        --out bench/results/DIR/int8_schemes.json [--schemes u8s8,u8s8-reduce-range,u8u8,s8s8] [--iters 7]

For each scheme (``fgdeploy export --int8-scheme``): the fp32 export is calibrated on the dataset's train split
(64 images, as ``export --int8``), quantized with every guard candidate in INT8, and compared with fp32 on the
test images the guard does not use (agreement before the guard: top-1, keypoints in the same cell with
near-ties, images whose logits and keypoint scores pass parity's int8 element check); then the guard runs on its half of the test split (default thresholds) and the guarded model is
compared on the held-out images again. Speed: fp32, each all-INT8 and each guarded model, model-only at batch
16, one call of each in turn per round (background load hits all alike), medians and ratios to fp32 of the same
round. Writes JSON and a Markdown table beside it (``.md``) and records the CPU model and flags: which scheme is
fastest and most accurate depends on them (VNNI/AMX or AVX2 only). Accuracy numbers do not depend on load;
speed does: compare ratios within one run, on an idle machine.
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

BATCH = 16


def build(fp32_path: Path, data: Path, scheme: str, work: Path) -> dict[str, Any]:
    """All-INT8 and guarded models of one scheme, with their agreement on the held-out test images."""
    import onnx

    from fgdeploy.export.precision import parity_profile
    from fgdeploy.export.precision.guard import Guard, GuardThresholds, guarded_search
    from fgdeploy.export.precision.images import (
        HELD_OUT_SELECTION, guard_and_parity_halves, guard_source, load_image_set,
    )
    from fgdeploy.export.precision.int8 import Int8Builder, Int8Settings, quantized_nodes
    from fgdeploy.parity import DatasetImages

    fp32 = onnx.load(str(fp32_path))
    size = int(json.loads(next(p.value for p in fp32.metadata_props if p.key == "input_size")))
    thresholds, tolerance = parity_profile(GuardThresholds(), "int8")   # as `fgdeploy export --int8`
    _, held_out_ids = guard_and_parity_halves(data)
    held_out = Guard(fp32.SerializeToString(), DatasetImages(data, "test", size, 500, ids=held_out_ids,
                                                             selection=HELD_OUT_SELECTION), thresholds, tolerance)
    guard_images = guard_source(None, data, size, 500)
    assert guard_images is not None   # a CUB-format dataset
    guard = Guard(fp32.SerializeToString(), guard_images, thresholds, tolerance)
    settings = Int8Settings(scheme=scheme)
    builder = Int8Builder(fp32, load_image_set(data, size, 64, "train", minimum=8), settings, work)
    started = time.perf_counter()
    everything = builder(frozenset())
    before = held_out.evaluate(everything)
    guarded, report = guarded_search(builder, builder.candidates, guard, precision="int8", op_types=builder.op_types,
                                     policy_float=builder.policy, progress=lambda line: None)
    after = held_out.evaluate(guarded)
    paths = {"all_int8": work / f"{scheme}_all.onnx", "guarded": work / f"{scheme}_guarded.onnx"}
    paths["all_int8"].write_bytes(everything)
    paths["guarded"].write_bytes(guarded)
    return {"scheme": scheme, "settings": settings.describe(), "candidates": len(builder.candidates),
            "held_out_images": len(held_out.indices), "guard_images": len(guard.indices),
            "before_guard": _metrics(before), "guard_passed": report.passed, "kept_float": report.kept_names,
            "after_guard": _metrics(after), "convs_guarded": {k: v for k, v in quantized_nodes(
                onnx.load_from_string(guarded)).items() if "Conv" in k},
            "build_seconds": round(time.perf_counter() - started, 1), "paths": {k: str(v) for k, v in paths.items()}}


def _metrics(m: Any) -> dict[str, Any]:
    return {"top1_agreement": m.top1_agreement, "keypoint_agreement": m.keypoint_agreement,
            "accuracy_drop_points": m.accuracy_drop, "class_flips": m.class_flips, "keypoint_moves": m.keypoint_moves,
            "outputs_within": m.outputs_within}


def time_models(paths: dict[str, Path], iters: int, threads: int, baseline: str = "fp32") -> dict[str, dict[str, Any]]:
    """Model-only img/s at batch 16, one call of each model per round; medians and per-round ratios to the
    ``baseline`` model. Idle ONNX Runtime threads sleep (``spin=False``): sessions called in turn would otherwise
    compete."""
    from fgdeploy.backends.ort_runner import OrtRunner

    runners = {name: OrtRunner(path, threads=threads, name=name, spin=False) for name, path in paths.items()}
    for runner in runners.values():
        runner.activate()
    try:
        size = int(next(iter(runners.values())).metadata()["input_size"])
        images = np.random.default_rng(0).random((BATCH, 3, size, size), dtype=np.float32)
        for runner in runners.values():
            runner.infer({"images": images})
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(iters):
            for name, runner in runners.items():
                start = time.perf_counter()
                runner.infer({"images": images})
                times[name].append(time.perf_counter() - start)
    finally:
        for runner in runners.values():
            runner.deactivate()
    base = times[baseline]
    return {name: {"img_s": round(BATCH / statistics.median(t), 2),
                   "speedup": round(statistics.median([f / x for f, x in zip(base, t)]), 3),
                   "ms": [round(1e3 * x, 1) for x in t]} for name, t in times.items()}


def markdown(result: dict[str, Any]) -> str:
    """The per-scheme table."""
    cpu = result["machine"]
    lines = [f"INT8 schemes on {cpu['model']} ({', '.join(cpu['flags']) or 'no AVX2 flags'}), "
             f"{result['model']}, batch {BATCH}, {result['threads']} threads; agreement with fp32 on "
             f"{result['schemes'][0]['held_out_images']} test images the guard does not use; the guard on "
             f"{result['schemes'][0]['guard_images']} others; auto picks {result['auto_scheme']}", "",
             "| scheme | before the guard: top-1 / keypoints / outputs within | convs kept float by the guard | "
             "after: top-1 / keypoints / outputs within | all-INT8 speed vs fp32 | guarded speed vs fp32 |",
             "|---|---|---|---|---|---|"]
    for row in result["schemes"]:
        b, a, speed = row["before_guard"], row["after_guard"], result["speed"]
        lines.append(f"| {row['scheme']} | {_three(b)} | {len(row['kept_float'])} of {row['candidates']} | "
                     f"{_three(a)} | {speed[row['scheme'] + ' all']['speedup']:.2f}x | "
                     f"{speed[row['scheme'] + ' guarded']['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def _three(m: dict[str, Any]) -> str:
    return f"{_pct(m['top1_agreement'])} / {_pct(m['keypoint_agreement'])} / {_pct(m['outputs_within'])}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", required=True, type=Path, help="fp32 export of a trained model.")
    parser.add_argument("--data", required=True, type=Path, help="Its CUB-format dataset (train: calibration).")
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write (and .md beside it).")
    parser.add_argument("--schemes", default="u8s8,u8s8-reduce-range,u8u8,s8s8")
    parser.add_argument("--iters", type=int, default=7, help="Timed rounds.")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads.")
    args = parser.parse_args(argv)

    import onnxruntime

    from fgdeploy.cpu import cpu_features
    from fgdeploy.export.precision.int8 import choose_scheme
    from fgdeploy.fileio import atomic_write_json, atomic_write_text

    cpu = cpu_features()
    result: dict[str, Any] = {"machine": {**cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                                          "onnxruntime": onnxruntime.__version__},
                              "model": str(args.onnx), "data": str(args.data), "threads": args.threads,
                              "auto_scheme": choose_scheme(cpu)[0], "load_average_before": list(os.getloadavg())}
    with tempfile.TemporaryDirectory(prefix="bench-schemes-") as tmp:
        rows = []
        for scheme in [s.strip() for s in args.schemes.split(",") if s.strip()]:
            rows.append(build(args.onnx, args.data, scheme, Path(tmp)))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "settings"}), file=sys.stderr)
        paths = {"fp32": args.onnx}
        for row in rows:
            paths[f"{row['scheme']} all"] = Path(row["paths"]["all_int8"])
            paths[f"{row['scheme']} guarded"] = Path(row["paths"]["guarded"])
        result["speed"] = time_models(paths, args.iters, args.threads)
    result["schemes"] = rows
    result["load_average_after"] = list(os.getloadavg())
    atomic_write_json(args.out, result)
    table = markdown(result)
    atomic_write_text(args.out.with_suffix(".md"), table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
