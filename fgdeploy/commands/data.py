"""``fgdeploy data``: make a synth-birds dataset, or check a CUB-format one."""

from __future__ import annotations

import json
from typing import Any

import click

from fgdeploy.commands.options import output_path
from fgdeploy.text import plural


def _progress(ctx: click.Context, desc: str) -> Any:
    """A ``progress(iterable, total)`` callback drawing a bar unless --quiet."""
    from fgdeploy.progress import progress

    enabled = False if (ctx.obj or {}).get("quiet") else None  # None: on when stderr is a terminal
    return lambda items, total: progress(items, total=total, desc=desc, unit="img", enabled=enabled)


@click.group("data", short_help="Make synth-birds data or check a CUB-format dataset.")
def command() -> None:
    """Datasets in CUB-200-2011 layout: generate synth-birds, or validate and summarise a folder."""


@command.command("synth", short_help="Write a synth-birds dataset in CUB-200-2011 layout.")
@click.argument("out_dir", type=click.Path(file_okay=False), callback=output_path(folder=True))
@click.option("--classes", default=20, show_default=True, type=click.IntRange(1, 200), help="Number of classes.")
@click.option("--images-per-class", default=30, show_default=True, type=click.IntRange(1),
              help="Images per class (about half train, half test).")
@click.option("--size", default=256, show_default=True, type=click.IntRange(64, 4096),
              help="Long side of each image in pixels.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0), help="Random seed.")
@click.option("--preview", is_flag=True, help="Also write OUT_DIR/preview.png with keypoints drawn.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Processes drawing images; 1 = in this process (the output does not depend on it).")
@click.pass_context
def synth(ctx: click.Context, out_dir: str, classes: int, images_per_class: int, size: int, seed: int,
          preview: bool, workers: int) -> None:
    """Write a synth-birds dataset to OUT_DIR (new or empty; an interrupted run resumes).

    The class of each bird is carried only by small part details (beak, crown, eye ring, wing bar, tail
    tip, breast patch); pose, body colours and the cluttered background vary independently of it.
    """
    from fgdeploy.data.synthetic import PREVIEW, generate_synth_birds

    root = generate_synth_birds(out_dir, classes=classes, images_per_class=images_per_class, size=size, seed=seed,
                                preview=preview, progress=_progress(ctx, "synth"), workers=workers)
    click.echo(f"wrote {plural(classes * images_per_class, 'image')} in {plural(classes, 'class', 'classes')} to {root}")
    if preview:
        click.echo(f"preview: {root / PREVIEW}")


@command.command("check", short_help="Validate a CUB-format dataset and summarise it.")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--decode/--no-decode", default=True, show_default=True,
              help="Decode every image (finds corrupt files) or read headers only (fast).")
@click.pass_context
def check(ctx: click.Context, root: str, as_json: bool, decode: bool) -> None:
    """Check the dataset at ROOT: exit 0 when usable, 1 with the first file:line problem when not."""
    from fgdeploy.data.check import check_dataset

    report = check_dataset(root, decode=decode, progress=_progress(ctx, "check"))
    _echo(report.to_dict() if as_json else report.render(), as_json)
    if not report.ok:   # the report lists the errors already: no second copy of the first one
        ctx.exit(1)


def _echo(payload: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(payload, indent=1))
    else:
        click.echo(payload)

