"""CPU threads: how many cores this process may use, and setting torch's and OpenCV's thread counts to it.

torch sizes its thread pool from the machine's cores, ignoring CPU affinity (taskset, a Slurm allocation) and
container CPU quotas, and DataLoader worker processes each start a pool of that size. Oversubscribed OpenMP
threads wait on each other at every parallel region, so training on a busy machine slowed down ~12x
(issue 17). ``set_threads`` gives torch (and OpenCV) the cores this process may use, shared between the
processes torchrun starts on this machine, and DataLoader workers one thread each (``worker_init``).

Fewer threads alone did not remove the slowdown: OpenMP threads that finish a parallel region first spin,
waiting for the others, and on a busy machine the one they wait for is not running. ``prefer_passive_wait``
makes them sleep instead (OMP_WAIT_POLICY=PASSIVE), unless the user chose a policy: measured on the shared
2-core machine with another 2-thread process running, training went from 1.6 to 44 img/s
(bench/bench_threads.py, bench/results/cpu-2026-12-04/).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def prefer_passive_wait() -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE for this process (and its children) unless it is set already; OpenMP reads it
    when torch loads it, so this works only before ``import torch``. Returns whether it was set."""
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def _cgroup_quota() -> float | None:
    """CPUs allowed by the cgroup quota (v2 cpu.max, v1 cfs_quota/period), None when unlimited or unknown."""
    try:
        v2 = Path("/sys/fs/cgroup/cpu.max")
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        if v1.is_file():
            quota_us = int(v1.read_text())
            period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def default_threads() -> int:
    """Threads per process: the usable cores, divided among the processes torchrun starts on this machine."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, usable_cores() // max(1, local_processes))


def set_threads(threads: int | None = None, workers: int = 0) -> int:
    """Give torch ``threads`` CPU threads (None: ``default_threads()``) and OpenCV as many; returns the count.

    With DataLoader workers (``workers`` > 0) OpenCV gets one thread in this process, set before the workers
    are forked: they inherit it (resizing OpenCV's pool inside a forked worker can hang, see
    ``fgdeploy.data.torch_dataset.worker_init``), and the decoding runs in the workers anyway.
    """
    import cv2
    import torch

    count = threads or default_threads()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    cv2.setNumThreads(1 if workers > 0 else count)
    log.debug("CPU threads: torch %d, OpenCV %d (usable cores %d)", count, 1 if workers > 0 else count,
              usable_cores())
    return count


# --- vector extensions (what INT8 speed and accuracy depend on) ---------------------------------------
# what decides the int8 / bf16 kernels ONNX Runtime and OpenVINO can use
INT8_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
              "amx_bf16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_features(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU model, architecture and which of ``INT8_FLAGS`` it has, from /proc/cpuinfo (Linux; elsewhere the
    flags are unknown: an empty list). ``cpuinfo``: the file's text (for tests)."""
    import platform

    model, flags = platform.processor() or platform.machine(), set[str]()
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return {"model": model, "machine": platform.machine(), "flags": [f for f in INT8_FLAGS if f in flags]}
