"""The person painter of the synthetic renderer: an outfit, then body parts back to front."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spd.data.synth_draw import (
    ATR_ID,
    DP_FOOT,
    DP_HAND,
    DP_HEAD,
    DP_LOWER_ARM,
    DP_LOWER_LEG,
    DP_TORSO,
    DP_UPPER_ARM,
    DP_UPPER_LEG,
    LIP_ID,
    Canvas,
    Style,
    capsule,
    cloth_colour,
    ellipse,
    hair_colour,
    poly,
    random_look,
    skin_colour,
)


@dataclass(frozen=True)
class Outfit:
    """What one person wears (drawn before any painting, in a fixed order of RNG draws)."""

    top: str  # dress | jumpsuits | upper_clothes
    coat: bool
    bottom: str | None  # skirt | pants | None (dress, jumpsuits)
    sleeve: float  # fraction of the arm covered
    pant_len: float
    top_colour: np.ndarray
    top_look: tuple[int, float]
    shoes: bool
    socks: bool
    gloves: bool
    scarf: bool
    hat: bool
    sunglasses: bool
    long_hair: bool
    hair_col: np.ndarray
    belt: bool
    bag: bool


def draw_outfit(rng: np.random.Generator, style: Style, front: bool) -> Outfit:
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
    top_colour, top_look = cloth_colour(rng, style), random_look(rng)
    shoes = rng.uniform() < 0.9
    socks = shoes and rng.uniform() < 0.45
    gloves = rng.uniform() < 0.25
    scarf = rng.uniform() < 0.3
    hat = rng.uniform() < 0.3
    sunglasses = front and rng.uniform() < 0.4
    long_hair = rng.uniform() < 0.4
    hair_col = hair_colour(rng)
    belt = bottom is not None and rng.uniform() < style.p_belt
    bag = rng.uniform() < style.p_bag
    return Outfit(
        top, coat, bottom, sleeve, pant_len, top_colour, top_look, shoes, socks, gloves, scarf, hat,
        sunglasses, long_hair, hair_col, belt, bag,
    )  # fmt: skip


class Person:
    """Paints one person into a canvas, back to front: hair behind, legs, torso, arms, head, bag.

    The steps run in this order only (`render`): each draws from the canvas RNG, so the order fixes
    the bytes a seed produces.
    """

    def __init__(self, cv: Canvas, j: dict[str, np.ndarray], hp: float, front: bool, style: Style):
        rng = cv.rng
        self.cv, self.j, self.hp, self.front, self.style, self.rng = cv, j, hp, front, style, rng
        build = rng.uniform(0.85, 1.2)
        self.r_ua, self.r_la, self.r_hand = 0.04 * hp * build, 0.034 * hp * build, 0.034 * hp * build
        self.r_ul, self.r_ll, self.r_foot = 0.056 * hp * build, 0.045 * hp * build, 0.034 * hp
        self.skin = skin_colour(rng)
        self.view = 0 if front else 1
        self.o = draw_outfit(rng, style, front)
        self.head_c, self.neck = j["head_c"], j["neck"]
        self.up = (j["head_top"] - self.neck) / max(np.linalg.norm(j["head_top"] - self.neck), 1e-6)
        self.head_angle = math.degrees(math.atan2(self.up[0], -self.up[1]))
        self.head_ax = (0.072 * hp, 0.092 * hp)

    def render(self) -> None:
        self.long_hair()
        self.legs()
        self.arms(sleeve_region=self.torso())
        self.scarf()
        self.head()
        self.bag()

    def region(self, lip: str, atr: str, colour: np.ndarray, look: tuple[int, float] | None = None) -> int:
        p, a = look if look is not None else random_look(self.rng)
        return self.cv.new_region(LIP_ID[lip], ATR_ID[atr], colour, p, a)

    def dp_limb(self, part: int, a: np.ndarray, b: np.ndarray, r: float) -> None:
        if self.cv.dp is not None:
            capsule(self.cv.dp, a, b, r, part)
            self.cv.dp_frames[part] = ("limb", np.asarray(a, float), np.asarray(b, float), r)

    def long_hair(self) -> None:
        """Long hair hangs behind the body, so it is painted first."""
        if not self.o.long_hair:
            return
        cv, hp, up = self.cv, self.hp, self.up
        hr = self.region("hair", "hair", self.o.hair_col, (5, 20.0))
        lo = self.neck - up * 0.02 * hp
        sides = np.array([up[1], -up[0]]) * 0.085 * hp
        length = self.rng.uniform(0.05, 0.16) * hp
        corners = [
            self.head_c + sides,
            self.head_c - sides,
            lo - sides - up * length,
            lo + sides - up * length,
        ]
        poly(cv.region, np.array(corners), hr)

    def legs(self) -> None:
        """Skin, socks, lower clothes and shoes of both legs."""
        cv, j, o, rng, style = self.cv, self.j, self.o, self.rng, self.style
        self.pants_col, self.pants_look = cloth_colour(rng, style), random_look(rng)
        trousers = o.bottom == "pants" or o.top == "jumpsuits"
        for side in ("r", "l"):
            hip, knee, ankle, toe = (
                j[f"{side}_hip"],
                j[f"{side}_knee"],
                j[f"{side}_ankle"],
                j[f"{side}_toe"],
            )
            leg_name = "right_leg" if side == "r" else "left_leg"
            sk = self.region(leg_name, leg_name, self.skin, (0, 0.0))
            capsule(cv.region, hip, knee, self.r_ul, sk)
            capsule(cv.region, knee, ankle, self.r_ll, sk)
            self.dp_limb(DP_UPPER_LEG[side][self.view], hip, knee, self.r_ul * (1.15 if trousers else 1))
            self.dp_limb(DP_LOWER_LEG[side][self.view], knee, ankle, self.r_ll * (1.15 if trousers else 1))
            if o.socks:
                sr = self.region("socks", leg_name, cloth_colour(rng, style))
                capsule(cv.region, knee + (ankle - knee) * 0.4, ankle, self.r_ll * 1.08, sr)
            if trousers:
                cls, atr_cls = ("pants", "pants") if o.top != "jumpsuits" else ("jumpsuits", "upper_clothes")
                jump = o.top == "jumpsuits"
                col, look = (o.top_colour, o.top_look) if jump else (self.pants_col, self.pants_look)
                pr = self.region(cls, atr_cls, col, look)
                capsule(cv.region, hip, knee, self.r_ul * 1.15, pr)
                if o.pant_len > 0.5:
                    capsule(cv.region, knee, knee + (ankle - knee) * 0.92, self.r_ll * 1.15, pr)
            shoe_name = "right_shoe" if side == "r" else "left_shoe"
            shoe_colour = cloth_colour(rng, style) * 0.6 if o.shoes else None
            shr = self.region(shoe_name, shoe_name, shoe_colour, (0, 0.0)) if o.shoes else sk
            capsule(cv.region, ankle, toe, self.r_foot, shr)
            if cv.dp is not None:
                capsule(cv.dp, ankle, toe, self.r_foot, DP_FOOT[side])
                cv.dp_frames[DP_FOOT[side]] = ("limb", ankle, toe, self.r_foot)

    def torso(self) -> int:
        """Skirt or dress, the top, belt and coat; returns the region the sleeves are painted with."""
        cv, j, o, hp, rng = self.cv, self.j, self.o, self.hp, self.rng
        rs, ls, rh, lh = j["r_shoulder"], j["l_shoulder"], j["r_hip"], j["l_hip"]
        out_r, out_l = (
            (rs - ls) / max(np.linalg.norm(rs - ls), 1e-6),
            (ls - rs) / max(np.linalg.norm(rs - ls), 1e-6),
        )
        torso = np.array(
            [rs + out_r * 0.02 * hp, ls + out_l * 0.02 * hp, lh + out_l * 0.03 * hp, rh + out_r * 0.03 * hp]
        )
        self.down = down = j["pelvis"] - self.neck
        if cv.dp is not None:
            part = DP_TORSO[self.view]
            poly(cv.dp, torso, part)
            mid_s, mid_h = (rs + ls) / 2, (rh + lh) / 2
            cv.dp_frames[part] = ("limb", mid_s, mid_h, np.linalg.norm(rs - ls) / 2 + 0.02 * hp)
        if o.bottom == "skirt" or o.top == "dress":
            self._skirt(rh, lh, out_l)
        top_cls = {"upper_clothes": "upper_clothes", "dress": "dress", "jumpsuits": "jumpsuits"}[o.top]
        tr = self.region(top_cls, "upper_clothes" if o.top != "dress" else "dress", o.top_colour, o.top_look)
        poly(cv.region, torso, tr)
        if o.belt:
            belt_lip = "pants" if o.bottom == "pants" else "skirt"
            br = self.region(belt_lip, "belt", cloth_colour(rng, self.style) * 0.5, (0, 0.0))
            capsule(cv.region, rh + out_r * 0.03 * hp, lh + out_l * 0.03 * hp, 0.015 * hp, br)
        if not o.coat:
            return tr
        cr = self.region("coat", "upper_clothes", cloth_colour(rng, self.style), random_look(rng))
        hem = rng.uniform(0.1, 0.35)
        coat_poly = [
            rs + out_r * 0.03 * hp,
            ls + out_l * 0.03 * hp,
            lh + out_l * 0.05 * hp + down * hem,
            rh + out_r * 0.05 * hp + down * hem,
        ]
        poly(cv.region, np.array(coat_poly), cr)
        if self.front:  # open coat: the shirt shows in the middle
            gap = rng.uniform(0.2, 0.45)
            centre = [
                self.neck + (rs - ls) * gap / 2,
                self.neck - (rs - ls) * gap / 2,
                j["pelvis"] - (rh - lh) * gap / 2,
                j["pelvis"] + (rh - lh) * gap / 2,
            ]
            poly(cv.region, np.array(centre), tr)
        return cr

    def _skirt(self, rh: np.ndarray, lh: np.ndarray, out_l: np.ndarray) -> None:
        o, hp, rng = self.o, self.hp, self.rng
        cls = "skirt" if o.top != "dress" else "dress"
        sr = (
            self.region(cls, cls, self.pants_col, self.pants_look)
            if cls == "skirt"
            else self.region("dress", "dress", o.top_colour, o.top_look)
        )
        flare = rng.uniform(1.2, 2.0)
        length = rng.uniform(0.25, 0.55)
        bot = self.j["pelvis"] + self.down * (2 * length)
        side_v = (lh - rh) / 2
        corners = [
            rh - out_l * 0.02 * hp,
            lh + out_l * 0.02 * hp,
            bot + side_v * flare * 1.2,
            bot - side_v * flare * 1.2,
        ]
        poly(self.cv.region, np.array(corners), sr)

    def arms(self, sleeve_region: int) -> None:
        """Both arms in front of the torso: skin, gloves or hands, sleeves."""
        cv, j, o = self.cv, self.j, self.o
        for side in ("r", "l"):
            sh, el, wr, hand = (
                j[f"{side}_shoulder"],
                j[f"{side}_elbow"],
                j[f"{side}_wrist"],
                j[f"{side}_hand"],
            )
            arm_name = "right_arm" if side == "r" else "left_arm"
            ar = self.region(arm_name, arm_name, self.skin, (0, 0.0))
            capsule(cv.region, sh, el, self.r_ua, ar)
            capsule(cv.region, el, wr, self.r_la, ar)
            self.dp_limb(DP_UPPER_ARM[side][self.view], sh, el, self.r_ua * (1.2 if o.sleeve > 0 else 1))
            self.dp_limb(DP_LOWER_ARM[side][self.view], el, wr, self.r_la * (1.2 if o.sleeve > 0.9 else 1))
            gr = (
                self.region("glove", arm_name, cloth_colour(self.rng, self.style) * 0.7, (0, 0.0))
                if o.gloves
                else ar
            )
            capsule(cv.region, wr, hand, self.r_hand, gr)
            if cv.dp is not None:
                capsule(cv.dp, wr, hand, self.r_hand, DP_HAND[side])
                cv.dp_frames[DP_HAND[side]] = ("limb", wr, hand, self.r_hand)
            if o.sleeve > 0:
                capsule(cv.region, sh, sh + (el - sh) * min(o.sleeve * 2, 1), self.r_ua * 1.2, sleeve_region)
                if o.sleeve > 0.9:
                    capsule(cv.region, el, el + (wr - el) * 0.9, self.r_la * 1.2, sleeve_region)

    def scarf(self) -> None:
        if not self.o.scarf:
            return
        j, neck, hp = self.j, self.neck, self.hp
        rs, ls = j["r_shoulder"], j["l_shoulder"]
        scr = self.region("scarf", "scarf", cloth_colour(self.rng, self.style), random_look(self.rng))
        capsule(self.cv.region, rs * 0.4 + neck * 0.6, ls * 0.4 + neck * 0.6, 0.04 * hp, scr)
        if self.rng.uniform() < 0.6:
            capsule(self.cv.region, neck, neck + self.down * 0.35 + (rs - ls) * 0.1, 0.03 * hp, scr)

    def head(self) -> None:
        """Face and fringe (front) or hair (back), sunglasses, hat; DensePose head halves."""
        cv, o, up, head_c, head_ax, angle = (
            self.cv,
            self.o,
            self.up,
            self.head_c,
            self.head_ax,
            self.head_angle,
        )
        hair = self.region("hair", "hair", o.hair_col, (5, 15.0))
        if self.front:
            ellipse(cv.region, head_c, head_ax, angle, hair)
            face = self.region("face", "face", self.skin, (0, 0.0))
            fringe = self.rng.uniform(0.15, 0.45)
            fc = head_c - up * (fringe * 0.5 * head_ax[1])  # the hair covers the top `fringe`
            ellipse(cv.region, fc, (head_ax[0] * 0.9, head_ax[1] * (1 - fringe * 0.5)), angle, face)
            if o.sunglasses:
                dark = cloth_colour(self.rng, self.style) * 0.25
                gl = self.region("sunglasses", "sunglasses", dark, (0, 0.0))
                eye = fc + up * head_ax[1] * 0.1
                side_v = np.array([up[1], -up[0]])
                a, b = eye - side_v * head_ax[0] * 0.6, eye + side_v * head_ax[0] * 0.6
                capsule(cv.region, a, b, 0.2 * head_ax[1], gl)
        else:
            ellipse(cv.region, head_c, (head_ax[0] * 1.03, head_ax[1] * 1.02), angle, hair)
        if o.hat:
            hat_r = self.region("hat", "hat", cloth_colour(self.rng, self.style), random_look(self.rng))
            crown = head_c + up * head_ax[1] * 0.35
            ellipse(cv.region, crown, (head_ax[0] * 1.15, head_ax[1] * 0.75), angle, hat_r, 180, 360)
            brim = np.array([up[1], -up[0]]) * head_ax[0] * 1.3
            capsule(cv.region, crown + brim, crown - brim, 0.012 * self.hp + 0.5, hat_r)
        if cv.dp is not None:
            # The person's right half of the head is on the image left when they face the camera.
            right_start = 90 if self.front else 270
            ellipse(cv.dp, head_c, head_ax, angle, DP_HEAD["r"], right_start, right_start + 180)
            ellipse(cv.dp, head_c, head_ax, angle, DP_HEAD["l"], right_start + 180, right_start + 360)
            for side in ("r", "l"):
                cv.dp_frames[DP_HEAD[side]] = ("ellipse", head_c, head_ax, angle)

    def bag(self) -> None:
        if not self.o.bag:
            return
        hp = self.hp
        side = self.rng.choice(["r", "l"])
        bag_r = self.region(
            "background", "bag", cloth_colour(self.rng, self.style) * 0.8, random_look(self.rng)
        )
        wr = self.j[f"{side}_wrist"]
        corners = [
            wr + [-0.06 * hp, 0.02 * hp],
            wr + [0.06 * hp, 0.02 * hp],
            wr + [0.07 * hp, 0.15 * hp],
            wr + [-0.07 * hp, 0.15 * hp],
        ]
        poly(self.cv.region, np.array(corners), bag_r)


def render_person(cv: Canvas, j: dict[str, np.ndarray], hp: float, front: bool, style: Style) -> None:
    Person(cv, j, hp, front, style).render()
