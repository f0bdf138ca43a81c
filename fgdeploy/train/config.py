"""Training configuration: a ``TrainConfig`` with one ``StageConfig`` per paper stage (docs/method.md section 8).

Defaults come in two presets: ``small`` (tuned for the ``demo`` config on synth-birds, trains from scratch
on a 2-core CPU) and ``paper`` (docs/method.md section 8 defaults for the ImageNet-initialised VGG-16 configs).
A model YAML may carry a ``train:`` mapping that overrides preset fields; CLI options override both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fgdeploy.config import dataclass_from_dict
from fgdeploy.errors import ConfigError


@dataclass(frozen=True)
class StageConfig:
    """One training stage's length and learning rates."""

    epochs: int = 1            # passes over the training split (0 skips the stage)
    lr: float = 1e-3           # LR of the pre-existing layers this stage trains (trunks)
    head_lr: float = 1e-2      # LR of the new layers (keypoint score conv, classifier FC)
    schedule: str = "cosine"   # "cosine" (to 0 over the stage, per step) or "constant"
    warmup_steps: int = 0      # linear warm-up from 0 over the first steps of the stage

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"stage epochs must be >= 0, got {self.epochs}")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"stage schedule {self.schedule!r} unknown; use 'cosine' or 'constant'")
        if self.lr < 0 or self.head_lr < 0:
            raise ConfigError(f"learning rates must be >= 0, got lr={self.lr}, head_lr={self.head_lr}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything the trainer needs besides the model config and the data folder."""

    seed: int = 0                    # seeds data split, shuffling, augmentation, init and dropout
    batch_size: int = 16             # per process (DDP: global batch = batch_size * world size)
    workers: int = 0                 # DataLoader worker processes
    device: str = "auto"             # "auto" (cuda if available), "cpu", "cuda", "cuda:1"
    val_fraction: float = 0.1        # of the train split, held out (stratified) for validation / best.pt
    augment: bool = True             # flip + scale-crop jitter (docs/method.md section 9) on the train split
    optimizer: str = "sgd"           # "sgd" (docs/method.md section 8) or "adamw"
    momentum: float = 0.9            # SGD momentum (AdamW: beta1)
    weight_decay: float = 5e-4       # on all trained parameters (SGD L2; AdamW decoupled)
    nesterov: bool = False
    kp_loss_weight: float = 1.0      # lambda of L = L_cls + lambda * L_kp in stage 4
    grad_clip: float = 0.0           # max global grad norm; 0 = off
    amp: bool = True                 # float16 autocast + GradScaler on CUDA (ignored on CPU)
    channels_last: bool = False      # NHWC memory format on CUDA
    checkpoint_every: int = 50       # also save last.pt every N optimizer steps mid-epoch (0 = epoch end only)
    calibrate_visibility: bool = True  # fit the model's visibility_threshold on held-out data after localizer epochs
    restore_best: bool = True        # each stage ends with (and the next starts from) its best validation weights
    stage0: StageConfig = field(default_factory=StageConfig)  # part nets alone on ground-truth boxes (part-net models)
    stage1: StageConfig = field(default_factory=StageConfig)  # keypoint score layer on frozen features
    stage2: StageConfig = field(default_factory=StageConfig)  # whole localization net, smaller LR
    stage3: StageConfig = field(default_factory=StageConfig)  # classification trunk + FC on GT parts
    stage4: StageConfig = field(default_factory=StageConfig)  # everything, smaller LR, predicted parts

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer {self.optimizer!r} unknown; use 'sgd' or 'adamw'")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")

    def stage(self, number: int) -> StageConfig:
        """StageConfig of stage 0..4."""
        if number not in (0, 1, 2, 3, 4):
            raise ConfigError(f"stage must be 0, 1, 2, 3 or 4, got {number}")
        return getattr(self, f"stage{number}")


