"""Where an ONNX model's time goes in ONNX Runtime on CPU: kernel time per op type, from ORT's own profiler.

    python bench/ort_profile.py runs/demo/model.onnx runs/demo/model_int8.onnx --out bench/results/<dir>/ort_profile.json
        [--batch 16] [--runs 3] [--threads 2]

For each model: one session (all graph optimisations, ``--threads`` intra-op threads, idle threads sleeping),
one warm-up call, then ``--runs`` profiled calls on the same random batch; the JSON holds, per op type, the
kernel milliseconds per call and the share of all kernel time, and for each model the share of convolutions
(``Conv``, ``QLinearConv``, ``ConvInteger``) with the speed-up the model could reach if they took no time at all.
Used to explain INT8 speed-ups (README "Reduced precision").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

CONV_OPS = ("Conv", "QLinearConv", "ConvInteger")


def profile(path: Path, batch: int, runs: int, threads: int) -> dict[str, Any]:
    """Kernel ms per call by op type (ORT's profiler), warm-up call excluded."""
    import onnxruntime as ort

    from fgdeploy.export.metadata import decode_metadata

    with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        size = int(decode_metadata(session.get_modelmeta().custom_metadata_map)["input_size"])
        images = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
        for _ in range(runs + 1):
            session.run(None, {"images": images})
        events = json.loads(Path(session.end_profiling()).read_text())
    calls = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_timed = calls[1]["ts"] if len(calls) > 1 else 0     # skip the warm-up call's kernels
    per_op: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_timed:
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    conv = sum(v for k, v in per_op.items() if k in CONV_OPS)
    return {"model": str(path), "input_size": size, "batch": batch, "runs": runs, "threads": threads,
            "kernel_ms_per_call": round(total / runs / 1e3, 3),
            "model_run_ms": [round(c["dur"] / 1e3, 3) for c in calls[1:]],
            "conv_share": round(conv / total, 4) if total else None,
            "speedup_if_convs_were_free": round(total / (total - conv), 2) if total > conv else None,
            "ops": {k: {"ms_per_call": round(v / runs / 1e3, 3), "share": round(v / total, 4)}
                    for k, v in per_op.most_common()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="ONNX files to profile.")
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write.")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3, help="Profiled calls per model (after one warm-up call).")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads.")
    args = parser.parse_args(argv)

    from fgdeploy.bench import environment
    from fgdeploy.fileio import atomic_write_json

    result = {"environment": environment(), "load_average_before": list(os.getloadavg()),
              "models": [profile(m, args.batch, args.runs, args.threads) for m in args.models],
              "load_average_after": list(os.getloadavg())}
    atomic_write_json(args.out, result)
    for row in result["models"]:
        top = ", ".join(f"{k} {v['ms_per_call']} ms" for k, v in list(row["ops"].items())[:5])
        print(f"{row['model']}: {row['kernel_ms_per_call']} ms kernels per call, convs {row['conv_share']:.0%} "
              f"(at most {row['speedup_if_convs_were_free']}x if free); {top}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
