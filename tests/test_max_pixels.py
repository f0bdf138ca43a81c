"""``--max-pixels``: images above a pixel limit are refused from their header, before any decoding, with a
reason in the errors file; the rest of the run goes on.

Must show: the header size of every accepted format (JPEG, PNG, BMP, WebP lossy/lossless/extended, TIFF both
byte orders) read without decoding; a decodable 17,000 x 17,000 PNG (a decompression bomb: 0.3 MB of file, 0.8 GiB
as RGB) refused at the default limit without calling the decoder; crafted headers declaring 60,000 x 60,000
refused with the pixel reason (not "corrupt"); the CLI option moves the limit, 0 lifts it.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fgdeploy.inference.results import read_errors, read_results, errors_path_for
from test_infer import _bright_spot_image, _encode, _run, tiny_ckpt  # noqa: F401 - tiny_ckpt is a fixture


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def zero_png(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG of zeros, compressed row by row (never held in memory whole)."""
    packer = zlib.compressobj(9)
    row = bytes(width + 1)   # filter byte 0, then the pixels
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b""))


def declared_png(width: int, height: int) -> bytes:
    """A PNG header declaring ``width`` x ``height`` with a few bytes of pixels (no decoder could fill it)."""
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(bytes(64))) + _png_chunk(b"IEND", b""))


def declared_jpeg(width: int, height: int) -> bytes:
    """A JPEG whose start-of-frame declares ``width`` x ``height`` (baseline, 3 components), then ends."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", 2 + len(sof)) + sof + b"\xff\xd9"


@pytest.mark.parametrize("suffix, params", [
    (".jpg", []), (".png", []), (".bmp", []), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
    (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]), (".tif", []), (".tif", [cv2.IMWRITE_TIFF_COMPRESSION, 1]),
])
def test_header_size_of_every_accepted_format(suffix, params):
    from fgdeploy.data.images import header_size

    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ok, data = cv2.imencode(suffix, image, params)
    assert ok and header_size(data.ravel()) == (53, 37)


def test_header_size_of_crafted_headers_and_of_what_it_cannot_read():
    from fgdeploy.data.images import header_size

    vp8x = b"RIFF" + struct.pack("<I", 22) + b"WEBP" + b"VP8X" + struct.pack("<I", 10) + bytes(4) \
        + (40000 - 1).to_bytes(3, "little") + (30000 - 1).to_bytes(3, "little")
    big_endian_tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 2) \
        + struct.pack(">HHI4s", 256, 4, 1, struct.pack(">I", 70000)) \
        + struct.pack(">HHI4s", 257, 3, 1, struct.pack(">H", 500) + b"\x00\x00")
    top_down_bmp = b"BM" + bytes(12) + struct.pack("<Iii", 40, 120, -80) + bytes(28)
    assert header_size(vp8x) == (40000, 30000)
    assert header_size(big_endian_tiff) == (70000, 500)
    assert header_size(top_down_bmp) == (120, 80)
    assert header_size(declared_png(60000, 60000)) == (60000, 60000)
    assert header_size(declared_jpeg(65000, 64000)) == (65000, 64000)
    assert header_size(b"GIF89a" + bytes(20)) is None and header_size(b"BM\x00") is None


def test_a_decompression_bomb_is_refused_at_the_default_limit_without_decoding(tmp_path, monkeypatch):
    import fgdeploy.data.images as images

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(zero_png(17000, 17000))   # 2.9e8 pixels > 2**28
    (folder / "declared.png").write_bytes(declared_png(60000, 60000))
    (folder / "declared.jpg").write_bytes(declared_jpeg(65000, 64000))
    (folder / "fine.png").write_bytes(_encode(_bright_spot_image(30, 40, (5, 5)), ".png"))
    assert (folder / "bomb.png").stat().st_size < 1 << 20
    decoded: list[tuple[int, ...]] = []
    real = images.cv2.imdecode
    monkeypatch.setattr(images.cv2, "imdecode", lambda data, flags: decoded.append(data.shape) or real(data, flags))
    paths = sorted(str(p) for p in folder.iterdir())
    report = _run(paths, tmp_path / "r.csv")
    assert [Path(r["path"]).name for r in read_results(tmp_path / "r.csv")] == ["fine.png"]
    reasons = {Path(e["path"]).name: e["error"] for e in read_errors(errors_path_for(tmp_path / "r.csv"))}
    assert set(reasons) == {"bomb.png", "declared.png", "declared.jpg"} and report.exit_code == 0
    assert reasons["bomb.png"] == ("17000 x 17000 pixels (289 Mpx) is more than --max-pixels 268435456 allows; not "
                                   "decoded (it would take 0.8 GiB as RGB): raise --max-pixels to score it")
    assert reasons["declared.jpg"].startswith("65000 x 64000 pixels") and "truncated" not in reasons["declared.jpg"]
    assert len(decoded) == 1                                   # fine.png only: nothing else reached the decoder


def test_cli_max_pixels_moves_the_limit_and_0_lifts_it(tmp_path, tiny_ckpt):  # noqa: F811 - pytest fixture
    from fgdeploy.cli import cli
    from fgdeploy.inference.local import DEFAULT_MAX_PIXELS

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "wide.png").write_bytes(_encode(_bright_spot_image(30, 40, (5, 5)), ".png"))     # 1,200 pixels
    (folder / "square.png").write_bytes(_encode(_bright_spot_image(30, 30, (5, 5)), ".png"))   # 900 pixels
    common = ["infer", str(folder), "--model", str(tiny_ckpt), "--batch", "2"]
    limited = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "a.csv"), "--max-pixels", "1000"])
    unlimited = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "b.csv"), "--max-pixels", "0"])
    assert limited.exit_code == 0 and "scored 1/2 images" in limited.output, limited.output
    assert read_errors(errors_path_for(tmp_path / "a.csv")) == [
        {"path": str(folder / "wide.png"), "error": "40 x 30 pixels (0 Mpx) is more than --max-pixels 1000 allows; "
         "not decoded: raise --max-pixels to score it"}]
    assert unlimited.exit_code == 0 and "scored 2/2 images" in unlimited.output, unlimited.output
    assert str(DEFAULT_MAX_PIXELS) in CliRunner().invoke(cli, ["infer", "--help"]).output.replace("\n", "")
