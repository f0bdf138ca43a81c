"""fgdeploy.reference: the NumPy oracle (no torch import) every other implementation is tested against.

Caffe-style layers with ``setup`` / ``forward`` / ``backward``, registered by op name::

    from fgdeploy.reference import create_layer
    layer = create_layer("CoordinateTransfer", window=3, mode=0)
    (pooled,) = layer.forward([heatmaps, features])
"""

from fgdeploy.reference.base import Layer
from fgdeploy.reference.compact_bilinear import CompactBilinearRM
from fgdeploy.reference.coordinate_transfer import CoordinateTransfer, coordinate_transfer
from fgdeploy.reference.keypoint_loss import KeypointSigmoidCrossEntropy, keypoint_targets
from fgdeploy.reference.part_crop import PartCrop
from fgdeploy.reference.registry import LAYERS, create_layer, list_layers, register

__all__ = [
    "LAYERS", "Layer", "CompactBilinearRM", "CoordinateTransfer", "KeypointSigmoidCrossEntropy", "PartCrop",
    "coordinate_transfer", "create_layer", "keypoint_targets", "list_layers", "register",
]
