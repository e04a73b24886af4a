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
from spd.io import atomic_output_dir
from spd.labels import ATR_CLASSES, LIP_CLASSES, NUM_JOINTS

DOMAINS = ("base", "shifted")
LAYOUTS = ("lip", "atr")

_L = {name: i for i, name in enumerate(LIP_CLASSES)}
_A = {name: i for i, name in enumerate(ATR_CLASSES)}
_SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel geometry
_ONE = 1 << _SHIFT

# DensePose part ids (spd.labels.DENSEPOSE_PARTS); (front, back) pairs where the view matters.
_DP_TORSO = (2, 1)
_DP_HAND = {"r": 3, "l": 4}
_DP_FOOT = {"r": 6, "l": 5}
_DP_UPPER_LEG = {"r": (9, 7), "l": (10, 8)}
_DP_LOWER_LEG = {"r": (13, 11), "l": (14, 12)}
_DP_UPPER_ARM = {"r": (16, 18), "l": (15, 17)}
_DP_LOWER_ARM = {"r": (20, 22), "l": (19, 21)}
_DP_HEAD = {"r": 23, "l": 24}


@dataclass
class SynthSample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    lip: np.ndarray  # (H, W) uint8 LIP class ids
    atr: np.ndarray  # (H, W) uint8 ATR class ids
    iuv: np.ndarray | None  # (H, W, 3) uint8: I, U*255, V*255 (None when not requested)
    keypoints: np.ndarray  # (16, 3) float32: x, y, visible; NaN rows for joints outside the image


@dataclass(frozen=True)
class _Style:
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


_STYLES = {
    "base": _Style(True, 0.15, 0.2, 0.2, 0.08, 0.0, 0.0, 1.0, (4, 9), 92),
    "shifted": _Style(False, 0.3, 0.35, 0.1, 0.0, 0.35, 0.35, 1.12, (1, 4), 80),
}


# ---------------------------------------------------------------------------------------------
# Regions: painter's-order shapes, each with a class in both label sets and a look.
# ---------------------------------------------------------------------------------------------


class _Canvas:
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


def _fx(p: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(p, np.float64) * _ONE).astype(np.int32)


def _capsule(img: np.ndarray, a: np.ndarray, b: np.ndarray, r: float, value: int) -> None:
    """A limb: a rectangle of half-width r from a to b with round ends."""
    d = np.asarray(b, np.float64) - a
    n = math.hypot(d[0], d[1])
    if n > 1e-6:
        nx, ny = -d[1] / n * r, d[0] / n * r
        quad = np.array(
            [[a[0] + nx, a[1] + ny], [b[0] + nx, b[1] + ny], [b[0] - nx, b[1] - ny], [a[0] - nx, a[1] - ny]]
        )
        cv2.fillConvexPoly(img, _fx(quad), value, cv2.LINE_8, _SHIFT)
    rr = max(int(round(r * _ONE)), 1)
    cv2.circle(img, tuple(_fx(a)), rr, value, -1, cv2.LINE_8, _SHIFT)
    cv2.circle(img, tuple(_fx(b)), rr, value, -1, cv2.LINE_8, _SHIFT)


def _poly(img: np.ndarray, pts: np.ndarray, value: int) -> None:
    cv2.fillPoly(img, [_fx(pts)], value, cv2.LINE_8, _SHIFT)


def _ellipse(
    img: np.ndarray,
    c: np.ndarray,
    axes: tuple[float, float],
    angle: float,
    value: int,
    start: float = 0,
    end: float = 360,
) -> None:
    ax = (max(int(round(axes[0] * _ONE)), 1), max(int(round(axes[1] * _ONE)), 1))
    cv2.ellipse(img, tuple(_fx(c)), ax, angle, start, end, value, -1, cv2.LINE_8, _SHIFT)


