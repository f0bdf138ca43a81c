"""synth-birds: the written dataset reads back, is deterministic and resumable; birds are anatomically sane."""

from __future__ import annotations

import dataclasses
import json
import re
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from fgdeploy.data.check import check_dataset
from fgdeploy.data.cub import CubDataset
from fgdeploy.data.synth_bird import BirdPose, BirdStyle, build_bird
from fgdeploy.data.synth_classes import COLOUR_NAMES, GROUP_SIZE, SLOTS, design_classes
from fgdeploy.data.synth_scene import make_scene
from fgdeploy.data.synthetic import MANIFEST, generate_synth_birds
from fgdeploy.errors import ConfigError, DatasetError
from fgdeploy.tensors import FLIP_PERMUTATION, PART_NAMES

P = {name: i for i, name in enumerate(PART_NAMES)}
STYLE = BirdStyle(body=(120, 110, 100), head=(120, 110, 100), wing=(90, 80, 70), tail=(90, 80, 70),
                  legs=(60, 50, 50), perch=(90, 70, 50))
PROFILE = BirdPose(facing=1, yaw=0.0, pitch=10.0, head_yaw=0.0, head_pitch=0.0, roll=0.0, spread=0.0, legs=True,
                   perch=False, tail_angle=-10.0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synth_birds(tmp_path_factory.mktemp("synth") / "sb", classes=3, images_per_class=4, size=96,
                                seed=5)


def test_generated_set_reads_back_with_the_reader(small_set: Path) -> None:
    every = CubDataset(small_set, "all")
    assert len(every) == 12 and len(CubDataset(small_set, "train")) == 6
    assert all(re.fullmatch(r"\d{3}\.Synth_bird_\d{2}[a-e]", name) for name in every.class_names)
    assert every.part_names == list(PART_NAMES)
    assert every.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for sample in every:
        assert sample.keypoints.shape == (15, 2) and max(sample.image.shape[:2]) == 96
        x0, y0, x1, y1 = sample.bbox
        inside = sample.keypoints[sample.visible]
        assert np.all((inside >= [x0 - 1, y0 - 1]) & (inside <= [x1 + 1, y1 + 1]))  # parts lie in the box
        assert 0.3 * 96 - 1 <= max(x1 - x0, y1 - y0) <= 0.96 * 96  # the bird fills 30-90 % of the frame
    report = check_dataset(small_set)
    assert report.ok and report.image_files == {"rgb": 12}


def test_same_seed_gives_identical_files_and_another_seed_does_not(small_set: Path, tmp_path: Path) -> None:
    again = generate_synth_birds(tmp_path / "again", classes=3, images_per_class=4, size=96, seed=5)
    other = generate_synth_birds(tmp_path / "other", classes=3, images_per_class=4, size=96, seed=6)
    assert _files(again) == _files(small_set)
    assert (other / "parts/part_locs.txt").read_bytes() != (small_set / "parts/part_locs.txt").read_bytes()


def test_interrupted_run_resumes_to_the_same_files(small_set: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    generate_synth_birds(copy, classes=3, images_per_class=4, size=96, seed=5)
    next(copy.glob("images/*/*.jpg")).unlink()
    (copy / "parts/part_locs.txt").unlink()
    generate_synth_birds(copy, classes=3, images_per_class=4, size=96, seed=5)
    assert _files(copy) == _files(small_set)


def test_parallel_workers_write_the_same_files(tmp_path: Path) -> None:
    one = generate_synth_birds(tmp_path / "one", classes=2, images_per_class=2, size=64, seed=1)
    two = generate_synth_birds(tmp_path / "two", classes=2, images_per_class=2, size=64, seed=1, workers=2)
    assert _files(one) == _files(two)


def test_refuses_foreign_folder_and_other_settings(small_set: Path, tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not empty and holds no synth_birds.json"):
        generate_synth_birds(tmp_path, classes=2, images_per_class=2, size=64)
    with pytest.raises(DatasetError, match="made with .*'seed': 5.*not .*'seed': 9"):
        generate_synth_birds(small_set, classes=3, images_per_class=4, size=96, seed=9)
    with pytest.raises(ConfigError, match="classes must be 1..200, got 201"):
        generate_synth_birds(tmp_path / "new", classes=201)


def test_manifest_records_settings_and_class_details(small_set: Path) -> None:
    manifest = json.loads((small_set / MANIFEST).read_text())
    assert manifest["complete"] and manifest["seed"] == 5 and manifest["images"] == 12
    assert [c["name"] for c in manifest["classes_detail"]] == CubDataset(small_set, "all").class_names


def test_class_design_is_fixed_distinct_and_same_colours_in_other_places() -> None:
    classes = design_classes(200)
    assert classes[:20] == design_classes(20)
    assert len({(c.colours, c.beak_shape) for c in classes}) == 200
    assert min(sum(a != b for a, b in zip(x.colours, y.colours)) for x, y in combinations(classes, 2)) >= 2
    for g in range(0, 200, GROUP_SIZE):
        group = classes[g:g + GROUP_SIZE]
        assert len({tuple(sorted(c.colours)) for c in group}) == 1  # same colours, different parts
        assert all(sum(a != b for a, b in zip(group[0].colours, c.colours)) == 2 for c in group[1:])
    used = {colour: {s for c in classes for s, col in zip(SLOTS, c.colours) if col == colour}
            for colour in COLOUR_NAMES}
    assert all(len(slots) == len(SLOTS) for slots in used.values())  # every colour appears on every part
    with pytest.raises(ValueError):
        design_classes(0)


def test_profile_bird_facing_right_shows_its_right_side() -> None:
    bird = build_bird(PROFILE, STYLE, design_classes(1)[0])
    vis = dict(zip(PART_NAMES, bird.visible))
    assert vis["right_eye"] and vis["right_wing"] and vis["right_leg"]
    assert not vis["left_eye"] and not vis["left_wing"] and not vis["left_leg"]
    assert all(vis[p] for p in ("back", "beak", "belly", "breast", "crown", "forehead", "nape", "tail", "throat"))


def test_keypoints_sit_at_their_anatomical_places() -> None:
    kp = {name: build_bird(PROFILE, STYLE, design_classes(1)[0]).keypoints[i] for name, i in P.items()}
    u = {k: v[0] for k, v in kp.items()}
    v = {k: v[1] for k, v in kp.items()}  # screen: y grows downwards
    assert u["beak"] > u["forehead"] > u["crown"] > u["nape"] > u["back"] > u["tail"]  # facing right
    assert u["breast"] > u["belly"] > u["tail"]
    assert v["crown"] < v["right_eye"] < v["throat"] < v["breast"]
    assert v["back"] < v["right_wing"] < v["belly"] < v["right_leg"]


@pytest.mark.parametrize("pose", [PROFILE, dataclasses.replace(PROFILE, yaw=35.0, head_yaw=30.0, spread=0.8),
                                  dataclasses.replace(PROFILE, yaw=-20.0, head_yaw=-40.0, pitch=30.0)])
def test_facing_left_is_the_mirror_image_with_left_and_right_swapped(pose: BirdPose) -> None:
    cls = design_classes(1)[0]
    right = build_bird(pose, STYLE, cls)
    left = build_bird(dataclasses.replace(pose, facing=-1), STYLE, cls)
    perm = list(FLIP_PERMUTATION)
    np.testing.assert_allclose(left.keypoints, right.keypoints[perm] * [-1, 1], atol=1e-9)
    np.testing.assert_array_equal(left.visible, right.visible[perm])


def test_far_side_parts_appear_when_the_bird_turns() -> None:
    turned = build_bird(dataclasses.replace(PROFILE, yaw=45.0, head_yaw=35.0, spread=0.9), STYLE,
                        design_classes(1)[0])
    vis = dict(zip(PART_NAMES, turned.visible))
    assert vis["left_eye"] and vis["right_eye"]       # head turned toward the viewer: both eyes
    assert vis["left_wing"] and vis["left_leg"]       # raised far wing and separated far leg
    tucked = build_bird(dataclasses.replace(PROFILE, legs=False), STYLE, design_classes(1)[0])
    assert not tucked.visible[P["left_leg"]] and not tucked.visible[P["right_leg"]]


def test_class_details_are_painted_at_their_keypoints() -> None:
    classes = design_classes(20)
    hits, total = 0, 0
    for index in range(40):
        cls = classes[index % 20]
        image, ann = make_scene(cls, 192, seed=3, index=index, background=False)
        for part, slot in (("beak", "beak"), ("crown", "crown"), ("left_wing", "wing_bar"),
                           ("right_wing", "wing_bar"), ("tail", "tail_tip"), ("breast", "breast")):
            if ann.visible[P[part]]:
                u, v = ann.keypoints[P[part]]
                hits += int(np.abs(image[int(v), int(u)].astype(int) - cls.colour(slot)).max() <= 40)
                total += 1
    assert total > 150 and hits / total >= 0.9


def test_generation_writes_the_issue_example_size(tmp_path: Path) -> None:
    # the issue's example at reduced size for CI; the full 20 x 30 at 256 px is run by test_..._full below
    root = generate_synth_birds(tmp_path / "sb", classes=20, images_per_class=2, size=64)
    dataset = CubDataset(root, "all")
    assert len(dataset) == 40 and len(dataset.class_names) == 20
    assert dataset[39].keypoints.shape == (15, 2)


@pytest.mark.slow
def test_generation_full_issue_example_reads_back_600_items(tmp_path: Path) -> None:
    root = generate_synth_birds(tmp_path / "sb", classes=20, images_per_class=30, size=256)
    dataset = CubDataset(root, "all")
    assert len(dataset) == 600
    samples = [dataset[i] for i in range(0, 600, 7)]
    assert all(s.keypoints.shape == (15, 2) and max(s.image.shape[:2]) == 256 for s in samples)
    rates = np.mean([s.visible for s in samples], axis=0)
    assert 0.25 < rates[P["left_eye"]] < 0.75 and 0.25 < rates[P["right_eye"]] < 0.75
    assert rates[P["back"]] > 0.9