# Tuned for the `demo` config on synth-birds (20 classes x 30 images), bench/fidelity.py: a small backbone trained
# from scratch, so the "frozen features" of stage 1 are random and stage 2 does the localization work (test
# PCK@0.1: 81 % after 20 epochs, 88 % after 35, 89 % after 60; about 2 s per epoch on 2 idle cores). Stage 3 trains
# the classification trunk; the classifier's inputs are unit-norm blocks scaled by feature_scale (8 in demo), so
# its LR is 10x lower than the trunk's (0.05 on the FC diverged for the holistic model: loss 3.2 -> 5.7).
SMALL_PRESET = TrainConfig(
    batch_size=16,
    checkpoint_every=50,
    stage0=StageConfig(epochs=30, lr=0.05, head_lr=0.005, warmup_steps=20),
    stage1=StageConfig(epochs=2, lr=0.0, head_lr=0.1),
    stage2=StageConfig(epochs=60, lr=0.1, head_lr=0.1, warmup_steps=50),
    stage3=StageConfig(epochs=30, lr=0.05, head_lr=0.005, warmup_steps=20),
    stage4=StageConfig(epochs=5, lr=0.005, head_lr=0.0005),
)

# docs/method.md section 8 defaults for ImageNet-initialised VGG-16 (cub_vgg16_fc7, cub_vgg16_cbp).
PAPER_PRESET = TrainConfig(
    batch_size=8,
    checkpoint_every=200,
    stage0=StageConfig(epochs=20, lr=1e-4, head_lr=1e-3),   # part nets from ImageNet VGG-16, like stage 3
    stage1=StageConfig(epochs=10, lr=0.0, head_lr=1e-3),
    stage2=StageConfig(epochs=20, lr=1e-4, head_lr=1e-4),
    stage3=StageConfig(epochs=20, lr=1e-4, head_lr=1e-3),
    stage4=StageConfig(epochs=10, lr=1e-5, head_lr=1e-4),
)

PRESETS: dict[str, TrainConfig] = {"small": SMALL_PRESET, "paper": PAPER_PRESET}


def preset_for_backbone(backbone: str) -> str:
    """'paper' for VGG backbones, 'small' otherwise."""
    return "paper" if backbone.lower().startswith("vgg") else "small"


def build_train_config(
    preset: str = "small", yaml_section: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Preset, then a YAML ``train:`` mapping, then CLI overrides (None values are ignored).

    ``overrides`` may hold top-level TrainConfig fields and ``epochs`` / ``lr`` which apply to every stage
    (``lr`` scales each stage's lr and head_lr so their ratio is kept; see ``scale_lr``).

    Raises:
        ConfigError: unknown preset or key (listing the valid ones), or a bad value.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown training preset {preset!r}; choose from {sorted(PRESETS)}")
    base = dataclasses.asdict(PRESETS[preset])
    merged = _deep_merge(base, yaml_section or {})
    cfg = dataclass_from_dict(TrainConfig, merged, source="train")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    epochs = overrides.pop("epochs", None)
    lr = overrides.pop("lr", None)
    if overrides:
        cfg = dataclass_from_dict(TrainConfig, {**dataclasses.asdict(cfg), **overrides}, source="options")
    for n in (0, 1, 2, 3, 4):
        stage = cfg.stage(n)
        if epochs is not None:
            stage = dataclasses.replace(stage, epochs=int(epochs))
        if lr is not None:
            stage = scale_lr(stage, float(lr))
        cfg = _with_stage(cfg, n, stage)
    return cfg


def _with_stage(cfg: TrainConfig, number: int, stage: StageConfig) -> TrainConfig:
    """``cfg`` with stage ``number`` replaced."""
    fields: dict[str, Any] = {f"stage{number}": stage}
    return dataclasses.replace(cfg, **fields)


def scale_lr(stage: StageConfig, lr: float) -> StageConfig:
    """Set the stage's base LR to ``lr``; head_lr keeps its ratio to lr (or becomes lr when lr was 0)."""
    if stage.lr > 0:
        return dataclasses.replace(stage, lr=lr, head_lr=stage.head_lr * lr / stage.lr)
    return dataclasses.replace(stage, head_lr=lr)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
