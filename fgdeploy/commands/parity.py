"""``fgdeploy parity``: compare two runners (e.g. PyTorch vs ONNX Runtime) on the same images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from fgdeploy.commands.options import device_option


def _parse_spec(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, str]:
    """'kind:path' -> (kind, path); kinds are the backend names (torch, onnx/ort, trt)."""
    kind, sep, path = value.partition(":")
    if not sep or not kind or not path:
        raise click.BadParameter(f"{value!r}: use KIND:PATH, e.g. torch:runs/demo/best.pt or onnx:model.onnx")
    return kind.strip().lower(), path


@click.command("parity")
@click.option("--ref", "ref_spec", required=True, callback=_parse_spec,
              help="Reference KIND:PATH, e.g. torch:best.pt.")
@click.option("--test", "test_spec", required=True, callback=_parse_spec,
              help="Runner under test KIND:PATH, e.g. onnx:model.onnx or trt:model.engine.")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="CUB-format dataset (adds accuracy and PCK). Default: random images.")
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="test", show_default=True)
@click.option("--n", "count", type=click.IntRange(min=1), default=None,
              help="Images to compare (spread over the split). Default: 500 with --data, 32 random.")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Batch size.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write JSON here.")
@click.option("--atol", type=float, default=None, help="Absolute tolerance (default by precision).")
@click.option("--rtol", type=float, default=None, help="Relative tolerance (default by precision).")
@device_option("cpu", allow_auto=False, what="Device of torch/trt runners: ")
@click.option("--providers", default=None, help="ONNX Runtime providers, comma separated (cpu, cuda, tensorrt).")
@click.option("--ref-fp16", is_flag=True, help="Run a torch reference in fp16.")
@click.option("--test-fp16", is_flag=True, help="Run a torch runner under test in fp16 (ONNX carries its own).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random images.")
@click.pass_context
def command(ctx: click.Context, ref_spec: tuple[str, str], test_spec: tuple[str, str], data: Path | None,
            split: str, count: int | None, batch: int, report: Path | None, atol: float | None,
            rtol: float | None, device: str, providers: str | None, ref_fp16: bool, test_fp16: bool,
            seed: int) -> None:
    """Run --ref and --test on the same images and report parity; exit 0 only if every check passes."""
    from fgdeploy.parity import DatasetImages, ParityConfig, RandomImages, run_parity

    ref = _factory(ref_spec, device, providers, ref_fp16)
    test = _factory(test_spec, device, providers, test_fp16)
    with test(False) as runner:  # the input size of the artifact under test
        size = int(runner.metadata().get("input_size") or runner.input_specs()["images"].shape[-1])
    source = (DatasetImages(data, split, size, count or 500) if data is not None
              else RandomImages(count or 32, size, seed))
    quiet = bool((ctx.obj or {}).get("quiet"))
    result = run_parity(ref, test, source, ParityConfig(batch_size=batch, atol=atol, rtol=rtol),
                        progress=_progress(2 * len(source), quiet))
    click.echo(result.render())
    if report is not None:
        result.dump(report)
        click.echo(f"wrote {report}")
    ctx.exit(0 if result else 1)


def _factory(spec: tuple[str, str], device: str, providers: str | None, fp16: bool) -> Any:
    """debug -> a new runner for ``spec`` (kind, path)."""
    from fgdeploy.backends import open_runner

    kind, path = spec
    options: dict[str, Any] = {"device": device}
    if kind in ("onnx", "ort", "onnxruntime"):
        options["providers"] = [p.strip() for p in providers.split(",")] if providers else None
    elif fp16:
        options["fp16"] = True

    def make(debug: bool) -> Any:
        extra: dict[str, Any] = {"debug": True} if debug else {}
        return open_runner(kind, path, **options, **extra)

    return make


def _progress(total: int, quiet: bool) -> Any:
    import sys

    from tqdm import tqdm

    bar = tqdm(total=total, desc="parity", unit="img", disable=quiet or not sys.stderr.isatty(), file=sys.stderr)
    return bar.update
