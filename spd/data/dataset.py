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

import math
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from spd.config import AugmentConfig
from spd.data.packed import PackedSplit
from spd.labels import IGNORE, densepose_flip_map, flip_lut, joint_flip_map

MEAN = (0.485, 0.456, 0.406)  # ImageNet, RGB
STD = (0.229, 0.224, 0.225)
_MEAN = np.array(MEAN, np.float32) * 255
_STD = np.array(STD, np.float32) * 255


def normalize(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 normalised."""
    x = (image.astype(np.float32) - _MEAN) / _STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def denormalize(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (B, 3, H, W) normalised tensor -> (H, W, 3) / (B, H, W, 3) uint8 RGB (overlays)."""
    x = image.detach().float().cpu().numpy()
    x = np.moveaxis(x, -3, -1) * _STD + _MEAN
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _dp_flip_lut() -> np.ndarray:
    lut = np.arange(256, dtype=np.uint8)
    perm = densepose_flip_map()
    lut[: len(perm)] = perm
    return lut


def hflip_sample(
    image: np.ndarray, parsing: np.ndarray, iuv: np.ndarray, kps: np.ndarray, label_set: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mirror a packed sample: left/right classes, DensePose parts and joints swap, x -> S-1-x."""
    size = image.shape[1]
    image = image[:, ::-1]
    parsing = flip_lut(label_set)[parsing[:, ::-1]]
    iuv = iuv[:, ::-1].copy()
    iuv[..., 0] = _dp_flip_lut()[iuv[..., 0]]
    kps = kps[joint_flip_map()].copy()
    seen = kps[:, 2] > 0
    kps[seen, 0] = size - 1 - kps[seen, 0]
    return image, parsing, iuv, kps


def affine_sample(
    image: np.ndarray, parsing: np.ndarray, iuv: np.ndarray, kps: np.ndarray, scale: float, angle_deg: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scale and rotate about the centre; labels nearest-neighbour, new borders ignore (255);
    joints moved with the image, v = 0 for those that leave it."""
    size = image.shape[0]
    c = (size - 1) / 2
    m = cv2.getRotationMatrix2D((c, c), angle_deg, scale)
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
        s = self.split
        image = np.asarray(s.images[index])  # (S, S, 3) uint8
        parsing = np.asarray(s.parsing[index])  # (S, S) uint8
        iuv = np.asarray(s.iuv[index])  # (S, S, 3) uint8
        kps = np.array(s.keypoints[index], np.float32)  # (16, 3)
        uv_valid = True
        if self.augment is not None:
            flip, scale, angle = self._draw()
            if flip:
                image, parsing, iuv, kps = hflip_sample(image, parsing, iuv, kps, self.label_set)
                uv_valid = False
            if not (math.isclose(scale, 1.0) and angle == 0.0):
                image, parsing, iuv, kps = affine_sample(image, parsing, iuv, kps, scale, angle)
        dp_index = iuv[..., 0]
        dp_uv = iuv[..., 1:].astype(np.float32).transpose(2, 0, 1) / 255.0  # (2, S, S)
        has_iuv = bool(s.has_iuv[index])
        return {
            "image": normalize(image),
            "parsing": torch.from_numpy(np.ascontiguousarray(parsing).astype(np.int64)),
            "dp_index": torch.from_numpy(np.ascontiguousarray(dp_index).astype(np.int64)),
            "dp_uv": torch.from_numpy(np.ascontiguousarray(dp_uv)),
            "keypoints": torch.from_numpy(kps),
            "has_pose": torch.tensor(bool(s.has_pose[index])),
            "has_iuv": torch.tensor(has_iuv),
            "uv_valid": torch.tensor(uv_valid and has_iuv),
            "index": torch.tensor(index, dtype=torch.int64),
        }