# ---------------------------------------------------------------------------------------------
# Colours and textures.
# ---------------------------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    px = np.array([[[h * 179, s * 255, v * 255]]], np.float32).clip(0, 255).astype(np.uint8)
    return cv2.cvtColor(px, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _skin(rng: np.random.Generator) -> np.ndarray:
    tone = rng.uniform(0, 1)
    base = np.array([235, 200, 170]) * (1 - tone) + np.array([95, 60, 40]) * tone
    return (base + rng.normal(0, 10, 3)).clip(0, 255).astype(np.float32)


def _cloth(rng: np.random.Generator, style: _Style) -> np.ndarray:
    if style.bright_clothes:
        return _hsv(rng.uniform(), rng.uniform(0.2, 1.0), rng.uniform(0.25, 1.0))
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
    return _hsv((h + rng.normal(0, 0.03)) % 1, s * rng.uniform(0.7, 1.2), v * rng.uniform(0.7, 1.2))


def _hair(rng: np.random.Generator) -> np.ndarray:
    if rng.uniform() < 0.15:  # dyed
        return _hsv(rng.uniform(), rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.8))
    shades = ((30, 25, 20), (70, 50, 35), (120, 85, 50), (200, 170, 110), (150, 150, 150))
    return (np.array(shades[rng.integers(len(shades))]) + rng.normal(0, 12, 3)).astype(np.float32)


N_PATTERNS = 6  # 0 flat, 1-2 stripes, 3 checks, 4 fine noise, 5 blotches


def _patterns(h: int, w: int, rng: np.random.Generator, shifted: bool) -> np.ndarray:
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


def _look(rng: np.random.Generator, plain_bias: float = 0.45) -> tuple[int, float]:
    if rng.uniform() < plain_bias:
        return 0, 0.0
    return int(rng.integers(1, N_PATTERNS)), float(rng.uniform(12, 45))


# ---------------------------------------------------------------------------------------------
# The person.
# ---------------------------------------------------------------------------------------------


def _rot(deg: float) -> np.ndarray:
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def _skeleton(rng: np.random.Generator, style: _Style) -> dict[str, np.ndarray]:
    """Joint positions in person-height units, front view (the person's right at -x), y down."""
    lean = rng.normal(0, 6)
    body = _rot(lean)
    j: dict[str, np.ndarray] = {}
    j["pelvis"] = np.zeros(2)
    j["spine"] = body @ [0, -0.17]
    j["neck"] = body @ [0, -0.36]
    head = _rot(lean + rng.normal(0, 8))
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


_JOINT_KEYS = ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "spine",
               "neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow",
               "l_wrist")  # fmt: skip


def _place(
    j: dict[str, np.ndarray], facing_front: bool, h: int, w: int, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], float]:
    """Person-height units -> image pixels: mirror for a back view, scale, rotate, translate."""
    crop = rng.uniform() < 0.2
    height = h * (rng.uniform(1.1, 1.6) if crop else rng.uniform(0.75, 1.0))
    turn = _rot(rng.normal(0, 10) if rng.uniform() < 0.9 else rng.uniform(-60, 60))
    mirror = np.array([1.0 if facing_front else -1.0, 1.0])
    pts = {k: turn @ (v * mirror) * height for k, v in j.items()}
    allp = np.array(list(pts.values()))
    lo, hi = allp.min(0), allp.max(0)
    centre = np.array([w / 2, h / 2]) - (lo + hi) / 2
    slack = np.maximum(np.array([w, h]) - (hi - lo), 0) / 2
    jitter = rng.uniform(-1, 1, 2) * (slack + (np.array([w, h]) * 0.25 if crop else 0))
    out = {k: v + centre + jitter for k, v in pts.items()}
    return out, height


