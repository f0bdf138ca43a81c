"""``fgdeploy infer``: score a folder (or file, glob, list) of images; results and errors to files."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from fgdeploy.commands.options import (BACKEND_CHOICES, check_device_for_backend, check_model_kind, check_ray_address,
                                      device_option, echo_info, fast_path_options, output_path, resolve_model,
                                      torch_only_flags)
from fgdeploy.text import plural


def _results_suffix(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    if value.suffix.lower() not in (".csv", ".jsonl"):
        raise click.BadParameter(f"{value}: name the results file .csv or .jsonl", ctx, param)
    return output_path()(ctx, param, value)


@click.command("infer", short_help="Classify images and locate their parts (CSV/JSONL out).")
@click.argument("images", type=str)
@click.option("--model", "model", required=True, type=click.Path(exists=True),
              help="Checkpoint (.pt, torch backend; a run folder means its best.pt), ONNX (.onnx, ort) or "
                   "TensorRT engine (.engine, trt).")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
              help="Runtime; auto picks it from the model file's suffix.")
@device_option("auto", openvino=True)
@click.option("--fp16", is_flag=True, help="Half precision (torch); for ort/trt pass an fp16 export.")
@click.option("--batch", type=click.IntRange(1), default=64, show_default=True, help="Images per model call.")
@click.option("--workers", type=click.IntRange(0), default=0, show_default=True,
              help="Threads decoding and resizing images (in this process); 0 = every CPU core when the model runs "
                   "on a GPU, else min(8, CPU count).")
@click.option("--topk", type=click.IntRange(1), default=5, show_default=True, help="Classes written per image.")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=Path("results.csv"),
              show_default=True, callback=_results_suffix,
              help="Results file: .csv (one row per image) or .jsonl (one object per line).")
@click.option("--save-vis", type=click.Path(file_okay=False, path_type=Path), default=None,
              callback=output_path(folder=True),
              help="Folder for copies of the images with keypoints, part names and top-1 class drawn.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run (OUT.partial.jsonl) or extend a "
              "finished OUT; images already scored are skipped.")
@fast_path_options
@click.option("--threads", type=click.IntRange(1), default=None,
              help="ort on CPU: intra-op threads (--ray: per actor, default 1).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              callback=check_ray_address,
              help="Score on Ray (pip install ray): no ADDRESS starts a local instance (RAY_ADDRESS, if "
                   "set, is joined instead; 'local' always starts one); auto, ray://HOST:PORT or HOST:PORT join a "
                   "running cluster. The model runs in --actors actors: on CUDA one GPU each, fed by decode "
                   "tasks; on CPU each actor decodes its own images.")
@click.option("--actors", type=click.IntRange(1), default=None,
              help="--ray: model actors [default: one per GPU of the cluster on CUDA, else one per CPU "
                   "(per --threads CPUs)].")
@click.option("--cpus", type=click.IntRange(1), default=None,
              help="--ray with no address: CPUs of the local instance [default: all cores].")
@click.option("--max-retries", type=click.IntRange(0), default=None,
              help="--ray: times a block of images is sent again after its worker died (a lost node, an "
                   "out-of-memory kill, a decoder crash); then each of its images is sent alone as often, and one "
                   "that still kills its worker goes to the errors file  [default: 3]")
@click.option("--max-pixels", type=click.IntRange(0), default=None,
              help="Refuse images with more pixels (read from the file's header, before decoding; reason in the "
                   "errors file), so a decompression bomb cannot exhaust memory; 0: no limit  [default: 268435456, "
                   "16384 x 16384]")
@click.option("--fast-decode", is_flag=True,
              help="JPEGs at least twice the model input: decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), "
                   "several times faster for large photos. Pixels then differ slightly from the full decode that "
                   "eval and parity use, so a near-tie may resolve differently. Not applied with --save-vis.")
@click.pass_context
def command(ctx: click.Context, images: str, model: str, backend: str, device: str, fp16: bool, batch: int,
            workers: int, topk: int, out: Path, save_vis: Path | None, resume: bool, channels_last: bool,
            compile_mode: str, cuda_graphs: bool, fuse_conv_relu: bool, threads: int | None,
            ray_address: str | None, actors: int | None, cpus: int | None, max_retries: int | None,
            max_pixels: int | None, fast_decode: bool) -> None:
    """Classify IMAGES and locate the 15 parts in each, writing one result per image to OUT.

    IMAGES is a folder (searched recursively for .jpg .jpeg .png .bmp .webp .tif .tiff, any case;
    other files are skipped), one image, a quoted glob ('shots/**/*.jpg') or a text file listing
    paths (one per line; relative ones are taken from the list file's folder). Each result has the
    top-k classes with probabilities and the 15 keypoints (x, y, score) in the original image's
    pixels (continuous: pixel k spans [k, k+1); stored pixel order, EXIF orientation not applied).
    Grayscale, palette, alpha, 16-bit and CMYK files are converted to RGB.
    Files that cannot be used (empty, truncated, not an image, unreadable, more pixels than
    --max-pixels) are listed with the reason in OUT's errors file (<stem>.errors.csv) and the run
    goes on. With --ray, relative paths are taken from the current directory (workers get absolute
    paths; OUT records them as given), and an image whose worker dies every time (a decoder crash,
    an out-of-memory kill) goes to the errors file after --max-retries.

    Results are journaled to OUT.partial.jsonl after every batch; if the run is killed, rerun with
    --resume to finish it (every image ends up in OUT exactly once). A finished run also writes
    <stem>.run.json (model, options, counts); --resume extends a finished OUT only when the model
    file, --topk and --fast-decode are the same (and the directory, if image paths are relative).

    \b
    Exit codes:
      0    finished (some images may have failed: see the errors file)
      1    error: model cannot be loaded, no images found, unfinished run without --resume
      2    bad option
      3    every image this run tried failed
      130  interrupted (Ctrl-C); what finished is kept: rerun with --resume
    """
    from dataclasses import replace

    from fgdeploy.inference.batch_records import clamp_topk
    from fgdeploy.inference.fastpath import FastPathOptions
    from fgdeploy.inference.local import InferOptions, discover_images, model_identity, run_inference
    from fgdeploy.inference.predictors import open_predictor, resolve_backend

    from fgdeploy.export.metadata import stale_export_note

    model = resolve_model(model)
    kind = resolve_backend(model, backend)
    check_device_for_backend(device, kind)
    check_model_kind(model, kind, lambda found: f"pass --backend {found}")
    if kind != "torch" and (flags := torch_only_flags(channels_last, compile_mode, cuda_graphs, fuse_conv_relu)):
        raise click.UsageError(f"{', '.join(flags)}: for the torch backend (a checkpoint), not {kind}")
    ray_only = [name for name, value in (("--actors", actors), ("--cpus", cpus), ("--max-retries", max_retries))
                if value is not None]
    if ray_address is None and ray_only:
        raise click.UsageError(f"{ray_only[0]}: only with --ray")
    if cpus and ray_address not in (None, "", "local"):
        raise click.UsageError("--cpus: for the local instance that --ray starts with no address; a cluster has the "
                               "CPUs its nodes were started with")
    if ray_address is not None and (workers or save_vis):
        raise click.UsageError(f"{'--workers' if workers else '--save-vis'}: not with --ray "
                               f"({'decoding runs in Ray tasks, one per CPU' if workers else 'run it without --ray'})")
    paths = discover_images(images)
    fast = FastPathOptions(channels_last=channels_last, compile_mode=compile_mode, cuda_graphs=cuda_graphs,
                           conv_relu=fuse_conv_relu)
    options = InferOptions(batch=batch, workers=workers, topk=topk, resume=resume, save_vis=save_vis,
                           fast_decode=fast_decode)
    if max_pixels is not None:
        options = replace(options, max_pixels=max_pixels or None)
    if ray_address is not None:
        from fgdeploy.inference.ray_scoring import DEFAULT_MAX_RETRIES, ModelSpec, RayOptions

        spec = ModelSpec(model, kind, device, fp16, batch, fast, threads)
        verbose = bool((ctx.find_root().obj or {}).get("verbose"))
        _score_on_ray(ctx, paths, spec, out, options, RayOptions(
            address=ray_address, cpus=cpus, verbose=verbose, actors=actors or 0,
            max_retries=DEFAULT_MAX_RETRIES if max_retries is None else max_retries))
        return
    with open_predictor(model, kind, device=device, fp16=fp16, batch=batch, fast=fast, threads=threads) as loaded:
        echo_info(ctx, f"{plural(len(paths), 'image')}, model {model} on {loaded.name}, batch {batch}")
        if note := stale_export_note(model, loaded.recorded or {}):
            click.echo(f"warning: {note}", err=True)
        if (clamped := clamp_topk(topk, len(loaded.class_names))) != topk:
            echo_info(ctx, f"--topk {topk}: the model has {len(loaded.class_names)} classes; writing all of them")
            options = replace(options, topk=clamped)
        with _progress_bar(ctx, len(paths)) as bar, _resumable_on_interrupt(ctx, out):
            report = run_inference(paths, loaded.predictor, out, class_names=loaded.class_names,
                                   part_names=loaded.part_names, options=options,
                                   visibility_threshold=loaded.visibility_threshold,
                                   model_id=model_identity(model), on_start=bar.reset,
                                   on_progress=bar.update)
    click.echo("\n".join(report.summary_lines()))
    ctx.exit(report.exit_code)


def _score_on_ray(ctx: click.Context, paths: list[str], spec: Any, out: Path, options: Any, ray_options: Any) -> None:
    """``infer --ray``: the same outputs, summary and exit codes as a local run."""
    from fgdeploy.inference.batch_records import clamp_topk
    from fgdeploy.inference.local import model_identity
    from fgdeploy.inference.ray_scoring import ModelInfo, run_ray_inference

    def announce(info: ModelInfo, actors: int) -> None:
        echo_info(ctx, f"{plural(len(paths), 'image')}, model {spec.model} on {info.name} x "
                       f"{plural(actors, 'Ray actor')}, batch {spec.batch}")
        if info.stale_note:
            click.echo(f"warning: {info.stale_note}", err=True)
        if clamp_topk(options.topk, info.classes) != options.topk:
            echo_info(ctx, f"--topk {options.topk}: the model has {info.classes} classes; writing all of them")

    with _progress_bar(ctx, len(paths)) as bar, _resumable_on_interrupt(ctx, out):
        report = run_ray_inference(paths, spec, out, options=options, ray_options=ray_options,
                                   model_id=model_identity(spec.model), on_model=announce, on_start=bar.reset,
                                   on_progress=bar.update)
    click.echo("\n".join(report.summary_lines()))
    ctx.exit(report.exit_code)


@contextlib.contextmanager
def _resumable_on_interrupt(ctx: click.Context, out: Path) -> Iterator[None]:
    """Ctrl-C: say how much is saved and how to go on, and exit 130 (as a shell does for SIGINT)."""
    from fgdeploy.inference.results import journal_path_for

    try:
        yield
    except KeyboardInterrupt:
        journal = journal_path_for(out)
        saved = max(0, journal.read_text(encoding="utf-8").count("\n") - 1) if journal.exists() else 0
        click.echo(f"\ninterrupted: {plural(saved, 'image')} are saved in {journal} (scored or failed); rerun the same "
                   "command with --resume to finish", err=True)
        ctx.exit(130)


def _progress_bar(ctx: click.Context, total: int) -> Any:
    """A tqdm bar (img/s, ETA) on stderr; off under --quiet or when stderr is not a terminal."""
    import sys

    from tqdm import tqdm  # type: ignore[import-untyped]

    quiet = bool((ctx.find_root().obj or {}).get("quiet"))
    return tqdm(total=total, unit="img", desc="infer", file=sys.stderr, dynamic_ncols=True, smoothing=0.1,
                disable=quiet or not sys.stderr.isatty())
