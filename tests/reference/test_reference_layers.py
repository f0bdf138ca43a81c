"""The NumPy reference on its own: registry, hand-computed cases, finite differences, no torch import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fgdeploy.reference import create_layer, list_layers
from fgdeploy.reference.compact_bilinear import rademacher
from fgdeploy.reference.coordinate_transfer import coordinate_transfer, make_coordinate_transfer_inputs
from fgdeploy.reference.gradcheck import check_layer_gradients, numeric_gradient
from fgdeploy.reference.keypoint_loss import keypoint_targets, softplus


def test_reference_imports_no_torch():
    code = "import sys, fgdeploy.reference, fgdeploy.reference.metrics, fgdeploy.reference.gradcheck; " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registry_lists_layers_and_rejects_unknown_names():
    assert {"CoordinateTransfer", "KeypointSigmoidCrossEntropy", "CompactBilinearRM"} <= set(list_layers())
    layer = create_layer("CoordinateTransfer", window=5, mode=1)
    assert (layer.window, layer.mode, layer.op_name) == (5, 1, "CoordinateTransfer")
    with pytest.raises(KeyError, match="registered: "):
        create_layer("RoiAlign")


def test_setup_returns_top_shapes_and_validates():
    layer = create_layer("CoordinateTransfer")
    assert layer.setup([(2, 15, 10, 10), (2, 512, 32, 32)]) == [(2, 15, 512)]
    with pytest.raises(ValueError, match="batch sizes differ"):
        layer.setup([(2, 15, 10, 10), (3, 512, 32, 32)])
    with pytest.raises(ValueError, match="odd int"):
        create_layer("CoordinateTransfer", window=4)
    loss = create_layer("KeypointSigmoidCrossEntropy")
    assert loss.setup([(2, 3, 4, 4), (2, 3, 4, 4)]) == [()]
    w = rademacher(np.random.default_rng(0), 7, 5)
    assert create_layer("CompactBilinearRM", w1=w, w2=w).setup([(2, 5, 3, 3)]) == [(2, 7)]


def _grid(h: int, w: int) -> np.ndarray:
    base = np.arange(h)[:, None] * 10.0 + np.arange(w)[None, :] + 1
    return np.stack([base, -base])[None]


def test_coordinate_transfer_reference_hand_computed():
    feats = _grid(4, 5)
    heat = np.full((1, 3, 4, 5), -1.0)
    heat[0, 0, 0, 0] = 3.0  # corner
    heat[0, 1, 2, 2] = 3.0  # interior
    heat[0, 2, 3, 1] = heat[0, 2, 1, 4] = 3.0  # tie: (1, 4) comes first in row-major order
    np.testing.assert_array_equal(coordinate_transfer(heat, feats, 3, 0)[0],
                                  [[12.0, -1.0], [34.0, -12.0], [25.0, -4.0]])
    np.testing.assert_array_equal(coordinate_transfer(heat, feats, 3, 1)[0],
                                  [[6.5, -6.5], [23.0, -23.0], [14.5, -14.5]])
    np.testing.assert_array_equal(coordinate_transfer(heat, feats, 1, 0)[0, :, 0], [1.0, 23.0, 15.0])
    # k = 5 around the interior cell (2, 2) covers the whole 4 x 5 grid
    np.testing.assert_allclose(coordinate_transfer(heat, feats, 5, 1)[0, 1, 0], np.mean(feats[0, 0, :, 0:5]))


def test_coordinate_transfer_reference_backward_hand_computed():
    layer = create_layer("CoordinateTransfer", window=3, mode=0)
    feats = np.full((1, 1, 5, 5), 0.5)
    feats[0, 0, 1, 2] = feats[0, 0, 2, 1] = 4.0  # tie, (1, 2) first
    heat = np.full((1, 3, 5, 5), -1.0)
    heat[0, 0, 2, 2] = heat[0, 1, 2, 2] = 1.0  # two parts share a window: gradients add up
    heat[0, 2, 4, 4] = 1.0
    none, grad = layer.backward([np.array([[[1.5], [2.0], [7.0]]])], [heat, feats])
    assert none is None
    expected = np.zeros((5, 5))
    expected[1, 2], expected[3, 3] = 3.5, 7.0
    np.testing.assert_array_equal(grad[0, 0], expected)
    avg = create_layer("CoordinateTransfer", window=3, mode=1)
    grad = avg.backward([np.array([[[1.0], [0.0], [8.0]]])], [heat, feats])[1]
    expected = np.zeros((5, 5))
    expected[1:4, 1:4] = 1.0 / 9
    expected[3:5, 3:5] += 2.0
    np.testing.assert_allclose(grad[0, 0], expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("window", [1, 3, 5])
@pytest.mark.parametrize("mode", [0, 1])
def test_coordinate_transfer_reference_backward_matches_finite_differences(window, mode):
    rng = np.random.default_rng(window * 10 + mode)
    heat, feats = make_coordinate_transfer_inputs(rng, 2, 10, (5, 4), 2, (3, 6))
    layer = create_layer("CoordinateTransfer", window=window, mode=mode)
    (result,) = check_layer_gradients(layer, [heat, feats], atol=1e-8, rtol=1e-6)
    assert result.bottom == 1 and result.passed, result


def test_input_maker_plants_corners_edges_and_ties_and_never_zeros():
    rng = np.random.default_rng(0)
    heat, feats = make_coordinate_transfer_inputs(rng, 2, 10, (4, 6), 3, (5, 5), feature_ties=True)
    assert np.all(heat != 0) and np.all(feats != 0)
    firsts = [divmod(int(np.argmax(heat[0, q])), 6) for q in range(10)]
    assert firsts[1:5] == [(0, 0), (0, 5), (3, 0), (3, 5)]
    assert all(i == 0 for i, _ in firsts[5:6]) and all(j == 5 for _, j in firsts[8:9])
    tie_count = np.sum(heat[0, 9] == heat[0, 9].max())
    assert tie_count >= 1 and heat[0, 9, 3].max() == heat[0, 9].max()
    windows = feats[:, :, :3, :3].reshape(2, 3, -1)
    assert any(np.sum(w == w.max()) > 1 for w in windows.reshape(6, 9))


def test_keypoint_loss_reference_hand_computed_and_finite_differences():
    z = np.array([[[[2.0, -1.0]], [[0.5, 3.0]]]])
    t = np.array([[[[1.0, 0.0]], [[0.0, 0.0]]]])
    (loss,) = create_layer("KeypointSigmoidCrossEntropy").forward([z, t])
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0)) + np.log1p(np.exp(0.5)) + np.log1p(np.exp(3.0))) / 2
    assert loss.shape == () and loss == pytest.approx(expected, rel=1e-14)
    assert np.all(np.isfinite(softplus(np.array([-800.0, 800.0]))))
    rng = np.random.default_rng(1)
    z = rng.standard_normal((2, 3, 4, 5)) * 3
    t = (rng.random((2, 3, 4, 5)) > 0.8).astype(np.float64)
    for pos_weight in (None, 4.0):
        results = check_layer_gradients(create_layer("KeypointSigmoidCrossEntropy", pos_weight=pos_weight), [z, t])
        assert [r.bottom for r in results] == [0] and all(results)


def test_keypoint_targets_reference_one_positive_per_visible_part():
    uv = np.array([[[10.0, 490.0], [250.0, 250.0], [3.0, 3.0]]])
    t = keypoint_targets(uv, np.array([[True, True, False]]), (10, 10), 500)
    assert t[0, 0, 9, 0] == 1 and t[0, 1, 5, 5] == 1 and t[0, 2].sum() == 0
    assert t.sum() == 2


@pytest.mark.parametrize("hw", [(2, 2), (3, 4)])
def test_compact_bilinear_reference_backward_matches_finite_differences(hw):
    rng = np.random.default_rng(3)
    w1, w2 = rademacher(rng, 9, 4), rademacher(rng, 9, 4)
    layer = create_layer("CompactBilinearRM", w1=w1, w2=w2)
    x = rng.standard_normal((2, 4) + hw)
    (z,) = layer.forward([x])
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-12)
    (result,) = check_layer_gradients(layer, [x], atol=1e-7, rtol=1e-5)
    assert result.passed, result


def test_compact_bilinear_reference_estimates_squared_dot_product():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((200, 16))
    y = x + 0.5 * rng.standard_normal((200, 16))
    exact = np.sum(x * y, axis=1) ** 2
    from fgdeploy.reference.compact_bilinear import random_maclaurin
    errors = []
    for d in (32, 256, 2048):
        w1, w2 = rademacher(rng, d, 16), rademacher(rng, d, 16)
        est = np.sum(random_maclaurin(x, w1, w2) * random_maclaurin(y, w1, w2), axis=1)
        errors.append(np.mean(np.abs(est - exact)) / exact.mean())
    assert errors[0] > errors[1] > errors[2] and errors[2] < errors[0] / 4


def test_numeric_gradient_of_a_known_function():
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    g = numeric_gradient(lambda a: float(np.sum(a ** 3)), x)
    np.testing.assert_allclose(g, 3 * x ** 2, rtol=1e-8)
    np.testing.assert_array_equal(x, [[1.0, -2.0], [0.5, 3.0]])  # restored
