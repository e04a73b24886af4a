"""The paper's augmentation on a whole batch where it lives (the GPU), after a loader that only copies.

At 384 px the per-sample CPU path (`SPDDataset`) spends most of its time in three cv2 warps (image,
parsing, IUV) and in widening uint8 to float32 / int64 (~5 MB a sample). `CompactDataset` yields a
packed sample's uint8 rows as they are (~1 MB, one copy), so a loader core feeds a GPU many times
faster; `augment_batch` then mirrors, scales and rotates the batch on its device (one
`grid_sample` for the image, one for the stacked labels) and widens it to SPDDataset's item
contract: `image` float32 (B, 3, S, S) normalised, `parsing` / `dp_index` int64 (B, S, S) (255
ignore), `dp_uv` float32 (B, 2, S, S), `keypoints`, `has_pose`, `has_iuv`, `uv_valid`, `index`.

Same geometry as `spd.data.dataset.sample_matrix` (mirror x -> S-1-x, then scale and rotate about
the centre), the same distributions as SPDDataset's draws (flip < 0.5, uniform scale and angle;
drawn from torch's CPU generator in the training process, so a seeded or resumed run draws the
same), same borders (black image, ignore labels).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spd.config import AugmentConfig
from spd.data.dataset import MEAN, STD, SPDDataset
from spd.data.packed import PackedSplit
from spd.labels import IGNORE, densepose_flip_lut, flip_lut, joint_flip_map


class CompactDataset(Dataset):
    """A packed split's samples as uint8 rows, unaugmented: image (S, S, 3), parsing (S, S), iuv
    (S, S, 3), keypoints (16, 3) float32, has_pose, has_iuv, index. Feed its batches to
    `augment_batch` (training) or `augment_batch(batch, None)` (evaluation)."""

    def __init__(self, split: str | Path | PackedSplit) -> None:
        self.split = split if isinstance(split, PackedSplit) else PackedSplit(split)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.split
        return {
            "image": torch.from_numpy(np.array(s.images[index])),  # (S, S, 3) uint8
            "parsing": torch.from_numpy(np.array(s.parsing[index])),  # (S, S) uint8
            "iuv": torch.from_numpy(np.array(s.iuv[index])),  # (S, S, 3) uint8
            "keypoints": torch.from_numpy(np.array(s.keypoints[index], np.float32)),  # (16, 3)
            "has_pose": torch.tensor(bool(s.has_pose[index])),
            "has_iuv": torch.tensor(bool(s.has_iuv[index])),
            "index": torch.tensor(index, dtype=torch.int64),
        }


def draw(n: int, augment: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """flip (n,) bool, scale (n,), angle in degrees (n,): SPDDataset's distributions, n samples at once."""
    r = torch.rand(n, 3, dtype=torch.float64)
    flip = (r[:, 0] < 0.5) & augment.flip
    scale = augment.scale_min + (augment.scale_max - augment.scale_min) * r[:, 1]
    return flip, scale, (2 * r[:, 2] - 1) * augment.rotate_deg


