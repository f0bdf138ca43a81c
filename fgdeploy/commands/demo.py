"""``fgdeploy demo``: the whole pipeline on generated data, ending in one summary table."""

from __future__ import annotations

from pathlib import Path

import click

from fgdeploy.commands.options import device_option, echo_info, output_path, threads_option


@click.command("demo", short_help="synth data -> train -> eval -> export -> infer -> parity -> bench, one table.")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"),
              show_default=True, callback=output_path(folder=True),
              help="Run folder; a rerun with the same settings skips finished steps, other settings are refused.")
@click.option("--quick", is_flag=True, help="Tiny data and 1 epoch per stage: a smoke run of about a minute.")
@click.option("--config", default="demo_partnets", show_default=True,
              help="Model config name (models/) or YAML path; default: parts plus head/body part nets.")
@device_option("auto", what="Training/eval device: ")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Epochs of every training stage (>= 1).")
@click.option("--batch", type=click.IntRange(1), default=16, show_default=True, help="Infer/parity/bench batch.")
@threads_option
@click.pass_context
def command(ctx: click.Context, out: Path, quick: bool, config: str, device: str, epochs: int | None,
            batch: int, threads: int | None) -> None:
    """Run the full pipeline on a fresh machine (no data, no GPU needed) and print one summary table.

    Each step is recorded in OUT/demo_state.json and skipped when the demo is rerun with the same settings
    (--quick, --config and its contents, --epochs, --batch; --device may change). A rerun with other settings
    is refused: use another --out or delete OUT.

    \b
    Steps:
      data    generate synth-birds (CUB-200-2011 layout)       OUT/synth-birds
      train   stages 0-4 of the demo_partnets config             OUT/train/best.pt
      eval    top-1, PCK and head/body PCP on the test split     OUT/eval/eval.json
      export  ONNX fp32, fp16 and int8 (guard on half the test   OUT/model.onnx, OUT/model_fp16.onnx,
              split)                                             OUT/model_int8.onnx (+ .guard.json/.txt)
      infer   `fgdeploy infer` over the test images (ONNX Runtime) OUT/infer/results.csv
      parity  torch vs ONNX fp32, fp16 and int8 (int8: on the    OUT/parity/*.json
              test images its guard did not use)
      bench   model-only and end-to-end throughput per backend   OUT/bench.json

    Exit code 0 when every parity check passed, 1 otherwise.
    """
    import logging

    from fgdeploy.demo import DemoOptions, run_demo, summary_table

    # the exporter's pass-by-pass INFO lines, and the dataset loader's summary repeated by every step
    for chatty in ("onnx_ir", "onnxscript", "fgdeploy.data.cub"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    options = DemoOptions(out=out, quick=quick, config=config, device=device, epochs=epochs, batch=batch,
                          threads=threads)
    result = run_demo(options, echo=lambda line: echo_info(ctx, line))
    click.echo(summary_table(result))
    ctx.exit(0 if result.passed else 1)
