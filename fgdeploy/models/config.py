"""Model configuration: frozen dataclasses filled from ``models/<name>.yaml``.

The defaults are the paper's ``cub_vgg16_fc7`` (docs/method.md sections 2-6, 13). Weight files are not
part of the config (they are machine-local paths): pass them to ``create_model(weights=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fgdeploy.config import dataclass_from_dict, load_yaml, resolve_config_path
from fgdeploy.errors import ConfigError
from fgdeploy.tensors import NUM_PARTS

IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)  # RGB, for inputs in [0, 1] (torchvision weights)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)

HOLISTIC_KINDS = ("global_avg", "fc7", "cbp", "none")
POOL_MODES = {"max": 0, "average": 1}  # config name -> op attribute (fgdeploy.tensors.MODE_*)


@dataclass(frozen=True)
class LocalizationConfig:
    """The keypoint (localization) net: a backbone and 1x1 score convs giving P heatmaps."""

    backbone: str = "vgg16"                      # registered backbone name (fgdeploy.models.list_backbones())
    backbone_options: dict[str, Any] = field(default_factory=dict)  # e.g. {fc6_padding: 3} for FCN-8s fusion
    # Taps carrying a 1x1 score conv, coarse to fine. One tap = the paper head (fc7 -> 10x10 at 500).
    # Several = FCN-style fusion: each coarser score map is upsampled bilinearly to the next tap's grid
    # and added; the heatmaps live on the last (finest) tap's grid.
    score_layers: tuple[str, ...] = ("fc7",)

    def __post_init__(self) -> None:
        if not self.score_layers:
            raise ConfigError("localization.score_layers: give at least one layer, e.g. [fc7]")


@dataclass(frozen=True)
class ClassificationConfig:
    """The classification net: part features by coordinate transfer plus a holistic vector."""

    backbone: str = "vgg16"                      # ignored trunk choice when shared_backbone (must then match)
    backbone_options: dict[str, Any] = field(default_factory=dict)
    use_parts: bool = True                       # false: holistic only (the paper-claim ablation)
    transfer_layer: str = "conv5_3"              # feature map F the parts are pooled from (ReLU(conv5_3): 32x32 at 500)
    window: int = 3                              # k x k window on F, clipped at borders
    mode: str = "max"                            # "max" or "average" pooling in the window
    holistic: str = "fc7"                        # global_avg | fc7 (GAP of the fc7 map) | cbp | none (parts only)
    holistic_layer: str | None = None            # layer for global_avg / cbp; None = transfer_layer
    cbp_dim: int = 5000                          # compact bilinear (Random Maclaurin) output dim
    cbp_seed: int = 0                            # seed of the fixed Rademacher projections
    dropout: float = 0.5                         # on the concatenated feature vector, training only
    # Constant multiplying every L2-normalised block before the FC (1 = docs/method.md 6). Unit-norm inputs make
    # tiny logits and tiny trunk gradients under SGD; a scale s acts like an s^2 larger FC learning rate and
    # an s times larger trunk gradient (NormFace-style temperature). Used by the from-scratch demo model.
    feature_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in POOL_MODES:
            raise ConfigError(f"classification.mode: {self.mode!r} is not one of {sorted(POOL_MODES)}")
        if self.holistic not in HOLISTIC_KINDS:
            raise ConfigError(f"classification.holistic: {self.holistic!r} is not one of {list(HOLISTIC_KINDS)}")
        if not self.use_parts and self.holistic == "none":
            raise ConfigError("classification: use_parts is false and holistic is 'none': the classifier has no input")
        if self.window < 1 or self.window % 2 == 0:
            raise ConfigError(f"classification.window: must be an odd int >= 1, got {self.window}")
        if self.cbp_dim < 1:
            raise ConfigError(f"classification.cbp_dim: must be >= 1, got {self.cbp_dim}")
        if self.feature_scale <= 0:
            raise ConfigError(f"classification.feature_scale: must be > 0, got {self.feature_scale}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"classification.dropout: must be in [0, 1), got {self.dropout}")

    @property
    def mode_id(self) -> int:
        """The op's ``mode`` attribute (0 = max, 1 = average)."""
        return POOL_MODES[self.mode]

    @property
    def holistic_source(self) -> str | None:
        """Classification-trunk layer feeding the holistic branch (None when holistic is 'none')."""
        if self.holistic == "none":
            return None
        if self.holistic == "fc7":
            return "fc7"
        return self.holistic_layer or self.transfer_layer


PART_NET_FEATURES = ("global_avg", "fc7", "cbp")


