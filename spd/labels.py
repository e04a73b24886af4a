"""Label spaces: LIP parsing classes and joints, ATR classes, DensePose parts, flip maps, groups.

Flip maps are permutations `f` such that, after a horizontal image flip, a pixel (or joint) that
had label `k` now has label `f[k]`.
"""

from __future__ import annotations

import numpy as np

IGNORE = 255

LIP_CLASSES: tuple[str, ...] = (
    "background", "hat", "hair", "glove", "sunglasses", "upper_clothes", "dress", "coat",
    "socks", "pants", "jumpsuits", "scarf", "skirt", "face", "left_arm", "right_arm",
    "left_leg", "right_leg", "left_shoe", "right_shoe",
)  # fmt: skip
LIP_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((14, 15), (16, 17), (18, 19))

# LIP joint order (the pose CSV's column order).
LIP_JOINTS: tuple[str, ...] = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "spine",
    "neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
)  # fmt: skip
JOINT_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))
# Skeleton edges for drawing and for the synthetic generator's limbs.
SKELETON: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 6), (3, 6), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
    (8, 12), (12, 11), (11, 10), (8, 13), (13, 14), (14, 15),
)  # fmt: skip
NECK, HEAD_TOP = 8, 9  # PCKh head size = |joint 8 - joint 9|

ATR_CLASSES: tuple[str, ...] = (
    "background", "hat", "hair", "sunglasses", "upper_clothes", "skirt", "pants", "dress",
    "belt", "left_shoe", "right_shoe", "face", "left_leg", "right_leg", "left_arm", "right_arm",
    "bag", "scarf",
)  # fmt: skip
ATR_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((9, 10), (12, 13), (14, 15))

# DensePose I: 0 = background, 1..24 the body parts (DensePose-COCO order).
DENSEPOSE_PARTS: tuple[str, ...] = (
    "background", "torso_back", "torso_front", "right_hand", "left_hand", "left_foot",
    "right_foot", "upper_leg_right_back", "upper_leg_left_back", "upper_leg_right_front",
    "upper_leg_left_front", "lower_leg_right_back", "lower_leg_left_back",
    "lower_leg_right_front", "lower_leg_left_front", "upper_arm_left_front",
    "upper_arm_right_front", "upper_arm_left_back", "upper_arm_right_back",
    "lower_arm_left_front", "lower_arm_right_front", "lower_arm_left_back",
    "lower_arm_right_back", "head_right", "head_left",
)  # fmt: skip
NUM_DP_PARTS = 24  # without background
DENSEPOSE_FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16), (17, 18), (19, 20),
    (21, 22), (23, 24),
)  # fmt: skip

NUM_LIP_CLASSES = len(LIP_CLASSES)  # 20
NUM_JOINTS = len(LIP_JOINTS)  # 16
NUM_ATR_CLASSES = len(ATR_CLASSES)  # 18

LABEL_SETS: dict[str, tuple[str, ...]] = {"lip": LIP_CLASSES, "atr": ATR_CLASSES}
FLIP_PAIRS = {"lip": LIP_FLIP_PAIRS, "atr": ATR_FLIP_PAIRS}  # (left, right) class pairs per label set


def _permutation(n: int, pairs: tuple[tuple[int, int], ...]) -> np.ndarray:
    perm = np.arange(n)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


def class_flip_map(label_set: str = "lip") -> np.ndarray:
    """(C,) permutation of class ids under a horizontal flip."""
    return _permutation(len(LABEL_SETS[label_set]), FLIP_PAIRS[label_set])


def joint_flip_map() -> np.ndarray:
    """(16,) permutation of joint indices under a horizontal flip."""
    return _permutation(NUM_JOINTS, JOINT_FLIP_PAIRS)


def densepose_flip_map() -> np.ndarray:
    """(25,) permutation of DensePose part indices (0 = background) under a horizontal flip."""
    return _permutation(NUM_DP_PARTS + 1, DENSEPOSE_FLIP_PAIRS)


def _uint8_lut(perm: np.ndarray) -> np.ndarray:
    """(256,) uint8 lookup table: `perm` on the ids it covers, identity above (so 255 stays 255)."""
    lut = np.arange(256, dtype=np.uint8)
    lut[: len(perm)] = perm
    return lut


def flip_lut(label_set: str = "lip") -> np.ndarray:
    """(256,) uint8 lookup table: class flip on ids, identity elsewhere (so 255 stays ignore)."""
    return _uint8_lut(class_flip_map(label_set))


def densepose_flip_lut() -> np.ndarray:
    """(256,) uint8 lookup table: DensePose part flip on I, identity elsewhere (255 stays no-label)."""
    return _uint8_lut(densepose_flip_map())


# ---------------------------------------------------------------------------------------------
# Cross-dataset evaluation: both label sets mapped onto shared coarse groups.
# ---------------------------------------------------------------------------------------------
COARSE_GROUPS: tuple[str, ...] = (
    "background", "head", "upper_clothes", "dress", "lower_clothes", "arms", "legs", "shoes",
)  # fmt: skip
_LIP_TO_COARSE = {
    "background": "background", "hat": "head", "hair": "head", "sunglasses": "head", "face": "head",
    "upper_clothes": "upper_clothes", "coat": "upper_clothes", "jumpsuits": "upper_clothes",
    "scarf": "upper_clothes", "dress": "dress", "pants": "lower_clothes", "skirt": "lower_clothes",
    "left_arm": "arms", "right_arm": "arms", "glove": "arms", "left_leg": "legs",
    "right_leg": "legs", "socks": "legs", "left_shoe": "shoes", "right_shoe": "shoes",
}  # fmt: skip
_ATR_TO_COARSE = {
    "background": "background", "hat": "head", "hair": "head", "sunglasses": "head", "face": "head",
    "upper_clothes": "upper_clothes", "scarf": "upper_clothes", "dress": "dress",
    "pants": "lower_clothes", "skirt": "lower_clothes", "left_arm": "arms", "right_arm": "arms",
    "left_leg": "legs", "right_leg": "legs", "left_shoe": "shoes", "right_shoe": "shoes",
    # belt and bag have no LIP counterpart: ignored in cross-dataset scores
}  # fmt: skip


def coarse_lut(label_set: str) -> np.ndarray:
    """(256,) uint8 lookup table: class id of `label_set` -> coarse group id (255 = no group)."""
    mapping = {"lip": _LIP_TO_COARSE, "atr": _ATR_TO_COARSE}[label_set]
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for cid, name in enumerate(LABEL_SETS[label_set]):
        if name in mapping:
            lut[cid] = COARSE_GROUPS.index(mapping[name])
    return lut


def lip_to_atr_lut() -> np.ndarray:
    """(256,) LIP id -> ATR id where ATR has the class (coat -> upper clothes, ...); 255 otherwise."""
    direct = {name: i for i, name in enumerate(ATR_CLASSES)}
    # glove and socks are sided in ATR (arm / leg) but not in LIP: callers that know the side
    # (the synthetic generator does) map them; here they stay unmapped.
    merged = {"coat": "upper_clothes", "jumpsuits": "upper_clothes"}
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for cid, name in enumerate(LIP_CLASSES):
        target = merged.get(name, name)
        if target in direct:
            lut[cid] = direct[target]
    return lut


def palette(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 RGB colours, the PASCAL VOC bit-interleaved palette LIP tools use."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal
