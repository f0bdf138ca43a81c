"""A synth-birds image: random pose and colours, a cluttered background, the bird placed and painted.

Two random streams per image, both seeded from (seed, image index): one for everything that decides the
annotations (size, pose, proportions, colours, placement), one for pixels only (background, noise). So the
annotations of an image can be recomputed without drawing it, and images can be made in any order.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import cv2
import numpy as np

from fgdeploy.data.synth_bird import Bird, BirdPose, BirdStyle, Colour, Shape, build_bird
from fgdeploy.data.synth_classes import PALETTE, SynthClass

_SHIFT = 4                 # OpenCV fixed-point bits: sub-pixel drawing
_ONE = 1 << _SHIFT
FILL_RANGE = (0.3, 0.9)    # bird box long side / image long side


@dataclass
class SynthAnnotation:
    """What the annotation files record for one image (continuous pixel coordinates)."""

    height: int
    width: int
    keypoints: np.ndarray   # (P, 2) float64
    visible: np.ndarray     # (P,) bool
    bbox: np.ndarray        # (4,) [x0, y0, x1, y1]


def muted(rng: np.random.Generator, sat: tuple[float, float] = (0.05, 0.38),
          val: tuple[float, float] = (0.3, 0.75), hue: tuple[float, float] = (0.0, 1.0)) -> Colour:
    """A low-saturation colour, unlike the saturated detail palette."""
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(*hue), rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def sample_pose(rng: np.random.Generator) -> BirdPose:
    """A random pose: about half near profile, the rest turned up to 60 degrees; heads often turned."""
    yaw = float(np.clip(rng.normal(0, 10) if rng.random() < 0.55 else rng.uniform(-55, 55), -60, 60))
    head_yaw = float(rng.normal(0, 8) if rng.random() < 0.5 else rng.uniform(-70, 70))
    head_yaw = float(np.clip(yaw + head_yaw, -85, 85)) - yaw
    spread = 0.0 if rng.random() < 0.65 else float(rng.uniform(0.35, 1.0))
    legs = bool(rng.random() < (0.88 if spread < 0.6 else 0.5))
    sizes = rng.uniform(0.88, 1.15, size=4)
    return BirdPose(
        facing=1 if rng.random() < 0.5 else -1, yaw=yaw, pitch=float(rng.uniform(-10, 40)),
        head_yaw=head_yaw, head_pitch=float(rng.uniform(-25, 25)),
        roll=float(np.clip(rng.normal(0, 15), -40, 40)), spread=spread, legs=legs,
        perch=legs and bool(rng.random() < 0.5), tail_angle=float(rng.uniform(-30, 12)),
        body=float(sizes[0]), head=float(sizes[1]), tail=float(sizes[2]), wing=float(sizes[3]))


def sample_style(rng: np.random.Generator) -> BirdStyle:
    """Class-independent bird colours."""
    body = muted(rng)
    head = body if rng.random() < 0.5 else muted(rng)
    wing = tuple(int(c * rng.uniform(0.6, 0.85)) for c in body) if rng.random() < 0.5 else muted(rng)
    tail = wing if rng.random() < 0.6 else body
    return BirdStyle(body=body, head=head, wing=wing, tail=tail,  # type: ignore[arg-type]
                     legs=muted(rng, val=(0.2, 0.55)), perch=muted(rng, (0.3, 0.5), (0.25, 0.5), (0.05, 0.11)))


def image_size(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """(H, W) with long side ``size`` and short side 66-100 % of it; mostly landscape, like CUB."""
    short = int(round(size * rng.uniform(0.66, 1.0)))
    return (short, size) if rng.random() < 0.75 else (size, short)


def make_scene(cls: SynthClass, size: int, seed: int, index: int, draw: bool = True, background: bool = True
               ) -> tuple[np.ndarray | None, SynthAnnotation]:
    """Image ``index`` of a dataset generated with ``seed``: (RGB uint8 image or None, annotation).

    ``background=False`` paints the same bird on flat grey without noise (for tests and debugging).
    """
    rng = np.random.default_rng([seed, index, 0])
    height, width = image_size(rng, size)
    bird = build_bird(sample_pose(rng), sample_style(rng), cls)
    scale, box = _place(bird, height, width, rng)
    ann = SynthAnnotation(height, width, bird.keypoints.copy(), bird.visible.copy(), box)
    if not draw:
        return None, ann
    if not background:
        image = np.full((height, width, 3), 128, dtype=np.uint8)
        paint(image, bird, scale)
        return image, ann
    pixels = np.random.default_rng([seed, index, 1])
    image = draw_background(pixels, height, width, scale)
    paint(image, bird, scale)
    return finish(pixels, image), ann


def _place(bird: Bird, height: int, width: int, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """Scale and move ``bird`` (in place) to pixels; returns (pixels per body length, bird box)."""
    lo, hi = _extent(bird)
    size = hi - lo
    scale = rng.uniform(*FILL_RANGE) * max(height, width) / max(size)
    scale = min(scale, 0.96 * width / size[0], 0.96 * height / size[1])
    room = np.array([width, height]) - scale * size
    offset = rng.uniform(0.2, 0.8, size=2) * room - scale * lo
    for component in bird.components:
        for shape in component.shapes:
            shape.points = shape.points * scale + offset
            shape.size *= scale
    bird.keypoints = bird.keypoints * scale + offset
    return scale, np.concatenate([lo * scale + offset, hi * scale + offset])


def _extent(bird: Bird) -> tuple[np.ndarray, np.ndarray]:
    """Corners of the box around every painted shape except the perch."""
    pts = []
    for component in bird.components:
        if component.name == "perch":
            continue
        for shape in component.shapes:
            pad = shape.size if shape.kind == "disc" else shape.size / 2
            pts += [shape.points.min(axis=0) - pad, shape.points.max(axis=0) + pad]
    stacked = np.array(pts)
    return stacked.min(axis=0), stacked.max(axis=0)


def _fixed(points: np.ndarray) -> np.ndarray:
    """Continuous coordinates -> OpenCV fixed-point pixel-centre coordinates."""
    return np.round((np.asarray(points) - 0.5) * _ONE).astype(np.int32)


def paint(image: np.ndarray, bird: Bird, scale: float) -> None:
    """Paint the bird's components in order onto ``image`` (RGB, in place)."""
    edge = max(1, int(round(scale * 0.012)))
    for component in bird.components:
        for shape in component.shapes:
            _draw(image, shape, edge)


