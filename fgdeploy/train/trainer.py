"""The staged trainer: ``train_one_epoch``, ``validate`` and ``fit`` (no CLI code).

Exact resume: everything random is either a pure function of (seed, stage, epoch, sample index) (data
order, augmentation) or restored from the checkpoint (torch RNG for dropout, per rank), and ``last.pt`` is
also written every ``checkpoint_every`` steps mid-epoch with the epoch's running sums. A run killed at any
point and resumed from ``last.pt`` therefore ends with the same weights and metrics as an uninterrupted
one (CPU, same seed and thread count).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fgdeploy.checkpoint import CheckpointMeta, atomic_write_bytes, read_checkpoint, save_checkpoint
from fgdeploy.config import dataclass_to_dict
from fgdeploy.errors import CheckpointError, ConfigError
from fgdeploy.progress import progress_bar
from fgdeploy.train import distributed as D
from fgdeploy.train.config import TrainConfig
from fgdeploy.train.data import TrainData, epoch_batches, make_loader
from fgdeploy.train.stages import STAGES, Stage, build_optimizer, build_scheduler, set_train_mode, stage_is_applicable, uses_parts

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint's ``extra_state``."""

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


class HeatmapView(nn.Module):
    """Forward of the localization path only ({"heatmaps": ...}), for the keypoint stages (1, 2).

    Holding the model as a child keeps parameter names and lets DDP wrap it like the model itself.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = model

    def forward(self, images: torch.Tensor, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        net = self.net
        x = (images - net.mean) / net.std
        feats = net.loc_net(x)
        layers = net.config.localization.score_layers
        return {"heatmaps": net.keypoint_head([feats[n] for n in layers])}


# --- one step / one epoch -------------------------------------------------------------------------------
def compute_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], stage: Stage, tcfg: TrainConfig,
    heatmap_hw: tuple[int, int], input_size: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch for ``stage``; returns (loss, per-batch sums for logging)."""
    from fgdeploy.models.losses import keypoint_bce_loss, keypoint_targets

    images, labels = batch["images"], batch["labels"]
    targets = keypoint_targets(batch["keypoints"], batch["visible"], heatmap_hw, input_size)  # (N, P, Hh, Wh)
    visible = batch["visible"].to(images.dtype)
    if stage.use_gt_parts:
        out = model(images, part_heatmaps=targets, part_visible=visible)
    else:
        out = model(images)
    n = images.shape[0]
    loss = images.new_zeros(())
    sums: dict[str, float] = {"images": float(n)}
    if stage.keypoint_loss:
        kp = keypoint_bce_loss(out["heatmaps"].float(), targets.float())
        weight = tcfg.kp_loss_weight if stage.classification_loss else 1.0
        loss = loss + weight * kp
        sums["kp_loss"] = kp.item() * n
    if stage.classification_loss:
        ce = F.cross_entropy(out["logits"].float(), labels)
        loss = loss + ce
        sums["cls_loss"] = ce.item() * n
        sums["correct"] = float((out["logits"].argmax(1) == labels).sum().item())
    sums["loss"] = loss.item() * n
    return loss, sums


def _to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    out = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    if channels_last:
        out["images"] = out["images"].contiguous(memory_format=torch.channels_last)
    return out


@dataclass
class StepContext:
    """What ``train_one_epoch`` needs besides the batches."""

    model: nn.Module                      # the module to call (maybe DDP / HeatmapView)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    stage: Stage
    tcfg: TrainConfig
    device: torch.device
    heatmap_hw: tuple[int, int]
    input_size: int
    amp: bool


