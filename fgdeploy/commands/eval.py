"""``fgdeploy eval``: accuracy and PCK of a checkpoint, as a table, JSON and a PNG grid."""

from __future__ import annotations

from pathlib import Path

import click

from fgdeploy.commands.options import device_option, output_path, threads_option, unwritable_reason


@click.command("eval")
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="CUB-format dataset folder. Default: the data recorded in the checkpoint's run folder.")
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="test", show_default=True,
              help="Images to score: the dataset's test or train split (train_test_split.txt), or all of them.")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              callback=output_path(folder=True),
              help="Folder for eval.json and eval_grid.png. Default: <checkpoint folder>/eval-<split>.")
@device_option("auto")
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per forward pass (lower it if memory runs out).")
@threads_option
@click.pass_context
def command(ctx: click.Context, checkpoint: Path, data: Path | None, split: str, out: Path | None, device: str,
            batch: int, threads: int | None) -> None:
    """Top-1, mean per-class accuracy and PCK per part of CHECKPOINT (a run folder means its best.pt) on a
    dataset split."""
    from fgdeploy.checkpoint import check_checkpoint_file
    from fgdeploy.errors import ConfigError
    from fgdeploy.evaluate import default_data_for, evaluate_checkpoint

    if checkpoint.suffix.lower() in (".onnx", ".engine", ".plan"):
        raise ConfigError(f"{checkpoint}: eval takes a .pt checkpoint (written by fgdeploy train); check an export "
                          f"against it with `fgdeploy parity --ref torch:CKPT --test onnx:{checkpoint} --data DIR`")
    checkpoint = check_checkpoint_file(checkpoint)   # a bad file is named before anything about the data
    data = data or default_data_for(checkpoint)
    if data is None:
        raise ConfigError(f"no --data given and no run config.yaml beside {checkpoint} names one; pass --data DIR")
    out = out or checkpoint.parent / f"eval-{split}"
    if reason := unwritable_reason(out, folder=True):
        raise ConfigError(f"{reason}; pass --out DIR")
    from fgdeploy.cpu import set_threads

    set_threads(threads)
    quiet = bool((ctx.obj or {}).get("quiet"))
    res = evaluate_checkpoint(checkpoint, data, split, out, device=device, batch_size=batch,
                              progress=False if quiet else None)
    click.echo(res.table)
    click.echo(f"wrote {res.json_path} and {res.grid_path}")
