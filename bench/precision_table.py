"""One table comparing exports of one checkpoint in several precisions: fp32 nodes, size, CPU speed, parity.

    python bench/precision_table.py --checkpoint best.pt --data synth-birds \\
        --onnx model.onnx model_fp16.onnx model_fp16_task.onnx model_int8.onnx --out table.json [--iters 5]

For each ONNX: the nodes that compute in fp32 (convs, adds, reductions, the CoordinateTransfer node, ...;
``fgdeploy.export.precision.fp16.fp32_node_names``; for INT8 the convs with float weights), the file size, ONNX
Runtime CPU model-only img/s at batch 16 (every model timed in turn, one call each per round, so load hits
all alike; medians), and ``fgdeploy parity`` against the checkpoint on the dataset's test split (verdict,
top-1 agreement, keypoints in the same cell, accuracy difference). Writes JSON and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


BATCH = 16


def fp32_nodes(path: Path) -> dict[str, Any]:
    """Compute nodes left in fp32, by op type (INT8: convs whose weights are not dequantized int8)."""
    from collections import Counter

    import onnx

    from fgdeploy.export.precision.fp16 import fp32_node_names
    from fgdeploy.export.precision.int8 import quantized_nodes
    from fgdeploy.export.onnx_function import register_coordinate_transfer_schema

    register_coordinate_transfer_schema()
    model = onnx.load(str(path))
    ops = {n.name: n.op_type for n in model.graph.node}
    names = fp32_node_names(model)
    counts = Counter(ops[n] for n in names)
    out: dict[str, Any] = {"fp32_compute_nodes": len(names), "by_op": dict(sorted(counts.items()))}
    quantized = quantized_nodes(model)
    if quantized.get("QuantizeLinear"):
        out["int8_convs"] = quantized.get("Conv int8", 0)
        out["float_convs"] = quantized.get("Conv float", 0)
    return out


def speeds(paths: list[Path], iters: int, threads: int) -> dict[str, float]:
    """img/s at batch 16 per model, interleaved rounds, medians (``bench_int8_schemes.time_models``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_int8_schemes import time_models

    timed = time_models({p.name: p for p in paths}, iters, threads, baseline=paths[0].name)
    return {name: row["img_s"] for name, row in timed.items()}


def parity(checkpoint: Path, path: Path, data: Path) -> dict[str, Any]:
    from fgdeploy.backends import open_runner
    from fgdeploy.parity import DatasetImages, ParityConfig, run_parity

    test = lambda debug: open_runner("ort", str(path), debug=debug)  # noqa: E731
    with test(False) as runner:
        size = int(runner.metadata()["input_size"])
    report = run_parity(lambda debug: open_runner("torch", str(checkpoint), debug=debug), test,
                        DatasetImages(data, "test", size), ParityConfig(batch_size=16))
    t = report.task
    return {"passed": report.passed, "precision": report.precision, "top1_agreement": t.top1_agreement,
            "keypoint_same_cell": t.keypoint_same_cell, "keypoint_same_cell_or_tie": t.keypoint_same_cell_or_tie,
            "accuracy_diff_points": t.accuracy_diff_points, "pck_diff_points": t.pck_diff_points,
            "failed_checks": [c.name for c in report.checks if not c.passed], "images": report.n_images}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | precision | fp32 compute nodes | size MB | CPU img/s (b16) | parity | top-1 agree | "
             "kp same cell (strict / ties) | acc diff |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["parity"]
        kp = f"{100 * p['keypoint_same_cell']:.2f} / {100 * (p['keypoint_same_cell_or_tie'] or 0):.2f} %"
        n = r["nodes"]
        nodes = (f"{n['float_convs']} float convs ({n['int8_convs']} int8)" if "int8_convs" in n
                 else str(n["fp32_compute_nodes"]))
        lines.append(f"| {r['file']} | {r['precision']} | {nodes} | {r['size_mb']} | "
                     f"{r['cpu_img_s']} | {'PASS' if p['passed'] else 'FAIL'} | {100 * p['top1_agreement']:.2f} % | "
                     f"{kp} | {p['accuracy_diff_points']:+.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path, help="CUB-format dataset (its test split).")
    parser.add_argument("--onnx", required=True, nargs="+", type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)

    from fgdeploy.backends.ort_runner import OrtRunner
    from fgdeploy.fileio import atomic_write_json, atomic_write_text

    load_before = list(os.getloadavg())
    rate = speeds(args.onnx, args.iters, args.threads)
    rows = []
    for path in args.onnx:
        with OrtRunner(path) as runner:
            precision = runner.metadata().get("precision", "fp32")
        rows.append({"file": path.name, "precision": precision, "nodes": fp32_nodes(path),
                     "size_mb": round(path.stat().st_size / 1e6, 2), "cpu_img_s": rate[path.name],
                     "parity": parity(args.checkpoint, path, args.data)})
    table = markdown(rows)
    atomic_write_json(args.out, {"checkpoint": str(args.checkpoint), "data": str(args.data), "batch": BATCH,
                                 "iters": args.iters, "threads": args.threads, "load_average_before": load_before,
                                 "load_average_after": list(os.getloadavg()), "rows": rows, "markdown": table})
    atomic_write_text(args.out.with_suffix(".md"), table + "\n")
    print(table)
    print(json.dumps(rows, indent=1), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