def train_one_epoch(
    ctx: StepContext, batches: Iterator[dict[str, torch.Tensor]], state: TrainState, total_steps: int,
    on_step: Callable[[TrainState], None] | None = None, show_progress: bool | None = None,
) -> dict[str, float]:
    """Train over ``batches`` (the rest of the epoch), updating ``state`` after every step.

    Returns:
        The epoch's sums (restored from ``state.sums`` when resuming mid-epoch), summed over processes.
    """
    set_train_mode(ctx.model)
    remaining = total_steps - state.step_in_epoch
    bar = progress_bar(total=remaining * ctx.tcfg.batch_size, desc=f"stage {ctx.stage.number} epoch {state.epoch + 1}",
                       unit="img", enabled=show_progress)
    try:
        for batch in batches:
            batch = _to_device(batch, ctx.device, ctx.tcfg.channels_last)
            with torch.autocast(device_type=ctx.device.type, dtype=torch.float16, enabled=ctx.amp):
                loss, sums = compute_loss(ctx.model, batch, ctx.stage, ctx.tcfg, ctx.heatmap_hw, ctx.input_size)
            if not math.isfinite(sums["loss"]):
                raise FloatingPointError(f"loss is {sums['loss']} at stage {ctx.stage.number} epoch {state.epoch + 1} "
                                         f"step {state.step_in_epoch}; lower the learning rate (--lr)")
            ctx.optimizer.zero_grad(set_to_none=True)
            ctx.scaler.scale(loss).backward()
            if ctx.tcfg.grad_clip > 0:
                ctx.scaler.unscale_(ctx.optimizer)
                params = [p for g in ctx.optimizer.param_groups for p in g["params"]]
                nn.utils.clip_grad_norm_(params, ctx.tcfg.grad_clip)
            ctx.scaler.step(ctx.optimizer)
            ctx.scaler.update()
            ctx.scheduler.step()
            for k, v in sums.items():
                state.sums[k] = state.sums.get(k, 0.0) + v
            state.step_in_epoch += 1
            state.global_step += 1
            bar.update(int(sums["images"]))
            bar.set_postfix(loss=f"{state.sums['loss'] / state.sums['images']:.4f}", refresh=False)
            if on_step is not None:
                on_step(state)
    finally:
        bar.close()
    keys = sorted(state.sums)
    total = D.all_reduce_sum(torch.tensor([state.sums[k] for k in keys], dtype=torch.float64, device=ctx.device))
    return dict(zip(keys, total.cpu().tolist()))


# --- validation ----------------------------------------------------------------------------------------
def validate(model: nn.Module, data: TrainData, device: torch.device, info: D.DistInfo, amp: bool) -> dict[str, float]:
    """Top-1, mean per-class accuracy and PCK of ``model`` on the held-out split (predicted parts)."""
    from fgdeploy.evaluate import compute_metrics, predict

    if not data.val_indices:
        return {}
    shard = D.shard_indices(data.val_indices, info, pad=False)
    preds = predict(D.unwrap(model), data.eval_dataset, shard, device, batch_size=data.eval_batch_size, amp=amp)
    preds = preds.merge(D.all_gather_objects(preds))
    return compute_metrics(preds, data.class_names, data.part_names).summary()


# --- checkpointing -------------------------------------------------------------------------------------
@dataclass
class RunContext:
    """Everything ``fit`` needs that is not a hyper-parameter."""

    out_dir: Path
    device: torch.device
    info: D.DistInfo = field(default_factory=D.DistInfo)
    hooks: Hooks = field(default_factory=Hooks)
    show_progress: bool | None = None


def _meta(model: nn.Module, data: TrainData, tcfg: TrainConfig, state: TrainState,
          metrics: dict[str, float]) -> CheckpointMeta:
    net = D.unwrap(model)
    cfg = net.config
    return CheckpointMeta(model_config=dataclass_to_dict(cfg), class_names=list(data.class_names),
                          part_names=list(data.part_names), input_size=int(cfg.input_size), mean=list(cfg.mean),
                          std=list(cfg.std), stage=state.stage, epoch=state.epoch, train_config=dataclass_to_dict(tcfg),
                          metrics=dict(metrics))


