"""GPU check of the CoordinateTransfer CUDA kernel (the TensorRT plugin's kernel) without TensorRT.

    python bench/gpu_kernel_check.py --out gpu_kernel_check.json

1. builds the ctypes kernel library with nvcc for the local GPU (``fgdeploy.native.kernels``);
2. compares kernel vs torch op (``torch.ops.fgdeploy.coordinate_transfer``) vs the float64 NumPy reference
   (``fgdeploy.reference``) on random inputs (never zeros; heatmap maxima planted on every border and in
   ties) in fp32 and fp16, max and average mode, windows 1/3/5 (7 where it exceeds the grid), batch 1
   and 64 with P=15, C=512, 32x32 features, 10x10 heatmaps, plus a same-size grid (window-3 clipping)
   and odd shapes. Max mode must match exactly; average within 1e-6 x mean|x| (plus one fp16 ulp in fp16);
3. times kernel vs torch op at batch 64 (fp32/fp16, window 3) with CUDA events (median per call).

Writes JSON (atomically) to --out, prints a summary. Exit 0: all checks passed; 1: a check failed;
2: no CUDA GPU or the library did not build. Needs torch (CUDA), numpy and nvcc; no TensorRT.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from fgdeploy.fileio import atomic_write_json  # noqa: E402

# (name, batch, parts, channels, heatmap HxW, feature HxW, windows, feature_ties)
CONFIGS: list[tuple[str, int, int, int, tuple[int, int], tuple[int, int], tuple[int, ...], bool]] = [
    ("main-b1", 1, 15, 512, (10, 10), (32, 32), (1, 3, 5), False),
    ("main-b64", 64, 15, 512, (10, 10), (32, 32), (1, 3, 5), False),
    ("same-grid", 8, 15, 64, (12, 12), (12, 12), (1, 3, 5), True),   # border cells map to border cells
    ("odd-shapes", 3, 5, 37, (7, 9), (5, 13), (1, 3, 5, 7), False),  # C % 32 != 0; window 7 > 5 rows
]
DTYPES = ("float32", "float16")
MODES = (0, 1)


def _clipped(heat: np.ndarray, feature_hw: tuple[int, int], window: int) -> int:
    """Number of (n, p) whose window is clipped by the feature-grid border."""
    from fgdeploy.reference.coordinate_transfer import window_bounds

    count = 0
    for b in range(heat.shape[0]):
        for q in range(heat.shape[1]):
            r0, r1, c0, c1 = window_bounds(heat[b, q], feature_hw, window)
            count += int(r1 - r0 < window or c1 - c0 < window)
    return count


def make_inputs(rng: np.random.Generator, n: int, p: int, c: int, heat_hw: tuple[int, int],
                feat_hw: tuple[int, int], dtype: str, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    """The shared test inputs; values that underflow to 0 in fp16 are replaced (inputs are never zero)."""
    from fgdeploy.reference.coordinate_transfer import make_coordinate_transfer_inputs

    heat, feat = make_coordinate_transfer_inputs(rng, n, p, heat_hw, c, feat_hw, np.dtype(dtype), ties)
    heat[heat == 0] = 0.5
    feat[feat == 0] = 0.5
    return heat, feat


def run_checks(lib: Any, seed: int, configs: list[Any] | None = None, device: str = "cuda") -> list[dict[str, Any]]:
    """Every (config, dtype, window, mode): kernel~reference, torch~reference, kernel~torch."""
    import torch

    from fgdeploy.native.kernels import compare_to_reference
    from fgdeploy.reference.coordinate_transfer import coordinate_transfer as reference

    rows: list[dict[str, Any]] = []
    for ci, (name, n, p, c, heat_hw, feat_hw, windows, ties) in enumerate(configs or CONFIGS):
        for di, dtype in enumerate(DTYPES):
            rng = np.random.default_rng(seed + 100 * ci + di)
            heat, feat = make_inputs(rng, n, p, c, heat_hw, feat_hw, dtype, ties)
            heat64, feat64 = heat.astype(np.float64), feat.astype(np.float64)
            h_t, f_t = torch.from_numpy(heat).to(device), torch.from_numpy(feat).to(device)
            for window in windows:
                clipped = _clipped(heat64, feat_hw, window)
                scale = reference(heat64, np.abs(feat64), window, 1)
                for mode in MODES:
                    exact = reference(heat64, feat64, window, mode)
                    got_k = lib.forward(h_t, f_t, window, mode).cpu().numpy()
                    got_t = torch.ops.fgdeploy.coordinate_transfer(h_t, f_t, window, mode).cpu().numpy()
                    base = {"config": name, "dtype": dtype, "window": window, "mode": mode, "batch": n,
                            "shape": [n, p, c], "clipped_windows": clipped}
                    for pair, a, ref in (("kernel~reference", got_k, exact), ("torch~reference", got_t, exact),
                                         ("kernel~torch", got_k, got_t)):
                        rows.append({**base, "pair": pair, **compare_to_reference(a, ref, scale, dtype, mode)})
    return rows


def run_misc_checks(lib: Any) -> list[dict[str, Any]]:
    """Determinism, argument errors, out= buffer, empty batch."""
    import torch

    rows = []
    g = torch.Generator(device="cuda").manual_seed(3)
    heat = torch.rand(4, 15, 10, 10, device="cuda", generator=g) + 0.5
    feat = torch.rand(4, 512, 32, 32, device="cuda", generator=g) + 0.5
    a, b = lib.forward(heat, feat, 3, 1), lib.forward(heat, feat, 3, 1)
    rows.append({"check": "deterministic (bitwise, twice)", "passed": bool(torch.equal(a, b))})
    try:
        lib.forward(heat, feat, 4, 0)
        rows.append({"check": "window=4 rejected", "passed": False})
    except RuntimeError as exc:
        rows.append({"check": "window=4 rejected", "passed": "window" in str(exc), "message": str(exc)})
    out = torch.full((4, 15, 512), 7.0, device="cuda")
    lib.forward(heat, feat, 5, 0, out=out)
    rows.append({"check": "out= buffer filled", "passed": bool(torch.equal(out, lib.forward(heat, feat, 5, 0)))})
    empty = lib.forward(heat[:0], feat[:0], 3, 0)
    rows.append({"check": "batch 0 gives (0, P, C)", "passed": tuple(empty.shape) == (0, 15, 512)})
    torch.cuda.synchronize()
    return rows


def _time_us(fn: Any, reps: int, inner: int) -> dict[str, float]:
    import torch

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / inner)
    times.sort()
    return {"median_us": statistics.median(times), "p10_us": times[len(times) // 10],
            "p90_us": times[(9 * len(times)) // 10]}


def run_timing(lib: Any, reps: int, inner: int) -> list[dict[str, Any]]:
    """Kernel vs torch op at batch 64, P=15, C=512, 32x32 features, 10x10 heatmaps, window 3."""
    import torch

    rows = []
    g = torch.Generator(device="cuda").manual_seed(5)
    for dtype in (torch.float32, torch.float16):
        heat = (torch.randn(64, 15, 10, 10, device="cuda", generator=g)).to(dtype)
        feat = (torch.rand(64, 512, 32, 32, device="cuda", generator=g) + 0.1).to(dtype)
        for mode in MODES:
            k = _time_us(lambda: lib.forward(heat, feat, 3, mode), reps, inner)
            t = _time_us(lambda: torch.ops.fgdeploy.coordinate_transfer(heat, feat, 3, mode), reps, inner)
            rows.append({"dtype": str(dtype).replace("torch.", ""), "mode": mode, "window": 3, "batch": 64,
                         "kernel": k, "torch_op": t, "speedup": t["median_us"] / k["median_us"]})
    return rows


def _environment(lib_path: str) -> dict[str, Any]:
    import torch

    from fgdeploy.native.build import find_nvcc, nvcc_version

    nvcc = find_nvcc()
    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}",
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "nvcc": nvcc_version(nvcc) if nvcc else None,
            "python": platform.python_version(), "kernel_library": lib_path}


def _summary(result: dict[str, Any]) -> str:
    lines = [f"GPU {result['environment'].get('gpu')} (sm_{result['environment'].get('compute_capability', '?')})"]
    checks = result["checks"]
    failed = [r for r in checks if not r["passed"]]
    lines.append(f"numeric checks: {len(checks) - len(failed)}/{len(checks)} passed")
    for pair in ("kernel~reference", "torch~reference", "kernel~torch"):
        for dtype in DTYPES:
            sel = [r for r in checks if r["pair"] == pair and r["dtype"] == dtype]
            if sel:
                exact_max = all(r["exact_match"] for r in sel if r["mode"] == 0)
                worst = max(r["max_err_ratio"] for r in sel if r["mode"] == 1)
                lines.append(f"  {pair:<17} {dtype}: max mode exact={exact_max}; average worst err/allowed="
                             f"{worst:.3f}")
    clipped = sum(r["clipped_windows"] for r in checks if r["pair"] == "kernel~reference" and r["mode"] == 0)
    lines.append(f"  windows clipped at a border (all configs): {clipped}")
    lines += [f"  FAILED {r}" for r in failed[:10]]
    lines += [f"misc: {r['check']}: {'ok' if r['passed'] else 'FAILED'}" for r in result["misc"]]
    for t in result["timing"]:
        lines.append(f"timing b64 {t['dtype']} mode {t['mode']}: kernel {t['kernel']['median_us']:.1f} us, torch op "
                     f"{t['torch_op']['median_us']:.1f} us per call (median), speedup {t['speedup']:.1f}x")
    lines.append(f"{'PASSED' if result['passed'] else 'FAILED'} in {result['seconds']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON result file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=30, help="timed repetitions (each of --inner calls)")
    ap.add_argument("--inner", type=int, default=20)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    import torch

    import fgdeploy.ops  # noqa: F401  registers torch.ops.fgdeploy.coordinate_transfer
    from fgdeploy.native.kernels import load_kernel_library
    from fgdeploy.native.build import PluginBuildError

    result: dict[str, Any] = {"passed": False, "checks": [], "misc": [], "timing": []}
    if not torch.cuda.is_available():
        result["error"] = f"no CUDA GPU visible to torch {torch.__version__}"
        atomic_write_json(args.out, result)
        print(result["error"], file=sys.stderr)
        return 2
    try:
        lib = load_kernel_library()  # nvcc build for this GPU's architecture (cached by source hash)
    except PluginBuildError as exc:
        result["error"] = str(exc)
        atomic_write_json(args.out, result)
        print(exc, file=sys.stderr)
        return 2
    result["environment"] = _environment(str(lib.path))
    result["build_seconds"] = time.perf_counter() - start
    result["checks"] = run_checks(lib, args.seed)
    result["misc"] = run_misc_checks(lib)
    result["timing"] = run_timing(lib, args.reps, args.inner)
    result["timing_method"] = (f"CUDA events around {args.inner} back-to-back calls (host launch overhead included, "
                               f"ctypes for the kernel, eager dispatch for the torch op), {args.reps} repetitions, "
                               f"median/p10/p90 per call in microseconds")
    result["passed"] = all(r["passed"] for r in result["checks"] + result["misc"])
    result["seconds"] = time.perf_counter() - start
    atomic_write_json(args.out, result)
    print(_summary(result))
    print(f"wrote {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
