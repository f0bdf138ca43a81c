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
              help="CUB-format dataset (adds accuracy and PCK). Default: random images; for an INT8 --test, "
                   "the dataset it was calibrated on, if it still exists.")
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="test", show_default=True)
@click.option("--n", "count", type=click.IntRange(min=1), default=None,
              help="Images to compare (spread over the split). Default: 500 with --data, 32 random.")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Batch size.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write JSON here.")
@click.option("--atol", type=click.FloatRange(min=0), default=None, help="Absolute tolerance (default by precision).")
@click.option("--rtol", type=click.FloatRange(min=0), default=None, help="Relative tolerance (default by precision).")
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
    size, classes = _same_model(_signature(ref), _signature(test))
    if data is None:
        data = _calibration_dataset(test)
    source = (DatasetImages(data, split, size, count or 500) if data is not None
              else RandomImages(count or 32, size, seed))
    if data is not None and classes and list(source.class_names) != classes:
        raise click.ClickException(f"{data}: its {len(source.class_names)} classes differ from the {len(classes)} "
                                   "the models were trained on; check parity on the same dataset")
    quiet = bool((ctx.obj or {}).get("quiet"))
    result = run_parity(ref, test, source, ParityConfig(batch_size=batch, atol=atol, rtol=rtol),
                        progress=_progress(2 * len(source), quiet))
    click.echo(result.render())
    if report is not None:
        result.dump(report)
        click.echo(f"wrote {report}")
    ctx.exit(0 if result else 1)


def _signature(make: Any) -> tuple[int, list[str]]:
    """(input size, class names) a runner's artifact records (names may be empty)."""
    from fgdeploy.backends.base import image_input_spec

    with make(False) as runner:
        spec = image_input_spec(runner)
        meta = runner.metadata()
        return int(meta.get("input_size") or spec.shape[-1]), list(meta.get("class_names") or [])


def _calibration_dataset(make: Any) -> Path | None:
    """An INT8 model's calibration dataset when it is a CUB-format dataset that still exists (random noise says
    little about a model whose activation ranges were calibrated on photos); None otherwise."""
    from fgdeploy.export.calibration import is_cub_dataset

    with make(False) as runner:
        meta = runner.metadata()
    source = (meta.get("quantization") or {}).get("source") if meta.get("precision") == "int8" else None
    if not source or not Path(source).is_dir() or not is_cub_dataset(source):
        return None
    click.echo(f"int8 model calibrated on {source}: comparing on its test split (--data chooses other images)",
               err=True)
    return Path(source)


def _same_model(ref: tuple[int, list[str]], test: tuple[int, list[str]]) -> tuple[int, list[str]]:
    """The common (input size, class names); a clear error when --ref and --test are different models."""
    if ref[0] != test[0]:
        raise click.ClickException(f"--ref takes {ref[0]} px images but --test {test[0]} px: they are not the same "
                                   "model; compare a checkpoint with its own export")
    if ref[1] and test[1] and ref[1] != test[1]:
        raise click.ClickException(f"--ref has {len(ref[1])} classes and --test {len(test[1])}"
                                   f"{'' if len(ref[1]) != len(test[1]) else ' (other names)'}: they are not the "
                                   "same model; compare a checkpoint with its own export")
    return test[0], test[1] or ref[1]


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