def sample_matrices(size: int, flip: torch.Tensor, scale: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) float64 forward affines in pixels, as `sample_matrix` (cv2.getRotationMatrix2D
    after the mirror) builds them one by one."""
    c = (size - 1) / 2
    rad = torch.deg2rad(angle.double())
    a, b = scale.double() * torch.cos(rad), scale.double() * torch.sin(rad)
    m = torch.zeros(len(flip), 3, 3, dtype=torch.float64)
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = a, b, (1 - a) * c - b * c
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = -b, a, b * c + (1 - a) * c
    m[:, 2, 2] = 1
    mirror = torch.tensor([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return torch.where(flip.view(-1, 1, 1), m @ mirror, m)


def _sampling_grid(m: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """grid_sample's (B, S, S, 2) grid for the forward affines `m`: output pixel -> input pixel,
    in align_corners=True coordinates (pixel centres at -1 .. 1, cv2's pixel convention)."""
    norm = torch.tensor([[2 / (size - 1), 0, -1], [0, 2 / (size - 1), -1], [0, 0, 1]], dtype=torch.float64)
    theta = (norm @ torch.linalg.inv(m) @ torch.linalg.inv(norm))[:, :2]  # (B, 2, 3)
    return F.affine_grid(theta.float().to(device), [len(m), 1, size, size], align_corners=True)


def _move_joints(kps: torch.Tensor, m: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Keypoints (B, J, 3) through the affines (mirrored samples' joints swapped first), v = 0 and
    x = y = 0 for those unlabelled or outside the warped image (as `warp_sample`)."""
    perm = torch.as_tensor(joint_flip_map(), device=kps.device)
    kps = torch.where(flip.view(-1, 1, 1), kps[:, perm], kps)
    m = m.to(device=kps.device, dtype=torch.float32)
    xy = kps[..., :2] @ m[:, :2, :2].transpose(1, 2) + m[:, None, :2, 2]  # (B, J, 2)
    inside = (kps[..., 2] > 0) & (xy >= -0.5).all(-1) & (xy <= size - 0.5).all(-1)
    xy = torch.where(inside[..., None], xy, torch.zeros_like(xy))
    return torch.cat([xy, inside[..., None].float()], dim=-1)


@functools.cache
def _constants(label_set: str, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per-step constants built once per device: the parsing and DensePose I flip tables (256,)
    int64, and the normalisation's mean and std (1, 3, 1, 1) in 0..255 units."""
    parsing_lut = torch.as_tensor(flip_lut(label_set), device=device).long()
    dp_lut = torch.as_tensor(densepose_flip_lut(), device=device).long()
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    return parsing_lut, dp_lut, mean, std


def _widened(
    batch: dict[str, torch.Tensor],
    x: torch.Tensor,
    ids: torch.Tensor,
    uv: torch.Tensor,
    keypoints: torch.Tensor,
    flip: torch.Tensor,
    label_set: str,
) -> dict[str, torch.Tensor]:
    """SPDDataset's contract from x (B, 3, S, S) float 0..255, ids (B, 2, S, S) int64 parsing and
    DensePose I, uv (B, 2, S, S) float 0..255; mirrored samples' left/right ids swapped."""
    device = x.device
    flipped = flip.to(device).view(-1, 1, 1)
    parsing_lut, dp_lut, mean, std = _constants(label_set, device)
    has_iuv = batch["has_iuv"].to(torch.bool)
    return {
        "image": ((x - mean) / std).contiguous(),
        "parsing": torch.where(flipped, parsing_lut[ids[:, 0]], ids[:, 0]),
        "dp_index": torch.where(flipped, dp_lut[ids[:, 1]], ids[:, 1]),
        "dp_uv": (uv / 255.0).contiguous(),
        "keypoints": keypoints,
        "has_pose": batch["has_pose"],
        "has_iuv": has_iuv,
        "uv_valid": has_iuv & ~flipped.view(-1),  # U, V are not mirror-exact
        "index": batch["index"],
    }


def warp_batch(
    batch: dict[str, torch.Tensor],
    flip: torch.Tensor,
    scale: torch.Tensor,
    angle: torch.Tensor,
    label_set: str = "lip",
) -> dict[str, torch.Tensor]:
    """A `CompactDataset` batch mirrored / scaled / rotated per sample (on its device) and widened
    to SPDDataset's contract. flip (B,) bool, scale (B,), angle (B,) degrees, on the CPU."""
    image = batch["image"]  # (B, S, S, 3) uint8
    S, device = image.shape[1], image.device
    m = sample_matrices(S, flip, scale, angle)
    grid = _sampling_grid(m, S, device)
    x = F.grid_sample(image.permute(0, 3, 1, 2).float(), grid, "bilinear", "zeros", align_corners=True)
    labels = torch.cat([batch["parsing"][:, None], batch["iuv"].permute(0, 3, 1, 2)], dim=1)  # (B, 4, S, S)
    labels = F.grid_sample(labels.float() + 1, grid, "nearest", "zeros", align_corners=True)  # 0: outside
    outside = labels[:, :1] == 0  # (B, 1, S, S)
    ids = torch.where(outside, IGNORE, labels[:, :2] - 1).long()  # (B, 2, S, S) parsing, I
    uv = (labels[:, 2:] - 1).clamp(min=0)  # (B, 2, S, S); 0 outside, as cv2's border
    keypoints = _move_joints(batch["keypoints"].float(), m, flip.to(device), S)
    return _widened(batch, x, ids, uv, keypoints, flip, label_set)


def augment_batch(
    batch: dict[str, torch.Tensor], augment: AugmentConfig | None, label_set: str = "lip"
) -> dict[str, torch.Tensor]:
    """`augment`'s random mirror / scale / rotation per sample of a `CompactDataset` batch, drawn from
    torch's CPU generator, applied on the batch's device; None: only widened (evaluation), exactly."""
    if augment is not None:
        return warp_batch(batch, *draw(batch["image"].shape[0], augment), label_set=label_set)
    iuv = batch["iuv"].permute(0, 3, 1, 2)  # (B, 3, S, S) uint8
    ids = torch.stack([batch["parsing"], batch["iuv"][..., 0]], dim=1).long()
    x = batch["image"].permute(0, 3, 1, 2).float()
    no_flip = torch.zeros(len(ids), dtype=torch.bool)
    return _widened(batch, x, ids, iuv[:, 1:].float(), batch["keypoints"].float(), no_flip, label_set)


BatchTransform = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def training_data(
    split: PackedSplit, augment: AugmentConfig | None, device: torch.device
) -> tuple[Dataset, BatchTransform | None]:
    """(training dataset, batch transform for train_one_epoch) for a loop on `device`: on a CPU,
    SPDDataset augments each sample; on a GPU the loader only copies uint8 rows and the batch is
    augmented on the device (at 384 px the per-sample warps take ~1.3 CPU cores per GPU at 250
    images/s, the copies ~0.12: README, bench/bench_loader.py)."""
    if device.type != "cuda":
        return SPDDataset(split, augment=augment), None
    return CompactDataset(split), functools.partial(augment_batch, augment=augment, label_set=split.label_set)
