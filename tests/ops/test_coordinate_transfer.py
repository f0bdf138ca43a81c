"""The torch CoordinateTransfer op on its own: hand-computed cases, gradcheck, dtypes, errors, export, compile."""

from __future__ import annotations

import pytest
import torch

from fgdeploy.ops import coordinate_transfer

torch.set_num_threads(2)


def _rand(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def _grid_features(h: int, w: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(1, 2, h, w): channel 0 = 10 * row + col + 1, channel 1 = its negative."""
    base = (torch.arange(h, dtype=dtype)[:, None] * 10 + torch.arange(w, dtype=dtype)[None, :] + 1)
    return torch.stack([base, -base])[None]


def test_coordinate_transfer_hand_computed_max_and_average_at_corner_and_centre():
    feats = _grid_features(4, 5)
    heat = torch.full((1, 2, 4, 5), -1.0, dtype=torch.float64)
    heat[0, 0, 0, 0] = 3.0  # corner: window rows 0..1, cols 0..1 (clipped)
    heat[0, 1, 2, 2] = 3.0  # interior: rows 1..3, cols 1..3
    out = coordinate_transfer(heat, feats, 3, 0)
    # max of channel 0 = bottom-right of the window; channel 1 = -(top-left).
    assert out[0, 0].tolist() == [12.0, -1.0]
    assert out[0, 1].tolist() == [34.0, -12.0]
    avg = coordinate_transfer(heat, feats, 3, 1)
    # corner window cells 1, 2, 11, 12 -> 6.5 (divided by 4 valid cells, not 9)
    assert avg[0, 0].tolist() == [6.5, -6.5]
    assert avg[0, 1].tolist() == [23.0, -23.0]


def test_coordinate_transfer_heatmap_tie_picks_first_in_row_major_order():
    feats = _grid_features(6, 6)
    heat = _rand(1, 1, 6, 6, seed=1).abs() * 0.1
    heat[0, 0, 4, 1] = 2.0
    heat[0, 0, 1, 5] = 2.0  # earlier in row-major order -> wins
    heat[0, 0, 5, 0] = 2.0
    out = coordinate_transfer(heat, feats, 1, 0)
    assert out[0, 0, 0].item() == 16.0  # row 1, col 5


def test_coordinate_transfer_centre_mapping_when_heatmap_finer_than_features():
    # Hh=8 > Hf=3: cy = ((2 i + 1) * 3) // 16 ; i = 7 -> 45 // 16 = 2 ; i = 2 -> 15 // 16 = 0
    feats = _grid_features(3, 3)
    heat = torch.zeros(1, 2, 8, 8, dtype=torch.float64) - 1
    heat[0, 0, 7, 2] = 1.0  # cx = 15 // 16 = 0
    heat[0, 1, 2, 5] = 1.0  # cy = 0, cx = 33 // 16 = 2
    out = coordinate_transfer(heat, feats, 1, 0)
    assert out[0, :, 0].tolist() == [21.0, 3.0]


def test_coordinate_transfer_max_gradient_goes_to_first_max_cell_and_overlaps_add_up():
    feats = torch.zeros(1, 1, 5, 5, dtype=torch.float64) + 0.5
    feats[0, 0, 1, 2] = 4.0
    feats[0, 0, 2, 1] = 4.0  # tie with (1, 2); (1, 2) is first in row-major order
    feats.requires_grad_(True)
    heat = torch.zeros(1, 3, 5, 5, dtype=torch.float64) - 1
    heat[0, 0, 2, 2] = 1.0
    heat[0, 1, 2, 2] = 1.0  # same window as part 0
    heat[0, 2, 4, 4] = 1.0  # window rows/cols 3..4: all 0.5 -> first cell (3, 3)
    out = coordinate_transfer(heat, feats, 3, 0)
    out.backward(torch.tensor([[[1.5], [2.0], [7.0]]], dtype=torch.float64))
    expected = torch.zeros(5, 5, dtype=torch.float64)
    expected[1, 2] = 3.5
    expected[3, 3] = 7.0
    torch.testing.assert_close(feats.grad[0, 0], expected, rtol=0, atol=0)


def test_coordinate_transfer_average_gradient_divides_by_valid_cells():
    feats = _rand(1, 2, 4, 4, seed=3).requires_grad_(True)
    heat = torch.zeros(1, 1, 4, 4, dtype=torch.float64) - 1
    heat[0, 0, 0, 3] = 1.0  # top-right corner: 2 x 2 valid cells for k = 3
    coordinate_transfer(heat, feats, 3, 1).sum().backward()
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[0:2, 2:4] = 0.25
    torch.testing.assert_close(feats.grad[0, 1], expected, rtol=0, atol=0)


@pytest.mark.parametrize("window", [1, 3, 5])
@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("shapes", [((1, 15, 4, 5), (1, 3, 6, 4)), ((7, 2, 7, 6), (7, 2, 3, 5))])
def test_coordinate_transfer_gradcheck(window, mode, shapes):
    (n, p, hh, wh), (_, c, hf, wf) = shapes
    heat = _rand(n, p, hh, wh, seed=10 + window)
    heat[0, 0, 0, 0] = heat.max() + 1  # a corner
    heat[-1, -1, hh - 1, wh - 1] = heat.max() + 1  # the opposite corner
    feats = _rand(n, c, hf, wf, seed=20 + mode).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: coordinate_transfer(heat, f, window, mode), (feats,))
    if window == 3:  # the backward is differentiable too (double backward)
        assert torch.autograd.gradgradcheck(lambda f: coordinate_transfer(heat, f, window, mode), (feats,))


def test_coordinate_transfer_gives_no_gradient_to_heatmaps():
    heat = _rand(2, 3, 4, 4, seed=4).requires_grad_(True)
    feats = _rand(2, 5, 4, 4, seed=5).requires_grad_(True)
    coordinate_transfer(heat, feats).sum().backward()
    assert heat.grad is None
    assert feats.grad is not None and feats.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", [0, 1])
def test_coordinate_transfer_low_precision_matches_float64(dtype, mode):
    heat = _rand(3, 15, 5, 6, seed=6).to(dtype)
    feats = _rand(3, 8, 9, 7, seed=7).to(dtype).requires_grad_(True)
    out = coordinate_transfer(heat, feats, 3, mode)
    assert out.dtype == dtype and out.shape == (3, 15, 8)
    ref_feats = feats.detach().double().requires_grad_(True)
    ref = coordinate_transfer(heat.double(), ref_feats, 3, mode)
    tol = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    grad = _rand(3, 15, 8, seed=8)
    out.backward(grad.to(dtype))
    ref.backward(grad.to(dtype).double())
    torch.testing.assert_close(feats.grad.double(), ref_feats.grad, rtol=tol, atol=tol)


def test_coordinate_transfer_average_accumulates_in_float32_for_float16():
    # 25 cells of 1000 + small offsets: a float16 running sum would lose the offsets.
    feats = torch.full((1, 1, 5, 5), 1000.0) + torch.arange(25.0).reshape(1, 1, 5, 5) / 8
    heat = torch.zeros(1, 1, 5, 5)
    heat[0, 0, 2, 2] = 1
    out = coordinate_transfer(heat.half(), feats.half(), 5, 1)
    expected = feats.half().float().mean()
    assert out.item() == expected.half().item()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"window": 2}, ValueError, "odd int"),
        ({"window": 0}, ValueError, "odd int"),
        ({"mode": 2}, ValueError, "mode must be"),
        ({"heat_shape": (2, 3, 4)}, ValueError, "heatmaps must be 4-D"),
        ({"feat_shape": (2, 3, 4)}, ValueError, "features must be 4-D"),
        ({"feat_shape": (3, 5, 4, 4)}, ValueError, "batch sizes differ"),
        ({"heat_dtype": torch.float64}, TypeError, "same dtype"),
    ],
)
def test_coordinate_transfer_rejects_bad_arguments(kwargs, exc, match):
    heat = torch.rand(kwargs.get("heat_shape", (2, 3, 4, 4)), dtype=kwargs.get("heat_dtype", torch.float32))
    feats = torch.rand(kwargs.get("feat_shape", (2, 5, 4, 4)))
    with pytest.raises(exc, match=match):
        coordinate_transfer(heat, feats, kwargs.get("window", 3), kwargs.get("mode", 0))
    with pytest.raises(exc, match=match):  # the registered op validates too
        torch.ops.fgdeploy.coordinate_transfer(heat, feats, kwargs.get("window", 3), kwargs.get("mode", 0))


def test_coordinate_transfer_opcheck():
    heat = _rand(2, 3, 4, 5, seed=9)
    feats = _rand(2, 4, 6, 3, seed=10).requires_grad_(True)
    torch.library.opcheck(torch.ops.fgdeploy.coordinate_transfer.default, (heat, feats, 3, 0))


class _Tiny(torch.nn.Module):
    def __init__(self, mode: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.mode = mode

    def forward(self, heat: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        feats = torch.relu(self.conv(image))
        return coordinate_transfer(heat, feats, 3, self.mode).flatten(1)


def test_coordinate_transfer_torch_export_keeps_one_op_node():
    model = _Tiny(mode=1).eval()
    heat, image = _rand(2, 15, 5, 5, seed=11).float(), _rand(2, 3, 8, 8, seed=12).float()
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (heat, image), dynamic_shapes=({0: batch}, {0: batch}))
    for graph in (ep.graph, ep.run_decompositions().graph):
        nodes = [n for n in graph.nodes if n.op == "call_function"
                 and n.target is torch.ops.fgdeploy.coordinate_transfer.default]
        assert len(nodes) == 1
    heat3, image3 = _rand(3, 15, 5, 5, seed=13).float(), _rand(3, 3, 8, 8, seed=14).float()
    torch.testing.assert_close(ep.module()(heat3, image3), model(heat3, image3), rtol=0, atol=0)


@pytest.mark.parametrize("mode", [0, 1])
def test_coordinate_transfer_compile_fullgraph_matches_eager(mode):
    torch._dynamo.reset()
    model = _Tiny(mode=mode)
    heat, image = _rand(2, 15, 5, 5, seed=15).float(), _rand(2, 3, 8, 8, seed=16).float()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out_c = compiled(heat, image)
    out_e = model(heat, image)
    torch.testing.assert_close(out_c, out_e)
    (g_c,) = torch.autograd.grad(out_c.square().sum(), model.conv.weight)
    (g_e,) = torch.autograd.grad(out_e.square().sum(), model.conv.weight)
    torch.testing.assert_close(g_c, g_e)