def _rng_states(device: torch.device) -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _save_last(model: nn.Module, data: TrainData, tcfg: TrainConfig, state: TrainState, ctx: RunContext,
               step: StepContext | None, metrics: dict[str, float]) -> None:
    """Write last.pt with the full trainer state (rank 0 writes; every rank contributes its RNG state)."""
    rng = D.all_gather_objects(_rng_states(ctx.device))
    if not ctx.info.is_main:
        return
    extra = {"train_state": dataclasses.asdict(state), "rng": rng, "world_size": ctx.info.world_size}
    if step is not None:
        extra.update(optimizer=step.optimizer.state_dict(), scheduler=step.scheduler.state_dict(),
                     scaler=step.scaler.state_dict())
    save_checkpoint(ctx.out_dir / "last.pt", model, _meta(model, data, tcfg, state, metrics), extra)


def load_train_state(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], TrainState]:
    """(model state_dict, extra_state, TrainState) from a last.pt written by ``fit``."""
    ckpt = read_checkpoint(path)
    raw = ckpt.extra_state.get("train_state")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds no trainer state (it is an export/best checkpoint?); resume from last.pt")
    return ckpt.state_dict, ckpt.extra_state, TrainState(**raw)


def _write_metrics(ctx: RunContext, history: list[dict[str, Any]]) -> None:
    if ctx.info.is_main:
        text = "".join(json.dumps(rec, sort_keys=True) + "\n" for rec in history)
        atomic_write_bytes(ctx.out_dir / "metrics.jsonl", text.encode("utf-8"))


# --- fit -----------------------------------------------------------------------------------------------
def fit(
    model: nn.Module, data: TrainData, tcfg: TrainConfig, stages: list[int], ctx: RunContext,
    resume: dict[str, Any] | None = None,
) -> TrainState:
    """Run ``stages`` in order, each starting from the weights the previous one ended with.

    Args:
        model: a PoseNormalizedNet on ``ctx.device`` (weights already loaded when resuming).
        data: train/val datasets and names (``fgdeploy.train.data.build_train_data``).
        tcfg: hyper-parameters.
        stages: e.g. [1, 2, 3, 4].
        ctx: output folder, device, process info, hooks.
        resume: ``extra_state`` of the last.pt to continue from (None = fresh run).

    Returns:
        The final TrainState (history holds one metrics record per epoch).
    """
    state = TrainState(**resume["train_state"]) if resume else TrainState()
    if resume:
        _restore_rng(resume, ctx)
    else:
        torch.manual_seed(tcfg.seed * 1009 + 7 + ctx.info.rank)  # dropout stream, distinct per rank
    for number in stages:
        if number < state.stage or (number == state.stage and state.stage_done):
            continue
        stage = STAGES[number]
        scfg = tcfg.stage(number)
        if scfg.epochs == 0 or not stage_is_applicable(model, stage):
            log.info("stage %d (%s): skipped (%s)", number, stage.title,
                     "0 epochs" if scfg.epochs == 0 else "nothing to train for this model")
            continue
        continuing = resume is not None and number == state.stage and not state.stage_done
        if not continuing:
            state = dataclasses.replace(state, stage=number, stage_done=False, epoch=0, step_in_epoch=0,
                                        best_metric=-math.inf, best_epoch=-1, sums={})
        _run_stage(model, data, tcfg, stage, state, ctx, resume if continuing else None)
        resume = None
    return state


def _restore_rng(resume: dict[str, Any], ctx: RunContext) -> None:
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


