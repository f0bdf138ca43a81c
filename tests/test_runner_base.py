"""Runner base class: state checks and feed validation, with a tiny in-memory backend."""

from collections.abc import Mapping

import numpy as np
import pytest

from fgdeploy.backends.base import Runner, RunnerError, TensorSpec


class DoublingRunner(Runner):
    def __init__(self):
        super().__init__("double")
        self.freed = False

    def _activate(self):
        self.freed = False

    def _deactivate(self):
        self.freed = True

    def _input_specs(self):
        return {"images": TensorSpec("images", np.dtype(np.float32), (-1, 3))}

    def _infer(self, feeds: Mapping[str, np.ndarray]):
        return {"out": feeds["images"] * 2}


def test_runner_requires_activation():
    with pytest.raises(RunnerError, match="not active"):
        DoublingRunner().infer({"images": np.ones((1, 3), np.float32)})


def test_runner_context_manager_activates_and_frees():
    runner = DoublingRunner()
    with runner:
        out = runner.infer({"images": np.full((2, 3), 1.5, np.float32)})
        assert runner.last_latency_ms is not None
    np.testing.assert_array_equal(out["out"], np.full((2, 3), 3.0, np.float32))
    assert runner.freed and not runner.is_active


@pytest.mark.parametrize(
    "feeds, message",
    [
        ({}, r"missing input\(s\) \['images'\]"),
        ({"images": np.ones((1, 3), np.float32), "x": np.ones(1)}, r"unexpected input\(s\) \['x'\]"),
        ({"images": np.ones((1, 3), np.float64)}, "expected dtype float32, got float64"),
        ({"images": np.ones((1, 4), np.float32)}, r"expected shape \(-1, 3\)"),
    ],
)
def test_runner_rejects_bad_feeds_and_lists_expected(feeds, message):
    with DoublingRunner() as runner, pytest.raises(RunnerError, match=message) as info:
        runner.infer(feeds)
    assert "Expected: images: float32[-1, 3]" in str(info.value)
