"""nvcc compiles the CUDA kernel sources for sm_80 and sm_90 with warnings as errors (runs in CI: nvcc is there)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from fgdeploy.native.build import KERNEL_SOURCES, PLUGIN_DIR, gencode_flags


def _compile(nvcc: Path, source: Path, out: Path, archs: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [str(nvcc), "-std=c++17", "-O3", "-c", "-Werror", "all-warnings", "-Xcompiler=-Wall,-Wextra,-Werror",
           *gencode_flags(archs), "-o", str(out), str(source)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_kernel_sources_compile_for_sm80_and_sm90(nvcc: Path, tmp_path: Path) -> None:
    for rel in KERNEL_SOURCES:
        proc = _compile(nvcc, PLUGIN_DIR / rel, tmp_path / (Path(rel).stem + ".o"), ["80", "90"])
        assert proc.returncode == 0, f"nvcc failed on {rel}:\n{proc.stderr}"
        assert (tmp_path / (Path(rel).stem + ".o")).stat().st_size > 0


def test_kernel_compile_check_catches_a_broken_source(nvcc: Path, tmp_path: Path) -> None:
    # Negative control: the same command must fail on a kernel with a type error.
    kernel_dir = PLUGIN_DIR / "coordinate_transfer"
    shutil.copy(kernel_dir / "coordTransferKernel.h", tmp_path)
    broken = tmp_path / "broken.cu"
    text = (PLUGIN_DIR / KERNEL_SOURCES[0]).read_text()
    assert "float const term" in text
    broken.write_text(text.replace("float const term", "flaot const term", 1))
    proc = _compile(nvcc, broken, tmp_path / "broken.o", ["80"])
    assert proc.returncode != 0 and "flaot" in proc.stderr
