"""``fgdeploy parity``: compare two runners (e.g. PyTorch vs ONNX Runtime) on the same images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from fgdeploy.commands.options import (check_device_for_backend, check_model_kind, device_option, output_path,
                                      resolve_model)

SPEC_KINDS = {"torch": "torch", "ort": "onnx", "trt": "trt"}   # backend -> how a KIND:PATH spec names it


def _parse_spec(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, str]:
    """'kind:path' -> (kind, path); kinds are the backend names (torch, onnx/ort, trt); a run folder -> best.pt.
    For --test also a running server: 'http://HOST:PORT' -> ("http", url)."""
    from fgdeploy.backends import BACKEND_ALIASES, BACKENDS

    if value.lower().startswith(("http://", "https://")):
        if param.name != "test_spec":
            raise click.BadParameter(f"{value}: a server can only be --test; --ref is the model file it should match")
        if value.lower().startswith("https://"):
            raise click.BadParameter(f"{value}: fgdeploy serve speaks plain HTTP; give http://HOST:PORT")
        return "http", value.rstrip("/")
    kind, sep, path = value.partition(":")
    kind = kind.strip().lower()
    if not sep or not kind or not path:
        raise click.BadParameter(f"{value}: use KIND:PATH, e.g. torch:runs/demo/best.pt or onnx:model.onnx")
    if BACKEND_ALIASES.get(kind, kind) not in BACKENDS:
        raise click.BadParameter(f"{value}: unknown kind {kind}; use torch, onnx, openvino or trt")
    if not Path(path).exists():
        raise click.BadParameter(f"{path} does not exist")
    if BACKEND_ALIASES.get(kind, kind) == "torch":
        path = resolve_model(path)   # a run folder: its best.pt
    check_model_kind(path, kind, lambda found: f"give it as {SPEC_KINDS[found]}:{path}")
    return kind, path


@click.command("parity")
@click.option("--ref", "ref_spec", required=True, callback=_parse_spec,
              help="Reference KIND:PATH, e.g. torch:best.pt.")
@click.option("--test", "test_spec", required=True, callback=_parse_spec,
              help="Runner under test KIND:PATH, e.g. onnx:model.onnx, openvino:model.onnx or trt:model.engine; or a "
                   "running `fgdeploy serve` as http://HOST:PORT (its answers on image files vs local `infer`'s "
                   "with --ref).")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="CUB-format dataset (adds accuracy and PCK). Default: random images; for an INT8 --test, "
                   "the test images of the dataset it was calibrated on that its guard did not use, if it still "
                   "exists. A warning says when the images include the ones the guard chose on.")
@click.option("--images", "images", type=str, default=None,
              help="With --test http://...: image files to send instead of --data's (a folder, file, glob or "
                   "list, as for infer).")
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True,
              help="With --test http://...: requests in flight at once (the server batches them).")
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="test", show_default=True,
              help="With --data: the dataset split the images are taken from.")
@click.option("--n", "count", type=click.IntRange(min=1), default=None,
              help="Images to compare (spread over the split). Default: 500 with --data, 32 random.")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Batch size.")
@click.option("--out", "-o", "--report", "report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              callback=output_path(suffixes=(".json",)), help="Write the report as JSON here (.json).")
@click.option("--atol", type=click.FloatRange(min=0), default=None, help="Absolute tolerance (default by precision).")
@click.option("--rtol", type=click.FloatRange(min=0), default=None, help="Relative tolerance (default by precision).")
@device_option("auto", what="Device of the runners (ONNX Runtime: CUDA provider for cuda; OpenVINO: cpu, gpu, npu): ",
               openvino=True)
@click.option("--providers", default=None, help="ONNX Runtime providers, comma separated (cpu, cuda, tensorrt).")
@click.option("--ref-fp16", is_flag=True, help="Run a torch reference in fp16.")
@click.option("--test-fp16", is_flag=True, help="Run a torch runner under test in fp16 (ONNX carries its own).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random images.")
@click.pass_context
def command(ctx: click.Context, ref_spec: tuple[str, str], test_spec: tuple[str, str], data: Path | None,
            images: str | None, concurrency: int, split: str, count: int | None, batch: int, report: Path | None,
            atol: float | None, rtol: float | None, device: str, providers: str | None, ref_fp16: bool,
            test_fp16: bool, seed: int) -> None:
    """Run --ref and --test on the same images and report parity; exit 0 only if every check passes.

    With --test http://HOST:PORT (a running `fgdeploy serve`), each file of --data (its --split) or --images
    is sent to the server as it is, and scored here by local `infer`'s path with --ref; the answers are
    compared with the same report, tolerances and exit code.
    """
    from fgdeploy.backends import BACKEND_ALIASES
    from fgdeploy.parity import DatasetImages, ParityConfig, run_parity

    check_device_for_backend(device, *(BACKEND_ALIASES.get(k, k) for k, _ in (ref_spec, test_spec)))
    if test_spec[0] == "http":
        _endpoint_parity(ctx, ref_spec, test_spec[1], data, images, split, count, batch, report, atol, rtol, device,
                         providers, ref_fp16, concurrency)
        return
    if images is not None:
        raise click.UsageError("--images: only with --test http://HOST:PORT (files sent to a server); for runners "
                               "give --data")
    ref = _factory(ref_spec, device, providers, ref_fp16)
    test = _factory(test_spec, device, providers, test_fp16)
    ref_signature, test_signature = _signature(ref), _signature(test)
    size, classes = _same_model(ref_signature, test_signature)
    notes = _provenance_notes(ref_spec, ref_signature[2], test_spec, test_signature[2])
    for note in notes:
        click.echo(f"warning: {note}", err=True)
    source = _images(data, split, size, count, seed, test_signature[2])
    if isinstance(source, DatasetImages) and classes and list(source.class_names) != classes:
        raise click.ClickException(f"{source.root}: its {len(source.class_names)} classes differ from the "
                                   f"{len(classes)} the models were trained on; check parity on the same dataset")
    quiet = bool((ctx.obj or {}).get("quiet"))
    result = run_parity(ref, test, source, ParityConfig(batch_size=batch, atol=atol, rtol=rtol),
                        progress=_progress(2 * len(source), quiet))
    click.echo(result.render())
    for note in notes if not result else []:   # repeated where the failing result is read
        click.echo(f"warning: {note}", err=True)
    if result.guard_overlap:
        from fgdeploy.parity.report import guard_overlap_warning

        click.echo(f"warning: {guard_overlap_warning(result.guard_overlap, result.n_images).removeprefix('WARNING: ')}",
                   err=True)
    if report is not None:
        result.dump(report)
        click.echo(f"wrote {report}")
    ctx.exit(0 if result else 1)


def _endpoint_parity(ctx: click.Context, ref_spec: tuple[str, str], url: str, data: Path | None, images: str | None,
                     split: str, count: int | None, batch: int, report: Path | None, atol: float | None,
                     rtol: float | None, device: str, providers: str | None, ref_fp16: bool, concurrency: int) -> None:
    """``parity --test http://...``: the server's answers on files vs local `infer`'s with --ref."""
    from fgdeploy.backends import BACKEND_ALIASES
    from fgdeploy.parity import ParityConfig
    from fgdeploy.parity.endpoint import dataset_files, folder_files, run_endpoint_parity

    if (data is None) == (images is None):
        raise click.UsageError("--test http://...: give the files to send, --data DATASET (with ground truth) or "
                               "--images FOLDER, one of them")
    files = dataset_files(data, split, count or 500) if data is not None else folder_files(images, count)
    kind = BACKEND_ALIASES.get(ref_spec[0], ref_spec[0])
    quiet = bool((ctx.obj or {}).get("quiet"))
    result = run_endpoint_parity((kind, ref_spec[1]), url, files, device=device, ref_fp16=ref_fp16,
                                 ref_runner=_factory(ref_spec, device, providers, ref_fp16),
                                 config=ParityConfig(batch_size=batch, atol=atol, rtol=rtol),
                                 concurrency=concurrency, progress=_progress(2 * len(files.paths), quiet))
    for note in result.notes:
        click.echo(f"warning: {note}", err=True)
    click.echo(result.report.render())
    flipped = sorted({f.index for f in result.report.task.class_flips} |
                     {f.index for f in result.report.task.keypoint_flips})
    for index in flipped[:20]:
        click.echo(f"  image {index}: {result.paths[index]}")
    for path, local, served in result.refused[:20]:
        click.echo(f"  refused by one side: {path}: local infer: {local or 'scored'}; endpoint: {served or 'answered'}")
    if report is not None:
        result.report.dump(report)
        click.echo(f"wrote {report}")
    ctx.exit(0 if result.report else 1)