def _render_person(cv: _Canvas, j: dict[str, np.ndarray], hp: float, front: bool, style: _Style) -> None:
    rng = cv.rng
    build = rng.uniform(0.85, 1.2)
    r_ua, r_la, r_hand = 0.04 * hp * build, 0.034 * hp * build, 0.034 * hp * build
    r_ul, r_ll, r_foot = 0.056 * hp * build, 0.045 * hp * build, 0.034 * hp
    skin = _skin(rng)
    view = 0 if front else 1

    def region(lip: str, atr: str, colour: np.ndarray, look: tuple[int, float] | None = None) -> int:
        p, a = look if look is not None else _look(rng)
        return cv.new_region(_L[lip], _A[atr], colour, p, a)

    def dp_limb(part: int, a: np.ndarray, b: np.ndarray, r: float) -> None:
        if cv.dp is not None:
            _capsule(cv.dp, a, b, r, part)
            cv.dp_frames[part] = ("limb", np.asarray(a, float), np.asarray(b, float), r)

    # --- outfit -------------------------------------------------------------------------------
    u = rng.uniform()
    top = (
        "dress"
        if u < style.p_dress
        else "jumpsuits"
        if u < style.p_dress + style.p_jumpsuit
        else "upper_clothes"
    )
    coat = top == "upper_clothes" and rng.uniform() < style.p_coat
    if top == "dress" or top == "jumpsuits":
        bottom = None
    else:
        bottom = "skirt" if rng.uniform() < style.p_skirt else "pants"
    sleeve = rng.choice([0.0, 0.45, 1.0], p=[0.3, 0.35, 0.35])  # fraction of the arm covered
    if coat:
        sleeve = 1.0
    pant_len = rng.choice([0.45, 1.0], p=[0.3, 0.7]) if bottom == "pants" else 1.0
    if top == "jumpsuits":
        pant_len = 1.0
    top_colour, top_look = _cloth(rng, style), _look(rng)
    shoes = rng.uniform() < 0.9
    socks = shoes and rng.uniform() < 0.45
    gloves = rng.uniform() < 0.25
    scarf = rng.uniform() < 0.3
    hat = rng.uniform() < 0.3
    sunglasses = front and rng.uniform() < 0.4
    long_hair = rng.uniform() < 0.4
    hair_col = _hair(rng)
    belt = bottom is not None and rng.uniform() < style.p_belt
    bag = rng.uniform() < style.p_bag

    head_c, neck = j["head_c"], j["neck"]
    up = (j["head_top"] - neck) / max(np.linalg.norm(j["head_top"] - neck), 1e-6)
    head_angle = math.degrees(math.atan2(up[0], -up[1]))
    head_ax = (0.072 * hp, 0.092 * hp)

    # --- long hair behind the body ------------------------------------------------------------
    if long_hair:
        hr = region("hair", "hair", hair_col, (5, 20.0))
        lo = neck - up * 0.02 * hp
        sides = np.array([up[1], -up[0]]) * 0.085 * hp
        length = rng.uniform(0.05, 0.16) * hp
        _poly(
            cv.region,
            np.array([head_c + sides, head_c - sides, lo - sides - up * length, lo + sides - up * length]),
            hr,
        )

    # --- legs: skin, socks, shoes, lower clothes ---------------------------------------------
    pants_col, pants_look = _cloth(rng, style), _look(rng)
    for side in ("r", "l"):
        hip, knee, ankle, toe = (j[f"{side}_hip"], j[f"{side}_knee"], j[f"{side}_ankle"], j[f"{side}_toe"])
        leg_name = "right_leg" if side == "r" else "left_leg"
        atr_leg = leg_name
        sk = region(leg_name, atr_leg, skin, (0, 0.0))
        _capsule(cv.region, hip, knee, r_ul, sk)
        _capsule(cv.region, knee, ankle, r_ll, sk)
        trousers = bottom == "pants" or top == "jumpsuits"
        dp_limb(_DP_UPPER_LEG[side][view], hip, knee, r_ul * (1.15 if trousers else 1))
        dp_limb(_DP_LOWER_LEG[side][view], knee, ankle, r_ll * (1.15 if trousers else 1))
        if socks:
            sr = region("socks", atr_leg, _cloth(rng, style))
            _capsule(cv.region, knee + (ankle - knee) * 0.4, ankle, r_ll * 1.08, sr)
        if bottom == "pants" or top == "jumpsuits":
            cls, atr_cls = ("pants", "pants") if top != "jumpsuits" else ("jumpsuits", "upper_clothes")
            col, look = (pants_col, pants_look) if top != "jumpsuits" else (top_colour, top_look)
            pr = region(cls, atr_cls, col, look)
            _capsule(cv.region, hip, knee, r_ul * 1.15, pr)
            if pant_len > 0.5:
                _capsule(cv.region, knee, knee + (ankle - knee) * 0.92, r_ll * 1.15, pr)
        shoe_name = "right_shoe" if side == "r" else "left_shoe"
        if shoes:
            shr = region(shoe_name, shoe_name, _cloth(rng, style) * 0.6, (0, 0.0))
        else:
            shr = sk
        _capsule(cv.region, ankle, toe, r_foot, shr)
        if cv.dp is not None:
            _capsule(cv.dp, ankle, toe, r_foot, _DP_FOOT[side])
            cv.dp_frames[_DP_FOOT[side]] = ("limb", ankle, toe, r_foot)

    # --- torso --------------------------------------------------------------------------------
    rs, ls, rh, lh = j["r_shoulder"], j["l_shoulder"], j["r_hip"], j["l_hip"]
    out_r, out_l = (
        (rs - ls) / max(np.linalg.norm(rs - ls), 1e-6),
        (ls - rs) / max(np.linalg.norm(rs - ls), 1e-6),
    )
    torso = np.array(
        [rs + out_r * 0.02 * hp, ls + out_l * 0.02 * hp, lh + out_l * 0.03 * hp, rh + out_r * 0.03 * hp]
    )
    down = j["pelvis"] - neck
    if cv.dp is not None:
        part = _DP_TORSO[view]
        _poly(cv.dp, torso, part)
        mid_s, mid_h = (rs + ls) / 2, (rh + lh) / 2
        cv.dp_frames[part] = ("limb", mid_s, mid_h, np.linalg.norm(rs - ls) / 2 + 0.02 * hp)
    if bottom == "skirt" or top == "dress":
        cls = "skirt" if top != "dress" else "dress"
        sr = (
            region(cls, cls, pants_col, pants_look)
            if cls == "skirt"
            else region("dress", "dress", top_colour, top_look)
        )
        flare = rng.uniform(1.2, 2.0)
        length = rng.uniform(0.25, 0.55)
        bot = j["pelvis"] + down * (2 * length)
        side_v = (lh - rh) / 2
        _poly(
            cv.region,
            np.array(
                [
                    rh - out_l * 0.02 * hp,
                    lh + out_l * 0.02 * hp,
                    bot + side_v * flare * 1.2,
                    bot - side_v * flare * 1.2,
                ]
            ),
            sr,
        )
    top_cls = {"upper_clothes": "upper_clothes", "dress": "dress", "jumpsuits": "jumpsuits"}[top]
    tr = region(top_cls, "upper_clothes" if top != "dress" else "dress", top_colour, top_look)
    _poly(cv.region, torso, tr)
    if belt:
        br = region("pants" if bottom == "pants" else "skirt", "belt", _cloth(rng, style) * 0.5, (0, 0.0))
        _capsule(cv.region, rh + out_r * 0.03 * hp, lh + out_l * 0.03 * hp, 0.015 * hp, br)
    if coat:
        cr = region("coat", "upper_clothes", _cloth(rng, style), _look(rng))
        hem = rng.uniform(0.1, 0.35)
        coat_poly = np.array(
            [
                rs + out_r * 0.03 * hp,
                ls + out_l * 0.03 * hp,
                lh + out_l * 0.05 * hp + down * hem,
                rh + out_r * 0.05 * hp + down * hem,
            ]
        )
        _poly(cv.region, coat_poly, cr)
        if front:  # open coat: the shirt shows in the middle
            gap = rng.uniform(0.2, 0.45)
            centre = np.array(
                [
                    neck + (rs - ls) * gap / 2,
                    neck - (rs - ls) * gap / 2,
                    j["pelvis"] - (rh - lh) * gap / 2,
                    j["pelvis"] + (rh - lh) * gap / 2,
                ]
            )
            _poly(cv.region, centre, tr)

    # --- arms (in front of the torso) ---------------------------------------------------------
    sleeve_region = cr if coat else tr
    for side in ("r", "l"):
        sh, el, wr, hand = j[f"{side}_shoulder"], j[f"{side}_elbow"], j[f"{side}_wrist"], j[f"{side}_hand"]
        arm_name = "right_arm" if side == "r" else "left_arm"
        ar = region(arm_name, arm_name, skin, (0, 0.0))
        _capsule(cv.region, sh, el, r_ua, ar)
        _capsule(cv.region, el, wr, r_la, ar)
        dp_limb(_DP_UPPER_ARM[side][view], sh, el, r_ua * (1.2 if sleeve > 0 else 1))
        dp_limb(_DP_LOWER_ARM[side][view], el, wr, r_la * (1.2 if sleeve > 0.9 else 1))
        if gloves:
            gr = region("glove", arm_name, _cloth(rng, style) * 0.7, (0, 0.0))
        else:
            gr = ar
        _capsule(cv.region, wr, hand, r_hand, gr)
        if cv.dp is not None:
            _capsule(cv.dp, wr, hand, r_hand, _DP_HAND[side])
            cv.dp_frames[_DP_HAND[side]] = ("limb", wr, hand, r_hand)
        if sleeve > 0:
            _capsule(cv.region, sh, sh + (el - sh) * min(sleeve * 2, 1), r_ua * 1.2, sleeve_region)
            if sleeve > 0.9:
                _capsule(cv.region, el, el + (wr - el) * 0.9, r_la * 1.2, sleeve_region)

    if scarf:
        scr = region("scarf", "scarf", _cloth(rng, style), _look(rng))
        _capsule(cv.region, rs * 0.4 + neck * 0.6, ls * 0.4 + neck * 0.6, 0.04 * hp, scr)
        if rng.uniform() < 0.6:
            _capsule(cv.region, neck, neck + down * 0.35 + (rs - ls) * 0.1, 0.03 * hp, scr)

    # --- head ---------------------------------------------------------------------------------
    hair = region("hair", "hair", hair_col, (5, 15.0))
    if front:
        _ellipse(cv.region, head_c, head_ax, head_angle, hair)
        face = region("face", "face", skin, (0, 0.0))
        fringe = rng.uniform(0.15, 0.45)
        fc = head_c - up * (fringe * 0.5 * head_ax[1])  # the hair covers the top `fringe`
        _ellipse(cv.region, fc, (head_ax[0] * 0.9, head_ax[1] * (1 - fringe * 0.5)), head_angle, face)
        if sunglasses:
            gl = region("sunglasses", "sunglasses", _cloth(rng, style) * 0.25, (0, 0.0))
            eye = fc + up * head_ax[1] * 0.1
            side_v = np.array([up[1], -up[0]])
            _capsule(
                cv.region,
                eye - side_v * head_ax[0] * 0.6,
                eye + side_v * head_ax[0] * 0.6,
                0.2 * head_ax[1],
                gl,
            )
    else:
        _ellipse(cv.region, head_c, (head_ax[0] * 1.03, head_ax[1] * 1.02), head_angle, hair)
    if hat:
        hat_r = region("hat", "hat", _cloth(rng, style), _look(rng))
        _ellipse(
            cv.region,
            head_c + up * head_ax[1] * 0.35,
            (head_ax[0] * 1.15, head_ax[1] * 0.75),
            head_angle,
            hat_r,
            180,
            360,
        )
        _capsule(
            cv.region,
            head_c + up * head_ax[1] * 0.35 + np.array([up[1], -up[0]]) * head_ax[0] * 1.3,
            head_c + up * head_ax[1] * 0.35 - np.array([up[1], -up[0]]) * head_ax[0] * 1.3,
            0.012 * hp + 0.5,
            hat_r,
        )
    if cv.dp is not None:
        # The person's right half of the head is on the image left when they face the camera.
        right_start = 90 if front else 270
        _ellipse(cv.dp, head_c, head_ax, head_angle, _DP_HEAD["r"], right_start, right_start + 180)
        _ellipse(cv.dp, head_c, head_ax, head_angle, _DP_HEAD["l"], right_start + 180, right_start + 360)
        for side in ("r", "l"):
            cv.dp_frames[_DP_HEAD[side]] = ("ellipse", head_c, head_ax, head_angle)
    if bag:
        side = rng.choice(["r", "l"])
        bag_r = region("background", "bag", _cloth(rng, style) * 0.8, _look(rng))
        wr = j[f"{side}_wrist"]
        _poly(
            cv.region,
            np.array(
                [
                    wr + [-0.06 * hp, 0.02 * hp],
                    wr + [0.06 * hp, 0.02 * hp],
                    wr + [0.07 * hp, 0.15 * hp],
                    wr + [-0.07 * hp, 0.15 * hp],
                ]
            ),
            bag_r,
        )


