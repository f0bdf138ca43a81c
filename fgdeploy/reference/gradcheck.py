"""Finite-difference gradient check of reference layers (central differences in float64)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fgdeploy.reference.base import Layer

__all__ = ["GradCheckResult", "numeric_gradient", "check_layer_gradients"]


@dataclass
class GradCheckResult:
    """Analytic vs numeric gradient of one bottom."""

    bottom: int
    max_abs_error: float
    max_rel_error: float
    passed: bool

    def __bool__(self) -> bool:
        return self.passed


def numeric_gradient(fn: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d fn / d x by central differences, one element at a time (x is float64, restored afterwards)."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        up = fn(x)
        flat[k] = old - eps
        down = fn(x)
        flat[k] = old
        gflat[k] = (up - down) / (2.0 * eps)
    return grad


def check_layer_gradients(
    layer: Layer,
    bottoms: Sequence[np.ndarray],
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    seed: int = 0,
) -> list[GradCheckResult]:
    """Compare ``layer.backward`` with finite differences of f = sum_t <top_t, R_t> for random R_t.

    Bottoms for which ``backward`` returns None (no gradient by contract) are skipped.

    Args:
        layer: a reference layer.
        bottoms: its inputs; copied to float64.
        eps: finite-difference step. Defaults to 1e-6.
        atol, rtol: pass if |analytic - numeric| <= atol + rtol |numeric| everywhere.
        seed: seed of the random top projections R_t.

    Returns:
        One result per checked bottom.
    """
    xs = [np.array(b, dtype=np.float64) for b in bottoms]
    tops = layer.forward(xs)
    rng = np.random.default_rng(seed)
    projections = [rng.standard_normal(np.shape(t)) for t in tops]

    def objective(_: np.ndarray) -> float:
        return float(sum(np.sum(t * r) for t, r in zip(layer.forward(xs), projections)))

    analytic = layer.backward(projections, xs)
    results = []
    for index, grad in enumerate(analytic):
        if grad is None:
            continue
        numeric = numeric_gradient(objective, xs[index], eps)
        err = np.abs(np.asarray(grad, dtype=np.float64) - numeric)
        rel = err / np.maximum(np.abs(numeric), 1e-12)
        ok = bool(np.all(err <= atol + rtol * np.abs(numeric)))
        results.append(GradCheckResult(index, float(err.max(initial=0.0)), float(rel.max(initial=0.0)), ok))
    return results
