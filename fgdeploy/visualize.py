"""Drawing keypoints and labels on images with OpenCV (eval grids, infer overlays).

All functions take and return (H, W, 3) uint8 RGB arrays and never modify their input. Keypoints are
continuous (u, v) pixels (pixel k covers [k, k+1)), so a point is drawn at pixel (u - 0.5, v - 0.5)
rounded, on a sub-pixel grid (``shift``) for accuracy.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

_SHIFT = 4  # cv2 fractional bits for sub-pixel drawing
# Two-letter labels of CUB's 15 parts (as `data synth --preview` draws them); other names get their initials.
CUB_PART_LABELS: dict[str, str] = {
    "back": "Bk", "beak": "Bq", "belly": "By", "breast": "Br", "crown": "Cr", "forehead": "Fh", "left_eye": "LE",
    "left_leg": "LL", "left_wing": "LW", "nape": "Na", "right_eye": "RE", "right_leg": "RL", "right_wing": "RW",
    "tail": "Ta", "throat": "Th",
}


def text_scale(image_shape: Sequence[int]) -> float:
    """One OpenCV font scale for every label, caption and legend of an image: in proportion to its size
    (0.45 at a 500 px long side), never below 0.35 (still readable on a 160 px tile)."""
    return max(0.35, 0.45 * max(image_shape[:2]) / 500)


def part_labels(part_names: Sequence[str]) -> list[str]:
    """Short labels drawn beside the dots (a legend names them): "Bk" for back, ...; unknown names: initials,
    made unique with a number."""
    labels: list[str] = []
    for name in part_names:
        label = CUB_PART_LABELS.get(name) or "".join(w[:1].upper() for w in name.replace("-", "_").split("_") if w)
        label = label or "?"
        base, k = label, 2
        while label in labels:
            label, k = f"{base}{k}", k + 1
        labels.append(label)
    return labels


def part_colors(num_parts: int) -> list[tuple[int, int, int]]:
    """Distinct RGB colours, one per part, evenly spaced in hue (stable across calls)."""
    colors = []
    for p in range(num_parts):
        r, g, b = colorsys.hsv_to_rgb((p * 0.618033988749895) % 1.0, 0.85, 1.0)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


def _pt(u: float, v: float) -> tuple[int, int]:
    scale = 1 << _SHIFT
    return int(round((u - 0.5) * scale)), int(round((v - 0.5) * scale))


def draw_keypoints(
    image: np.ndarray, keypoints: np.ndarray, visible: np.ndarray | None = None,
    part_names: Sequence[str] | None = None, radius: int | None = None, labels: bool = False,
    hollow: np.ndarray | None = None,
) -> np.ndarray:
    """Draw one coloured dot per visible keypoint.

    Args:
        image: (H, W, 3) uint8 RGB.
        keypoints: (P, 2) (u, v) in this image's pixels.
        visible: (P,) bool; None = all drawn.
        part_names: names for ``labels``.
        radius: dot radius in pixels; default scales with the image (about 1.2 % of the long side).
        labels: write each part's label beside its dot (``part_labels``: two letters; ``legend`` names them).
        hollow: (P,) bool; True draws a ring instead of a filled dot (e.g. predicted-invisible parts).

    Returns:
        A new (H, W, 3) uint8 image.
    """
    out = np.ascontiguousarray(image.copy())
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    vis = np.ones(len(kp), bool) if visible is None else np.asarray(visible, bool).reshape(-1)
    ring = np.zeros(len(kp), bool) if hollow is None else np.asarray(hollow, bool).reshape(-1)
    if radius is None:
        radius = max(2, int(round(0.012 * max(out.shape[:2]))))
    colors = part_colors(len(kp))
    font_scale = text_scale(out.shape)
    short = part_labels(part_names) if part_names is not None else []
    for p, (u, v) in enumerate(kp):
        if not vis[p] or not np.isfinite(u) or not np.isfinite(v):
            continue
        centre = _pt(u, v)
        thickness = max(1, radius // 2) if ring[p] else -1
        cv2.circle(out, centre, (radius + 1) << _SHIFT, (0, 0, 0), -1 if thickness < 0 else thickness + 2,
                   cv2.LINE_AA, _SHIFT)
        cv2.circle(out, centre, radius << _SHIFT, colors[p], thickness, cv2.LINE_AA, _SHIFT)
        if labels and p < len(short):
            org = (int(u) + radius + 2, int(v) + radius // 2)
            draw_text(out, short[p], org, font_scale, colors[p], inplace=True)
    return out


def draw_text(
    image: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5,
    color: tuple[int, int, int] = (255, 255, 255), inplace: bool = False,
) -> np.ndarray:
    """Write ``text`` with a dark outline at ``org`` (bottom-left of the text, in pixels)."""
    out = image if inplace else np.ascontiguousarray(image.copy())
    thickness = max(1, int(round(scale * 2)))
    # Outline by shifted copies, not a thicker stroke: some OpenCV builds widen glyphs with thickness.
    x, y = org
    for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        cv2.putText(out, text, (x + dx, y + dy), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)
    return out


def draw_caption(image: np.ndarray, text: str, color: tuple[int, int, int] = (255, 255, 255),
                 scale: float | None = None) -> np.ndarray:
    """Add a dark band with ``text`` above the image (returns a taller image); text as large as the labels."""
    scale = text_scale(image.shape) if scale is None else scale
    band_h = _line_height(scale) + 6
    band = np.full((band_h, image.shape[1], 3), 24, np.uint8)
    draw_text(band, text, (4, band_h - 4 - _baseline(scale)), scale, color, inplace=True)
    return np.concatenate([band, image], axis=0)


def _line_height(scale: float) -> int:
    (_, height), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, int(round(scale * 2))))
    return height + baseline + 2


def _baseline(scale: float) -> int:
    return cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, int(round(scale * 2))))[1]


def legend(width: int, part_names: Sequence[str], scale: float = 0.45, abbreviated: bool = True) -> np.ndarray:
    """A dark band, ``width`` wide, naming each part in its colour ("Bk back  Bq beak ..."), wrapped over as
    many lines as needed; ``abbreviated`` False lists the full names only (a legend of colours)."""
    colors = part_colors(len(part_names))
    entries = [f"{label} {name}" if abbreviated else name for label, name in zip(part_labels(part_names), part_names)]
    thickness = max(1, int(round(scale * 2)))
    gap = cv2.getTextSize("  ", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0]
    line_h = _line_height(scale)
    rows: list[list[tuple[str, int]]] = [[]]
    x = 6
    for k, entry in enumerate(entries):
        w = cv2.getTextSize(entry, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0]
        if rows[-1] and x + w > width - 6:
            rows.append([])
            x = 6
        rows[-1].append((entry, k))
        x += w + gap
    band = np.full((len(rows) * line_h + 8, width, 3), 24, np.uint8)
    for r, row in enumerate(rows):
        x = 6
        for entry, k in row:
            draw_text(band, entry, (x, 4 + (r + 1) * line_h - _baseline(scale)), scale, colors[k], inplace=True)
            x += cv2.getTextSize(entry, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] + gap
    return band


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Two images next to each other (heights padded to the taller one)."""
    h = max(left.shape[0], right.shape[0])
    pad = lambda im: np.pad(im, ((0, h - im.shape[0]), (0, 0), (0, 0)))  # noqa: E731
    spacer = np.full((h, gap, 3), 255, np.uint8)
    return np.concatenate([pad(left), spacer, pad(right)], axis=1)


