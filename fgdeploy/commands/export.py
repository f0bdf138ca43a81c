"""``fgdeploy export``: checkpoint -> ONNX (one fgdeploy::CoordinateTransfer node, local function, metadata)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from fgdeploy.commands.options import check_model_kind, output_path, resolve_model, unwritable_reason


def _onnx_out(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    if value.suffix.lower() == ".engine":
        raise click.BadParameter(f"{value}: -o names the ONNX file; give {value.with_suffix('.onnx')} --engine to "
                                 f"also build {value}", ctx, param)
    return output_path(suffixes=(".onnx",))(ctx, param, value)


def _parse_batch(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    if value.strip().lower() == "dynamic":
        return None
    try:
        batch = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a positive int or 'dynamic'") from None
    if batch < 1:
        raise click.BadParameter(f"{value!r}: give a positive int or 'dynamic'")
    return batch


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True, callback=_onnx_out,
              help="Where to write the .onnx file (with --engine, the engine goes beside it as .engine).")
@click.option("--fp16", is_flag=True, help="Mixed fp16 (backbones fp16; heatmaps, decode, pooling, logits fp32).")
@click.option("--batch", default="dynamic", show_default=True, callback=_parse_batch,
              help="Fixed batch size N, or 'dynamic' (1..--max-batch).")
@click.option("--max-batch", type=click.IntRange(min=2), default=64, show_default=True,
              help="Upper bound of the dynamic batch dimension.")
@click.option("--opset", type=click.IntRange(18, 21), default=18, show_default=True,
              help="Default-domain ONNX opset (18..21).")
@click.option("--heatmaps", is_flag=True, help="Also output the (N, P, Hh, Wh) heatmap logits.")
@click.option("--int8", is_flag=True,
              help="Static INT8 (QDQ, per-channel weights) with ONNX Runtime's quantizer; needs --calib. Trunk convs "
                   "int8; heatmap head, decode, CoordinateTransfer, pooling and logits float.")
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="--int8: calibration images, decoded like `fgdeploy infer`: a CUB-format dataset (its train "
                   "split) or a folder of images.")
@click.option("--calib-images", type=click.IntRange(min=8), default=64, show_default=True,
              help="--int8: calibration images used (spread over --calib).")
@click.option("--int8-target", type=click.Choice(["cpu", "tensorrt"]), default=None,
              help="--int8: cpu = uint8 activations (fastest ONNX Runtime CPU path on AVX2); tensorrt = signed "
                   "symmetric int8 (what TensorRT's explicit quantization takes). Default: cpu, tensorrt with --engine.")
@click.option("--int8-scheme", type=click.Choice(["auto", "u8s8", "u8s8-reduce-range", "u8u8", "s8s8"]),
              default="auto", show_default=True,
              help="--int8: activation/weight types. auto: by this CPU's flags (VNNI or AMX: u8s8; AVX2 without "
                   "them: u8s8-reduce-range, 7-bit weights, because u8s8 on AVX2 can saturate); s8s8 with "
                   "--int8-target tensorrt. The choice, why, and the CPU flags go into the metadata.")
@click.option("--guard", type=click.Path(path_type=Path), default=None,
              help="Held-out images (CUB-format dataset: its test split, with accuracy; or a folder) to check the "
                   "reduced model's task metrics against fp32 and keep float the nodes that miss them. Default "
                   "with --int8: the --calib dataset's test split. With --fp16: task-driven fp16 (everything fp16, "
                   "fp32 only where the metrics need it) instead of the fixed policy.")
@click.option("--no-guard", is_flag=True, help="--int8: skip the guard (no task-metric check).")
@click.option("--guard-images", type=click.IntRange(min=1), default=500, show_default=True,
              help="Guard images used (spread over the split or folder).")
@click.option("--min-top1-agree", type=click.FloatRange(0, 1), default=0.99, show_default=True,
              help="Guard: fraction of images with the fp32 model's top-1 class.")
@click.option("--min-kp-agree", type=click.FloatRange(0, 1), default=0.98, show_default=True,
              help="Guard: fraction of keypoints in the fp32 model's heatmap cell (parity's near-ties allowed).")
@click.option("--max-acc-drop", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Guard: largest accuracy drop from fp32, in points (needs a labelled CUB-format --guard).")
@click.option("--engine", is_flag=True,
              help="Also build a TensorRT engine (OUT with .engine, plus a .json sidecar) with the fgdeploy plugin; "
                   "needs TensorRT and a GPU.")
@click.option("--portable", is_flag=True,
              help="Standard ONNX ops only: the CoordinateTransfer node replaced by its function body (onnx's "
                   "inliner), for OpenVINO and converters that do not read model-local functions. Not with --engine "
                   "(TensorRT maps the node to the plugin).")
@click.option("--triton", "triton_repo", type=click.Path(file_okay=False, path_type=Path), default=None,
              callback=output_path(folder=True),
              help="Also write a Triton model repository here: NAME (onnxruntime) and, with --engine, NAME_trt "
                   "(tensorrt_plan) plus the plugin library; max_batch_size = --max-batch. Needs tritonclient "
                   "(pip install 'fgdeploy[triton]').")
@click.option("--triton-name", default=None, help="--triton: the model's name [default: the ONNX file's stem].")
def command(checkpoint: Path, out: Path, fp16: bool, batch: int | None, max_batch: int,
            opset: int, heatmaps: bool, int8: bool, calib: Path | None, calib_images: int, int8_target: str | None,
            int8_scheme: str, guard: Path | None, no_guard: bool,
            guard_images: int, min_top1_agree: float, min_kp_agree: float, max_acc_drop: float,
            engine: bool, portable: bool, triton_repo: Path | None, triton_name: str | None) -> None:
    """Export CHECKPOINT (written by fgdeploy train; a run folder means its best.pt) to ONNX for ONNX Runtime,
    TensorRT, OpenVINO (--portable) and Triton (--triton REPO)."""
    from fgdeploy.export.exporter import ExportOptions, export_checkpoint
    from fgdeploy.export.precision import CalibrationOptions, PrecisionOptions
    from fgdeploy.export.precision.int8 import Int8Settings

    checkpoint = Path(resolve_model(checkpoint))
    check_model_kind(checkpoint, "torch", lambda found: "export takes the checkpoint written by fgdeploy train "
                                                        "(runs/NAME/best.pt or the run folder)")
    if engine and (reason := unwritable_reason(out.with_suffix(".engine"))):
        raise click.UsageError(f"--engine: {reason}; choose another -o")
    if int8 and fp16:
        raise click.UsageError("--int8 and --fp16 exclude each other: export one precision per file")
    if int8_target is not None and not int8:
        raise click.UsageError("--int8-target is for --int8 exports")
    if int8_scheme != "auto" and not int8:
        raise click.UsageError("--int8-scheme is for --int8 exports")
    if portable and engine:
        raise click.UsageError("--portable inlines the CoordinateTransfer node that TensorRT maps to fgdeploy's plugin: "
                               "export without --portable for --engine")
    if triton_name is not None and triton_repo is None:
        raise click.UsageError("--triton-name names the model in a --triton REPO: add --triton REPO")
    if triton_repo is not None:
        _check_triton(triton_name or out.stem)
    guard_options = _guard_options(int8, fp16, calib, calib_images, guard, no_guard, guard_images,
                                   (min_top1_agree, min_kp_agree, max_acc_drop))
    calibration = None
    if calib is not None:
        if engine and int8_target == "cpu":
            raise click.UsageError("--engine needs --int8-target tensorrt (TensorRT takes only symmetric signed INT8)")
        target = int8_target or ("tensorrt" if engine else "cpu")
        if target == "tensorrt" and int8_scheme not in ("auto", "s8s8"):
            raise click.UsageError(f"--int8-scheme {int8_scheme}: TensorRT takes only signed symmetric int8 (s8s8)")
        calibration = CalibrationOptions(calib, calib_images, Int8Settings.for_target(target, int8_scheme))
    precision = PrecisionOptions("int8" if int8 else "fp16" if fp16 else "fp32", calibration, guard_options)
    options = ExportOptions(precision=precision, batch=batch, max_batch=max_batch, opset=opset, heatmaps=heatmaps,
                            portable=portable)
    result = export_checkpoint(checkpoint, out, options)
    click.echo(f"wrote {result.path} ({result.size_bytes / 1e6:.2f} MB, sha256 {result.sha256[:16]})")
    click.echo(f"  precision {result.precision}, batch {result.batch}, opset {result.opset}, "
               f"outputs {', '.join(result.outputs)}, {result.coordinate_transfer_nodes} CoordinateTransfer node(s)"
               + (" inlined (portable: standard ONNX ops only)" if result.portable else ""))
    click.echo("  checked: onnx.checker (full), strict shape inference; ONNX Runtime vs PyTorch: "
               + ", ".join(f"{k} {v:.2e}" for k, v in result.verified.items()))
    if result.precision_summary.get("fp16_nodes") is not None:
        summary = result.precision_summary
        fp16_convs, fp32_convs = summary["fp16_nodes"].get("Conv", 0), summary["fp32_nodes"].get("Conv", 0)
        click.echo(f"  fp16: {fp16_convs} convs fp16, {fp32_convs} kept fp32, {summary['casts']} casts")
    if result.precision_summary.get("nodes"):
        summary, nodes = result.precision_summary, result.precision_summary["nodes"]
        part_nets = nodes.get("part-net Conv int8", 0), nodes.get("part-net Conv float", 0)
        click.echo(f"  int8: {nodes.get('Conv int8', 0)} convs int8, {nodes.get('Conv float', 0)} float"
                   + (f" (part nets: {part_nets[0]} int8, {part_nets[1]} float)" if any(part_nets) else "")
                   + f"; calibrated on {summary['calibration']}")
        click.echo(f"  int8 scheme {summary['scheme']} ({summary['scheme_reason']})")
    if result.precision_summary.get("fp32_compute_nodes") is not None:
        fp32_nodes = result.precision_summary["fp32_compute_nodes"]
        click.echo(f"  fp16 (task-driven): fp32 compute nodes {fp32_nodes or 'none'}")
    if result.guard_report is not None:
        kept = ", ".join(result.guard_kept) or "none"
        click.echo(f"  guard: {'PASS' if result.guard_passed else 'FAIL'}; kept float by the guard: {kept}; "
                   f"report {result.guard_report} (table: {result.guard_report.with_suffix('.txt')})")
    elif int8 and not no_guard:
        click.echo("  guard: not run (no held-out images: --calib is not a CUB-format dataset; pass --guard DIR)")
    engine_path = _build_engine(Path(result.path), batch or max_batch) if engine else None
    if triton_repo is not None:
        _write_triton(triton_repo, Path(result.path), triton_name, engine_path)


def _check_triton(name: str) -> None:
    """Before the slow export: tritonclient is there (else exit 1 saying what to install) and the name is usable."""
    from fgdeploy.deploy.triton import TritonConfigError, check_name, import_model_config

    import_model_config()
    try:
        check_name(name)
    except TritonConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _write_triton(repo: Path, onnx_path: Path, name: str | None, engine_path: Path | None) -> None:
    """The repository of the export just written: max_batch_size is what it was exported with (--max-batch), which
    the engine's profile (built with the same --max-batch) takes too; a fixed-batch export gets 0."""
    from fgdeploy.deploy.triton import write_triton_repository

    written = write_triton_repository(repo, onnx_path, name=name, engine=engine_path)
    models = ", ".join(f"{m.name} ({m.backend}, max_batch_size {m.max_batch_size})" for m in written.models)
    click.echo(f"wrote Triton model repository {repo}: {models}; server command and client in {written.readme}")
    click.echo("  checked: each config.pbtxt parsed strictly as Triton's ModelConfig (tritonclient model_config_pb2) "
               "and against the ONNX graph" + (" and the engine profile" if engine_path else "")
               + "; no Triton server was run")