def _background(cv: _Canvas, style: _Style, shifted: bool) -> tuple[np.ndarray, np.ndarray]:
    """Gradient colours at the corners, then clutter shapes (some skin- or cloth-coloured)."""
    rng = cv.rng
    corners = np.stack(
        [
            _cloth(rng, style)
            if not shifted
            else _hsv(rng.uniform(0.05, 0.6), rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.9))
            for _ in range(2)
        ]
    )
    n = rng.integers(*style.clutter, endpoint=True)
    for _ in range(n):
        kind = rng.integers(4)
        colour = _skin(rng) if rng.uniform() < 0.25 else _cloth(rng, style)
        r = cv.new_region(0, 0, colour, *_look(rng, 0.3))
        c = rng.uniform([0, 0], [cv.w, cv.h])
        size = rng.uniform(0.08, 0.4) * max(cv.h, cv.w)
        if kind == 0:
            _poly(cv.region, c + rng.uniform(-size, size, (4, 2)), r)
        elif kind == 1:
            _ellipse(cv.region, c, (size / 2, size * rng.uniform(0.2, 0.6)), rng.uniform(0, 180), r)
        elif kind == 2:  # limb-like distractor
            _capsule(cv.region, c, c + rng.uniform(-size, size, 2), size * rng.uniform(0.06, 0.15), r)
        else:
            x0, y0 = c
            _poly(
                cv.region,
                np.array([[x0, y0], [x0 + size, y0], [x0 + size, y0 + size * 0.5], [x0, y0 + size * 0.5]]),
                r,
            )
    return corners[0], corners[1]


