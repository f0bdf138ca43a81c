"""One synth bird: a posed 3D model (ellipsoid body, sphere head, flat wings and tail, stick legs),
projected orthographically, its 15 CUB keypoints with visibility, and its painted shapes.

Bird frame: x forward (beak), y up, z the bird's right side; the viewer looks along -z, so a bird facing
image-right shows its right side. Left/right are the bird's own, so mirroring the image and swapping
left/right parts (FLIP_PERMUTATION) gives another valid annotation. A keypoint is visible when its surface
faces the viewer and no shape painted later covers it (e.g. the far wing behind the body, the far leg
behind the near leg, the far eye on the back of the head). All lengths are in body lengths; `layout`
scales and places the bird in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from fgdeploy.data.synth_classes import SynthClass
from fgdeploy.tensors import PART_NAMES

Colour = tuple[int, int, int]
_P = {name: i for i, name in enumerate(PART_NAMES)}


@dataclass(frozen=True)
class BirdPose:
    """Pose and proportions (angles in degrees)."""

    facing: int          # +1: beak toward image right, -1: left (before roll)
    yaw: float           # body turn from profile; > 0 turns the front toward the viewer
    pitch: float         # body tilt, > 0 nose up
    head_yaw: float      # head turn relative to the body (same sign convention as yaw)
    head_pitch: float    # head tilt, > 0 up
    roll: float          # in-plane rotation, counter-clockwise on screen
    spread: float        # wings: 0 folded .. 1 raised
    legs: bool           # False: legs tucked (not drawn, invisible)
    perch: bool          # a branch under the feet
    tail_angle: float    # > 0 cocked up
    body: float = 1.0    # size factors of body thickness, head, tail, wings
    head: float = 1.0
    tail: float = 1.0
    wing: float = 1.0


@dataclass(frozen=True)
class BirdStyle:
    """Class-independent colours (RGB)."""

    body: Colour
    head: Colour
    wing: Colour
    tail: Colour
    legs: Colour
    perch: Colour


@dataclass
class Shape:
    """A filled polygon, disc or thick line in pixel (continuous) coordinates once laid out."""

    kind: str                    # "poly", "disc" or "line"
    points: np.ndarray           # poly (K, 2); disc (1, 2) centre; line (2, 2) ends
    colour: Colour
    size: float = 0.0            # disc radius / line thickness
    outline: bool = True


@dataclass
class Component:
    """A painted body part: its shapes (the first is its silhouette) and whose keypoints it can hide."""

    name: str
    shapes: list[Shape]
    covers: frozenset[str] = frozenset()


@dataclass
class Bird:
    """A posed bird in unit screen coordinates (y down) until `layout` maps it to pixels."""

    components: list[Component]               # in painting order
    keypoints: np.ndarray                     # (P, 2)
    facing_ok: np.ndarray                     # (P,) bool: the part's surface faces the viewer
    owners: list[str]                         # component owning each keypoint
    visible: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def _rot_y(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _turn(facing: int, yaw: float) -> float:
    """Rotation about y that makes the bird face left/right, turned ``yaw`` toward the viewer."""
    return -yaw if facing > 0 else 180.0 + yaw


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


class _Builder:
    """Builds the components of one bird; world coordinates are y up, projected to screen y down."""

    def __init__(self, pose: BirdPose, style: BirdStyle, cls: SynthClass) -> None:
        self.pose, self.style, self.cls = pose, style, cls
        self.body_rot = _rot_y(_turn(pose.facing, pose.yaw)) @ _rot_z(pose.pitch)
        self.head_rot = _rot_y(_turn(pose.facing, pose.yaw + pose.head_yaw)) @ _rot_z(pose.head_pitch)
        t = np.deg2rad(pose.roll)
        c, s = np.cos(t), np.sin(t)
        self.screen = np.array([[c, s], [-s, c]]) @ np.array([[1.0, 0, 0], [0, -1.0, 0]])  # (2, 3)
        self.axes = np.array([0.5, 0.26 * pose.body, 0.23 * pose.body])   # body ellipsoid semi-axes
        self.head_r = 0.17 * pose.head
        self.head_c = self.body_rot @ np.array([0.43, 0.17, 0.0]) + np.array([0.0, 0.06, 0.0])
        self.kp = np.zeros((len(PART_NAMES), 2))
        self.facing_ok = np.ones(len(PART_NAMES), dtype=bool)
        self.owners = [""] * len(PART_NAMES)
        near_right = (self.body_rot @ np.array([0.0, 0.0, 1.0]))[2] > 0
        self.side = {"near": 1.0 if near_right else -1.0, "far": -1.0 if near_right else 1.0}

    def project(self, world: np.ndarray) -> np.ndarray:
        return np.atleast_2d(world) @ self.screen.T

    def hull(self, world: np.ndarray) -> np.ndarray:
        pts = self.project(world).astype(np.float32)
        return cv2.convexHull(pts).reshape(-1, 2).astype(np.float64)

    def keypoint(self, part: str, world: np.ndarray, owner: str, facing_ok: bool = True) -> None:
        self.kp[_P[part]] = self.project(world)[0]
        self.owners[_P[part]] = owner
        self.facing_ok[_P[part]] = facing_ok

    # --- body -------------------------------------------------------------------------------------
    def body(self) -> Component:
        a, b, c = self.axes
        th, ph = np.meshgrid(np.linspace(0, np.pi, 9), np.linspace(0, 2 * np.pi, 18, endpoint=False))
        local = np.stack([a * np.cos(th), b * np.sin(th) * np.cos(ph), c * np.sin(th) * np.sin(ph)], -1)
        silhouette = self.hull(local.reshape(-1, 3) @ self.body_rot.T)
        ring = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        circle = np.stack([np.cos(ring), np.sin(ring), np.zeros_like(ring)], -1)
        neck_base = self.body_rot @ np.array([0.3, 0.1, 0.0])
        neck = self.hull(np.concatenate([self.head_c + 0.8 * self.head_r * circle,
                                         neck_base + 0.16 * circle]))
        for part, t in (("back", 100.0), ("breast", -38.0), ("belly", -98.0)):
            r = np.deg2rad(t)
            self.keypoint(part, self.body_rot @ (0.84 * np.array([a * np.cos(r), b * np.sin(r), 0.0])), "body")
        shapes = [Shape("poly", silhouette, self.style.body), Shape("poly", neck, self.style.body, outline=False)]
        patch = self._surface_patch(-38.0, 24.0)
        if patch is not None:
            shapes.append(Shape("poly", patch, self.cls.colour("breast"), outline=False))
        return Component("body", shapes, frozenset({"far_leg", "near_leg", "far_wing", "tail"}))

    def _surface_patch(self, centre_deg: float, half_deg: float) -> np.ndarray | None:
        """The viewer-facing part of a body-surface patch around mid-plane angle ``centre_deg``."""
        a, b, c = self.axes
        t, w = np.meshgrid(np.deg2rad(np.linspace(centre_deg - half_deg, centre_deg + half_deg, 7)),
                           np.deg2rad(np.linspace(-70, 70, 9)))
        local = np.stack([a * np.cos(t) * np.cos(w), b * np.sin(t) * np.cos(w), c * np.sin(w)], -1).reshape(-1, 3)
        normals = (local / self.axes**2) @ self.body_rot.T
        front = normals[:, 2] >= -0.02
        return self.hull(local[front] @ self.body_rot.T) if front.sum() >= 3 else None

    # --- head ---------------------------------------------------------------------------------------
    def head(self) -> Component:
        r, hc, rot = self.head_r, self.head_c, self.head_rot
        shapes = [Shape("disc", self.project(hc), self.style.head, size=r)]
        crown_dir = _unit(np.array([-0.1, 1.0, 0.0]))
        cap = self._sphere_cap(_unit(np.array([0.15, 1.0, 0.0])), 62.0)
        if cap is not None:
            shapes.append(Shape("poly", cap, self.cls.colour("crown"), outline=False))
        for part, d, depth in (("crown", crown_dir, 0.84), ("forehead", (0.72, 0.62, 0.0), 0.86),
                               ("nape", (-0.9, -0.4, 0.0), 0.95), ("throat", (0.3, -0.95, 0.0), 0.9)):
            self.keypoint(part, hc + rot @ (depth * r * _unit(np.asarray(d, dtype=float))), "head")
        for side_name in ("near", "far"):
            z = self.side[side_name]
            eye_dir = _unit(np.array([0.55, 0.3, 0.78 * z]))
            normal_z = (rot @ eye_dir)[2]
            name = "right_eye" if z > 0 else "left_eye"
            centre = hc + rot @ (0.97 * r * eye_dir)
            self.keypoint(name, centre, "head", facing_ok=bool(normal_z > 0.12))
            if normal_z > 0.12:
                xy = self.project(centre)
                shapes.append(Shape("disc", xy, self.cls.colour("eye_ring"), size=0.4 * r, outline=False))
                shapes.append(Shape("disc", xy, (12, 12, 12), size=0.2 * r, outline=False))
        return Component("head", shapes, frozenset({"body", "near_wing", "far_wing", "tail"}))

    def _sphere_cap(self, direction: np.ndarray, half_deg: float) -> np.ndarray | None:
        """The viewer-facing part of a head-sphere cap around ``direction`` (head frame)."""
        u = _unit(np.cross(direction, [0.0, 0.0, 1.0]))
        v = np.cross(direction, u)
        t, p = np.meshgrid(np.deg2rad(np.linspace(0, half_deg, 5)), np.linspace(0, 2 * np.pi, 12, endpoint=False))
        local = (np.cos(t)[..., None] * direction + np.sin(t)[..., None]
                 * (np.cos(p)[..., None] * u + np.sin(p)[..., None] * v)).reshape(-1, 3)
        world = local @ self.head_rot.T
        front = world[:, 2] >= -0.02
        return self.hull(self.head_c + self.head_r * world[front]) if front.sum() >= 3 else None

    def beak(self) -> Component:
        r, shape = self.head_r, self.cls.beak_shape
        length, radius, drop = {"cone": (1.15, 0.42, 0.1), "long": (1.95, 0.28, 0.15),
                                "hooked": (1.25, 0.5, 0.55)}[shape]
        length, radius, drop = length * r, radius * r, drop * r
        ring = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        local = [np.stack([np.zeros_like(ring), radius * np.cos(ring), radius * np.sin(ring)], -1),
                 np.array([[length, -drop, 0.0]])]
        if shape == "hooked":  # a bulging upper ridge curving down to the tip
            s = np.linspace(0.2, 0.9, 6)
            local.append(np.stack([s * length, radius * (1 - s) + 0.35 * radius * np.sin(np.pi * s) - drop * s**3,
                                   np.zeros_like(s)], -1))
        base = np.array([0.82 * r, -0.12 * r, 0.0])
        tilt = _rot_z(-8.0)
        pts = (np.concatenate(local) @ tilt.T + base) @ self.head_rot.T + self.head_c
        self.keypoint("beak", (tilt @ np.array([0.45 * length, -0.2 * drop, 0.0]) + base) @ self.head_rot.T
                      + self.head_c, "beak")
        return Component("beak", [Shape("poly", self.hull(pts), self.cls.colour("beak"))],
                         frozenset({"head", "body", "near_wing", "far_wing"}))

    # --- wings, tail, legs ------------------------------------------------------------------------------
    def wing(self, side_name: str) -> Component:
        z, c, spread = self.side[side_name], self.axes[2], self.pose.spread
        shoulder = np.array([0.2, 0.11, 0.0])
        folded, raised = _unit(np.array([-1.0, -0.18, 0.0])), _unit(np.array([-0.2, 0.85, 0.5 * z]))
        axis = _unit((1 - spread) * folded + spread * raised)
        across = _unit(np.array([1.0, 0.0, 0.0]) - axis[0] * axis)
        length, width = (0.72 + 0.2 * spread) * self.pose.wing, 0.17 * self.pose.wing
        side = np.array([0.0, 0.0, c * z])

        def centre(ss: np.ndarray) -> np.ndarray:  # the wing's mid-line hugs the body side, then tapers in
            return shoulder + np.outer(ss * length, axis) + np.outer((0.85 - 0.45 * ss) * (1 - spread), side)

        def outline(lo: float, hi: float, n: int) -> np.ndarray:
            ss = np.linspace(lo, hi, n)
            half = width * np.sqrt(ss) * (1 - ss) ** 1.2 / 0.357
            top, bottom = centre(ss) + np.outer(half, across), centre(ss) - np.outer(half, across)
            return np.concatenate([top, bottom[::-1]]) @ self.body_rot.T

        name = ("right_" if z > 0 else "left_") + "wing"
        self.keypoint(name, self.body_rot @ centre(np.array([0.46]))[0], f"{side_name}_wing")
        shapes = [Shape("poly", self.project(outline(0.0, 1.0, 14)), self.style.wing),
                  Shape("poly", self.project(outline(0.36, 0.56, 6)), self.cls.colour("wing_bar"), outline=False)]
        covers = frozenset({"far_wing", "tail", "far_leg", "near_leg"}) if side_name == "near" else frozenset()
        return Component(f"{side_name}_wing", shapes, covers)

    def tail(self) -> Component:
        angle = np.deg2rad(self.pose.tail_angle)
        d = np.array([-np.cos(angle), np.sin(angle), 0.0])
        n = np.array([-d[1], d[0], 0.0])
        base, length = np.array([-0.4, -0.02, 0.0]), 0.42 * self.pose.tail

        def fan(lo: float, hi: float) -> np.ndarray:
            """Outline of the tail between fractions lo..hi of its length (narrow base, wide rounded tip)."""
            pts = []
            for s in np.linspace(lo, hi, 5):
                w, t = 0.045 + 0.07 * s, 0.02 + 0.05 * s
                c = base + s * length * d
                pts += [c + w * n + [0, 0, t], c - w * n - [0, 0, t], c + w * n - [0, 0, t], c - w * n + [0, 0, t]]
            tip = base + hi * length * d
            arc = np.linspace(-1.0, 1.0, 5)
            pts += list(tip + np.outer(0.05 * (1 - arc**2), d) + np.outer(0.115 * arc, n))
            return self.hull(np.array(pts) @ self.body_rot.T)

        self.keypoint("tail", self.body_rot @ (base + 0.78 * length * d), "tail")
        return Component("tail", [Shape("poly", fan(0.0, 1.0), self.style.tail),
                                  Shape("poly", fan(0.64, 1.0), self.cls.colour("tail_tip"), outline=False)],
                         frozenset({"far_leg", "near_leg"}))

    def leg(self, side_name: str) -> Component:
        z = self.side[side_name]
        hip = self.body_rot @ np.array([0.02, -0.72 * self.axes[1], 0.35 * self.axes[2] * z])
        forward = self.body_rot[:, 0] * np.array([1.0, 0.0, 1.0])
        forward = _unit(forward) if np.linalg.norm(forward) > 1e-6 else np.array([1.0, 0.0, 0.0])
        foot = hip + np.array([0.0, -0.3, 0.0]) + 0.04 * forward
        name = ("right_" if z > 0 else "left_") + "leg"
        self.keypoint(name, hip + 0.82 * (foot - hip), f"{side_name}_leg")
        thick = 0.028
        shapes = [Shape("line", self.project(np.stack([hip, foot])), self.style.legs, size=thick, outline=False)]
        for toe in (0.11 * forward, -0.07 * forward, 0.08 * forward + np.array([0, -0.02, 0.05 * z])):
            shapes.append(Shape("line", self.project(np.stack([foot, foot + toe])), self.style.legs,
                                size=thick * 0.7, outline=False))
        covers = frozenset({"far_leg"}) if side_name == "near" else frozenset()
        return Component(f"{side_name}_leg", shapes, covers)

    def perch(self) -> Component:
        foot_y = (self.body_rot @ np.array([0.0, -0.72 * self.axes[1], 0.0]))[1] - 0.3
        ends = self.project(np.array([[-2.0, foot_y - 0.02, 0.0], [2.0, foot_y + 0.02, 0.0]]))
        return Component("perch", [Shape("line", ends, self.style.perch, size=0.06, outline=False)])


def build_bird(pose: BirdPose, style: BirdStyle, cls: SynthClass) -> Bird:
    """Pose, project and order every part of a bird; keypoints get their visibility (unit scale)."""
    b = _Builder(pose, style, cls)
    parts: list[Component] = []
    legs = [b.leg("far"), b.leg("near")]  # built either way: their keypoints exist (invisible if tucked)
    if pose.legs:
        parts += ([b.perch()] if pose.perch else []) + legs
    parts += [b.wing("far"), b.tail(), b.body(), b.wing("near")]
    head, beak = b.head(), b.beak()
    beak_tip_z = (b.head_rot @ np.array([1.0, 0.0, 0.0]))[2]
    if beak_tip_z < -0.5:  # head turned away: the beak is behind the head
        parts += [beak, Component(head.name, head.shapes, head.covers | {"beak"})]
    else:
        parts += [head, beak]
    bird = Bird(parts, b.kp, b.facing_ok, b.owners)
    bird.visible = _visibility(bird, legs=pose.legs)
    return bird


def _visibility(bird: Bird, legs: bool) -> np.ndarray:
    order = {c.name: i for i, c in enumerate(bird.components)}
    visible = bird.facing_ok.copy()
    for p, owner in enumerate(bird.owners):
        if owner not in order or (owner.endswith("_leg") and not legs):  # e.g. legs tucked in flight
            visible[p] = False
            continue
        later = [c for c in bird.components[order[owner] + 1:] if owner in c.covers]
        if any(_covers(c.shapes[0], bird.keypoints[p]) for c in later):
            visible[p] = False
    return visible


def _covers(shape: Shape, point: np.ndarray) -> bool:
    if shape.kind == "poly":
        return cv2.pointPolygonTest(shape.points.astype(np.float32).reshape(-1, 1, 2),
                                    (float(point[0]), float(point[1])), False) >= 0
    if shape.kind == "disc":
        return bool(np.linalg.norm(point - shape.points[0]) <= shape.size)
    a, b = shape.points
    t = np.clip(np.dot(point - a, b - a) / max(np.dot(b - a, b - a), 1e-12), 0, 1)
    return bool(np.linalg.norm(point - (a + t * (b - a))) <= shape.size * 0.75)