def _guard_options(int8: bool, fp16: bool, calib: Path | None, calib_images: int, guard: Path | None,
                   no_guard: bool, guard_images: int, thresholds: tuple[float, float, float]) -> Any:
    """The guard's options, or None (no --int8 guard / fixed-policy fp16); usage errors exit 2."""
    from fgdeploy.export.precision import GuardOptions
    from fgdeploy.export.precision.guard import GuardThresholds

    if calib is not None and not int8:
        raise click.UsageError("--calib is for --int8 exports")
    if no_guard and guard is not None:
        raise click.UsageError("--guard and --no-guard exclude each other")
    if int8 and calib is None:
        raise click.UsageError("--int8 needs calibration images: add --calib DIR (a CUB-format dataset or a folder)")
    for name, path in (("--calib", calib), ("--guard", guard)):
        if path is not None and not path.is_dir():
            raise click.BadParameter(f"{path}: not a folder; give a CUB-format dataset or a folder of images",
                                     param_hint=name)
    if (int8 and not no_guard) or (fp16 and guard is not None):
        top1, kp, acc = thresholds
        return GuardOptions(guard, guard_images, GuardThresholds(top1, kp, acc))
    if guard is not None:
        raise click.UsageError("--guard checks a reduced precision: use it with --int8 or --fp16")
    return None


def _build_engine(onnx_path: Path, max_batch: int) -> Path:
    """Build the TensorRT engine next to the ONNX; BackendUnavailable (exit 1) says how to install TensorRT."""
    from fgdeploy.export.tensorrt import EngineBuildConfig, build_engine

    engine_path = onnx_path.with_suffix(".engine")
    report = build_engine(onnx_path, engine_path, EngineBuildConfig(max_batch=max_batch, opt_batch=min(8, max_batch)))
    click.echo(f"wrote {report.engine_path} (+ sidecar {report.sidecar_path}): {report.precision}, "
               f"CoordinateTransfer via {report.op_path} ({len(report.plugin_layers)} plugin layer(s)), "
               f"built in {report.build_seconds:.1f} s")
    return Path(report.engine_path)
