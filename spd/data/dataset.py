"""torch Dataset over a packed split, with label-aware augmentation.

Each item is a dict of tensors (S = the packed size):
  image (3, S, S) float32 normalised with ImageNet mean/std; parsing (S, S) int64 (255 ignore);
  dp_index (S, S) int64 (255 = ignore / no label); dp_uv (2, S, S) float32 in [0, 1];
  keypoints (16, 3) float32 x, y, v in packed pixels (v = 0 missing); has_pose, has_iuv, uv_valid
  bool; index int64.
A horizontal flip swaps left/right classes, joints and DensePose parts; U, V are not mirror-exact,
so a flipped sample has uv_valid = False and its UV loss is masked.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from spd.config import AugmentConfig
from spd.data.packed import PackedSplit
from spd.labels import IGNORE, densepose_flip_lut, flip_lut, joint_flip_map

MEAN = (0.485, 0.456, 0.406)  # ImageNet, RGB
STD = (0.229, 0.224, 0.225)
_MEAN = np.array(MEAN, np.float32) * 255
_STD = np.array(STD, np.float32) * 255


# uint8 -> float32 as look-up tables: the same float32 arithmetic done once per value, not per pixel
# (at 384 px the per-pixel (x - mean) / std and the HWC -> CHW copy cost ~6 ms a sample, the tables ~0.4)
_NORM_TABLES = [
    np.ascontiguousarray((np.arange(256, dtype=np.float32) - _MEAN[c]) / _STD[c]) for c in range(3)
]
_UV_TABLE = np.arange(256, dtype=np.float32) / 255.0
_JOINT_FLIP = joint_flip_map()


def normalize(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 normalised."""
    if image.dtype != np.uint8:
        x = (image.astype(np.float32) - _MEAN) / _STD
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
    planes = cv2.split(np.ascontiguousarray(image))
    return torch.from_numpy(np.stack([cv2.LUT(p, t) for p, t in zip(planes, _NORM_TABLES, strict=True)]))


