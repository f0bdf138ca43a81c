"""Decode any image file to RGB uint8 (H, W, 3), and describe what the file held.

CUB-200-2011 is mostly RGB JPEG, with some grayscale files; other CUB-format sets may hold PNGs with a
palette or alpha, 16-bit PNGs or CMYK JPEGs. Every decoder path ends in the same array type, like PIL's
``convert("RGB")``: grayscale is replicated, a palette is expanded, alpha is dropped (not composited),
16-bit samples are scaled to 8 bits, CMYK (Adobe, inverted) is converted. EXIF orientation is ignored, as
PIL does by default, so annotation coordinates stay in stored pixel order. Errors name the file.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fgdeploy.errors import ImageError

logger = logging.getLogger(__name__)

# JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {0: "grayscale", 2: "rgb", 3: "palette", 4: "grayscale_alpha", 6: "rgba"}


class TooManyPixelsError(ImageError):
    """An image above the pixel limit, refused before (or right after) decoding."""


@dataclass(frozen=True)
class ImageInfo:
    """What an image file holds, read from its header (and the decoded array where headers say nothing).

    Attributes:
        format: "jpeg", "png" or "other".
        mode: "rgb", "grayscale", "palette", "grayscale_alpha", "rgba" or "cmyk".
        bit_depth: bits per sample (8 or 16 in practice).
        width, height: pixels; 0 when the header could not be read.
        truncated: a JPEG without its end-of-image marker (decoders fill the rest with grey).
    """

    format: str
    mode: str
    bit_depth: int
    width: int
    height: int
    truncated: bool = False

    @property
    def is_plain_rgb(self) -> bool:
        """True for the common case: 8-bit RGB with no alpha."""
        return self.mode == "rgb" and self.bit_depth == 8 and not self.truncated


def read_image(path: str | Path) -> np.ndarray:
    """Decode ``path`` to an (H, W, 3) uint8 RGB array.

    Raises:
        ImageError: the file is missing, unreadable or not a decodable image; the message names the path.
    """
    return read_image_with_info(path)[0]


def read_image_with_info(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """Decode ``path`` and describe it; see `read_image`.

    Raises:
        ImageError: as `read_image`.
    """
    image, info, _ = decode_image(read_bytes(path), path)
    return image, info


def jpeg_scale_factor(info: ImageInfo, min_hw: tuple[int, int]) -> int:
    """The largest libjpeg scale-down (8, 4 or 2) whose output still covers ``min_hw`` = (H, W); else 1.

    Only plain 8-bit three-component JPEGs qualify (grayscale, CMYK, 12-bit and truncated files: 1).
    libjpeg's 1/f output is ceil(W / f) x ceil(H / f).
    """
    if info.format != "jpeg" or not info.is_plain_rgb or info.width == 0 or info.height == 0:
        return 1
    for factor in (8, 4, 2):
        if -(-info.width // factor) >= min_hw[1] and -(-info.height // factor) >= min_hw[0]:
            return factor
    return 1


def read_image_reduced(path: str | Path, min_hw: tuple[int, int]) -> tuple[np.ndarray, ImageInfo, int]:
    """Like `read_image_with_info`, but a JPEG several times larger than ``min_hw`` = (H, W) is decoded at
    1/2, 1/4 or 1/8 scale in the DCT domain (`jpeg_scale_factor`): several times faster, and the scaled IDCT
    averages like an area filter. ``info`` keeps the file's full size; also returns the factor used (1: full).
    EXIF orientation is not applied, as in `read_image`.
    """
    return decode_image(read_bytes(path), path, min_hw)


def decode_image(data: np.ndarray | bytes, name: str | Path, min_hw: tuple[int, int] | None = None,
                 max_pixels: int | None = None) -> tuple[np.ndarray, ImageInfo, int]:
    """Decode an encoded image held in memory (a file's bytes), as `read_image_with_info` decodes a file, or with
    ``min_hw`` as `read_image_reduced` does; ``name`` stands for the file in error messages. Returns (RGB image,
    info, the scale-down factor used: 1 for a full decode). With ``max_pixels``, an image with more pixels is
    refused before decoding (from its header) or, for a header not read here, right after (the file's full size
    counts, whatever ``min_hw``).

    Raises:
        ImageError: empty, not a decodable image, or more than ``max_pixels`` pixels.
    """
    data = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if data.size == 0:
        raise ImageError(f"{name}: empty file (0 bytes); replace or remove it")
    info = _probe_bytes(data)
    if max_pixels:   # the probe sizes a JPEG or PNG; header_size reads the other formats' headers
        _refuse_above(max_pixels, header_size(data) if info.format == "other" else _probed_size(info), name)
    factor = 1 if min_hw is None else jpeg_scale_factor(info, min_hw)
    if factor == 1:
        image, info = _decode_full(data, info, name)
        check_pixels(image, name, max_pixels)
        return image, info, 1
    decoded = cv2.imdecode(data, _REDUCED_COLOR[factor] | cv2.IMREAD_IGNORE_ORIENTATION)
    if decoded is None or decoded.size == 0:
        raise ImageError(f"{name}: not a decodable image (jpeg, {data.size} bytes); the file is corrupt: "
                         "replace or remove it")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), info, factor


def _decode_full(data: np.ndarray, info: ImageInfo, path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.size == 0:
        raise ImageError(f"{path}: not a decodable image ({info.format}, {data.size} bytes); the file is "
                         "corrupt or in an unsupported format: replace or remove it")
    rgb = _to_rgb_uint8(decoded, path)
    if info.width == 0:  # format without a header we parse: describe from the array
        info = ImageInfo(info.format, _mode_from_array(decoded), 8 * decoded.dtype.itemsize,
                         rgb.shape[1], rgb.shape[0])
    return rgb, info


def probe_image(path: str | Path) -> ImageInfo:
    """Describe an image from its header only (fast; does not decode pixels)."""
    return _probe_bytes(read_bytes(path))


def probe_image_bytes(data: np.ndarray | bytes) -> ImageInfo:
    """`probe_image` of an encoded image held in memory."""
    return _probe_bytes(np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data)


def header_size(data: np.ndarray | bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a JPEG, PNG, BMP, WebP or TIFF file, without decoding; None for other
    formats or a header too damaged to read."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    if raw.startswith(b"\xff\xd8") or raw.startswith(_PNG_SIGNATURE):
        return _probed_size(_probe_bytes(np.frombuffer(raw, np.uint8)))
    try:
        if raw.startswith(b"BM"):
            return _bmp_size(raw)
        if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
            return _webp_size(raw)
        if raw[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(raw)
    except (struct.error, IndexError):
        return None
    return None


def check_pixels(image_or_file: np.ndarray, path: str | Path, max_pixels: int | None) -> None:
    """Refuse an image above ``max_pixels`` pixels: given the file's bytes (1-D), judged from its header before
    any decoding (a header not read here passes, to be judged once decoded); given a decoded (H, W, ...) array,
    from its shape.

    Raises:
        ImageError: naming the path, the size and the limit.
    """
    if not max_pixels:
        return
    size = header_size(image_or_file) if image_or_file.ndim == 1 else (image_or_file.shape[1], image_or_file.shape[0])
    _refuse_above(max_pixels, size, path)


def _probed_size(info: ImageInfo) -> tuple[int, int] | None:
    """(width, height) of a JPEG's or PNG's probe; None when its header did not say."""
    return (info.width, info.height) if info.width and info.height else None


def _refuse_above(max_pixels: int, size: tuple[int, int] | None, path: str | Path) -> None:
    """`check_pixels` of a (width, height) known (None: unknown, passes)."""
    if size and size[0] * size[1] > max_pixels:
        rgb_gib = 3 * size[0] * size[1] / 2**30
        raise TooManyPixelsError(
            f"{path}: {size[0]} x {size[1]} pixels ({size[0] * size[1] / 1e6:.0f} Mpx) is more than --max-pixels "
            f"{max_pixels} allows; not decoded" + (f" (it would take {rgb_gib:.1f} GiB as RGB)" if rgb_gib >= 0.1 else "")
            + ": raise --max-pixels to score it")


def _bmp_size(raw: bytes) -> tuple[int, int] | None:
    header = struct.unpack("<I", raw[14:18])[0]
    if header == 12:   # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", raw[18:22])
    else:              # BITMAPINFOHEADER and later: 32-bit, height negative for top-down rows
        width, height = struct.unpack("<ii", raw[18:26])
    return (abs(width), abs(height)) if width and height else None


def _webp_size(raw: bytes) -> tuple[int, int] | None:
    chunk = raw[12:16]
    if chunk == b"VP8 ":    # lossy: 14-bit sizes after the frame tag and start code
        width, height = struct.unpack("<HH", raw[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":    # lossless: signature byte, then 14-bit (size - 1) each
        bits = struct.unpack("<I", raw[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":    # extended: 24-bit (canvas size - 1) each
        return int.from_bytes(raw[24:27], "little") + 1, int.from_bytes(raw[27:30], "little") + 1
    return None


def _tiff_size(raw: bytes) -> tuple[int, int] | None:
    order = "<" if raw[:2] == b"II" else ">"
    offset = struct.unpack(order + "I", raw[4:8])[0]
    count = struct.unpack(order + "H", raw[offset:offset + 2])[0]
    found: dict[int, int] = {}
    for k in range(count):
        tag, kind, _, value = struct.unpack(order + "HHI4s", raw[offset + 2 + 12 * k:offset + 14 + 12 * k])
        if tag in (256, 257):   # ImageWidth, ImageLength: SHORT or LONG
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value[:2] if kind == 3 else value)[0]
    return (found[256], found[257]) if 256 in found and 257 in found else None


_REDUCED_COLOR = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def read_bytes(path: str | Path) -> np.ndarray:
    """The bytes of an image file as a uint8 array, refusing an unreadable or empty file (naming it)."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ImageError(f"{path}: cannot read image file ({reason}); check the path and permissions") from exc
    if data.size == 0:
        raise ImageError(f"{path}: empty file (0 bytes); replace or remove it")
    return data


def _to_rgb_uint8(image: np.ndarray, path: str | Path) -> np.ndarray:
    """Convert whatever ``cv2.imdecode(..., IMREAD_UNCHANGED)`` returned to (H, W, 3) uint8 RGB."""
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"{path}: unsupported sample type {image.dtype}; convert the image to 8-bit RGB")
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels in (1, 2):  # grayscale (+ alpha): replicate the gray channel
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if channels in (3, 4):  # BGR (+ alpha): drop alpha, reorder to RGB (cvtColor: ~100x faster than a strided copy)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB if channels == 3 else cv2.COLOR_BGRA2RGB)
    raise ImageError(f"{path}: {channels} channels; expected 1 to 4. Convert the image to RGB")


