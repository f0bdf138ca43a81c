"""Click options and checks shared by several commands."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import click

BACKEND_CHOICES = ("auto", "torch", "ort", "trt")
# = fgdeploy.inference.fastpath.COMPILE_MODES, repeated so that `--help` needs no torch import
# (a test checks they agree)
COMPILE_CHOICES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def device_option(default: str | None, allow_auto: bool = True, what: str = "") -> Callable[[Any], Any]:
    """``--device``: cpu, cuda or cuda:N (and auto, if allowed); anything else is a usage error (exit 2)."""
    names = "auto, cpu, cuda or cuda:N" if allow_auto else "cpu, cuda or cuda:N"

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None or _DEVICE.fullmatch(value) or (allow_auto and value == "auto"):
            return value
        raise click.BadParameter(f"{value!r} is not a device; use {names}", ctx, param)

    return click.option("--device", default=default, show_default=default is not None, callback=check,
                        help=f"{what}{names}.")


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
