"""Robust reading of images and label PNGs: every failure is a DataError naming the file.

Images are decoded with OpenCV (any depth / channel count) and converted to 8-bit RGB: grayscale,
RGBA, palette and 16-bit files are converted, not rejected. Label PNGs are read with Pillow so that
a palette ("P" mode) PNG yields its indices, as VOC-style annotation tools write them. Truncated
files are detected explicitly because libjpeg decodes a cut-off JPEG without complaint.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from spd.errors import DataError

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise DataError(f"{path}: empty file")
    return data


def check_complete(data: bytes, path: Path) -> None:
    """Raise DataError if a JPEG lacks its end-of-image marker or a PNG its IEND chunk."""
    if data[:2] == b"\xff\xd8":
        if b"\xff\xd9" not in data[-64:]:  # encoders may pad a few bytes after EOI
            raise DataError(f"{path}: truncated JPEG (no end-of-image marker)")
    elif data[:8] == _PNG_MAGIC and _PNG_IEND not in data[-32:]:
        raise DataError(f"{path}: truncated PNG (no IEND chunk)")


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Pixels of any stored depth -> uint8: 16-bit keeps its high byte; float in [0, 1] is scaled."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return (arr >> 8).astype(np.uint8)
    if arr.dtype.kind == "f":
        scale = 255.0 if float(np.nanmax(arr, initial=0)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(arr) * scale, 0, 255).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)


def decode_image(data: bytes, path: Path) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8 RGB."""
    check_complete(data, path)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if arr is None or arr.size == 0:
        raise DataError(f"{path}: not a readable image (corrupt or unsupported format)")
    arr = to_uint8(arr)
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    channels = arr.shape[2]
    if channels == 1:
        return cv2.cvtColor(arr[..., 0], cv2.COLOR_GRAY2RGB)
    if channels == 2:  # gray + alpha
        return cv2.cvtColor(arr[..., 0], cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any common image file; DataError naming the file on failure."""
    path = Path(path)
    return decode_image(_read_bytes(path), path)


def read_label(path: str | Path) -> np.ndarray:
    """(H, W) uint8 class ids from a label PNG (gray, palette, 16-bit, or equal-channel RGB/RGBA)."""
    import io

    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    data = _read_bytes(path)
    check_complete(data, path)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: not a readable label image ({e})") from None
    if mode in ("RGB", "RGBA", "LA"):
        colour = arr[..., :3] if mode != "LA" else arr[..., :1]
        if colour.shape[-1] == 3 and not (
            np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])
        ):
            raise DataError(f"{path}: colour label image; expected class ids (gray or palette PNG)")
        arr = colour[..., 0]
    if arr.ndim != 2:
        raise DataError(f"{path}: label image has shape {arr.shape}; expected a single channel")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype != np.uint8:
        top = int(arr.max(initial=0))
        if top > 255 or int(arr.min(initial=0)) < 0:
            raise DataError(f"{path}: label value {top} does not fit a class id (0..255)")
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


def encode_png(arr: np.ndarray) -> bytes:
    """Deterministic PNG bytes (no timestamps): arrays are written as cv2 sees them (BGR order)."""
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise DataError("cannot encode PNG")
    return buf.tobytes()


def encode_jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    """Deterministic baseline JPEG bytes from an (H, W, 3) RGB array."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DataError("cannot encode JPEG")
    return buf.tobytes()