def make_grid(tiles: Sequence[np.ndarray], cols: int, gap: int = 8, background: int = 255) -> np.ndarray:
    """Tile images row-major into ``cols`` columns (cells sized to the largest tile)."""
    if not tiles:
        raise ValueError("make_grid: no tiles to draw")
    cols = max(1, min(cols, len(tiles)))
    rows = -(-len(tiles) // cols)
    ch = max(t.shape[0] for t in tiles)
    cw = max(t.shape[1] for t in tiles)
    grid = np.full((rows * ch + (rows + 1) * gap, cols * cw + (cols + 1) * gap, 3), background, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        y, x = gap + r * (ch + gap), gap + c * (cw + gap)
        grid[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    return grid


def resize_for_display(image: np.ndarray, keypoints: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Shrink (never enlarge) so the long side is ``max_side``; keypoints move with the pixels."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale >= 1.0:
        return image, np.asarray(keypoints, np.float64)
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    out = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    kp = np.asarray(keypoints, np.float64) * np.array([nw / w, nh / h])
    return out, kp


def enlarge_for_display(image: np.ndarray, keypoints: np.ndarray, min_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Enlarge (never shrink) so the long side is at least ``min_side``: labels and legend then have room."""
    h, w = image.shape[:2]
    scale = max(1.0, min_side / max(h, w))
    if scale == 1.0:
        return image, np.asarray(keypoints, np.float64)
    nw, nh = int(round(w * scale)), int(round(h * scale))
    out = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, np.asarray(keypoints, np.float64) * np.array([nw / w, nh / h])


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB image."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode an image of shape {image.shape} as PNG")
    return buf.tobytes()


def save_image(path: str | Path, image: np.ndarray) -> Path:
    """Write an RGB image as PNG atomically (temp file + rename)."""
    from fgdeploy.fileio import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, encode_png(image))
    return path
