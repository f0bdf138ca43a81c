"""`fgdeploy infer --ray` under faults on a multi-node cluster on this machine. Writes JSON.

A head and two worker nodes (``fgdeploy.inference.ray_cluster.loopback_cluster``: separate raylets and object
stores on 127.0.0.1, ``--node-cpus`` CPUs each, started in a folder of their own), the demo model (random
weights) in ONNX Runtime, CUB-like JPEGs (500x375). The driver is the CLI in a fresh process joining the cluster
by address, from another folder, with relative image paths (a list file). Runs, in this order:

1. clean: every image, no fault (the reference time).
2. poison: the same images plus ``poison.jpg``, a copy of one of them that makes the worker process exit when it
   meets it (the nodes' FGDEPLOY_TEST_EXIT_ON; a decoder crash every time), at the default ``--max-retries``:
   its wall time minus the clean run's is what the poison image costs before the run ends with it in the errors
   file; also the worker deaths it took and the errors file's reason.
3. node removed: the clean images again; once ``--remove-after`` results are journaled, a worker node (its raylet,
   object store and the model actor on it) is removed. Recorded: when (seconds into the run, images journaled),
   the rows of OUT, how many distinct images they hold, the errors file, the worker deaths, the wall time.

Clean and poison alternate ``--repeats`` times (medians kept); the node removal runs once, last.

Usage:
  python bench/bench_ray_faults.py --out bench/results/<machine-date>/bench_ray_faults.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

POISON = "poison.jpg"


def run_driver(listing: Path, model: Path, out: Path, address: str, batch: int, cwd: Path,
               remove: tuple[Any, int] | None = None, timeout: float = 1800) -> dict[str, Any]:
    """One ``fgdeploy infer LIST --ray ADDRESS`` in a fresh process; ``remove`` = (cluster, n): remove a worker
    node once n results are journaled."""
    from fgdeploy.inference.ray_cluster import driver_env

    for stale in (out, out.with_name(out.stem + ".errors.csv"), out.with_name(out.stem + ".run.json")):
        stale.unlink(missing_ok=True)
    journal = out.with_name(out.name + ".partial.jsonl")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "fgdeploy", "-q", "infer", str(os.path.relpath(listing, cwd)),
                             "--model", str(model), "--out", str(out), "--batch", str(batch), "--ray", address],
                            cwd=cwd, env=driver_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result: dict[str, Any] = {}
    if remove is not None:
        cluster, after = remove
        while proc.poll() is None:
            done = journal.read_text(encoding="utf-8").count("\n") - 1 if journal.exists() else 0
            if done >= after:
                result["removed_after_images"] = done
                result["removed_at_s"] = round(time.perf_counter() - start, 2)
                cluster.remove_node(next(iter(cluster.worker_nodes)), allow_graceful=False)
                break
            time.sleep(0.05)
    output, _ = proc.communicate(timeout=timeout)
    result["wall_s"] = round(time.perf_counter() - start, 2)
    result["exit_code"] = proc.returncode
    with open(out, encoding="utf-8", newline="") as f:
        rows = [row[0] for row in list(csv.reader(f))[1:]]
    with open(out.with_name(out.stem + ".errors.csv"), encoding="utf-8", newline="") as f:
        errors = list(csv.reader(f))[1:]
    deaths = re.search(r"workers died (\d+) time", output)
    result.update({"rows": len(rows), "distinct_images": len(set(rows)), "errors": errors,
                   "worker_deaths": int(deaths[1]) if deaths else 0, "summary": output.strip().splitlines()[:3]})
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/bench_ray_faults.json"))
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--node-cpus", type=int, default=1, help="CPUs of each of the three nodes")
    parser.add_argument("--remove-after", type=int, default=100, help="images journaled before a node is removed")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_infer import model_for_backend, save_model
    from gpu_speed import make_jpegs

    import ray

    from fgdeploy.bench import environment
    from fgdeploy.fileio import atomic_write_json
    from fgdeploy.inference.ray_cluster import loopback_cluster
    from fgdeploy.inference.ray_scoring import DEFAULT_MAX_RETRIES

    payload: dict[str, Any] = {"environment": {**environment(), "ray": ray.__version__},
                               "load_average_at_start": os.getloadavg(),
                               "args": {k: str(v) for k, v in vars(args).items()},
                               "max_retries": DEFAULT_MAX_RETRIES}
    with tempfile.TemporaryDirectory(prefix="fgdeploy-bench-faults-") as tmp:
        root = Path(tmp)
        user = root / "user"
        (user / "images").mkdir(parents=True)
        make_jpegs(user / "images", args.images)
        real = sorted((user / "images").glob("*.jpg"))
        shutil.copy(real[len(real) // 2], user / "images" / POISON)
        clean_list, poison_list = user / "clean.txt", user / "poison.txt"
        clean_list.write_text("".join(f"images/{p.name}\n" for p in real))
        names = [f"images/{p.name}" for p in real]
        names.insert(len(names) // 3, f"images/{POISON}")
        poison_list.write_text("".join(f"{n}\n" for n in names))
        model = model_for_backend(save_model(root / "model.pt", "demo", small=False), "ort")
        (root / "nodes").mkdir()
        with loopback_cluster(2, args.node_cpus, root / "nodes", {"FGDEPLOY_TEST_EXIT_ON": POISON}) as cluster:
            payload["nodes"] = {"head": 1, "workers": 2, "cpus_each": args.node_cpus}
            clean, poison = [], []
            for k in range(args.repeats):
                clean.append(run_driver(clean_list, model, user / f"clean{k}.csv", cluster.address, args.batch, user))
                poison.append(run_driver(poison_list, model, user / f"poison{k}.csv", cluster.address, args.batch,
                                         user))
                print(f"clean {clean[-1]['wall_s']} s, with the poison image {poison[-1]['wall_s']} s "
                      f"({poison[-1]['worker_deaths']} worker deaths)", file=sys.stderr)
            removed = run_driver(clean_list, model, user / "removed.csv", cluster.address, args.batch, user,
                                 remove=(cluster, args.remove_after))
        clean_s = statistics.median(r["wall_s"] for r in clean)
        poison_s = statistics.median(r["wall_s"] for r in poison)
        payload.update({
            "clean": clean, "poison": poison, "node_removed": removed,
            "clean_wall_s_median": clean_s, "poison_wall_s_median": poison_s,
            "poison_cost_s": round(poison_s - clean_s, 2),
            "poison_cost_per_death_s": round((poison_s - clean_s) / max(1, statistics.median(
                r["worker_deaths"] for r in poison)), 2)})
    payload["load_average_at_end"] = os.getloadavg()
    atomic_write_json(args.out, payload)
    print(json.dumps({k: payload[k] for k in ("clean_wall_s_median", "poison_wall_s_median", "poison_cost_s",
                                              "poison_cost_per_death_s")}))
    r = removed
    print(f"node removed after {r.get('removed_after_images')} images ({r.get('removed_at_s')} s): "
          f"{r['rows']} rows, {r['distinct_images']} distinct, {len(r['errors'])} errors, "
          f"{r['worker_deaths']} worker deaths, exit {r['exit_code']}, {r['wall_s']} s")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
