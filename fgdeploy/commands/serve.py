"""``fgdeploy serve``: answer HTTP requests with the model on Ray Serve, with `infer`'s per-image code."""

from __future__ import annotations

import click

from fgdeploy.commands.options import (BACKEND_CHOICES, check_model_kind, check_ray_address, device_option,
                                      echo_info, fast_path_options, resolve_model, torch_only_flags)
from fgdeploy.serving.api import DEFAULT_MAX_BYTES

@click.command("serve", short_help="Answer HTTP requests with the model (Ray Serve): POST an image, get JSON.")
@click.argument("model", type=click.Path(exists=True))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface, to take requests from other machines).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="HTTP port.")
@click.option("--replicas", type=click.IntRange(1), default=None,
              help="Model replicas [default: one per GPU of the cluster on CUDA, else 1].")
@click.option("--max-batch", type=click.IntRange(1), default=16, show_default=True,
              help="Requests answered by one model call at most (server-side batching).")
@click.option("--batch-wait-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="How long a model call waits for more requests once one is there.")
@click.option("--max-bytes", type=click.IntRange(1), default=DEFAULT_MAX_BYTES, show_default=True,
              help="Largest request body accepted (413 above).")
@click.option("--max-pixels", type=click.IntRange(0), default=None,
              help="Refuse images with more pixels (422; read from the header, before decoding), so a decompression "
                   "bomb cannot exhaust a replica's memory; 0: no limit  [default: 268435456, 16384 x 16384, as infer]")
@click.option("--topk", type=click.IntRange(1), default=5, show_default=True,
              help="Classes per answer unless a request asks ?topk=K.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
              help="Runtime; auto picks it from the model file's suffix.")
@device_option("auto", what="Device of each replica (auto: cuda when the Ray cluster has GPUs): ")
@click.option("--fp16", is_flag=True, help="Half precision (torch); for ort/trt pass an fp16 export.")
@fast_path_options
@click.option("--threads", type=click.IntRange(1), default=None,
              help="On CPU: model threads per replica, each reserving a CPU [default: the CPUs shared out among "
                   "the replicas].")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              callback=check_ray_address,
              help="Deploy onto a running Ray cluster: auto, ray://HOST:PORT or HOST:PORT (no ADDRESS: RAY_ADDRESS "
                   "if set). Without --ray a local instance is started for the server and stopped with it.")
@click.option("--cpus", type=click.IntRange(1), default=None,
              help="Without --ray: CPUs of the local Ray instance [default: all cores].")
@click.pass_context
def command(ctx: click.Context, model: str, host: str, port: int, replicas: int | None, max_batch: int,
            batch_wait_ms: float, max_bytes: int, max_pixels: int | None, topk: int, backend: str, device: str,
            fp16: bool, channels_last: bool, compile_mode: str, cuda_graphs: bool, fuse_conv_relu: bool, threads: int | None,
            ray_address: str | None, cpus: int | None) -> None:
    """Serve MODEL over HTTP until Ctrl-C or SIGTERM (then requests in flight are finished, and the exit code is 0).

    \b
      POST /v1/predict[?topk=K]  body: one image file's bytes -> JSON: the top-k classes, the parts'
                                 keypoints in the image's pixels (and head/body boxes), the model's id
      GET  /v1/health            200 once the model is loaded and warmed up, 503 before
      GET  /v1/model             class and part names, input size, precision, source checkpoint

    Each answer is computed by `fgdeploy infer`'s code (decoder, resize, post-processing), so it equals the
    record `infer --out x.jsonl` writes for the same file; check a running server with
    `fgdeploy parity --ref onnx:MODEL --test http://HOST:PORT`. Bad input gets a 4xx JSON error and the
    server goes on.

    \b
    Exit codes:
      0    stopped by Ctrl-C / SIGTERM after draining
      1    error: model cannot be loaded, port in use, Ray cluster unreachable
      2    bad option
    """
    from fgdeploy.inference.fastpath import FastPathOptions
    from fgdeploy.inference.local import DEFAULT_MAX_PIXELS
    from fgdeploy.inference.predictors import resolve_backend
    from fgdeploy.inference.ray_cluster import ClusterOptions
    from fgdeploy.serving.api import ServeConfig
    from fgdeploy.serving.server import Serving, ServerOptions, serve_forever

    model = resolve_model(model)
    kind = resolve_backend(model, backend)
    check_model_kind(model, kind, lambda found: f"pass --backend {found}")
    if kind != "torch" and (flags := torch_only_flags(channels_last, compile_mode, cuda_graphs, fuse_conv_relu)):
        raise click.UsageError(f"{', '.join(flags)}: for the torch backend (a checkpoint), not {kind}")
    if cpus and ray_address is not None:
        raise click.UsageError("--cpus: for the local instance started without --ray; a cluster has the CPUs its "
                               "nodes were started with")
    fast = FastPathOptions(channels_last=channels_last, compile_mode=compile_mode, cuda_graphs=cuda_graphs,
                           conv_relu=fuse_conv_relu)
    config = ServeConfig(model=model, backend=kind, device=device, fp16=fp16, threads=threads, fast=fast,
                         max_batch=max_batch, batch_wait_ms=batch_wait_ms, max_bytes=max_bytes, topk=topk,
                         max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else (max_pixels or None))
    verbose = bool((ctx.find_root().obj or {}).get("verbose"))
    ray_options = ClusterOptions(address="local" if ray_address is None else ray_address, cpus=cpus, verbose=verbose)
    options = ServerOptions(host=host, port=port, replicas=replicas or 0, ray=ray_options)

    def announce(serving: Serving) -> None:
        m = serving.model
        threads_note = f", {serving.threads} thread(s) each" if serving.device == "cpu" else ""
        echo_info(ctx, f"serving {model} ({m.get('name')}, {m.get('precision')}) on {serving.url}: "
                       f"{serving.replicas} replica(s) on {serving.device}{threads_note}, batches of up to "
                       f"{max_batch} (wait {batch_wait_ms:g} ms)")
        click.echo(f"ready: POST {serving.url}/v1/predict (an image's bytes); Ctrl-C to stop", err=True)

    serve_forever(config, options, on_ready=announce)
    echo_info(ctx, "stopped")
    ctx.exit(0)