@dataclass(frozen=True)
class PartNetsConfig:
    """Head and body part networks (docs/method.md 7): one trunk per part on a bilinear crop of the model input.

    Each part's box comes from keypoints by the section 7 rule (``fgdeploy.reference.part_boxes``): ground truth
    in training, predicted keypoints and visibility at test. The crop is resized to ``crop_size`` and run
    through the part's own trunk; its feature (average of the ``feature_layer`` map, or compact bilinear of it)
    is one more unit-norm block of the classifier input.
    """

    backbone: str = "vgg16"                      # registered backbone of both part nets
    backbone_options: dict[str, Any] = field(default_factory=dict)
    feature_layer: str = "conv5_3"               # tap the part feature is pooled from ("fc7" for feature fc7)
    feature: str = "cbp"                         # global_avg | fc7 (GAP of the fc7 map) | cbp (compact bilinear)
    cbp_dim: int = 5000
    cbp_seed: int = 1                            # head uses cbp_seed, body cbp_seed + 1
    crop_size: int = 448                         # docs/method.md 7: 224 with fc7 features, 448 with compact bilinear
    padding: float = 0.15                        # box side fraction added on each side
    min_side: float = 32.0                       # smallest box side, input pixels
    dropout: float = 0.5                         # dropout of each part net's own classifier (fine-tuning stage)
    end_to_end: bool = True                      # stage 4 also fine-tunes the part nets (else they stay frozen)

    def __post_init__(self) -> None:
        if self.feature not in PART_NET_FEATURES:
            raise ConfigError(f"part_nets.feature: {self.feature!r} is not one of {list(PART_NET_FEATURES)}")
        if self.crop_size < 8:
            raise ConfigError(f"part_nets.crop_size: must be >= 8 pixels, got {self.crop_size}")
        if not 0.0 <= self.padding <= 1.0:
            raise ConfigError(f"part_nets.padding: must be in [0, 1], got {self.padding}")
        if self.min_side < 1:
            raise ConfigError(f"part_nets.min_side: must be >= 1 pixel, got {self.min_side}")
        if self.cbp_dim < 1:
            raise ConfigError(f"part_nets.cbp_dim: must be >= 1, got {self.cbp_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"part_nets.dropout: must be in [0, 1), got {self.dropout}")

    @property
    def source_layer(self) -> str:
        """The trunk tap the feature reads (fc7 for feature 'fc7')."""
        return "fc7" if self.feature == "fc7" else self.feature_layer


@dataclass(frozen=True)
class ModelConfig:
    """The whole PoseNormalizedNet (docs/method.md sections 1-6)."""

    name: str = "cub_vgg16_fc7"
    input_size: int = 500                        # S: images are warped to S x S
    num_parts: int = NUM_PARTS                   # P heatmaps / part slots (15 for CUB)
    shared_backbone: bool = False                # true: one trunk serves localization and classification
    localization: LocalizationConfig = field(default_factory=LocalizationConfig)
    classification: ClassificationConfig = field(default_factory=ClassificationConfig)
    zero_invisible_parts: bool = True            # at test, zero parts whose max sigmoid < visibility_threshold
    visibility_threshold: float = 0.5
    mean: tuple[float, ...] = IMAGENET_MEAN      # RGB normalisation applied inside the model to [0, 1] inputs
    std: tuple[float, ...] = IMAGENET_STD
    part_nets: PartNetsConfig | None = None      # head/body part networks (docs/method.md 7); None = without

    def __post_init__(self) -> None:
        if self.input_size < 16:
            raise ConfigError(f"input_size: must be >= 16 pixels, got {self.input_size}")
        if self.num_parts < 1:
            raise ConfigError(f"num_parts: must be >= 1, got {self.num_parts}")
        if self.part_nets is not None and self.num_parts != NUM_PARTS:
            raise ConfigError(f"part_nets: the head/body boxes need CUB's {NUM_PARTS} parts, but num_parts is "
                              f"{self.num_parts}; remove part_nets or use the CUB parts")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean/std: need 3 RGB values with std > 0, got mean={self.mean} std={self.std}")
        if not 0.0 < self.visibility_threshold < 1.0:
            raise ConfigError(f"visibility_threshold: must be in (0, 1), got {self.visibility_threshold}")
        if self.shared_backbone and self.classification.backbone != self.localization.backbone:
            raise ConfigError(
                f"shared_backbone: localization.backbone {self.localization.backbone!r} and classification.backbone "
                f"{self.classification.backbone!r} differ; set both to the shared trunk"
            )


def load_model_config(name_or_path: str | Path) -> ModelConfig:
    """Load a model config by name (``models/<name>.yaml``: cub_vgg16_fc7, cub_vgg16_cbp, cub_vgg16_cbp_partnets,
    demo, demo_partnets) or path.

    Raises:
        ConfigError: file not found, unknown key (named, with the valid keys), or a bad value.
    """
    path = resolve_config_path(name_or_path)
    try:
        return dataclass_from_dict(ModelConfig, load_yaml(path), source=str(path))
    except ConfigError as exc:
        if str(path) in str(exc):
            raise
        raise ConfigError(f"{path}: {exc}") from exc


def with_backbone_options(config: ModelConfig, options: dict[str, Any], input_size: int | None = None) -> ModelConfig:
    """``config`` with every net's ``backbone_options`` set to ``options`` (e.g. narrow widths for a small
    model in tests and benchmarks), and optionally another input size."""
    part_nets = config.part_nets
    if part_nets is not None:
        part_nets = replace(part_nets, backbone_options=dict(options))
    return replace(config, input_size=config.input_size if input_size is None else input_size,
                   localization=replace(config.localization, backbone_options=dict(options)),
                   classification=replace(config.classification, backbone_options=dict(options)),
                   part_nets=part_nets)