def denormalize(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (B, 3, H, W) normalised tensor -> (H, W, 3) / (B, H, W, 3) uint8 RGB (overlays)."""
    x = image.detach().float().cpu().numpy()
    x = np.moveaxis(x, -3, -1) * _STD + _MEAN
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def hflip_sample(
    image: np.ndarray, parsing: np.ndarray, iuv: np.ndarray, kps: np.ndarray, label_set: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mirror a packed sample: left/right classes, DensePose parts and joints swap, x -> S-1-x."""
    size = image.shape[1]
    image = image[:, ::-1]
    parsing = flip_lut(label_set)[parsing[:, ::-1]]
    iuv = iuv[:, ::-1].copy()
    iuv[..., 0] = densepose_flip_lut()[iuv[..., 0]]
    kps = kps[joint_flip_map()].copy()
    seen = kps[:, 2] > 0
    kps[seen, 0] = size - 1 - kps[seen, 0]
    return image, parsing, iuv, kps


def sample_matrix(size: int, flip: bool, scale: float, angle_deg: float) -> np.ndarray:
    """(2, 3) forward affine of a packed sample: mirror x -> S-1-x (if `flip`), then scale and rotate
    about the centre (cv2.getRotationMatrix2D's convention)."""
    c = (size - 1) / 2
    m = cv2.getRotationMatrix2D((c, c), angle_deg, scale)
    if flip:
        m = m @ np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return m


def warp_sample(
    image: np.ndarray, parsing: np.ndarray, iuv: np.ndarray, kps: np.ndarray, m: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Warp by the (2, 3) affine `m`, one cv2.warpAffine per array: image bilinear, labels
    nearest-neighbour, new borders ignore (255); joints moved with the image, v = 0 for those
    that leave it. Label ids are not touched (a mirror's left/right swap is the caller's)."""
    size = image.shape[0]
    dsize = (size, size)
    image = cv2.warpAffine(image, m, dsize, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    parsing = cv2.warpAffine(parsing, m, dsize, flags=cv2.INTER_NEAREST, borderValue=IGNORE)
    iuv = cv2.warpAffine(iuv, m, dsize, flags=cv2.INTER_NEAREST, borderValue=(IGNORE, 0, 0))
    kps = kps.copy()
    seen = kps[:, 2] > 0
    xy = kps[:, :2] @ m[:, :2].T.astype(np.float32) + m[:, 2].astype(np.float32)
    inside = seen & (xy >= -0.5).all(1) & (xy <= size - 0.5).all(1)
    kps[:, :2] = np.where(inside[:, None], xy, 0)
    kps[:, 2] = inside.astype(np.float32)
    return image, parsing, iuv, kps


def affine_sample(
    image: np.ndarray, parsing: np.ndarray, iuv: np.ndarray, kps: np.ndarray, scale: float, angle_deg: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scale and rotate about the centre; labels nearest-neighbour, new borders ignore (255);
    joints moved with the image, v = 0 for those that leave it."""
    return warp_sample(image, parsing, iuv, kps, sample_matrix(image.shape[0], False, scale, angle_deg))


@functools.cache
def _id_tables(label_set: str, flipped: bool) -> tuple[np.ndarray, np.ndarray]:
    """(256,) int64 tables uint8 id -> training id for parsing and DensePose I: identity, or the
    left/right swap of a mirrored sample (255 stays ignore). Looking ids up converts them too."""
    if not flipped:
        identity = np.arange(256, dtype=np.int64)
        return identity, identity
    return flip_lut(label_set).astype(np.int64), densepose_flip_lut().astype(np.int64)


class SPDDataset(Dataset):
    """Samples of a packed split. `augment` None: no augmentation (evaluation).

    Random draws use torch's generator, so DataLoader workers (seeded by torch) and a
    torch.manual_seed in the training loop make augmentation reproducible.
    """

    def __init__(
        self,
        split: str | Path | PackedSplit,
        augment: AugmentConfig | None = None,
        label_set: str | None = None,
    ) -> None:
        self.split = split if isinstance(split, PackedSplit) else PackedSplit(split)
        self.augment = augment
        self.label_set = label_set or self.split.label_set

    def __len__(self) -> int:
        return len(self.split)

    def _draw(self) -> tuple[bool, float, float]:
        aug = self.augment
        assert aug is not None
        r = torch.rand(3).tolist()
        flip = aug.flip and r[0] < 0.5
        scale = aug.scale_min + (aug.scale_max - aug.scale_min) * r[1]
        angle = (2 * r[2] - 1) * aug.rotate_deg
        return flip, scale, angle

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.augment is None:
            return self.sample(index)
        return self.sample(index, *self._draw())

    def sample(
        self, index: int, flip: bool = False, scale: float = 1.0, angle_deg: float = 0.0
    ) -> dict[str, torch.Tensor]:
        """Sample `index` mirrored (if `flip`), then scaled and rotated about the centre by `scale`,
        `angle_deg`, as one warp per array (a pure mirror maps pixels exactly): the same result
        as hflip_sample then affine_sample, up to interpolation rounding."""
        s = self.split
        image = np.asarray(s.images[index])  # (S, S, 3) uint8
        parsing = np.asarray(s.parsing[index])  # (S, S) uint8
        iuv = np.asarray(s.iuv[index])  # (S, S, 3) uint8
        kps = np.array(s.keypoints[index], np.float32)  # (16, 3)
        if flip or not (math.isclose(scale, 1.0) and angle_deg == 0.0):
            m = sample_matrix(image.shape[0], flip, scale, angle_deg)
            kps = kps[_JOINT_FLIP] if flip else kps
            image, parsing, iuv, kps = warp_sample(image, parsing, iuv, kps, m)
        # a mirrored sample's left/right ids are swapped by the id tables (which also widen them)
        parsing_ids, dp_ids = _id_tables(self.label_set, flip)
        i_plane, u_plane, v_plane = cv2.split(np.ascontiguousarray(iuv))  # (S, S) uint8 each
        has_iuv = bool(s.has_iuv[index])
        return {
            "image": normalize(image),
            "parsing": torch.from_numpy(parsing_ids[parsing]),
            "dp_index": torch.from_numpy(dp_ids[i_plane]),
            "dp_uv": torch.from_numpy(np.stack([cv2.LUT(u_plane, _UV_TABLE), cv2.LUT(v_plane, _UV_TABLE)])),
            "keypoints": torch.from_numpy(kps),
            "has_pose": torch.tensor(bool(s.has_pose[index])),
            "has_iuv": torch.tensor(has_iuv),
            "uv_valid": torch.tensor(not flip and has_iuv),  # U, V are not mirror-exact
            "index": torch.tensor(index, dtype=torch.int64),
        }
