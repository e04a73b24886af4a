"""DensePose IUV PNGs: channel 0 = I (0 background, 1..24 parts), 1 = U*255, 2 = V*255.

The files follow DensePose's own dumps: written with cv2.imwrite from an (I, U, V) array, so
cv2.imread gives channel 0 = I (in RGB terms the PNG's blue plane holds I and red holds V).
`read_iuv` always returns (H, W, 3) as I, U, V.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from spd.data.imageio import _read_bytes, check_complete, encode_png
from spd.errors import DataError
from spd.labels import NUM_DP_PARTS


def read_iuv(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 I, U*255, V*255; DataError for unreadable files or I outside 0..24."""
    path = Path(path)
    data = _read_bytes(path)
    check_complete(data, path)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DataError(f"{path}: not a readable IUV PNG")
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise DataError(f"{path}: IUV image must have 3 channels (I, U, V), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: IUV image must be 8-bit, got {arr.dtype}")
    iuv = np.ascontiguousarray(arr[..., :3])  # cv2's channel order is DensePose's I, U, V
    top = int(iuv[..., 0].max(initial=0))
    if top > NUM_DP_PARTS:
        raise DataError(f"{path}: DensePose part index {top} out of range 0..{NUM_DP_PARTS}")
    return iuv


def encode_iuv(iuv: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) I, U, V array in DensePose's on-disk channel order."""
    return encode_png(np.ascontiguousarray(iuv))


def write_iuv(path: str | Path, iuv: np.ndarray) -> None:
    Path(path).write_bytes(encode_iuv(iuv))
