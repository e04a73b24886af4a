"""Seeded synthetic humans carrying all three SPD labels (parsing, 16 joints, DensePose IUV).

Each image holds one articulated 2-D person (random pose within joint limits, scale, rotation,
partial crops) dressed from the LIP classes with random colours and textures, on a cluttered
textured background that reuses skin and clothing colours, with occluders in front. The person
faces the camera (face visible) or faces away (head covered by hair), so whether their right side
lies on the image's left or right is decided by the pose, as in real photos. Labels use the
person's own sides, as LIP does.

Rendering is painter's-order into a *region* map (one id per drawn shape); class ids, colours and
textures are per-region lookups, so labels and pixels agree exactly. DensePose I is painted in the
same order from the body silhouette, and U, V come analytically from each part's frame.

`write_dataset` writes the LIP official layout (or the ATR layout); the bytes depend only on the
arguments (cv2's JPEG/PNG encoders are deterministic and write no metadata).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from spd.data.iuv import encode_iuv
from spd.data.synth_draw import (
    JOINT_KEYS,
    STYLES,
    Canvas,
    Style,
    capsule,
    cloth_colour,
    ellipse,
    hsv,
    patterns,
    place,
    poly,
    random_look,
    skeleton,
    skin_colour,
)
from spd.data.synth_person import render_person
from spd.io import atomic_output_dir
from spd.labels import NUM_JOINTS

DOMAINS = ("base", "shifted")
LAYOUTS = ("lip", "atr")


@dataclass
class SynthSample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    lip: np.ndarray  # (H, W) uint8 LIP class ids
    atr: np.ndarray  # (H, W) uint8 ATR class ids
    iuv: np.ndarray | None  # (H, W, 3) uint8: I, U*255, V*255 (None when not requested)
    keypoints: np.ndarray  # (16, 3) float32: x, y, visible; NaN rows for joints outside the image


def _background(cv: Canvas, style: Style, shifted: bool) -> tuple[np.ndarray, np.ndarray]:
    """Gradient colours at the corners, then clutter shapes (some skin- or cloth-coloured)."""
    rng = cv.rng
    corners = np.stack(
        [
            cloth_colour(rng, style)
            if not shifted
            else hsv(rng.uniform(0.05, 0.6), rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.9))
            for _ in range(2)
        ]
    )
    n = rng.integers(*style.clutter, endpoint=True)
    for _ in range(n):
        kind = rng.integers(4)
        colour = skin_colour(rng) if rng.uniform() < 0.25 else cloth_colour(rng, style)
        r = cv.new_region(0, 0, colour, *random_look(rng, 0.3))
        c = rng.uniform([0, 0], [cv.w, cv.h])
        size = rng.uniform(0.08, 0.4) * max(cv.h, cv.w)
        if kind == 0:
            poly(cv.region, c + rng.uniform(-size, size, (4, 2)), r)
        elif kind == 1:
            ellipse(cv.region, c, (size / 2, size * rng.uniform(0.2, 0.6)), rng.uniform(0, 180), r)
        elif kind == 2:  # limb-like distractor
            capsule(cv.region, c, c + rng.uniform(-size, size, 2), size * rng.uniform(0.06, 0.15), r)
        else:
            x0, y0 = c
            poly(
                cv.region,
                np.array([[x0, y0], [x0 + size, y0], [x0 + size, y0 + size * 0.5], [x0, y0 + size * 0.5]]),
                r,
            )
    return corners[0], corners[1]


def _occluders(cv: Canvas, style: Style) -> None:
    rng = cv.rng
    if rng.uniform() >= 0.3:
        return
    r = cv.new_region(0, 0, cloth_colour(rng, style), *random_look(rng, 0.3))
    side = rng.integers(4)
    s = rng.uniform(0.12, 0.3)
    if side == 0:  # from the bottom edge
        x0 = rng.uniform(0, cv.w)
        pts = [[x0, cv.h], [x0 + s * cv.w * 1.5, cv.h], [x0 + s * cv.w, cv.h * (1 - s)], [x0, cv.h * (1 - s)]]
    elif side == 1:  # from the left
        y0 = rng.uniform(0, cv.h)
        pts = [[0, y0], [s * cv.w, y0], [s * cv.w, y0 + s * cv.h], [0, y0 + s * cv.h]]
    elif side == 2:  # from the right
        y0 = rng.uniform(0, cv.h)
        pts = [[cv.w, y0], [cv.w * (1 - s), y0], [cv.w * (1 - s), y0 + s * cv.h], [cv.w, y0 + s * cv.h]]
    else:  # a pole
        x0 = rng.uniform(0, cv.w)
        pts = [[x0, 0], [x0 + 0.06 * cv.w, 0], [x0 + 0.06 * cv.w, cv.h], [x0, cv.h]]
    poly(cv.region, np.array(pts, float), r)


def _uv(cv: Canvas) -> np.ndarray:
    """(H, W, 3) uint8 I, U*255, V*255 from the painted part map and each part's frame."""
    dp = cv.dp
    iuv = np.zeros((cv.h, cv.w, 3), np.uint8)
    iuv[..., 0] = dp
    for part, frame in cv.dp_frames.items():
        ys, xs = np.nonzero(dp == part)
        if ys.size == 0:
            continue
        p = np.stack([xs, ys], 1).astype(np.float64)
        if frame[0] == "limb":
            _, a, b, r = frame
            d = b - a
            length = max(np.hypot(*d), 1e-6)
            d = d / length
            q = p - a
            u = (q @ d) / length
            v = (q[:, 0] * -d[1] + q[:, 1] * d[0]) / max(r, 1e-6) * 0.5 + 0.5
        else:
            _, c, (ax, ay), ang = frame
            t = math.radians(ang)
            q = p - c
            lx = (q[:, 0] * math.cos(t) + q[:, 1] * math.sin(t)) / ax
            ly = (-q[:, 0] * math.sin(t) + q[:, 1] * math.cos(t)) / ay
            u, v = lx * 0.5 + 0.5, ly * 0.5 + 0.5
        iuv[ys, xs, 1] = np.clip(np.round(u * 255), 0, 255).astype(np.uint8)
        iuv[ys, xs, 2] = np.clip(np.round(v * 255), 0, 255).astype(np.uint8)
    return iuv


