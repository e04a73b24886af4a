"""Drawing primitives of the synthetic renderer: canvas, shapes, colours, textures, skeleton.

Everything draws from the canvas RNG in a fixed order, so a seed fixes the bytes (spd.data.synth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from spd.labels import ATR_CLASSES, LIP_CLASSES

LIP_ID = {name: i for i, name in enumerate(LIP_CLASSES)}
ATR_ID = {name: i for i, name in enumerate(ATR_CLASSES)}
SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel geometry
ONE = 1 << SHIFT

# DensePose part ids (spd.labels.DENSEPOSE_PARTS); (front, back) pairs where the view matters.
DP_TORSO = (2, 1)
DP_HAND = {"r": 3, "l": 4}
DP_FOOT = {"r": 6, "l": 5}
DP_UPPER_LEG = {"r": (9, 7), "l": (10, 8)}
DP_LOWER_LEG = {"r": (13, 11), "l": (14, 12)}
DP_UPPER_ARM = {"r": (16, 18), "l": (15, 17)}
DP_LOWER_ARM = {"r": (20, 22), "l": (19, 21)}
DP_HEAD = {"r": 23, "l": 24}


@dataclass(frozen=True)
class Style:
    """What differs between the base and the shifted domain."""

    bright_clothes: bool  # saturated random colours (base) vs muted wardrobe colours (shifted)
    p_dress: float
    p_skirt: float
    p_coat: float
    p_jumpsuit: float
    p_belt: float
    p_bag: float
    leg_length: float
    clutter: tuple[int, int]
    jpeg_quality: int


STYLES = {
    "base": Style(True, 0.15, 0.2, 0.2, 0.08, 0.0, 0.0, 1.0, (4, 9), 92),
    "shifted": Style(False, 0.3, 0.35, 0.1, 0.0, 0.35, 0.35, 1.12, (1, 4), 80),
}


# ---------------------------------------------------------------------------------------------
# Regions: painter's-order shapes, each with a class in both label sets and a look.
# ---------------------------------------------------------------------------------------------


class Canvas:
    def __init__(self, h: int, w: int, rng: np.random.Generator, dense: bool) -> None:
        self.h, self.w, self.rng = h, w, rng
        self.region = np.zeros((h, w), np.uint8)  # 0: the background gradient
        self.dp = np.zeros((h, w), np.uint8) if dense else None
        self.lip = [0]
        self.atr = [0]
        self.colour = [np.zeros(3, np.float32)]
        self.pattern = [0]
        self.amplitude = [0.0]
        self.dp_frames: dict[int, tuple] = {}

    def new_region(self, lip: int, atr: int, colour: np.ndarray, pattern: int, amp: float) -> int:
        if len(self.lip) >= 255:  # keep the map in uint8; later shapes reuse the last id
            return len(self.lip) - 1
        self.lip.append(lip)
        self.atr.append(atr)
        self.colour.append(np.asarray(colour, np.float32))
        self.pattern.append(pattern)
        self.amplitude.append(amp)
        return len(self.lip) - 1


def fx(p: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(p, np.float64) * ONE).astype(np.int32)


def capsule(img: np.ndarray, a: np.ndarray, b: np.ndarray, r: float, value: int) -> None:
    """A limb: a rectangle of half-width r from a to b with round ends."""
    d = np.asarray(b, np.float64) - a
    n = math.hypot(d[0], d[1])
    if n > 1e-6:
        nx, ny = -d[1] / n * r, d[0] / n * r
        quad = np.array(
            [[a[0] + nx, a[1] + ny], [b[0] + nx, b[1] + ny], [b[0] - nx, b[1] - ny], [a[0] - nx, a[1] - ny]]
        )
        cv2.fillConvexPoly(img, fx(quad), value, cv2.LINE_8, SHIFT)
    rr = max(int(round(r * ONE)), 1)
    cv2.circle(img, tuple(fx(a)), rr, value, -1, cv2.LINE_8, SHIFT)
    cv2.circle(img, tuple(fx(b)), rr, value, -1, cv2.LINE_8, SHIFT)


def poly(img: np.ndarray, pts: np.ndarray, value: int) -> None:
    cv2.fillPoly(img, [fx(pts)], value, cv2.LINE_8, SHIFT)


def ellipse(
    img: np.ndarray,
    c: np.ndarray,
    axes: tuple[float, float],
    angle: float,
    value: int,
    start: float = 0,
    end: float = 360,
) -> None:
    ax = (max(int(round(axes[0] * ONE)), 1), max(int(round(axes[1] * ONE)), 1))
    cv2.ellipse(img, tuple(fx(c)), ax, angle, start, end, value, -1, cv2.LINE_8, SHIFT)


# ---------------------------------------------------------------------------------------------
# Colours and textures.
# ---------------------------------------------------------------------------------------------


def hsv(h: float, s: float, v: float) -> np.ndarray:
    px = np.array([[[h * 179, s * 255, v * 255]]], np.float32).clip(0, 255).astype(np.uint8)
    return cv2.cvtColor(px, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def skin_colour(rng: np.random.Generator) -> np.ndarray:
    tone = rng.uniform(0, 1)
    base = np.array([235, 200, 170]) * (1 - tone) + np.array([95, 60, 40]) * tone
    return (base + rng.normal(0, 10, 3)).clip(0, 255).astype(np.float32)


def cloth_colour(rng: np.random.Generator, style: Style) -> np.ndarray:
    if style.bright_clothes:
        return hsv(rng.uniform(), rng.uniform(0.2, 1.0), rng.uniform(0.25, 1.0))
    wardrobe = (
        (0.6, 0.5, 0.3),
        (0.08, 0.5, 0.45),
        (0.0, 0.0, 0.55),
        (0.95, 0.4, 0.5),
        (0.3, 0.3, 0.4),
        (0.12, 0.25, 0.8),
        (0.0, 0.0, 0.15),
        (0.55, 0.2, 0.75),
    )
    h, s, v = wardrobe[rng.integers(len(wardrobe))]
    return hsv((h + rng.normal(0, 0.03)) % 1, s * rng.uniform(0.7, 1.2), v * rng.uniform(0.7, 1.2))


def hair_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.uniform() < 0.15:  # dyed
        return hsv(rng.uniform(), rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.8))
    shades = ((30, 25, 20), (70, 50, 35), (120, 85, 50), (200, 170, 110), (150, 150, 150))
    return (np.array(shades[rng.integers(len(shades))]) + rng.normal(0, 12, 3)).astype(np.float32)


N_PATTERNS = 6  # 0 flat, 1-2 stripes, 3 checks, 4 fine noise, 5 blotches


def patterns(h: int, w: int, rng: np.random.Generator, shifted: bool) -> np.ndarray:
    """(N_PATTERNS, H, W) float32 in about [-1, 1]: textures that regions pick from."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((N_PATTERNS, h, w), np.float32)
    out[0] = 0
    for k in (1, 2):
        t = rng.uniform(0, math.pi)
        period = rng.uniform(3, 9)
        out[k] = np.sign(np.sin((xx * math.cos(t) + yy * math.sin(t)) * (2 * math.pi / period)))
    period = rng.uniform(4, 10)
    checks = np.sin(xx * (2 * math.pi / period)) * np.sin(yy * (2 * math.pi / period))
    out[3] = np.sign(checks) if not shifted else np.tanh(3 * checks)  # plaid-ish in the shifted domain
    out[4] = rng.uniform(-1, 1, (h, w)).astype(np.float32)
    small = rng.uniform(-1, 1, (max(h // 12, 2), max(w // 12, 2))).astype(np.float32)
    out[5] = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(-1, 1)
    return out


def random_look(rng: np.random.Generator, plain_bias: float = 0.45) -> tuple[int, float]:
    if rng.uniform() < plain_bias:
        return 0, 0.0
    return int(rng.integers(1, N_PATTERNS)), float(rng.uniform(12, 45))


# ---------------------------------------------------------------------------------------------
# The person.
# ---------------------------------------------------------------------------------------------


def rot(deg: float) -> np.ndarray:
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def skeleton(rng: np.random.Generator, style: Style) -> dict[str, np.ndarray]:
    """Joint positions in person-height units, front view (the person's right at -x), y down."""
    lean = rng.normal(0, 6)
    body = rot(lean)
    j: dict[str, np.ndarray] = {}
    j["pelvis"] = np.zeros(2)
    j["spine"] = body @ [0, -0.17]
    j["neck"] = body @ [0, -0.36]
    head = rot(lean + rng.normal(0, 8))
    j["head_c"] = j["neck"] + head @ [0, -0.075]
    j["head_top"] = j["neck"] + head @ [0, -0.165]
    leg = 0.25 * style.leg_length
    for side, s in (("r", -1.0), ("l", 1.0)):
        j[f"{side}_shoulder"] = j["neck"] + body @ [s * 0.11, 0.035]
        j[f"{side}_hip"] = body @ [s * 0.075, 0]
        # Arm: angle from straight down, positive outwards; elbow bends either way.
        a1 = rng.uniform(-15, 150) if rng.uniform() < 0.75 else rng.uniform(-30, 30)
        a2 = a1 + rng.choice([-1, 1]) * rng.uniform(0, 120)
        d1 = body @ [s * math.sin(math.radians(a1)), math.cos(math.radians(a1))]
        d2 = body @ [s * math.sin(math.radians(a2)), math.cos(math.radians(a2))]
        j[f"{side}_elbow"] = j[f"{side}_shoulder"] + 0.17 * d1
        j[f"{side}_wrist"] = j[f"{side}_elbow"] + 0.15 * d2
        j[f"{side}_hand"] = j[f"{side}_wrist"] + 0.06 * d2
        l1 = rng.uniform(-8, 35)
        l2 = l1 + rng.choice([-1, 1]) * rng.uniform(0, 50)
        e1 = body @ [s * math.sin(math.radians(l1)), math.cos(math.radians(l1))]
        e2 = body @ [s * math.sin(math.radians(l2)), math.cos(math.radians(l2))]
        j[f"{side}_knee"] = j[f"{side}_hip"] + leg * e1
        j[f"{side}_ankle"] = j[f"{side}_knee"] + 0.95 * leg * e2
        j[f"{side}_toe"] = j[f"{side}_ankle"] + body @ [s * 0.03, 0.045]
    return j


JOINT_KEYS = ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "spine",
               "neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow",
               "l_wrist")  # fmt: skip


def place(
    j: dict[str, np.ndarray], facing_front: bool, h: int, w: int, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], float]:
    """Person-height units -> image pixels: mirror for a back view, scale, rotate, translate."""
    crop = rng.uniform() < 0.2
    height = h * (rng.uniform(1.1, 1.6) if crop else rng.uniform(0.75, 1.0))
    turn = rot(rng.normal(0, 10) if rng.uniform() < 0.9 else rng.uniform(-60, 60))
    mirror = np.array([1.0 if facing_front else -1.0, 1.0])
    pts = {k: turn @ (v * mirror) * height for k, v in j.items()}
    allp = np.array(list(pts.values()))
    lo, hi = allp.min(0), allp.max(0)
    centre = np.array([w / 2, h / 2]) - (lo + hi) / 2
    slack = np.maximum(np.array([w, h]) - (hi - lo), 0) / 2
    jitter = rng.uniform(-1, 1, 2) * (slack + (np.array([w, h]) * 0.25 if crop else 0))
    out = {k: v + centre + jitter for k, v in pts.items()}
    return out, height
