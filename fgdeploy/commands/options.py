"""Click options and checks shared by several commands."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

BACKEND_CHOICES = ("auto", "torch", "ort", "trt", "openvino")
# = fgdeploy.inference.fastpath.COMPILE_MODES, repeated so that `--help` needs no torch import
# (a test checks they agree)
COMPILE_CHOICES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
# OpenVINO's own devices (--backend openvino): an Intel GPU or NPU, optionally numbered (GPU.1)
OPENVINO_DEVICE = re.compile(r"(gpu|npu)(\.\d+)?", re.IGNORECASE)


def device_option(default: str | None, allow_auto: bool = True, what: str = "",
                  openvino: bool = False) -> Callable[[Any], Any]:
    """``--device``: cpu, cuda or cuda:N (and auto, if allowed; with ``openvino`` also OpenVINO's gpu, npu,
    GPU.N); anything else is a usage error (exit 2)."""
    names = "auto, cpu, cuda or cuda:N" if allow_auto else "cpu, cuda or cuda:N"
    if openvino:
        names += " (--backend openvino: also gpu, npu, GPU.N)"

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None or _DEVICE.fullmatch(value) or (allow_auto and value == "auto"):
            return value
        if openvino and OPENVINO_DEVICE.fullmatch(value):
            return value
        raise click.BadParameter(f"{value!r} is not a device; use {names}", ctx, param)

    return click.option("--device", default=default, show_default=default is not None, callback=check,
                        help=f"{what}{names}.")


def check_device_for_backend(device: str, *backends: str) -> None:
    """A usage error (exit 2) for an OpenVINO device name (gpu, npu, GPU.1) when none of ``backends`` (those the
    command runs) is openvino."""
    from fgdeploy.backends.openvino_runner import is_openvino_device

    if "openvino" not in backends and is_openvino_device(device):
        raise click.UsageError(f"--device {device} is an OpenVINO device: use it with --backend openvino (an NVIDIA "
                               "GPU is --device cuda)")


def threads_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--threads``: CPU threads of torch and OpenCV in this process (see ``fgdeploy.cpu.set_threads``).

    Parsing it also asks OpenMP for sleeping, not spinning, idle threads (``fgdeploy.cpu.prefer_passive_wait``):
    the option is parsed before the command imports torch.
    """
    def passive_wait(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
        from fgdeploy.cpu import prefer_passive_wait

        prefer_passive_wait()
        return value

    return click.option("--threads", type=click.IntRange(min=1), default=None, callback=passive_wait,
                        help="CPU threads for torch and OpenCV in this process. Default: the cores this process may "
                             "use (CPU affinity and container quota; divided among torchrun's processes).")(func)


def torch_only_flags(channels_last: bool, compile_mode: str, cuda_graphs: bool, fuse_conv_relu: bool) -> list[str]:
    """The torch fast-path flags that were given (they mean nothing to ONNX Runtime or TensorRT)."""
    given = {"--channels-last": channels_last, "--compile": compile_mode != "none", "--cuda-graphs": cuda_graphs,
             "--fuse-conv-relu": fuse_conv_relu}
    return [name for name, on in given.items() if on]


def fast_path_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The torch fast-path flags of ``infer`` and ``bench``: --channels-last, --compile, --cuda-graphs,
    --fuse-conv-relu (see ``fgdeploy.inference.fastpath``)."""
    options = [
        click.option("--channels-last", is_flag=True, help="torch: NHWC memory format."),
        click.option("--compile", "compile_mode", type=click.Choice(COMPILE_CHOICES), default="none",
                     show_default=True, help="torch: torch.compile mode."),
        click.option("--cuda-graphs", is_flag=True, help="torch on CUDA: capture and replay CUDA graphs."),
        click.option("--fuse-conv-relu", is_flag=True,
                     help="torch on CUDA: cuDNN conv with fused bias+ReLU (fastest measured path with --fp16 "
                          "--channels-last --compile default --cuda-graphs)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def check_ray_address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--ray [ADDRESS]``: nothing (a local instance), local, auto, ray://HOST:PORT or HOST:PORT."""
    if value is None or value in ("", "local", "auto") or value.startswith("ray://") or re.fullmatch(r"[\w.-]+:\d+", value):
        return value
    raise click.BadParameter(f"{value!r} is not a Ray address: give auto, ray://HOST:PORT or HOST:PORT, or nothing "
                             "for a local instance (then put --ray after the command's arguments, or last)", ctx, param)


MODEL_KINDS = {"torch": "a PyTorch checkpoint", "ort": "an ONNX model", "trt": "a TensorRT engine"}
ARTIFACT_KIND = {"openvino": "ort"}   # backends that run another backend's files: OpenVINO runs ONNX exports


def resolve_model(path: str | Path) -> str:
    """A model path as given, or for a run folder of ``fgdeploy train`` its best.pt (see resolve_checkpoint)."""
    from fgdeploy.checkpoint import resolve_checkpoint

    return str(resolve_checkpoint(path))


def check_model_kind(path: str | Path, backend: str, fix: Callable[[str], str]) -> None:
    """A usage error (exit 2) when ``path``'s bytes say it is for another backend than ``backend``.

    ``fix(kind)`` says what to give instead on this command (``--backend ort`` for infer, ``onnx:PATH`` for
    parity), so the hint names the fix that applies where the user is.
    """
    from fgdeploy.backends import BACKEND_ALIASES
    from fgdeploy.checkpoint import sniff_model_kind

    backend = BACKEND_ALIASES.get(backend, backend)
    backend = ARTIFACT_KIND.get(backend, backend)
    found = sniff_model_kind(path)
    if found is not None and backend in MODEL_KINDS and found != backend:
        raise click.UsageError(f"{path} is {MODEL_KINDS[found]}, not {MODEL_KINDS[backend]}; {fix(found)}")


def unwritable_reason(path: Path, folder: bool = False) -> str | None:
    """Why ``path`` (a file, or a folder when ``folder``) cannot be written, or None when it can be.

    Checked before a command starts its work: the path is not the other kind, no parent is a file, and a
    probe file can be created in the nearest existing folder (this also catches /proc, read-only mounts).
    """
    import tempfile

    path = Path(path)
    if path.is_dir() and not folder:
        return f"{path} is a folder; name a file"
    if path.exists() and not path.is_dir() and folder:
        return f"{path} is a file; name a folder"
    parent = path if folder and path.is_dir() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, so {path} cannot be created under it"
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        return f"cannot write in {parent} ({exc.strerror or exc})"
    return None


def output_path(folder: bool = False, suffixes: tuple[str, ...] = ()) -> Callable[..., Any]:
    """A click callback checking an output path before the command runs: the suffix and ``unwritable_reason``.

    A bad output path is a bad option value: one line and exit code 2, before any work is done.
    """
    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return value
        if suffixes and Path(value).suffix.lower() not in suffixes:
            raise click.BadParameter(f"{value}: name the file {' or '.join(suffixes)}", ctx, param)
        reason = unwritable_reason(Path(value), folder)
        if reason:
            raise click.BadParameter(f"{reason}; choose another path", ctx, param)
        return value

    return check


def echo_info(ctx: click.Context, line: str) -> None:
    """An informational line on stderr, left out under -q (results and errors are always shown)."""
    if not (ctx.find_root().obj or {}).get("quiet"):
        click.echo(line, err=True)