def generate_sample(
    rng: np.random.Generator, image_size: int = 128, domain: str = "base", dense: bool = True
) -> SynthSample:
    """One synthetic person. `dense`: also compute DensePose IUV (the shifted domain skips it)."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    style = STYLES[domain]
    shifted = domain == "shifted"
    long_side = image_size
    short_side = int(round(long_side * rng.uniform(0.6, 1.0)))
    h, w = (long_side, short_side) if rng.uniform() < 0.8 else (short_side, long_side)
    cv = Canvas(h, w, rng, dense)
    c0, c1 = _background(cv, style, shifted)
    front = bool(rng.uniform() < 0.5)
    joints, hp = place(skeleton(rng, style), front, h, w, rng)
    render_person(cv, joints, hp, front, style)
    _occluders(cv, style)

    # Pixels: per-region colour + texture, a background gradient, lighting and sensor noise.
    region = cv.region
    colour = np.stack(cv.colour)[region]  # (H, W, 3)
    pats = patterns(h, w, rng, shifted)
    pattern = np.asarray(cv.pattern, np.intp)[region]
    amp = np.asarray(cv.amplitude, np.float32)[region]
    yy, xx = np.mgrid[0:h, 0:w]
    texture = pats[pattern, yy, xx] * amp
    g = ((xx / max(w - 1, 1)) * 0.5 + (yy / max(h - 1, 1)) * 0.5)[..., None].astype(np.float32)
    gradient = c0 * (1 - g) + c1 * g
    img = np.where((region == 0)[..., None], gradient + pats[5][..., None] * 25, colour)
    img = img + texture[..., None]
    light = 1 + 0.25 * (rng.uniform(-1, 1) * (xx / w - 0.5) + rng.uniform(-1, 1) * (yy / h - 0.5))
    img = img * light[..., None].astype(np.float32)
    if shifted:  # a warm cast and softer optics
        img = img * np.array([1.08, 1.0, 0.88], np.float32)
    img = img + rng.normal(0, 4, img.shape).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    img = cv2.GaussianBlur(img, (3, 3), 0.9 if shifted else 0.6)

    lip = np.asarray(cv.lip, np.uint8)[region]
    atr = np.asarray(cv.atr, np.uint8)[region]
    iuv = None
    if dense:
        cv.dp[lip == 0] = 0  # occluded or outside the visible person: no DensePose label
        iuv = _uv(cv)
    kps = np.full((NUM_JOINTS, 3), np.nan, np.float32)
    for k, name in enumerate(JOINT_KEYS):
        x, y = joints[name]
        if 0 <= x <= w - 1 and 0 <= y <= h - 1:
            xi, yi = int(round(x)), int(round(y))
            kps[k] = (x, y, 1.0 if lip[yi, xi] != 0 else 0.0)  # 0: inside but occluded
    return SynthSample(img, lip, atr, iuv, kps)


# ---------------------------------------------------------------------------------------------
# Writing datasets.
# ---------------------------------------------------------------------------------------------


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    assert ok
    return buf.tobytes()


def _jpg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def _pose_row(sample_id: str, kps: np.ndarray) -> str:
    fields = [f"{sample_id}.jpg"]
    for x, y, v in kps:
        if np.isnan(x):
            fields += ["nan", "nan", "nan"]
        else:
            fields += [f"{x:.1f}", f"{y:.1f}", str(int(v))]
    return ",".join(fields)


def sample_rng(seed: int, split: str, index: int, domain: str) -> np.random.Generator:
    """The generator of one sample: independent of how many others are written."""
    return np.random.default_rng([seed, DOMAINS.index(domain), ("train", "val", "all").index(split), index])


def write_dataset(
    out: str | Path,
    *,
    seed: int,
    layout: str = "lip",
    domain: str = "base",
    train: int = 480,
    val: int = 120,
    count: int | None = None,
    image_size: int = 128,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Write one synthetic dataset to `out` (replaced whole, atomically). Returns counts per split.

    layout "lip": the LIP official layout with train/val splits, pose CSVs and IUV PNGs.
    layout "atr": `humanparsing/{JPEGImages,SegmentationClassAug}` with ATR ids (`count` images,
    default train + val); no pose or DensePose labels, as in ATR.
    `progress` is called with the number of images written after each one.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    quality = STYLES[domain].jpeg_quality
    done = 0
    with atomic_output_dir(out) as tmp:
        if layout == "atr":
            n = count if count is not None else train + val
            img_dir = tmp / "humanparsing" / "JPEGImages"
            seg_dir = tmp / "humanparsing" / "SegmentationClassAug"
            img_dir.mkdir(parents=True)
            seg_dir.mkdir(parents=True)
            for i in range(n):
                s = generate_sample(sample_rng(seed, "all", i, domain), image_size, domain, dense=False)
                sid = f"synth_{i:05d}"
                (img_dir / f"{sid}.jpg").write_bytes(_jpg(s.image, quality))
                (seg_dir / f"{sid}.png").write_bytes(_png(s.atr))
                done += 1
                if progress:
                    progress(done)
            return {"all": n}
        counts = (
            {"train": train, "val": val} if count is None else {"train": count, "val": max(count // 5, 1)}
        )
        images = tmp / "TrainVal_images"
        for split, n in counts.items():
            img_dir = images / f"{split}_images"
            seg_dir = tmp / "TrainVal_parsing_annotations" / f"{split}_segmentations"
            iuv_dir = tmp / "TrainVal_iuv_annotations" / f"{split}_iuv"
            pose_dir = tmp / "TrainVal_pose_annotations"
            for d in (img_dir, seg_dir, iuv_dir, pose_dir):
                d.mkdir(parents=True, exist_ok=True)
            ids, rows = [], []
            for i in range(n):
                s = generate_sample(sample_rng(seed, split, i, domain), image_size, domain, dense=True)
                sid = f"{split}_{i:05d}"
                (img_dir / f"{sid}.jpg").write_bytes(_jpg(s.image, quality))
                (seg_dir / f"{sid}.png").write_bytes(_png(s.lip))
                (iuv_dir / f"{sid}.png").write_bytes(encode_iuv(s.iuv))
                ids.append(sid)
                rows.append(_pose_row(sid, s.keypoints))
                done += 1
                if progress:
                    progress(done)
            (images / f"{split}_id.txt").write_text("".join(f"{i}\n" for i in ids))
            (pose_dir / f"lip_{split}_set.csv").write_text("".join(f"{r}\n" for r in rows))
        return counts
