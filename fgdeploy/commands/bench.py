"""``fgdeploy bench``: model-only latency/throughput per backend and batch, optionally end-to-end over a folder."""

from __future__ import annotations

from pathlib import Path

import click

from fgdeploy.commands.options import (BACKEND_CHOICES, check_device_for_backend, check_model_kind, device_option,
                                      echo_info, fast_path_options, output_path, resolve_model, torch_only_flags)


def _batches(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"{value!r}: give positive batch sizes separated by commas, e.g. 1,8,32,64",
                                 ctx, param)
    return sizes


def _backends(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in BACKEND_CHOICES]
    if not names or bad:
        raise click.BadParameter(f"{value!r}: give one or more of {', '.join(BACKEND_CHOICES)}, comma-separated",
                                 ctx, param)
    return list(dict.fromkeys(names))


@click.command("bench", short_help="Latency (p50/p90/p99) and throughput per backend and batch.")
@click.option("--model", "models", multiple=True, required=True, type=click.Path(exists=True),
              help="Checkpoint (or run folder), .onnx or .engine; repeat to compare backends (e.g. --model m.pt "
                   "--model m.onnx).")
@click.option("--backend", "backends", default="auto", show_default=True, callback=_backends,
              help=f"Runtime(s) for every --model, comma-separated ({', '.join(BACKEND_CHOICES)}): each model runs "
                   "on each, in one run (e.g. --backend ort,openvino); auto picks it from each file's suffix.")
@device_option("auto", openvino=True)
@click.option("--fp16", is_flag=True, help="Half precision (torch); for ort/trt pass an fp16 export.")
@click.option("--batch", "batches", default="1,8,32,64", show_default=True, callback=_batches,
              help="Batch sizes, comma-separated.")
@click.option("--iters", type=click.IntRange(1), default=20, show_default=True, help="Timed calls per batch size.")
@click.option("--warmup", type=click.IntRange(0), default=3, show_default=True, help="Untimed calls first.")
@click.option("--images", type=str, default=None,
              help="Also time end-to-end inference (decode + model + results) over this folder/glob/list.")
@click.option("--workers", type=click.IntRange(0), default=0, show_default=True,
              help="End-to-end: threads decoding images (in this process); 0 = as `fgdeploy infer` (every core "
                   "for a GPU model, else min(8, CPU count)).")
@click.option("--out", "-o", "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              callback=output_path(suffixes=(".json",)),
              help="Write the results and the environment as JSON here (.json).")
@fast_path_options
@click.option("--threads", type=click.IntRange(1), default=None,
              help="ort / openvino on CPU: inference threads (default: the runtime's own choice).")
@click.option("--fast-decode", is_flag=True, help="End-to-end: as `fgdeploy infer --fast-decode`.")
@click.pass_context
def command(ctx: click.Context, models: tuple[str, ...], backends: list[str], device: str, fp16: bool,
            batches: list[int], iters: int, warmup: int, images: str | None, workers: int, json_out: Path | None,
            channels_last: bool, compile_mode: str, cuda_graphs: bool, fuse_conv_relu: bool, threads: int | None,
            fast_decode: bool) -> None:
    """Time each --model at each batch size after warm-up: p50/p90/p99 latency per batch and images/s.

    Model-only numbers time the runner call on a batch in host memory (host<->device copies
    included, decoding not); on a GPU, CUDA events time each call. With --images, the whole
    `fgdeploy infer` pipeline is timed too, at the largest batch size. Prints a table; --json saves it.
    The torch flags (--channels-last, --compile, ...) apply to the checkpoints among the models.
    Several --backend values time each model on each (ONNX Runtime vs OpenVINO on the same .onnx file).
    """
    from fgdeploy.bench import bench_end_to_end, bench_model, render_table, write_json
    from fgdeploy.inference.fastpath import FastPathOptions
    from fgdeploy.inference.local import discover_images
    from fgdeploy.inference.predictors import open_predictor

    models = tuple(resolve_model(m) for m in models)   # a run folder: its best.pt
    runs = _runs(models, backends)
    check_device_for_backend(device, *(kind for _, kind in runs))
    flags = torch_only_flags(channels_last, compile_mode, cuda_graphs, fuse_conv_relu)
    if flags and all(kind != "torch" for _, kind in runs):
        raise click.UsageError(f"{', '.join(flags)}: for torch models (checkpoints); no --model here runs on torch")
    if images:
        discover_images(images)   # a missing or empty --images fails now, not after the model timings

    fast = FastPathOptions(channels_last=channels_last, compile_mode=compile_mode, cuda_graphs=cuda_graphs,
                           conv_relu=fuse_conv_relu)
    results = []
    for model, kind in runs:
        with open_predictor(model, kind, device=device, fp16=fp16, batch=None, fast=fast,
                            threads=threads) as loaded:
            # several models: name each row's file too (two .onnx files would both read "ort-cpu-fp32")
            name = f"{loaded.name} {Path(model).name}" if len(models) > 1 else loaded.name
            for batch in batches:
                results.append(bench_model(loaded.predictor, name, batch, iters, warmup))
                echo_info(ctx, render_table(results[-1:]).splitlines()[-1])
            if images:
                results.append(bench_end_to_end(loaded.predictor, name, images, max(batches), workers,
                                                fast_decode=fast_decode))
    click.echo(render_table(results))
    if json_out:
        extra = {"models": list(models), "backends": [kind for _, kind in runs], "threads": threads}
        echo_info(ctx, f"wrote {write_json(json_out, results, extra)}")


def _runs(models: tuple[str, ...], backends: list[str]) -> list[tuple[str, str]]:
    """(model, backend) pairs to time, in order. One backend: it must run every model (else a usage error saying
    which to pass). Several: each model on each backend that runs its kind of file (ONNX on ort and openvino, a
    checkpoint on torch); a model none of them runs is a usage error."""
    from fgdeploy.inference.predictors import resolve_backend

    runs: list[tuple[str, str]] = []
    for model in models:
        kinds = list(dict.fromkeys(resolve_backend(model, backend) for backend in backends))
        if len(backends) == 1:
            check_model_kind(model, kinds[0], lambda found: f"pass --backend {found}")
            runs.append((model, kinds[0]))
            continue
        usable = [kind for kind in kinds if _runs_file(model, kind)]
        if not usable:
            check_model_kind(model, kinds[0], lambda found: f"add {found} to --backend")
        runs += [(model, kind) for kind in usable]
    return runs


def _runs_file(model: str, kind: str) -> bool:
    try:
        check_model_kind(model, kind, lambda found: "")
    except click.UsageError:
        return False
    return True
