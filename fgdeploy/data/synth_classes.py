"""synth-birds classes: each class is a combination of small part-local details, nothing global.

Six detail slots (beak colour, crown patch, eye ring, wing bar, tail tip, breast patch) take colours from a
six-colour palette that the background clutter reuses, plus a beak shape. Classes come in groups of five:
a base combination and four variants that swap the colours of two slots lying far apart on the bird
(e.g. red crown + blue tail tip vs blue crown + red tail tip). Classes of a group therefore have the same
colours in different places: a model must know *where* each colour is, which part-pooled features give
and globally pooled ones do not. Every pair of classes differs in at least two slots (classes of
different groups mostly in three or more).
The design is fixed (independent of the generation seed): class k is the same bird in every dataset.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

MAX_CLASSES = 200
GROUP_SIZE = 5
_DESIGN_SEED = 1511_07063  # the paper's arXiv id; any constant works

# Saturated detail colours (RGB). Bird bodies use muted colours (saturation <= 0.35), so details stand out.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 40),
    "yellow": (250, 215, 10),
    "blue": (30, 75, 230),
    "white": (248, 248, 248),
    "black": (18, 18, 18),
    "green": (20, 170, 60),
}
COLOUR_NAMES: tuple[str, ...] = tuple(PALETTE)
SLOTS: tuple[str, ...] = ("beak", "crown", "eye_ring", "wing_bar", "tail_tip", "breast")
BEAK_SHAPES: tuple[str, ...] = ("cone", "long", "hooked")
# Slot pairs whose colours a variant may swap: far apart on the bird, so a 3x3 pooling window at one
# part does not also see the other.
SWAPPABLE: tuple[tuple[str, str], ...] = (
    ("beak", "wing_bar"), ("beak", "tail_tip"), ("crown", "wing_bar"), ("crown", "tail_tip"),
    ("crown", "breast"), ("eye_ring", "tail_tip"), ("eye_ring", "wing_bar"), ("tail_tip", "breast"),
    ("beak", "breast"), ("eye_ring", "breast"),
)


@dataclass(frozen=True)
class SynthClass:
    """One synth-birds class: its CUB-style name and its details."""

    name: str                        # "001.Synth_bird_01a"
    colours: tuple[str, ...]         # colour name per slot, in SLOTS order
    beak_shape: str

    def colour(self, slot: str) -> tuple[int, int, int]:
        """RGB colour of a detail slot."""
        return PALETTE[self.colours[SLOTS.index(slot)]]

    def describe(self) -> str:
        """"cone beak red, crown blue, ..." for previews and manifests."""
        return f"{self.beak_shape} beak; " + ", ".join(f"{s} {c}" for s, c in zip(SLOTS, self.colours))


def design_classes(count: int) -> list[SynthClass]:
    """The first ``count`` classes of the fixed design (1 <= count <= 200).

    Raises:
        ValueError: ``count`` is out of range.
    """
    if not 1 <= count <= MAX_CLASSES:
        raise ValueError(f"synth-birds has 1..{MAX_CLASSES} classes, got {count}")
    return list(_classes(-(-count // GROUP_SIZE))[:count])


@functools.lru_cache(maxsize=4)
def _classes(groups: int) -> tuple[SynthClass, ...]:
    """The first ``groups`` groups; drawn in sequence, so a longer design extends a shorter one."""
    rng = np.random.default_rng(_DESIGN_SEED)
    combos: list[tuple[tuple[str, ...], str]] = []
    failures = 0
    while len(combos) < groups * GROUP_SIZE:
        # Late in a 200-class design few combinations are >= 3 slots from all others: accept 2 then.
        group = _draw_group(rng, combos, min_distance=3 if failures < 400 else 2)
        failures = failures + 1 if group is None else 0
        combos.extend(group or [])
    out = []
    for k, (colours, shape) in enumerate(combos):
        group_index, variant = divmod(k, GROUP_SIZE)
        out.append(SynthClass(f"{k + 1:03d}.Synth_bird_{group_index + 1:02d}{'abcde'[variant]}", colours, shape))
    return tuple(out)


def _draw_group(rng: np.random.Generator, existing: list[tuple[tuple[str, ...], str]], min_distance: int
                ) -> list[tuple[tuple[str, ...], str]] | None:
    """A base combination and GROUP_SIZE - 1 two-slot swaps of it; None if it clashes with ``existing``."""
    base = tuple(str(c) for c in rng.choice(COLOUR_NAMES, size=len(SLOTS)))
    if len(set(base)) < 4:
        return None
    shape = str(rng.choice(BEAK_SHAPES))
    pairs = [p for p in SWAPPABLE if base[SLOTS.index(p[0])] != base[SLOTS.index(p[1])]]
    if len(pairs) < GROUP_SIZE - 1:
        return None
    group = [base]
    for k in rng.permutation(len(pairs))[:GROUP_SIZE - 1]:
        i, j = SLOTS.index(pairs[k][0]), SLOTS.index(pairs[k][1])
        variant = list(base)
        variant[i], variant[j] = variant[j], variant[i]
        group.append(tuple(variant))
    if existing:  # keep groups apart: >= min_distance differing slots between classes of different groups
        codes = np.array([[COLOUR_NAMES.index(c) for c in colours] for colours, _ in existing])
        new = np.array([[COLOUR_NAMES.index(c) for c in colours] for colours in group])
        if ((new[:, None, :] != codes[None, :, :]).sum(axis=2) < min_distance).any():
            return None
    return [(g, shape) for g in group]