def _signature(make: Any) -> tuple[int, list[str], dict[str, Any]]:
    """(input size, class names, all metadata) a runner's artifact records (names may be empty)."""
    from fgdeploy.backends.base import image_input_spec

    with make(False) as runner:
        spec = image_input_spec(runner)
        meta = runner.metadata()
        return int(meta.get("input_size") or spec.shape[-1]), list(meta.get("class_names") or []), dict(meta)


def _images(data: Path | None, split: str, size: int, count: int | None, seed: int, test_meta: dict[str, Any]) -> Any:
    """The images to compare on: ``--data``'s split; else, for an INT8 model, the test images of its calibration
    dataset that its guard did not use; else seeded random images."""
    from fgdeploy.parity import DatasetImages, RandomImages

    if data is not None:
        return DatasetImages(data, split, size, count or 500)
    root = _calibration_dataset(test_meta)
    if root is None:
        return RandomImages(count or 32, size, seed)
    from fgdeploy.export.precision.images import GuardImages, held_out_images

    source, left_out = held_out_images(root, size, test_meta, count or 500)
    which = ("the test images its guard did not use" if left_out else "its test split (the guard chose on other "
             "images)" if GuardImages.from_metadata(test_meta) is not None else "its test split")
    click.echo(f"int8 model calibrated on {root}: comparing on {which} (--data chooses other images)", err=True)
    if len(source) == 0:
        raise click.ClickException(f"{root}: its test split holds no image the precision guard did not use; "
                                   "give --data a dataset of held-out images")
    return source