def _occluders(cv: _Canvas, style: _Style) -> None:
    rng = cv.rng
    if rng.uniform() >= 0.3:
        return
    r = cv.new_region(0, 0, _cloth(rng, style), *_look(rng, 0.3))
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
    _poly(cv.region, np.array(pts, float), r)


def _uv(cv: _Canvas) -> np.ndarray:
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
    style = _STYLES[domain]
    shifted = domain == "shifted"
    long_side = image_size
    short_side = int(round(long_side * rng.uniform(0.6, 1.0)))
    h, w = (long_side, short_side) if rng.uniform() < 0.8 else (short_side, long_side)
    cv = _Canvas(h, w, rng, dense)
    c0, c1 = _background(cv, style, shifted)
    front = bool(rng.uniform() < 0.5)
    joints, hp = _place(_skeleton(rng, style), front, h, w, rng)
    _render_person(cv, joints, hp, front, style)
    _occluders(cv, style)

    # Pixels: per-region colour + texture, a background gradient, lighting and sensor noise.
    region = cv.region
    colour = np.stack(cv.colour)[region]  # (H, W, 3)
    pats = _patterns(h, w, rng, shifted)
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
    for k, name in enumerate(_JOINT_KEYS):
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
    quality = _STYLES[domain].jpeg_quality
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
