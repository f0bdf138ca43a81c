"""Caffe-style layer interface of the NumPy reference (no torch here, by design).

A layer is configured by keyword parameters, then ``setup(bottom_shapes)`` checks the input shapes and
returns the top shapes; ``forward(bottoms)`` returns the tops; ``backward(top_diffs, bottoms)`` returns one
gradient per bottom, or None for a bottom that receives no gradient (e.g. heatmaps, targets).
Arrays are NCHW; every layer computes in float64 when given float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

Shape = tuple[int, ...]


class Layer:
    """Base class: shape bookkeeping shared by all reference layers."""

    op_name: ClassVar[str] = ""
    num_bottoms: ClassVar[int] = 1

    def __init__(self) -> None:
        self.bottom_shapes: list[Shape] | None = None
        self.top_shapes: list[Shape] | None = None

    def setup(self, bottom_shapes: Sequence[Sequence[int]]) -> list[Shape]:
        """Validate the bottom shapes and return the top shapes (also stored on the layer)."""
        shapes = [tuple(int(s) for s in shape) for shape in bottom_shapes]
        if len(shapes) != self.num_bottoms:
            raise ValueError(f"{self.op_name}: expected {self.num_bottoms} inputs, got {len(shapes)}")
        self.top_shapes = self._setup(shapes)
        self.bottom_shapes = shapes
        return self.top_shapes

    def _setup(self, shapes: list[Shape]) -> list[Shape]:
        raise NotImplementedError

    def _ensure_setup(self, bottoms: Sequence[np.ndarray]) -> None:
        """Re-run setup when the bottom shapes differ from the last setup (Caffe's Reshape)."""
        shapes = [tuple(b.shape) for b in bottoms]
        if self.bottom_shapes != shapes:
            self.setup(shapes)

    def forward(self, bottoms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Compute the tops from the bottoms."""
        raise NotImplementedError

    def backward(self, top_diffs: Sequence[np.ndarray], bottoms: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """Gradients of the bottoms given the gradients of the tops (None: no gradient to that bottom)."""
        raise NotImplementedError