def _calibration_dataset(meta: dict[str, Any]) -> Path | None:
    """An INT8 model's calibration dataset when that CUB-format dataset still exists: its test images the guard
    did not use are the model's default parity images (random noise says little about a model whose activation
    ranges were calibrated on photos); None otherwise."""
    from fgdeploy.export.precision.images import is_cub_dataset

    source = (meta.get("quantization") or {}).get("source") if meta.get("precision") == "int8" else None
    if not source or not Path(source).is_dir() or not is_cub_dataset(source):
        return None
    return Path(source)


def _provenance_notes(ref_spec: tuple[str, str], ref_meta: dict[str, Any], test_spec: tuple[str, str],
                      test_meta: dict[str, Any]) -> list[str]:
    """Exports that were not made from the checkpoint they are compared with (or whose run was retrained)."""
    from fgdeploy.backends import BACKEND_ALIASES
    from fgdeploy.export.metadata import stale_export_note

    sides = [(spec, meta) for spec, meta in ((ref_spec, ref_meta), (test_spec, test_meta))]
    checkpoints = [(path, meta) for (kind, path), meta in sides if BACKEND_ALIASES.get(kind, kind) == "torch"]
    notes = []
    for (kind, path), meta in sides:
        if BACKEND_ALIASES.get(kind, kind) == "torch":
            continue
        if len(checkpoints) == 1:
            note = stale_export_note(path, meta, checkpoints[0][0], str(checkpoints[0][1].get("source_sha256", "")))
        else:
            note = stale_export_note(path, meta)
        if note:
            notes.append(note)
    return notes


def _same_model(ref: tuple[Any, ...], test: tuple[Any, ...]) -> tuple[int, list[str]]:
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
    from fgdeploy.backends import BACKEND_ALIASES, open_runner
    from fgdeploy.backends.openvino_runner import is_openvino_device
    from fgdeploy.inference.predictors import resolve_device

    kind, path = spec
    backend = BACKEND_ALIASES.get(kind, kind)
    cuda_or_cpu = device if backend == "openvino" or not is_openvino_device(device) else "cpu"
    options: dict[str, Any] = {"device": resolve_device(backend, cuda_or_cpu)}   # --device gpu: the OpenVINO side
    if backend == "ort":
        options["providers"] = [p.strip() for p in providers.split(",")] if providers else None
    elif fp16 and backend != "openvino":
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