def _run_stage(model: nn.Module, data: TrainData, tcfg: TrainConfig, stage: Stage, state: TrainState,
               ctx: RunContext, resume: dict[str, Any] | None) -> None:
    scfg = tcfg.stage(stage.number)
    net = D.unwrap(model)
    if not uses_parts(net):  # holistic-only: the localization net is unused, so is its loss
        stage = dataclasses.replace(stage, keypoint_loss=False)
    steps_per_epoch = len(epoch_batches(data.train_indices, tcfg.batch_size, tcfg.seed, stage.number, 0, ctx.info))
    if steps_per_epoch == 0:
        raise ConfigError(f"training split has {len(data.train_indices)} images, fewer than one batch of "
                          f"{tcfg.batch_size} per process; lower --batch")
    optimizer = build_optimizer(net, stage, scfg, tcfg)
    scheduler = build_scheduler(optimizer, scfg, steps_per_epoch * scfg.epochs)
    amp = tcfg.amp and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp)
    if resume is not None and "optimizer" in resume:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
    runner: nn.Module = net if stage.classification_loss else HeatmapView(net)
    runner = D.wrap_ddp(runner, ctx.device, ctx.info)
    step = StepContext(runner, optimizer, scheduler, scaler, stage, tcfg, ctx.device, tuple(net.heatmap_size),
                       net.input_size, amp)
    log.info("stage %d (%s): %d epoch(s) x %d steps, lr %g, head lr %g, trainable groups %s", stage.number,
             stage.title, scfg.epochs, steps_per_epoch, scfg.lr, scfg.head_lr,
             [g["name"] for g in optimizer.param_groups])

    while state.epoch < scfg.epochs:
        t0 = time.perf_counter()
        # LR at the epoch's first step, from the schedule (identical whether or not the epoch was resumed)
        lr_now = max(g["initial_lr"] for g in optimizer.param_groups) * scheduler.lr_lambdas[0](
            state.epoch * steps_per_epoch)
        batches = epoch_batches(data.train_indices, tcfg.batch_size, tcfg.seed, stage.number, state.epoch, ctx.info)
        loader = make_loader(data.train_dataset, batches[state.step_in_epoch:], tcfg.workers)

        def on_step(s: TrainState) -> None:
            if tcfg.checkpoint_every and s.global_step % tcfg.checkpoint_every == 0 and s.step_in_epoch < len(batches):
                _save_last(model, data, tcfg, s, ctx, step, {})
            if ctx.hooks.on_step is not None:
                ctx.hooks.on_step(s)

        sums = train_one_epoch(step, iter(loader), state, len(batches), on_step,
                               ctx.show_progress if ctx.info.is_main else False)
        seconds = time.perf_counter() - t0
        D.broadcast_buffers(net)
        metrics = validate(net, data, ctx.device, ctx.info, amp)
        record = _epoch_record(stage, state, scfg.epochs, sums, metrics, lr_now, seconds)
        state.history.append(record)
        score = metrics.get(stage.select_metric, -float(record["train_loss"]))
        improved = score > state.best_metric
        if improved:
            state.best_metric, state.best_epoch = score, state.epoch
        state.epoch += 1
        state.step_in_epoch = 0
        state.sums = {}
        if improved and ctx.info.is_main:
            best_state = dataclasses.replace(state, epoch=state.epoch)
            save_checkpoint(ctx.out_dir / "best.pt", net, _meta(net, data, tcfg, best_state, metrics))
        _save_last(net, data, tcfg, state, ctx, step, metrics)
        _write_metrics(ctx, state.history)
        log.info("%s", format_record(record, improved))

    if tcfg.restore_best and state.best_epoch >= 0 and state.best_epoch != state.epoch - 1:
        D.barrier()
        best = read_checkpoint(ctx.out_dir / "best.pt")
        net.load_state_dict(best.state_dict)
        log.info("stage %d: continuing from its best epoch %d (%s %.4f)", stage.number, state.best_epoch + 1,
                 stage.select_metric, state.best_metric)
    state.stage_done = True
    _save_last(net, data, tcfg, state, ctx, None, {})
    D.barrier()


def _epoch_record(stage: Stage, state: TrainState, epochs: int, sums: dict[str, float], metrics: dict[str, float],
                  lr: float, seconds: float) -> dict[str, Any]:
    n = max(1.0, sums.get("images", 0.0))
    record: dict[str, Any] = {"stage": stage.number, "epoch": state.epoch + 1, "epochs": epochs,
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
    if "val_top1" in record:
        parts.append(f"val top1 {100 * record['val_top1']:.1f}%")
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