def _draw(image: np.ndarray, shape: Shape, edge: int) -> None:
    colour = tuple(int(c) for c in shape.colour)
    dark = tuple(int(c * 0.55) for c in shape.colour)
    if shape.kind == "poly":
        pts = _fixed(shape.points).reshape(-1, 1, 2)
        cv2.fillPoly(image, [pts], colour, cv2.LINE_AA, _SHIFT)
        if shape.outline:
            cv2.polylines(image, [pts], True, dark, edge, cv2.LINE_AA, _SHIFT)
    elif shape.kind == "disc":
        centre = tuple(int(v) for v in _fixed(shape.points[0]))
        radius = max(1, int(round(shape.size * _ONE)))
        cv2.circle(image, centre, radius, colour, -1, cv2.LINE_AA, _SHIFT)
        if shape.outline:
            cv2.circle(image, centre, radius, dark, edge, cv2.LINE_AA, _SHIFT)
    else:
        a, b = (tuple(int(v) for v in p) for p in _fixed(shape.points))
        cv2.line(image, a, b, colour, max(1, int(round(shape.size))), cv2.LINE_AA, _SHIFT)


def draw_background(rng: np.random.Generator, height: int, width: int, unit: float) -> np.ndarray:
    """A muted gradient, large muted shapes (leaves, branches), and small clutter in the detail palette.

    Args:
        unit: the bird's pixels per body length; clutter is sized like the bird's details.
    """
    c1, c2 = np.array(muted(rng), np.float32), np.array(muted(rng), np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * np.array([[0.0, 1.0]]) + np.sin(angle) * np.array([[0.0], [1.0]])  # 2x2 corners
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    corners = (c1 + ramp[..., None].astype(np.float32) * (c2 - c1)).astype(np.float32)
    image = cv2.resize(corners, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    side = min(height, width)
    for _ in range(int(rng.integers(3, 9))):
        colour = muted(rng, sat=(0.1, 0.5))
        centre = (int(rng.uniform(0, width) * _ONE), int(rng.uniform(0, height) * _ONE))
        if rng.random() < 0.6:
            axes = (int(side * rng.uniform(0.05, 0.35) * _ONE), int(side * rng.uniform(0.03, 0.15) * _ONE))
            cv2.ellipse(image, centre, axes, rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA, _SHIFT)
        else:
            end = (int(rng.uniform(0, width) * _ONE), int(rng.uniform(0, height) * _ONE))
            cv2.line(image, centre, end, colour, max(1, int(side * rng.uniform(0.01, 0.04))), cv2.LINE_AA, _SHIFT)
    palette = list(PALETTE.values())
    area = height * width / max(unit * unit, 1.0)
    for _ in range(int(rng.integers(10, 22) * min(max(area, 1.0), 3.0))):
        colour = palette[int(rng.integers(len(palette)))] if rng.random() < 0.8 else muted(rng)
        _clutter(image, rng, colour, unit * rng.uniform(0.04, 0.14), width, height)
    return image


def _clutter(image: np.ndarray, rng: np.random.Generator, colour: Colour, radius: float, width: int,
             height: int) -> None:
    """One small distractor shaped like a bird detail: disc, ring, triangle (beak), bar (wing bar), ellipse."""
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    centre = (int(cx * _ONE), int(cy * _ONE))
    r = max(radius, 1.0)
    kind = int(rng.integers(5))
    if kind == 0:
        cv2.circle(image, centre, int(r * _ONE), colour, -1, cv2.LINE_AA, _SHIFT)
    elif kind == 1:
        cv2.circle(image, centre, int(r * _ONE), colour, max(1, int(r * 0.45)), cv2.LINE_AA, _SHIFT)
    elif kind == 2:
        a = rng.uniform(0, 2 * np.pi)
        tri = np.array([[cx + 2 * r * np.cos(a), cy + 2 * r * np.sin(a)],
                        [cx + 0.7 * r * np.cos(a + 1.7), cy + 0.7 * r * np.sin(a + 1.7)],
                        [cx + 0.7 * r * np.cos(a - 1.7), cy + 0.7 * r * np.sin(a - 1.7)]])
        cv2.fillPoly(image, [_fixed(tri + 0.5).reshape(-1, 1, 2)], colour, cv2.LINE_AA, _SHIFT)
    else:
        axes = (int(r * 1.6 * _ONE), int(r * (0.5 if kind == 3 else 0.9) * _ONE))
        cv2.ellipse(image, centre, axes, rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA, _SHIFT)


def finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Camera-like noise and, sometimes, a slight blur."""
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (3, 3), 0.7)
    amplitude = int(rng.integers(2, 9))
    noise = rng.integers(-amplitude, amplitude + 1, size=image.shape, dtype=np.int16)
    return cv2.add(image, noise, dtype=cv2.CV_8U)
