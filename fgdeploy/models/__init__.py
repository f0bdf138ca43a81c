"""fgdeploy.models: backbones, heads and the pose-normalized classification model.

``create_model(load_model_config("demo"), num_classes)`` builds a PoseNormalizedNet; backbones are
registered by name (``list_backbones()``) and built with ``create_backbone``.
"""

from fgdeploy.models.config import (
    ClassificationConfig, LocalizationConfig, ModelConfig, PartNetsConfig, load_model_config,
    with_backbone_options,
)
from fgdeploy.models.model import PARAMETER_GROUPS, PoseNormalizedNet, create_model
from fgdeploy.models.registry import backbone_options, create_backbone, list_backbones, register_backbone

__all__ = [
    "PARAMETER_GROUPS",
    "ClassificationConfig",
    "LocalizationConfig",
    "ModelConfig",
    "PartNetsConfig",
    "PoseNormalizedNet",
    "backbone_options",
    "create_backbone",
    "create_model",
    "list_backbones",
    "load_model_config",
    "register_backbone",
    "with_backbone_options",
]
