"""The staged trainer: ``train_one_epoch``, ``validate`` and ``fit`` (no CLI code).

Exact resume: everything random is either a pure function of (seed, stage, epoch, sample index) (data
order, augmentation) or restored from the checkpoint (torch RNG for dropout, per rank), and ``last.pt`` is
also written every ``checkpoint_every`` steps mid-epoch with the epoch's running sums. A run killed at any
point and resumed from ``last.pt`` therefore ends with the same weights and metrics as an uninterrupted
one (CPU, same seed and thread count).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fgdeploy.checkpoint import model_config_from_meta, read_checkpoint, save_checkpoint
from fgdeploy.errors import ConfigError
from fgdeploy.progress import progress_bar
from fgdeploy.train import distributed as D
from fgdeploy.train.config import TrainConfig
from fgdeploy.train.data import TrainData, epoch_batches, make_loader
from fgdeploy.train.stages import (
    STAGES, Stage, build_optimizer, build_scheduler, has_part_nets, set_train_mode, stage_is_applicable, uses_parts,
)
from fgdeploy.train.state import (  # noqa: F401  (Hooks, RunContext, load_train_state: re-exported API)
    Hooks, RunContext, TrainState, checkpoint_meta, epoch_record, format_record, load_train_state, restore_rng,
    save_last, write_metrics,
)

log = logging.getLogger(__name__)


class HeatmapView(nn.Module):
    """Forward of the localization path only ({"heatmaps": ...}), for the keypoint stages (1, 2).

    Holding the model as a child keeps parameter names and lets DDP wrap it like the model itself.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = model

    def forward(self, images: torch.Tensor, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        net: Any = self.net
        return net.localize(images)


class PartNetView(nn.Module):
    """Forward of the part nets alone on ground-truth boxes ({"head": logits, "body": logits}), for stage 0."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = model

    def forward(self, images: torch.Tensor, part_keypoints: torch.Tensor, part_visible: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        net: Any = self.net
        return net.part_net_logits(images, part_keypoints, part_visible)


# --- one step / one epoch -------------------------------------------------------------------------------
def part_net_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 0: the sum of the head and body nets' cross-entropies on ground-truth-box crops."""
    images, labels = batch["images"], batch["labels"]
    out = model(images, batch["keypoints"], batch["visible"].to(images.dtype))
    n = images.shape[0]
    loss = images.new_zeros(())
    sums: dict[str, float] = {"images": float(n)}
    for name, logits in out.items():
        ce = F.cross_entropy(logits.float(), labels)
        loss = loss + ce
        sums[f"{name}_loss"] = ce.item() * n
        sums[f"{name}_correct"] = float((logits.argmax(1) == labels).sum().item())
    sums["loss"] = loss.item() * n
    return loss, sums


def compute_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], stage: Stage, tcfg: TrainConfig,
    heatmap_hw: tuple[int, int], input_size: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch for ``stage``; returns (loss, per-batch sums for logging)."""
    from fgdeploy.models.losses import keypoint_bce_loss, keypoint_targets

    if stage.part_net_loss:
        return part_net_loss(model, batch)
    images, labels = batch["images"], batch["labels"]
    targets = keypoint_targets(batch["keypoints"], batch["visible"], heatmap_hw, input_size)  # (N, P, Hh, Wh)
    visible = batch["visible"].to(images.dtype)
    if stage.use_gt_parts:
        gt_boxes = {"part_keypoints": batch["keypoints"]} if has_part_nets(model) else {}
        out = model(images, part_heatmaps=targets, part_visible=visible, **gt_boxes)
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
    threshold = D.unwrap(model).config.visibility_threshold
    return compute_metrics(preds, data.class_names, data.part_names, visibility_threshold=threshold).summary()


def calibrate_visibility(net: Any, data: TrainData, device: torch.device, info: D.DistInfo, amp: bool) -> float | None:
    """Set ``net.config.visibility_threshold`` to the value that best separates visible from invisible parts.

    The model zeroes a part's features at test when its max sigmoid is below the threshold (docs/method.md 4). With
    a fine heatmap grid the probability of a keypoint is shared by neighbouring cells, so peaks stay well
    below the default 0.5 and nearly every part would be dropped. The threshold maximising visibility
    accuracy on the held-out split is written into the model config (and so into every checkpoint).

    Returns:
        The new threshold, or None when nothing was calibrated (no validation split, no parts, no zeroing).
    """
    from fgdeploy.evaluate import predict

    cfg = net.config
    # Part-net models also build their boxes from the predicted visibility, so they always calibrate.
    if not data.val_indices or not uses_parts(net) or not (cfg.zero_invisible_parts or has_part_nets(net)):
        return None
    shard = D.shard_indices(data.val_indices, info, pad=False)
    preds = predict(net, data.eval_dataset, shard, device, batch_size=data.eval_batch_size, amp=amp)
    preds = preds.merge(D.all_gather_objects(preds))
    candidates = np.round(np.arange(0.01, 0.951, 0.01), 2)
    accuracy = [float(((preds.scores >= t) == preds.gt_visible).mean()) for t in candidates]
    best = float(candidates[int(np.argmax(accuracy))])
    net.config = dataclasses.replace(cfg, visibility_threshold=best)
    log.info("visibility threshold %.2f (held-out visibility accuracy %.1f%%; at %.2f: %.1f%%)", best,
             100 * max(accuracy), cfg.visibility_threshold,
             100 * float(((preds.scores >= cfg.visibility_threshold) == preds.gt_visible).mean()))
    return best


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
        restore_rng(resume, ctx)
    else:
        torch.manual_seed(tcfg.seed * 1009 + 7 + ctx.info.rank)  # dropout stream, distinct per rank
    for number in stages:
        if number < state.stage or (number == state.stage and state.stage_done):
            continue
        stage = STAGES[number]
        if tcfg.stage(number).epochs == 0 or not stage_is_applicable(model, stage):
            log.info("stage %d (%s): skipped (%s)", number, stage.title,
                     "0 epochs" if tcfg.stage(number).epochs == 0 else "nothing to train for this model")
            continue
        continuing = resume is not None and number == state.stage and not state.stage_done
        if not continuing:
            state = dataclasses.replace(state, stage=number, stage_done=False, epoch=0, step_in_epoch=0,
                                        best_metric=-math.inf, best_epoch=-1, sums={})
        _run_stage(model, data, tcfg, stage, state, ctx, resume if continuing else None)
        resume = None
    return state


def _setup_stage(net: Any, data: TrainData, tcfg: TrainConfig, stage: Stage, ctx: RunContext,
                 resume: dict[str, Any] | None) -> tuple[StepContext, int]:
    """Freeze/unfreeze, optimizer, schedule, scaler (restored when resuming), DDP wrapper."""
    scfg = tcfg.stage(stage.number)
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
    view = net if stage.classification_loss else PartNetView(net) if stage.part_net_loss else HeatmapView(net)
    runner = D.wrap_ddp(view, ctx.device, ctx.info)
    log.info("stage %d (%s): %d epoch(s) x %d steps, lr %g, head lr %g, trainable groups %s", stage.number,
             stage.title, scfg.epochs, steps_per_epoch, scfg.lr, scfg.head_lr,
             [g["name"] for g in optimizer.param_groups])
    return StepContext(runner, optimizer, scheduler, scaler, stage, tcfg, ctx.device, tuple(net.heatmap_size),
                       net.input_size, amp), steps_per_epoch


def _optim_state(step: StepContext) -> dict[str, Any]:
    return {"optimizer": step.optimizer.state_dict(), "scheduler": step.scheduler.state_dict(),
            "scaler": step.scaler.state_dict()}


def _run_stage(model: nn.Module, data: TrainData, tcfg: TrainConfig, stage: Stage, state: TrainState,
               ctx: RunContext, resume: dict[str, Any] | None) -> None:
    net: Any = D.unwrap(model)
    step, steps_per_epoch = _setup_stage(net, data, tcfg, stage, ctx, resume)
    epochs = tcfg.stage(stage.number).epochs

    def meta(s: TrainState, metrics: dict[str, float]) -> Any:
        return checkpoint_meta(net, data.class_names, data.part_names, tcfg, s, metrics)

    while state.epoch < epochs:
        t0 = time.perf_counter()
        # LR at the epoch's first step, from the schedule (identical whether or not the epoch was resumed)
        lr_at = step.scheduler.lr_lambdas[0]  # type: ignore[attr-defined]  # a LambdaLR
        lr_now = max(g["initial_lr"] for g in step.optimizer.param_groups) * lr_at(state.epoch * steps_per_epoch)
        batches = epoch_batches(data.train_indices, tcfg.batch_size, tcfg.seed, stage.number, state.epoch, ctx.info)
        loader = make_loader(data.train_dataset, batches[state.step_in_epoch:], tcfg.workers)

        def on_step(s: TrainState) -> None:
            if tcfg.checkpoint_every and s.global_step % tcfg.checkpoint_every == 0 and s.step_in_epoch < len(batches):
                save_last(net, meta(s, {}), s, ctx, _optim_state(step))
            if ctx.hooks.on_step is not None:
                ctx.hooks.on_step(s)

        sums = train_one_epoch(step, iter(loader), state, len(batches), on_step,
                               ctx.show_progress if ctx.info.is_main else False)
        seconds = time.perf_counter() - t0
        D.broadcast_buffers(net)
        if tcfg.calibrate_visibility and stage.keypoint_loss:  # the localizer changed: re-fit its threshold
            calibrate_visibility(net, data, ctx.device, ctx.info, step.amp)
        metrics = validate(net, data, ctx.device, ctx.info, step.amp)
        record = epoch_record(stage.number, state, epochs, sums, metrics, lr_now, seconds)
        state.history.append(record)
        score = metrics.get(stage.select_metric, -float(record["train_loss"]))
        improved = score > state.best_metric
        if improved:
            state.best_metric, state.best_epoch = score, state.epoch
        state.epoch, state.step_in_epoch, state.sums = state.epoch + 1, 0, {}
        if improved and ctx.info.is_main:
            save_checkpoint(ctx.out_dir / "best.pt", net, meta(state, metrics))
        save_last(net, meta(state, metrics), state, ctx, _optim_state(step))
        write_metrics(ctx, state.history)
        log.info("%s", format_record(record, improved))

    if tcfg.restore_best and state.best_epoch >= 0 and state.best_epoch != state.epoch - 1:
        D.barrier()
        best = read_checkpoint(ctx.out_dir / "best.pt")
        net.load_state_dict(best.state_dict)
        net.config = model_config_from_meta(best.meta)  # with the visibility threshold fitted to those weights
        log.info("stage %d: continuing from its best epoch %d (%s %.4f)", stage.number, state.best_epoch + 1,
                 stage.select_metric, state.best_metric)
    state.stage_done = True
    save_last(net, meta(state, {}), state, ctx, None)
    D.barrier()
