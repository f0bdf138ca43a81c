"""``fgdeploy export``: checkpoint -> ONNX (one fgdeploy::CoordinateTransfer node, local function, metadata)."""

from __future__ import annotations

from pathlib import Path

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
@click.option("--engine", is_flag=True,
              help="Also build a TensorRT engine (OUT with .engine, plus a .json sidecar) with the fgdeploy plugin; "
                   "needs TensorRT and a GPU.")
def command(checkpoint: Path, out: Path, fp16: bool, batch: int | None, max_batch: int, opset: int,
            heatmaps: bool, engine: bool) -> None:
    """Export CHECKPOINT (written by fgdeploy train; a run folder means its best.pt) to ONNX for ONNX Runtime
    and TensorRT."""
    from fgdeploy.export.onnx_export import ExportOptions, export_checkpoint

    checkpoint = Path(resolve_model(checkpoint))
    check_model_kind(checkpoint, "torch", lambda found: "export takes the checkpoint written by fgdeploy train "
                                                        "(runs/NAME/best.pt or the run folder)")
    if engine and (reason := unwritable_reason(out.with_suffix(".engine"))):
        raise click.UsageError(f"--engine: {reason}; choose another -o")

    options = ExportOptions(fp16=fp16, batch=batch, max_batch=max_batch, opset=opset, heatmaps=heatmaps)
    result = export_checkpoint(checkpoint, out, options)
    click.echo(f"wrote {result.path} ({result.size_bytes / 1e6:.2f} MB, sha256 {result.sha256[:16]})")
    click.echo(f"  precision {result.precision}, batch {result.batch}, opset {result.opset}, "
               f"outputs {', '.join(result.outputs)}, {result.coordinate_transfer_nodes} CoordinateTransfer node(s)")
    click.echo("  checked: onnx.checker (full), strict shape inference; ONNX Runtime vs PyTorch: "
               + ", ".join(f"{k} {v:.2e}" for k, v in result.verified.items()))
    if result.fp16_summary:
        fp16_convs = result.fp16_summary["fp16_nodes"].get("Conv", 0)
        fp32_convs = result.fp16_summary["fp32_nodes"].get("Conv", 0)
        click.echo(f"  fp16: {fp16_convs} convs fp16, {fp32_convs} kept fp32, {result.fp16_summary['casts']} casts")
    if engine:
        _build_engine(Path(result.path), batch or max_batch)


def _build_engine(onnx_path: Path, max_batch: int) -> None:
    """Build the TensorRT engine next to the ONNX; BackendUnavailable (exit 1) says how to install TensorRT."""
    from fgdeploy.export.trt_build import EngineBuildConfig, build_engine

    engine_path = onnx_path.with_suffix(".engine")
    report = build_engine(onnx_path, engine_path, EngineBuildConfig(max_batch=max_batch, opt_batch=min(8, max_batch)))
    click.echo(f"wrote {report.engine_path} (+ sidecar {report.sidecar_path}): {report.precision}, "
               f"CoordinateTransfer via {report.op_path} ({len(report.plugin_layers)} plugin layer(s)), "
               f"built in {report.build_seconds:.1f} s")
