"""Trainer state and run files: TrainState, last.pt / best.pt contents, metrics.jsonl, train.log, epoch lines.

Only rank 0 writes (``RunContext.info.is_main``); every rank contributes its RNG state to last.pt so a
resumed DDP run continues each process's dropout stream exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fgdeploy import checkpoint as ckpt
from fgdeploy.config import dataclass_to_dict
from fgdeploy.errors import CheckpointError
from fgdeploy.train import distributed as D
from fgdeploy.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where training stands; saved in every last.pt's ``extra_state``."""

    stage: int = 0                 # stage in progress, or last finished when stage_done
    stage_done: bool = False
    epoch: int = 0                 # 0-based epoch in progress within the stage
    step_in_epoch: int = 0         # optimizer steps done in that epoch
    global_step: int = 0           # optimizer steps over the whole run
    best_metric: float = -math.inf
    best_epoch: int = -1
    sums: dict[str, float] = field(default_factory=dict)   # running sums of the epoch in progress
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch


@dataclass
class Hooks:
    """Test/extension callbacks. ``on_step(state)`` runs after each optimizer step (may raise to simulate a kill)."""

    on_step: Callable[[TrainState], None] | None = None


@dataclass
class RunContext:
    """Everything ``fit`` needs that is not a hyper-parameter."""

    out_dir: Path
    device: torch.device
    info: D.DistInfo = field(default_factory=D.DistInfo)
    hooks: Hooks = field(default_factory=Hooks)
    show_progress: bool | None = None


def checkpoint_meta(model: nn.Module, class_names: list[str], part_names: list[str], tcfg: TrainConfig,
                    state: TrainState, metrics: dict[str, float]) -> ckpt.CheckpointMeta:
    """CheckpointMeta of ``model`` (a PoseNormalizedNet, maybe DDP-wrapped) at ``state``."""
    cfg: Any = D.unwrap(model).config
    return ckpt.CheckpointMeta.for_config(cfg, class_names, part_names, stage=state.stage, epoch=state.epoch,
                                          train_config=dataclass_to_dict(tcfg), metrics=dict(metrics))


def rng_states(device: torch.device) -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng(resume: dict[str, Any], ctx: RunContext) -> None:
    """Put back this rank's RNG state from a last.pt (re-seed, with a warning, if the world size changed)."""
    states = resume.get("rng") or []
    if len(states) != ctx.info.world_size:
        log.warning("checkpoint was written by %s process(es), resuming with %d: RNG streams are re-seeded, "
                    "so results will not match an uninterrupted run exactly", len(states), ctx.info.world_size)
        torch.manual_seed(int(resume["train_state"]["global_step"]) * 7919 + ctx.info.rank)
        return
    mine = states[ctx.info.rank]
    torch.set_rng_state(mine["torch"])
    if "cuda" in mine and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], ctx.device)


def save_last(model: nn.Module, meta: ckpt.CheckpointMeta, state: TrainState, ctx: RunContext,
              optim_state: dict[str, Any] | None) -> None:
    """Write last.pt with the full trainer state (a collective: every rank must call it).

    ``optim_state``: {"optimizer", "scheduler", "scaler"} state dicts, or None at a stage boundary.
    """
    rng = D.all_gather_objects(rng_states(ctx.device))
    if not ctx.info.is_main:
        return
    extra: dict[str, Any] = {"train_state": dataclasses.asdict(state), "rng": rng,
                             "world_size": ctx.info.world_size, **(optim_state or {})}
    ckpt.save_checkpoint(ctx.out_dir / "last.pt", model, meta, extra)


def load_train_state(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], TrainState]:
    """(model state_dict, extra_state, TrainState) from a last.pt written by ``fit``."""
    data = ckpt.read_checkpoint(path)
    raw = data.extra_state.get("train_state")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds no trainer state (a best.pt?); resume from the run's last.pt")
    return data.state_dict, data.extra_state, TrainState(**raw)


def write_metrics(ctx: RunContext, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl (one record per finished epoch) atomically."""
    if ctx.info.is_main:
        text = "".join(json.dumps(rec, sort_keys=True) + "\n" for rec in history)
        ckpt.atomic_write_bytes(ctx.out_dir / "metrics.jsonl", text.encode("utf-8"))


def epoch_record(stage: int, state: TrainState, epochs: int, sums: dict[str, float], metrics: dict[str, float],
                 lr: float, seconds: float) -> dict[str, Any]:
    """The metrics.jsonl record of the epoch ``state.epoch`` (0-based) that just finished."""
    n = max(1.0, sums.get("images", 0.0))
    record: dict[str, Any] = {"stage": stage, "epoch": state.epoch + 1, "epochs": epochs,
                              "step": state.global_step, "train_loss": sums.get("loss", 0.0) / n}
    for key in ("kp_loss", "cls_loss"):
        if key in sums:
            record[f"train_{key}"] = sums[key] / n
    if "correct" in sums:
        record["train_top1"] = sums["correct"] / n
    record.update({f"val_{k}": v for k, v in metrics.items()})
    record["lr"] = lr  # largest group LR at the epoch's first step
    record["seconds"] = round(seconds, 3)
    record["images_per_s"] = round(sums.get("images", 0.0) / max(seconds, 1e-9), 2)
    return record


def format_record(record: dict[str, Any], improved: bool = False) -> str:
    """One human-readable summary line per epoch."""
    parts = [f"stage {record['stage']} epoch {record['epoch']}/{record['epochs']}",
             f"loss {record['train_loss']:.4f}"]
    if "train_kp_loss" in record:
        parts.append(f"kp {record['train_kp_loss']:.4f}")
    if "train_top1" in record:
        parts.append(f"train top1 {100 * record['train_top1']:.1f}%")
    if "val_top1" in record:   # "–" while the stage does not train the classifier (stages 1-2): top-1 means nothing
        from fgdeploy.train.stages import STAGES

        trained = STAGES[record["stage"]].classification_loss if record["stage"] in STAGES else True
        parts.append(f"val top1 {100 * record['val_top1']:.1f}%" if trained else "val top1 –")
    if "val_pck@0.1" in record:
        parts.append(f"val PCK@0.1 {100 * record['val_pck@0.1']:.1f}%")
    parts.append(f"lr {record['lr']:.3g}")
    parts.append(f"{record['images_per_s']:.0f} img/s, {record['seconds']:.1f}s")
    return " | ".join(parts) + (" *" if improved else "")


@contextlib.contextmanager
def log_to_file(path: Path, enabled: bool = True) -> Iterator[None]:
    """Copy fgdeploy's INFO log records to ``path`` (train.log) while the block runs."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("fgdeploy")
    old_level = logger.level
    quiet = logger.getEffectiveLevel()
    # Under --quiet the console keeps its level while train.log still gets INFO: raise the console
    # handlers' own thresholds for the duration.
    console = [h for h in logging.getLogger().handlers if h.level < quiet] if quiet > logging.INFO else []
    saved = [h.level for h in console]
    for h in console:
        h.setLevel(quiet)
    logger.addHandler(handler)
    logger.setLevel(min(quiet, logging.INFO))
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        for h, level in zip(console, saved):
            h.setLevel(level)
        handler.close()
