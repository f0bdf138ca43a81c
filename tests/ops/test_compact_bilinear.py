"""CompactBilinearRM (torch side; parity with the NumPy reference in tests/reference)."""

from __future__ import annotations

import pytest
import torch

from fgdeploy.models.compact_bilinear import CompactBilinearRM


def test_compact_bilinear_projections_are_seeded_rademacher_buffers():
    a, b = CompactBilinearRM(16, 64, seed=3), CompactBilinearRM(16, 64, seed=3)
    assert set(a.state_dict()) == {"w1", "w2"}
    assert torch.equal(a.w1, b.w1) and torch.equal(a.w2, b.w2)
    assert not torch.equal(a.w1, CompactBilinearRM(16, 64, seed=4).w1)
    assert not torch.equal(a.w1, a.w2)
    assert set(a.w1.unique().tolist()) == {-1.0, 1.0}
    assert list(a.parameters()) == []


def test_compact_bilinear_rm_inner_product_estimates_squared_dot_with_shrinking_error():
    g = torch.Generator().manual_seed(0)
    c, pairs = 32, 300
    x = torch.randn(pairs, c, generator=g, dtype=torch.float64)
    y = x + 0.7 * torch.randn(pairs, c, generator=g, dtype=torch.float64)
    exact = (x * y).sum(1) ** 2
    errors, biases = [], []
    for dim in (64, 512, 4096):
        m = CompactBilinearRM(c, dim, seed=11).double()
        est = (m.random_maclaurin(x) * m.random_maclaurin(y)).sum(1)
        rel = (est - exact) / exact.mean()
        errors.append(rel.abs().mean().item())
        biases.append(rel.mean().item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < errors[0] / 5  # ~ 1/sqrt(d): expect ~ 1/8
    assert abs(biases[2]) < 0.05  # unbiased


@pytest.mark.parametrize("hw", [(1, 3), (3, 3)])  # HW <= C (projection path) and HW > C (Gram path)
def test_compact_bilinear_forward_is_unit_norm_and_gradchecks(hw):
    g = torch.Generator().manual_seed(2)
    m = CompactBilinearRM(4, 12, seed=5).double()
    x = torch.randn(2, 4, *hw, generator=g, dtype=torch.float64).requires_grad_(True)
    out = m(x)
    assert out.shape == (2, 12)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2, dtype=torch.float64))
    assert torch.autograd.gradcheck(m, (x,))


def test_compact_bilinear_gram_and_projection_paths_agree():
    g = torch.Generator().manual_seed(3)
    m = CompactBilinearRM(4, 30, seed=1).double()
    x = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)  # HW = 9 > C = 4: Gram path
    flat = x.reshape(2, 4, 9).transpose(1, 2).reshape(18, 4)
    direct = m.random_maclaurin(flat).reshape(2, 9, 30).sum(1)
    torch.testing.assert_close(m.sum_pooled(x), direct)


def test_compact_bilinear_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"expected input \(N, 8, H, W\)"):
        CompactBilinearRM(8, 10)(torch.rand(1, 7, 2, 2))
