"""SPDDataset: tensors as the model and losses expect them, and augmentation that keeps labels true."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from spd.config import AugmentConfig
from spd.data.dataset import MEAN, STD, SPDDataset, affine_sample, denormalize, hflip_sample
from spd.data.packed import PackedSplit
from spd.labels import IGNORE, LIP_CLASSES


def test_items_have_the_contract_shapes_and_dtypes(prepared_tiny: Path) -> None:
    ds = SPDDataset(prepared_tiny / "val")
    item = ds[2]
    expect = {
        "image": (torch.float32, (3, 64, 64)),
        "parsing": (torch.int64, (64, 64)),
        "dp_index": (torch.int64, (64, 64)),
        "dp_uv": (torch.float32, (2, 64, 64)),
        "keypoints": (torch.float32, (16, 3)),
        "has_pose": (torch.bool, ()),
        "has_iuv": (torch.bool, ()),
        "uv_valid": (torch.bool, ()),
        "index": (torch.int64, ()),
    }
    assert {k: (v.dtype, tuple(v.shape)) for k, v in item.items()} == expect
    assert item["index"] == 2 and item["has_pose"] and item["has_iuv"] and item["uv_valid"]
    assert item["dp_uv"].min() >= 0 and item["dp_uv"].max() <= 1
    labelled = item["parsing"][item["parsing"] != IGNORE]
    assert labelled.max() < len(LIP_CLASSES)
    packed = PackedSplit(prepared_tiny / "val")
    assert np.array_equal(denormalize(item["image"]), packed.images[2])  # no augmentation: exact
    assert torch.allclose(item["image"].mean((1, 2)), item["image"].mean((1, 2)))
    assert len(MEAN) == len(STD) == 3


def test_batches_collate(prepared_tiny: Path) -> None:
    loader = DataLoader(SPDDataset(prepared_tiny / "train", AugmentConfig()), batch_size=8, shuffle=True)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 3, 64, 64) and batch["keypoints"].shape == (8, 16, 3)
    assert batch["has_pose"].dtype == torch.bool and denormalize(batch["image"]).shape == (8, 64, 64, 3)


def test_flip_swaps_sides_and_masks_uv(prepared_tiny: Path) -> None:
    plain = SPDDataset(prepared_tiny / "train")
    flipping = SPDDataset(
        prepared_tiny / "train", AugmentConfig(flip=True, scale_min=1, scale_max=1, rotate_deg=0)
    )
    flipped_seen = 0
    for seed in range(8):
        torch.manual_seed(seed)
        a, b = plain[5], flipping[5]
        if b["uv_valid"]:  # not flipped this time: identical
            assert torch.equal(a["parsing"], b["parsing"])
            continue
        flipped_seen += 1
        pa, pb = a["parsing"].numpy(), b["parsing"].numpy()[:, ::-1]
        for left, right in ((14, 15), (16, 17), (18, 19)):
            assert np.array_equal(pa == left, pb == right)
        for j_from, j_to in ((10, 15), (0, 5), (12, 13)):
            ka, kb = a["keypoints"][j_from], b["keypoints"][j_to]
            assert ka[2] == kb[2]
            if ka[2] > 0:
                assert kb[0] == pytest.approx(63 - ka[0]) and kb[1] == pytest.approx(ka[1])
        da, db = a["dp_index"].numpy(), b["dp_index"].numpy()[:, ::-1]
        assert np.array_equal(da == 3, db == 4) and np.array_equal(da == 2, db == 2)
    assert flipped_seen > 0


def test_scale_and_rotation_move_joints_with_the_labels() -> None:
    size = 32
    image = np.zeros((size, size, 3), np.uint8)
    parsing = np.zeros((size, size), np.uint8)
    parsing[20:23, 7:10] = 15
    iuv = np.zeros((size, size, 3), np.uint8)
    kps = np.zeros((16, 3), np.float32)
    kps[10] = (8, 21, 1)
    kps[0] = (30, 1, 1)  # near the corner: leaves the image when zoomed in
    _, p2, iuv2, k2 = affine_sample(image, parsing, iuv, kps, 1.3, 25.0)
    x, y, v = k2[10]
    assert v == 1 and p2[int(round(y)), int(round(x))] == 15
    assert k2[0, 2] == 0
    _, p3, iuv3, _ = affine_sample(image, parsing, iuv, kps, 0.8, 10.0)
    assert (p3 == IGNORE).any() and (iuv3[..., 0] == IGNORE).any()  # new borders are ignore
    assert not (p2 == IGNORE).all()


def test_one_warp_equals_mirror_then_scale_and_rotate(prepared_tiny: Path) -> None:
    split = PackedSplit(prepared_tiny / "train")
    arrays = (split.images[5], split.parsing[5], split.iuv[5], np.array(split.keypoints[5]))
    image, parsing, iuv, kps = affine_sample(*hflip_sample(*arrays, "lip"), 1.15, 12.0)
    item = SPDDataset(split).sample(5, flip=True, scale=1.15, angle_deg=12.0)
    assert (item["parsing"].numpy() == parsing).mean() > 0.99  # nearest-neighbour rounding ties
    assert (item["dp_index"].numpy() == iuv[..., 0]).mean() > 0.99
    assert np.abs(denormalize(item["image"]).astype(int) - image).mean() < 1.0
    assert torch.allclose(item["keypoints"], torch.from_numpy(kps), atol=1e-3)
    assert not item["uv_valid"]


def test_augmentation_is_reproducible_under_a_torch_seed(prepared_tiny: Path) -> None:
    ds = SPDDataset(prepared_tiny / "train", AugmentConfig())
    torch.manual_seed(3)
    a = ds[1]
    torch.manual_seed(3)
    b = ds[1]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cross_dataset_items_carry_no_pose_or_uv(prepared_cross_tiny: Path) -> None:
    item = SPDDataset(PackedSplit(prepared_cross_tiny / "val"))[0]
    assert not item["has_pose"] and not item["has_iuv"] and not item["uv_valid"]
    assert (item["dp_index"] == IGNORE).all() and (item["keypoints"][:, 2] == 0).all()


def test_a_pickled_split_is_remapped_not_copied(prepared_tiny: Path) -> None:
    import pickle

    split = PackedSplit(prepared_tiny / "train")
    blob = pickle.dumps(SPDDataset(split, AugmentConfig()))
    assert len(blob) < 10_000  # the path travels, not the arrays
    again = pickle.loads(blob)
    assert len(again) == len(split) and np.array_equal(again.split.images[3], split.images[3])
