"""The paper's four training stages (docs/method.md section 8): which parameters learn, at which LR, on what.

0. (models with part nets only, docs/method.md 7) the head and body nets alone, each with its own classifier, on
   crops of the GROUND-TRUTH boxes; nothing else learns;
1. keypoint score layer only, on frozen localization features;
2. the whole localization net (score layer at ``head_lr``, the rest at the smaller ``lr``);
3. classification trunk + classifier on GROUND-TRUTH part locations (and ground-truth boxes for the part
   nets, which are frozen: the joint classifier learns on all features), localization net frozen;
4. everything at a smaller LR with PREDICTED part locations and boxes, loss L_cls + lambda * L_kp (the part nets
   too when their config says ``end_to_end``).

Frozen modules are also put in eval mode, so BatchNorm running statistics and dropout in the frozen part
do not change while the rest trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fgdeploy.errors import ConfigError
from fgdeploy.train.config import StageConfig, TrainConfig

GROUPS = ("keypoint_score", "localization", "classification", "classifier", "part_nets", "part_classifier")
ALL_STAGES = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class Stage:
    """What one stage trains and how."""

    number: int
    title: str
    trainable: tuple[str, ...]    # parameter_groups() keys that learn
    head_groups: tuple[str, ...]  # of those, the new layers trained at head_lr
    use_gt_parts: bool            # pool part features at ground-truth locations (else predicted)
    keypoint_loss: bool
    classification_loss: bool
    select_metric: str            # validation metric picking the stage's best weights (higher is better); a
                                  # name validation does not report (stage 0's "-train_loss"): lowest train loss
    part_net_loss: bool = False   # each part net's own classification loss on ground-truth-box crops


STAGES: dict[int, Stage] = {
    0: Stage(0, "head/body part nets on ground-truth boxes", ("part_nets", "part_classifier"), ("part_classifier",),
             use_gt_parts=True, keypoint_loss=False, classification_loss=False, select_metric="-train_loss",
             part_net_loss=True),
    1: Stage(1, "keypoint score layer on frozen features", ("keypoint_score",), ("keypoint_score",),
             use_gt_parts=True, keypoint_loss=True, classification_loss=False, select_metric="pck@0.1"),
    2: Stage(2, "whole localization net", ("keypoint_score", "localization"), ("keypoint_score",),
             use_gt_parts=True, keypoint_loss=True, classification_loss=False, select_metric="pck@0.1"),
    3: Stage(3, "classifier on ground-truth parts", ("classification", "classifier"), ("classifier",),
             use_gt_parts=True, keypoint_loss=False, classification_loss=True, select_metric="top1"),
    4: Stage(4, "all layers on predicted parts",   # the part nets' own classifiers are not used after stage 0
             ("keypoint_score", "localization", "classification", "classifier", "part_nets"), ("classifier",),
             use_gt_parts=False, keypoint_loss=True, classification_loss=True, select_metric="top1"),
}


def parse_stages(value: str | int) -> list[int]:
    """``"all"`` -> [0, 1, 2, 3, 4] (stage 0 only applies to models with part nets); ``"3"`` -> [3];
    ``"3,4"`` / ``"3-4"`` -> [3, 4]."""
    text = str(value).strip().lower()
    if text == "all":
        return list(ALL_STAGES)
    try:
        if "-" in text:
            lo, hi = (int(t) for t in text.split("-", 1))
            numbers = list(range(lo, hi + 1))
        else:
            numbers = [int(t) for t in text.split(",")]
    except ValueError:
        raise ConfigError(f"--stage {value!r}: use 0, 1, 2, 3, 4, a range like 3-4, or 'all'") from None
    if not numbers or any(n not in STAGES for n in numbers) or numbers != sorted(set(numbers)):
        raise ConfigError(f"--stage {value!r}: stages must be increasing numbers from 0-4, or 'all'")
    return numbers


def model_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """``parameter_groups()`` of a (possibly DDP-wrapped) model, checked to be disjoint and complete."""
    module: Any = getattr(model, "module", model)
    groups = module.parameter_groups()
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ConfigError(f"model parameter group(s) {unknown} unknown to the trainer; expected {list(GROUPS)}")
    seen: set[int] = set()
    for name, params in groups.items():
        for p in params:
            if id(p) in seen:
                raise ConfigError(f"parameter in group {name!r} also belongs to another group; groups must be disjoint")
            seen.add(id(p))
    missing = [n for n, p in module.named_parameters() if id(p) not in seen]
    if missing:
        raise ConfigError(f"parameters {missing[:5]} are in no parameter group; the trainer cannot schedule them")
    return {name: list(groups.get(name, [])) for name in GROUPS}


def stage_is_applicable(model: nn.Module, stage: Stage) -> bool:
    """False when the stage has nothing to train (e.g. keypoint stages of a holistic-only model)."""
    groups = model_groups(model)
    if stage.part_net_loss:
        return bool(groups["part_nets"])
    if stage.classification_loss:
        return any(groups[g] for g in stage.trainable)
    return bool(groups["keypoint_score"]) and uses_parts(model)


def part_nets_end_to_end(model: nn.Module) -> bool:
    """Whether the model's part nets (if any) are fine-tuned with the rest in stage 4."""
    cfg = getattr(getattr(model, "module", model), "config", None)
    part_nets = getattr(cfg, "part_nets", None)
    return bool(getattr(part_nets, "end_to_end", False))


