"""The CoordinateTransfer op as a torch custom op (docs/method.md section 4a).

``torch.ops.fgdeploy.coordinate_transfer(heatmaps, features, window=3, mode=0) -> pooled``

- heatmaps (N, P, Hh, Wh), features (N, C, Hf, Wf), same floating dtype and device.
- For each (n, p): first-maximum argmax (row-major) of heatmaps[n, p]; its cell centre is mapped to the
  feature grid in integer arithmetic: cy = ((2 i + 1) Hf) div (2 Hh), cx likewise, clamped.
- A k x k window around (cy, cx), clipped to the grid, is max-pooled (mode 0) or averaged over its valid
  cells (mode 1, accumulated in float32 for float16/bfloat16). Output (N, P, C).
- Backward: nothing to ``heatmaps``; mode 0 sends each output gradient to the first maximum cell of its
  window, mode 1 spreads it evenly over the valid cells; overlapping windows accumulate.

The implementation is vectorised (one gather over all parts and window cells, no Python loop over N or P)
and the backward is plain torch ops, so ``torch.compile(fullgraph=True)`` traces it and double backward
works. The op stays one node under ``torch.export``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fgdeploy.tensors import MODE_AVERAGE, MODE_MAX

__all__ = ["coordinate_transfer", "coordinate_transfer_op"]

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _check_size_eq(a: int | torch.SymInt, b: int | torch.SymInt, message: str) -> None:
    """Equality of two sizes: a ValueError for concrete ints, a symbolic check while tracing."""
    if isinstance(a, int) and isinstance(b, int):
        if a != b:
            raise ValueError(message)
    else:
        torch._check(a == b, lambda: message)


def check_coordinate_transfer_args(heatmaps: Tensor, features: Tensor, window: int, mode: int) -> None:
    """Validate the op's arguments against the contract; raise ValueError/TypeError naming the problem."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 1 or window % 2 == 0:
        raise ValueError(f"coordinate_transfer: window must be an odd int >= 1 (1, 3, 5, ...), got {window!r}")
    if mode not in (MODE_MAX, MODE_AVERAGE) or isinstance(mode, bool):
        raise ValueError(f"coordinate_transfer: mode must be {MODE_MAX} (max) or {MODE_AVERAGE} (average), "
                         f"got {mode!r}")
    if heatmaps.dim() != 4:
        raise ValueError(f"coordinate_transfer: heatmaps must be 4-D (N, P, Hh, Wh), got shape "
                         f"{tuple(heatmaps.shape)}")
    if features.dim() != 4:
        raise ValueError(f"coordinate_transfer: features must be 4-D (N, C, Hf, Wf), got shape "
                         f"{tuple(features.shape)}")
    if not features.dtype.is_floating_point:
        raise TypeError(f"coordinate_transfer: features must be a floating tensor, got {features.dtype}")
    if heatmaps.dtype != features.dtype:
        raise TypeError(f"coordinate_transfer: heatmaps ({heatmaps.dtype}) and features ({features.dtype}) "
                        f"must have the same dtype; cast with heatmaps.to(features.dtype)")
    if heatmaps.device != features.device:
        raise ValueError(f"coordinate_transfer: heatmaps are on {heatmaps.device} but features on "
                         f"{features.device}; move both to one device")
    _check_size_eq(heatmaps.shape[0], features.shape[0],
                   f"coordinate_transfer: batch sizes differ: heatmaps {tuple(heatmaps.shape)} vs features "
                   f"{tuple(features.shape)}")
    for name, t in (("heatmaps", heatmaps), ("features", features)):
        for size in t.shape[2:]:
            if isinstance(size, int) and size < 1:
                raise ValueError(f"coordinate_transfer: {name} has an empty spatial size {tuple(t.shape)}")


def window_indices(heatmaps: Tensor, feature_hw: tuple[int, int], window: int) -> tuple[Tensor, Tensor]:
    """Flat feature-grid indices of every window cell and their validity.

    Args:
        heatmaps: (N, P, Hh, Wh).
        feature_hw: (Hf, Wf) of the feature grid.
        window: odd window size k.

    Returns:
        ``index`` (N, P, k*k) int64 flat indices into Hf*Wf (clipped cells point at a valid cell) and
        ``valid`` (N, P, k*k) bool, both in row-major window order.
    """
    n, p, hh, wh = heatmaps.shape
    hf, wf = feature_hw
    with torch.no_grad():
        flat = heatmaps.reshape(n, p, hh * wh).argmax(dim=2)  # (N, P), first maximum
        i = torch.div(flat, wh, rounding_mode="floor")
        j = flat - i * wh
        cy = torch.div((2 * i + 1) * hf, 2 * hh, rounding_mode="floor").clamp(0, hf - 1)
        cx = torch.div((2 * j + 1) * wf, 2 * wh, rounding_mode="floor").clamp(0, wf - 1)
        r = window // 2
        offsets = torch.arange(-r, r + 1, device=heatmaps.device, dtype=torch.int64)  # (k,)
        rows = cy.unsqueeze(-1) + offsets  # (N, P, k)
        cols = cx.unsqueeze(-1) + offsets
        valid = (((rows >= 0) & (rows < hf)).unsqueeze(-1)
                 & ((cols >= 0) & (cols < wf)).unsqueeze(-2))  # (N, P, k, k)
        index = rows.clamp(0, hf - 1).unsqueeze(-1) * wf + cols.clamp(0, wf - 1).unsqueeze(-2)
    return index.reshape(n, p, window * window), valid.reshape(n, p, window * window)


