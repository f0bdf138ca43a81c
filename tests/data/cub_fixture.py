"""A hand-written CUB-format fixture: six images of every kind a reader must convert, three classes.

The annotation text below is written out by hand (in the real files' format); ``classes.txt`` and
``parts/part_locs.txt`` use Windows (CRLF) line endings. Image files are built with OpenCV, except the
palette PNG and the CMYK JPEG, which OpenCV cannot write: those are assembled byte by byte here.
The fixtures using it are in conftest.py.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

IMAGES_TXT = """\
1 001.Black_footed_Albatross/Black_Footed_Albatross_0001_1.jpg
2 001.Black_footed_Albatross/Black_Footed_Albatross_0002_2.jpg
3 002.Laysan_Albatross/Laysan_Albatross_0001_3.png
4 002.Laysan_Albatross/Laysan_Albatross_0002_4.png
5 003.Sooty_Albatross/Sooty_Albatross_0001_5.jpg
6 003.Sooty_Albatross/Sooty_Albatross_0002_6.png
"""
CLASSES_TXT = "1 001.Black_footed_Albatross\r\n2 002.Laysan_Albatross\r\n3 003.Sooty_Albatross\r\n"
LABELS_TXT = "1 1\n2 1\n3 2\n4 2\n5 3\n6 3\n"
SPLIT_TXT = "1 1\n2 0\n3 1\n4 0\n5 1\n6 0\n"
BOXES_TXT = """\
1 3.0 2.0 30.0 24.0
2 1.0 1.0 20.0 15.0
3 2.0 3.0 25.0 14.0
4 1.0 1.0 22.0 14.0
5 1.0 1.0 14.0 7.0
6 4.0 4.0 12.0 12.0
"""
PARTS_TXT = """\
1 back
2 beak
3 belly
4 breast
5 crown
6 forehead
7 left eye
8 left leg
9 left wing
10 nape
11 right eye
12 right leg
13 right wing
14 tail
15 throat
"""
# Image 1 (40 x 30 RGB JPEG): every part written out; the beak (part 2) is marked invisible (0 0 0).
PART_LOCS_IMAGE_1 = """\
1 1 20.0 8.0 1
1 2 0.0 0.0 0
1 3 21.0 22.0 1
1 4 15.0 18.0 1
1 5 13.0 4.0 1
1 6 10.0 5.0 1
1 7 13.0 7.0 1
1 8 18.0 27.0 1
1 9 22.0 14.0 1
1 10 17.0 6.0 1
1 11 31.5 8.5 1
1 12 24.0 27.0 1
1 13 28.0 14.0 1
1 14 36.0 20.0 1
1 15 11.0 11.0 1
"""
# Image 2 (32 x 24 grayscale JPEG): the tail (part 14) is marked visible but lies outside the image.
OUTSIDE_PART = "2 14 100.0 12.0 1"

IMAGE_SIZES = {1: (30, 40), 2: (24, 32), 3: (20, 30), 4: (16, 24), 5: (8, 16), 6: (20, 20)}  # id -> (H, W)
CMYK_RGB = (200, 41, 31)       # what the CMYK fixture decodes to (Adobe inverted CMYK 255, 51, 38, 200)
PALETTE = [(255, 0, 0), (0, 255, 0), (10, 20, 30)]


def part_locs_text() -> str:
    """Image 1 as written above; images 2-6 with every part visible at a simple in-image spot."""
    lines = PART_LOCS_IMAGE_1.splitlines()
    for image_id in range(2, 7):
        h, w = IMAGE_SIZES[image_id]
        for part in range(1, 16):
            line = f"{image_id} {part} {1 + part % w}.0 {1 + (2 * part) % h}.0 1"
            lines.append(OUTSIDE_PART if (image_id, part) == (2, 14) else line)
    return "\r\n".join(lines) + "\r\n"


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def palette_png(indices: np.ndarray, palette: list[tuple[int, int, int]]) -> bytes:
    """An 8-bit indexed-colour PNG (colour type 3)."""
    h, w = indices.shape
    raw = b"".join(b"\x00" + bytes(indices[r].astype(np.uint8)) for r in range(h))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
            + png_chunk(b"PLTE", bytes(np.asarray(palette, np.uint8).ravel()))
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def cmyk_jpeg(width: int, height: int, cmyk: tuple[int, int, int, int]) -> bytes:
    """A baseline 4-component (Adobe, inverted CMYK) JPEG of one flat colour: DC-only 8x8 blocks."""
    def segment(marker: int, payload: bytes) -> bytes:
        return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload

    out = b"\xff\xd8" + segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0))
    out += segment(0xDB, b"\x00" + b"\x01" * 64)  # all-ones quantisation table
    out += segment(0xC0, struct.pack(">BHHB", 8, height, width, 4) + b"".join(bytes([i + 1, 0x11, 0])
                                                                              for i in range(4)))
    out += segment(0xC4, b"\x00" + bytes([0, 0, 0, 12] + [0] * 12) + bytes(range(12)))  # DC: 4-bit codes
    out += segment(0xC4, b"\x10" + bytes([0, 2] + [0] * 14) + b"\x00\x01")              # AC: EOB = "00"
    out += segment(0xDA, bytes([4]) + b"".join(bytes([i + 1, 0x00]) for i in range(4)) + b"\x00\x3f\x00")
    bits: list[int] = []

    def put(value: int, n: int) -> None:
        bits.extend((value >> (n - 1 - k)) & 1 for k in range(n))

    previous = [0, 0, 0, 0]
    for _ in range(((width + 7) // 8) * ((height + 7) // 8)):
        for c in range(4):
            dc = 8 * (cmyk[c] - 128)
            diff, previous[c] = dc - previous[c], dc
            size = abs(diff).bit_length()
            put(size, 4)
            if size:
                put(diff if diff > 0 else diff + (1 << size) - 1, size)
            put(0, 2)
    bits.extend([1] * (-len(bits) % 8))
    data = bytearray()
    for i in range(0, len(bits), 8):
        data.append(int("".join(map(str, bits[i:i + 8])), 2))
        if data[-1] == 0xFF:
            data.append(0)
    return out + bytes(data) + b"\xff\xd9"


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _encode(image: np.ndarray, suffix: str) -> bytes:
    ok, buffer = cv2.imencode(suffix, image)
    assert ok
    return buffer.tobytes()


def build_cub_fixture(root: Path) -> Path:
    """Write the six-image CUB-format fixture under ``root`` and return it."""
    rng = np.random.default_rng(7)
    files = {
        "images.txt": IMAGES_TXT, "classes.txt": CLASSES_TXT, "image_class_labels.txt": LABELS_TXT,
        "train_test_split.txt": SPLIT_TXT, "bounding_boxes.txt": BOXES_TXT, "parts/parts.txt": PARTS_TXT,
        "parts/part_locs.txt": part_locs_text(),
    }
    for name, text in files.items():
        _write(root / name, text.encode("utf-8"))
    paths = [line.split(" ", 1)[1] for line in IMAGES_TXT.splitlines()]
    images = root / "images"
    bgr = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    _write(images / paths[0], _encode(bgr, ".jpg"))
    _write(images / paths[1], _encode(rng.integers(0, 256, (24, 32), dtype=np.uint8), ".jpg"))
    bgra = np.dstack([np.full((20, 30, 3), (40, 120, 200), np.uint8), rng.integers(0, 256, (20, 30), np.uint8)])
    _write(images / paths[2], _encode(bgra, ".png"))
    _write(images / paths[3], palette_png(np.arange(16 * 24).reshape(16, 24) % 3, PALETTE))
    _write(images / paths[4], cmyk_jpeg(16, 8, (255, 51, 38, 200)))
    _write(images / paths[5], _encode(np.full((20, 20, 3), (1000, 30000, 65535), np.uint16), ".png"))
    return root