def has_part_nets(model: nn.Module) -> bool:
    cfg = getattr(getattr(model, "module", model), "config", None)
    return getattr(cfg, "part_nets", None) is not None


def uses_parts(model: nn.Module) -> bool:
    cfg = getattr(getattr(model, "module", model), "config", None)
    return bool(getattr(getattr(cfg, "classification", None), "use_parts", True))


def apply_stage(model: nn.Module, stage: Stage) -> list[nn.Parameter]:
    """Set ``requires_grad`` for ``stage`` and return the trainable parameters.

    A holistic-only model (``use_parts`` off) keeps its localization net frozen in stage 4: nothing uses it; so
    do part nets whose config does not ask for end-to-end fine-tuning.
    """
    groups = model_groups(model)
    trainable = set(stage.trainable)
    if not uses_parts(model):
        trainable -= {"keypoint_score", "localization"}
    if stage.classification_loss and not part_nets_end_to_end(model):
        trainable -= {"part_nets"}
    params: list[nn.Parameter] = []
    for name, group in groups.items():
        for p in group:
            p.requires_grad_(name in trainable)
            if name in trainable:
                params.append(p)
    return params


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, then eval mode on every maximal submodule whose parameters are all frozen."""
    model.train()
    _freeze_modes(getattr(model, "module", model))


def _freeze_modes(module: nn.Module) -> None:
    for child in module.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            child.eval()
        else:
            _freeze_modes(child)


def build_optimizer(model: nn.Module, stage: Stage, scfg: StageConfig, tcfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (or AdamW) with one param group per trainable model group (head groups at ``head_lr``)."""
    apply_stage(model, stage)
    param_groups = []
    for name, params in model_groups(model).items():
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        lr = scfg.head_lr if name in stage.head_groups else scfg.lr
        param_groups.append({"params": params, "lr": lr, "initial_lr": lr, "name": name})
    if not param_groups:
        raise ConfigError(f"stage {stage.number} ({stage.title}) has no parameters to train for this model")
    if tcfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=scfg.lr, betas=(tcfg.momentum, 0.999),
                                 weight_decay=tcfg.weight_decay)
    return torch.optim.SGD(param_groups, lr=scfg.lr, momentum=tcfg.momentum,
                           weight_decay=tcfg.weight_decay, nesterov=tcfg.nesterov)


class WarmupCosine:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine to 0 (or constant) until ``total``."""

    def __init__(self, total: int, warmup: int = 0, schedule: str = "cosine") -> None:
        self.total = max(1, total)
        self.warmup = max(0, min(warmup, self.total - 1))
        self.schedule = schedule

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, scfg: StageConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule over the whole stage (its state_dict holds only numbers, safe to checkpoint)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, scfg.warmup_steps, scfg.schedule))
