"""``fgdeploy data synth`` and ``fgdeploy data check`` through click's CliRunner: output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fgdeploy.cli import cli
from fgdeploy.data.images import read_image

EXAMPLE = "part_locs.txt:1203: expected 5 fields <image_id> <part_id> <x> <y> <visible>, got 4"


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "sb"
    result = CliRunner().invoke(cli, ["-q", "data", "synth", str(root), "--classes", "6", "--images-per-class", "14",
                                      "--size", "64", "--seed", "2", "--preview"])
    assert result.exit_code == 0, result.output
    assert f"wrote 84 images in 6 classes to {root}" in result.stdout
    return root


def test_synth_writes_a_dataset_that_checks_clean_and_a_preview(synth_root: Path) -> None:
    preview = read_image(synth_root / "preview.png")
    assert preview.shape[0] > 300 and preview.shape[1] > 1000 and preview.std() > 20
    result = CliRunner().invoke(cli, ["data", "check", str(synth_root)])
    assert result.exit_code == 0, result.output
    assert "images: 84 (train 42, test 42) in 6 classes (14..14 per class), 15 parts" in result.stdout
    assert result.stdout.rstrip().endswith("usable")


def test_check_reports_the_issue_example_line_and_exits_1(synth_root: Path, tmp_path: Path) -> None:
    import shutil

    broken = Path(shutil.copytree(synth_root, tmp_path / "broken"))
    locs = broken / "parts" / "part_locs.txt"
    lines = locs.read_text().splitlines()
    lines[1202] = " ".join(lines[1202].split()[:4])  # line 1203 loses its <visible> field
    locs.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(cli, ["data", "check", str(broken)])
    assert result.exit_code == 1
    assert f"{broken}/parts/{EXAMPLE}" in result.output
    assert "NOT usable" in result.stdout


def test_check_summarises_the_fixture_kinds(cub_root: Path) -> None:
    result = CliRunner().invoke(cli, ["data", "check", str(cub_root)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "images: 6 (train 3, test 3) in 3 classes (2..2 per class), 15 parts" in out
    assert "image files: cmyk 1, grayscale 1, palette 1, rgb 1, rgb-16bit 1, rgba 1" in out
    assert "1 visible keypoint(s) lie outside their image" in out and "image 2 tail at (100, 12)" in out
    assert "beak 0.83" in out  # image 1 marks its beak invisible: 5 of 6


def test_check_json_is_machine_readable(cub_root: Path) -> None:
    result = CliRunner().invoke(cli, ["data", "check", str(cub_root), "--json", "--no-decode"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["images"] == {"total": 6, "train": 3, "test": 3}
    assert report["visibility"]["beak"] == pytest.approx(5 / 6, abs=1e-4)
    assert report["image_files"]["cmyk"] == 1


def test_check_json_on_a_broken_set_has_the_error_and_exits_1(cub_root: Path) -> None:
    (cub_root / "bounding_boxes.txt").unlink()
    result = CliRunner().invoke(cli, ["data", "check", str(cub_root), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert not report["ok"] and report["errors"][0].startswith(f"{cub_root}/bounding_boxes.txt: missing file")


def test_check_fails_on_an_undecodable_image_naming_its_line(cub_root: Path) -> None:
    target = cub_root / "images" / "001.Black_footed_Albatross" / "Black_Footed_Albatross_0002_2.jpg"
    target.write_bytes(b"\xff\xd8garbage")
    result = CliRunner().invoke(cli, ["data", "check", str(cub_root)])
    assert result.exit_code == 1
    assert f"{cub_root}/images.txt:2: {target}: not a decodable image" in result.output
    assert result.output.count("not a decodable image") == 1   # issue 17 #13: not repeated as a last line
    assert result.output.strip().endswith("NOT usable: 1 error; fix the lines named above and check again")


@pytest.mark.parametrize("decode", [True, False])
def test_check_fails_on_an_empty_image_file_naming_its_line(cub_root: Path, decode: bool) -> None:
    target = cub_root / "images" / "001.Black_footed_Albatross" / "Black_Footed_Albatross_0002_2.jpg"
    target.write_bytes(b"")
    result = CliRunner().invoke(cli, ["data", "check", str(cub_root), *([] if decode else ["--no-decode"])])
    assert result.exit_code == 1, result.output
    assert f"{cub_root}/images.txt:2: {target}: empty file (0 bytes)" in result.output
    assert isinstance(result.exception, SystemExit)   # a reported problem, not a crash


def test_check_names_a_folder_where_an_image_should_be(cub_root: Path) -> None:
    target = cub_root / "images" / "001.Black_footed_Albatross" / "Black_Footed_Albatross_0002_2.jpg"
    target.unlink()
    target.mkdir()
    result = CliRunner().invoke(cli, ["data", "check", str(cub_root)])
    assert result.exit_code == 1 and f"images.txt:2: image file {target} is a folder, not an image file" in \
        result.output


def test_check_of_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["data", "check", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_synth_rejects_out_of_range_options(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "x"), "--classes", "201"])
    assert result.exit_code == 2 and "--classes" in result.output
