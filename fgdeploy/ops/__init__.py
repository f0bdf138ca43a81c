"""fgdeploy.ops: custom torch ops (importing this registers ``torch.ops.fgdeploy.*``)."""

from fgdeploy.ops.coordinate_transfer import coordinate_transfer

__all__ = ["coordinate_transfer"]