def _gather_windows(features: Tensor, index: Tensor) -> Tensor:
    """(N, C, Hf, Wf) features at (N, P, K) flat indices -> (N, C, P, K)."""
    n, c = features.shape[0], features.shape[1]
    _, p, k = index.shape
    flat = features.reshape(n, c, -1)
    gathered = flat.gather(2, index.reshape(n, 1, p * k).expand(n, c, p * k))
    return gathered.reshape(n, c, p, k)


def _max_positions(windows: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Max over valid window cells and the position of the first maximum (row-major window order)."""
    vmask = valid.unsqueeze(1)  # (N, 1, P, K)
    masked = torch.where(vmask, windows, float("-inf"))
    best = masked.amax(dim=-1, keepdim=True)  # (N, C, P, 1)
    # First valid cell equal to the maximum (robust to -inf features, unlike a plain argmax on `masked`).
    first = ((masked == best) & vmask).to(torch.uint8).argmax(dim=-1, keepdim=True)
    return best.squeeze(-1), first


def coordinate_transfer_forward(heatmaps: Tensor, features: Tensor, window: int, mode: int) -> Tensor:
    """Eager implementation of the forward pass; returns (N, P, C) in the dtype of ``features``."""
    index, valid = window_indices(heatmaps, (features.shape[2], features.shape[3]), window)
    windows = _gather_windows(features, index)  # (N, C, P, K)
    if mode == MODE_MAX:
        pooled, _ = _max_positions(windows, valid)
    else:
        acc = windows.float() if windows.dtype in _HALF_DTYPES else windows
        acc = torch.where(valid.unsqueeze(1), acc, 0.0).sum(dim=-1)
        pooled = (acc / valid.sum(dim=-1).to(acc.dtype).unsqueeze(1)).to(features.dtype)
    return pooled.permute(0, 2, 1).contiguous()


def coordinate_transfer_backward(
    grad: Tensor, heatmaps: Tensor, features: Tensor, window: int, mode: int
) -> Tensor:
    """Gradient w.r.t. ``features`` (N, C, Hf, Wf) of the output gradient ``grad`` (N, P, C)."""
    n, c, hf, wf = features.shape
    index, valid = window_indices(heatmaps, (hf, wf), window)
    p, k = index.shape[1], index.shape[2]
    g = grad.permute(0, 2, 1)  # (N, C, P)
    acc_dtype = torch.float32 if features.dtype in _HALF_DTYPES else features.dtype
    if mode == MODE_MAX:
        windows = _gather_windows(features.detach(), index)
        _, first = _max_positions(windows, valid)  # (N, C, P, 1)
        target = index.unsqueeze(1).expand(n, c, p, k).gather(-1, first).reshape(n, c, p)
        src = g.to(acc_dtype)
    else:
        count = valid.sum(dim=-1).to(acc_dtype).unsqueeze(1)  # (N, 1, P)
        share = (g.to(acc_dtype) / count).unsqueeze(-1).expand(n, c, p, k)
        src = torch.where(valid.unsqueeze(1), share, 0.0).reshape(n, c, p * k)
        target = index.reshape(n, 1, p * k).expand(n, c, p * k)
    # scatter_add_ into a fresh buffer (no second full-size copy); overlapping windows accumulate.
    out = torch.zeros(n, c, hf * wf, dtype=acc_dtype, device=features.device).scatter_add_(2, target, src)
    return out.to(features.dtype).reshape(n, c, hf, wf)


@torch.library.custom_op("fgdeploy::coordinate_transfer", mutates_args=())
def coordinate_transfer_op(heatmaps: Tensor, features: Tensor, window: int = 3, mode: int = 0) -> Tensor:
    """Pool ``features`` around each heatmap's argmax (docs/method.md 4a). Returns (N, P, C)."""
    check_coordinate_transfer_args(heatmaps, features, window, mode)
    return coordinate_transfer_forward(heatmaps, features, window, mode)


@coordinate_transfer_op.register_fake
def _coordinate_transfer_fake(heatmaps: Tensor, features: Tensor, window: int = 3, mode: int = 0) -> Tensor:
    check_coordinate_transfer_args(heatmaps, features, window, mode)
    return features.new_empty((heatmaps.shape[0], heatmaps.shape[1], features.shape[1]))


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    heatmaps, features, window, mode = inputs
    ctx.save_for_backward(heatmaps, features)
    ctx.window = window
    ctx.mode = mode


def _backward(ctx, grad: Tensor):  # type: ignore[no-untyped-def]
    heatmaps, features = ctx.saved_tensors
    grad_features = None
    if ctx.needs_input_grad[1]:
        grad_features = coordinate_transfer_backward(grad, heatmaps, features, ctx.window, ctx.mode)
    return None, grad_features, None, None


coordinate_transfer_op.register_autograd(_backward, setup_context=_setup_context)


def coordinate_transfer(heatmaps: Tensor, features: Tensor, window: int = 3, mode: int = 0) -> Tensor:
    """Coordinate transfer (docs/method.md 4a): pool features around each part's heatmap argmax.

    Args:
        heatmaps: (N, P, Hh, Wh) scores (or one-hot targets in training); never receives a gradient.
        features: (N, C, Hf, Wf) feature map, same dtype and device as ``heatmaps``.
        window: odd window side k >= 1 on the feature grid, clipped at the borders. Defaults to 3.
        mode: 0 = max pooling, 1 = average over the window's valid cells. Defaults to 0.

    Returns:
        (N, P, C) pooled part features in the dtype of ``features``.

    Raises:
        ValueError, TypeError: arguments break the contract (message names the value).
    """
    check_coordinate_transfer_args(heatmaps, features, window, mode)
    return torch.ops.fgdeploy.coordinate_transfer(heatmaps, features, window, mode)
