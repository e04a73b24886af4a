"""Aspect-preserving letterbox to a square of side S, and the same map for labels and keypoints.

A source pixel centre x maps to x' = (x + 0.5) * scale - 0.5 + pad_x (cv2.resize's convention), so
a keypoint drawn on a pixel lands on that pixel's image after packing.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from spd.labels import IGNORE


class Letterbox(NamedTuple):
    scale: float
    pad_x: int
    pad_y: int
    new_w: int
    new_h: int


def letterbox_params(h: int, w: int, size: int) -> Letterbox:
    scale = size / max(h, w)
    new_w, new_h = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    return Letterbox(scale, (size - new_w) // 2, (size - new_h) // 2, new_w, new_h)


def _place(resized: np.ndarray, size: int, lb: Letterbox, fill: int | tuple[int, ...]) -> np.ndarray:
    out = np.empty((size, size) + resized.shape[2:], resized.dtype)
    out[...] = fill
    out[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w] = resized
    return out


def letterbox_image(img: np.ndarray, size: int, lb: Letterbox) -> np.ndarray:
    """(H, W, 3) uint8 -> (S, S, 3); area interpolation when shrinking, linear when growing."""
    interp = cv2.INTER_AREA if lb.scale < 1 else cv2.INTER_LINEAR
    return _place(cv2.resize(img, (lb.new_w, lb.new_h), interpolation=interp), size, lb, 0)


def letterbox_label(lbl: np.ndarray, size: int, lb: Letterbox, fill: int = IGNORE) -> np.ndarray:
    """(H, W) or (H, W, C) labels -> (S, S[, C]) with nearest neighbour; padding = `fill`."""
    resized = cv2.resize(lbl, (lb.new_w, lb.new_h), interpolation=cv2.INTER_NEAREST)
    if lbl.ndim == 3 and resized.ndim == 2:
        resized = resized[..., None]
    return _place(resized, size, lb, fill)


def letterbox_iuv(iuv: np.ndarray, size: int, lb: Letterbox) -> np.ndarray:
    """(H, W, 3) I, U, V -> (S, S, 3); padding I = 255 (no label), U = V = 0."""
    out = letterbox_label(iuv, size, lb, fill=0)
    pad = np.ones((size, size), bool)
    pad[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w] = False
    out[pad, 0] = IGNORE
    return out


def letterbox_keypoints(kps: np.ndarray, size: int, lb: Letterbox) -> np.ndarray:
    """(J, 3) x, y, v in source pixels (NaN = missing) -> packed pixels; v = 1 only if labelled and
    inside the square's image area, else the row is (0, 0, 0)."""
    out = np.zeros((kps.shape[0], 3), np.float32)
    xy = kps[:, :2].astype(np.float64)
    ok = np.isfinite(xy).all(1)
    x = (xy[:, 0] + 0.5) * lb.scale - 0.5 + lb.pad_x
    y = (xy[:, 1] + 0.5) * lb.scale - 0.5 + lb.pad_y
    inside = ok & (x >= lb.pad_x - 0.5) & (x <= lb.pad_x + lb.new_w - 0.5)
    inside &= (y >= lb.pad_y - 0.5) & (y <= lb.pad_y + lb.new_h - 0.5)
    out[inside, 0] = x[inside]
    out[inside, 1] = y[inside]
    out[inside, 2] = 1.0
    return out