def _mode_from_array(image: np.ndarray) -> str:
    channels = 1 if image.ndim == 2 else image.shape[2]
    return {1: "grayscale", 2: "grayscale_alpha", 3: "rgb", 4: "rgba"}.get(channels, "other")


def _probe_bytes(data: np.ndarray) -> ImageInfo:
    raw = data.tobytes()
    if raw.startswith(b"\xff\xd8"):
        return _probe_jpeg(raw)
    if raw.startswith(_PNG_SIGNATURE) and len(raw) >= 33 and raw[12:16] == b"IHDR":
        width, height, depth, color_type = struct.unpack(">IIBB", raw[16:26])
        return ImageInfo("png", _PNG_COLOR_TYPES.get(color_type, "other"), depth, width, height)
    return ImageInfo("other", "other", 8, 0, 0)


def _probe_jpeg(raw: bytes) -> ImageInfo:
    truncated = raw.rstrip(b"\x00").rfind(b"\xff\xd9") < 0
    pos = 2
    while pos + 4 <= len(raw):
        if raw[pos] != 0xFF:
            break
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = struct.unpack(">H", raw[pos + 2:pos + 4])[0]
        if marker in _JPEG_SOF and pos + 10 <= len(raw):
            depth, height, width, components = struct.unpack(">BHHB", raw[pos + 4:pos + 10])
            mode = {1: "grayscale", 3: "rgb", 4: "cmyk"}.get(components, "other")
            return ImageInfo("jpeg", mode, depth, width, height, truncated)
        pos += 2 + length
    return ImageInfo("jpeg", "other", 8, 0, 0, truncated)


def encode_image(image: np.ndarray, suffix: str, jpeg_quality: int = 92) -> bytes:
    """Encode an RGB uint8 image as ``suffix`` (".jpg" or ".png") bytes.

    Raises:
        ImageError: OpenCV could not encode it.
    """
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if suffix.lower() in (".jpg", ".jpeg") else []
    ok, buffer = cv2.imencode(suffix, np.ascontiguousarray(image[:, :, ::-1]), params)
    if not ok:
        raise ImageError(f"cannot encode a {image.shape} image as {suffix}")
    return buffer.tobytes()
