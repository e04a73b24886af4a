"""augment_batch: the per-sample augmentation of SPDDataset, done on a whole uint8 batch on its device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from spd.config import AugmentConfig
from spd.data.dataset import SPDDataset, denormalize
from spd.data.device_augment import CompactDataset, augment_batch, warp_batch

INDICES = [0, 3, 5, 6]


def _compact_batch(split_dir: Path) -> dict[str, torch.Tensor]:
    ds = CompactDataset(split_dir)
    return next(iter(DataLoader(torch.utils.data.Subset(ds, INDICES), batch_size=len(INDICES))))


def test_without_augmentation_the_batch_is_the_datasets_items(prepared_tiny: Path) -> None:
    batch = augment_batch(_compact_batch(prepared_tiny / "train"), None)
    items = [SPDDataset(prepared_tiny / "train")[i] for i in INDICES]
    for k in items[0]:
        expect = torch.stack([item[k] for item in items])
        assert batch[k].dtype == expect.dtype and batch[k].shape == expect.shape, k
        assert torch.allclose(batch[k].float(), expect.float(), atol=1e-5), k


def test_mirror_scale_rotation_match_the_per_sample_warp(prepared_tiny: Path) -> None:
    flip = torch.tensor([True, False, True, False])
    scale = torch.tensor([1.15, 0.85, 1.0, 1.2], dtype=torch.float64)
    angle = torch.tensor([12.0, -7.0, 0.0, 15.0], dtype=torch.float64)
    batch = warp_batch(_compact_batch(prepared_tiny / "train"), flip, scale, angle)
    ds = SPDDataset(prepared_tiny / "train")
    for b, i in enumerate(INDICES):
        item = ds.sample(i, bool(flip[b]), float(scale[b]), float(angle[b]))
        for k in ("parsing", "dp_index"):  # nearest-neighbour: rounding ties differ, nothing else
            assert (batch[k][b] == item[k]).float().mean() > 0.97, (k, b)
        diff = np.abs(denormalize(batch["image"][b]).astype(int) - denormalize(item["image"]))
        assert diff.mean() < 2.0, b  # bilinear in float here, in 8-bit fixed point in cv2
        assert torch.allclose(batch["keypoints"][b], item["keypoints"], atol=1e-3), b
        assert batch["uv_valid"][b] == item["uv_valid"]


def test_draws_are_reproducible_under_a_torch_seed(prepared_tiny: Path) -> None:
    compact = _compact_batch(prepared_tiny / "train")
    torch.manual_seed(4)
    a = augment_batch(compact, AugmentConfig())
    torch.manual_seed(4)
    b = augment_batch(compact, AugmentConfig())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["image"], augment_batch(compact, None)["image"])


def test_a_training_step_runs_on_compact_batches_augmented_on_the_device(prepared_tiny: Path) -> None:
    from functools import partial

    from spd.config import ModelConfig
    from spd.engine import train_one_epoch
    from spd.losses import SPDLoss
    from spd.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", head_channels=16), num_classes=20)
    criterion = SPDLoss(model.tasks, {})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = DataLoader(CompactDataset(prepared_tiny / "train"), batch_size=2)
    out = train_one_epoch(
        model, criterion, optimizer, None, [next(iter(loader))], "cpu",
        batch_transform=partial(augment_batch, augment=AugmentConfig()),
    )  # fmt: skip
    assert np.isfinite(out["loss"]) and {"loss_seg", "loss_pose", "loss_densepose"} <= set(out)


def test_gpu_loops_get_the_compact_loader_and_cpu_loops_the_per_sample_one(prepared_tiny: Path) -> None:
    from spd.data.device_augment import training_data
    from spd.data.packed import PackedSplit

    split = PackedSplit(prepared_tiny / "train")
    dataset, transform = training_data(split, AugmentConfig(), torch.device("cpu"))
    assert isinstance(dataset, SPDDataset) and transform is None
    dataset, transform = training_data(split, AugmentConfig(), torch.device("cuda"))  # no GPU needed
    assert isinstance(dataset, CompactDataset)
    batch = transform(next(iter(DataLoader(dataset, batch_size=2))))  # here on the CPU's tensors
    assert batch["image"].shape == (2, 3, 64, 64) and batch["parsing"].dtype == torch.int64
