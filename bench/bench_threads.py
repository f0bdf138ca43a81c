"""`fgdeploy train` throughput on a busy CPU: another 2-thread process runs while training (issue 17 #5).

Each variant is a real ``fgdeploy train`` subprocess (stage 2, a few epochs, the demo config) on the same small
synth-birds set; its speed is the median of the per-epoch ``images_per_s`` in metrics.jsonl (training steps
only). Variants run interleaved, round after round, so a change in the machine's load hits all of them alike.

  before         the code of another checkout (``--before-src``, e.g. main) with its defaults
  after          this checkout with its defaults (--threads = the cores this process may use, OpenMP idle
                 threads sleep: OMP_WAIT_POLICY=PASSIVE)
  after-active   this checkout with OMP_WAIT_POLICY=ACTIVE (the threads change alone)
  after-t1       this checkout with --threads 1

Usage:
  python bench/bench_threads.py --before-src /tmp/fgdeploy-main --rounds 3 --out bench/results/X/bench_threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fgdeploy.fileio import atomic_write_json

LOAD = ("import torch\ntorch.set_num_threads(2)\na = torch.randn(384, 384)\n"
        "while True:\n    a = (a @ a).clamp_(-1, 1)\n")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before-src", type=Path, default=None, help="source tree of the 'before' code (its fgdeploy/)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--images-per-class", type=int, default=20)
    p.add_argument("--idle", action="store_true", help="also run every variant once without the load process")
    p.add_argument("--only", default=None, help="comma list of variants to run (default: all)")
    p.add_argument("--out", type=Path, required=True, help="JSON result file")
    return p.parse_args()


def train_speed(python_path: str | None, extra: list[str], data: Path, out: Path, epochs: int,
                env_extra: dict[str, str] | None = None) -> float:
    """Median per-epoch training img/s of one `fgdeploy train` run."""
    env = {**os.environ, **(env_extra or {})}
    if python_path:
        env["PYTHONPATH"] = python_path
    cmd = [sys.executable, "-m", "fgdeploy", "-q", "train", "--data", str(data), "--out", str(out), "--stage", "2",
           "--epochs", str(epochs), "--batch", "8", *extra]
    # cwd: not the repository root, whose fgdeploy/ would shadow PYTHONPATH for the "before" code
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, cwd=out.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return float(statistics.median(r["images_per_s"] for r in records))


def main() -> None:
    args = parse_args()
    variants: dict[str, tuple[str | None, list[str]]] = {"after": (None, []), "after-t1": (None, ["--threads", "1"])}
    if args.before_src:
        variants = {"before": (str(args.before_src), []), **variants}
    envs = {"after-active": {"OMP_WAIT_POLICY": "ACTIVE"}}
    variants["after-active"] = (None, [])
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    results: dict[str, dict[str, list[float]]] = {name: {"loaded": [], "idle": []} for name in variants}
    with tempfile.TemporaryDirectory(prefix="fgdeploy-threads-") as tmp:
        data = Path(tmp) / "birds"
        subprocess.run([sys.executable, "-m", "fgdeploy", "-q", "data", "synth", str(data), "--classes",
                        str(args.classes), "--images-per-class", str(args.images_per_class), "--size", "160"],
                       check=True)
        run = 0
        if args.idle:
            for name, (src, extra) in variants.items():
                run += 1
                results[name]["idle"].append(train_speed(src, extra, data, Path(tmp) / f"run{run}", args.epochs,
                                                         envs.get(name)))
                print(f"idle {name}: {results[name]['idle'][-1]:.1f} img/s", flush=True)
        load = subprocess.Popen([sys.executable, "-c", LOAD])
        try:
            time.sleep(2)
            for r in range(args.rounds):
                for name, (src, extra) in variants.items():
                    run += 1
                    speed = train_speed(src, extra, data, Path(tmp) / f"run{run}", args.epochs, envs.get(name))
                    results[name]["loaded"].append(speed)
                    print(f"round {r + 1} loaded {name}: {speed:.1f} img/s", flush=True)
        finally:
            load.terminate()
            load.wait(timeout=30)
    summary = {name: {kind: {"runs": v, "median": statistics.median(v) if v else None} for kind, v in res.items()}
               for name, res in results.items()}
    ratios = {}
    if "before" in summary:
        base = summary["before"]["loaded"]["median"]
        ratios = {f"{name}/before (loaded)": round(summary[name]["loaded"]["median"] / base, 2)
                  for name in summary if name != "before"}
    payload = {"what": "fgdeploy train img/s (stage 2, demo config, batch 8) while a 2-thread torch process runs",
               "variants": {name: {"src": src or "this checkout", "extra_args": extra, "env": envs.get(name, {})}
                            for name, (src, extra) in variants.items()},
               "results": summary, "ratios": ratios,
               "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "affinity": len(os.sched_getaffinity(0)), "python": platform.python_version()},
               "classes": args.classes, "images_per_class": args.images_per_class, "epochs": args.epochs,
               "rounds": args.rounds}
    atomic_write_json(args.out, payload)
    print(json.dumps({"ratios": ratios, **{n: s["loaded"]["median"] for n, s in summary.items()}}, indent=1))


if __name__ == "__main__":
    main()
