"""``fgdeploy train``: the paper's staged training into a run folder."""

from __future__ import annotations

from pathlib import Path

import click

from fgdeploy.commands.options import device_option, output_path, threads_option


@click.command("train")
@click.option("--config", "config", default=None,
              help="Model config: a YAML path or a name in models/ (demo, cub_vgg16_fc7, ...). Default: demo.")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="CUB-format dataset folder. Default: generate synth-birds into OUT/synth-birds.")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              callback=output_path(folder=True),
              help="Run folder (config.yaml, metrics.jsonl, last.pt, best.pt, train.log); a folder holding a run is "
                   "refused unless --resume or --overwrite.")
@click.option("--stage", default=None, help="1, 2, 3, 4, a range such as 3-4, or 'all' (default).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs of every stage (>= 1).")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Batch size per process.")
@click.option("--lr", type=click.FloatRange(min=0), default=None, help="Base learning rate of every stage.")
@device_option(None, what="Default auto; ")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out exactly where last.pt left it. Other options must be left out or "
                   "match the run's (--device and --workers may change).")
@click.option("--overwrite", is_flag=True,
              help="Replace the run already in --out (its best.pt, last.pt and metrics.jsonl). Without it, "
                   "training into a folder that holds a run is refused.")
@click.option("--pretrained", type=click.Path(exists=True, path_type=Path), default=None,
              help="Backbone weights file, or an fgdeploy checkpoint to start from (e.g. a stage-2 run; a run "
                   "folder means its best.pt).")
@click.option("--seed", type=int, default=None, help="Seed (default 0): data split, order, augmentation, init.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader worker processes loading and augmenting images; 0 = in the training process "
                   "(default: the config's).")
@threads_option
@click.pass_context
def command(ctx: click.Context, config: str | None, data: Path | None, out: Path, stage: str | None, epochs: int | None,
            batch: int | None, lr: float | None, device: str | None, resume: bool, overwrite: bool, pretrained: Path | None,
            seed: int | None, workers: int | None, threads: int | None) -> None:
    """Train a pose-normalized classifier in the paper's four stages (runs under torchrun too)."""
    from fgdeploy.train.run import TrainOptions, run_training
    from fgdeploy.train.state import format_record

    if pretrained is not None:
        from fgdeploy.commands.options import resolve_model

        pretrained = Path(resolve_model(pretrained))
    if resume and overwrite:
        raise click.UsageError("--resume continues the run in --out and --overwrite replaces it; give one of them")
    quiet = bool((ctx.obj or {}).get("quiet"))
    opts = TrainOptions(config=config, out=out, data=data, stage=stage, epochs=epochs, batch=batch, lr=lr,
                        device=device, resume=resume, overwrite=overwrite, pretrained=pretrained, seed=seed, workers=workers,
                        threads=threads,
                        show_progress=False if quiet else None)
    try:
        result = run_training(opts)
    except KeyboardInterrupt:
        saved = (out / "last.pt").is_file()
        click.echo(f"\ninterrupted: {out / 'last.pt'} " + ("holds the last saved step; rerun with --resume to go on"
                   if saved else "was not written yet; rerun without --resume to start over"), err=True)
        ctx.exit(130)
    if not result.is_main:
        return
    if result.last_metrics:
        click.echo(f"finished: {format_record(result.last_metrics)}")
    click.echo(f"run folder: {result.out_dir} ({', '.join(existing_run_files(result.out_dir)) or 'no files'})")


def existing_run_files(out_dir: Path) -> list[str]:
    """The run-folder files worth naming that exist (a run stopped before its first epoch has no checkpoints)."""
    names = ("best.pt", "last.pt", "metrics.jsonl", "config.yaml", "train.log")
    return [name for name in names if (Path(out_dir) / name).is_file()]
