"""The runner interface every backend implements (modelled on Polygraphy's BaseRunner).

A runner is cheap to construct (a path or an object); ``activate`` builds sessions/engines and
``deactivate`` frees what the runner built. ``infer`` validates the feed dict against
``input_specs`` (names, dtype, shape) before calling the backend, and returns arrays the caller owns.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fgdeploy.errors import FgdeployError


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of an input; -1 (or None) marks a dynamic dimension."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    def check(self, array: np.ndarray) -> str | None:
        """Return why ``array`` does not fit this spec, or None when it fits."""
        if np.dtype(array.dtype) != np.dtype(self.dtype):
            return f"{self.name}: expected dtype {np.dtype(self.dtype).name}, got {array.dtype}"
        if array.ndim != len(self.shape):
            return f"{self.name}: expected rank {len(self.shape)} {self.shape}, got shape {array.shape}"
        for want, got in zip(self.shape, array.shape):
            if want not in (-1, None) and want != got:
                return f"{self.name}: expected shape {self.shape} (-1 = any), got {array.shape}"
        return None


class RunnerError(FgdeployError):
    """A runner was misused (not activated, wrong inputs) or its backend failed."""


class Runner(abc.ABC):
    """Base class: state checks and input validation live here; backends override the ``_`` methods.

    Attributes:
        name: label used in logs and reports, e.g. "ort-cpu-fp32", "trt-fp16".
        last_latency_ms: wall time of the last ``infer`` call (after device sync), or None.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.last_latency_ms: float | None = None
        self._active = False

    # --- public API, written once -------------------------------------------------------------
    def activate(self) -> None:
        """Load/build what inference needs. Calling it twice is an error."""
        if self._active:
            raise RunnerError(f"runner {self.name} is already active")
        self._activate()
        self._active = True

    def deactivate(self) -> None:
        """Free what ``activate`` built. Safe to call on an inactive runner."""
        if self._active:
            self._active = False
            self._deactivate()

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    @property
    def is_active(self) -> bool:
        return self._active

    def input_specs(self) -> dict[str, TensorSpec]:
        """Expected inputs by name."""
        self._require_active()
        return self._input_specs()

    def metadata(self) -> dict[str, Any]:
        """What the artifact records: class_names, part_names, input_size, ... (may be empty)."""
        self._require_active()
        return self._metadata()

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch.

        Args:
            feeds: input name -> array; must match ``input_specs()`` exactly.

        Returns:
            Output name -> array (owned by the caller), names from ``fgdeploy.tensors``.

        Raises:
            RunnerError: runner not active, or the feeds do not match the specs (the message lists them).
        """
        self._require_active()
        specs = self._input_specs()
        missing = sorted(set(specs) - set(feeds))
        extra = sorted(set(feeds) - set(specs))
        problems = [f"missing input(s) {missing}"] if missing else []
        problems += [f"unexpected input(s) {extra}"] if extra else []
        problems += [p for name, a in feeds.items() if name in specs and (p := specs[name].check(np.asarray(a)))]
        if problems:
            expected = ", ".join(f"{s.name}: {np.dtype(s.dtype).name}{list(s.shape)}" for s in specs.values())
            raise RunnerError(f"{self.name}: bad inputs: {'; '.join(problems)}. Expected: {expected}")
        start = time.perf_counter()
        outputs = self._infer(feeds)
        self.last_latency_ms = (time.perf_counter() - start) * 1000.0
        return outputs

    def _require_active(self) -> None:
        if not self._active:
            raise RunnerError(f"runner {self.name} is not active: use it as a context manager or call activate()")

    # --- to implement ---------------------------------------------------------------------------
    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...

    @abc.abstractmethod
    def _input_specs(self) -> dict[str, TensorSpec]: ...

    @abc.abstractmethod
    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the batch and return host arrays; synchronise the device before returning."""

    def _metadata(self) -> dict[str, Any]:
        return {}


def image_input_spec(runner: Runner) -> TensorSpec:
    """The ``images`` input of an fgdeploy model (active ``runner``).

    Raises:
        RunnerError: the artifact has no such input: it is not an fgdeploy export (names its inputs).
    """
    from fgdeploy.tensors import INPUT_IMAGES

    specs = runner.input_specs()
    if INPUT_IMAGES not in specs:
        raise RunnerError(f"{runner.name}: the model has no {INPUT_IMAGES!r} input (its inputs: {sorted(specs)}), so "
                          "it is not an fgdeploy model; export one with `fgdeploy export CKPT -o model.onnx`")
    return specs[INPUT_IMAGES]
